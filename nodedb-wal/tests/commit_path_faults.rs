//! The write path under a failure at every step: one write, fdatasync, directory fsync,
//! rename, `set_len` or removal fails (with EIO or ENOSPC, whole or half-written) at each of
//! its calls in turn while a log with tiny batches, two pool buffers, 32 KiB segments, zero-fill
//! ahead and kept segment files takes small records, records larger than a batch, atomic groups
//! and pipelined appends, truncates and closes. Each run ends (a watchdog fails a hang), then
//! the power is cut; the log reopened after holds every acknowledged record, only records that
//! were appended at their LSNs, dense, and no atomic group in part.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const TY: RecordType = RecordType::optional(0x100);
const DIR: &str = "/wal";

fn config() -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.batch_buffers = 2;
    c.zero_fill_bytes = 16 * 1024;
    c.recycle_segments = 2;
    c
}

/// A payload naming its step and place: no two appends carry the same bytes.
fn payload(step: u64, place: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("step {step} place {place} ").into_bytes();
    bytes.resize(len.max(bytes.len()), (step as u8) ^ (place as u8).wrapping_mul(13));
    bytes
}

/// What a run appended and what it was told.
#[derive(Default)]
struct Model {
    /// Every record handed an LSN, acknowledged or not.
    appended: BTreeMap<u64, Vec<u8>>,
    /// The highest LSN the log said was durable.
    acked: u64,
    /// Atomic groups, as (first, last) LSNs.
    groups: Vec<(u64, u64)>,
}

impl Model {
    fn ack(&mut self, lsn: Lsn) {
        self.acked = self.acked.max(lsn.0);
    }
}

/// Runs the workload until it ends or the log refuses; returns what it appended and was told.
fn workload(wal: &SegmentedWal<FaultyStorage<SimStorage>>) -> Model {
    let mut model = Model::default();
    let result = (|| -> Result<(), WalError> {
        for step in 0..160u64 {
            match step % 8 {
                // An atomic group, its middle record larger than a batch every other time.
                3 => {
                    let large = if step % 16 == 3 { 20 * 1024 } else { 300 };
                    let bytes = [payload(step, 0, 100), payload(step, 1, large), payload(step, 2, 50)];
                    let records: Vec<Record<'_>> = bytes.iter().map(|b| Record::new(TY, b)).collect();
                    let lsns = wal.append_group(&records)?;
                    for (lsn, b) in (lsns.start().0..=lsns.end().0).zip(bytes) {
                        model.appended.insert(lsn, b);
                    }
                    model.groups.push((lsns.start().0, lsns.end().0));
                    wal.wait_durable(*lsns.end())?;
                    model.ack(*lsns.end());
                }
                // Pipelined appends, then one sync.
                5 => {
                    for place in 0..4 {
                        let bytes = payload(step, place, 700 + 900 * place as usize);
                        let lsn = wal.append(Record::new(TY, &bytes))?;
                        model.appended.insert(lsn.0, bytes);
                    }
                    let last = wal.sync()?;
                    model.ack(last);
                }
                // A record larger than a batch, alone.
                6 => {
                    let bytes = payload(step, 0, 12 * 1024);
                    let next = wal.next_lsn().0;
                    model.appended.insert(next, bytes.clone());
                    let lsn = wal.append_durable(Record::new(TY, &bytes))?;
                    assert_eq!(lsn.0, next);
                    model.ack(lsn);
                }
                _ => {
                    let bytes = payload(step, 0, 200 + (step as usize * 53) % 900);
                    let next = wal.next_lsn().0;
                    model.appended.insert(next, bytes.clone());
                    let lsn = wal.append_durable(Record::new(TY, &bytes))?;
                    assert_eq!(lsn.0, next);
                    model.ack(lsn);
                }
            }
            if step % 20 == 19 {
                // A failed truncation is reported; the log may go on.
                let _ = wal.truncate_before(wal.durable_lsn());
            }
        }
        Ok(())
    })();
    if let Err(err) = result {
        assert!(matches!(err, WalError::Poisoned { .. } | WalError::Io { .. }), "an untyped failure: {err}");
    }
    model
}

/// The log reopened after the power cut keeps everything it acknowledged and nothing else.
fn check_recovered(wal: &SegmentedWal<SimStorage>, model: &Model, context: &str) {
    let info = wal.recovery_info().clone();
    let mut expected = info.first_lsn.0;
    for record in wal.read_from(info.first_lsn).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: replay failed: {e}"));
        assert_eq!(record.lsn.0, expected, "{context}: LSNs must be dense");
        let appended = model.appended.get(&record.lsn.0).unwrap_or_else(|| panic!("{context}: LSN {} was never appended", record.lsn));
        assert!(record.payload == *appended, "{context}: LSN {} holds another record", record.lsn);
        expected += 1;
    }
    let last = expected - 1;
    assert!(last >= model.acked, "{context}: acknowledged LSN {} lost; recovered up to {last}", model.acked);
    for &(first, end) in &model.groups {
        assert!(!(first..end).contains(&last), "{context}: group {first}..={end} recovered in part (up to {last})");
    }
}

