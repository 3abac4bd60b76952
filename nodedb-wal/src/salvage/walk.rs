//! The salvage's walk over the source log: recovery's own pieces (segment heads, the frame
//! scan, decryption) read every record in LSN order, and the walk stops at the first position
//! that is not the next intact record.

use std::collections::BTreeSet;
use std::path::Path;

use super::copy::Copier;
use crate::crypto::{KeyRing, SegmentCipher};
use crate::error::{CorruptionKind, MissingBecause, Result, WalError};
use crate::format::frame::RecordHeader;
use crate::format::payload::{CalvinAppliedPayload, CollectionTombstonePayload, TemporalPurgePayload};
use crate::recovery::{check_identity, open_held};
use crate::segment::crypt::{cipher_for, open_record};
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::{SegmentHead, SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self};
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, SegmentId};

/// The log being salvaged, read-only.
pub(super) struct Source<'a, S> {
    pub storage: &'a S,
    pub dir: &'a Path,
    pub ring: Option<&'a KeyRing>,
}

/// Where the walk stopped: the first position that is not the next intact record.
#[derive(Debug)]
pub(super) struct Stop {
    pub segment: SegmentId,
    /// `None`: the segment file is missing.
    pub offset: Option<u64>,
    /// What the walk found wrong there. `None` where the newest segment's chain just ends (its
    /// end, or a first block that is no head): a clean end, a torn tail or damage, which only
    /// recovery's decision table tells apart.
    pub error: Option<WalError>,
    /// The segment's salt, where its head reads: the frames after the stop that belong to it.
    pub salt: Option<u32>,
}

/// Walks `ids` (oldest first) and hands every intact record to `copier`. `None`: every segment
/// was read to its end frame.
pub(super) fn walk<S: Storage + Clone>(src: &Source<'_, S>, ids: &[SegmentId], copier: &mut Copier<'_, S>) -> Result<Option<Stop>> {
    let mut prev: Option<(SegmentId, Lsn)> = None;
    // Key ids under which a record of a segment walked so far authenticated (see `walk_segment`).
    let mut proven_keys = BTreeSet::new();
    for (index, &id) in ids.iter().enumerate() {
        if let Some((prev_id, _)) = prev
            && id.0 != prev_id.0 + 1
        {
            let missing = SegmentId(prev_id.0 + 1);
            let error = WalError::MissingSegment { missing, next_present: Some(id), why: MissingBecause::Hole };
            return Ok(Some(Stop { segment: missing, offset: None, error: Some(error), salt: None }));
        }
        let last = index + 1 == ids.len();
        match walk_segment(src, id, last, prev.map(|p| p.1), copier, &mut proven_keys)? {
            Walked::Sealed(end) => prev = Some((id, end)),
            Walked::Stopped(stop) => return Ok(Some(stop)),
        }
    }
    Ok(None)
}

enum Walked {
    /// Read to its end frame; the LSN after its last record.
    Sealed(Lsn),
    Stopped(Stop),
}

fn stopped(segment: SegmentId, offset: u64, error: Option<WalError>, salt: Option<u32>) -> Result<Walked> {
    Ok(Walked::Stopped(Stop { segment, offset: Some(offset), error, salt }))
}

fn corrupt(segment: SegmentId, offset: u64, kind: CorruptionKind) -> Option<WalError> {
    Some(WalError::Corruption { segment, offset, kind })
}

/// Reads one segment's head. `Err(stop)`: the segment is no place to copy from.
fn head_of<F: crate::storage::StorageFile>(
    reader: &mut ChunkReader<F>,
    id: SegmentId,
    last: bool,
    prev_end: Option<Lsn>,
) -> Result<std::result::Result<SegmentHead, Walked>> {
    let head = match read_head(reader, id) {
        Ok(Some(head)) => head,
        // The newest segment's first block: an interrupted roll or damage, as recovery decides.
        Ok(None) if last => return stopped(id, 0, None, None).map(Err),
        Ok(None) => return stopped(id, 0, corrupt(id, 0, CorruptionKind::BadSegmentHeader), None).map(Err),
        Err(err @ (WalError::Corruption { .. } | WalError::UnsupportedVersion { .. } | WalError::UnsupportedCipher { .. })) => {
            return stopped(id, 0, Some(err), None).map(Err);
        }
        Err(err) => return Err(err),
    };
    if let Err(err) = check_identity(&head, id, false) {
        return stopped(id, 0, Some(err), None).map(Err);
    }
    // No writer of this crate makes a segment with the last id, since none could follow it:
    // recovery refuses one as a bad header, and the copy could not make it either.
    if id.0 == u64::MAX {
        return stopped(id, 0, corrupt(id, 0, CorruptionKind::BadSegmentHeader), Some(head.header.salt)).map(Err);
    }
    if let Some(expected) = prev_end
        && head.header.first_lsn != expected
    {
        let kind = CorruptionKind::LsnGap { expected, found: head.header.first_lsn };
        return stopped(id, 0, corrupt(id, 0, kind), None).map(Err);
    }
    Ok(Ok(head))
}

