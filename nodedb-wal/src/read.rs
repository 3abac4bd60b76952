//! Replay across segments with bounded memory: [`WalIter`] hands out whole records,
//! [`LazyWalReader`] hands out headers and reads a payload only when asked.

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::{KeyRing, SegmentCipher};
use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::format::frame::RecordHeader;
use crate::payload::Payload;
use crate::record::WalRecord;
use crate::recovery::{check_identity, open_held};
use crate::segment::crypt::{cipher_for, open_record_in};
use crate::segment::read_ahead::Window;
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::{SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self, SegmentInfo, index};
use crate::storage::{Storage, StorageFile};
use crate::types::{Lsn, RecordType, Scope, SegmentId};

/// How a reader treats encrypted records.
#[derive(Clone, Debug)]
pub enum Decrypt {
    /// Decrypt with the ring's keys and hand out plaintext (the default).
    With(Option<Arc<KeyRing>>),
    /// Hand out payloads as stored (ciphertext and tag), for tools.
    Raw,
}

/// Where and how to read.
#[derive(Clone, Debug)]
pub(crate) struct ReadSpec {
    pub dir: PathBuf,
    pub direct: bool,
    pub align: usize,
    pub segments: Vec<SegmentInfo>,
    pub from: Lsn,
    pub until: Lsn,
    pub decrypt: Decrypt,
    /// Map sealed segments instead of reading them (see [`crate::storage::mmap`]).
    pub mapped: bool,
    /// Let a helper thread check a mapped segment's checksums ahead (see `segment::ahead`).
    pub check_ahead: bool,
    /// Bytes per read where segments are read, not mapped.
    pub chunk: usize,
    /// Where the record `from` starts, when a reader handed it out before.
    pub resume: Option<Position>,
    /// Read the active segment only up to its listed bytes, which the log's own listing keeps
    /// exact (taken after `until`, it covers every record up to it).
    pub clip_active: bool,
}

impl ReadSpec {
    pub fn new(dir: PathBuf, segments: Vec<SegmentInfo>, from: Lsn, until: Lsn, decrypt: Decrypt) -> ReadSpec {
        ReadSpec {
            dir,
            direct: false,
            align: 4096,
            segments,
            from,
            until,
            decrypt,
            mapped: false,
            check_ahead: true,
            chunk: DEFAULT_CHUNK,
            resume: None,
            clip_active: false,
        }
    }
}

/// Where a record's frame starts: a reader resumes there without scanning the segment from its
/// start (a live tail would otherwise scan its segment again at every refill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub segment: SegmentId,
    pub offset: u64,
    pub lsn: Lsn,
}

/// A record found by a [`Cursor`]: where it is, its header and (unless headers only) its
/// payload, readable: decrypted, or as stored when raw.
struct Found<'a> {
    segment: SegmentId,
    offset: u64,
    header: RecordHeader,
    payload: &'a [u8],
    /// The read buffer `payload` may lie in, where an owned record's payload is to share it
    /// (see [`Payload`]).
    window: Option<Arc<Window>>,
    /// Whether `payload` is the cursor's decryption buffer.
    decrypted: bool,
}

