//! What recovery hands the engines besides their records: the tombstones of dropped collections
//! and the temporal purges, gathered in recovery's one pass, encrypted or not, and the replay
//! filter that drops a dropped collection's older records.

mod common;

use std::path::Path;
use std::sync::Arc;

use nodedb_wal::format::frame::seal_frame;
use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{
    CollectionTombstonePayload, KeyRing, Lsn, Record, RecordType, Scope, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig,
    SimStorage, TemporalPurge, TemporalPurgeEngine, TemporalPurgePayload, WalError,
};

fn config(ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new("/replay");
    c.segment_bytes_target = 16 * 1024;
    c.key_ring = ring;
    c
}

fn tombstones_and_purges_are_gathered_by_recovery(ring: Option<Arc<KeyRing>>) {
    let sim = SimStorage::new(1, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(ring.clone())).unwrap();
    let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    fn rec(body: &[u8]) -> Record<'_> {
        Record::new(RecordType::optional(0x100), body).scoped(Scope { database: 1, tenant: 2, vshard: 0 })
    }
    let old = wal.append(rec(b"orders:old")).unwrap();
    let drop_at = wal.next_lsn();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: drop_at };
    assert_eq!(wal.append_tombstone(&tombstone).unwrap(), drop_at);
    let new = wal.append(rec(b"orders:new")).unwrap();
    let purge = TemporalPurgePayload {
        engine: TemporalPurgeEngine::Timeseries,
        collection: "cpu".into(),
        cutoff_unix_ms: 1_700_000_000_000,
        purged_count: 42,
    };
    let purge_lsn = wal.append_temporal_purge(&purge, scope).unwrap();
    for i in 0..200u32 {
        wal.append(rec(&[i as u8; 100])).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);

    let wal = SegmentedWal::open_with(sim, config(ring)).unwrap();
    let info = wal.recovery_info();
    assert!(info.segments.len() > 1, "the records span segments");
    assert_eq!(info.tombstones.purge_lsn(1, 2, "orders"), Some(drop_at));
    assert_eq!(info.temporal_purges, vec![TemporalPurge { lsn: purge_lsn, scope, purge }]);
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().map(Result::unwrap).collect();
    let orders: Vec<_> = records.iter().filter(|r| r.payload.starts_with(b"orders:")).collect();
    assert_eq!(orders.len(), 2);
    assert!(!info.tombstones.is_live(orders[0], "orders"), "LSN {old} predates the drop");
    assert!(info.tombstones.is_live(orders[1], "orders"), "LSN {new} was written after the drop");
}

#[test]
fn tombstones_and_purges_are_gathered_by_recovery_plaintext() {
    tombstones_and_purges_are_gathered_by_recovery(None);
}

#[test]
fn tombstones_and_purges_are_gathered_by_recovery_encrypted() {
    let ring = Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [5; 32])));
    tombstones_and_purges_are_gathered_by_recovery(Some(ring));
}

/// A log whose sealed segment 1 holds a record, a tombstone of collection "orders" of
/// (database 1, tenant 2) and a record after it; segment 2 holds one more. Returns the
/// tombstone's LSN.
fn log_with_a_tombstone(sim: &SimStorage, ring: Option<Arc<KeyRing>>) -> Lsn {
    let rec = |body| Record::new(RecordType::optional(0x100), body).scoped(Scope { database: 1, tenant: 2, vshard: 0 });
    let wal = SegmentedWal::open_with(sim.clone(), config(ring.clone())).unwrap();
    wal.append(rec(b"orders:old")).unwrap();
    let at = wal.next_lsn();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: at };
    assert_eq!(wal.append_tombstone(&tombstone).unwrap(), at);
    wal.append(rec(b"orders:new")).unwrap();
    wal.close().unwrap();
    // The reopen seals segment 1 and writes on in segment 2.
    let wal = SegmentedWal::open_with(sim.clone(), config(ring)).unwrap();
    wal.append_durable(rec(b"later")).unwrap();
    wal.close().unwrap();
    at
}