fn walk_segment<S: Storage + Clone>(
    src: &Source<'_, S>,
    id: SegmentId,
    last: bool,
    prev_end: Option<Lsn>,
    copier: &mut Copier<'_, S>,
    proven_keys: &mut BTreeSet<u32>,
) -> Result<Walked> {
    let path = segment::path(src.dir, id);
    let (file, len) = open_held(src.storage, &path, id, false, false)?;
    let mut reader = ChunkReader::new(file, path, len, 512, DEFAULT_CHUNK);
    reader.read_sequentially();
    let head = match head_of(&mut reader, id, last, prev_end)? {
        Ok(head) => head,
        Err(stop) => return Ok(stop),
    };
    let salt = Some(head.header.salt);
    // A missing key was refused before anything was written (`check_keys`).
    let cipher = cipher_for(src.ring, id, &head)?;
    copier.begin(id, head.header.first_lsn, head.header.block_len)?;
    let mut scan = SegmentScan::new(reader, id, &head);
    let mut opened = 0u64;
    loop {
        match scan.step()? {
            Step::Record { offset, header } => {
                let stored = scan.stepped_payload(offset, &header)?;
                match open_record(cipher.as_ref(), id, &header, stored).and_then(|plain| checked(&header, plain)) {
                    Ok(plain) => {
                        copier.record(&header, plain)?;
                        opened += 1;
                        if cipher.is_some() {
                            proven_keys.insert(head.preamble.key_id);
                        }
                    }
                    Err(err @ WalError::AuthenticationFailed { .. }) => {
                        // As recovery tells them apart: a segment whose first two records do
                        // not authenticate is under another key, unless a record of an earlier
                        // segment authenticated under its key id; one that fails alone was
                        // altered.
                        let key_id = head.preamble.key_id;
                        let wrong_key = opened == 0
                            && cipher.is_some()
                            && !proven_keys.contains(&key_id)
                            && next_fails(&mut scan, cipher.as_ref(), id)?;
                        let err = if wrong_key { WalError::WrongKey { segment: id, key_id } } else { err };
                        return stopped(id, offset, Some(err), salt);
                    }
                    Err(err @ WalError::MalformedPayload { .. }) => return stopped(id, offset, Some(err), salt),
                    Err(err) => return Err(err),
                }
            }
            Step::End { offset, end: TailEnd::Sealed { .. }, .. } if copier.group_open() => {
                return stopped(id, offset, corrupt(id, offset, CorruptionKind::IncompleteGroup), salt);
            }
            Step::End { end: TailEnd::Sealed { .. }, .. } => {
                copier.end_segment()?;
                return Ok(Walked::Sealed(scan.next_lsn()));
            }
            Step::End { offset, .. } if last => return stopped(id, offset, None, salt),
            Step::End { offset, end, .. } => {
                // A segment is sealed before the next one is made: this one was damaged.
                let kind = if end == TailEnd::Damaged { CorruptionKind::BadFrame } else { CorruptionKind::UnsealedSegment };
                return stopped(id, offset, corrupt(id, offset, kind), salt);
            }
        }
    }
}

/// Whether the record after one that did not authenticate fails too (or there is none).
fn next_fails<F: crate::storage::StorageFile>(scan: &mut SegmentScan<F>, cipher: Option<&SegmentCipher>, id: SegmentId) -> Result<bool> {
    match scan.step()? {
        Step::Record { offset, header } => {
            let stored = scan.stepped_payload(offset, &header)?;
            Ok(open_record(cipher, id, &header, stored).is_err())
        }
        Step::End { .. } => Ok(true),
    }
}

/// A payload of the log's own types must decode: the new log's recovery reads tombstones and
/// purges, and would refuse the copy; `last_calvin_applied` reads calvin records, and `verify`
/// calls the copy damaged.
fn checked(header: &RecordHeader, plain: Vec<u8>) -> Result<Vec<u8>> {
    let malformed = |problem| WalError::MalformedPayload { lsn: header.lsn, record_type: header.record_type, problem };
    match header.record_type {
        RecordType::COLLECTION_TOMBSTONE => drop(CollectionTombstonePayload::decode(&plain).map_err(malformed)?),
        RecordType::TEMPORAL_PURGE => drop(TemporalPurgePayload::decode(&plain).map_err(malformed)?),
        RecordType::CALVIN_APPLIED => drop(CalvinAppliedPayload::decode(&plain).map_err(malformed)?),
        _ => {}
    }
    Ok(plain)
}

/// Refuses a log with an encrypted segment whose key the ring lacks (or a plaintext segment the
/// ring refuses), before the salvage writes anything. Segments whose head does not read are
/// left to the walk.
pub(super) fn check_keys<S: Storage>(src: &Source<'_, S>, ids: &[SegmentId]) -> Result<()> {
    for &id in ids {
        let path = segment::path(src.dir, id);
        let (file, len) = open_held(src.storage, &path, id, false, false)?;
        let mut reader = ChunkReader::new(file, path, len, 512, 4096);
        if let Ok(Some(head)) = read_head(&mut reader, id) {
            cipher_for(src.ring, id, &head)?;
        }
    }
    Ok(())
}
