//! Atomic groups: records appended with `append_group` are all recovered or none, whatever a
//! crash tears, and a group that was acknowledged is always whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SimRng, Storage, SyncFailure};
use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, Scope, SecureKey, SegmentedWal,
    SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload, WalError,
};

const TY: RecordType = RecordType::optional(0x300);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 128 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
}

/// A member's payload names its group, its index and the group's size.
fn member(group: u64, index: u64, size: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(24 + len);
    for v in [group, index, size] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend((0..len).map(|i| (group as usize * 31 + index as usize * 7 + i) as u8));
    p
}

fn parse(p: &[u8]) -> (u64, u64, u64) {
    let at = |i: usize| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap());
    (at(0), at(1), at(2))
}

#[test]
fn an_acknowledged_group_is_recovered_whole_with_consecutive_lsns() {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/g");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    wal.append(Record::new(TY, b"before")).unwrap();
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| member(1, i, 5, 500)).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
    let lsns = wal.append_group(&records).unwrap();
    assert_eq!(lsns, Lsn(2)..=Lsn(6));
    wal.wait_durable(*lsns.end()).unwrap();
    let after = sim.crash(3);
    drop(wal);
    let wal = SegmentedWal::open_with(after, config(dir)).unwrap();
    let got: Vec<_> = wal.read_from(Lsn(2)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.iter().map(|r| &r.payload).collect::<Vec<_>>(), payloads.iter().collect::<Vec<_>>());
    assert!(matches!(wal.append_group(&[]), Err(WalError::EmptyGroup)));
}

// A torn write that keeps the first members of a group and loses the last must not expose a
// part of it: recovery cuts the tail back to the group's first frame.
#[test]
fn a_group_whose_last_member_is_torn_is_cut_whole() {
    let dir = Path::new("/torn");
    let sim = SimStorage::new(2, FaultConfig::default());
    let group_first = {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        for i in 0..3 {
            wal.append_durable(Record::new(TY, &member(0, i, 1, 100))).unwrap();
        }
        let payloads: Vec<Vec<u8>> = (0..4).map(|i| member(9, i, 4, 1500)).collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
        let lsns = wal.append_group(&records).unwrap();
        wal.wait_durable(*lsns.end()).unwrap();
        *lsns.start()
    };
    // Find the group's last frame and damage its payload, as a torn write would.
    let view = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    let mut reader = view.lazy_reader(Lsn(group_first.0 + 3)).unwrap();
    let last = reader.next_header().unwrap().unwrap();
    let first_offset = view.lazy_reader(group_first).unwrap().next_header().unwrap().unwrap().offset();
    let path = dir.join(format!("{:020}.wal", last.segment().0));
    let mut bytes = sim.read_file(&path).unwrap();
    bytes[(last.offset() + 48 + 700) as usize] ^= 0xFF;
    sim.write_file(&path, &bytes);

    for round in 0..2 {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        let info = wal.recovery_info();
        assert_eq!(info.last_lsn, Lsn(group_first.0 - 1), "round {round}: the whole group is gone");
        if round == 0 {
            let torn = info.torn_tail.expect("a torn tail is reported");
            assert_eq!(torn.offset, first_offset, "cut at the group's first frame");
        }
        assert_eq!(wal.read_from(Lsn(1)).unwrap().count(), 3);
        if round == 1 {
            assert_eq!(wal.append(Record::new(TY, b"next")).unwrap(), group_first, "the LSNs of the cut group are issued again");
        }
    }
}

/// Damages the payload of the frame at `lsn` in place, as a torn write would; returns where
/// the frame of `first` starts.
fn tear_frame(sim: &SimStorage, dir: &Path, lsn: Lsn, first: Lsn) -> u64 {
    let view = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    let last = view.lazy_reader_raw(lsn).unwrap().next_header().unwrap().unwrap();
    let first_offset = view.lazy_reader_raw(first).unwrap().next_header().unwrap().unwrap().offset();
    let path = dir.join(format!("{:020}.wal", last.segment().0));
    let mut bytes = sim.read_file(&path).unwrap();
    bytes[(last.offset() + 48 + 700) as usize] ^= 0xFF;
    sim.write_file(&path, &bytes);
    first_offset
}

