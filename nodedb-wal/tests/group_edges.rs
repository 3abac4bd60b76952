//! An adversarial review's edges of atomic groups: no reader of the owner, made at any moment
//! beside writers of groups of every size (one record, larger than a batch, larger than a
//! segment), ends inside a group; waiting on a group's first LSN waits for all of it; a group
//! larger than a segment lands in one segment and a crash that tears it anywhere leaves all of
//! it or none; degenerate groups are refused with a typed error and write nothing.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Gated;
use nodedb_wal::format::frame::FLAG_GROUP_CONTINUES;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SimRng, Storage, SyncFailure};
use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const TY: RecordType = RecordType::optional(0x510);

fn small(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c
}

/// The payload of member `i` of a group of `size` starting at `first`: says where it belongs,
/// so that a reader can check each group it returns is whole and in order.
fn member(first: Lsn, i: usize, size: usize, len: usize) -> Vec<u8> {
    let mut p = vec![(first.0 as u8) ^ (i as u8); len.max(24)];
    p[..8].copy_from_slice(&first.0.to_le_bytes());
    p[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    p[16..24].copy_from_slice(&(size as u64).to_le_bytes());
    p
}

/// Checks a run of records read from the start of a group on: groups whole and in order, and
/// the last record not one that says its group goes on.
fn check_whole_groups(records: &[(Lsn, u16, Vec<u8>)], what: &str) {
    let mut i = 0;
    while i < records.len() {
        let (lsn, _, payload) = &records[i];
        let first = Lsn(u64::from_le_bytes(payload[..8].try_into().unwrap()));
        let size = u64::from_le_bytes(payload[16..24].try_into().unwrap()) as usize;
        assert_eq!(*lsn, first, "{what}: a run starts inside a group");
        assert!(i + size <= records.len(), "{what}: group at {first:?} of {size} ends after {} of them", records.len() - i);
        for (k, (lsn, flags, payload)) in records[i..i + size].iter().enumerate() {
            assert_eq!(*lsn, Lsn(first.0 + k as u64), "{what}");
            assert_eq!(*payload, member(first, k, size, payload.len()), "{what}: member {k} of {first:?}");
            assert_eq!(flags & FLAG_GROUP_CONTINUES != 0, k + 1 < size, "{what}: member {k} of {size} at {first:?}");
        }
        i += size;
    }
}

fn group_size(rng: &mut SimRng) -> (usize, usize) {
    match rng.below(6) {
        0 => (1, rng.below(200) as usize),
        // Larger than a batch (8 KiB).
        1 => (3 + rng.below(4) as usize, 3000 + rng.below(2000) as usize),
        // Larger than a segment (32 KiB).
        2 => (12 + rng.below(6) as usize, 3500),
        _ => (2 + rng.below(5) as usize, rng.below(600) as usize),
    }
}

/// Appends a random group; returns its LSNs.
fn append_group<S: Storage>(wal: &SegmentedWal<S>, rng: &mut SimRng) -> std::ops::RangeInclusive<Lsn> {
    let (size, len) = group_size(rng);
    let first = wal.next_lsn();
    let payloads: Vec<Vec<u8>> = (0..size).map(|i| member(first, i, size, len)).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
    let lsns = wal.append_group(&records).unwrap();
    assert_eq!(*lsns.start(), first, "one appender: the LSN read before is the group's");
    lsns
}

/// Every reader of the owner, made at any moment while one thread appends groups of every size
/// (waiting now and then in every way there is) ends at a group's end: the sequential, mapped
/// and lazy readers, `replay_parallel` and a tail.
#[test]
fn no_reader_made_beside_a_writer_of_groups_ends_inside_a_group() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(small(tmp.path())).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = SimRng::new(7);
            for g in 0..400u32 {
                let lsns = append_group(&wal, &mut rng);
                match g % 5 {
                    0 => wal.wait_durable(*lsns.start()).unwrap(),
                    1 => wal.request_sync(*lsns.end()).unwrap(),
                    2 => common::block_on(wal.durable(*lsns.start()).unwrap()).unwrap(),
                    _ => {}
                }
            }
            wal.sync().unwrap();
            done.store(true, Ordering::Release);
        });
        let mut tail = wal.tail(Lsn::FIRST);
        let mut tailed = Vec::new();
        let mut rounds = 0;
        while !done.load(Ordering::Acquire) || rounds < 3 {
            rounds += 1;
            let read: Vec<_> = wal
                .read_from(Lsn::FIRST)
                .unwrap()
                .map(|r| r.map(|r| (r.lsn, r.flags, r.payload.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            check_whole_groups(&read, "read_from");
            let mapped: Vec<_> = wal
                .read_mapped(Lsn::FIRST)
                .unwrap()
                .map(|r| r.map(|r| (r.lsn, r.flags, r.payload.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            check_whole_groups(&mapped, "read_mapped");
            let mut lazy = wal.lazy_reader(Lsn::FIRST).unwrap();
            let mut headers = Vec::new();
            while let Some(h) = lazy.next_header().unwrap() {
                let (lsn, flags) = (h.lsn, h.flags);
                headers.push((lsn, flags, lazy.payload().unwrap()));
            }
            check_whole_groups(&headers, "lazy_reader");
            let mut parallel = Vec::new();
            wal.replay_parallel(Lsn::FIRST, 3, |r| {
                parallel.push((r.lsn, r.flags, r.payload.to_vec()));
                Ok(())
            })
            .unwrap();
            check_whole_groups(&parallel, "replay_parallel");
            // The tail: whatever it has delivered so far ends a group once it finds nothing more.
            while let Some(r) = tail.next_timeout(Duration::ZERO).unwrap() {
                tailed.push((r.lsn, r.flags, r.payload.to_vec()));
            }
            check_whole_groups(&tailed, "tail");
        }
    });
    wal.close().unwrap();
}

/// `wait_durable`, `append`-then-future and `request_sync` on a group's first LSN (or any of
/// its members) return only once its last member is durable too: from several threads at once
/// (the flusher's runs), and alone (a quiet log's caller writing its own batch).
#[test]
fn waiting_on_any_member_of_a_group_waits_for_the_whole_group() {
    for threads in [1u64, 4] {
        let sim = SimStorage::new(threads, FaultConfig::default());
        let wal = SegmentedWal::open_with(sim, small(Path::new("/wait"))).unwrap();
        std::thread::scope(|s| {
            for t in 0..threads {
                let wal = &wal;
                s.spawn(move || {
                    let mut rng = SimRng::new(100 + t);
                    for g in 0..150u64 {
                        let (size, len) = group_size(&mut rng);
                        let payloads: Vec<Vec<u8>> = (0..size).map(|i| vec![i as u8; len]).collect();
                        let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
                        let lsns = wal.append_group(&records).unwrap();
                        let member = Lsn(lsns.start().0 + rng.below(size as u64));
                        match g % 3 {
                            0 => wal.wait_durable(member).unwrap(),
                            1 => common::block_on(wal.durable(member).unwrap()).unwrap(),
                            _ => {
                                wal.request_sync(member).unwrap();
                                let deadline = Instant::now() + Duration::from_secs(60);
                                while wal.durable_lsn() < member {
                                    assert!(Instant::now() < deadline, "a requested sync never came");
                                    std::thread::yield_now();
                                }
                            }
                        }
                        assert!(wal.durable_lsn() >= *lsns.end(), "member {member:?} durable before the group's last {:?}", lsns.end());
                    }
                });
            }
        });
        wal.close().unwrap();
    }
}

/// A group larger than a segment (and than a batch) goes into one segment, the one it starts
/// (after a roll if the segment holds records), and a crash that keeps any subset of its
/// unsynced sectors leaves all of it or none; the log then goes on and every reader agrees.
#[test]
fn a_group_larger_than_a_segment_lands_in_one_segment_whole_or_not_at_all_after_a_torn_crash() {
    let dir = Path::new("/huge");
    let (mut whole, mut none) = (0, 0);
    for seed in 0..120u64 {
        let mut rng = SimRng::new(seed);
        let sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_sync_failure(if seed % 2 == 0 { SyncFailure::KeepsCleanPages } else { SyncFailure::default() });
        sim.set_intermediate_writes(true);
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), SegmentedWalConfig { direct_io: seed % 4 < 2, ..small(dir) }).unwrap();
        // Some plain records first, so that the segment holds something when the group comes.
        let before = rng.below(20);
        for i in 0..before {
            wal.append(Record::new(TY, &vec![i as u8; rng.below(2000) as usize])).unwrap();
        }
        if rng.below(2) == 0 {
            wal.sync().unwrap();
        }
        let acked = wal.durable_lsn();
        let size = 10 + rng.below(20) as usize;
        let first = wal.next_lsn();
        let payloads: Vec<Vec<u8>> = (0..size).map(|i| member(first, i, size, 3000 + rng.below(3000) as usize)).collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
        let lsns = wal.append_group(&records).unwrap();
        faulty.fail_once(FaultOp::SyncData, rng.below(2), EIO);
        let synced = wal.sync().is_ok();
        let after = sim.crash(rng.next_u64());
        drop(wal);

        let wal = SegmentedWal::open_with(after, small(dir)).unwrap();
        let info = wal.recovery_info();
        let at = format!("seed {seed}");
        assert!(info.last_lsn >= acked, "{at}: lost acknowledged records");
        if synced {
            assert!(info.last_lsn >= *lsns.end(), "{at}: a synced group lost");
        }
        let read: Vec<_> =
            wal.read_from(Lsn::FIRST).unwrap().map(|r| r.map(|r| (r.lsn, r.flags, r.payload.to_vec()))).collect::<Result<_, _>>().unwrap();
        let kept: Vec<_> = read.iter().filter(|r| r.0 >= first).cloned().collect();
        assert!(kept.is_empty() || kept.len() == size, "{at}: {} of {size} members recovered", kept.len());
        check_whole_groups(&kept, &at);
        if kept.is_empty() {
            none += 1
        } else {
            whole += 1
        }
        if !kept.is_empty() {
            let holding: Vec<_> = info.segments.iter().filter(|s| s.first_lsn <= *lsns.end() && s.end_lsn > first).collect();
            assert_eq!(holding.len(), 1, "{at}: the group spans segments {holding:?}");
        }
        // The log goes on after the cut: a new group at the LSNs issued again.
        let again = wal.next_lsn();
        let payloads: Vec<Vec<u8>> = (0..3).map(|i| member(again, i, 3, 100)).collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(TY, p)).collect();
        let lsns = wal.append_group(&records).unwrap();
        wal.wait_durable(*lsns.start()).unwrap();
        let tail: Vec<_> =
            wal.read_from(again).unwrap().map(|r| r.map(|r| (r.lsn, r.flags, r.payload.to_vec()))).collect::<Result<_, _>>().unwrap();
        check_whole_groups(&tail, &format!("{at}, after"));
        assert_eq!(tail.len(), 3, "{at}");
        wal.close().unwrap();
    }
    // Both outcomes happen, or the crashes did not tear what they were meant to.
    assert!(whole > 0 && none > 0, "{whole} groups kept whole, {none} lost whole");
}