/// Changes the type of record `lsn` in segment 1 and recomputes its frame's CRC, as someone who
/// can write the log's files (but holds no key) can.
fn retype(sim: &SimStorage, lsn: Lsn, to: RecordType) {
    let path = nodedb_wal::segment::path(Path::new("/replay"), SegmentId(1));
    let mut bytes = sim.read_file(&path).unwrap();
    let frame = common::record_frame(&bytes, lsn.0);
    let (at, len) = (frame.offset as usize, frame.frame_len() as usize);
    bytes[at + 6..at + 8].copy_from_slice(&to.0.to_le_bytes());
    seal_frame(&mut bytes[at..at + len], to);
    sim.write_file(&path, &bytes);
}

/// Recovery gathers tombstones by their record type, so one retyped to an ordinary type (or
/// to `CALVIN_APPLIED`, the tombstone's type with the required bit cleared: one flipped bit)
/// is not applied at open. In a plaintext log it reads back as a record of its new type; in an
/// encrypted one the type is part of the authenticated data, so reading it fails
/// authentication, by the owned reader and by the lazy reader's payload alike.
fn a_tombstone_retyped_on_disk_is_never_applied_at_open(ring: Option<Arc<KeyRing>>) {
    let sim = SimStorage::new(8, FaultConfig::default());
    let at = log_with_a_tombstone(&sim, ring.clone());
    let wal = SegmentedWal::open_with(sim, config(ring.clone())).unwrap();
    assert_eq!(wal.recovery_info().tombstones.purge_lsn(1, 2, "orders"), Some(at), "untouched, the tombstone is applied");
    drop(wal);

    let one_bit = RecordType(RecordType::COLLECTION_TOMBSTONE.0 & !RecordType::REQUIRED_BIT);
    assert_eq!(one_bit, RecordType::CALVIN_APPLIED);
    for to in [RecordType::optional(0x100), one_bit] {
        let sim = SimStorage::new(8, FaultConfig::default());
        let at = log_with_a_tombstone(&sim, ring.clone());
        retype(&sim, at, to);
        let wal = SegmentedWal::open_with(sim, config(ring.clone())).unwrap();
        let info = wal.recovery_info();
        assert_eq!(info.tombstones.purge_lsn(1, 2, "orders"), None, "retyped to {to:?}, the tombstone was applied");
        assert_eq!(info.record_count, 4, "retyped to {to:?}");
        let read = wal.read_from(at).unwrap().next().unwrap();
        if ring.is_none() {
            assert_eq!(read.unwrap().record_type, to, "a plaintext record reads back with its new type");
            continue;
        }
        let failed = |err: &WalError| matches!(err, WalError::AuthenticationFailed { segment: SegmentId(1), lsn } if *lsn == at);
        let err = read.unwrap_err();
        assert!(failed(&err), "retyped to {to:?}: {err}");
        // Segment 1 is sealed with a header index, whose entry is the record as written: the
        // lazy reader hands that out, and the payload is read from the altered frame.
        let mut lazy = wal.lazy_reader(at).unwrap();
        let header = lazy.next_header().unwrap().expect("the retyped record is handed out, not skipped");
        assert_eq!(header.lsn, at);
        let err = lazy.payload().unwrap_err();
        assert!(failed(&err), "lazy reader, retyped to {to:?}: {err}");
    }
}

#[test]
fn a_tombstone_retyped_on_disk_is_never_applied_at_open_plaintext() {
    a_tombstone_retyped_on_disk_is_never_applied_at_open(None);
}

#[test]
fn a_tombstone_retyped_on_disk_is_never_applied_at_open_encrypted() {
    a_tombstone_retyped_on_disk_is_never_applied_at_open(Some(Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [5; 32])))));
}