// A drop or purge in a group is gathered only with the whole group: a look at a log whose group
// was torn after its tombstone and purge must count neither, not even as records it could not
// read for want of a key (`ungathered`, which a tool takes for drops it missed).
#[test]
fn a_torn_groups_tombstone_and_purge_are_neither_gathered_nor_counted() {
    let dir = Path::new("/torn-drop");
    let sim = SimStorage::new(5, FaultConfig::default());
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])));
    let config = SegmentedWalConfig { key_ring: Some(Arc::clone(&ring)), ..config(dir) };
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(1) };
    let purge =
        TemporalPurgePayload { engine: TemporalPurgeEngine::Timeseries, collection: "cpu".into(), cutoff_unix_ms: 5, purged_count: 1 };
    let big = member(1, 3, 4, 1500);
    let lsns = {
        let wal = SegmentedWal::open_with(sim.clone(), config.clone()).unwrap();
        wal.append_durable(Record::new(TY, b"before")).unwrap();
        let entries = [
            GroupEntry::from(Record::new(TY, b"catalog")),
            GroupEntry::Tombstone(&tombstone),
            GroupEntry::TemporalPurge(&purge, Scope::default()),
            GroupEntry::from(Record::new(TY, &big)),
        ];
        let lsns = wal.append_group_entries(&entries).unwrap();
        wal.wait_durable(*lsns.end()).unwrap();
        lsns
    };
    let whole = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    assert_eq!(whole.recovery_info().ungathered, 2, "the whole group's drop and purge, unread without the key");
    let first_offset = tear_frame(&sim, dir, *lsns.end(), *lsns.start());

    let blind = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    assert_eq!(blind.recovery_info().last_lsn, Lsn(1));
    assert_eq!(blind.recovery_info().ungathered, 0, "records of a cut group are not in the log");
    let keyed = ReadOnlyWal::open_with(sim.clone(), dir, Some(Arc::clone(&ring))).unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config).unwrap();
    for info in [keyed.recovery_info(), wal.recovery_info()] {
        assert_eq!(info.last_lsn, Lsn(1));
        assert!(info.tombstones.is_empty() && info.temporal_purges.is_empty(), "{info:?}");
    }
    assert_eq!(wal.recovery_info().torn_tail.unwrap().offset, first_offset);
}

/// Random singles and groups, syncs and crashes with torn sectors (the last batch of each round
/// written but its sync failed, half the time followed by a reopen under the same kernel before
/// the crash): after every crash, each group is there whole or not at all, and every
/// acknowledged record is there.
#[test]
fn groups_are_all_or_nothing_across_random_crashes() {
    let seeds: u64 = std::env::var("NODEDB_WAL_GROUP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in 0..seeds {
        let dir = Path::new("/random");
        let mut rng = SimRng::new(seed);
        let mut sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        sim.set_intermediate_writes(true);
        // Its own generator, so that the rounds' appends stay what they were for each seed.
        let mut restarts = SimRng::new(seed ^ 0x7265_7374_6172_7473);
        // Odd seeds write through the page cache, where a failed sync's pages stay readable.
        let config = |dir: &Path| SegmentedWalConfig { direct_io: seed % 2 == 0, ..config(dir) };
        // LSN -> payload for every record the log ever returned, and the acknowledged end.
        let mut known: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut acked = 0u64;
        let mut next_group = 1u64;
        for round in 0..4 {
            let faulty = FaultyStorage::new(sim.clone());
            let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
            check(&wal, &known, acked, seed, round);
            let last = wal.recovery_info().last_lsn.0;
            known.retain(|&lsn, _| lsn <= last);
            for _ in 0..rng.below(60) + 5 {
                let size = if rng.below(3) == 0 { 1 } else { rng.below(8) + 1 };
                let group = next_group;
                next_group += 1;
                let payloads: Vec<Vec<u8>> = (0..size).map(|i| member(group, i, size, rng.below(3000) as usize)).collect();
                let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
                let lsns = wal.append_group(&records).unwrap();
                for (lsn, p) in (lsns.start().0..).zip(payloads) {
                    known.insert(lsn, p);
                }
                if rng.below(4) == 0 {
                    wal.wait_durable(*lsns.end()).unwrap();
                    acked = acked.max(lsns.end().0);
                }
            }
            // The last batch is written but its fdatasync fails, so the crash keeps a random
            // subset of its sectors: groups in it are torn anywhere.
            faulty.fail_once(FaultOp::SyncData, 0, EIO);
            let _ = wal.sync();
            if restarts.below(2) == 0 {
                // Reopened under the same kernel before the power cut: Linux kept the failed
                // batch's pages in the cache, clean. What this recovery returns it reports
                // durable, so the crash below must keep it, groups whole.
                drop(wal);
                let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
                check(&wal, &known, acked, seed, round);
                acked = wal.durable_lsn().0;
                known.retain(|&lsn, _| lsn <= acked);
                let after = sim.crash(rng.next_u64());
                drop(wal);
                sim = after;
                continue;
            }
            sim = sim.crash(rng.next_u64());
            drop(wal);
        }
    }
}

fn check<S: Storage>(wal: &SegmentedWal<S>, known: &BTreeMap<u64, Vec<u8>>, acked: u64, seed: u64, round: u32) {
    let info = wal.recovery_info();
    assert!(info.last_lsn.0 >= acked, "seed {seed} round {round}: acknowledged {acked}, log ends at {}", info.last_lsn);
    let records: Vec<_> = wal.read_from(info.first_lsn).unwrap().collect::<Result<_, _>>().unwrap();
    let mut members: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in &records {
        assert_eq!(known.get(&r.lsn.0), Some(&r.payload.to_vec()), "seed {seed} round {round}: LSN {} is not what was appended", r.lsn);
        let (group, _, size) = parse(&r.payload);
        let entry = members.entry(group).or_insert((0, size));
        entry.0 += 1;
    }
    for (group, (seen, size)) in members {
        assert_eq!(seen, size, "seed {seed} round {round}: group {group} recovered {seen} of {size} members");
    }
}
