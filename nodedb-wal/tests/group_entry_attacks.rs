//! Adversarial review of `append_group_entries`: the edges the random rounds of `groups.rs`
//! reach rarely or not at all. A tombstone's purge LSN at and past the group's first LSN
//! wherever the tombstone stands; a group of nothing but drops, larger than a batch, torn by a
//! crash; refused groups on a real, encrypted log (not a byte written, the log not poisoned);
//! and a keyless look beside a live writer, which counts only whole groups' drops and purges.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::snapshot;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SyncFailure};
use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, Scope, SecureKey, SegmentedWal,
    SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload, WalError,
};

const TY: RecordType = RecordType::optional(0x300);

fn ring(byte: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [byte; 32])))
}

fn config(dir: &Path, ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 128 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.key_ring = ring;
    c
}

fn drop_of(name: &str, purge_lsn: Lsn) -> CollectionTombstonePayload {
    CollectionTombstonePayload { database: 3, tenant: 4, collection: name.into(), purge_lsn }
}

fn purge_of(name: &str) -> TemporalPurgePayload {
    TemporalPurgePayload { engine: TemporalPurgeEngine::Columnar, collection: name.into(), cutoff_unix_ms: 9, purged_count: 2 }
}

// The bound is the log's next LSN at the call, the group's first: a tombstone in the middle
// of a group may not name its own LSN, or the LSN of a member before it, though a tombstone
// appended alone may name its own. Recovery keeps exactly the bound given.
#[test]
fn a_tombstones_purge_lsn_may_reach_the_groups_first_lsn_and_no_further_wherever_it_stands() {
    for at in 0..3 {
        let dir = Path::new("/bounds");
        let sim = SimStorage::new(at as u64, FaultConfig::default());
        let wal = SegmentedWal::open_with(sim.clone(), config(dir, None)).unwrap();
        let row = wal.append(Record::new(TY, b"a row")).unwrap();
        let first = wal.next_lsn();
        for past in [first.next(), Lsn(first.0 + at as u64), Lsn(u64::MAX)] {
            if past <= first {
                continue;
            }
            let late = drop_of("orders", past);
            let mut entries = vec![GroupEntry::from(Record::new(TY, b"catalog")); 2];
            entries.insert(at, GroupEntry::Tombstone(&late));
            let err = wal.append_group_entries(&entries).unwrap_err();
            assert!(matches!(err, WalError::LsnNotIssued { lsn, next } if lsn == past && next == first), "at {at}: {err:?}");
            assert_eq!(wal.next_lsn(), first, "at {at}: a refused group uses no LSN");
        }
        let reached = drop_of("orders", first);
        let mut entries = vec![GroupEntry::from(Record::new(TY, b"catalog")); 2];
        entries.insert(at, GroupEntry::Tombstone(&reached));
        let lsns = wal.append_group_entries(&entries).unwrap();
        assert_eq!(*lsns.start(), first);
        wal.wait_durable(*lsns.end()).unwrap();
        drop(wal);
        let wal = SegmentedWal::open_with(sim, config(dir, None)).unwrap();
        let tombstones = &wal.recovery_info().tombstones;
        assert_eq!(tombstones.purge_lsn(3, 4, "orders"), Some(first), "at {at}");
        assert_eq!(tombstones.dropped_at(3, 4, "orders"), Some(Lsn(first.0 + at as u64)), "at {at}");
        assert!(tombstones.is_dropped(3, 4, "orders", row), "at {at}: the row before the group is dropped");
        assert!(!tombstones.is_dropped(3, 4, "orders", first), "at {at}: the group's own first record is not");
    }
}

/// A group of `count` drops with names of the longest length, so that it outgrows a batch
/// (16 KiB here) and travels in a one-off buffer.
fn drops(count: usize, purge_lsn: Lsn) -> Vec<CollectionTombstonePayload> {
    (0..count).map(|i| drop_of(&format!("{i:0>255}"), purge_lsn)).collect()
}

