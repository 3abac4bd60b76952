//! Atomic groups: records appended with `append_group` are all recovered or none, whatever a
//! crash tears, and a group that was acknowledged is always whole. A collection drop or temporal
//! purge in a group is gathered by recovery only where the whole group survived.

mod common;
mod groups_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use groups_support::{Member, Model, TY, member, random_group, rejected_group};

use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SimRng, Storage, SyncFailure};
use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, KeyRing, Lsn, ReadOnlyWal, Record, RecoveryInfo, Scope, SecureKey, SegmentedWal,
    SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload, WalError, WalRecord,
};

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 128 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
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
    let first_offset = tear_frame(&sim, dir, Lsn(group_first.0 + 3), group_first);

    for round in 0..2 {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        let info = wal.recovery_info();
        assert_eq!(Some(info.last_lsn), group_first.prev(), "round {round}: the whole group is gone");
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
/// the frame of `first` starts. A torn write happens before the close's seal, so the seal is
/// taken away too: it would vouch for the damaged batch.
fn tear_frame(sim: &SimStorage, dir: &Path, lsn: Lsn, first: Lsn) -> u64 {
    let view = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    let last = view.lazy_reader_raw(lsn).unwrap().next_header().unwrap().unwrap();
    let first_offset = view.lazy_reader_raw(first).unwrap().next_header().unwrap().unwrap().offset();
    let path = dir.join(format!("{:020}.wal", last.segment().0));
    common::unseal(sim, dir);
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

/// Whatever member of a group is bad (a tombstone's purge LSN past the next LSN, a name too
/// long, a reserved type), and wherever it stands in the group, the group is refused whole:
/// no LSN used, nothing written, nothing recovered, no drop or purge gathered.
#[test]
fn a_refused_group_appends_nothing() {
    for seed in 0..200 {
        let dir = Path::new("/refused");
        let sim = SimStorage::new(seed, FaultConfig::default());
        let mut rng = SimRng::new(seed);
        let mut model = Model::default();
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        let size = 1 + rng.below(5);
        let good = random_group(&mut rng, 1, size, wal.next_lsn());
        let entries: Vec<GroupEntry<'_>> = good.iter().map(Member::entry).collect();
        let lsns = wal.append_group_entries(&entries).unwrap();
        model.appended(*lsns.start(), 1, &good);
        wal.sync().unwrap();
        let before = wal.stats();
        for _ in 0..4 {
            let bad = rejected_group(&mut rng, wal.next_lsn());
            let entries: Vec<GroupEntry<'_>> = bad.iter().map(Member::entry).collect();
            assert!(wal.append_group_entries(&entries).is_err(), "seed {seed}: {bad:?}");
            assert_eq!(wal.next_lsn(), lsns.end().next(), "seed {seed}: a refused group used an LSN");
        }
        wal.sync().unwrap();
        let after = wal.stats().since(&before);
        assert_eq!((after.records, after.bytes_written), (0, 0), "seed {seed}: a refused group was written");
        drop(wal);
        let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
        let records: Vec<WalRecord> = wal.read_from(Lsn::FIRST).unwrap().collect::<Result<_, _>>().unwrap();
        model.check(wal.recovery_info(), &records, &format!("seed {seed}"));
        assert_eq!(wal.recovery_info().last_lsn, *lsns.end(), "seed {seed}");
    }
}

/// Random singles and groups, some holding drops and purges, syncs and crashes with torn
/// sectors (the last batch of each round written but its sync failed, half the time followed by
/// a reopen under the same kernel before the crash): after every crash, each group is there
/// whole or not at all, every acknowledged record is there, recovery's tombstones and purges
/// are exactly those of the records that survived, every reader returns those records, and a
/// read-only look before the owner's open finds the same. A group with one bad member is
/// refused whole, using no LSN.
#[test]
fn groups_are_all_or_nothing_across_random_crashes() {
    let seeds: u64 = std::env::var("NODEDB_WAL_GROUP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in 0..seeds {
        crash_rounds(seed);
    }
}

fn crash_rounds(seed: u64) {
    let dir = Path::new("/random");
    let mut rng = SimRng::new(seed);
    let mut sim = SimStorage::new(seed, FaultConfig::default());
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    // Its own generator, so that the rounds' appends stay what they were for each seed.
    let mut restarts = SimRng::new(seed ^ 0x7265_7374_6172_7473);
    // Every third seed encrypts: a look without the key must count its drops and purges as
    // not gathered, those of whole groups only.
    let ring = seed.is_multiple_of(3).then(|| Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [seed as u8; 32]))));
    // Odd seeds write through the page cache, where a failed sync's pages stay readable.
    let config = |dir: &Path| SegmentedWalConfig { direct_io: seed.is_multiple_of(2), key_ring: ring.clone(), ..config(dir) };
    let mut model = Model::default();
    let mut next_group = 1u64;
    for round in 0..4 {
        let at = format!("seed {seed} round {round}");
        // After a crash nothing is cached: a look must find what the owner's recovery finds.
        let looked = (round > 0).then(|| look(&sim, dir, ring.as_ref(), &model, &at));
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
        check(&wal, &model, &at);
        let info = wal.recovery_info();
        if let Some(looked) = looked {
            assert_eq!(
                (looked.last_lsn, &looked.tombstones, &looked.temporal_purges),
                (info.last_lsn, &info.tombstones, &info.temporal_purges),
                "{at}"
            );
        }
        model.keep_up_to(info.last_lsn);
        for _ in 0..rng.below(60) + 5 {
            append_one(&wal, &mut rng, &mut model, &mut next_group);
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
            check(&wal, &model, &format!("{at}, reopened"));
            model.acked = wal.durable_lsn().0;
            model.keep_up_to(wal.durable_lsn());
            let after = sim.crash(rng.next_u64());
            drop(wal);
            sim = after;
            continue;
        }
        sim = sim.crash(rng.next_u64());
        drop(wal);
    }
}

