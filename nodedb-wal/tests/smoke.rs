//! Basic behaviour on both storages: what is appended and synced is read back after reopening.

mod common;

use common::Gated;
use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, storage::FaultConfig};

fn config(dir: &std::path::Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
}

fn appended_records_are_read_back_after_reopen<S: nodedb_wal::storage::Storage + Clone>(storage: S, dir: &std::path::Path) {
    let ty = RecordType::optional(0x100);
    {
        let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
        for i in 0..500u32 {
            let payload = vec![i as u8; (i as usize * 37) % 3000];
            let lsn = wal.append(Record::new(ty, &payload)).unwrap();
            assert_eq!(lsn, Lsn(u64::from(i) + 1));
        }
        wal.sync().unwrap();
        assert!(wal.segments().len() > 2, "rolled over: {:?}", wal.segments());
        wal.close().unwrap();
    }
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    let info = wal.recovery_info();
    assert_eq!(info.record_count, 500);
    assert_eq!(info.last_lsn, Lsn(500));
    assert!(info.torn_tail.is_none());
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 500);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn, Lsn(i as u64 + 1));
        assert_eq!(r.payload, vec![i as u8; (i * 37) % 3000]);
    }
    assert_eq!(wal.append(Record::new(ty, b"more")).unwrap(), Lsn(501));
}

#[test]
fn appended_records_are_read_back_after_reopen_fs() {
    let dir = tempfile::tempdir().unwrap();
    appended_records_are_read_back_after_reopen(nodedb_wal::FsStorage::new(), dir.path());
}

#[test]
fn appended_records_are_read_back_after_reopen_sim() {
    appended_records_are_read_back_after_reopen(SimStorage::new(1, FaultConfig::default()), std::path::Path::new("/wal"));
}

/// One writer per directory: while a log is open, a second open of its directory is `Locked`
/// (the real `flock` on `LOCK`, from the same process too), a read-only look beside it is
/// allowed and sees its acknowledged records, and closing or dropping the log lets the next
/// writer in.
fn one_writer_holds_the_directory_until_it_is_closed_or_dropped<S: nodedb_wal::storage::Storage + Clone>(
    storage: S,
    dir: &std::path::Path,
) {
    let open = || SegmentedWal::open_with(storage.clone(), config(dir));
    let locked = |result: Result<SegmentedWal<S>, WalError>| matches!(result, Err(WalError::Locked { path }) if path == dir);
    let first = open().unwrap();
    let lsn = first.append_durable(Record::new(RecordType::optional(0x100), b"first")).unwrap();
    assert!(locked(open()), "a second writer beside the first");
    let view = ReadOnlyWal::open_with(storage.clone(), dir, None).expect("a read-only look takes no lock");
    assert_eq!(view.recovery_info().last_lsn, lsn);
    first.close().unwrap();
    let second = open().expect("closing the log let go of the directory");
    assert!(locked(open()), "held again by the second writer");
    drop(second);
    let third = open().expect("dropping the log let go of the directory");
    assert_eq!(third.recovery_info().last_lsn, lsn);
    drop(view);
}

#[test]
fn one_writer_holds_the_directory_until_it_is_closed_or_dropped_fs() {
    let dir = tempfile::tempdir().unwrap();
    one_writer_holds_the_directory_until_it_is_closed_or_dropped(nodedb_wal::FsStorage::new(), dir.path());
}

/// A process forked and not yet exec'd (or, here, never): it holds a copy of every descriptor
/// of its parent, the log's `LOCK` included, until it is killed and reaped on drop.
struct ForkedChild(rustix::process::Pid);

impl ForkedChild {
    #[expect(
        unsafe_code,
        reason = "fork: the child holds copies of our descriptors, as one that another thread spawns does until its exec"
    )]
    fn hold_descriptors() -> ForkedChild {
        // SAFETY: after the fork the child runs only async-signal-safe calls (`pause` until
        // the parent kills it, `_exit`), never code that could wait on a lock another thread
        // of the parent held at the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::pause();
                libc::_exit(0)
            }
        }
        ForkedChild(rustix::process::Pid::from_raw(pid).expect("fork failed"))
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(self.0), rustix::process::WaitOptions::empty());
    }
}

/// An flock belongs to the open file, and a child that another thread of the application is
/// starting holds a copy of the descriptor from its fork to its exec: the log must let go of
/// the directory when it is closed or dropped all the same, not when that copy closes.
#[test]
fn a_closed_log_lets_go_of_its_directory_while_a_forked_child_holds_a_copy_of_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = SegmentedWal::open(config(dir.path())).unwrap();
    let lsn = first.append_durable(Record::new(RecordType::optional(0x100), b"first")).unwrap();
    let child = ForkedChild::hold_descriptors();
    first.close().unwrap();
    let second = SegmentedWal::open(config(dir.path())).expect("the close let go of the directory, whatever the child holds");
    assert_eq!(second.recovery_info().last_lsn, lsn);
    drop(second);
    let third = SegmentedWal::open(config(dir.path())).expect("the drop let go of it too");
    drop(child);
    drop(third);
}