/// The other way round: recovery decrypts a tombstone to apply it, so an encrypted record
/// retyped as a tombstone fails authentication at open instead of dropping a collection.
#[test]
fn an_encrypted_record_retyped_as_a_tombstone_fails_authentication_at_open() {
    let ring = Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [5; 32])));
    let sim = SimStorage::new(8, FaultConfig::default());
    let at = log_with_a_tombstone(&sim, Some(Arc::clone(&ring)));
    let after = at.next();
    retype(&sim, after, RecordType::COLLECTION_TOMBSTONE);
    let err = SegmentedWal::open_with(sim, config(Some(ring))).unwrap_err();
    assert!(matches!(err, WalError::AuthenticationFailed { segment: SegmentId(1), lsn } if lsn == after), "{err}");
}

#[test]
fn two_tenants_purging_a_collection_of_the_same_name_are_told_apart_at_recovery() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    let purge = |cutoff_unix_ms| TemporalPurgePayload {
        engine: TemporalPurgeEngine::Document,
        collection: "sessions".into(),
        cutoff_unix_ms,
        purged_count: 1,
    };
    let a = Scope { database: 1, tenant: 10, vshard: 3 };
    let b = Scope { database: 1, tenant: 20, vshard: 4 };
    let lsn_a = wal.append_temporal_purge(&purge(100), a).unwrap();
    let lsn_b = wal.append_temporal_purge(&purge(200), b).unwrap();
    wal.close().unwrap();

    let wal = SegmentedWal::open_with(sim, config(None)).unwrap();
    let expected =
        vec![TemporalPurge { lsn: lsn_a, scope: a, purge: purge(100) }, TemporalPurge { lsn: lsn_b, scope: b, purge: purge(200) }];
    assert_eq!(wal.recovery_info().temporal_purges, expected);
    let records: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().map(Result::unwrap).collect();
    assert_eq!(nodedb_wal::extract_temporal_purges(&records).unwrap(), expected, "replay agrees with recovery");
}

#[test]
fn a_tombstone_reaching_past_its_own_lsn_is_refused_and_uses_no_lsn() {
    let wal = SegmentedWal::open_with(SimStorage::new(5, FaultConfig::default()), config(None)).unwrap();
    wal.append(Record::new(RecordType::optional(0x100), b"row")).unwrap();
    let next = wal.next_lsn();
    let ahead = CollectionTombstonePayload { database: 1, tenant: 1, collection: "t".into(), purge_lsn: next.next() };
    let err = wal.append_tombstone(&ahead).unwrap_err();
    assert!(matches!(err, WalError::LsnNotIssued { lsn, next: n } if lsn == ahead.purge_lsn && n == next), "{err}");
    assert_eq!(wal.next_lsn(), next);
    let at_itself = CollectionTombstonePayload { purge_lsn: next, ..ahead };
    assert_eq!(wal.append_tombstone(&at_itself).unwrap(), next, "up to its own LSN is allowed");
}

#[test]
fn a_tombstone_with_a_name_over_the_limit_is_refused_and_uses_no_lsn() {
    let wal = SegmentedWal::open_with(SimStorage::new(2, FaultConfig::default()), config(None)).unwrap();
    let long = CollectionTombstonePayload { database: 1, tenant: 1, collection: "n".repeat(256), purge_lsn: Lsn(1) };
    assert!(matches!(wal.append_tombstone(&long), Err(WalError::MalformedPayload { .. })));
    assert_eq!(wal.next_lsn(), Lsn(1));
}

#[test]
fn the_lazy_reader_reads_only_the_payloads_asked_for() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let mut c = config(Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [6; 32])))));
    c.segment_bytes_target = 4 << 20;
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    let (wanted, other) = (RecordType::optional(0x200), RecordType::optional(0x300));
    for i in 0..40u32 {
        let ty = if i % 10 == 0 { wanted } else { other };
        wal.append(Record::new(ty, &vec![i as u8; 64 * 1024])).unwrap();
    }
    wal.sync().unwrap();

    let before = sim.bytes_read();
    let mut lazy = wal.lazy_reader(Lsn(1)).unwrap();
    let mut got = Vec::new();
    while let Some(h) = lazy.next_header().unwrap() {
        if h.record_type == wanted {
            got.push((h.lsn, lazy.payload().unwrap()));
        }
    }
    let lazy_bytes = sim.bytes_read() - before;
    assert_eq!(got.len(), 4);
    for (lsn, payload) in &got {
        assert_eq!(payload, &vec![(lsn.0 - 1) as u8; 64 * 1024], "payload of {lsn} decrypted and intact");
    }
    let before = sim.bytes_read();
    assert_eq!(wal.read_from(Lsn(1)).unwrap().count(), 40);
    let full_bytes = sim.bytes_read() - before;
    assert!(lazy_bytes * 4 < full_bytes, "headers and 4 of 40 payloads cost {lazy_bytes} bytes; full replay {full_bytes}");
}

