//! Records much larger than a batch (1 to 20 MiB, mixed with small ones), end to end. They
//! are written from one-off (mapped) buffers one by one, in groups and in batches, by threads
//! together and by a `WalWriter`, and read back whole by every reader (owned records kept past
//! their window while others are dropped, views, maps, headers then payloads, parallel replay,
//! read-only looks, tails), with and without encryption, in segments larger than a record and
//! smaller than one; after truncations that keep files for reuse, and after power cuts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    FsStorage, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage,
    WalRecord, WalWriter, WalWriterConfig,
};

const TY: RecordType = RecordType::optional(0x100);

/// Payload sizes: around a batch (1 MiB), a read-ahead chunk (896 KiB), the 2 MiB mapping
/// threshold and up to 20 MiB, with small records between.
const SIZES: [usize; 16] = [
    1 << 20,
    17,
    (20 << 20) - 5,
    300,
    (1 << 20) + 1,
    4000,
    (896 << 10) + 100,
    (3 << 20) + 4095,
    0,
    (2 << 20) - 1,
    (9 << 20) + 7,
    50,
    (2 << 20) + 1,
    (5 << 20) + 333,
    120_000,
    (1 << 20) - 40,
];

/// The payload of the `i`th record: bytes that depend on their position, so that a shifted or
/// stale read differs.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn config(dir: &Path, segment_bytes_target: u64, keyed: bool) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = segment_bytes_target;
    c.allow_buffered_fallback = true;
    if keyed {
        c.key_ring = Some(Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [9; 32]))));
    }
    c
}

/// Appends the records of `SIZES` (twice over) one by one, durably, in groups and in batches
/// of more than a batch's bytes; returns the payloads in LSN order.
fn write<S: Storage>(wal: &SegmentedWal<S>) -> Vec<Vec<u8>> {
    let expected: Vec<Vec<u8>> = SIZES.iter().chain(SIZES.iter().rev()).enumerate().map(|(i, &len)| payload(i, len)).collect();
    let (mut i, mut step) = (0, 0);
    while i < expected.len() {
        let n = match step % 5 {
            0 => {
                wal.append_durable(Record::new(TY, &expected[i])).unwrap();
                1
            }
            1 | 2 => {
                wal.append(Record::new(TY, &expected[i])).unwrap();
                1
            }
            3 => {
                let n = 3.min(expected.len() - i);
                let group: Vec<Record<'_>> = expected[i..i + n].iter().map(|p| Record::new(TY, p)).collect();
                let lsns = wal.append_group(&group).unwrap();
                assert_eq!((lsns.start().0 as usize, lsns.end().0 as usize), (i + 1, i + n));
                n
            }
            _ => {
                let n = 2.min(expected.len() - i);
                let batch: Vec<Record<'_>> = expected[i..i + n].iter().map(|p| Record::new(TY, p)).collect();
                let lsns = wal.append_batch(&batch).unwrap();
                assert_eq!((lsns.start().0 as usize, lsns.end().0 as usize), (i + 1, i + n));
                n
            }
        };
        i += n;
        step += 1;
    }
    wal.sync().unwrap();
    expected
}

fn assert_payload(reader: &str, lsn: Lsn, got: &[u8], expected: &[Vec<u8>]) {
    let want = &expected[lsn.0 as usize - 1];
    assert!(got.len() == want.len() && got == &want[..], "{reader}: LSN {lsn}: {} bytes, expected {}", got.len(), want.len());
}

/// Every reader of `wal` returns exactly `expected` (the payloads from LSN 1 on).
fn check_readers<S: Storage>(wal: &SegmentedWal<S>, expected: &[Vec<u8>]) {
    check_readers_from(wal, Lsn(1), expected);
}

