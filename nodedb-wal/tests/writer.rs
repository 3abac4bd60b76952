//! `WalWriter` writes one segment file in the log's own format: a directory holding it opens as
//! a log with exactly its records; a crash before `finish` loses only what was never synced; a
//! failed sync poisons the writer.

use std::path::Path;

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::{
    Lsn, Record, RecordType, Scope, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, WalWriter, WalWriterConfig,
};

const TY: RecordType = RecordType::optional(0x200);

fn payload(i: u64) -> Vec<u8> {
    (0..(i as usize * 53) % 5000).map(|j| (i as usize + j) as u8).collect()
}

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.direct_io = false;
    c
}

fn small() -> WalWriterConfig {
    WalWriterConfig { batch_bytes: 64 * 1024, ..WalWriterConfig::default() }
}

#[test]
fn a_finished_segment_opens_as_a_log_with_exactly_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap();
    for i in 1..=1000u64 {
        let scope = Scope { database: 1, tenant: 2, vshard: (i % 7) as u32 };
        assert_eq!(writer.append(Record { record_type: TY, scope, payload: &payload(i) }).unwrap(), Lsn(i));
        if i == 500 {
            assert_eq!(writer.sync().unwrap(), Lsn(500));
        }
    }
    let info = writer.finish().unwrap();
    assert_eq!((info.first_lsn, info.end_lsn, info.sealed), (Lsn(1), Lsn(1001), true));
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, Lsn(1000));
    assert!(wal.recovery_info().torn_tail.is_none());
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 1000);
    for (i, r) in (1..).zip(&records) {
        assert_eq!((r.lsn, &r.payload, r.scope.vshard), (Lsn(i), &payload(i).into(), (i % 7) as u32));
    }
    assert_eq!(wal.append_durable(Record::new(TY, b"next")).unwrap(), Lsn(1001), "the log goes on after it");
}

#[test]
fn a_writer_can_continue_a_log_in_its_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let wal = SegmentedWal::open(config(dir.path())).unwrap();
        for i in 1..=10 {
            wal.append(Record::new(TY, &payload(i))).unwrap();
        }
        wal.sync().unwrap()
    };
    // Reopening sealed segment 1; the next segment is 2.
    let info = nodedb_wal::recover(config(dir.path())).unwrap();
    let next = info.segments.last().unwrap().id.0 + 1;
    let mut writer = WalWriter::create(dir.path(), SegmentId(next), last.next()).unwrap();
    for i in 11..=20 {
        writer.append(Record::new(TY, &payload(i))).unwrap();
    }
    writer.finish().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
}

/// A log seals its newest segment at close, so a writer's segment may follow a closed log at
/// once. One a power cut left open (the next open seals it) must not be followed: recovery
/// refuses an open segment followed by another, naming it, with nothing lost; removing the
/// added segment, opening and closing the log, then writing it again works.
#[test]
fn a_segment_added_after_a_closed_log_opens_and_one_after_a_crashed_log_is_refused_until_the_log_is_opened_first() {
    use nodedb_wal::storage::Storage;
    let dir = Path::new("/log");
    let write_log = |sim: &SimStorage| {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        for i in 1..=10 {
            wal.append(Record::new(TY, &payload(i))).unwrap();
        }
        (wal.sync().unwrap(), wal)
    };
    let write_next = |sim: &SimStorage, last: Lsn| {
        let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(2), last.next(), small()).unwrap();
        for i in 11..=20 {
            writer.append(Record::new(TY, &payload(i))).unwrap();
        }
        writer.finish().unwrap();
    };
    let assert_all = |sim: SimStorage| {
        let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
        let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(records.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    };
    let closed = SimStorage::new(8, FaultConfig::default());
    let (last, wal) = write_log(&closed);
    wal.close().unwrap();
    write_next(&closed, last);
    assert_all(closed);

    let live = SimStorage::new(8, FaultConfig::default());
    let (last, wal) = write_log(&live);
    let sim = live.crash(3);
    drop(wal);
    write_next(&sim, last);
    let first = sim.read_file(&dir.join("00000000000000000001.wal")).unwrap();
    let err = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap_err();
    assert!(matches!(err, WalError::Corruption { segment: SegmentId(1), kind: nodedb_wal::CorruptionKind::UnsealedSegment, .. }), "{err}");
    assert_eq!(sim.read_file(&dir.join("00000000000000000001.wal")).unwrap(), first, "the refused open changes nothing");
    // The way out: take the added segment away, let the log seal its newest segment, add it again.
    sim.remove(&dir.join("00000000000000000002.wal")).unwrap();
    SegmentedWal::open_with(sim.clone(), config(dir)).unwrap().close().unwrap();
    write_next(&sim, last);
    assert_all(sim);
}