#[test]
fn one_writer_holds_the_directory_until_it_is_closed_or_dropped_sim() {
    let sim = SimStorage::new(2, FaultConfig::default());
    one_writer_holds_the_directory_until_it_is_closed_or_dropped(sim, std::path::Path::new("/wal"));
}

#[test]
fn appended_records_are_read_back_after_reopen_pwrite() {
    let dir = tempfile::tempdir().unwrap();
    let storage = nodedb_wal::FsStorage::pwrite_only();
    assert_eq!(storage.backend(), nodedb_wal::IoBackend::Pwrite);
    assert_eq!(nodedb_wal::FsStorage::new().backend(), nodedb_wal::IoBackend::Pwrite, "pwrite is the default");
    appended_records_are_read_back_after_reopen(storage, dir.path());
}

#[test]
fn appended_records_are_read_back_after_reopen_io_uring_or_its_fallback() {
    let dir = tempfile::tempdir().unwrap();
    appended_records_are_read_back_after_reopen(nodedb_wal::FsStorage::io_uring(), dir.path());
}

#[test]
fn concurrent_appenders_with_a_commit_window_are_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.commit_window = Some(std::time::Duration::from_millis(1));
    let wal = std::sync::Arc::new(SegmentedWal::open(c.clone()).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let wal = std::sync::Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..50).map(|i| wal.append_durable(Record::new(RecordType::optional(0x100), &[t, i])).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut lsns: Vec<Lsn> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    lsns.sort();
    assert_eq!(lsns, (1..=400).map(Lsn).collect::<Vec<_>>(), "every append got its own dense LSN");
    assert!(wal.durable_lsn() >= Lsn(400));
    assert_eq!(wal.stats().records, 400);
}

#[test]
fn records_buffered_before_a_wait_share_one_fdatasync() {
    let sim = SimStorage::new(9, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(std::path::Path::new("/wal"))).unwrap();
    // The first batch of a segment also records the segment in the manifest (one more sync).
    wal.append_durable(Record::new(RecordType::optional(0x100), b"first")).unwrap();
    let last = (0..100u8).map(|i| wal.append(Record::new(RecordType::optional(0x100), &[i; 40])).unwrap()).last().unwrap();
    let syncs_before = sim.sync_count();
    wal.wait_durable(last).unwrap();
    assert_eq!(sim.sync_count() - syncs_before, 1, "one fdatasync covers all 100 records");
    assert_eq!(wal.stats().fsyncs, 2);
}

#[test]
fn records_larger_than_a_batch_queued_behind_a_sync_share_the_next_one() {
    let gated = Gated::new(SimStorage::new(9, FaultConfig::default()));
    let mut c = config(std::path::Path::new("/wal"));
    c.segment_bytes_target = 1 << 20;
    let wal = std::sync::Arc::new(SegmentedWal::open_with(gated.clone(), c).unwrap());
    let ty = RecordType::optional(0x100);
    gated.gate.shut();
    let first = wal.append(Record::new(ty, b"first")).unwrap();
    wal.request_sync(first).unwrap();
    gated.gate.wait_held();
    // While that batch is held before its sync, three records of 20 KiB (a batch holds 16)
    // each fill a batch of their own and queue up. They fit in flight together (four times
    // the pool's 64 KiB), so none of these appends waits for the disk.
    let before = wal.stats();
    let (appended, done) = std::sync::mpsc::channel();
    let appender = std::sync::Arc::clone(&wal);
    std::thread::spawn(move || {
        let lsns: Vec<Lsn> = (0..3u8).map(|i| appender.append(Record::new(ty, &[i; 20 * 1024])).unwrap()).collect();
        appender.request_sync(lsns[2]).unwrap();
        appended.send(lsns).unwrap();
    });
    let lsns = done.recv_timeout(std::time::Duration::from_secs(20)).expect("appended without waiting for the held sync");
    gated.gate.open();
    wal.wait_durable(lsns[2]).unwrap();
    let delta = wal.stats().since(&before);
    assert_eq!((delta.batches, delta.records), (4, 4), "the held batch and one per large record");
    assert_eq!(delta.fsyncs, 2, "the held batch's sync, then one for the three queued batches");
    let records = common::read_all(&wal);
    assert_eq!(records.len(), 4);
    assert!(records[1..].iter().enumerate().all(|(i, r)| r.payload == [i as u8; 20 * 1024]));
}

