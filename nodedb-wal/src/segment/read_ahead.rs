//! Reading a sealed segment ahead of its reader, on another core.
//!
//! A replay through `pread` spends its thread on four things besides decoding frames:
//! waiting for the disk where the kernel's read-ahead has not kept up, copying every byte out
//! of the page cache, the page cache's own bookkeeping (adding pages, dropping them behind),
//! and the frames' checksums, which cost about as much as the rest together. A helper thread
//! reads the next window of the file while the reader works through the current one, and
//! hands windows over through a queue one deep; each side spins a little before it sleeps on
//! that queue (see [`SPIN_FOR`]).
//!
//! Each window the helper hands over starts with the end of the one before, from the frame
//! the reader can be on when it moves on: the one that crosses into the next window, or one
//! whose scan looks at a block boundary past the window's end (for a seal; blocks of the
//! segment, which a reader may read in smaller units). So the
//! reader finds its frame whole in the next window without reading it again. (A helper that
//! follows no chain keeps the last [`LOOK_BACK`] bytes instead.)
//!
//! Checksums are shared. The helper follows the chain of frames from where the reader's scan
//! starts, each frame's length read from its own header, and once it has handed a window
//! over it checks the window's frames from the last one back, while the reader checks from
//! the first one on; each stops where the other has been. The reader follows the same chain
//! over the same bytes (the very buffer the helper checks), so a frame it reaches inside the
//! range the helper has checked is one the helper checked, with the same header. How much of
//! each window the helper may take adapts: less after the reader had to wait for a window,
//! more after it did not, which keeps both busy. A frame that does not check
//! ends the helper's chain; the reader checks that frame itself and finds what the helper
//! found.
//!
//! Anything out of the ordinary (a jump, a short read, an error) is left to the reader's own
//! reads: the helper is only ever a faster way to the same bytes.
//!
//! This file holds what the two threads share; the helper thread's own loop, walk, checks and
//! carry are in `read_ahead/helper.rs`.

mod helper;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::helper::Helper;
use crate::segment::reader::DropBehind;
use crate::segment::spare::{self, SpareBuf};
use crate::storage::StorageFile;

/// Room in front of each window for the end of the window before.
pub const HEADROOM: usize = 128 << 10;

/// What a window keeps of the one before where the helper follows no chain of frames (it
/// cannot tell where the reader's frame starts): a scan that has looked at the next block
/// boundary goes back to the frame it was on.
pub const LOOK_BACK: u64 = (HEADROOM / 2) as u64;

/// Bytes the helper reads at a time: as many as fit, with the headroom, in the largest buffer
/// the spare pool keeps (1 MiB). Larger reads copy out of the page cache faster per byte: a
/// warm 1 KiB replay took 29-30 ms with 896 KiB windows, 31-32 with 640, 35 with 384 and 39
/// with 256 (views, one build per size, BENCHMARKS.md). A window one byte larger would not go
/// back to the pool and would cost fresh, zeroed pages every time. 1 MiB windows, which once
/// measured ~20% slower than 256 KiB ones, needed 1.125 MiB with their headroom then too.
pub const CHUNK: usize = spare::MAX_LEN - HEADROOM;

/// The least a segment must hold past the reader's start to be worth a thread.
pub const MIN_BYTES: u64 = 1 << 20;

/// A window of a file: `len` bytes from `start`, held at `buf[lo..]`. In a window a helper
/// read, the frames of its chain from `checked_from` up to `chain_end` have matching
/// checksums; `checked_from` moves down as the helper checks them from the last one back,
/// while the reader checks from the first one on until they meet.
#[derive(Debug)]
pub struct Window {
    pub buf: SpareBuf,
    pub lo: usize,
    pub start: u64,
    pub len: usize,
    chain_end: u64,
    checked_from: Line,
    /// The end of the last frame the reader checked itself: the helper stops short of it.
    reader_at: Line,
}