#[test]
fn a_crash_before_finish_keeps_every_synced_record() {
    let dir = Path::new("/w");
    for seed in 0..20 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        nodedb_wal::storage::create_dir_durably(&sim, dir).unwrap();
        let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), Lsn(1), small()).unwrap();
        for i in 1..=300u64 {
            writer.append(Record::new(TY, &payload(i))).unwrap();
            if i == 200 {
                writer.sync().unwrap();
            }
        }
        let after = sim.crash(seed);
        let wal = SegmentedWal::open_with(after, config(dir)).unwrap();
        let last = wal.recovery_info().last_lsn;
        assert!(last >= Lsn(200), "seed {seed}: synced records lost, log ends at {last}");
        let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
        for (i, r) in (1..).zip(&records) {
            assert_eq!((r.lsn, &r.payload), (Lsn(i), &payload(i).into()), "seed {seed}");
        }
    }
}

#[test]
fn a_failed_sync_poisons_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(nodedb_wal::FsStorage::new());
    let mut writer = WalWriter::create_with(faulty.clone(), dir.path(), SegmentId(1), Lsn(1), small()).unwrap();
    writer.append(Record::new(TY, b"a")).unwrap();
    faulty.fail_once(FaultOp::SyncData, 0, EIO);
    let err = writer.sync().unwrap_err();
    assert!(matches!(err, WalError::Io { op: nodedb_wal::IoOp::SyncData, .. }), "{err}");
    let again = writer.append(Record::new(TY, b"b")).unwrap_err();
    let path = writer.path().to_path_buf();
    let names_its_file = |err: &WalError| matches!(err, WalError::Poisoned { path: Some(p), .. } if *p == path);
    assert!(names_its_file(&again), "{again}");
    let err = writer.sync().unwrap_err();
    assert!(names_its_file(&err), "never retried: {err}");
}

// Found by a review on a full ext4 disk: a writer whose header write or sync failed left the
// file it had just made, so the same call once the disk had room was refused with
// `SegmentFileExists` ("left this one as it was"), naming a file no one else had made.
#[test]
fn a_writer_that_cannot_write_its_header_leaves_no_file_and_the_same_call_succeeds_later() {
    for (op, errno) in [(FaultOp::Write, ENOSPC), (FaultOp::SyncData, EIO)] {
        let dir = tempfile::tempdir().unwrap();
        let faulty = FaultyStorage::new(nodedb_wal::FsStorage::new());
        faulty.fail_once(op, 0, errno);
        let err = WalWriter::create_with(faulty.clone(), dir.path(), SegmentId(1), Lsn(1), small()).unwrap_err();
        assert!(matches!(err, WalError::Io { .. }), "{op:?}: {err}");
        assert!(!dir.path().join("00000000000000000001.wal").exists(), "{op:?}: the failed writer's file is gone");
        let mut writer = WalWriter::create_with(faulty, dir.path(), SegmentId(1), Lsn(1), small()).unwrap();
        writer.append(Record::new(TY, b"after the failure")).unwrap();
        writer.finish().unwrap();
        let wal = SegmentedWal::open(config(dir.path())).unwrap();
        assert_eq!(wal.recovery_info().last_lsn, Lsn(1), "{op:?}");
    }
}