/// Walks the records `from..=until` segment by segment, one open segment at a time.
struct Cursor<S: Storage> {
    storage: Arc<S>,
    spec: ReadSpec,
    index: usize,
    scan: Option<SegmentScan<S::File>>,
    cipher: Option<SegmentCipher>,
    headers_only: bool,
    /// A headers-only scan of a sealed segment with a valid header index walks the index (its
    /// entries still to hand out) instead of the segment.
    indexed: Option<std::iter::Peekable<std::vec::IntoIter<(u64, RecordHeader)>>>,
    /// Plaintext of the last encrypted record, reused from record to record.
    plain: Vec<u8>,
    /// Where the record after the last one handed out starts.
    next: Option<Position>,
    /// Headers the scan keeps prefetching for, counted down from the last read that waited for
    /// the disk: a log in the page cache needs no prefetching (and its system calls).
    prefetch_left: u64,
    /// Whether the record asked for is to be owned (an iterator's item) rather than lent.
    owned: bool,
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

/// That a read from `from` finds its records: from below `oldest` (the first LSN the log still
/// holds) it is `LsnNotRetained`, unless nothing up to `until` (durable) was ever there. LSN 0
/// is never issued: a read from it reads from the first, as a tail does.
pub(crate) fn check_retained(from: Lsn, oldest: Lsn, until: Lsn) -> Result<()> {
    if from.max(Lsn::FIRST) < oldest && from <= until {
        return Err(WalError::LsnNotRetained { requested: from, oldest });
    }
    Ok(())
}

impl<S: Storage> Cursor<S> {
    fn new(storage: Arc<S>, spec: ReadSpec, headers_only: bool) -> Result<Cursor<S>> {
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
            Decrypt::With(ring) => cipher_for(ring.as_deref(), info.id, &head)?,
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
    fn next(&mut self) -> Result<Option<Found<'_>>> {
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
    fn extend(&mut self, until: Lsn, segments: Vec<SegmentInfo>) -> Result<bool> {
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
    fn open_at(&mut self, segment: SegmentId, offset: u64, header: &RecordHeader) -> Result<&[u8]> {
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

/// A record borrowed from a reader ([`WalIter::next_view`]): valid until the reader moves on.
/// A plaintext payload is read in place, without a copy.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"lent"))?;
/// let mut reader = wal.read_from(Lsn::FIRST)?;
/// let view = reader.next_view().expect("a record")?;
/// assert_eq!((view.lsn, view.payload), (Lsn(1), &b"lent"[..]));
/// let owned = view.to_record(); // a copy that outlives the reader
/// assert_eq!(owned.payload, b"lent");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Header flags.
    pub flags: u16,
    /// The payload (decrypted, unless the reader hands out payloads as stored).
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// An owned copy.
    #[must_use]
    pub fn to_record(&self) -> WalRecord {
        WalRecord {
            lsn: self.lsn,
            record_type: self.record_type,
            scope: self.scope,
            flags: self.flags,
            payload: Payload::from(self.payload),
        }
    }
}

/// Iterates the records of a log in LSN order, from a starting LSN up to a bound that was
/// durable when the iterator was made. Holds one segment's read window at a time.
///
/// As an [`Iterator`] it hands out owned records, whose plaintext payloads share the read
/// buffer while the caller lets go of them in time (see [`Payload`]); [`WalIter::next_view`]
/// lends them instead, which saves even that where a replay only looks at each payload once.
///
/// In a sealed segment, where a core is free, a reader has a helper thread reading ahead of it
/// and holds up to about 3 MiB of read buffers; both go when it leaves the segment or is
/// dropped. A reader put aside mid-segment keeps them, so drop readers no longer used.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"one"))?;
/// let records: Vec<_> = wal.read_from(Lsn::FIRST)?.collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 1);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub struct WalIter<S: Storage> {
    cursor: Cursor<S>,
    done: bool,
    failed: bool,
}

impl<S: Storage> std::fmt::Debug for WalIter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIter").field("from", &self.cursor.spec.from).field("until", &self.cursor.spec.until).finish()
    }
}

impl<S: Storage> WalIter<S> {
    pub(crate) fn new(storage: Arc<S>, spec: ReadSpec) -> Result<WalIter<S>> {
        let done = spec.from > spec.until;
        Ok(WalIter { cursor: Cursor::new(storage, spec, false)?, done, failed: false })
    }

