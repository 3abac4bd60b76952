//! The owner's open removes the segments a truncation left below the floor when a crash cut
//! it short. A file under such a name that is no segment of this log (another program's
//! file, bytes that are no segment head, a segment of another id copied there, a directory)
//! is left as found, and the log opens with every record: it was never the log's to remove.
//! A segment the log made that a truncation left there is still removed.
//!
//! Found by a hostile review on ext4: the open removed any file named like a segment below
//! the floor without reading it (here `00000000000000000000.wal`, below a new log's floor of
//! 1), and a directory under that name failed the open with `Remove`.

mod common;

use std::path::Path;

use common::{assert_records, config, read_all, seg, write_log};
use nodedb_wal::{FsStorage, Lsn, SegmentedWal};

/// Opens the log in `dir` as its owner, checks every record, and closes it.
fn opens_whole(dir: &Path, last: u64) {
    let wal = SegmentedWal::open(config(dir)).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(wal.oldest_lsn(), Lsn::FIRST);
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
}

#[test]
fn a_file_below_the_floor_that_is_no_segment_of_the_log_is_left_as_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let stray = seg(&dir, 0);
    let segment_one = std::fs::read(seg(&dir, 1)).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("another program's file", b"someone's notes, not a segment".to_vec()),
        ("an empty file", Vec::new()),
        ("a copy of segment 1 (its head names 1)", segment_one),
    ];
    for (what, bytes) in cases {
        std::fs::write(&stray, &bytes).unwrap();
        opens_whole(&dir, last);
        assert_eq!(std::fs::read(&stray).unwrap_or_else(|e| panic!("{what}: {e}")), bytes, "{what} is left as found");
        std::fs::remove_file(&stray).unwrap();
    }
    std::fs::create_dir(&stray).unwrap();
    opens_whole(&dir, last);
    assert!(stray.is_dir(), "a directory is left as found");
}

#[test]
fn a_segment_a_truncation_left_below_the_floor_is_still_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let kept = tmp.path().join("segment-1");
    std::fs::copy(seg(&dir, 1), &kept).unwrap();
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    let floor = wal.segments()[1].first_lsn;
    assert_eq!(wal.truncate_before(floor).unwrap(), 1);
    wal.close().unwrap();
    // As a crash between the floor's sync and the removal leaves it.
    std::fs::copy(&kept, seg(&dir, 1)).unwrap();

    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert!(!seg(&dir, 1).exists(), "the open removed the truncated segment");
    assert_records(&read_all(&wal), floor.0, last);
}