#[test]
fn parallel_replay_returns_exactly_what_sequential_replay_does_in_lsn_order() {
    use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, storage::FaultConfig};
    let mut c = SegmentedWalConfig::new("/parallel");
    c.segment_bytes_target = 16 * 1024;
    c.batch_bytes_max = 4 * 1024;
    let wal = SegmentedWal::open_with(SimStorage::new(4, FaultConfig::default()), c).unwrap();
    for i in 0..3000u32 {
        wal.append(Record::new(RecordType::optional(0x100), &i.to_le_bytes().repeat(1 + (i % 50) as usize))).unwrap();
    }
    wal.sync().unwrap();
    assert!(wal.segments().len() > 10);
    for (from, threads) in [(Lsn(1), 1), (Lsn(1), 3), (Lsn(1234), 4), (Lsn(3000), 2), (Lsn(3001), 2)] {
        let sequential: Vec<_> = wal.read_from(from).unwrap().collect::<Result<_, _>>().unwrap();
        let mut parallel = Vec::new();
        let n = wal.replay_parallel(from, threads, |r| {
            parallel.push(r.to_record());
            Ok(())
        });
        assert_eq!(n.unwrap(), sequential.len() as u64);
        assert_eq!(parallel, sequential, "from {from} with {threads} threads");
    }
    // An error from the callback stops the replay and is returned.
    let mut seen = 0;
    let err = wal.replay_parallel(Lsn(1), 3, |_| {
        seen += 1;
        if seen == 10 { Err(WalError::Closed) } else { Ok(()) }
    });
    assert!(matches!(err, Err(WalError::Closed)) && seen == 10);
    wal.truncate_before(Lsn(2000)).unwrap();
    assert!(matches!(wal.replay_parallel(Lsn(1), 2, |_| Ok(())), Err(WalError::LsnNotRetained { .. })));
}

#[test]
fn parallel_replay_stops_at_damage_having_applied_exactly_the_records_before_it() {
    use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment, storage::FaultConfig};
    let sim = SimStorage::new(9, FaultConfig::default());
    let mut c = SegmentedWalConfig::new("/parallel-damage");
    c.segment_bytes_target = 16 * 1024;
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    for i in 0..600u32 {
        wal.append(Record::new(RecordType::optional(0x100), &i.to_le_bytes().repeat(64))).unwrap();
    }
    wal.sync().unwrap();
    let damaged = wal.segments()[4];
    let path = segment::path(std::path::Path::new("/parallel-damage"), damaged.id);
    let mut bytes = sim.read_file(&path).unwrap();
    bytes[4096 + 100] ^= 1; // the first record's payload
    sim.write_file(&path, &bytes);
    for threads in [1, 2, 4] {
        let mut applied = Vec::new();
        let err = wal.replay_parallel(Lsn(1), threads, |r| {
            applied.push(r.lsn.0);
            Ok(())
        });
        assert!(matches!(err, Err(WalError::Corruption { segment, .. }) if segment == damaged.id), "{threads} threads: {err:?}");
        assert_eq!(applied, (1..damaged.first_lsn.0).collect::<Vec<_>>(), "{threads} threads");
    }
}

