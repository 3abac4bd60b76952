//! Fault injection on the real file system, per log instance (`FaultyStorage`): EIO and ENOSPC
//! on a write, a write that stops half way, EIO on fdatasync, a failing directory fsync, a file
//! system that refuses O_DIRECT. Each ends in a typed error, a poisoned log where a write or
//! sync failed (never retried, never reported durable), and no acknowledged record lost: the
//! directory, reopened on the plain file system, returns every acknowledged record intact.
//! The tests run in parallel, each on its own directory and its own fault plan. The write and
//! sync faults run twice: once with the lone appender writing its own batches, once with a
//! commit window, which leaves all writing to the flusher thread.

use std::path::Path;

use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::{FsStorage, IoOp, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, WalError};

const TY: RecordType = RecordType::optional(0x100);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i as usize * 131) % 2000 + 1;
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// Appends durably until the first error; returns the acknowledged LSNs and that error.
fn append_until_error(wal: &SegmentedWal<FaultyStorage<FsStorage>>, from: u64, max: u64) -> (Vec<Lsn>, Option<WalError>) {
    let mut acked = Vec::new();
    for i in from..from + max {
        match wal.append_durable(Record::new(TY, &payload(i))) {
            Ok(lsn) => acked.push(lsn),
            Err(e) => return (acked, Some(e)),
        }
    }
    (acked, None)
}

/// Reopens `dir` on the plain file system and checks that every acknowledged record is there,
/// in order, with its payload, and that the log takes new appends.
fn assert_acknowledged_records_survive(dir: &Path, acked: &[Lsn]) {
    let wal = SegmentedWal::open_with(FsStorage::new(), config(dir)).expect("reopening after the fault");
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().expect("replay after the fault");
    for lsn in acked {
        let record = records.get((lsn.0 - 1) as usize).unwrap_or_else(|| panic!("acknowledged {lsn} is gone"));
        assert_eq!(record.lsn, *lsn);
        assert_eq!(record.payload, payload(lsn.0), "acknowledged {lsn} changed");
    }
    let next = wal.append_durable(Record::new(TY, b"after")).expect("the reopened log takes appends");
    assert!(next.0 > acked.last().map_or(0, |l| l.0));
}

/// Opens a faulty log, acknowledges some records, arms `arm`, appends until the first error,
/// checks that the error names `op` and that the log stays poisoned, then checks the disk.
/// What the faulty run left: the wrapper, the first error, and how many appends were
/// acknowledged after the fault was armed.
struct Faulted {
    faulty: FaultyStorage<FsStorage>,
    err: WalError,
    acked_after_arm: usize,
}

/// Runs [`fault_poisons_and_loses_nothing_with`] twice: with one appender the caller writes
/// its own batches, and with a commit window the flusher thread writes them; the failure must
/// be handled the same on either thread. Returns the second run's result.
fn fault_poisons_and_loses_nothing(arm: impl Fn(&FaultyStorage<FsStorage>), op: IoOp) -> Faulted {
    fault_poisons_and_loses_nothing_with(&arm, op, None);
    fault_poisons_and_loses_nothing_with(&arm, op, Some(std::time::Duration::from_micros(1)))
}

fn fault_poisons_and_loses_nothing_with(
    arm: &impl Fn(&FaultyStorage<FsStorage>),
    op: IoOp,
    commit_window: Option<std::time::Duration>,
) -> Faulted {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    let mut c = config(dir.path());
    c.commit_window = commit_window;
    let wal = SegmentedWal::open_with(faulty.clone(), c).unwrap();
    let (mut acked, err) = append_until_error(&wal, 1, 20);
    assert!(err.is_none(), "{err:?}");
    arm(&faulty);
    let (more, err) = append_until_error(&wal, 21, 500);
    let acked_after_arm = more.len();
    acked.extend(more);
    let err = err.expect("the armed fault hit an append");
    assert!(faulty.injected() > 0);
    assert!(matches!(err, WalError::Poisoned { op: o, .. } if o == op), "{err}");
    let again = wal.append(Record::new(TY, b"x")).unwrap_err();
    assert!(matches!(again, WalError::Poisoned { op: o, .. } if o == op), "later calls stay poisoned: {again}");
    assert!(wal.durable_lsn() <= *acked.last().unwrap(), "nothing after the fault is reported durable");
    assert!(wal.stats().poisoned, "the metrics show the poisoned state");
    drop(wal);
    assert_acknowledged_records_survive(dir.path(), &acked);
    Faulted { faulty, err, acked_after_arm }
}

#[test]
fn eio_on_a_write_poisons_the_log_and_loses_no_acknowledged_record() {
    fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::Write, 3, EIO), IoOp::Write);
}