/// One run with `arm` setting up the fault; fails on a hang.
fn run(seed: u64, arm: impl FnOnce(&FaultyStorage<SimStorage>) + Send + 'static, context: &str) -> u64 {
    let sim = SimStorage::new(seed, FaultConfig::default());
    let storage = FaultyStorage::new(sim.clone());
    let (tx, rx) = mpsc::channel();
    let faulty = storage.clone();
    std::thread::spawn(move || {
        let wal = SegmentedWal::open_with(faulty.clone(), config()).unwrap();
        arm(&faulty);
        let model = workload(&wal);
        let _ = wal.close();
        tx.send((model, faulty.injected())).unwrap();
    });
    let (model, injected) = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("{context}: the run hung"));
    let wal = SegmentedWal::open_with(sim.crash(seed ^ 0x5eed), config()).unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    check_recovered(&wal, &model, context);
    injected
}

/// How many calls of `op` a run without a fault makes.
fn calls(op: FaultOp) -> u64 {
    let sim = SimStorage::new(1, FaultConfig::default());
    let storage = FaultyStorage::new(sim);
    let wal = SegmentedWal::open_with(storage.clone(), config()).unwrap();
    let before = storage.calls(op);
    let model = workload(&wal);
    wal.close().unwrap();
    assert!(
        model.acked > 250 && storage.calls(FaultOp::Rename) > 4,
        "the run appends enough to roll, truncate and reuse ({} records)",
        model.acked
    );
    storage.calls(op) - before
}

/// Fails the `after`-th call of `op` for every `after` a run makes; returns how many runs the
/// fault hit, and how many there were.
fn sweep(op: FaultOp, errno: i32) -> (u64, u64) {
    let total = calls(op);
    let mut hit = 0;
    for after in 0..total {
        let context = format!("{op:?} {errno} after {after} of {total}");
        hit += run(after, move |s| s.fail_once(op, after, errno), &context).min(1);
    }
    (hit, total)
}

/// A sweep in which most of the faults land (some calls may not come in every run: who
/// writes a batch, and so how many there are, depends on the threads' timing).
fn sweep_landing(op: FaultOp, errno: i32) {
    let (hit, total) = sweep(op, errno);
    assert!(total > 0 && hit * 2 >= total, "{op:?}: most faults land ({hit} of {total})");
}

#[test]
fn a_failed_write_at_any_step_loses_no_acknowledged_record_and_hangs_nothing() {
    sweep_landing(FaultOp::Write, EIO);
}

#[test]
fn a_full_disk_at_any_write_loses_no_acknowledged_record_and_hangs_nothing() {
    sweep_landing(FaultOp::Write, ENOSPC);
}

#[test]
fn a_half_written_write_at_any_step_loses_no_acknowledged_record_and_hangs_nothing() {
    let total = calls(FaultOp::Write);
    for after in 0..total {
        let context = format!("partial write after {after} of {total}");
        run(after, move |s| s.fail_write_partially(after, ENOSPC), &context);
    }
}

#[test]
fn a_failed_fdatasync_at_any_step_loses_no_acknowledged_record_and_hangs_nothing() {
    sweep_landing(FaultOp::SyncData, EIO);
}

#[test]
fn a_failed_directory_sync_at_any_step_loses_no_acknowledged_record_and_hangs_nothing() {
    sweep_landing(FaultOp::SyncDir, EIO);
}

#[test]
fn a_failed_rename_remove_or_set_len_at_any_step_loses_no_acknowledged_record_and_hangs_nothing() {
    for op in [FaultOp::Rename, FaultOp::Remove, FaultOp::SetLen] {
        for errno in [EIO, ENOSPC] {
            let (_, total) = sweep(op, errno);
            println!("{op:?} {errno}: {total} calls");
        }
    }
}

#[test]
fn a_run_without_faults_recovers_whole_after_a_power_cut() {
    let sim = SimStorage::new(9, FaultConfig::default());
    let wal = SegmentedWal::open_with(FaultyStorage::new(sim.clone()), config()).unwrap();
    let model = workload(&wal);
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(sim.crash(3), config()).unwrap();
    check_recovered(&wal, &model, "no fault");
    assert_eq!(wal.recovery_info().last_lsn.0, *model.appended.keys().last().unwrap(), "a closed log keeps every record");
}

