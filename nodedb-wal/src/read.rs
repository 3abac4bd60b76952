//! Sequential replay across segments with bounded memory.

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::{KeyRing, SegmentCipher};
use crate::error::{CorruptionKind, Result, WalError};
use crate::record::WalRecord;
use crate::recovery::open_existing;
use crate::segment::crypt::{cipher_for, open_record};
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::{SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self, SegmentInfo};
use crate::storage::Storage;
use crate::types::Lsn;

/// How a reader treats encrypted records.
#[derive(Clone, Debug)]
pub enum Decrypt {
    /// Decrypt with the ring's keys and hand out plaintext (the default).
    With(Option<Arc<KeyRing>>),
    /// Hand out payloads as stored (ciphertext and tag), for tools.
    Raw,
}

/// Iterates the records of a log in LSN order, from a starting LSN up to a bound that was
/// durable when the iterator was made. Holds one segment's read window at a time.
pub struct WalIter<S: Storage> {
    storage: Arc<S>,
    dir: PathBuf,
    direct: bool,
    align: usize,
    segments: Vec<SegmentInfo>,
    index: usize,
    scan: Option<SegmentScan<S::File>>,
    cipher: Option<SegmentCipher>,
    decrypt: Decrypt,
    from: Lsn,
    until: Lsn,
    done: bool,
}

impl<S: Storage> std::fmt::Debug for WalIter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIter").field("from", &self.from).field("until", &self.until).finish()
    }
}

impl<S: Storage> WalIter<S> {
    /// Records `from..=until` of the listed segments.
    pub(crate) fn new(
        storage: Arc<S>,
        dir: PathBuf,
        (direct, align): (bool, usize),
        segments: Vec<SegmentInfo>,
        (from, until): (Lsn, Lsn),
        decrypt: Decrypt,
    ) -> Result<WalIter<S>> {
        let oldest = segments.first().map_or(until.next(), |s| s.first_lsn);
        if from < oldest && from <= until {
            return Err(WalError::LsnNotRetained { requested: from, oldest });
        }
        let index = segments.iter().position(|s| s.end_lsn > from).unwrap_or(segments.len());
        Ok(WalIter { storage, dir, direct, align, segments, index, scan: None, cipher: None, decrypt, from, until, done: from > until })
    }

    fn open_scan(&mut self) -> Result<Option<()>> {
        let Some(info) = self.segments.get(self.index).copied() else { return Ok(None) };
        let path = segment::path(&self.dir, info.id);
        let (file, len) = open_existing(&*self.storage, &path, self.direct)?;
        let mut reader = ChunkReader::new(file, path, len, self.align, DEFAULT_CHUNK);
        let head = read_head(&mut reader, info.id)?.map_err(|_| WalError::Corruption {
            segment: info.id,
            offset: 0,
            kind: CorruptionKind::BadSegmentHeader,
        })?;
        self.cipher = match &self.decrypt {
            Decrypt::With(ring) => cipher_for(ring.as_deref(), info.id, &head)?,
            Decrypt::Raw => None,
        };
        self.scan = Some(SegmentScan::new(reader, info.id, &head));
        Ok(Some(()))
    }

    fn advance(&mut self) -> Result<Option<WalRecord>> {
        loop {
            if self.scan.is_none() && self.open_scan()?.is_none() {
                return Ok(None);
            }
            let scan = self.scan.as_mut().expect("opened above");
            let segment = scan.id();
            match scan.step()? {
                Step::Record { header, payload, .. } => {
                    if header.lsn > self.until {
                        return Ok(None);
                    }
                    if header.lsn < self.from {
                        continue;
                    }
                    let ty = header.record_type;
                    let unknown = ty.is_reserved() && !ty.is_known_reserved();
                    if unknown && ty.is_required() {
                        return Err(WalError::UnknownRequiredType { lsn: header.lsn, record_type: ty });
                    }
                    let payload = match &self.decrypt {
                        Decrypt::Raw => payload.to_vec(),
                        // Authenticated even when skipped: the type is part of what is signed.
                        Decrypt::With(_) => open_record(self.cipher.as_ref(), segment, &header, payload)?,
                    };
                    if unknown {
                        continue;
                    }
                    return Ok(Some(WalRecord {
                        lsn: header.lsn,
                        record_type: header.record_type,
                        scope: header.scope,
                        flags: header.flags,
                        payload,
                    }));
                }
                Step::End { offset, end, .. } => {
                    if !matches!(end, TailEnd::Sealed { .. }) && scan.next_lsn() <= self.until {
                        return Err(scan.corruption(offset, CorruptionKind::BadFrame));
                    }
                    self.scan = None;
                    self.index += 1;
                }
            }
        }
    }
}

impl<S: Storage> Iterator for WalIter<S> {
    type Item = Result<WalRecord>;

    fn next(&mut self) -> Option<Result<WalRecord>> {
        if self.done {
            return None;
        }
        let item = self.advance().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}