    /// The next record, lent until the next call; `None` at the end. After an error, `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// for i in 0..3u8 {
    ///     wal.append(Record::new(ty, &[i; 100]))?;
    /// }
    /// wal.sync()?;
    /// let (mut records, mut bytes) = (0, 0);
    /// let mut reader = wal.read_from(Lsn::FIRST)?;
    /// while let Some(view) = reader.next_view() {
    ///     let view = view?;
    ///     records += 1;
    ///     bytes += view.payload.len();
    /// }
    /// assert_eq!((records, bytes), (3, 300));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn next_view(&mut self) -> Option<Result<RecordView<'_>>> {
        let found = self.next_found(false)?;
        Some(found.map(|found| RecordView {
            lsn: found.header.lsn,
            record_type: found.header.record_type,
            scope: found.header.scope,
            flags: found.header.flags,
            payload: found.payload,
        }))
    }

    /// The next record, with the buffer its payload may share where it is to be `owned`; `None`
    /// at the end and after an error.
    #[inline]
    fn next_found(&mut self, owned: bool) -> Option<Result<Found<'_>>> {
        if self.done {
            return None;
        }
        self.cursor.owned = owned;
        match self.cursor.next() {
            Ok(Some(found)) => Some(Ok(found)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                self.failed = true;
                Some(Err(err))
            }
        }
    }

    /// Lets go of buffers a large record made larger than a read needs: the decryption buffer,
    /// and the open segment's read window. For a reader kept between uses (a tail's), which
    /// would otherwise hold them as long as it lives (a quiet log never rolls its segment).
    pub(crate) fn trim(&mut self) {
        if self.cursor.plain.capacity() > DEFAULT_CHUNK {
            self.cursor.plain = Vec::new();
        }
        if let Some(scan) = self.cursor.scan.as_mut() {
            scan.reader_mut().trim();
        }
    }

    /// Bytes of the buffers the reader holds between records (its read window, its
    /// decryption buffer).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let window = self.cursor.scan.as_ref().map_or(0, |scan| scan.reader().held_bytes());
        window + self.cursor.plain.capacity()
    }

    /// Where the record after the last one handed out starts.
    pub(crate) fn resume_point(&self) -> Option<Position> {
        self.cursor.next
    }

    /// Goes on to `until` (see `Cursor::extend`) after handing out everything up to the old
    /// bound; `false` after an error or where the reader cannot go on.
    pub(crate) fn extend(&mut self, until: Lsn, segments: Vec<SegmentInfo>) -> Result<bool> {
        if self.failed || !self.cursor.extend(until, segments)? {
            return Ok(false);
        }
        self.done = false;
        Ok(true)
    }
}

impl<S: Storage> Iterator for WalIter<S> {
    type Item = Result<WalRecord>;

    fn next(&mut self) -> Option<Result<WalRecord>> {
        let found = match self.next_found(true)? {
            Ok(found) => found,
            Err(err) => return Some(Err(err)),
        };
        let header = found.header;
        let payload = match found.window.and_then(|window| share(window, found.payload)) {
            Some(shared) => shared,
            // The plaintext is the record's own: the next record's goes into a new buffer.
            None if found.decrypted => Payload::from(std::mem::take(&mut self.cursor.plain)),
            None => Payload::from(found.payload),
        };
        Some(Ok(WalRecord { lsn: header.lsn, record_type: header.record_type, scope: header.scope, flags: header.flags, payload }))
    }
}

/// `payload` as a part of `window`'s buffer, if it lies there (not where it was decrypted,
/// say, or read anew into another buffer).
#[inline]
fn share(window: Arc<Window>, payload: &[u8]) -> Option<Payload> {
    let buf = window.buf.as_ptr_range();
    let (start, end) = (payload.as_ptr(), payload.as_ptr().wrapping_add(payload.len()));
    if start < buf.start || end > buf.end {
        return None;
    }
    let at = start.addr() - buf.start.addr();
    Some(Payload::shared(window, at, payload.len()))
}

