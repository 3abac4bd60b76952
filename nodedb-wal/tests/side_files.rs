//! The log's side files (header indexes `{id}.hdrs`, `MANIFEST` and `MANIFEST.new`, `LOCK`)
//! under every state a power cut can leave the directory in: a cut at each step of a workload
//! that seals, indexes, truncates, reuses and reopens, then each directory back at any moment
//! since its last fsync. Whatever a side file is left as (missing, torn, stale, an orphan, a name
//! whose entry was never made durable), the log opens, every reader returns exactly the records
//! a scan of the segments returns, and a second cut right after the reopen changes nothing.

use std::collections::BTreeMap;

use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, Storage, SyncFailure};
use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const DIR: &str = "/side";
const TY: RecordType = RecordType::optional(0x100);

fn config() -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    // Records of ~6 KiB in 64 KiB segments: every sealed segment gets an index.
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.recycle_segments = 2;
    c
}

fn payload(lsn: u64) -> Vec<u8> {
    let mut bytes = format!("lsn {lsn} ").into_bytes();
    bytes.resize(5_000 + (lsn as usize * 131) % 2_000, lsn as u8);
    bytes
}

/// Appends durably until the log has `segments` segments (or `records` more records).
fn append<S: Storage>(wal: &SegmentedWal<S>, model: &mut BTreeMap<u64, Vec<u8>>, acked: &mut u64, segments: usize) -> Result<(), WalError> {
    while wal.segments().len() < segments {
        let lsn = wal.next_lsn().0;
        let bytes = payload(lsn);
        model.insert(lsn, bytes.clone());
        wal.append_durable(Record::new(TY, &bytes))?;
        *acked = lsn;
    }
    Ok(())
}

/// Seals and indexes segments, truncates (keeping files for reuse), reuses them, reopens (a
/// restart seal writes an index, the manifest is brought up to date, orphans are removed) and
/// truncates again. Stops at the first error: the power is out.
fn workload(storage: &FaultyStorage<SimStorage>, model: &mut BTreeMap<u64, Vec<u8>>, acked: &mut u64) -> Result<(), WalError> {
    let wal = SegmentedWal::open_with(storage.clone(), config())?;
    append(&wal, model, acked, 5)?;
    wal.truncate_before(Lsn(*acked + 1))?;
    append(&wal, model, acked, 4)?;
    // Some records in the open segment, then a restart that seals it.
    for _ in 0..3 {
        let lsn = wal.next_lsn().0;
        model.insert(lsn, payload(lsn));
        wal.append_durable(Record::new(TY, &payload(lsn)))?;
        *acked = lsn;
    }
    drop(wal);
    let wal = SegmentedWal::open_with(storage.clone(), config())?;
    append(&wal, model, acked, 5)?;
    wal.truncate_before(Lsn(*acked + 1))?;
    append(&wal, model, acked, 3)?;
    drop(wal);
    Ok(())
}

/// Records of one reader as comparable lines.
fn lines_of_records(records: impl Iterator<Item = Result<nodedb_wal::WalRecord, WalError>>, context: &str) -> Vec<(u64, usize)> {
    records.map(|r| r.unwrap_or_else(|e| panic!("{context}: read failed: {e}"))).map(|r| (r.lsn.0, r.payload.len())).collect()
}

fn lines_of_lazy<S: Storage>(mut lazy: nodedb_wal::LazyWalReader<S>, context: &str) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    while let Some(h) = lazy.next_header().unwrap_or_else(|e| panic!("{context}: lazy read failed: {e}")) {
        let payload = lazy.payload().unwrap_or_else(|e| panic!("{context}: lazy payload of {} failed: {e}", h.lsn));
        assert_eq!(payload.len(), h.stored_len as usize, "{context}");
        out.push((h.lsn.0, payload.len()));
    }
    out
}

/// The reopened log holds every acknowledged record and nothing else, densely; the lazy reader
/// (through whatever header indexes are there) and a read-only view agree with it exactly.
fn check(sim: &SimStorage, model: &BTreeMap<u64, Vec<u8>>, acked: u64, context: &str) -> SimStorage {
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let first = wal.recovery_info().first_lsn;
    let mut expected = first.0;
    for record in wal.read_from(first).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: replay failed: {e}"));
        assert_eq!(record.lsn.0, expected, "{context}: dense LSNs");
        assert_eq!(Some(&record.payload[..]), model.get(&record.lsn.0).map(|p| &p[..]), "{context}: LSN {}", record.lsn);
        expected += 1;
    }
    assert!(expected > acked, "{context}: acknowledged {acked} lost, recovered to {}", expected - 1);
    let full = lines_of_records(wal.read_from(first).unwrap(), context);
    assert_eq!(lines_of_lazy(wal.lazy_reader(first).unwrap(), context), full, "{context}: lazy reader");
    let view = ReadOnlyWal::open_with(sim.clone(), DIR, None).unwrap_or_else(|e| panic!("{context}: read-only open failed: {e}"));
    assert_eq!(lines_of_records(view.read_from(first).unwrap(), context), full, "{context}: read-only view");
    assert_eq!(lines_of_lazy(view.lazy_reader(first).unwrap(), context), full, "{context}: read-only lazy reader");
    drop(view);
    drop(wal);
    sim.clone()
}