/// An atomic on a cache line of its own: one thread writes it, the other reads it, and
/// neither should pay for the other's writes to its neighbour.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

impl Window {
    /// A window of nothing, with a buffer of `capacity` bytes.
    pub fn empty(capacity: usize, align: usize) -> Window {
        Window::in_buffer(SpareBuf::get(capacity, align), 0, 0)
    }

    /// A window of nothing yet at `start`, to be filled at `buf[lo..]`.
    fn in_buffer(buf: SpareBuf, lo: usize, start: u64) -> Window {
        Window { buf, lo, start, len: 0, chain_end: 0, checked_from: Line(AtomicU64::new(u64::MAX)), reader_at: Line::default() }
    }

    /// Empties the window (its checks with it) to be refilled at `start`, from `buf[0..]`.
    pub fn reset(&mut self, start: u64) {
        (self.lo, self.start, self.len, self.chain_end) = (0, start, 0, 0);
        *self.checked_from.0.get_mut() = u64::MAX;
    }

    /// Whether a helper checks frames of this window.
    pub fn has_checks(&self) -> bool {
        self.chain_end > 0
    }

    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.lo..self.lo + self.len]
    }

    #[inline]
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Whether the frame of `len` bytes at `offset`, a frame boundary on the helper's chain,
    /// was checked. If not, the reader checks it, and the helper stops before it.
    #[inline]
    pub fn checked(&self, offset: u64, len: usize) -> bool {
        let end = offset + len as u64;
        if end > self.chain_end {
            return false;
        }
        if offset >= self.checked_from.0.load(Ordering::Acquire) {
            return true;
        }
        self.reader_at.0.store(end, Ordering::Relaxed);
        false
    }
}

/// What the helper needs to read a file front to back.
#[derive(Debug)]
pub struct Plan<F> {
    pub file: Arc<F>,
    /// Where to start reading (aligned).
    pub from: u64,
    /// Where the reader's chain of frames starts (at or after `from`), or `None` to read only.
    pub chain: Option<u64>,
    /// The scan following the chain looks for a seal at the next boundary of this many bytes
    /// (a power of two, at least `align`) after an unaligned frame: see `Helper::carry`.
    pub block: u64,
    pub file_len: u64,
    pub align: usize,
    pub chunk: usize,
    /// The reader's drop-behind state, handed over while the helper reads (`None`: leave the
    /// page cache alone).
    pub drop_behind: Option<DropBehind>,
}

/// A helper thread reading chunks ahead of a reader; it stops when this is dropped.
#[derive(Debug)]
pub struct ReadAhead {
    filled: Option<Receiver<io::Result<Arc<Window>>>>,
    /// Set when the reader had to wait for a window: the helper then checks less.
    starved: Arc<AtomicBool>,
    /// How long to spin for a window before sleeping.
    patience: Patience,
    thread: Option<JoinHandle<Option<DropBehind>>>,
}

impl ReadAhead {
    /// Starts reading `plan.file` from `plan.from`; `None` where no thread can be had (the
    /// reader reads alone, as without help, and keeps its own drop-behind state).
    pub fn spawn<F: StorageFile>(plan: Plan<F>) -> Option<ReadAhead> {
        let (filled_tx, filled_rx) = sync_channel(1);
        let starved = Arc::new(AtomicBool::new(false));
        let helper = Helper::new(plan, Arc::clone(&starved));
        let spawned = std::thread::Builder::new().name("nodedb-wal-read".into()).spawn(move || helper.run(&filled_tx));
        match spawned {
            Ok(thread) => Some(ReadAhead { filled: Some(filled_rx), starved, patience: Patience::new(), thread: Some(thread) }),
            Err(err) => {
                tracing::debug!(%err, "no thread to read ahead; the reader reads alone");
                None
            }
        }
    }

