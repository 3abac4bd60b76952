//! Checking a mapped segment's frames ahead of its reader, on another core.
//!
//! Replaying a log from the page cache costs about as much in CRC32C as in everything else
//! together: one core checks ~10 GB/s, and a plain read copies about as fast. A catch-up
//! reader of a sealed, mapped segment therefore hands the checksums to a helper thread that
//! walks the same chain of frames a little ahead. The reader skips the checksum of a frame
//! the helper has passed and checks the others itself, so nothing is handed out unchecked,
//! and a reader that catches up only loses the help.
//!
//! Why skipping is sound: both walk the chain of frames from the same start, each frame's
//! length read from its own header, over bytes that cannot change (a sealed segment, held
//! against reuse). So a frame the reader reaches inside the checked range is one the helper
//! checked, with the same header.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::format::frame::{RecordHeader, checksum_matches};
use crate::storage::Mapping;

/// How far the helper may run ahead of the reader: pages it brings in from the disk stay in
/// the page cache until the reader releases them.
const LEAD: u64 = 8 << 20;

/// The helper tells the reader of its progress every this many bytes (a lock each time).
const PUBLISH: u64 = 16 << 10;

/// How far past an overtaking reader the helper goes on (walking headers only) to be ahead
/// again: the reader checks those frames itself.
const JUMP: u64 = 64 << 10;

/// A reader the helper is ahead of tells it its place every this many bytes.
const REPORT_EVERY: u64 = 1 << 20;

/// A reader the helper has fallen behind asks again only after this many more bytes.
const ASK_EVERY: u64 = 4 << 10;

/// The least a mapped segment must hold past the reader's start to be worth a thread.
pub const MIN_BYTES: u64 = 1 << 20;

/// What the helper and the reader share.
#[derive(Debug, Default)]
struct Progress {
    /// Every frame of the chain in `from..checked` has a matching checksum; one lock, so that
    /// the reader never pairs a new start with an old end.
    checked: Mutex<(u64, u64)>,
    /// Where the reader was when it last asked: a frame boundary on the same chain.
    reader_at: AtomicU64,
    /// The reader is gone.
    stop: AtomicBool,
}

impl Progress {
    fn checked(&self) -> (u64, u64) {
        *self.checked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, range: (u64, u64)) {
        *self.checked.lock().unwrap_or_else(PoisonError::into_inner) = range;
    }
}

/// A helper thread checking frames ahead of a reader; it stops when this is dropped.
#[derive(Debug)]
pub struct CheckAhead {
    progress: Arc<Progress>,
    /// The last range learnt from the helper: checked frames stay checked (the bytes do not
    /// change), so the reader asks again only past its end.
    known: (u64, u64),
    /// Where the reader asks next, when the helper was behind it the last time.
    next_ask: u64,
    /// Where the reader next tells the helper its place while the helper is ahead, so that
    /// the helper's lead is measured from a recent place (see `LEAD`).
    next_report: u64,
    /// The helper, to wake when it waits for the reader (see `LEAD`) and the reader moved on
    /// or went away.
    helper: std::thread::Thread,
}

impl CheckAhead {
    /// Starts checking the frames of `map` chained from `start` (a frame boundary). `None`
    /// where no thread can be had: the reader checks everything itself, as without help.
    pub fn spawn(map: Arc<Mapping>, start: u64) -> Option<CheckAhead> {
        let progress = Arc::new(Progress { checked: Mutex::new((start, start)), reader_at: AtomicU64::new(start), ..Progress::default() });
        let shared = Arc::clone(&progress);
        let spawned = std::thread::Builder::new().name("nodedb-wal-check".into()).spawn(move || check_chain(&map, start, &shared));
        match spawned {
            Ok(handle) => {
                Some(CheckAhead { progress, known: (start, start), next_ask: 0, next_report: 0, helper: handle.thread().clone() })
            }
            Err(err) => {
                tracing::debug!(%err, "no thread to check ahead; the reader checks alone");
                None
            }
        }
    }

    /// Whether the frame of `len` bytes at `at` (a frame boundary the reader reached on the
    /// chain) was checked.
    #[inline]
    pub fn covers(&mut self, at: u64, len: usize) -> bool {
        let end = at + len as u64;
        if at >= self.known.0 && end <= self.known.1 {
            if at >= self.next_report {
                self.progress.reader_at.store(at, Ordering::Relaxed);
                self.helper.unpark();
                self.next_report = at + REPORT_EVERY;
            }
            return true;
        }
        if at < self.next_ask {
            return false;
        }
        self.progress.reader_at.store(at, Ordering::Relaxed);
        self.helper.unpark();
        self.known = self.progress.checked();
        let covered = at >= self.known.0 && end <= self.known.1;
        if !covered {
            self.next_ask = at + ASK_EVERY;
        }
        covered
    }
}

impl Drop for CheckAhead {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        self.helper.unpark();
    }
}

