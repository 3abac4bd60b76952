//! A read-only look overtaken by the writer's truncation looks again, and how often it may is
//! not a count of truncations (a starved reader beside a fast writer meets many) but of the
//! writer having replaced every segment the look listed, over and over: a look that a loaded
//! machine slows down still opens, and one that the writer always outruns still ends, with the
//! truncation error.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{append_synced, config};
use nodedb_wal::recovery::inspect_dir;
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage};
use nodedb_wal::{SegmentedWal, SimStorage, WalError};

/// A storage on which the look's every open of a segment (until `left` runs out) is overtaken
/// first: the writer rolls a new segment and truncates the oldest, the one a scan opens first.
#[derive(Clone)]
struct Overtaking {
    inner: SimStorage,
    wal: Arc<SegmentedWal<SimStorage>>,
    left: Arc<AtomicUsize>,
    races: Arc<AtomicUsize>,
}

impl Storage for Overtaking {
    type File = <SimStorage as Storage>::File;
    type Lock = <SimStorage as Storage>::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Self::File> {
        let segment = nodedb_wal::segment::parse_name(path.file_name().and_then(|n| n.to_str()).unwrap_or("")).is_some();
        if segment && !mode.write && self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.races.fetch_add(1, Ordering::SeqCst);
            roll_and_truncate_oldest(&self.wal);
        }
        self.inner.open(path, mode)
    }
}

/// The writer appends until it rolls a new segment, then truncates its oldest.
fn roll_and_truncate_oldest(wal: &SegmentedWal<SimStorage>) {
    let segments = wal.segments().len();
    while wal.segments().len() == segments {
        let lsn = wal.next_lsn().0;
        append_synced(wal, lsn, lsn);
    }
    let second = wal.segments()[1].first_lsn;
    wal.truncate_before(second).unwrap();
}

/// A log of four segments on a simulated disk, and a storage on which a look is overtaken on
/// its first `races` opens of a segment.
fn overtaken_log(dir: &Path, races: usize) -> Overtaking {
    let sim = SimStorage::new(7, FaultConfig::default());
    let wal = Arc::new(SegmentedWal::open_with(sim.clone(), config(dir)).unwrap());
    while wal.segments().len() < 4 {
        let lsn = wal.next_lsn().0;
        append_synced(&*wal, lsn, lsn);
    }
    Overtaking { inner: sim, wal, left: Arc::new(AtomicUsize::new(races)), races: Arc::new(AtomicUsize::new(0)) }
}

// Seen failing before the fix: the look gave up after 8 rescans (`SegmentTruncated`) although
// each one found the log moved on, as a starved reader beside a fast writer does.
#[test]
fn a_look_overtaken_more_often_than_it_used_to_allow_opens_once_it_gets_a_scan_through() {
    let dir = Path::new("/wal");
    let storage = overtaken_log(dir, 20);
    let info = inspect_dir(&storage, dir, None).unwrap_or_else(|e| panic!("a look overtaken 20 times: {e}"));
    assert_eq!(storage.races.load(Ordering::SeqCst), 20);
    let wal_segments: Vec<_> = storage.wal.segments().iter().map(|s| s.id).collect();
    let seen: Vec<_> = info.segments.iter().map(|s| s.id).collect();
    assert_eq!(seen, wal_segments, "the look sees the log as it is after the last race");
    assert_eq!(info.last_lsn.0 + 1, storage.wal.next_lsn().0);
}

#[test]
fn a_look_the_writer_always_overtakes_ends_with_the_truncation_error_in_bounded_rescans() {
    let dir = Path::new("/wal");
    let storage = overtaken_log(dir, usize::MAX);
    let err = inspect_dir(&storage, dir, None).unwrap_err();
    assert!(matches!(err, WalError::SegmentTruncated { .. }), "{err}");
    // Eight times the writer replaced every segment of the log (four) under the look, and the
    // last look, overtaken once more.
    let races = storage.races.load(Ordering::SeqCst);
    assert!(races <= 8 * 4 + 2, "{races} races");
}