/// Every reader of `wal` from `first` on returns exactly the rest of `expected` (the payloads
/// from LSN 1 on).
fn check_readers_from<S: Storage>(wal: &SegmentedWal<S>, first: Lsn, expected: &[Vec<u8>]) {
    let count = expected.len() + 1 - first.0 as usize;
    // Owned records: every third kept past its window (and past the segment), the rest dropped.
    let mut kept: Vec<WalRecord> = Vec::new();
    let mut n = 0;
    for record in wal.read_from(first).unwrap() {
        let record = record.unwrap();
        assert_payload("read_from", record.lsn, &record.payload, expected);
        if n % 3 == 0 {
            kept.push(record);
        }
        n += 1;
    }
    assert_eq!(n, count, "read_from");
    for record in &kept {
        assert_payload("a kept payload, after the reading", record.lsn, &record.payload, expected);
    }
    drop(kept);
    // Only large records kept, each from a window of its own: the reader goes on past them.
    let kept: Vec<WalRecord> = wal.read_from(first).unwrap().map(Result::unwrap).filter(|r| r.payload.len() > 2 << 20).collect();
    for record in &kept {
        assert_payload("a large payload kept, after the reading", record.lsn, &record.payload, expected);
    }
    drop(kept);

    for (name, mut iter) in [("next_view", wal.read_from(first).unwrap()), ("read_mapped", wal.read_mapped(first).unwrap())] {
        let mut n = 0;
        while let Some(view) = iter.next_view() {
            let view = view.unwrap();
            assert_payload(name, view.lsn, view.payload, expected);
            n += 1;
        }
        assert_eq!(n, count, "{name}");
    }

    let mut lazy = wal.lazy_reader(first).unwrap();
    let mut n = 0;
    while let Some(handle) = lazy.next_header().unwrap() {
        if n % 2 == 0 {
            assert_payload("lazy_reader", handle.lsn, &lazy.payload().unwrap(), expected);
        }
        n += 1;
    }
    assert_eq!(n, count, "lazy_reader");

    let mut n = 0;
    let replayed = wal
        .replay_parallel(first, 3, |view| {
            assert_payload("replay_parallel", view.lsn, view.payload, expected);
            n += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!((n, replayed), (count, count as u64), "replay_parallel");
}

/// Writes the records, closes, reopens (recovery) and checks every reader and a read-only look.
fn round_trip<S: Storage + Clone>(storage: S, dir: &Path, segment_bytes_target: u64, keyed: bool) {
    let expected = {
        let wal = SegmentedWal::open_with(storage.clone(), config(dir, segment_bytes_target, keyed)).unwrap();
        let expected = write(&wal);
        check_readers(&wal, &expected);
        wal.close().unwrap();
        expected
    };
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, segment_bytes_target, keyed)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn.0, expected.len() as u64, "recovery at open");
    check_readers(&wal, &expected);
    // From inside a segment, past a 20 MiB record: off the read-ahead helper's usual start.
    check_readers_from(&wal, Lsn(4), &expected);
    drop(wal);
    let look = ReadOnlyWal::open_with(storage, dir, config(dir, segment_bytes_target, keyed).key_ring).unwrap();
    let mut n = 0;
    for record in look.read_from(Lsn(1)).unwrap() {
        let record = record.unwrap();
        assert_payload("a read-only look", record.lsn, &record.payload, &expected);
        n += 1;
    }
    assert_eq!(n, expected.len(), "a read-only look");
    let mut mapped = look.read_mapped(Lsn(2)).unwrap();
    let mut n = 0;
    while let Some(view) = mapped.next_view() {
        let view = view.unwrap();
        assert_payload("a read-only look, mapped", view.lsn, view.payload, &expected);
        n += 1;
    }
    assert_eq!(n, expected.len() - 1, "a read-only look, mapped");
    let mut lazy = look.lazy_reader(Lsn(1)).unwrap();
    let mut n = 0;
    while let Some(handle) = lazy.next_header().unwrap() {
        if n % 2 == 1 {
            assert_payload("a read-only look, lazy", handle.lsn, &lazy.payload().unwrap(), &expected);
        }
        n += 1;
    }
    assert_eq!(n, expected.len(), "a read-only look, lazy");
}

const SEGMENT: u64 = 64 << 20;
/// Smaller than most large records: each makes a segment of its own.
const SMALL_SEGMENT: u64 = 4 << 20;

#[test]
fn large_records_are_read_back_whole_by_every_reader_fs() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(FsStorage::new(), dir.path(), SEGMENT, false);
}