/// A run of batches is one unit to its waiters: a write that fails after the first batch of the
/// run is down poisons the log, and no batch of the run is acknowledged, the first included
/// (it was written, but nothing synced it).
#[test]
fn a_write_failing_inside_a_run_of_batches_acknowledges_none_of_them() {
    use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    let sim = SimStorage::new(11, FaultConfig::default());
    let faulty = FaultyStorage::new(sim.clone());
    let gated = Gated::new(faulty.clone());
    let mut c = config(std::path::Path::new("/wal"));
    c.segment_bytes_target = 1 << 20;
    let wal = SegmentedWal::open_with(gated.clone(), c).unwrap();
    let ty = RecordType::optional(0x100);
    // The segment and its MANIFEST entry exist before the run, so its writes are the batches'.
    wal.append_durable(Record::new(ty, b"opens the segment")).unwrap();
    gated.gate.shut();
    let first = wal.append(Record::new(ty, b"first")).unwrap();
    wal.request_sync(first).unwrap();
    gated.gate.wait_held();
    let lsns: Vec<Lsn> = (0..3u8).map(|i| wal.append(Record::new(ty, &[i; 20 * 1024])).unwrap()).collect();
    wal.request_sync(lsns[2]).unwrap();
    // The run's first batch is written, its second write fails.
    faulty.fail_once(FaultOp::Write, 1, EIO);
    gated.gate.open();
    wal.wait_durable(first).unwrap();
    for lsn in &lsns {
        assert!(matches!(wal.wait_durable(*lsn), Err(WalError::Poisoned { .. })), "{lsn:?}");
    }
    assert_eq!(wal.durable_lsn(), first);
    assert_eq!(faulty.injected(), 1);
    let written = sim.read_file(&common::seg(std::path::Path::new("/wal"), 1)).unwrap();
    let frame = common::record_frame(&written, lsns[0].0);
    assert!(frame.header.durable_lsn < first, "the run's first batch was written, without a claim on it");
}

#[test]
fn an_unknown_required_type_stops_a_reader_and_an_unknown_optional_one_is_skipped() {
    use nodedb_wal::format::frame::{decode_frame, seal_frame};
    let sim = SimStorage::new(4, FaultConfig::default());
    let dir = std::path::Path::new("/wal");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    assert!(matches!(wal.append(Record::new(RecordType(0x8050), b"x")), Err(nodedb_wal::WalError::ReservedRecordType { .. })));
    for i in 0..3u8 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[i])).unwrap();
    }
    drop(wal);
    // A newer writer's record types, in this crate's ranges, for records 2 (optional) and 3 (required).
    let path = dir.join(format!("{:020}.wal", 1));
    let mut bytes = sim.read_file(&path).unwrap();
    let mut data_frames = Vec::new();
    let mut at = 16;
    while let Ok(h) = decode_frame(&bytes[at..]) {
        if !h.record_type.is_meta() {
            data_frames.push((at, h.frame_len()));
        }
        at += h.frame_len();
    }
    for ((at, len), t) in data_frames[1..].iter().zip([0x0050u16, 0x8050]) {
        bytes[at + 6..at + 8].copy_from_slice(&t.to_le_bytes());
        seal_frame(&mut bytes[*at..at + len], RecordType(t));
    }
    sim.write_file(&path, &bytes);
    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    let mut reader = wal.read_from(Lsn(1)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().payload, [0]);
    let err = reader.next().unwrap().unwrap_err();
    assert!(matches!(err, nodedb_wal::WalError::UnknownRequiredType { lsn: Lsn(3), record_type: RecordType(0x8050) }), "{err}");
}

// Found by review of the crash tests: open created the log directory but never synced its
// parent, so a crash could take the whole directory, acknowledged records included.
#[test]
fn a_log_directory_created_by_open_survives_a_crash() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = std::path::Path::new("/data/new/wal");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let lsn = wal.append_durable(Record::new(RecordType::optional(0x100), b"kept")).unwrap();
    let after = sim.crash(1);
    drop(wal);
    let wal = SegmentedWal::open_with(after, config(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, lsn, "the directory and its record survived");
}

/// Bytes the log wrote for `rounds` rounds of `per_round` records of `payload` bytes, each
/// round followed by a sync, with 64 KiB batches and 256 KiB of zero-fill ahead.
fn bytes_written_by(rounds: usize, per_round: usize, payload: usize) -> (u64, u64) {
    bytes_written_with_target(64 << 20, rounds, per_round, payload)
}