    /// The next window, waiting for it if need be; `None` once the helper has stopped.
    pub fn next(&mut self) -> Option<io::Result<Arc<Window>>> {
        let filled = self.filled.as_ref()?;
        let starved = &self.starved;
        let attempt = || match filled.try_recv() {
            Ok(window) => Some(Some(window)),
            Err(TryRecvError::Disconnected) => Some(None),
            Err(TryRecvError::Empty) => {
                starved.store(true, Ordering::Relaxed);
                None
            }
        };
        self.patience.spin(attempt).unwrap_or_else(|| filled.recv().ok())
    }

    /// Stops the helper and takes back the drop-behind state, covering what it read.
    pub fn stop(mut self) -> Option<DropBehind> {
        self.halt()
    }

    fn halt(&mut self) -> Option<DropBehind> {
        // A helper waiting to hand over a window finds nobody to take it, and stops.
        self.filled = None;
        let thread = self.thread.take()?;
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Joined, not left running: the helper holds the file, and a reader's hold on a
        // segment must end when the reader does.
        if !std::thread::panicking() {
            let _ = self.halt();
        }
    }
}

/// The longest one side of the hand-over spins for the other before it sleeps. A window
/// takes tens of microseconds to read or to scan, so a wait is usually shorter than that;
/// and a thread put to sleep costs both cores a wake-up, which in a virtual machine means the
/// sleeping vCPU halts and must be woken by an interrupt through the host (BENCHMARKS.md).
/// The helper runs only where there is a core to spare, so the spinning core is one that
/// would otherwise idle.
const SPIN_FOR: Duration = Duration::from_micros(50);

/// How long one side spins before it sleeps, learnt from its last waits: spinning that ends
/// in a sleep anyway (a reader waiting for the disk, a helper far ahead of a slow consumer)
/// is halved away; spinning that pays, or no wait at all, earns it back.
#[derive(Debug)]
struct Patience {
    budget: Duration,
}

impl Patience {
    fn new() -> Patience {
        Patience { budget: SPIN_FOR }
    }