#[test]
fn large_records_are_read_back_whole_by_every_reader_encrypted_fs() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(FsStorage::new(), dir.path(), SEGMENT, true);
}

#[test]
fn records_larger_than_a_segment_are_read_back_whole_by_every_reader_fs() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(FsStorage::new(), dir.path(), SMALL_SEGMENT, false);
}

#[test]
fn records_larger_than_a_segment_are_read_back_whole_by_every_reader_encrypted_sim() {
    round_trip(SimStorage::new(5, FaultConfig::default()), Path::new("/wal"), SMALL_SEGMENT, true);
}

#[test]
fn large_records_are_read_back_whole_by_every_reader_sim() {
    round_trip(SimStorage::new(6, FaultConfig::default()), Path::new("/wal"), SEGMENT, false);
}

/// A tail started before the first append follows a writer of large records and returns each
/// one whole, in order.
fn tail_follows(segment_bytes_target: u64) {
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(config(dir.path(), segment_bytes_target, false)).unwrap();
    let expected: Vec<Vec<u8>> = SIZES.iter().enumerate().map(|(i, &len)| payload(i, len)).collect();
    append_and_tail(&wal, &expected, false);
}

/// Appends `expected` on one thread while a tail from LSN 1 checks each record as it comes,
/// truncating the log behind each one if `truncate`.
fn append_and_tail(wal: &SegmentedWal, expected: &[Vec<u8>], truncate: bool) {
    std::thread::scope(|s| {
        s.spawn(|| {
            for p in expected {
                wal.append_durable(Record::new(TY, p)).unwrap();
            }
        });
        let mut tail = wal.tail(Lsn(1));
        for lsn in 1..=expected.len() as u64 {
            let record = tail.next_timeout(Duration::from_secs(20)).unwrap().expect("a record within the timeout");
            assert_eq!(record.lsn, Lsn(lsn));
            assert_payload("tail", record.lsn, &record.payload, expected);
            if truncate {
                wal.truncate_before(Lsn(lsn + 1)).unwrap();
            }
        }
    });
}

#[test]
fn a_tail_follows_large_records_as_they_are_appended() {
    tail_follows(SEGMENT);
}

#[test]
fn a_tail_follows_records_larger_than_a_segment_as_they_are_appended() {
    tail_follows(SMALL_SEGMENT);
}