/// [`bytes_written_by`] with segments of `segment_bytes_target`.
fn bytes_written_with_target(segment_bytes_target: u64, rounds: usize, per_round: usize, payload: usize) -> (u64, u64) {
    let sim = SimStorage::new(9, FaultConfig::default());
    let mut c = SegmentedWalConfig::new("/zf");
    c.segment_bytes_target = segment_bytes_target;
    c.batch_bytes_max = 64 * 1024;
    c.zero_fill_bytes = 256 * 1024;
    let wal = SegmentedWal::open_with(sim, c).unwrap();
    let body = vec![3u8; payload];
    for _ in 0..rounds {
        for _ in 0..per_round {
            wal.append(Record::new(RecordType::optional(0x100), &body)).unwrap();
        }
        wal.sync().unwrap();
    }
    let stats = wal.stats();
    (stats.bytes_written, stats.batches)
}

#[test]
fn a_run_of_small_batches_is_zero_filled_ahead() {
    let (bytes, batches) = bytes_written_by(12, 1, 100);
    assert_eq!(batches, 12);
    assert!(bytes >= 12 * 4096 + 256 * 1024, "{bytes} bytes: no zero-fill after a run of small batches");
}

// Found by an adversarial review: a segment target within a block of `u64::MAX` (a log that
// never rolls, which the config accepts) overflowed where the zero-fill rounds it up to a
// block: a debug build panicked in the appending thread and poisoned the log at the first run
// of small batches, and a release build silently wrote no zeros ahead.
#[test]
fn a_log_whose_segments_never_roll_is_zero_filled_ahead() {
    for target in [u64::MAX, u64::MAX - 4095, u64::MAX - 4096] {
        let (bytes, batches) = bytes_written_with_target(target, 12, 1, 100);
        assert_eq!(batches, 12);
        assert!(bytes >= 12 * 4096 + 256 * 1024, "target {target}: {bytes} bytes, no zero-fill after a run of small batches");
    }
}

// Found by the pipelined 4 KiB benchmark: a small remainder between full batches was followed
// by a zero-fill that the next full batch overwrote, doubling the bytes written.
#[test]
fn a_small_batch_between_large_ones_is_not_zero_filled_ahead() {
    // Each round: 17 records of 4000 bytes, one full 64 KiB batch and a one-record remainder.
    let (bytes, batches) = bytes_written_by(12, 17, 4000);
    let payload = 12 * 17 * (4000 + 48) as u64;
    assert!(batches >= 24, "{batches} batches");
    assert!(bytes < payload + batches * 4096, "{bytes} bytes for {payload} of records: zeros were written ahead");
}

/// A log of 200 records over several segments, the newest sealed and everything durable;
/// returns the disk, the newest segment's path and its bytes.
fn sealed_log(dir: &std::path::Path) -> (SimStorage, std::path::PathBuf, Vec<u8>) {
    use nodedb_wal::storage::Storage;
    let sim = SimStorage::new(3, FaultConfig::default());
    {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        for i in 0..200u32 {
            wal.append(Record::new(RecordType::optional(0x100), &[i as u8; 300])).unwrap();
        }
        wal.sync().unwrap();
    }
    // Reopening seals the newest segment.
    drop(SegmentedWal::open_with(sim.clone(), config(dir)).unwrap());
    let newest = sim.list(dir).unwrap().into_iter().filter(|n| n.ends_with(".wal")).max().unwrap();
    let path = dir.join(newest);
    let bytes = sim.read_file(&path).unwrap();
    (sim, path, bytes)
}

// Found by review: a process killed between a batch's write and its fdatasync leaves the batch
// readable but not durable. When that batch sealed the newest segment, recovery had nothing to
// write, so nothing synced it, yet the log reported its records durable; a power cut later
// could tear the segment and take records the log had already returned.
#[test]
fn records_recovered_from_an_unsynced_sealed_segment_are_synced_before_the_log_reports_them() {
    use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
    let dir = std::path::Path::new("/killed");
    for seed in 0..12 {
        let (sim, path, bytes) = sealed_log(dir);
        // What the killed process left: the last two blocks (records and the end frame) were
        // written, never synced.
        let cut = bytes.len() - 2 * 4096;
        let mut durable = bytes.clone();
        durable[cut..].fill(0);
        sim.write_file(&path, &durable);
        let file = sim.open(&path, OpenMode { create: false, write: true, direct: false, create_new: false }).unwrap();
        file.write_at(&bytes[cut..], cut as u64).unwrap();
        drop(file);
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        assert_eq!((wal.recovery_info().last_lsn, wal.durable_lsn()), (Lsn(200), Lsn(200)));
        let after = sim.crash(seed);
        drop(wal);
        let wal = SegmentedWal::open_with(after, config(dir)).unwrap_or_else(|e| panic!("seed {seed}: the log no longer opens: {e}"));
        assert_eq!(wal.recovery_info().last_lsn, Lsn(200), "seed {seed}: records the log returned as durable are gone");
    }
}