#[test]
fn side_files_left_by_a_power_cut_at_any_step_never_fail_the_log_or_change_what_readers_return() {
    let mut steps_with_cut = 0;
    for cut in 0..400u64 {
        let sim = SimStorage::new(cut, FaultConfig::default());
        let storage = FaultyStorage::new(sim.clone());
        storage.cut_power_after(cut);
        let (mut model, mut acked) = (BTreeMap::new(), 0);
        let finished = workload(&storage, &mut model, &mut acked).is_ok();
        steps_with_cut += usize::from(!finished);
        for seed in 0..6 {
            let context = format!("cut {cut}, crash {seed}");
            let restarted = sim.crash(cut * 100 + seed);
            let reopened = check(&restarted, &model, acked, &context);
            // A second cut right after the reopen: what it removed, renamed or created
            // without a directory fsync may come back or go.
            let again = reopened.crash(cut * 100 + seed + 50);
            check(&again, &model, acked, &format!("{context}, then again"));
        }
        if finished {
            break;
        }
    }
    assert!(steps_with_cut > 50, "the cuts fall inside the workload ({steps_with_cut})");
}

/// A failed fdatasync or directory fsync at each step, as Linux fails them (the pages it did not
/// write stay cached and clean), then a reopen under the same kernel that goes on writing, and
/// only then a power cut: the side files the failed step left, read back through the page cache
/// or from the disk, never fail the log or change what a reader returns.
#[test]
fn side_files_left_by_a_failed_sync_and_a_reopen_before_the_power_cut_never_fail_the_log() {
    for (op, steps) in [(FaultOp::SyncData, 0..60u64), (FaultOp::SyncDir, 0..30)] {
        for step in steps {
            let sim = SimStorage::new(step, FaultConfig::default());
            sim.set_sync_failure(SyncFailure::KeepsCleanPages);
            let storage = FaultyStorage::new(sim.clone());
            storage.fail_once(op, step, EIO);
            let (mut model, mut acked) = (BTreeMap::new(), 0);
            let _ = workload(&storage, &mut model, &mut acked);
            if storage.injected() == 0 {
                break; // past the workload's last such call
            }
            let context = format!("{op:?} failed at {step}");
            // Reopened under the same kernel, and written to once more.
            let wal = SegmentedWal::open_with(storage.clone(), config()).unwrap_or_else(|e| panic!("{context}: same-boot reopen: {e}"));
            let mut more = 0;
            append(&wal, &mut model, &mut more, wal.segments().len() + 1).unwrap();
            acked = acked.max(more);
            drop(wal);
            check(&sim, &model, acked, &format!("{context}: same boot"));
            for seed in 0..4 {
                check(&sim.crash(step * 10 + seed), &model, acked, &format!("{context}, crash {seed}"));
            }
        }
    }
}

/// A log of three sealed segments (and an open one) of records of type `ty`.
fn typed_log(seed: u64, ty: RecordType) -> (SimStorage, SegmentedWal<SimStorage>) {
    let sim = SimStorage::new(seed, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    let mut lsn = 1;
    while wal.segments().len() < 4 {
        wal.append(Record::new(ty, &payload(lsn))).unwrap();
        lsn += 1;
    }
    wal.sync().unwrap();
    (sim, wal)
}

/// The index an earlier segment under the same id left (a reused id: an orphan whose removal
/// was not durable, another life of the directory) can hold the same id and the same LSN range
/// as the segment beside it now. It is another segment's, with another salt: ignored, and the
/// headers handed out are the segment's own.
#[test]
fn an_index_left_by_an_earlier_segment_with_the_same_id_and_lsns_is_ignored() {
    let (sim, wal) = typed_log(1, TY);
    let (other, other_wal) = typed_log(2, RecordType::optional(0x101));
    let victim = wal.segments()[1];
    assert_eq!(other_wal.segments()[1], victim, "the same id and the same LSNs in both logs");
    let path = nodedb_wal::segment::index_path(std::path::Path::new(DIR), victim.id);
    let foreign = other.read_file(&path).expect("the other log's index");
    assert_ne!(sim.read_file(&path).expect("an index"), foreign);
    sim.write_file(&path, &foreign);
    let mut lazy = wal.lazy_reader(victim.first_lsn).unwrap();
    for lsn in victim.first_lsn.0..victim.end_lsn.0 {
        let handle = lazy.next_header().unwrap().expect("a header");
        assert_eq!((handle.lsn, handle.record_type), (Lsn(lsn), TY), "the segment's own header, not the stale index's");
    }
}