/// Truncates a log of 1 MiB records (keeping segment files for reuse), then appends large
/// and small records on one thread (every third durably) while the power is cut at some
/// point, and reopens: every acknowledged record comes back whole, in order, and nothing else
/// but whole records appended after them, although new segments were written over old ones.
fn acknowledged_large_records_survive_a_power_cut(seed: u64, segment_bytes_target: u64) {
    let dir = Path::new("/wal");
    let sim = SimStorage::new(seed, FaultConfig::default());
    sim.set_intermediate_writes(true);
    let keyed = seed.is_multiple_of(2);
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, segment_bytes_target, keyed)).unwrap();
    let mut all: Vec<Vec<u8>> = (0..12).map(|i| payload(500 + i, (1 << 20) + i)).collect();
    for p in &all {
        wal.append(Record::new(TY, p)).unwrap();
    }
    wal.sync().unwrap();
    wal.truncate_before(Lsn(all.len() as u64 + 1)).unwrap();
    let before = all.len();
    all.extend(SIZES.iter().enumerate().map(|(i, &len)| payload(i, len)));
    let acked = AtomicUsize::new(before);
    let after = std::thread::scope(|s| {
        s.spawn(|| {
            for (i, p) in all.iter().enumerate().skip(before) {
                let record = Record::new(TY, p);
                let done = if i % 3 == 2 { wal.append_durable(record) } else { wal.append(record) };
                if done.is_err() {
                    return;
                }
                if i % 3 == 2 {
                    acked.store(i + 1, Ordering::SeqCst);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(seed * 12));
        sim.crash(seed.wrapping_mul(31) + 1)
    });
    let acked = acked.load(Ordering::SeqCst);
    drop(wal);
    let wal = SegmentedWal::open_with(after, config(dir, segment_bytes_target, keyed)).unwrap();
    let recovered = wal.recovery_info().last_lsn.0 as usize;
    assert!(recovered >= acked, "seed {seed}: {recovered} recovered, {acked} acknowledged");
    check_readers_from(&wal, wal.oldest_lsn(), &all[..recovered]);
}

#[test]
fn acknowledged_large_records_survive_a_power_cut_and_no_torn_one_is_returned() {
    for seed in 0..10 {
        acknowledged_large_records_survive_a_power_cut(seed, if seed % 3 == 0 { SEGMENT } else { SMALL_SEGMENT });
    }
}

/// Truncates a log of large records (segments of one record, too large to keep) below a
/// checkpoint, appends on (reusing the files kept), reopens: every reader returns the records
/// from the oldest retained on, whole.
#[test]
fn records_after_a_truncation_of_large_record_segments_are_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = config(dir.path(), SMALL_SEGMENT, false);
        c.recycle_segments = 4;
        c
    };
    let wal = SegmentedWal::open(config()).unwrap();
    let mut expected = write(&wal);
    let removed = wal.truncate_before(Lsn(expected.len() as u64 - 3)).unwrap();
    assert!(removed > 3, "{removed} segments truncated");
    for (i, len) in
        [700_000, 3_000_000, 100, 1_500_000, 2_000_000, 5, 900_000, 3_900_000, 1_100_000].into_iter().cycle().take(30).enumerate()
    {
        let p = payload(1000 + i, len);
        let lsn = wal.append(Record::new(TY, &p)).unwrap();
        expected.push(p);
        assert_eq!(lsn.0 as usize, expected.len());
    }
    wal.sync().unwrap();
    let first = wal.oldest_lsn();
    assert!(first.0 > 1, "the truncation took records");
    check_readers_from(&wal, first, &expected);
    wal.close().unwrap();
    let wal = SegmentedWal::open(config()).unwrap();
    assert_eq!(wal.oldest_lsn(), first);
    check_readers_from(&wal, first, &expected);
}

/// A segment written by a `WalWriter` (O_DIRECT, batches of 1 MiB) with records larger than a
/// batch is recovered and read back whole by every reader.
#[test]
fn large_records_written_by_a_wal_writer_are_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Vec<u8>> = SIZES.iter().enumerate().map(|(i, &len)| payload(i, len)).collect();
    let writer_config = WalWriterConfig { direct_io: true, alignment: 4096, batch_bytes: 1 << 20 };
    let mut writer = WalWriter::create_with(FsStorage::new(), dir.path(), SegmentId(1), Lsn(1), writer_config).unwrap();
    for (i, p) in expected.iter().enumerate() {
        assert_eq!(writer.append(Record::new(TY, p)).unwrap(), Lsn(i as u64 + 1));
        if i % 4 == 3 {
            writer.sync().unwrap();
        }
    }
    assert_eq!(writer.finish().unwrap().end_lsn.0, expected.len() as u64 + 1);
    let wal = SegmentedWal::open(config(dir.path(), SEGMENT, false)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn.0, expected.len() as u64, "recovery at open");
    check_readers(&wal, &expected);
}

/// Threads appending records of up to 20 MiB at once, more than the one-off buffers' budget
/// (four batch pools) together, some durably and some in groups, are all acknowledged, and
/// every record is read back whole under the LSN its append returned.
#[test]
fn concurrent_appends_of_large_records_beyond_the_one_off_budget_are_all_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(config(dir.path(), SMALL_SEGMENT * 2, false)).unwrap();
    let sizes = [(20 << 20) - 5, 17, (9 << 20) + 7, (3 << 20) + 4095, 300, (2 << 20) + 1, (1 << 20) + 1, 5];
    let appended = std::sync::Mutex::new(std::collections::BTreeMap::new());
    std::thread::scope(|s| {
        for thread in 0..3 {
            let (wal, appended) = (&wal, &appended);
            s.spawn(move || {
                for (i, &len) in sizes.iter().enumerate() {
                    let key = thread * 100 + i;
                    let p = payload(key, len);
                    let lsn = match (thread + i) % 3 {
                        0 => wal.append_durable(Record::new(TY, &p)).unwrap(),
                        1 => wal.append(Record::new(TY, &p)).unwrap(),
                        _ => {
                            let small = payload(key + 50, 100);
                            let lsns = wal.append_group(&[Record::new(TY, &p), Record::new(TY, &small)]).unwrap();
                            appended.lock().unwrap().insert(lsns.end().0, small);
                            *lsns.start()
                        }
                    };
                    appended.lock().unwrap().insert(lsn.0, p);
                }
            });
        }
    });
    wal.sync().unwrap();
    let appended = appended.into_inner().unwrap();
    let expected: Vec<Vec<u8>> = appended.into_values().collect();
    check_readers(&wal, &expected);
    wal.close().unwrap();
    let wal = SegmentedWal::open(config(dir.path(), SMALL_SEGMENT * 2, false)).unwrap();
    check_readers(&wal, &expected);
}