/// A record's header, handed out by [`LazyWalReader`] before its payload is read.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"abc"))?;
/// let mut lazy = wal.lazy_reader(Lsn::FIRST)?;
/// let handle = lazy.next_header()?.expect("a record");
/// assert_eq!((handle.lsn, handle.stored_len), (Lsn(1), 3));
/// assert_eq!(handle.segment(), nodedb_wal::SegmentId(1));
/// assert!(handle.offset() > 0, "after the segment's header frame");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHandle {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Header flags.
    pub flags: u16,
    /// Bytes of the payload as stored (for encrypted records, ciphertext plus tag).
    pub stored_len: u32,
    segment: SegmentId,
    offset: u64,
    header: RecordHeader,
}

impl RecordHandle {
    /// The segment the record is in.
    #[must_use]
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Where its frame starts in the segment file.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Reads headers first; the caller reads a record's payload with [`LazyWalReader::payload`]
/// or skips it, and a skipped payload is never read from disk (beyond the block its header
/// shares). A payload that is read is checked (CRC) and decrypted. This is selective replay:
/// filter by type, scope or LSN on the handle, read only what matters.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append(Record::new(ty, &[1; 64 * 1024]))?;
/// wal.append(Record::new(ty, b"small"))?;
/// wal.sync()?;
/// let mut lazy = wal.lazy_reader(Lsn::FIRST)?;
/// let mut small = None;
/// while let Some(handle) = lazy.next_header()? {
///     if handle.stored_len < 100 {
///         small = Some(lazy.payload()?); // the 64 KiB payload is never read
///     }
/// }
/// assert_eq!(small.as_deref(), Some(&b"small"[..]));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub struct LazyWalReader<S: Storage> {
    cursor: Cursor<S>,
    current: Option<RecordHandle>,
}

impl<S: Storage> std::fmt::Debug for LazyWalReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyWalReader").field("current", &self.current.map(|h| h.lsn)).finish()
    }
}

impl<S: Storage> LazyWalReader<S> {
    pub(crate) fn new(storage: Arc<S>, spec: ReadSpec) -> Result<LazyWalReader<S>> {
        Ok(LazyWalReader { cursor: Cursor::new(storage, spec, true)?, current: None })
    }

    /// The next record's header, or `None` at the end. Skips this crate's unknown optional types.
    pub fn next_header(&mut self) -> Result<Option<RecordHandle>> {
        // No current record until the cursor gives one: after an error (the next segment
        // truncated away, say) the last handle's segment may be closed already.
        self.current = None;
        let Some(Found { segment, offset, header, .. }) = self.cursor.next()? else { return Ok(None) };
        let handle = RecordHandle {
            lsn: header.lsn,
            record_type: header.record_type,
            scope: header.scope,
            flags: header.flags,
            stored_len: header.payload_len,
            segment,
            offset,
            header,
        };
        self.current = Some(handle);
        Ok(Some(handle))
    }

    /// Reads, checks and decrypts the payload of the record [`Self::next_header`] returned last.
    pub fn payload(&mut self) -> Result<Vec<u8>> {
        self.payload_view().map(<[u8]>::to_vec)
    }

    /// Like [`Self::payload`], lending the payload from the reader's own buffer instead of
    /// copying it out: no allocation per record. The borrow ends at the next call.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let (order, metric) = (RecordType::optional(0x200), RecordType::optional(0x300));
    /// wal.append(Record::new(metric, b"cpu 0.5"))?;
    /// wal.append_durable(Record::new(order, b"order 17"))?;
    /// let mut reader = wal.lazy_reader(Lsn::FIRST)?;
    /// let mut orders = 0;
    /// while let Some(header) = reader.next_header()? {
    ///     if header.record_type == order {
    ///         assert_eq!(reader.payload_view()?, b"order 17");
    ///         orders += 1;
    ///     }
    /// }
    /// assert_eq!(orders, 1);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn payload_view(&mut self) -> Result<&[u8]> {
        let handle = self.current.ok_or(WalError::NoCurrentRecord)?;
        self.cursor.open_at(handle.segment, handle.offset, &handle.header)
    }
}