#[test]
fn an_existing_segment_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap().finish().unwrap();
    let err = WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap_err();
    assert!(matches!(&err, WalError::SegmentFileExists { path } if *path == dir.path().join("00000000000000000001.wal")), "{err}");
}

// Found by a review: the writer opened its file with O_CREAT and refused only a file with
// bytes in it (as an I/O error), so it took over an empty file someone else had made, and
// through a symbolic link that led nowhere it made the link's target.
#[test]
fn a_segment_id_whose_file_exists_in_any_form_is_refused_with_a_typed_error_and_the_file_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    std::fs::write(&path, b"").unwrap();
    let err = WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap_err();
    assert!(matches!(&err, WalError::SegmentFileExists { path: p } if *p == path), "an empty file: {err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"", "left empty");
    std::fs::remove_file(&path).unwrap();
    let target = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap_err();
    assert!(matches!(&err, WalError::SegmentFileExists { .. }), "a link that leads nowhere: {err}");
    assert!(!target.exists(), "nothing made through the link");
    assert!(err.to_string().contains("00000000000000000001.wal"), "{err}");
}

/// A writer used to take no lock: a segment it added while a log had the directory open was
/// written over by the log's next roll (the id the log would make next is the one a writer
/// adds), and a log opened while a writer wrote took its unfinished segment for its newest.
fn a_wal_writer_and_a_log_never_hold_one_directory_at_once<S: nodedb_wal::storage::Storage + Clone>(storage: S, dir: &Path) {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    let last = wal.append_durable(Record::new(TY, b"in the log")).unwrap();
    let Err(err) = WalWriter::create_with(storage.clone(), dir, SegmentId(2), last.next(), small()) else {
        panic!("a writer made beside an open log")
    };
    assert!(matches!(&err, WalError::Locked { path } if path == dir), "a writer beside an open log: {err}");
    assert!(!segment_names(&storage, dir).contains(&"00000000000000000002.wal".to_string()), "nothing made");
    wal.close().unwrap();
    // An open and a close without appends seal the log's newest segment, which a segment may
    // then follow (see the module documentation).
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    let next = SegmentId(wal.segments().last().unwrap().id.0 + 1);
    wal.close().unwrap();
    let mut writer = WalWriter::create_with(storage.clone(), dir, next, last.next(), small()).unwrap();
    writer.append(Record::new(TY, b"from the writer")).unwrap();
    let err = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap_err();
    assert!(matches!(&err, WalError::Locked { .. }), "a log beside a writer: {err}");
    writer.finish().unwrap();
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    let payloads: Vec<Vec<u8>> = wal.read_from(Lsn(1)).unwrap().map(|r| r.unwrap().payload.to_vec()).collect();
    assert_eq!(payloads, [b"in the log".to_vec(), b"from the writer".to_vec()]);
}

fn segment_names<S: nodedb_wal::storage::Storage>(storage: &S, dir: &Path) -> Vec<String> {
    storage.list(dir).unwrap().into_iter().filter(|n| n.ends_with(".wal")).collect()
}

#[test]
fn a_wal_writer_and_a_log_never_hold_one_directory_at_once_fs() {
    let dir = tempfile::tempdir().unwrap();
    a_wal_writer_and_a_log_never_hold_one_directory_at_once(nodedb_wal::FsStorage::new(), dir.path());
}

#[test]
fn a_wal_writer_and_a_log_never_hold_one_directory_at_once_sim() {
    a_wal_writer_and_a_log_never_hold_one_directory_at_once(SimStorage::new(9, FaultConfig::default()), Path::new("/log"));
}