/// Four threads of the workload's kinds of appends at once (so that the flusher thread writes
/// runs of queued batches, and large records wait their turn for room), with or without a
/// commit window; returns what they appended and were told.
fn threaded_workload(wal: &SegmentedWal<FaultyStorage<SimStorage>>, ring: Option<&KeyRing>) -> Model {
    let model = std::sync::Mutex::new(Model::default());
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let model = &model;
            s.spawn(move || {
                for step in 0..60u64 {
                    let tag = thread * 1000 + step;
                    let outcome = match (thread + step) % 4 {
                        0 => {
                            let bytes = [payload(tag, 0, 100), payload(tag, 1, 9 * 1024), payload(tag, 2, 60)];
                            let records: Vec<Record<'_>> = bytes.iter().map(|b| Record::new(TY, b)).collect();
                            wal.append_group(&records).map(|lsns| {
                                let mut m = model.lock().unwrap();
                                for (lsn, b) in (lsns.start().0..=lsns.end().0).zip(bytes) {
                                    m.appended.insert(lsn, b);
                                }
                                m.groups.push((lsns.start().0, lsns.end().0));
                                *lsns.end()
                            })
                        }
                        1 => {
                            let bytes = payload(tag, 0, 14 * 1024);
                            wal.append(Record::new(TY, &bytes)).inspect(|lsn| drop(model.lock().unwrap().appended.insert(lsn.0, bytes)))
                        }
                        _ => {
                            let bytes = payload(tag, 0, 100 + (tag as usize * 91) % 1500);
                            wal.append(Record::new(TY, &bytes)).inspect(|lsn| drop(model.lock().unwrap().appended.insert(lsn.0, bytes)))
                        }
                    };
                    let waited = outcome.and_then(|lsn| wal.wait_durable(lsn).map(|()| lsn));
                    match waited {
                        Ok(lsn) => model.lock().unwrap().ack(lsn),
                        Err(err) => {
                            assert!(matches!(err, WalError::Poisoned { .. } | WalError::Io { .. }), "an untyped failure: {err}");
                            return;
                        }
                    }
                    if thread == 0 && step % 15 == 14 {
                        let _ = wal.truncate_before(wal.durable_lsn());
                    }
                    if let Some(ring) = ring.filter(|_| thread == 1 && step % 10 == 9) {
                        // A new active key ends the segment being filled, wherever it stands.
                        let key_id = 2 + step as u32 / 10;
                        ring.insert(key_id, SecureKey::generate()).unwrap();
                        ring.set_active(key_id).unwrap();
                    }
                }
            });
        }
    });
    model.into_inner().unwrap()
}

fn threaded_run(seed: u64, window: bool, encrypted: bool, arm: impl FnOnce(&FaultyStorage<SimStorage>) + Send + 'static, context: &str) {
    let sim = SimStorage::new(seed, FaultConfig::default());
    let storage = FaultyStorage::new(sim.clone());
    let ring = encrypted.then(|| Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    let keys = ring.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut config = config();
        config.commit_window = window.then_some(Duration::from_micros(200));
        config.key_ring = keys.clone();
        let wal = SegmentedWal::open_with(storage.clone(), config).unwrap();
        arm(&storage);
        let model = threaded_workload(&wal, keys.as_deref());
        let _ = wal.close();
        tx.send(model).unwrap();
    });
    let model = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("{context}: the run hung"));
    let mut config = config();
    config.key_ring = ring;
    let wal = SegmentedWal::open_with(sim.crash(seed ^ 0x5eed), config).unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    check_recovered(&wal, &model, context);
}

#[test]
fn a_failure_under_concurrent_appenders_loses_no_acknowledged_record_and_hangs_nothing() {
    let rounds: u64 = std::env::var("NODEDB_WAL_COMMIT_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    for after in 0..rounds {
        for (op, errno) in
            [(FaultOp::Write, EIO), (FaultOp::SyncData, EIO), (FaultOp::Write, ENOSPC), (FaultOp::SyncDir, EIO), (FaultOp::Rename, EIO)]
        {
            for (window, encrypted) in [(false, false), (true, false), (false, true)] {
                let context = format!("{op:?} {errno} after {after}, window {window}, encrypted {encrypted}");
                threaded_run(after, window, encrypted, move |s| s.fail_once(op, after, errno), &context);
            }
        }
        threaded_run(after, false, true, move |s| s.fail_write_partially(after, ENOSPC), &format!("partial write after {after}"));
        // A disk that stays full: every write fails from then on, truncation and close too.
        threaded_run(after, false, false, move |s| s.fail_from(FaultOp::Write, after, ENOSPC), &format!("full from write {after}"));
    }
}