// Found by review: open synced the parents of directories it created, but not of ones an
// earlier open had created and then died before syncing.
#[test]
fn a_log_directory_an_earlier_open_left_unsynced_is_made_durable_by_the_next_open() {
    use nodedb_wal::storage::Storage;
    let sim = SimStorage::new(6, FaultConfig::default());
    let dir = std::path::Path::new("/data/left/wal");
    sim.create_dir_all(dir).unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let lsn = wal.append_durable(Record::new(RecordType::optional(0x100), b"kept")).unwrap();
    let after = sim.crash(2);
    drop(wal);
    let wal = SegmentedWal::open_with(after, config(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, lsn, "the directory and its record survived");
}

#[test]
fn the_metrics_count_batches_syncs_and_waits() {
    let sim = SimStorage::new(8, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim, config(std::path::Path::new("/metrics"))).unwrap();
    let before = wal.stats();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let wal = &wal;
            s.spawn(move || {
                for _ in 0..50 {
                    wal.append_durable(Record::new(RecordType::optional(0x100), &[t; 40])).unwrap();
                }
            });
        }
    });
    let m = wal.stats().since(&before);
    assert_eq!(m.records, 200);
    // A roll decided after the last batch was sealed closes the old segment with a batch of
    // its own (the end frame, no records): at most one per segment beyond one per record.
    let rolls = wal.segments().len() as u64;
    // Batches that queued up behind a sync share the next one.
    assert!(m.batches >= 1 && m.batches <= 200 + rolls && m.fsyncs >= 1 && m.fsyncs <= m.batches, "{m:?}, {rolls} segments");
    assert!(m.records_per_batch() >= 200.0 / (200 + rolls) as f64, "{m:?}");
    assert!(m.bytes_written >= 200 * (40 + 48));
    assert!(m.sync_nanos > 0 && m.sync_nanos_max > 0 && m.sync_nanos_max <= m.sync_nanos, "{m:?}");
    assert!(m.waits <= 200 && !m.poisoned, "{m:?}");
}

// Found by review: the batches of a write were counted only as each was acknowledged, after
// the MANIFEST named a new segment, while its fdatasync was counted before. A failed MANIFEST
// write (which poisons the log) then left a synced batch uncounted: more fsyncs than batches,
// which the counters' docs rule out.
#[test]
fn a_batch_made_durable_is_counted_with_its_fsync_even_when_the_manifest_write_after_it_fails() {
    use nodedb_wal::IoOp;
    use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    let storage = FaultyStorage::new(SimStorage::new(5, FaultConfig::default()));
    let wal = SegmentedWal::open_with(storage.clone(), config(std::path::Path::new("/wal"))).unwrap();
    // The first batch creates the first segment: its own fdatasync succeeds, then the MANIFEST's
    // (naming the segment) fails.
    storage.fail_once(FaultOp::SyncData, 1, EIO);
    let err = wal.append_durable(Record::new(RecordType::optional(0x100), b"synced, never acknowledged")).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "{err}");
    let m = wal.stats();
    assert_eq!((m.fsyncs, m.batches, m.records), (1, 1, 1), "{m:?}");
    assert!(m.bytes_written >= 4096 && m.poisoned, "{m:?}");
}

#[test]
fn a_batch_gets_consecutive_lsns_and_reads_back_as_separate_records() {
    let sim = SimStorage::new(8, FaultConfig::default());
    let dir = std::path::Path::new("/batch");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let ty = RecordType::optional(0x100);
    wal.append(Record::new(ty, b"before")).unwrap();
    let payloads: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(1 + i as usize % 40)).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(ty, p)).collect();
    let lsns = wal.append_batch(&records).unwrap();
    assert_eq!(lsns, Lsn(2)..=Lsn(301));
    assert_eq!(wal.append(Record::new(ty, b"after")).unwrap(), Lsn(302));
    assert!(matches!(wal.append_batch(&[]), Err(nodedb_wal::WalError::EmptyGroup)));
    assert!(matches!(
        wal.append_batch(&[Record::new(ty, b"ok"), Record::new(RecordType(0x8050), b"reserved")]),
        Err(nodedb_wal::WalError::ReservedRecordType { .. })
    ));
    wal.wait_durable(Lsn(302)).unwrap();
    drop(wal);
    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    let read: Vec<_> = wal.read_from(Lsn(2)).unwrap().take(300).collect::<Result<_, _>>().unwrap();
    for (i, record) in read.iter().enumerate() {
        assert_eq!(record.lsn, Lsn(i as u64 + 2));
        assert_eq!(record.payload, payloads[i]);
        assert_eq!(record.flags, 0, "not an atomic group: no group flags");
    }
    assert_eq!(wal.recovery_info().last_lsn, Lsn(302), "a refused batch used no LSN");
}

