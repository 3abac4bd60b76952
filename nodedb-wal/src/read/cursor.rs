//! The walk under every reader ([`Cursor`]): the records `from..=until`, segment by segment,
//! one open segment at a time, each checked, admitted or skipped, and its payload made
//! readable (decrypted and authenticated, unless raw).
//!
//! [`WalIter`](super::WalIter) and [`LazyWalReader`](super::LazyWalReader) are thin fronts on
//! it: one hands out whole records, the other headers first.

use std::sync::Arc;

use crate::crypto::SegmentCipher;
use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::format::frame::RecordHeader;
use crate::recovery::{check_identity, key_gone_with_segment, open_held};
use crate::segment::crypt::{cipher_for, open_record_in};
use crate::segment::read_ahead::Window;
use crate::segment::reader::ChunkReader;
use crate::segment::scan::{SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self, SegmentInfo, index};
use crate::storage::{Storage, StorageFile};
use crate::types::{Lsn, RecordType, SegmentId};

use super::{Decrypt, Position, ReadSpec, check_retained};

/// A record found by a [`Cursor`]: where it is, its header and (unless headers only) its
/// payload, readable: decrypted, or as stored when raw.
pub(super) struct Found<'a> {
    pub(super) segment: SegmentId,
    pub(super) offset: u64,
    pub(super) header: RecordHeader,
    pub(super) payload: &'a [u8],
    /// The read buffer `payload` may lie in, where an owned record's payload is to share it
    /// (see [`Payload`](crate::Payload)).
    pub(super) window: Option<Arc<Window>>,
    /// Whether `payload` is the cursor's decryption buffer.
    pub(super) decrypted: bool,
}

/// Walks the records `from..=until` segment by segment, one open segment at a time.
pub(super) struct Cursor<S: Storage> {
    storage: Arc<S>,
    pub(super) spec: ReadSpec,
    index: usize,
    pub(super) scan: Option<SegmentScan<S::File>>,
    cipher: Option<SegmentCipher>,
    headers_only: bool,
    /// A headers-only scan of a sealed segment with a valid header index walks the index (its
    /// entries still to hand out) instead of the segment.
    indexed: Option<std::iter::Peekable<std::vec::IntoIter<(u64, RecordHeader)>>>,
    /// Plaintext of the last encrypted record, reused from record to record.
    pub(super) plain: Vec<u8>,
    /// Where the record after the last one handed out starts.
    pub(super) next: Option<Position>,
    /// Headers the scan keeps prefetching for, counted down from the last read that waited for
    /// the disk: a log in the page cache needs no prefetching (and its system calls).
    prefetch_left: u64,
    /// Whether the record asked for is to be owned (an iterator's item) rather than lent.
    pub(super) owned: bool,
    /// Owned records' payloads share the read buffer rather than copy it: on until the caller
    /// is found keeping a buffer's payloads after the reader moved past it.
    share: bool,
}

/// See [`Cursor::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    Beyond,
    Below,
    Skip,
    Hand,
}

/// How many records ahead a headers-only scan asks the kernel for the blocks it will need.
const PREFETCH_RECORDS: u64 = 16;

/// Blocks read per header by a headers-only scan: the header's own, and the next boundary's,
/// where the scan looks for a recovery's seal; a prefetch asks for one more, for drift.
const LAZY_WINDOW_BLOCKS: usize = 2;

impl<S: Storage> Cursor<S> {
    pub(super) fn new(storage: Arc<S>, spec: ReadSpec, headers_only: bool) -> Result<Cursor<S>> {
        let oldest = spec.segments.first().map_or(spec.until.next(), |s| s.first_lsn);
        check_retained(spec.from, oldest, spec.until)?;
        let index = spec.segments.iter().position(|s| s.end_lsn > spec.from).unwrap_or(spec.segments.len());
        Ok(Cursor {
            storage,
            spec,
            index,
            scan: None,
            cipher: None,
            headers_only,
            indexed: None,
            plain: Vec::new(),
            next: None,
            prefetch_left: 0,
            owned: false,
            share: true,
        })
    }

