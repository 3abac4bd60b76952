//! A window over a file read in large aligned chunks, so that frames can be decoded from
//! memory whatever their size and wherever they fall; or, for a sealed segment, a map of it.
//!
//! The reader, its constructor and its modes are here; how a read is served is in `fetch`.

mod fetch;

use std::path::PathBuf;
use std::sync::Arc;

use crate::format::layout::round_up;
use crate::segment::ahead::{self, CheckAhead};
use crate::segment::read_ahead::{ReadAhead, Window};
use crate::segment::spare;
use crate::storage::mmap::RELEASE_STEP;
use crate::storage::{Advice, Mapping, StorageFile};

/// Default bytes read per system call.
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// Reads a file through one reusable aligned window (valid for O_DIRECT files too).
#[derive(Debug)]
pub struct ChunkReader<F> {
    file: Arc<F>,
    path: PathBuf,
    file_len: u64,
    align: usize,
    chunk: usize,
    /// The bytes in hand: read by this reader, or by a helper (which may still be checking
    /// their frames).
    window: Arc<Window>,
    mapped: Option<Arc<Mapping>>,
    /// A helper checking the mapped frames ahead of the reader (see [`ahead`]).
    ahead: Option<CheckAhead>,
    /// Drop what was read from the disk from the page cache, a release step behind the reads.
    drop_behind: bool,
    brought: DropBehind,
    /// A helper thread reading the chunks ahead (`segment/read_ahead.rs`), and how many more
    /// times one may be started for this file (each jump off its path stops it).
    helper: Option<ReadAhead>,
    helpers_left: u8,
    /// The block size of the segment whose frames a scan reads through this reader (see
    /// [`Self::serve_scan`]); 0 where none does.
    scan_block: u64,
    /// Whether the first read has been made: it turns `drop_behind` off if its bytes were
    /// cached already (see [`Self::read_sequentially`]).
    first_read: bool,
    /// Note reads that had to wait for the disk (see [`Self::take_miss`]).
    watch_misses: bool,
    /// Bytes per read of a reader that reads randomly (see [`Self::read_randomly`]): its chunk,
    /// grown while its reads follow one another (see `Self::random_chunk_for`).
    random_chunk: usize,
    missed: bool,
    /// The bytes the last prefetches asked for, as one span (see [`Self::prefetch`]).
    prefetched: std::ops::Range<u64>,
    /// Whether a window was still held by someone else (payloads shared with a caller) when
    /// the reader moved past it.
    kept: bool,
}

impl<F: StorageFile> ChunkReader<F> {
    /// A reader of the first `file_len` bytes of `file`.
    pub fn new(file: F, path: PathBuf, file_len: u64, align: usize, chunk: usize) -> ChunkReader<F> {
        let chunk = round_up(chunk.max(align) as u64, align as u64) as usize;
        ChunkReader {
            file: Arc::new(file),
            path,
            file_len,
            align,
            chunk,
            window: Arc::new(Window::empty(0, align)),
            mapped: None,
            ahead: None,
            drop_behind: false,
            brought: DropBehind::default(),
            helper: None,
            helpers_left: 0,
            scan_block: 0,
            first_read: false,
            watch_misses: false,
            random_chunk: chunk,
            missed: false,
            prefetched: 0..0,
            kept: false,
        }
    }

    /// Reads through a map of the file instead of chunks, where the storage can map: only for
    /// a sealed segment, which no one writes again. Pages more than a release step behind the
    /// reads are given back as the reader moves on. Returns whether the file is mapped.
    pub fn map_sealed(&mut self) -> bool {
        match self.file.map_sealed(self.file_len, crate::storage::CrateOnly::new()) {
            Ok(mapped) => self.mapped = mapped.map(Arc::new),
            Err(err) => tracing::debug!(%err, path = %self.path.display(), "mmap refused; reading with pread"),
        }
        if let Some(map) = &self.mapped
            && self.first_block_cached()
        {
            // As `read_sequentially` decides for reads: leave a file cached by others cached.
            map.keep_cached();
        }
        self.mapped.is_some()
    }

    /// Whether the file's first block is in the page cache, asked before this reader touches
    /// it. An error counts as no.
    fn first_block_cached(&self) -> bool {
        let mut block = vec![0u8; self.align];
        matches!(self.file.read_cached_at(&mut block, 0), Ok(Some(_)))
    }

    /// For a front-to-back read of a mapped file from `from` (a frame boundary), on a machine
    /// with a core to spare: a helper thread checks the frames' checksums ahead of the reader
    /// (see [`ahead`]). Only where enough of the file is left to pay for a thread.
    pub fn check_ahead(&mut self, from: u64) {
        let worth_it = || self.file_len.saturating_sub(from) >= ahead::MIN_BYTES && spare_core();
        if let Some(map) = self.mapped.as_ref().filter(|_| worth_it()) {
            self.ahead = CheckAhead::spawn(Arc::clone(map), from);
        }
    }