// Found by an adversarial review: a log written in 512-byte blocks through the page cache,
// reopened with O_DIRECT on a disk of 4 KiB sectors, failed to open (EINVAL) because its
// newest segment's seal went at a 512-byte boundary through O_DIRECT.
#[test]
fn a_log_written_in_smaller_blocks_reopens_with_larger_direct_blocks() {
    let sim = SimStorage::new(11, FaultConfig::default());
    let dir = std::path::Path::new("/small-blocks");
    let mut small = SegmentedWalConfig::new(dir);
    (small.direct_io, small.alignment) = (false, 512);
    let wal = SegmentedWal::open_with(sim.clone(), small).unwrap();
    let mut last = Lsn::ZERO;
    for i in 0..7u8 {
        last = wal.append_durable(Record::new(RecordType::optional(0x100), &[i; 700])).unwrap();
    }
    drop(wal);
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, last);
    let next = wal.append_durable(Record::new(RecordType::optional(0x100), b"after")).unwrap();
    drop(wal);
    let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new(dir)).unwrap();
    let lsns: Vec<u64> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().lsn.0).collect();
    assert_eq!(lsns, (1..=next.0).collect::<Vec<_>>());
}

/// Every waiting call refuses an LSN the log never handed out, at once, instead of waiting for
/// a record that may never come.
#[test]
fn every_waiting_call_refuses_an_lsn_never_handed_out() {
    let wal = SegmentedWal::open_with(SimStorage::new(12, FaultConfig::default()), config(std::path::Path::new("/unissued"))).unwrap();
    let last = wal.append(Record::new(RecordType::optional(0x100), b"only")).unwrap();
    let beyond = last.next();
    let unissued = |r: Result<(), nodedb_wal::WalError>| matches!(r, Err(nodedb_wal::WalError::LsnNotIssued { lsn, .. }) if lsn == beyond);
    assert!(unissued(wal.wait_durable(beyond)));
    assert!(unissued(wal.request_sync(beyond)));
    assert!(unissued(wal.durable(beyond).map(drop)));
    wal.wait_durable(last).unwrap();
    wal.wait_durable(Lsn::ZERO).unwrap();
}

/// What ends segment `id`: `Some(true)` for an end frame that is a batch of its own (on a block
/// boundary, naming its own offset), `Some(false)` for one after records of its batch, `None`
/// for no end frame.
fn how_segment_ends(sim: &SimStorage, dir: &std::path::Path, id: u64) -> Option<bool> {
    let bytes = sim.read_file(&common::seg(dir, id)).expect("segment exists");
    let frames = common::frames(&bytes);
    let end = frames.iter().position(|f| f.header.record_type == RecordType::SEGMENT_END)?;
    let at = frames[end].offset;
    let payload = at as usize + nodedb_wal::format::frame::HEADER_LEN;
    let records_end = u64::from_le_bytes(bytes[payload..payload + 8].try_into().unwrap());
    assert_eq!(records_end, at, "segment {id}: the writer's end frame names its own offset");
    let before = frames[end - 1].header.record_type;
    Some(at.is_multiple_of(4096) && (before == RecordType::PADDING || before == RecordType::SEGMENT_HEADER))
}