// A group of nothing but drops, larger than a batch: acknowledged, a crash keeps all of its
// drops; its write left by a failed fdatasync to a crash that keeps any subset of its sectors,
// recovery gathers all of its drops or none. A keyless look counts all or none of them.
#[test]
fn a_group_of_only_drops_larger_than_a_batch_is_gathered_whole_or_not_at_all_after_a_torn_crash() {
    for seed in 0..24 {
        let torn = seed % 3 != 0;
        let dir = Path::new("/drops");
        let key = (seed % 2 == 0).then(|| ring(seed as u8));
        let mut sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        sim.set_intermediate_writes(true);
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), config(dir, key.clone())).unwrap();
        let row = wal.append_durable(Record::new(TY, b"a row")).unwrap();
        let payloads = drops(80, wal.next_lsn());
        let entries: Vec<GroupEntry<'_>> = payloads.iter().map(GroupEntry::Tombstone).collect();
        let lsns = wal.append_group_entries(&entries).unwrap();
        if torn {
            faulty.fail_once(FaultOp::SyncData, 0, EIO);
            assert!(wal.wait_durable(*lsns.end()).is_err(), "seed {seed}: the failed sync is not reported durable");
        } else {
            wal.wait_durable(*lsns.end()).unwrap();
        }
        sim = sim.crash(seed * 7 + 1);
        drop(wal);

        let blind = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap().recovery_info().clone();
        let wal = SegmentedWal::open_with(sim, config(dir, key.clone())).unwrap();
        let info = wal.recovery_info();
        let gathered = info.tombstones.len();
        assert!(gathered == 0 || gathered == payloads.len(), "seed {seed}: {gathered} of {} drops gathered", payloads.len());
        assert!(torn || gathered == payloads.len(), "seed {seed}: an acknowledged group lost its drops");
        let kept = if gathered == 0 { row } else { *lsns.end() };
        assert_eq!(info.last_lsn, kept, "seed {seed}");
        assert_eq!(blind.last_lsn, kept, "seed {seed}: the look ends where the owner's recovery does");
        let unread = if key.is_some() { gathered as u64 } else { 0 };
        assert_eq!(blind.ungathered, unread, "seed {seed}: a look without the key counts whole groups' drops only");
    }
}

/// Whether an error is the one a refused group must give.
type Expected = fn(&WalError) -> bool;

// On a real, encrypted log: groups refused for each reason (a late purge LSN, a long name, a
// reserved type, an oversized record, an oversized group member among drops) change no byte of
// any file, and the log is not poisoned: the next group takes the next LSN and is durable.
#[test]
fn refused_groups_on_an_encrypted_file_log_change_no_byte_and_leave_it_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let key = ring(5);
    let mut config = config(&dir, Some(Arc::clone(&key)));
    config.payload_bytes_max = 4096;
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let last = wal.append_durable(Record::new(TY, b"before")).unwrap();
    let next = wal.next_lsn();
    let before = snapshot(&dir);
    let late = drop_of("orders", next.next());
    let long = drop_of(&"x".repeat(256), next);
    let long_purge = purge_of(&"y".repeat(256));
    let fine = drop_of("orders", next);
    let big = vec![1u8; 4097];
    let refused: [(&[GroupEntry<'_>], Expected); 5] = [
        (&[GroupEntry::Tombstone(&fine), GroupEntry::Tombstone(&late)], |e| matches!(e, WalError::LsnNotIssued { .. })),
        (&[GroupEntry::Tombstone(&long), GroupEntry::Tombstone(&fine)], |e| matches!(e, WalError::MalformedPayload { .. })),
        (
            &[GroupEntry::Tombstone(&fine), GroupEntry::TemporalPurge(&long_purge, Scope::default())],
            |e| matches!(e, WalError::MalformedPayload { record_type, .. } if *record_type == RecordType::TEMPORAL_PURGE),
        ),
        (&[GroupEntry::Tombstone(&fine), GroupEntry::from(Record::new(RecordType::TEMPORAL_PURGE, b"forged"))], |e| {
            matches!(e, WalError::ReservedRecordType { .. })
        }),
        (&[GroupEntry::Tombstone(&fine), GroupEntry::from(Record::new(TY, &big))], |e| matches!(e, WalError::PayloadTooLarge { .. })),
    ];
    for (i, (entries, expected)) in refused.iter().enumerate() {
        let err = wal.append_group_entries(entries).unwrap_err();
        assert!(expected(&err), "group {i}: {err:?}");
        assert_eq!(wal.next_lsn(), next, "group {i}: a refused group uses no LSN");
    }
    wal.sync().unwrap();
    assert_eq!(snapshot(&dir), before, "a refused group writes nothing");
    let lsns = wal.append_group_entries(&[GroupEntry::from(Record::new(TY, b"catalog")), GroupEntry::Tombstone(&fine)]).unwrap();
    assert_eq!(lsns, next..=next.next());
    wal.wait_durable(*lsns.end()).unwrap();
    wal.close().unwrap();
    let wal = SegmentedWal::open(config).unwrap();
    let info = wal.recovery_info();
    assert_eq!(info.last_lsn, next.next());
    assert_eq!(info.tombstones.purge_lsn(3, 4, "orders"), Some(next));
    assert!(info.tombstones.is_dropped(3, 4, "orders", last));
}

// A look beside a live writer (no lock taken) sees the groups the writer made durable: with
// the key it gathers their drops and purges; without it, it counts each of them as not
// gathered. Groups only buffered by the writer are not in the look, and not counted.
#[test]
fn a_keyless_look_beside_a_live_writer_counts_the_drops_and_purges_of_durable_groups_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let key = ring(9);
    let wal = SegmentedWal::open(config(&dir, Some(Arc::clone(&key)))).unwrap();
    let payloads = drops(3, Lsn(1));
    let purge = purge_of("cpu");
    let mut durable = Lsn(0);
    for round in 0..3u64 {
        let entries = [
            GroupEntry::from(Record::new(TY, b"catalog")),
            GroupEntry::Tombstone(&payloads[round as usize]),
            GroupEntry::TemporalPurge(&purge, Scope { database: 1, tenant: 1, vshard: round as u32 }),
        ];
        let lsns = wal.append_group_entries(&entries).unwrap();
        if round < 2 {
            wal.wait_durable(*lsns.end()).unwrap();
            durable = *lsns.end();
        }
        let blind = ReadOnlyWal::open(&dir, None).unwrap();
        let keyed = ReadOnlyWal::open(&dir, Some(Arc::clone(&key))).unwrap();
        let whole = durable.0 / 3;
        assert_eq!(blind.recovery_info().last_lsn, durable, "round {round}");
        assert_eq!(blind.recovery_info().ungathered, 2 * whole, "round {round}");
        assert_eq!(keyed.recovery_info().ungathered, 0, "round {round}");
        assert_eq!(keyed.recovery_info().tombstones.len() as u64, whole, "round {round}");
        assert_eq!(keyed.recovery_info().temporal_purges.len() as u64, whole, "round {round}");
    }
    wal.close().unwrap();
}