/// A tail whose consumer truncates the log behind each record it takes (segments of one large
/// record, kept files reused) still returns every record whole, in order.
#[test]
fn a_tail_whose_consumer_truncates_behind_it_returns_every_large_record_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), SMALL_SEGMENT, false);
    c.recycle_segments = 3;
    let wal = SegmentedWal::open(c).unwrap();
    let expected: Vec<Vec<u8>> = SIZES.iter().chain(SIZES.iter().rev()).enumerate().map(|(i, &len)| payload(i, len)).collect();
    append_and_tail(&wal, &expected, true);
    assert!(wal.oldest_lsn().0 > 1, "the consumer's truncations took segments");
}

/// A record of exactly `payload_bytes_max` (64 MiB by default), encrypted, so that its frame is
/// larger than a default segment, is written, recovered and read back whole, between small ones.
#[test]
fn a_record_of_the_largest_payload_encrypted_is_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let max = SegmentedWalConfig::new(dir.path()).payload_bytes_max;
    let expected = vec![payload(1, 10), payload(2, max), payload(3, 10)];
    {
        let wal = SegmentedWal::open(config(dir.path(), SEGMENT, true)).unwrap();
        for p in &expected {
            wal.append(Record::new(TY, p)).unwrap();
        }
        wal.sync().unwrap();
        wal.close().unwrap();
    }
    let wal = SegmentedWal::open(config(dir.path(), SEGMENT, true)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, Lsn(3), "recovery at open");
    let records: Vec<WalRecord> = wal.read_from(Lsn(1)).unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_payload("read_from", record.lsn, &record.payload, &expected);
    }
}

/// A record that names itself: its key and length, then `payload(key, len)`, so that a
/// recovered record can be checked whole without knowing whether its append was acknowledged.
fn self_described(key: usize, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + len);
    bytes.extend_from_slice(&(key as u64).to_le_bytes());
    bytes.extend_from_slice(&(len as u64).to_le_bytes());
    bytes.extend_from_slice(&payload(key, len));
    bytes
}

/// The key of a record made by [`self_described`], checked whole.
fn described_key(lsn: Lsn, record: &[u8]) -> usize {
    let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap()) as usize;
    let (key, len) = (word(0), word(8));
    assert!(record == &self_described(key, len)[..], "LSN {lsn}: record {key} of {len} bytes not whole");
    key
}

/// Batches of 64 KiB in two buffers: one-off buffers have a fixed budget of 512 KiB, which
/// records of 200 KiB and more grow.
fn small_budget_config(dir: &Path) -> SegmentedWalConfig {
    let mut c = config(dir, SMALL_SEGMENT, false);
    (c.batch_bytes_max, c.batch_buffers) = (64 << 10, 2);
    c
}

/// Appenders of [`many_appenders_of_huge_records`]: six of records of 200 KiB to 1.8 MiB,
/// then two of small ones.
const APPENDERS: usize = 8;
const APPENDS_EACH: usize = 10;

/// The payload length of append `i` of appender `thread`.
fn appender_len(thread: usize, i: usize) -> usize {
    if thread < 6 { (200 << 10) * (1 + (thread * 7 + i * 13) % 9) } else { 10 + i * 50 }
}