#[test]
fn enospc_on_a_write_poisons_the_log_as_storage_full() {
    let Faulted { err, acked_after_arm, .. } = fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::Write, 0, ENOSPC), IoOp::Write);
    assert_eq!(acked_after_arm, 0);
    assert!(matches!(err, WalError::Poisoned { op: IoOp::Write, kind: std::io::ErrorKind::StorageFull, .. }), "{err}");
}

#[test]
fn a_write_that_stops_half_way_poisons_and_its_records_are_never_acknowledged() {
    fault_poisons_and_loses_nothing(|f| f.fail_write_partially(2, EIO), IoOp::Write);
}

#[test]
fn eio_on_fdatasync_poisons_and_the_sync_is_never_retried() {
    // One-shot: a retried fdatasync would succeed and wrongly report the lost data durable.
    let Faulted { faulty, .. } = fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::SyncData, 4, EIO), IoOp::SyncData);
    let syncs = faulty.calls(FaultOp::SyncData);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(faulty.calls(FaultOp::SyncData), syncs, "no sync after the failed one");
}

#[test]
fn a_failing_directory_fsync_at_a_segment_roll_poisons_the_log() {
    // Segments of 64 KiB: 500 records of ~1 KiB roll several times; the first segment's
    // creation synced the directory before the fault is armed, so the next sync is a roll's.
    fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::SyncDir, 0, EIO), IoOp::SyncDir);
}

#[test]
fn a_failing_directory_fsync_fails_truncation_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    let wal = SegmentedWal::open_with(faulty.clone(), config(dir.path())).unwrap();
    let (acked, err) = append_until_error(&wal, 1, 300);
    assert!(err.is_none(), "{err:?}");
    assert!(wal.segments().len() > 2);
    faulty.fail_once(FaultOp::SyncDir, 0, EIO);
    let err = wal.truncate_before(Lsn(250)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: IoOp::SyncDir, .. }), "{err}");
    // The file removed before the failed directory sync is no longer listed, so a later
    // truncation goes on from the next one instead of failing on a missing file.
    for seg in wal.segments() {
        assert!(dir.path().join(format!("{:020}.wal", seg.id.0)).exists(), "segment {} is listed but gone", seg.id);
    }
    wal.truncate_before(Lsn(250)).expect("a later truncation goes on");
    assert!(!wal.stats().poisoned, "a failed truncation does not poison");
    let after = wal.append_durable(Record::new(RecordType::optional(0x100), b"after the failed truncation")).unwrap();
    assert_eq!(after, acked.last().map_or(Lsn(1), |l| l.next()));
    drop(wal);
    // Records below the checkpoint may be gone (that is what truncation asked for); the rest
    // must all be there.
    let kept: Vec<Lsn> = acked.into_iter().filter(|l| l.0 >= 250).collect();
    let reopened = SegmentedWal::open_with(FsStorage::new(), config(dir.path())).unwrap();
    let first = reopened.recovery_info().first_lsn;
    drop(reopened);
    assert!(first.0 <= 250, "truncation removed records above the checkpoint: first is {first}");
    let records: Vec<_> =
        SegmentedWal::open_with(FsStorage::new(), config(dir.path())).unwrap().read_from(first).unwrap().collect::<Result<_, _>>().unwrap();
    for lsn in kept {
        let record = &records[(lsn.0 - first.0) as usize];
        assert_eq!((record.lsn, &record.payload), (lsn, &payload(lsn.0).into()));
    }
}

#[test]
fn a_file_system_that_refuses_o_direct_is_a_typed_error_unless_buffered_io_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    faulty.refuse_direct_io();
    let mut c = config(dir.path());
    c.direct_io = true;
    c.allow_buffered_fallback = false;
    let err = SegmentedWal::open_with(faulty.clone(), c.clone()).unwrap_err();
    assert!(matches!(err, WalError::DirectIoUnsupported { .. }), "{err}");
    c.allow_buffered_fallback = true;
    let wal = SegmentedWal::open_with(faulty, c).unwrap();
    assert!(!wal.direct_io());
    let lsn = wal.append_durable(Record::new(TY, &payload(1))).unwrap();
    drop(wal);
    assert_acknowledged_records_survive(dir.path(), &[lsn]);
}

#[test]
fn faults_belong_to_one_instance_and_leave_a_log_beside_it_alone() {
    let (healthy_dir, faulty_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let faulty = FaultyStorage::new(FsStorage::new());
    let broken = SegmentedWal::open_with(faulty.clone(), config(faulty_dir.path())).unwrap();
    faulty.fail_from(FaultOp::Write, 0, EIO);
    let healthy = SegmentedWal::open_with(FaultyStorage::new(FsStorage::new()), config(healthy_dir.path())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| assert!(broken.append_durable(Record::new(TY, b"lost")).is_err()));
        s.spawn(|| {
            for i in 1..=50 {
                assert_eq!(healthy.append_durable(Record::new(TY, &payload(i))).unwrap(), Lsn(i));
            }
        });
    });
}