// Looks taken while a writer keeps appending groups of a record, a drop and a purge (each of
// a name of its own) catch the log at any point of a group's write: each finds whole groups
// only, and a keyless one counts exactly two records it could not gather per group.
#[test]
fn looks_racing_a_writer_of_groups_see_whole_groups_and_count_their_drops_and_purges_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let key = ring(11);
    let wal = SegmentedWal::open(config(&dir, Some(Arc::clone(&key)))).unwrap();
    const GROUPS: u64 = 300;
    std::thread::scope(|s| {
        s.spawn(|| {
            let padding = vec![5u8; 3000];
            for g in 0..GROUPS {
                let dropped = drop_of(&format!("c{g}"), Lsn(1));
                let purge = purge_of(&format!("p{g}"));
                let entries = [
                    GroupEntry::from(Record::new(TY, &padding)),
                    GroupEntry::Tombstone(&dropped),
                    GroupEntry::TemporalPurge(&purge, Scope::default()),
                ];
                let lsns = wal.append_group_entries(&entries).unwrap();
                if g % 4 == 0 {
                    wal.wait_durable(*lsns.end()).unwrap();
                }
            }
            wal.sync().unwrap();
        });
        let mut seen = 0;
        while seen < GROUPS {
            let blind = ReadOnlyWal::open(&dir, None).unwrap();
            let info = blind.recovery_info();
            assert_eq!(info.last_lsn.0 % 3, 0, "a look ends inside a group: {:?}", info.last_lsn);
            assert_eq!(info.ungathered, 2 * (info.last_lsn.0 / 3), "at {:?}", info.last_lsn);
            let keyed = ReadOnlyWal::open(&dir, Some(Arc::clone(&key))).unwrap();
            let info = keyed.recovery_info();
            let groups = info.last_lsn.0 / 3;
            assert_eq!(info.last_lsn.0 % 3, 0, "a keyed look ends inside a group: {:?}", info.last_lsn);
            assert_eq!((info.tombstones.len() as u64, info.temporal_purges.len() as u64), (groups, groups), "at {:?}", info.last_lsn);
            seen = groups;
        }
    });
    wal.close().unwrap();
}