/// Six threads append records larger than the fixed budget of one-off buffers, durably, while
/// two append small ones: every append completes, the LSNs are dense, each thread's records
/// take rising LSNs, and every reader returns each whole under its LSN, before and after the
/// log is reopened.
fn many_appenders_of_huge_records<S: Storage + Clone>(storage: S, dir: &Path) {
    let wal = SegmentedWal::open_with(storage.clone(), small_budget_config(dir)).unwrap();
    let appended = std::sync::Mutex::new(std::collections::BTreeMap::new());
    std::thread::scope(|s| {
        for thread in 0..APPENDERS {
            let (wal, appended) = (&wal, &appended);
            s.spawn(move || {
                let mut last = Lsn(0);
                for i in 0..APPENDS_EACH {
                    let p = payload(thread * 100 + i, appender_len(thread, i));
                    let lsn = wal.append_durable(Record::new(TY, &p)).unwrap();
                    assert!(lsn > last, "thread {thread}: LSN {lsn} after {last}");
                    last = lsn;
                    appended.lock().unwrap().insert(lsn.0, p);
                }
            });
        }
    });
    let appended = appended.into_inner().unwrap();
    let count = (APPENDERS * APPENDS_EACH) as u64;
    assert!(appended.keys().copied().eq(1..=count), "LSNs dense from 1");
    let expected: Vec<Vec<u8>> = appended.into_values().collect();
    check_readers(&wal, &expected);
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(storage, small_budget_config(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn.0, count, "recovery at open");
    check_readers(&wal, &expected);
}

#[test]
fn many_appenders_of_records_beyond_the_fixed_budget_complete_in_lsn_order_and_recover_fs() {
    let dir = tempfile::tempdir().unwrap();
    many_appenders_of_huge_records(FsStorage::default(), dir.path());
}

#[test]
fn many_appenders_of_records_beyond_the_fixed_budget_complete_in_lsn_order_and_recover_sim() {
    many_appenders_of_huge_records(SimStorage::new(11, FaultConfig::default()), Path::new("/wal"));
}

/// A power cut while six threads append records beyond the fixed budget of one-off buffers
/// (several in flight at once, in buffers reused) beside two threads of small ones: every
/// acknowledged record comes back, every record recovered is whole, and each thread's records
/// come back in the order it appended them.
#[test]
fn a_power_cut_amid_many_appenders_of_huge_records_keeps_every_acknowledged_one_whole() {
    for seed in 1..=6 {
        let dir = Path::new("/wal");
        let sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_intermediate_writes(true);
        let wal = SegmentedWal::open_with(sim.clone(), small_budget_config(dir)).unwrap();
        let acked = std::sync::Mutex::new(Vec::new());
        let after = std::thread::scope(|s| {
            for thread in 0..APPENDERS {
                let (wal, acked) = (&wal, &acked);
                s.spawn(move || {
                    for i in 0..APPENDS_EACH {
                        let key = thread * 100 + i;
                        let Ok(lsn) = wal.append_durable(Record::new(TY, &self_described(key, appender_len(thread, i)))) else { return };
                        acked.lock().unwrap().push((lsn, key));
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(seed * 15));
            sim.crash(seed.wrapping_mul(31) + 1)
        });
        drop(wal);
        let wal = SegmentedWal::open_with(after, small_budget_config(dir)).unwrap();
        let recovered: Vec<usize> = wal
            .read_from(Lsn(1))
            .unwrap()
            .enumerate()
            .map(|(i, record)| {
                let record = record.unwrap();
                assert_eq!(record.lsn.0, i as u64 + 1, "seed {seed}: LSNs dense from 1");
                described_key(record.lsn, &record.payload)
            })
            .collect();
        for (lsn, key) in acked.into_inner().unwrap() {
            assert_eq!(recovered.get(lsn.0 as usize - 1), Some(&key), "seed {seed}: acknowledged LSN {lsn} lost");
        }
        for thread in 0..APPENDERS {
            let keys: Vec<usize> = recovered.iter().copied().filter(|key| key / 100 == thread).collect();
            assert!(keys.iter().enumerate().all(|(i, &key)| key == thread * 100 + i), "seed {seed}: thread {thread}'s records {keys:?}");
        }
    }
}