/// FORMAT.md, "SEGMENT_END payload": an end frame is a batch of its own where a segment ends
/// with no batch open (a roll whose record would have opened one, a key-ring change,
/// `WalWriter::finish` after a sync, and a log's close, after its last batch is durable).
#[test]
fn an_end_frame_is_a_batch_of_its_own_only_where_a_segment_ends_with_no_batch_open_closing_included() {
    use nodedb_wal::storage::Storage;
    use nodedb_wal::{KeyRing, SecureKey, SegmentId, WalWriter, WalWriterConfig};
    let sim = SimStorage::new(2, FaultConfig::default());
    let dir = std::path::Path::new("/ends");
    let ring = std::sync::Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    let ty = RecordType::optional(0x100);
    let open = || SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { key_ring: Some(ring.clone()), ..config(dir) }).unwrap();
    let wal = open();
    // Every durable append syncs its own batch: the one that does not fit finds none open.
    while wal.segments().len() < 2 {
        wal.append_durable(Record::new(ty, &[7; 1500])).unwrap();
    }
    assert_eq!(how_segment_ends(&sim, dir, 1), Some(true), "a roll");
    ring.insert(2, SecureKey::generate()).unwrap();
    ring.set_active(2).unwrap();
    wal.append_durable(Record::new(ty, b"under key 2")).unwrap();
    assert_eq!(how_segment_ends(&sim, dir, 2), Some(true), "a key-ring change");
    drop(wal);

    // Records appended without a wait share the batch the end frame closes: a batch buffer as
    // large as the segment is still open when the segment fills. 60 records of 1.5 KiB roll
    // once.
    let dir = std::path::Path::new("/batched");
    let batched = || SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { batch_bytes_max: 64 * 1024, ..config(dir) }).unwrap();
    let wal = batched();
    for _ in 0..60 {
        wal.append(Record::new(ty, &[8; 1500])).unwrap();
    }
    wal.sync().unwrap();
    assert_eq!(wal.segments().len(), 2);
    assert_eq!(how_segment_ends(&sim, dir, 1), Some(false), "a roll with a batch open");
    wal.close().unwrap();
    assert_eq!(how_segment_ends(&sim, dir, 2), Some(true), "closing seals the newest segment");
    let sealed = sim.read_file(&dir.join("00000000000000000002.wal"));
    drop(batched());
    assert_eq!(sim.read_file(&dir.join("00000000000000000002.wal")), sealed, "the next open finds nothing to seal");

    let dir = std::path::Path::new("/writer");
    sim.create_dir_all(dir).unwrap();
    let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), Lsn(1), WalWriterConfig::default()).unwrap();
    writer.append(Record::new(ty, b"synced")).unwrap();
    writer.sync().unwrap();
    writer.finish().unwrap();
    assert_eq!(how_segment_ends(&sim, dir, 1), Some(true), "WalWriter::finish after a sync");
}

/// Records of several MiB get one-off buffers mapped of their own (2 MiB and more); a kept one
/// is reused for a smaller record after it. Written with O_DIRECT from those buffers, every
/// byte reads back after a reopen, on real files and on the simulated disk.
fn records_of_several_mib_are_written_from_mapped_buffers_and_read_back<S: nodedb_wal::storage::Storage + Clone>(
    storage: S,
    dir: &std::path::Path,
) {
    let ty = RecordType::optional(0x100);
    let sizes = [5 << 20, 3 << 20, (2 << 20) + 1, 4 << 20];
    let payload = |i: usize, len: usize| -> Vec<u8> { (0..len).map(|j| (j * 31 + i * 7) as u8).collect() };
    let config = || SegmentedWalConfig::new(dir);
    {
        let wal = SegmentedWal::open_with(storage.clone(), config()).unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            wal.append_durable(Record::new(ty, &payload(i, len))).unwrap();
            wal.append(Record::new(ty, b"small, between large ones")).unwrap();
        }
        wal.close().unwrap();
    }
    let wal = SegmentedWal::open_with(storage, config()).unwrap();
    let records = common::read_all(&wal);
    assert_eq!(records.len(), 2 * sizes.len());
    for (i, &len) in sizes.iter().enumerate() {
        assert!(records[2 * i].payload == payload(i, len), "record {i} of {len} bytes");
        assert_eq!(records[2 * i + 1].payload, b"small, between large ones");
    }
}

#[test]
fn records_of_several_mib_are_written_from_mapped_buffers_and_read_back_fs() {
    let dir = tempfile::tempdir().unwrap();
    records_of_several_mib_are_written_from_mapped_buffers_and_read_back(nodedb_wal::FsStorage::new(), dir.path());
}

#[test]
fn records_of_several_mib_are_written_from_mapped_buffers_and_read_back_sim() {
    records_of_several_mib_are_written_from_mapped_buffers_and_read_back(
        SimStorage::new(21, FaultConfig::default()),
        std::path::Path::new("/wal"),
    );
}

/// What each reader hands out from `from` on: the LSNs, then the error it stops at, if any.
type Read = (Vec<Lsn>, Option<String>);

fn read_until_error(records: impl Iterator<Item = nodedb_wal::Result<Lsn>>) -> Read {
    let mut lsns = Vec::new();
    for record in records {
        match record {
            Ok(lsn) => lsns.push(lsn),
            Err(err) => return (lsns, Some(format!("{err:?}"))),
        }
    }
    (lsns, None)
}

fn read_lazy<S: nodedb_wal::storage::Storage>(mut lazy: nodedb_wal::LazyWalReader<S>) -> Read {
    read_until_error(std::iter::from_fn(|| lazy.next_header().transpose().map(|h| h.map(|h| h.lsn))))
}