/// Degenerate groups: empty ones are `EmptyGroup`, one holding a reserved type or a payload
/// over `payload_bytes_max` anywhere (first, middle, last) is refused whole; none takes an LSN
/// or writes a byte, and a group of one is a plain record with no flag.
#[test]
fn degenerate_groups_are_refused_with_a_typed_error_and_write_nothing() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/edges");
    let mut config = small(dir);
    config.payload_bytes_max = 1000;
    let wal = SegmentedWal::open_with(sim.clone(), config).unwrap();
    wal.append_durable(Record::new(TY, b"before")).unwrap();
    let written = sim.read_file(&common::seg(dir, 1)).unwrap();
    assert!(matches!(wal.append_group(&[]), Err(WalError::EmptyGroup)));
    assert!(matches!(wal.append_batch(&[]), Err(WalError::EmptyGroup)));
    assert!(matches!(wal.append_group_entries(&[]), Err(WalError::EmptyGroup)));
    let big = vec![1u8; 1001];
    let ok = b"fine".as_slice();
    for bad_at in 0..3 {
        let mut members = [Record::new(TY, ok), Record::new(TY, ok), Record::new(TY, ok)];
        members[bad_at] = Record::new(TY, &big);
        assert!(matches!(wal.append_group(&members), Err(WalError::PayloadTooLarge { len: 1001, max: 1000 })), "bad at {bad_at}");
        members[bad_at] = Record::new(RecordType::SEGMENT_END, ok);
        assert!(matches!(wal.append_group(&members), Err(WalError::ReservedRecordType { .. })), "meta at {bad_at}");
        members[bad_at] = Record::new(RecordType::COLLECTION_TOMBSTONE, ok);
        assert!(matches!(wal.append_group(&members), Err(WalError::ReservedRecordType { .. })), "reserved at {bad_at}");
    }
    assert_eq!(wal.next_lsn(), Lsn(2), "refused groups took no LSN");
    wal.sync().unwrap();
    assert_eq!(sim.read_file(&common::seg(dir, 1)).unwrap(), written, "refused groups wrote nothing");
    let one = wal.append_group(&[Record::new(TY, b"alone")]).unwrap();
    assert_eq!(one, Lsn(2)..=Lsn(2));
    wal.wait_durable(Lsn(2)).unwrap();
    let record = wal.read_from(Lsn(2)).unwrap().next().unwrap().unwrap();
    assert_eq!((record.lsn, record.flags & FLAG_GROUP_CONTINUES), (Lsn(2), 0));
    wal.close().unwrap();
}