    /// Stops the help of [`Self::check_ahead`] and [`Self::start_read_ahead`] (the reader
    /// moves off the chain they follow). A later helper only reads.
    pub fn stop_checking_ahead(&mut self) {
        self.ahead = None;
        self.stop_helper();
        self.forget_checks();
    }

    /// Forgets which frames of the window a helper checked (dropping the window: the reader
    /// reads it again): from here on the reader follows another chain, or none.
    fn forget_checks(&mut self) {
        if self.window.has_checks() {
            self.window = Arc::new(Window::empty(0, self.align));
        }
    }

    /// Whether the frame of `len` bytes at `offset` was checked ahead of the reader.
    #[inline]
    pub fn checked_ahead(&mut self, offset: u64, len: usize) -> bool {
        self.window.checked(offset, len) || self.ahead.as_mut().is_some_and(|a| a.covers(offset, len))
    }

    /// The file being read.
    pub fn file(&self) -> &F {
        &self.file
    }

    /// For a front-to-back read of a file read through the page cache (not O_DIRECT): asks
    /// for generous read-ahead, and drops the bytes read from the page cache as the reader
    /// moves on, so that a long replay does not evict the database's working set. A file whose
    /// first bytes read were in the cache already (a plain read, a backup or another reader
    /// pulled it in) is left cached: the reader leaves the page cache as it found it, and does
    /// not pay for evicting pages it did not bring in. The decision is per file, on its first
    /// read: later reads cannot tell cached pages from pages the reader's own read-ahead
    /// brought in.
    pub fn read_sequentially(&mut self) {
        self.file.advise(Advice::Sequential, 0, 0);
        self.drop_behind = true;
    }

    /// For a front-to-back read of a sealed file through the page cache (after
    /// [`Self::read_sequentially`]), on a machine with a core to spare: a helper thread will
    /// read the chunks ahead of the reader and check their frames' checksums (see
    /// `segment/read_ahead.rs`), from [`Self::start_read_ahead`] on. Until then the reader
    /// reads only the blocks it asks for.
    pub fn read_ahead(&mut self) {
        self.helpers_left = MAX_HELPERS;
    }

    /// Tells the reader that a scan of a segment of `block`-byte blocks reads through it. After
    /// an unaligned frame's header such a scan looks at the next block boundary (for a
    /// recovery's seal) before it reads the frame: a window that the look moved on keeps the
    /// block before it, so that the frame is not read again.
    pub fn serve_scan(&mut self, block: u64) {
        self.scan_block = block;
    }

    /// How far before a look just past the window the reader may come back to: the scan's
    /// block (see [`Self::serve_scan`]), at least one unit of alignment.
    fn look_back(&self) -> u64 {
        self.scan_block.max(self.align as u64)
    }

    /// Starts the helper planned by [`Self::read_ahead`], following the chain of frames that
    /// starts at `chain` (where the reader's scan is). Only where enough of the file is left
    /// to pay for a thread.
    pub fn start_read_ahead(&mut self, chain: u64) {
        self.start_helper(chain & !(self.align as u64 - 1), Some(chain));
        if self.helper.is_none() {
            // Not worth a thread after all: whole chunks from here on.
            self.helpers_left = 0;
        }
    }

    /// For a reader that skips most bytes (headers only): no read-ahead, so skipped bytes stay
    /// on disk; [`Self::prefetch`] asks for the blocks it expects to need.
    pub fn read_randomly(&mut self) {
        self.file.advise(Advice::Random, 0, 0);
        self.watch_misses = true;
    }

    /// Whether a read since the last call had to wait for the disk (after
    /// [`Self::read_randomly`]): the sign that prefetching would pay.
    pub fn take_miss(&mut self) -> bool {
        std::mem::take(&mut self.missed)
    }