/// Found by an adversarial review: after `next_header` failed on the way into the next segment
/// (truncated away under the reader), `payload` for the handle before panicked on the closed
/// segment. The failed call leaves no current record.
#[test]
fn a_payload_asked_for_after_next_header_failed_is_a_typed_error_not_a_panic() {
    let mut c = config(None);
    (c.segment_bytes_target, c.batch_bytes_max) = (32 * 1024, 8 * 1024);
    let wal = SegmentedWal::open_with(SimStorage::new(5, FaultConfig::default()), c).unwrap();
    while wal.segments().len() < 4 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[7; 3000])).unwrap();
    }
    let segments = wal.segments();
    let mut lazy = wal.lazy_reader(segments[0].first_lsn).unwrap();
    while lazy.next_header().unwrap().expect("segment 1's records").lsn.next() < segments[0].end_lsn {}
    assert_eq!(lazy.payload().unwrap(), vec![7; 3000], "the last record of the first segment");
    assert_eq!(wal.truncate_before(segments[2].first_lsn).unwrap(), 2);
    assert!(matches!(lazy.next_header(), Err(WalError::SegmentTruncated { .. })));
    assert!(matches!(lazy.payload(), Err(WalError::NoCurrentRecord)));
}

/// LSN 0 is never issued; every reader takes it for "from the first", as the tail always did
/// (found by an adversarial review: the others called it not retained, even on an empty log).
#[test]
fn every_reader_reads_from_lsn_zero_as_from_the_first() {
    let wal = SegmentedWal::open_with(SimStorage::new(6, FaultConfig::default()), config(None)).unwrap();
    assert_eq!(wal.read_from(Lsn::ZERO).unwrap().count(), 0, "an empty log");
    for i in 0..40u8 {
        wal.append(Record::new(RecordType::optional(0x100), &[i; 700])).unwrap();
    }
    wal.sync().unwrap();
    let lsns = |records: Vec<Lsn>| (records.len(), records.first().copied());
    let owned: Vec<Lsn> = wal.read_from(Lsn::ZERO).unwrap().map(|r| r.unwrap().lsn).collect();
    let mapped: Vec<Lsn> = wal.read_mapped(Lsn::ZERO).unwrap().map(|r| r.unwrap().lsn).collect();
    let mut lazy = wal.lazy_reader(Lsn::ZERO).unwrap();
    let mut headers = Vec::new();
    while let Some(h) = lazy.next_header().unwrap() {
        headers.push(h.lsn);
    }
    let mut parallel = Vec::new();
    wal.replay_parallel(Lsn::ZERO, 2, |r| {
        parallel.push(r.lsn);
        Ok(())
    })
    .unwrap();
    for read in [owned, mapped, headers, parallel] {
        assert_eq!(lsns(read), (40, Some(Lsn(1))));
    }
}

/// A sealed log holding a row of "orders" (database 1, tenant 2), a tombstone of "orders", and
/// a row appended after it, whose tombstone was rewritten on disk (with a valid checksum) to
/// reach five LSNs past the row after it, as an older build could append it. Returns the
/// row's LSN before, the tombstone's and the row's after, and the rewritten payload.
fn log_with_a_tombstone_reaching_past_itself(sim: &SimStorage) -> (Lsn, Lsn, Lsn, CollectionTombstonePayload) {
    use common::{Disk, locate, seg};
    use nodedb_wal::format::frame::encode_frame;

    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    let row = |body: &'static [u8]| Record::new(RecordType::optional(0x100), body).scoped(scope);
    let before = wal.append(row(b"orders:before")).unwrap();
    let at = wal.next_lsn();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: at };
    assert_eq!(wal.append_tombstone(&tombstone).unwrap(), at);
    let after = wal.append(row(b"orders:after")).unwrap();
    wal.close().unwrap();

    let dir = std::path::Path::new("/replay");
    let (id, frame) = locate(sim, dir, at.0);
    let mut bytes = sim.read(&seg(dir, id));
    let reaching = CollectionTombstonePayload { purge_lsn: Lsn(after.0 + 5), ..tombstone };
    encode_frame(&frame.header, &reaching.encode().unwrap(), &mut bytes[frame.offset as usize..]);
    sim.write(&seg(dir, id), &bytes);
    (before, at, after, reaching)
}