/// Appends one random group (now and then through `append_group`, when it holds only records),
/// or tries a group with a bad member, which must fail whole.
fn append_one<S: Storage>(wal: &SegmentedWal<S>, rng: &mut SimRng, model: &mut Model, next_group: &mut u64) {
    let next = wal.next_lsn();
    if rng.below(10) == 0 {
        let members = rejected_group(rng, next);
        let entries: Vec<GroupEntry<'_>> = members.iter().map(Member::entry).collect();
        let err = wal.append_group_entries(&entries).expect_err("a group with a bad member");
        assert!(
            matches!(err, WalError::LsnNotIssued { .. } | WalError::MalformedPayload { .. } | WalError::ReservedRecordType { .. }),
            "{err}"
        );
        assert_eq!(wal.next_lsn(), next, "a refused group uses no LSN");
        return;
    }
    let size = if rng.below(3) == 0 { 1 } else { rng.below(8) + 1 };
    let group = *next_group;
    *next_group += 1;
    let members = random_group(rng, group, size, next);
    let entries: Vec<GroupEntry<'_>> = members.iter().map(Member::entry).collect();
    let records: Option<Vec<Record<'_>>> = entries.iter().map(|e| if let GroupEntry::Record(r) = e { Some(*r) } else { None }).collect();
    let lsns = match records {
        Some(records) if rng.below(2) == 0 => wal.append_group(&records).unwrap(),
        _ => wal.append_group_entries(&entries).unwrap(),
    };
    model.appended(*lsns.start(), group, &members);
    if rng.below(4) == 0 {
        wal.wait_durable(*lsns.end()).unwrap();
        model.acked = model.acked.max(lsns.end().0);
    }
}

/// That the owner's recovery matches the model, and every reader returns the same records.
fn check<S: Storage>(wal: &SegmentedWal<S>, model: &Model, at: &str) {
    let info = wal.recovery_info();
    let first = info.first_lsn;
    let records: Vec<WalRecord> = wal.read_from(first).unwrap().collect::<Result<_, _>>().unwrap();
    model.check(info, &records, at);
    let lsns: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
    let mapped: Vec<Lsn> = wal.read_mapped(first).unwrap().map(|r| r.unwrap().lsn).collect();
    let mut parallel = Vec::new();
    wal.replay_parallel(first, 2, |r| {
        parallel.push(r.lsn);
        Ok(())
    })
    .unwrap();
    let mut lazy = wal.lazy_reader(first).unwrap();
    let mut headers = Vec::new();
    while let Some(h) = lazy.next_header().unwrap() {
        headers.push(h.lsn);
    }
    let mut tail = wal.tail(first);
    let mut tailed = Vec::new();
    for _ in 0..=records.len() {
        match tail.next_timeout(Duration::ZERO).unwrap() {
            Some(r) => tailed.push(r.lsn),
            None => break,
        }
    }
    for (reader, got) in [("read_mapped", mapped), ("replay_parallel", parallel), ("lazy_reader", headers), ("tail", tailed)] {
        assert_eq!(got, lsns, "{at}: {reader} returns other records than read_from");
    }
}

/// A read-only look: what it finds matches the model; without the key (an encrypted log),
/// it counts each drop and purge of the surviving records as not gathered, and no other.
fn look(sim: &SimStorage, dir: &Path, ring: Option<&Arc<KeyRing>>, model: &Model, at: &str) -> RecoveryInfo {
    let view = ReadOnlyWal::open_with(sim.clone(), dir, ring.cloned()).unwrap();
    let records: Vec<WalRecord> = view.read_from(view.recovery_info().first_lsn).unwrap().collect::<Result<_, _>>().unwrap();
    model.check(view.recovery_info(), &records, &format!("{at}, look"));
    if ring.is_some() {
        let blind = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
        assert_eq!(blind.recovery_info().ungathered, model.gathered_count(&records), "{at}: a look without the key");
    }
    view.recovery_info().clone()
}