    /// Starts reading `len` bytes at `offset` in the background (where storage supports it).
    /// Bytes the window in hand holds, or that the span of the last prefetches covers, are not
    /// asked for again: a headers-only scan asks for the blocks of the next headers at every
    /// header, and with records of a block or less it asked for the same blocks, held or
    /// asked for already, several times each (a cold scan of 1 KiB records made 0.4
    /// `fadvise` calls per record, most of them repeats).
    pub fn prefetch(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.file_len);
        let mut start = offset;
        if (self.window.start..self.window.end()).contains(&start) {
            start = self.window.end();
        }
        let extends = (self.prefetched.start..=self.prefetched.end).contains(&start);
        if extends {
            start = start.max(self.prefetched.end);
        }
        if start >= end {
            return;
        }
        self.file.advise(Advice::WillNeed, start, end - start);
        self.prefetched = if extends { self.prefetched.start..end } else { start..end };
    }

    /// Gives up a helper planned by [`Self::read_ahead`] and not started: the reader reads whole
    /// chunks itself. For a scan that follows no chain of frames (a look for claims after a
    /// damaged head), which would otherwise read only the blocks it asks for, each twice.
    pub fn read_alone(&mut self) {
        self.stop_helper();
        self.helpers_left = 0;
    }

    /// Learns that the file has grown (a live log).
    pub fn set_file_len(&mut self, file_len: u64) {
        self.file_len = file_len;
        // Only sealed files are mapped or read ahead, and they do not grow: a file that does is
        // read by the reader alone.
        self.mapped = None;
        self.ahead = None;
        self.stop_helper();
        self.helpers_left = 0;
        // The window may hold blocks read while they were still being written: forget them. Its
        // buffer is kept where nobody else holds it, for the next read (a tail's next refill).
        match Arc::get_mut(&mut self.window) {
            Some(window) => window.reset(0),
            None => self.window = Arc::new(Window::empty(0, self.align)),
        }
    }

    /// The file's path, for errors.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// What the reader's reads are aligned to (offsets and lengths), a power of two.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Bytes in the file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The window in hand, for payloads to share its buffer; `None` where the file is mapped.
    #[inline]
    pub fn window(&self) -> Option<Arc<Window>> {
        self.mapped.is_none().then(|| Arc::clone(&self.window))
    }

    /// Lets go of a window's buffer larger than a read-ahead window (one a large frame made), for
    /// a reader kept between uses (a tail's): its bytes are read again if they are wanted. One
    /// still shared with a caller's payloads is the caller's to drop.
    pub fn trim(&mut self) {
        if self.window.buf.len() > spare::MAX_LEN && Arc::strong_count(&self.window) == 1 {
            self.window = Arc::new(Window::empty(0, self.align));
        }
    }

    /// Bytes of the window's buffer.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.window.buf.len()
    }

    /// Whether a window the reader moved past was still held (by payloads shared from it).
    #[inline]
    pub fn kept_windows(&self) -> bool {
        self.kept
    }

    /// Stops the helpers and tells whether a window this reader moved past, or the one in hand,
    /// is still held by someone else (payloads shared with a caller): for a reader that is done
    /// with the file, which a window it leaves this way counts against as any other. The helper
    /// is stopped first: it may still be checking the last window it handed over.
    pub fn let_go(&mut self) -> bool {
        self.ahead = None;
        self.stop_helper();
        self.kept || Arc::strong_count(&self.window) > 1
    }

    /// Moves to window `next`, noting whether the one left is still held elsewhere. Neither a
    /// helper (it lets go of a window before it hands over the next) nor this reader keeps
    /// one, so another holder is a caller's payload.
    fn move_to(&mut self, next: Arc<Window>) {
        self.kept |= Arc::strong_count(&self.window) > 1;
        self.window = next;
    }
}

/// Whether this process may run on more than one core, so that a helper thread does not take
/// the reader's.
fn spare_core() -> bool {
    usable_cores() > 1
}

/// The cores this process may run on (1 where that cannot be told). Asked once: the answer
/// reads cgroup files, and a reader asks per segment.
pub(crate) fn usable_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// How many times a reader may start a read-ahead helper for one file: a reader that keeps
/// jumping off the helper's path (an evidence scan, say) is better off alone.
const MAX_HELPERS: u8 = 4;

/// The largest folio the page cache puts a file's bytes in (a huge page on x86-64); folios sit
/// at multiples of their size. Larger reads bring larger folios: found when the read-ahead
/// windows grew from 256 KiB to 896 KiB and a replay left a third of a segment it had read
/// from the disk in the page cache, one folio at each place it had stopped dropping.
pub(crate) const LARGEST_FOLIO: u64 = 2 << 20;

/// What a reader read through the page cache and has not dropped from it yet: `[from, to)`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DropBehind(Option<(u64, u64)>);

impl DropBehind {
    /// Notes the bytes `[start, end)` just read from `file` (of `file_len` bytes) and drops from
    /// the page cache what was read a release step or more behind them (only what was read: a
    /// reader that resumes in the middle of a file leaves the bytes before it alone).
    pub(crate) fn note<F: StorageFile>(&mut self, file: &F, start: u64, end: u64, file_len: u64) {
        self.0 = match self.0 {
            // Chunks overlap where a frame crossed the end of the last one.
            Some((from, to)) if (from..=to).contains(&start) => Some((from, to.max(end))),
            Some((from, to)) => {
                file.advise(Advice::DontNeed, from, to - from);
                Some((start, end))
            }
            None => Some((start, end)),
        };
        if let Some((from, to)) = self.0
            && to >= file_len
        {
            // The last chunk is read: nothing further will be read from the page cache, so all
            // of it can go now rather than stay behind the reader.
            file.advise(Advice::DontNeed, from, to - from);
            self.0 = None;
        }
        if let Some((from, to)) = self.0 {
            // Dropped up to a boundary no page-cache folio crosses: the kernel drops only whole
            // folios, and one across the boundary would be outside both this drop and the next.
            let upto = to.min(start.saturating_sub(RELEASE_STEP)) & !(LARGEST_FOLIO - 1);
            if upto >= from + RELEASE_STEP {
                file.advise(Advice::DontNeed, from, upto - from);
                self.0 = (upto < to).then_some((upto, to));
            }
        }
    }
}
