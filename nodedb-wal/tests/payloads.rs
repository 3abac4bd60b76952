//! What an owned record's payload holds. A replay that lets go of each record gets payloads
//! that share the reader's buffer (no copy per record); a caller that keeps records gets copies
//! once the reader finds a buffer still held, so that kept records pin at most about two
//! buffers; a kept payload's bytes never change under it; decrypted and mapped payloads are
//! copies. On real files (with the read-ahead helper where the machine has a core to spare) and
//! on the simulated storage.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{append_synced, payload};

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{FsStorage, KeyRing, Lsn, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalRecord};

/// Records in each test log: 3 MiB and more of frames, so that a reader moves through several
/// buffers (1 MiB at most) and sealed segments large enough for a read-ahead helper.
const RECORDS: u64 = 16_000;

fn config(dir: &Path, ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 2 << 20;
    c.allow_buffered_fallback = true;
    c.key_ring = ring;
    c
}

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])))
}

fn log<S: Storage>(storage: S, dir: &Path, ring: Option<Arc<KeyRing>>) -> SegmentedWal<S> {
    let wal = SegmentedWal::open_with(storage, config(dir, ring)).unwrap();
    append_synced(&wal, 1, RECORDS);
    assert!(wal.segments().len() > 1, "the log spans segments");
    wal
}

#[track_caller]
fn assert_record(record: &WalRecord, lsn: u64) {
    assert_eq!(record.lsn, Lsn(lsn));
    assert_eq!(record.payload, payload(lsn), "LSN {lsn}");
}

/// Reads every record, letting go of each at once; returns how many payloads were shared.
fn stream(records: impl Iterator<Item = nodedb_wal::Result<WalRecord>>) -> u64 {
    let mut shared = 0;
    for (record, lsn) in records.zip(1..) {
        let record = record.unwrap();
        assert_record(&record, lsn);
        shared += u64::from(record.payload.is_shared());
    }
    shared
}

fn a_replay_that_lets_go_of_each_record_shares_every_payload<S: Storage>(storage: S, dir: &Path) {
    let wal = log(storage, dir, None);
    assert_eq!(stream(wal.read_from(Lsn::FIRST).unwrap()), RECORDS);
}

#[test]
fn a_replay_that_lets_go_of_each_record_shares_every_payload_real_files() {
    let dir = tempfile::tempdir().unwrap();
    a_replay_that_lets_go_of_each_record_shares_every_payload(FsStorage::new(), dir.path());
}

#[test]
fn a_replay_that_lets_go_of_each_record_shares_every_payload_simulated() {
    a_replay_that_lets_go_of_each_record_shares_every_payload(SimStorage::new(3, FaultConfig::default()), Path::new("/p"));
}

/// Keeps every record; the shared payloads among them must fit in about two buffers.
fn a_caller_that_keeps_records_pins_at_most_two_buffers<S: Storage>(storage: S, dir: &Path) {
    let wal = log(storage, dir, None);
    let kept: Vec<WalRecord> = wal.read_from(Lsn::FIRST).unwrap().map(Result::unwrap).collect();
    assert_eq!(kept.len() as u64, RECORDS);
    for (record, lsn) in kept.iter().zip(1..) {
        assert_record(record, lsn);
    }
    let shared: usize = kept.iter().filter(|r| r.payload.is_shared()).map(|r| r.payload.len() + 64).sum();
    assert!(shared > 0, "the first buffer's payloads are shared");
    assert!(shared <= 2 << 20, "{shared} bytes of kept payloads share read buffers");
}

#[test]
fn a_caller_that_keeps_records_pins_at_most_two_buffers_real_files() {
    let dir = tempfile::tempdir().unwrap();
    a_caller_that_keeps_records_pins_at_most_two_buffers(FsStorage::new(), dir.path());
}

#[test]
fn a_caller_that_keeps_records_pins_at_most_two_buffers_simulated() {
    a_caller_that_keeps_records_pins_at_most_two_buffers(SimStorage::new(4, FaultConfig::default()), Path::new("/p"));
}

/// Keeps every 700th record while the reader goes on to the end, then checks them: a buffer a
/// payload shares is never refilled under it.
fn kept_payloads_never_change_while_the_reader_goes_on<S: Storage>(storage: S, dir: &Path) {
    let wal = log(storage, dir, None);
    let mut kept = Vec::new();
    for (record, lsn) in wal.read_from(Lsn::FIRST).unwrap().zip(1..) {
        let record = record.unwrap();
        assert_record(&record, lsn);
        if lsn % 700 == 1 {
            kept.push(record);
        }
    }
    assert!(kept[0].payload.is_shared(), "the first kept payload shared its buffer");
    for record in &kept {
        assert_record(record, record.lsn.0);
    }
}

#[test]
fn kept_payloads_never_change_while_the_reader_goes_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    kept_payloads_never_change_while_the_reader_goes_on(FsStorage::new(), dir.path());
}