    fn open_scan(&mut self) -> Result<bool> {
        let Some(info) = self.spec.segments.get(self.index).copied() else { return Ok(false) };
        let path = segment::path(&self.spec.dir, info.id);
        // A sealed segment is never written again, so the page cache cannot hold stale bytes of
        // it: it is read through the cache, with the kernel's read-ahead (an O_DIRECT read at a
        // time waits for the disk each time). The active segment is read as the log writes it.
        let direct = self.spec.direct && !info.sealed;
        let (file, len) = open_held(&*self.storage, &path, info.id, direct, true)?;
        let len = if self.spec.clip_active && !info.sealed { len.min(info.bytes) } else { len };
        // The lazy reader reads a header's blocks only, so that skipped payloads stay on disk.
        let chunk = if self.headers_only { LAZY_WINDOW_BLOCKS * self.spec.align } else { self.spec.chunk };
        let mut reader = ChunkReader::new(file, path, len, self.spec.align, chunk);
        let mapped = !self.headers_only && self.spec.mapped && info.sealed && reader.map_sealed();
        if self.headers_only {
            reader.read_randomly();
        } else if !mapped && !direct {
            reader.read_sequentially();
        }
        // A sealed segment, which nothing writes again, may be read and checked ahead.
        let read_ahead = !self.headers_only && !mapped && !direct && info.sealed && self.spec.check_ahead;
        if read_ahead {
            reader.read_ahead();
        }
        let bad_head = WalError::Corruption { segment: info.id, offset: 0, kind: CorruptionKind::BadSegmentHeader };
        let head = read_head(&mut reader, info.id)?.ok_or(bad_head)?;
        check_identity(&head, info.id, true)?;
        self.cipher = match &self.spec.decrypt {
            Decrypt::With(ring) => cipher_for(ring.as_deref(), info.id, &head)
                .map_err(|e| key_gone_with_segment(e, &*self.storage, &segment::path(&self.spec.dir, info.id), info.id, true))?,
            Decrypt::Raw => None,
        };
        if self.headers_only && info.sealed {
            let lsns = (info.first_lsn, info.end_lsn);
            let found = index::read_index(&*self.storage, &self.spec.dir, info.id, head.header.salt, lsns);
            self.indexed = found.map(|index| index.into_entries().into_iter().peekable());
        }
        let mut scan = SegmentScan::new(reader, info.id, &head);
        if let Some(at) = self.spec.resume.take().filter(|at| at.segment == info.id && at.lsn == self.spec.from) {
            scan.seek(at.offset, at.lsn);
        }
        if mapped && self.spec.check_ahead {
            scan.check_ahead();
        } else if read_ahead {
            scan.read_ahead();
        }
        self.scan = Some(if self.headers_only { scan.headers_only() } else { scan });
        self.prefetch_left = 0;
        Ok(true)
    }