// Found by an adversarial review: the commit window ended at the first sync request after the
// one that opened it (every `append_durable`, `wait_durable`, `request_sync` or future woke
// the flusher from its window), so it gathered only what came before the second waiter: with
// a waiter arriving every millisecond the batch went at once instead of after the window.
// The clock is read only for a lower bound the log promises (no sync before the window is
// over), which no machine however slow can break; the pauses only space the requests out.
#[test]
fn sync_requests_during_the_commit_window_do_not_end_it() {
    let window = Duration::from_millis(300);
    let sim = SimStorage::new(11, FaultConfig::default());
    let wal =
        SegmentedWal::open_with(sim, SegmentedWalConfig { commit_window: Some(window), ..SegmentedWalConfig::new("/window") }).unwrap();
    let started = Instant::now();
    let first = wal.append(Record::new(TY, b"opens the window")).unwrap();
    wal.request_sync(first).unwrap();
    let deadline = started + Duration::from_secs(60);
    let mut requests = 1u32;
    while wal.durable_lsn() < first {
        assert!(Instant::now() < deadline, "the window never ended");
        // A new LSN each time, so that each is a request the flusher has not had yet.
        let lsn = wal.append(Record::new(TY, b"asks for the same sync")).unwrap();
        wal.request_sync(lsn).unwrap();
        requests += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    let synced = started.elapsed();
    assert!(synced >= window, "the first sync came {synced:?} after the window opened, before its {window:?} ({requests} requests)");
    wal.close().unwrap();
}

/// Sleeps until `lsn` is durable (at most a minute: a hang fails) and returns when that was.
fn durable_at(wal: &SegmentedWal<Gated<SimStorage>>, lsn: Lsn) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal.durable_lsn() < lsn {
        assert!(Instant::now() < deadline, "LSN {lsn} never became durable");
        std::thread::sleep(Duration::from_millis(1));
    }
    Instant::now()
}

// The window holds for every batch, not only the first after a lull. A sync asked for while
// the last batch synced found the flusher still writing, and it took that batch as soon as
// the last one was durable, without a window: on a busy log the window never applied. The
// clock gives only the lower bound the log promises, as above.
#[test]
fn a_sync_asked_for_while_the_last_batch_syncs_still_waits_out_the_window() {
    let window = Duration::from_millis(300);
    let gated = Gated::new(SimStorage::new(12, FaultConfig::default()));
    let config = SegmentedWalConfig { commit_window: Some(window), ..SegmentedWalConfig::new("/window") };
    let wal = SegmentedWal::open_with(gated.clone(), config).unwrap();
    gated.gate.shut();
    let first = wal.append(Record::new(TY, b"the first batch")).unwrap();
    wal.request_sync(first).unwrap();
    // Written once its window is over, held before its sync.
    gated.gate.wait_held();
    let second = wal.append(Record::new(TY, b"asked for while the first syncs")).unwrap();
    wal.request_sync(second).unwrap();
    let released = Instant::now();
    gated.gate.open();
    let synced = durable_at(&wal, second) - released;
    assert!(synced >= window, "the second batch synced {synced:?} after the first was let go, before a {window:?} window");
    wal.close().unwrap();
}