    /// Calls `attempt` until it gives a value, spinning between calls for at most the budget;
    /// `None` once the budget is spent: the caller then sleeps until the other side wakes it.
    fn spin<T>(&mut self, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
        if let Some(got) = attempt() {
            self.budget = (self.budget * 2).clamp(Duration::from_micros(1), SPIN_FOR);
            return Some(got);
        }
        let since = Instant::now();
        while since.elapsed() < self.budget {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if let Some(got) = attempt() {
                self.budget = (self.budget * 2).min(SPIN_FOR);
                return Some(got);
            }
        }
        self.budget /= 2;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::error::{IoOp, WalError};
    use crate::format::frame::{HEADER_LEN, RecordHeader, checksum_matches};
    use crate::segment::reader::{ChunkReader, LARGEST_FOLIO};

    /// A file in memory whose reads fail from `fail_from` on, counting the bytes read (and
    /// those read by a helper).
    pub(super) struct MemFile {
        bytes: Vec<u8>,
        fail_from: u64,
        read: AtomicU64,
        read_by_helper: AtomicU64,
        reads_by_helper: AtomicU64,
        /// The ranges the file was told to drop from the page cache.
        dropped: std::sync::Mutex<Vec<(u64, u64)>>,
        /// The ranges the file was told would be needed.
        prefetched: std::sync::Mutex<Vec<(u64, u64)>>,
    }

    impl MemFile {
        /// `bytes` in memory, whose reads fail from `fail_from` on.
        fn new(bytes: &[u8], fail_from: u64) -> MemFile {
            MemFile {
                bytes: bytes.to_vec(),
                fail_from,
                read: AtomicU64::new(0),
                read_by_helper: AtomicU64::new(0),
                reads_by_helper: AtomicU64::new(0),
                dropped: Default::default(),
                prefetched: Default::default(),
            }
        }

        /// A reader of the file, reading `chunk` bytes at a time in units of `align`.
        fn reader(bytes: &[u8], align: usize, chunk: usize) -> ChunkReader<MemFile> {
            ChunkReader::new(MemFile::new(bytes, u64::MAX), "mem".into(), bytes.len() as u64, align, chunk)
        }
    }

    impl StorageFile for MemFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            if offset + buf.len() as u64 > self.fail_from {
                return Err(io::Error::other("bad sector"));
            }
            let start = (offset as usize).min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - start);
            buf[..n].copy_from_slice(&self.bytes[start..start + n]);
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            if std::thread::current().name() == Some("nodedb-wal-read") {
                self.read_by_helper.fetch_add(n as u64, Ordering::Relaxed);
                self.reads_by_helper.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n)
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }
        fn advise(&self, advice: crate::storage::Advice, offset: u64, len: u64) {
            match advice {
                crate::storage::Advice::DontNeed => self.dropped.lock().unwrap().push((offset, offset + len)),
                crate::storage::Advice::WillNeed => self.prefetched.lock().unwrap().push((offset, offset + len)),
                _ => {}
            }
        }
    }

    const CHUNK: usize = 64 << 10;
    pub(super) const ALIGN: usize = 4096;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn reader(bytes: Vec<u8>, fail_from: u64) -> ChunkReader<MemFile> {
        reader_aligned(bytes, fail_from, ALIGN)
    }

    /// A reader reading in units of `align` bytes, helped for a scan of `ALIGN`-byte blocks.
    fn reader_aligned(bytes: Vec<u8>, fail_from: u64, align: usize) -> ChunkReader<MemFile> {
        let len = bytes.len() as u64;
        let mut reader = ChunkReader::new(MemFile::new(&bytes, fail_from), "mem".into(), len, align, CHUNK);
        reader.read_ahead();
        reader.serve_scan(ALIGN as u64);
        reader.start_read_ahead(0);
        reader
    }

    /// Walks `bytes` as a scan would (frames of mixed sizes, a look at the next block
    /// boundary, back to the frame), with jumps forward and back now and then, and checks
    /// every get against the bytes.
    fn walk(bytes: &[u8], reader: &mut ChunkReader<MemFile>, seed: u64) {
        // Without a chain of frames to follow the helper keeps `LOOK_BACK` of each chunk for
        // the next, so these stay within it (the frame tests below go beyond it).
        let sizes = [40usize, 200, 1100, 5000, 30_000, 60_000];
        let pick = noise(4096, seed);
        let (mut at, mut i) = (0u64, 0usize);
        while at < bytes.len() as u64 {
            let len = sizes[pick[i % pick.len()] as usize % sizes.len()];
            let boundary = (at / ALIGN as u64 + 1) * ALIGN as u64;
            for (offset, len) in [(boundary, 48), (at, len)] {
                if offset >= bytes.len() as u64 {
                    continue;
                }
                let got = reader.get(offset, len).unwrap();
                let end = (offset as usize + len).min(bytes.len());
                assert!(got == &bytes[offset as usize..end], "bytes at {offset}+{len}");
            }
            at += len as u64;
            match pick[(i * 7) % pick.len()] {
                0 => at += 3 * CHUNK as u64,
                1 => at = at.saturating_sub(2 * CHUNK as u64),
                _ => {}
            }
            i += 1;
        }
    }

    /// A headers-only scan asks for the blocks of the next headers at every header. With
    /// records of a block or less those were the same blocks again and again, or blocks the
    /// scan had read already: a prefetch asks only for bytes neither in hand nor asked for.
    #[test]
    fn prefetches_ask_for_no_byte_twice_and_none_in_hand() {
        let bytes = noise(1 << 20, 11);
        let mut reader = MemFile::reader(&bytes, ALIGN, 2 * ALIGN);
        reader.read_randomly();
        reader.get(0, 100).unwrap();
        let in_hand = 2 * ALIGN as u64;
        // As `Cursor::prefetch_headers` asks for 1 KiB records: 16 headers ahead, three blocks
        // from each guess, at every header.
        let (frame, window) = (1024u64, 3 * ALIGN as u64);
        let mut asked_for = 0;
        for at in (0..256).map(|i| i * frame) {
            for k in 1..=16 {
                let guess = at + k * frame;
                reader.prefetch(guess - guess % ALIGN as u64, window);
                asked_for += 1;
            }
        }
        let last = 255 * frame + 16 * frame;
        let wanted_end = last - last % ALIGN as u64 + window;
        let asked = reader.file().prefetched.lock().unwrap().clone();
        assert!(asked.len() * 16 <= asked_for, "{} calls for {asked_for} requests", asked.len());
        // Back to back from the end of the window in hand to the end of the last request.
        let mut expect_from = in_hand;
        for &(start, end) in &asked {
            assert_eq!(start, expect_from, "{asked:?}");
            assert!(end > start);
            expect_from = end;
        }
        assert_eq!(expect_from, wanted_end);
        // A request away from what was asked for is asked for whole.
        reader.prefetch(900 << 10, window);
        assert_eq!(reader.file().prefetched.lock().unwrap().last(), Some(&(900 << 10, (900 << 10) + window)));
    }

    #[test]
    fn a_reader_helped_by_a_read_ahead_thread_gets_the_bytes_it_would_read_alone() {
        for seed in 1..6 {
            let bytes = noise(3 << 20 | 12_345, seed);
            let mut helped = reader(bytes.clone(), u64::MAX);
            walk(&bytes, &mut helped, seed);
            let by_helper = helped.file().read_by_helper.load(Ordering::Relaxed);
            assert!(by_helper > bytes.len() as u64 / 2, "the helper read only {by_helper} bytes");
        }
    }

    #[test]
    fn a_read_error_met_by_the_helper_reaches_the_reader_as_a_read_error() {
        let bytes = noise(4 << 20, 9);
        let mut helped = reader(bytes, 2 << 20);
        let mut at = 0;
        let err = loop {
            match helped.get(at, 1000) {
                Ok(got) => assert_eq!(got.len(), 1000),
                Err(err) => break err,
            }
            at += 1000;
        };
        assert!(matches!(err, WalError::Io { op: IoOp::Read, .. }), "{err:?}");
        assert!(at + 1000 > (2 << 20) - CHUNK as u64, "failed only near the bad bytes, at {at}");
    }

    #[test]
    fn the_helper_reads_a_few_chunks_ahead_of_a_reader_that_stops_not_the_whole_file() {
        let bytes = noise(16 << 20, 3);
        let mut helped = reader(bytes, u64::MAX);
        helped.get(0, 100).unwrap();
        helped.get(CHUNK as u64 + 5, 100).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let read = helped.file().read.load(Ordering::Relaxed);
        assert!(read <= 6 * CHUNK as u64, "read {read} bytes for a reader two chunks in");
    }

    /// Frames with payloads of the given sizes, one after another; where each starts.
    pub(super) fn frames(sizes: impl Iterator<Item = usize>) -> (Vec<u8>, Vec<u64>) {
        crate::segment::test_frames::chain(sizes.enumerate().map(|(i, len)| noise(len, i as u64 + 1)))
    }

    /// Reads the frames as a scan does (a look at the next block boundary, then the frame);
    /// checks each frame's bytes and returns which the helper had checked.
    fn scan(bytes: &[u8], starts: &[u64], reader: &mut ChunkReader<MemFile>) -> Vec<bool> {
        let mut covered = Vec::new();
        for (i, &at) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len() as u64);
            let boundary = (at / ALIGN as u64 + 1) * ALIGN as u64;
            if boundary < bytes.len() as u64 {
                reader.get(boundary, HEADER_LEN).unwrap();
            }
            let len = (end - at) as usize;
            assert!(reader.get(at, len).unwrap() == &bytes[at as usize..end as usize], "frame {i}");
            covered.push(reader.checked_ahead(at, len));
        }
        covered
    }

    fn frame_sizes(n: usize, seed: u64) -> impl Iterator<Item = usize> {
        let sizes = [0usize, 100, 1000, 4000, 20_000, 70_000, 200_000, 3 * CHUNK + 77];
        noise(n, seed).into_iter().map(move |b| sizes[b as usize % sizes.len()])
    }

    /// Whether the frame at `at` (of `len` bytes) in `bytes` has a matching checksum.
    fn intact(bytes: &[u8], at: u64, len: usize) -> bool {
        let frame = &bytes[at as usize..at as usize + len];
        RecordHeader::decode(frame).is_ok_and(|h| checksum_matches(frame, &h))
    }

    /// A reader checks the frames the helper has not (as the scan does), and counts as
    /// checked only frames that are intact.
    fn scan_and_check(bytes: &[u8], starts: &[u64], reader: &mut ChunkReader<MemFile>) -> Vec<bool> {
        let covered = scan(bytes, starts, reader);
        for (i, &c) in covered.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len() as u64);
            assert!(!c || intact(bytes, starts[i], (end - starts[i]) as usize), "frame {i} counted as checked");
        }
        covered
    }

    #[test]
    fn the_helper_reads_frames_longer_than_a_chunk_whole_and_counts_only_intact_frames_checked() {
        let (bytes, starts) = frames(frame_sizes(200, 11));
        assert_helper_read_to_the_end(&bytes, &starts, reader(bytes.clone(), u64::MAX));
    }

    #[test]
    fn a_frame_many_chunks_long_is_read_by_the_helper_in_one_read_not_one_per_chunk() {
        // Read a chunk at a time, each window carried the frame's bytes so far into a new,
        // larger buffer: copying and zeroing grew with the square of the frame (14 s for a
        // 192 MiB record, found by a review).
        let sizes = [300usize, 5000, 40 * CHUNK + 123, 700, 900];
        let (bytes, starts) = frames(sizes.into_iter().chain(std::iter::repeat_n(2000, 40)));
        let mut helped = reader(bytes.clone(), u64::MAX);
        scan_and_check(&bytes, &starts, &mut helped);
        let reads = helped.file().reads_by_helper.load(Ordering::Relaxed);
        assert!(reads <= 4, "the helper made {reads} reads of a {}-byte file", bytes.len());
        assert!(helped.file().read_by_helper.load(Ordering::Relaxed) >= bytes.len() as u64 - CHUNK as u64);
    }

    // Found by review: each reading keeps the buffers of its large windows for the next one,
    // and a window a caller kept past the reading (a payload shared with it) kept the reading's
    // kept buffers too, up to twice its own memory more, for as long as the caller held it.
    #[test]
    fn a_large_window_kept_after_its_reading_pins_no_other_buffer() {
        let (bytes, _) = frames([3 << 20, 3 << 20, 3 << 20, 3 << 20, 100].into_iter());
        let mut ahead = ReadAhead::spawn(plan(&bytes)).expect("a thread");
        let mut kept = None;
        while let Some(window) = ahead.next() {
            let window = window.unwrap();
            if window.buf.len() > spare::MAX_LEN {
                kept = Some(window);
            }
        }
        let _ = ahead.stop();
        let kept = kept.expect("a window larger than the pool's");
        assert_eq!(kept.buf.home_kept(), 0, "buffers kept for a reading that is over");
    }

    /// Scans the frames (checking them) with `helped` and asserts that its helper read all but
    /// the first chunk of the file: it was never stopped for good.
    fn assert_helper_read_to_the_end(bytes: &[u8], starts: &[u64], mut helped: ChunkReader<MemFile>) {
        scan_and_check(bytes, starts, &mut helped);
        let by_helper = helped.file().read_by_helper.load(Ordering::Relaxed);
        assert!(by_helper >= bytes.len() as u64 - CHUNK as u64, "the helper read {by_helper} of {} bytes", bytes.len());
    }

    // Found by tracing a read-only open: its reader reads in 512-byte units a log of 4 KiB
    // blocks, each window kept one unit of the one before, and the scan's look at the next
    // 4 KiB boundary moved it on before it was done with its frame: the helper was stopped
    // at the first window's end and the reader read the segment alone.
    #[test]
    fn a_reader_aligned_finer_than_the_scans_blocks_keeps_its_helper_to_the_end() {
        let (bytes, starts) = frames(std::iter::repeat_n(1024, 4000));
        assert_helper_read_to_the_end(&bytes, &starts, reader_aligned(bytes.clone(), u64::MAX, 512));
    }

    // Found by tracing an open: the newest segment, read alone with O_DIRECT, was read almost
    // twice. The scan's look at the next block boundary moved the window past the frame it
    // was on, and reading that frame then read the whole chunk again from before it.
    #[test]
    fn a_scan_read_without_a_helper_reads_each_byte_about_once() {
        let (bytes, starts) = frames(std::iter::repeat_n(1024, 4000));
        let len = bytes.len() as u64;
        let mut alone = MemFile::reader(&bytes, ALIGN, CHUNK);
        alone.serve_scan(ALIGN as u64);
        scan(&bytes, &starts, &mut alone);
        let read = alone.file().read.load(Ordering::Relaxed);
        // Each chunk starts a block before the last one's end (at most a frame, here), so a
        // sixteenth of 64 KiB chunks is read again and a little more; not whole chunks.
        assert!(read <= len + len / 8, "read {read} bytes of a {len}-byte file");
    }

    #[test]
    fn a_reader_that_gives_up_its_planned_helper_reads_whole_chunks() {
        // Recovery plans a helper before it reads a segment's head; where the head is damaged
        // it looks for claims over the whole file instead, a scan no helper follows. Reading
        // only what it asked for, that look read every block twice, a call per block (found by
        // a review).
        let (bytes, starts) = frames(std::iter::repeat_n(1024, 4000));
        let len = bytes.len() as u64;
        let mut planned = MemFile::reader(&bytes, ALIGN, CHUNK);
        planned.read_ahead();
        planned.read_alone();
        planned.serve_scan(ALIGN as u64);
        scan(&bytes, &starts, &mut planned);
        let read = planned.file().read.load(Ordering::Relaxed);
        assert!(read <= len + len / 8, "read {read} bytes of a {len}-byte file");
    }

    /// A headers-only scan over `bytes` (frames at `starts`) in windows of two blocks, with its
    /// look at the next block boundary; returns the bytes it read.
    fn scan_headers_only(bytes: &[u8], starts: &[u64]) -> u64 {
        let len = bytes.len() as u64;
        let mut lazy = MemFile::reader(bytes, ALIGN, 2 * ALIGN);
        lazy.read_randomly();
        lazy.serve_scan(ALIGN as u64);
        for &at in starts {
            assert!(lazy.get(at, HEADER_LEN).unwrap() == &bytes[at as usize..at as usize + HEADER_LEN]);
            let boundary = (at / ALIGN as u64 + 1) * ALIGN as u64;
            if at % ALIGN as u64 != 0 && boundary < len {
                lazy.get(boundary, HEADER_LEN).unwrap();
            }
        }
        lazy.file().read.load(Ordering::Relaxed)
    }

    #[test]
    fn a_headers_only_scan_of_large_frames_reads_two_blocks_a_header() {
        let (bytes, starts) = frames(std::iter::repeat_n(60_000, 200));
        let read = scan_headers_only(&bytes, &starts);
        assert!(read <= starts.len() as u64 * 2 * ALIGN as u64, "read {read} bytes for {} headers", starts.len());
    }

    /// A headers-only scan reads in windows of two blocks (so that skipped payloads stay on
    /// disk). Its look at the next boundary used to move the window past the next header,
    /// which then moved it back: small frames were read four times over; with the window
    /// starting a block before a look, twice; with windows that grow while the headers follow
    /// one another, about once.
    #[test]
    fn a_headers_only_scan_of_small_frames_reads_each_block_about_once() {
        let (bytes, starts) = frames(std::iter::repeat_n(1024, 4000));
        let len = bytes.len() as u64;
        let read = scan_headers_only(&bytes, &starts);
        assert!(read <= len + len / 8, "read {read} bytes of a {len}-byte file");
    }

    #[test]
    fn a_damaged_frame_never_counts_as_checked() {
        let (mut bytes, starts) = frames(frame_sizes(300, 12));
        // A payload byte of a frame with a payload, half-way along.
        let bad = (150..).find(|&i| starts[i + 1] - starts[i] > HEADER_LEN as u64 + 10).unwrap();
        bytes[starts[bad] as usize + HEADER_LEN + 5] ^= 0x10;
        let mut helped = reader(bytes.clone(), u64::MAX);
        // A scan stops at the damage; this one goes on, so that frames after it are asked about
        // too. Whichever the helper reached, only intact ones count.
        let covered = scan_and_check(&bytes, &starts, &mut helped);
        assert!(!covered[bad]);
    }

    /// A helper's plan for reading `bytes` from the start, following its chain of frames.
    pub(super) fn plan(bytes: &[u8]) -> Plan<MemFile> {
        Plan {
            file: Arc::new(MemFile::new(bytes, u64::MAX)),
            from: 0,
            chain: Some(0),
            block: ALIGN as u64,
            file_len: bytes.len() as u64,
            align: ALIGN,
            chunk: CHUNK,
            drop_behind: None,
        }
    }

    #[test]
    fn spinning_that_ends_in_sleeps_is_given_up_and_waits_that_pay_earn_it_back() {
        let mut patience = Patience::new();
        assert_eq!(patience.spin(|| None::<()>), None);
        assert_eq!(patience.budget, SPIN_FOR / 2, "a spin that ended in a sleep halves the next");
        while patience.budget > Duration::ZERO {
            assert_eq!(patience.spin(|| None::<()>), None);
        }
        let mut attempts = 0;
        assert_eq!(
            patience.spin(|| {
                attempts += 1;
                None::<()>
            }),
            None
        );
        assert_eq!(attempts, 1, "with no budget left: one try, then sleep at once");
        assert_eq!(patience.spin(|| Some(7)), Some(7));
        assert_eq!(patience.budget, Duration::from_micros(1), "no wait at all earns spinning back");
        for _ in 0..10 {
            patience.spin(|| Some(()));
        }
        assert_eq!(patience.budget, SPIN_FOR, "and it grows back to the cap, no further");
    }

    #[test]
    fn drop_behind_covers_every_byte_read_once_in_steps_that_end_where_no_folio_crosses() {
        let file = MemFile::new(&[], u64::MAX);
        let len = 32 << 20;
        let mut behind = DropBehind::default();
        // Reads of the helper's size, whose ends fall inside 2 MiB folios.
        let mut at = 0;
        while at < len {
            let end = (at + super::CHUNK as u64).min(len);
            behind.note(&file, at, end, len);
            at = end;
        }
        let ranges = file.dropped.into_inner().unwrap();
        assert!(ranges.len() > 2, "dropped in steps behind the reads: {ranges:?}");
        let mut covered = 0;
        for (i, &(from, to)) in ranges.iter().enumerate() {
            assert_eq!(from, covered, "no gap and no byte twice: {ranges:?}");
            if i + 1 < ranges.len() {
                assert_eq!(to % LARGEST_FOLIO, 0, "step {i} ends inside a folio: {ranges:?}");
            }
            covered = to;
        }
        assert_eq!(covered, len, "all of it by the end of the file");
    }
}