    /// The next record in range: its segment, offset, header and (unless headers only) its
    /// readable payload. Skips this crate's unknown optional types (after authenticating them).
    pub(super) fn next(&mut self) -> Result<Option<Found<'_>>> {
        loop {
            if self.scan.is_none() && !self.open_scan()? {
                return Ok(None);
            }
            if let Some(entries) = self.indexed.as_mut() {
                let Some(&(offset, header)) = entries.peek() else {
                    self.indexed = None;
                    self.close_scan();
                    self.index += 1;
                    continue;
                };
                let segment = self.scan.as_ref().expect("open").id();
                match self.admit(segment, offset, &header)? {
                    Admit::Beyond => return Ok(None),
                    admit => {
                        self.indexed.as_mut().expect("indexed").next();
                        if admit == Admit::Hand {
                            return Ok(Some(Found { segment, offset, header, payload: &[], window: None, decrypted: false }));
                        }
                        self.authenticate_skipped(segment, offset, &header)?;
                    }
                }
                continue;
            }
            let scan = self.scan.as_mut().expect("opened above");
            let segment = scan.id();
            match scan.step()? {
                Step::Record { offset, header } => match self.admit(segment, offset, &header)? {
                    Admit::Beyond => {
                        // Step back before it, so that a reader extended later (a tail) finds it.
                        self.scan.as_mut().expect("open").seek(offset, header.lsn);
                        return Ok(None);
                    }
                    Admit::Below => {}
                    Admit::Skip if self.headers_only => self.authenticate_skipped(segment, offset, &header)?,
                    Admit::Skip => {
                        // Authenticated even when skipped: the type is part of what is signed.
                        self.open_stepped(segment, offset, &header)?;
                    }
                    Admit::Hand if self.headers_only => {
                        self.prefetch_headers(offset, header.frame_len() as u64);
                        return Ok(Some(Found { segment, offset, header, payload: &[], window: None, decrypted: false }));
                    }
                    Admit::Hand => {
                        let decrypted = self.decrypts();
                        let window = if decrypted { None } else { self.window_to_share() };
                        let payload = self.open_stepped(segment, offset, &header)?;
                        return Ok(Some(Found { segment, offset, header, payload, window, decrypted }));
                    }
                },
                Step::End { offset, end, .. } => {
                    let scan = self.scan.as_ref().expect("open");
                    if !matches!(end, TailEnd::Sealed { .. }) {
                        if scan.next_lsn() <= self.spec.until {
                            return Err(scan.corruption(offset, CorruptionKind::BadFrame));
                        }
                        // The end of what is written so far: every record up to `until` was
                        // handed out. Stay here: an extended reader goes on from this point.
                        return Ok(None);
                    }
                    self.close_scan();
                    self.index += 1;
                }
            }
        }
    }

    /// Closes the open segment. A read buffer of it still held then (by payloads the caller
    /// kept) stops the sharing, as a buffer left behind within a segment does: a caller keeping
    /// a record of each segment would otherwise pin every segment's buffer.
    fn close_scan(&mut self) {
        if let Some(mut scan) = self.scan.take()
            && self.share
            && scan.reader_mut().let_go()
        {
            self.share = false;
        }
    }

    /// Whether the open segment's payloads are handed out decrypted (in `plain`).
    #[inline]
    fn decrypts(&self) -> bool {
        self.cipher.is_some() && matches!(self.spec.decrypt, Decrypt::With(_))
    }

    /// The read buffer in hand, where an owned record's payload may share it: one handed out as
    /// stored, read rather than mapped, while the caller lets go of payloads in time.
    #[inline]
    fn window_to_share(&mut self) -> Option<Arc<Window>> {
        if !(self.owned && self.share) {
            return None;
        }
        let reader = self.scan.as_ref().expect("open").reader();
        if reader.kept_windows() {
            // The caller keeps payloads: copies from now on, so that it pins no more buffers.
            self.share = false;
            return None;
        }
        reader.window()
    }

    /// What to do with the record at `offset` whose header a scan or an index gave: past the
    /// bound, below the start, a type to skip, or one to hand out. Type checks and the resume
    /// position are the same whichever gave it.
    fn admit(&mut self, segment: SegmentId, offset: u64, header: &RecordHeader) -> Result<Admit> {
        if header.lsn > self.spec.until {
            return Ok(Admit::Beyond);
        }
        if header.lsn < self.spec.from {
            return Ok(Admit::Below);
        }
        check_type(header)?;
        self.next = Some(Position { segment, offset: offset + header.frame_len() as u64, lsn: header.lsn.next() });
        Ok(if is_unknown_optional(header.record_type) { Admit::Skip } else { Admit::Hand })
    }

    /// Lets a reader that reached its bound go on to a later one, with a fresh listing of the
    /// segments (taken after `until`), keeping its open segment and position. `false` where
    /// it cannot (its segment is no longer listed): make a new reader instead.
    pub(super) fn extend(&mut self, until: Lsn, segments: Vec<SegmentInfo>) -> Result<bool> {
        let find = |id: SegmentId| segments.iter().position(|s| s.id == id);
        let index = match (&self.scan, self.spec.segments.get(self.index)) {
            (Some(scan), _) => find(scan.id()),
            (None, Some(next)) => find(next.id),
            // Past every listed segment: the next one is the one after the last read.
            (None, None) => match self.index.checked_sub(1).and_then(|i| self.spec.segments.get(i)) {
                Some(last) => find(last.id).map(|i| i + 1),
                None => Some(0),
            },
        };
        let Some(index) = index else { return Ok(false) };
        if let (Some(scan), Some(info)) = (self.scan.as_mut(), segments.get(index)) {
            let reader = scan.reader_mut();
            let len = if info.sealed || !self.spec.clip_active {
                reader.file().len().map_err(|e| WalError::io(IoOp::Stat, reader.path(), e))?
            } else {
                info.bytes
            };
            reader.set_file_len(len);
            scan.resume();
        }
        self.spec.until = until;
        self.spec.segments = segments;
        self.index = index;
        Ok(true)
    }

    /// Asks for the blocks of the headers to come, guessing that records keep the size of the
    /// one at `at` (bulk loads do). The lazy reader's reads depend on each other (a header says
    /// where the next is) and would wait for the disk one block at a time; prefetched blocks
    /// are read in parallel. A wrong guess costs a block read for nothing and a wait as before.
    fn prefetch_headers(&mut self, at: u64, frame: u64) {
        let align = self.spec.align as u64;
        let window = (LAZY_WINDOW_BLOCKS as u64 + 1) * align;
        let reader = self.scan.as_mut().expect("open").reader_mut();
        let first = if reader.take_miss() {
            // Waited for the disk (or guessed wrong): ask for the next few headers' blocks at
            // once, then keep a window of them in flight for a while.
            self.prefetch_left = 4 * PREFETCH_RECORDS;
            1
        } else if self.prefetch_left > 0 {
            self.prefetch_left -= 1;
            PREFETCH_RECORDS
        } else {
            return;
        };
        for k in first..=PREFETCH_RECORDS {
            let guess = at + k * frame;
            reader.prefetch(guess - guess % align, window);
        }
    }

    /// A headers-only reader skips a record of an unknown optional type without handing it
    /// out, but in an encrypted segment it first reads and authenticates it, as a full reader
    /// does: the type is signed, and a record retyped by someone without the key must not
    /// vanish unnoticed. Such records are rare (a newer build's types), so their payloads
    /// cost little.
    fn authenticate_skipped(&mut self, segment: SegmentId, offset: u64, header: &RecordHeader) -> Result<()> {
        if self.cipher.is_none() || matches!(self.spec.decrypt, Decrypt::Raw) {
            return Ok(());
        }
        self.open_at(segment, offset, header).map(drop)
    }

    /// The readable payload of the record at `offset` of the open segment, read where it lies
    /// (a headers-only scan has not read it).
    pub(super) fn open_at(&mut self, segment: SegmentId, offset: u64, header: &RecordHeader) -> Result<&[u8]> {
        let checked = self.decrypts();
        let Cursor { scan, cipher, plain, spec, .. } = self;
        // A frame whose header no longer matches the header index's entry: in an encrypted
        // segment the header is authenticated, so a changed one is reported as such.
        let altered = |found: &RecordHeader, stored: &[u8]| {
            let fails = checked && open_payload(&spec.decrypt, cipher.as_ref(), segment, found, stored, &mut Vec::new()).is_err();
            fails.then_some(WalError::AuthenticationFailed { segment, lsn: found.lsn })
        };
        let stored = scan.as_mut().expect("the record's segment is open").frame_at(offset, header, altered)?;
        open_payload(&spec.decrypt, cipher.as_ref(), segment, header, stored, plain)
    }

    /// The readable payload of the record the scan handed out last.
    #[inline]
    fn open_stepped(&mut self, segment: SegmentId, offset: u64, header: &RecordHeader) -> Result<&[u8]> {
        let Cursor { scan, cipher, plain, spec, .. } = self;
        let stored = scan.as_mut().expect("open").stepped_payload(offset, header)?;
        open_payload(&spec.decrypt, cipher.as_ref(), segment, header, stored, plain)
    }
}

/// A stored payload made readable: decrypted and authenticated, unless raw.
#[inline]
fn open_payload<'a>(
    decrypt: &Decrypt,
    cipher: Option<&SegmentCipher>,
    segment: SegmentId,
    header: &RecordHeader,
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    match decrypt {
        Decrypt::Raw => Ok(stored),
        Decrypt::With(_) => open_record_in(cipher, segment, header, stored, scratch),
    }
}

/// An unknown type from this crate's ranges stops a reader if it is required.
fn check_type(header: &RecordHeader) -> Result<()> {
    let ty = header.record_type;
    if ty.is_reserved() && !ty.is_known_reserved() && ty.is_required() {
        return Err(WalError::UnknownRequiredType { lsn: header.lsn, record_type: ty });
    }
    Ok(())
}

fn is_unknown_optional(ty: RecordType) -> bool {
    ty.is_reserved() && !ty.is_known_reserved()
}
