//! A segment file removed by hand (or by a partial restore, a careless cleanup) while a log is
//! open is `MissingSegment` for every reader, never `SegmentTruncated`: that error tells the
//! caller to read again from the oldest LSN, which meets the same hole forever, since the
//! log's own truncation never took the segment. Truncation makes a floor above a segment
//! durable before it takes the file away, so a `FLOOR` that still names the segment (or one
//! below it) as the oldest the log needs tells the two apart. Once the file is put back,
//! every reader returns every record, and nothing was written meanwhile.
//!
//! Found by a hostile review on the real file system: the owner's readers, tail and parallel
//! replay, and a read-only look's readers, all said "segment 3 was truncated while a reader
//! still needed it; read again from the oldest LSN the log still holds" while
//! `oldest_lsn()` was still 1.

mod common;

use std::time::Duration;

use common::{assert_records, config, seg, snapshot, write_log};
use nodedb_wal::{FsStorage, Lsn, MissingBecause, ReadOnlyWal, SegmentId, SegmentedWal, WalError, WalRecord};

/// What a reader gave: the records up to its error, and the error.
type Read = (Vec<WalRecord>, Option<WalError>);

fn drain(it: impl Iterator<Item = nodedb_wal::Result<WalRecord>>) -> Read {
    let mut records = Vec::new();
    for r in it {
        match r {
            Ok(r) => records.push(r),
            Err(e) => return (records, Some(e)),
        }
    }
    (records, None)
}

/// Every reader of the owner and of a read-only look opened before the removal.
fn every_reader(wal: &SegmentedWal<FsStorage>, look: &ReadOnlyWal<FsStorage>) -> Vec<(&'static str, Read)> {
    let from = Lsn::FIRST;
    let mut tail = wal.tail(from);
    let mut tailed = Vec::new();
    let tail_err = loop {
        match tail.next_timeout(Duration::ZERO) {
            Ok(Some(r)) => tailed.push(r),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut replayed = 0;
    let replay = wal.replay_parallel(from, 2, |_| {
        replayed += 1;
        Ok(())
    });
    let mut lazy = wal.lazy_reader(from).unwrap();
    let lazy_err = loop {
        match lazy.next_header() {
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    vec![
        ("read_from", drain(wal.read_from(from).unwrap())),
        ("read_mapped", drain(wal.read_mapped(from).unwrap())),
        ("tail", (tailed, tail_err)),
        ("replay_parallel", (Vec::new(), replay.err())),
        ("lazy_reader", (Vec::new(), lazy_err)),
        ("look read_from", drain(look.read_from(from).unwrap())),
        ("look read_mapped", drain(look.read_mapped(from).unwrap())),
    ]
}

/// Removes segment `victim` of an open log, checks every reader's error, puts it back, checks
/// every record is there.
fn removed_segment_is_missing_for_every_reader(victim: u64, why: MissingBecause) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert!(wal.segments().len() >= 4, "the log needs segments on both sides of the victim");
    let look = ReadOnlyWal::open(&dir, None).unwrap();
    let taken = tmp.path().join("taken");
    std::fs::rename(seg(&dir, victim), &taken).unwrap();
    let before = snapshot(&dir);

    for (reader, (records, err)) in every_reader(&wal, &look) {
        let Some(err) = err else { panic!("{reader}: read past a removed segment without an error") };
        match &err {
            WalError::MissingSegment { missing, why: said, .. } => {
                assert_eq!(*missing, SegmentId(victim), "{reader}: {err}");
                assert_eq!(*said, why, "{reader}: {err}");
            }
            _ => panic!("{reader}: expected MissingSegment for segment {victim}, got {err:?}"),
        }
        let counts_records = !matches!(reader, "replay_parallel" | "lazy_reader");
        if counts_records && victim > 1 {
            assert_records(&records, 1, records.last().unwrap().lsn.0);
            assert!(records.len() >= 80, "{reader}: the records before the hole come first");
        }
    }
    assert_eq!(wal.oldest_lsn(), Lsn::FIRST, "nothing was truncated");
    assert_eq!(snapshot(&dir), before, "a failed read changes nothing");

    std::fs::rename(&taken, seg(&dir, victim)).unwrap();
    for (reader, (records, err)) in every_reader(&wal, &look) {
        assert!(err.is_none(), "{reader} after the file is back: {err:?}");
        if !records.is_empty() {
            assert_records(&records, 1, last);
        }
    }
    drop(look);
    wal.close().unwrap();
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&drain(wal.read_from(Lsn::FIRST).unwrap()).0, 1, last);
}

#[test]
fn a_middle_segment_removed_under_open_readers_is_missing_not_truncated() {
    removed_segment_is_missing_for_every_reader(3, MissingBecause::Hole);
}

#[test]
fn the_oldest_segment_removed_under_open_readers_is_missing_not_truncated() {
    removed_segment_is_missing_for_every_reader(1, MissingBecause::Floor);
}

#[test]
fn a_segment_the_log_truncated_is_still_truncated_for_a_reader_that_listed_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    write_log(&FsStorage::new(), &dir, &[40; 8]);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    let mut reader = wal.read_from(Lsn::FIRST).unwrap();
    let first = reader.next().unwrap().unwrap();
    assert_eq!(first.lsn, Lsn::FIRST);
    let second_segment = wal.segments()[1].first_lsn;
    wal.truncate_before(wal.segments()[2].first_lsn).unwrap();
    // The reader holds segment 1 open; segment 2, which it has not opened yet, is gone.
    let err = reader.find_map(Result::err).expect("the reader meets the truncation");
    assert!(matches!(err, WalError::SegmentTruncated { segment: SegmentId(2) }), "{err:?} (segment 2 began at {second_segment})");
}

/// A truncation that reaches a segment removed by hand takes it as removed and goes on: the
/// floor above it is durable first, so nothing is lost, where an error at that file (`Remove`
/// or `Rename`, `NotFound`) stopped every later truncation too until a reopen, and the disk
/// filled with the segments above it. With and without kept files for reuse.
fn truncation_goes_past_a_segment_removed_by_hand(recycle: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let mut cfg = config(&dir);
    cfg.recycle_segments = recycle;
    let wal = SegmentedWal::open(cfg.clone()).unwrap();
    std::fs::remove_file(seg(&dir, 2)).unwrap();
    let checkpoint = wal.segments()[3].first_lsn;
    assert_eq!(wal.truncate_before(checkpoint).unwrap(), 3, "segments 1 to 3 are gone");
    assert_eq!(wal.oldest_lsn(), checkpoint);
    let segments: Vec<u64> = wal.segments().iter().map(|s| s.id.0).collect();
    assert_eq!(segments, [4]);
    assert_records(&drain(wal.read_from(checkpoint).unwrap()).0, checkpoint.0, last);
    wal.close().unwrap();
    let wal = SegmentedWal::open(cfg).unwrap();
    assert_records(&drain(wal.read_from(checkpoint).unwrap()).0, checkpoint.0, last);
}

#[test]
fn truncation_goes_past_a_segment_removed_by_hand_with_kept_files() {
    truncation_goes_past_a_segment_removed_by_hand(2);
}

#[test]
fn truncation_goes_past_a_segment_removed_by_hand_without_kept_files() {
    truncation_goes_past_a_segment_removed_by_hand(0);
}