/// A tombstone on disk whose purge LSN is past its own LSN (as an older build could append) is
/// read as dropping what came before it only: records appended after it, to a collection made
/// again, stay live, at recovery and in replay.
#[test]
fn a_tombstone_on_disk_reaching_past_its_own_lsn_drops_only_what_came_before_it() {
    let sim = SimStorage::new(6, FaultConfig::default());
    let (before, at, after, reaching) = log_with_a_tombstone_reaching_past_itself(&sim);

    let wal = SegmentedWal::open_with(sim, config(None)).unwrap();
    let set = &wal.recovery_info().tombstones;
    assert_eq!(set.purge_lsn(1, 2, "orders"), Some(at), "read as its own LSN");
    let records: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().map(Result::unwrap).collect();
    assert_eq!(records[1].payload, reaching.encode().unwrap(), "the rewritten tombstone is what is read");
    let replayed = nodedb_wal::extract_tombstones(&records).unwrap();
    assert_eq!(&replayed, set, "replay agrees with recovery");
    let live = |lsn: Lsn| records.iter().find(|r| r.lsn == lsn).is_some_and(|r| set.is_live(r, "orders"));
    assert!(!live(before), "LSN {before} predates the drop");
    assert!(live(after), "LSN {after} was appended after the drop");
}

// A replay that applies each drop as it meets it (`WalRecord::tombstone`, `RecordView::tombstone`,
// as their docs and the `kv_engine` example do) was handed the purge LSN as stored: past the
// tombstone's own LSN, it dropped the row appended after the drop, which recovery's set and
// `extract_tombstones` keep. Every reader's decoded tombstone must read it as its own LSN.
#[test]
fn a_tombstone_reaching_past_its_own_lsn_decodes_as_its_own_lsn_from_every_reader() {
    let sim = SimStorage::new(7, FaultConfig::default());
    let (before, at, after, reaching) = log_with_a_tombstone_reaching_past_itself(&sim);
    let read_as = CollectionTombstonePayload { purge_lsn: at, ..reaching };

    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    // The replay of `WalRecord::tombstone`'s example: rows by LSN, each drop applied in order.
    let mut rows = Vec::new();
    for record in wal.read_from(Lsn::FIRST).unwrap() {
        let record = record.unwrap();
        if let Some(drop) = record.tombstone().unwrap() {
            assert_eq!(drop, read_as, "owned record");
            rows.retain(|lsn| *lsn >= drop.purge_lsn);
        } else if record.payload.starts_with(b"orders:") {
            rows.push(record.lsn);
        }
    }
    assert_eq!(rows, [after], "LSN {before} was dropped, LSN {after} came after the drop");

    let mut views = wal.read_from(Lsn::FIRST).unwrap();
    let mut mapped = wal.read_mapped(Lsn::FIRST).unwrap();
    for reader in [&mut views, &mut mapped] {
        let mut found = Vec::new();
        while let Some(view) = reader.next_view() {
            found.extend(view.unwrap().tombstone().unwrap());
        }
        assert_eq!(found, std::slice::from_ref(&read_as), "lent record");
    }
    let mut found = Vec::new();
    wal.replay_parallel(Lsn::FIRST, 2, |view| {
        found.extend(view.tombstone()?);
        Ok(())
    })
    .unwrap();
    assert_eq!(found, std::slice::from_ref(&read_as), "parallel replay");
    let mut tail = wal.tail(at);
    let tailed = tail.next_timeout(std::time::Duration::ZERO).unwrap().expect("durable");
    assert_eq!(tailed.tombstone().unwrap(), Some(read_as.clone()), "a tail");
    drop(wal);

    let look = nodedb_wal::ReadOnlyWal::open_with(sim, "/replay", None).unwrap();
    let found: Vec<_> = look.read_from(Lsn::FIRST).unwrap().filter_map(|r| r.unwrap().tombstone().unwrap()).collect();
    assert_eq!(found, [read_as], "a read-only look");
}