fn read_views<S: nodedb_wal::storage::Storage>(mut reader: nodedb_wal::WalIter<S>) -> Read {
    read_until_error(std::iter::from_fn(|| reader.next_view().map(|v| v.map(|v| v.lsn))))
}

/// Every reader of a log (owned, lent, mapped, headers first, parallel, a tail, a read-only
/// look, and the log a salvage makes of it) skips a record of an unknown optional type of the
/// crate's range and stops at one of an unknown required type, with the same typed error
/// naming its LSN and type, after the same records; from past it, none stops.
#[test]
fn every_reader_skips_an_unknown_optional_type_and_stops_at_an_unknown_required_one_alike() {
    use common::{Disk, locate, seg};
    use nodedb_wal::FsStorage;
    use nodedb_wal::format::frame::seal_frame;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal = SegmentedWal::open(common::config(&dir)).unwrap();
    for i in 0..100u8 {
        wal.append(Record::new(RecordType::optional(0x100), &[i; 500])).unwrap();
    }
    wal.close().unwrap();
    // A newer build's types: LSN 10 optional, LSN 60 required, in this crate's ranges.
    let disk = FsStorage::new();
    let (skipped, stopper) = ((10, RecordType(0x0050)), (60, RecordType(0x8050)));
    for (lsn, to) in [skipped, stopper] {
        let (id, frame) = locate(&disk, &dir, lsn);
        disk.edit(&seg(&dir, id), |bytes| {
            let span = &mut bytes[frame.offset as usize..(frame.offset + frame.frame_len()) as usize];
            span[6..8].copy_from_slice(&to.0.to_le_bytes());
            seal_frame(span, to);
        });
    }
    assert!(locate(&disk, &dir, 10).0 < locate(&disk, &dir, 60).0, "the two lie in different segments");
    // Header indexes hold the headers as written: without them every reader reads the frames.
    for name in disk.names(&dir).into_iter().filter(|n| n.ends_with(".hdrs")) {
        disk.delete(&dir.join(name));
    }
    let error = format!("{:?}", WalError::UnknownRequiredType { lsn: Lsn(60), record_type: RecordType(0x8050) });
    let expected: Read = ((1..60).filter(|&l| l != 10).map(Lsn).collect(), Some(error));
    let past: Read = ((61..=100).map(Lsn).collect(), None);

    let wal = SegmentedWal::open(common::config(&dir)).unwrap();
    for from in [Lsn(1), Lsn(61)] {
        let want = if from == Lsn(1) { &expected } else { &past };
        let owned = |r: nodedb_wal::Result<nodedb_wal::WalRecord>| r.map(|r| r.lsn);
        assert_eq!(&read_until_error(wal.read_from(from).unwrap().map(owned)), want, "read_from {from}");
        assert_eq!(&read_views(wal.read_from(from).unwrap()), want, "next_view {from}");
        assert_eq!(&read_until_error(wal.read_mapped(from).unwrap().map(owned)), want, "read_mapped {from}");
        assert_eq!(&read_lazy(wal.lazy_reader(from).unwrap()), want, "lazy_reader {from}");
        let mut applied = Vec::new();
        let replayed = wal.replay_parallel(from, 4, |view| {
            applied.push(view.lsn);
            Ok(())
        });
        assert_eq!(&(applied, replayed.err().map(|e| format!("{e:?}"))), want, "replay_parallel {from}");
        let mut tail = wal.tail(from);
        let tailed = read_until_error(std::iter::from_fn(|| tail.next_timeout(std::time::Duration::ZERO).transpose().map(owned)));
        assert_eq!(&tailed, want, "tail {from}");
    }
    let look = ReadOnlyWal::open(&dir, None).unwrap();
    let owned = |r: nodedb_wal::Result<nodedb_wal::WalRecord>| r.map(|r| r.lsn);
    assert_eq!(read_until_error(look.read_from(Lsn(1)).unwrap().map(owned)), expected, "a read-only look");
    assert_eq!(read_until_error(look.read_mapped(Lsn(1)).unwrap().map(owned)), expected, "a read-only look, mapped");
    assert_eq!(read_lazy(look.lazy_reader(Lsn(1)).unwrap()), expected, "a read-only look, headers first");
    wal.close().unwrap();

    // A salvage copies both records as they are: its log reads the same.
    let saved = tmp.path().join("saved");
    let report = nodedb_wal::salvage::salvage(&dir, &saved, None).unwrap();
    assert!(report.damage.is_none(), "{report:?}");
    let copy = SegmentedWal::open(common::config(&saved)).unwrap();
    assert_eq!(read_until_error(copy.read_from(Lsn(1)).unwrap().map(owned)), expected, "the salvaged log");
}