#[test]
fn kept_payloads_never_change_while_the_reader_goes_on_simulated() {
    kept_payloads_never_change_while_the_reader_goes_on(SimStorage::new(5, FaultConfig::default()), Path::new("/p"));
}

#[test]
fn decrypted_payloads_are_copies_and_stored_ones_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log(FsStorage::new(), dir.path(), Some(ring()));
    assert_eq!(stream(wal.read_from(Lsn::FIRST).unwrap()), 0, "plaintext lies where it was decrypted");
    let raw: Vec<WalRecord> = wal.read_from_raw(Lsn::FIRST).unwrap().take(10).map(Result::unwrap).collect();
    assert!(raw.iter().all(|r| r.payload.is_shared() && r.payload.len() == payload(r.lsn.0).len() + 16), "ciphertext and tag, in place");
}

#[test]
fn mapped_payloads_are_copies() {
    let dir = tempfile::tempdir().unwrap();
    let wal = log(FsStorage::new(), dir.path(), None);
    let sealed_end = wal.segments()[0].end_lsn;
    let mapped = wal.read_mapped(Lsn::FIRST).unwrap().take_while(|r| r.as_ref().map_or(true, |r| r.lsn < sealed_end));
    assert_eq!(stream(mapped), 0, "a map is given back as the reader moves on");
}

/// Keeps one record of each segment, in a log of segments smaller than a read buffer: each
/// segment is read into one buffer, so the reader never moves past a buffer within a segment,
/// only from one segment's to the next's. That move too must find the buffer still held:
/// otherwise every kept record pins a buffer of its own (a whole segment's worth of bytes).
///
/// Found by an adversarial review: the reader looked for held buffers only within a segment, and
/// a caller keeping one record per 64 KiB segment pinned every segment's buffer.
fn a_caller_that_keeps_one_record_per_small_segment_pins_at_most_two_buffers<S: Storage>(storage: S, dir: &Path) {
    let wal = SegmentedWal::open_with(storage, SegmentedWalConfig { segment_bytes_target: 64 << 10, ..config(dir, None) }).unwrap();
    append_synced(&wal, 1, 4_000);
    let firsts: Vec<u64> = wal.segments().iter().map(|s| s.first_lsn.0).collect();
    assert!(firsts.len() > 10, "{} segments", firsts.len());
    let mut kept = Vec::new();
    for (record, lsn) in wal.read_from(Lsn::FIRST).unwrap().zip(1..) {
        let record = record.unwrap();
        assert_record(&record, lsn);
        if firsts.contains(&lsn) {
            kept.push(record);
        }
    }
    assert_eq!(kept.len(), firsts.len());
    for record in &kept {
        assert_record(record, record.lsn.0);
    }
    let shared = kept.iter().filter(|r| r.payload.is_shared()).count();
    assert!(shared >= 1, "the first segment's payloads are shared");
    assert!(shared <= 2, "{shared} of {} kept records each pin a read buffer", kept.len());
}

#[test]
fn a_caller_that_keeps_one_record_per_small_segment_pins_at_most_two_buffers_real_files() {
    let dir = tempfile::tempdir().unwrap();
    a_caller_that_keeps_one_record_per_small_segment_pins_at_most_two_buffers(FsStorage::new(), dir.path());
}

#[test]
fn a_caller_that_keeps_one_record_per_small_segment_pins_at_most_two_buffers_simulated() {
    a_caller_that_keeps_one_record_per_small_segment_pins_at_most_two_buffers(SimStorage::new(6, FaultConfig::default()), Path::new("/p"));
}

/// Records longer than a read (1 MiB) among small ones, at offsets no block lines up with: a
/// replay that lets go of each still shares every payload, the long ones read whole into
/// buffers of their own.
fn records_longer_than_a_read_are_shared_too<S: Storage>(storage: S, dir: &Path) {
    let wal = SegmentedWal::open_with(storage, config(dir, None)).unwrap();
    let body = |i: u32| -> Vec<u8> {
        let len = if i.is_multiple_of(3) { 1_300_000 + i as usize * 4_099 } else { 100 + i as usize };
        (0..len).map(|k| (k as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8).collect()
    };
    for i in 0..24 {
        wal.append(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), &body(i))).unwrap();
    }
    wal.sync().unwrap();
    let mut shared = 0;
    for (record, i) in wal.read_from(Lsn::FIRST).unwrap().zip(0..) {
        let record = record.unwrap();
        assert!(record.payload == body(i), "record {i}");
        shared += u32::from(record.payload.is_shared());
    }
    assert_eq!(shared, 24);
}

#[test]
fn records_longer_than_a_read_are_shared_too_real_files() {
    let dir = tempfile::tempdir().unwrap();
    records_longer_than_a_read_are_shared_too(FsStorage::new(), dir.path());
}

#[test]
fn records_longer_than_a_read_are_shared_too_simulated() {
    records_longer_than_a_read_are_shared_too(SimStorage::new(6, FaultConfig::default()), Path::new("/p"));
}