// Found by the tiny database of `tiny_db.rs`: a drop's purge LSN is often below the
// tombstone's own LSN (taken from `next_lsn`, while other writers append before the
// tombstone lands), and a checkpoint can fall between the two. At open an engine must then tell
// a drop its checkpoint already holds (re-applying it would remove a re-created collection's
// checkpointed rows) from one it must still apply to its files; with only the purge LSN, both
// look the same. The tombstone's own LSN tells them apart.
#[test]
fn recovery_tells_the_lsn_of_each_collections_last_drop() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    let ty = RecordType::optional(0x100);
    let tombstone =
        |collection: &str, purge_lsn| CollectionTombstonePayload { database: 1, tenant: 2, collection: collection.into(), purge_lsn };
    // Dropped, then other records, then the tombstone: a checkpoint at `between` holds the
    // rows below the purge LSN but not the drop.
    let purge = wal.next_lsn();
    wal.append(Record::new(ty, b"another collection's row")).unwrap();
    let between = wal.next_lsn();
    wal.append(Record::new(ty, b"another collection's row")).unwrap();
    let orders = wal.append_tombstone(&tombstone("orders", purge)).unwrap();
    let first = wal.append_tombstone(&tombstone("users", Lsn(1))).unwrap();
    let again = wal.append_tombstone(&tombstone("users", first)).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let wal = SegmentedWal::open_with(sim, config(None)).unwrap();
    let set = &wal.recovery_info().tombstones;
    assert_eq!(set.purge_lsn(1, 2, "orders"), Some(purge));
    assert!(purge < between, "by its purge LSN alone, a checkpoint at {between} would hold the drop");
    assert_eq!(set.dropped_at(1, 2, "orders"), Some(orders), "the drop's own LSN, past the checkpoint");
    assert_eq!(set.dropped_at(1, 2, "users"), Some(again), "the last drop of the collection");
    assert_eq!(set.dropped_at(1, 3, "orders"), None, "another tenant's collection was not dropped");
    let mut inserted = nodedb_wal::TombstoneSet::new();
    inserted.insert(&tombstone("orders", purge));
    assert_eq!(inserted.dropped_at(1, 2, "orders"), None, "not read from a log");
}

// `iter` hands out the purge LSN only, so an engine that learns of drops by walking the set
// (not knowing the names) could not tell a drop its checkpoint holds from one it must apply.
#[test]
fn walking_the_drops_gives_each_its_purge_lsn_and_its_tombstones_own_lsn() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    let tombstone =
        |collection: &str, purge_lsn| CollectionTombstonePayload { database: 1, tenant: 2, collection: collection.into(), purge_lsn };
    let purge = wal.next_lsn();
    wal.append(Record::new(RecordType::optional(0x100), b"a row")).unwrap();
    let orders = wal.append_tombstone(&tombstone("orders", purge)).unwrap();
    let users = wal.append_tombstone(&tombstone("users", Lsn(1))).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let wal = SegmentedWal::open_with(sim, config(None)).unwrap();
    let mut set = wal.recovery_info().tombstones.clone();
    set.insert(&tombstone("carts", Lsn(2)));
    let mut drops: Vec<_> = set.drops().map(|d| (d.database, d.tenant, d.collection.to_owned(), d.purge_lsn, d.dropped_at)).collect();
    drops.sort();
    let expected = [
        (1, 2, "carts".to_owned(), Lsn(2), None),
        (1, 2, "orders".to_owned(), purge, Some(orders)),
        (1, 2, "users".to_owned(), Lsn(1), Some(users)),
    ];
    assert_eq!(drops, expected);
    for d in set.drops() {
        assert_eq!(set.dropped_at(d.database, d.tenant, d.collection), d.dropped_at);
        assert_eq!(set.purge_lsn(d.database, d.tenant, d.collection), Some(d.purge_lsn));
    }
    assert_eq!(set.iter().count(), set.drops().count());
}