/// The helper: checks frame after frame until the chain ends (a frame that does not check,
/// or the end of the map; the reader works out which it is) or the reader goes away.
fn check_chain(map: &Mapping, start: u64, progress: &Progress) {
    let bytes = map.bytes();
    let (mut from, mut at) = (start, start);
    let mut published = start;
    while !progress.stop.load(Ordering::Relaxed) {
        // The reader writes its place only when it asks (rarely while the helper is ahead), so
        // reading it for every frame costs little.
        let reader = progress.reader_at.load(Ordering::Relaxed);
        if reader > at {
            // Overtaken: get ahead again by following headers alone. The reader follows the
            // same lengths from the same bytes, so it meets the same boundaries, and it checks
            // the frames skipped here itself.
            let Some(ahead) = walk_headers(bytes, reader, JUMP) else { break };
            (from, at, published) = (ahead, ahead, ahead);
            progress.publish((from, at));
        } else if at - reader > LEAD {
            progress.publish((from, at));
            published = at;
            // Until the reader reports a new place or goes away. It used to look again every
            // 200 µs: a reader kept idle (a slow subscriber's tail, a paused replay) cost
            // thousands of wake-ups a second for as long as it lived.
            std::thread::park();
            continue;
        }
        let Some(end) = check_frame(bytes, at) else { break };
        at = end;
        if at >= published + PUBLISH {
            progress.publish((from, at));
            published = at;
        }
    }
    progress.publish((from, at));
}

/// The end of the frame at `at` if it is whole and its checksum matches.
fn check_frame(bytes: &[u8], at: u64) -> Option<u64> {
    let header = frame_header(bytes, at)?;
    let from = usize::try_from(at).ok()?;
    let frame = bytes.get(from..from + header.frame_len())?;
    checksum_matches(frame, &header).then(|| at + header.frame_len() as u64)
}

/// The first frame boundary at least `distance` past `at`, following frame lengths only.
fn walk_headers(bytes: &[u8], mut at: u64, distance: u64) -> Option<u64> {
    let target = at + distance;
    while at < target {
        let header = frame_header(bytes, at)?;
        at += header.frame_len() as u64;
    }
    Some(at)
}

/// The header of a whole frame at `at`, if one decodes there.
fn frame_header(bytes: &[u8], at: u64) -> Option<RecordHeader> {
    let from = usize::try_from(at).ok()?;
    let header = RecordHeader::decode(bytes.get(from..)?).ok()?;
    (from.checked_add(header.frame_len())? <= bytes.len()).then_some(header)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::format::frame::HEADER_LEN;

    /// A file of `n` frames of `len`-byte payloads; the offsets where each frame starts, and
    /// where the last one ends.
    fn frames(n: u64, len: usize) -> (tempfile::NamedTempFile, Vec<u64>) {
        let (bytes, mut starts) = crate::segment::test_frames::chain((1..=n).map(|lsn| vec![lsn as u8; len]));
        starts.push(bytes.len() as u64);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        (file, starts)
    }

    fn map(file: &tempfile::NamedTempFile) -> Arc<Mapping> {
        let f = std::fs::File::open(file.path()).unwrap();
        let len = f.metadata().unwrap().len();
        Arc::new(Mapping::sequential(&f, len).unwrap())
    }

    /// Where the helper's checks end once it has reached `want` (waiting up to 20 s for it: a
    /// busy machine may start the thread late), and then had time to go past it if it would.
    fn settle(ahead: &CheckAhead, want: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ahead.progress.checked().1 < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        ahead.progress.checked().1
    }

    #[test]
    fn the_helper_covers_every_frame_of_a_whole_chain() {
        let (file, starts) = frames(500, 300);
        let mut ahead = CheckAhead::spawn(map(&file), 0).unwrap();
        assert_eq!(settle(&ahead, *starts.last().unwrap()), *starts.last().unwrap());
        for pair in starts.windows(2) {
            assert!(ahead.covers(pair[0], (pair[1] - pair[0]) as usize));
        }
    }

    #[test]
    fn the_helper_stops_before_a_damaged_frame_and_covers_nothing_past_it() {
        let (file, starts) = frames(500, 300);
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[starts[200] as usize + HEADER_LEN + 5] ^= 0x40;
        std::fs::write(file.path(), &bytes).unwrap();
        let mut ahead = CheckAhead::spawn(map(&file), 0).unwrap();
        assert_eq!(settle(&ahead, starts[200]), starts[200], "checked up to the damaged frame, not into it");
        assert!(ahead.covers(starts[199], (starts[200] - starts[199]) as usize));
        assert!(!ahead.covers(starts[200], (starts[201] - starts[200]) as usize));
    }

    #[test]
    fn a_helper_overtaken_by_its_reader_gets_ahead_of_it_and_covers_no_frame_it_skipped() {
        let (file, starts) = frames(5_000, 300);
        let map = map(&file);
        // The reader is at frame 1000 before the helper starts: the helper jumps past it.
        let reader = starts[1000];
        let progress = Arc::new(Progress { checked: Mutex::new((0, 0)), reader_at: AtomicU64::new(reader), ..Progress::default() });
        let shared = Arc::clone(&progress);
        std::thread::spawn(move || check_chain(&map, 0, &shared)).join().unwrap();
        let (from, checked) = progress.checked();
        assert_eq!(checked, *starts.last().unwrap());
        assert!(from >= reader + JUMP && starts.contains(&from), "a frame boundary past the jump: {from}");
        let mut ahead = CheckAhead { progress, known: (0, 0), next_ask: 0, next_report: 0, helper: std::thread::current() };
        assert!(!ahead.covers(starts[1000], (starts[1001] - starts[1000]) as usize), "skipped, not checked");
        assert!(ahead.covers(from, 348));
    }
}