/// The limit itself (2^63) is a first LSN the format takes, for a segment that holds no
/// record: salvage copies such a segment with a writer.
#[test]
fn a_first_lsn_of_zero_or_past_the_limit_is_refused_before_any_file_is_made() {
    let dir = tempfile::tempdir().unwrap();
    for first in [Lsn(0), Lsn((1 << 63) + 1), Lsn(u64::MAX)] {
        let err = WalWriter::create(dir.path(), SegmentId(1), first).unwrap_err();
        assert!(matches!(err, WalError::InvalidConfig { .. }), "{first}: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let top = Lsn((1 << 63) - 1);
    let mut writer = WalWriter::create(dir.path(), SegmentId(1), top).unwrap();
    assert_eq!(writer.append(Record::new(TY, b"last")).unwrap(), top);
    writer.finish().unwrap();
    let mut writer = WalWriter::create(dir.path(), SegmentId(2), Lsn::LIMIT).unwrap();
    assert!(matches!(writer.append(Record::new(TY, b"none")), Err(WalError::LsnsExhausted { next }) if next == Lsn::LIMIT));
    writer.finish().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    assert_eq!((wal.recovery_info().record_count, wal.next_lsn()), (1, Lsn::LIMIT));
}

// Found by an adversarial review: WalWriter took blocks over 1 MiB, which the segment header's
// decoder refuses, so opening the finished segment removed it as an interrupted roll; an id of
// u64::MAX overflowed the next segment's id at open; a huge batch size panicked at allocation
// after the file was made, leaving it behind.
#[test]
fn settings_a_log_could_not_open_or_allocate_are_refused_before_any_file_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let refused = [
        (SegmentId(1), WalWriterConfig { alignment: 2 << 20, batch_bytes: 8 << 20, ..WalWriterConfig::default() }),
        (SegmentId(1), WalWriterConfig { alignment: 256, ..WalWriterConfig::default() }),
        (SegmentId(1), WalWriterConfig { batch_bytes: usize::MAX / 2, ..WalWriterConfig::default() }),
        (SegmentId(1), WalWriterConfig { alignment: 1 << 62, ..WalWriterConfig::default() }),
        (SegmentId(u64::MAX), WalWriterConfig::default()),
    ];
    for (id, c) in refused {
        let err = WalWriter::create_with(nodedb_wal::FsStorage::new(), dir.path(), id, Lsn(1), c).unwrap_err();
        assert!(matches!(err, WalError::InvalidConfig { .. }), "{c:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let largest = WalWriterConfig { alignment: 1 << 20, batch_bytes: 4 << 20, ..WalWriterConfig::default() };
    let mut writer = WalWriter::create_with(nodedb_wal::FsStorage::new(), dir.path(), SegmentId(1), Lsn(1), largest).unwrap();
    writer.append(Record::new(TY, b"in 1 MiB blocks")).unwrap();
    writer.finish().unwrap();
    let wal = SegmentedWal::open(config(dir.path())).unwrap();
    assert_eq!(wal.recovery_info().record_count, 1);
}

/// A segment whose header frame is whole and checksummed but names a block size this build
/// refuses was written completely, so it is damage, never an interrupted roll: open reports
/// it and removes nothing.
#[test]
fn a_checksummed_header_this_build_refuses_is_corruption_and_the_file_stays() {
    use nodedb_wal::format::frame::{HEADER_LEN, seal_frame};
    use nodedb_wal::format::meta::SEGMENT_HEADER_PAYLOAD_LEN;
    use nodedb_wal::format::preamble::PREAMBLE_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let mut writer = WalWriter::create(dir.path(), SegmentId(1), Lsn(1)).unwrap();
    writer.append(Record::new(TY, b"kept")).unwrap();
    writer.finish().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = &mut bytes[PREAMBLE_SIZE..PREAMBLE_SIZE + HEADER_LEN + SEGMENT_HEADER_PAYLOAD_LEN];
    frame[HEADER_LEN + 20..HEADER_LEN + 24].copy_from_slice(&(2u32 << 20).to_le_bytes());
    seal_frame(frame, RecordType::SEGMENT_HEADER);
    std::fs::write(&path, &bytes).unwrap();
    let err = SegmentedWal::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, WalError::Corruption { kind: nodedb_wal::CorruptionKind::BadSegmentHeader, .. }), "{err}");
    assert!(path.exists(), "nothing removed");
}
