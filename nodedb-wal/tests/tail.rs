//! A tail follows a live log: every record in order, each delivered only once it is durable,
//! across segment rolls, resumable from its cursor; a cursor that truncation passed is an error;
//! a poisoned log's tail delivers what is durable, then the poison.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const TY: RecordType = RecordType::optional(0x400);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c
}

#[test]
fn a_tail_delivers_every_record_in_order_and_only_once_durable() {
    let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config(Path::new("/t"))).unwrap();
    const N: u64 = 3000;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=N {
                wal.append(Record::new(TY, &i.to_le_bytes().repeat(1 + (i % 9) as usize))).unwrap();
                if i % 37 == 0 {
                    wal.sync().unwrap();
                }
            }
            wal.sync().unwrap();
        });
        let mut tail = wal.tail(Lsn::FIRST);
        for i in 1..=N {
            let record = tail.next_timeout(Duration::from_secs(10)).unwrap().expect("the writer goes on");
            assert_eq!(record.lsn, Lsn(i));
            assert!(record.lsn <= wal.durable_lsn(), "{} delivered before it was durable", record.lsn);
            assert_eq!(&record.payload[..8], &i.to_le_bytes());
        }
        assert_eq!(tail.cursor(), Lsn(N + 1));
    });
    assert!(wal.segments().len() > 3, "the tail followed several rolls");
}

#[test]
fn a_watch_for_an_lsn_not_yet_issued_wakes_once_another_thread_makes_it_durable() {
    let wal = SegmentedWal::open_with(SimStorage::new(2, FaultConfig::default()), config(Path::new("/watch"))).unwrap();
    const N: u64 = 200;
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // Each watch starts before its LSN exists; nothing but the appender's syncs wakes it.
            for i in 1..=N {
                assert!(wal.watch_durable(Lsn(i), Duration::MAX).unwrap(), "a watch without end returns only once durable");
                assert!(wal.durable_lsn() >= Lsn(i));
            }
        });
        for i in 1..=N {
            wal.append_durable(Record::new(TY, &i.to_le_bytes())).unwrap();
        }
        watcher.join().unwrap();
    });
}

/// The edges of a watch's arguments: a zero timeout answers at once (either way), LSN 0 and
/// a durable LSN are durable, and an LSN that can never be issued (`u64::MAX`) times out
/// rather than being refused or waiting past its timeout.
#[test]
fn a_watch_with_a_zero_timeout_or_an_unreachable_lsn_answers_without_sleeping_past_its_timeout() {
    let wal = SegmentedWal::open_with(SimStorage::new(3, FaultConfig::default()), config(Path::new("/edges"))).unwrap();
    assert!(!wal.watch_durable(Lsn(1), Duration::ZERO).unwrap(), "nothing appended yet");
    assert!(wal.watch_durable(Lsn(0), Duration::ZERO).unwrap(), "LSN 0 precedes every record");
    wal.append_durable(Record::new(TY, b"one")).unwrap();
    assert!(wal.watch_durable(Lsn(1), Duration::ZERO).unwrap());
    assert!(wal.watch_durable(Lsn(1), Duration::MAX).unwrap(), "durable already: no wait at all");
    assert!(!wal.watch_durable(Lsn(u64::MAX), Duration::from_millis(5)).unwrap());
    assert!(!wal.watch_durable(Lsn(2), Duration::from_millis(5)).unwrap(), "the next LSN, not issued");
}

/// Many threads watching LSNs the log will never reach, without end or with a timeout no
/// `Instant` can hold, all wake with the poison once a sync fails: none is left asleep.
#[test]
fn many_watchers_without_end_all_wake_with_the_poison() {
    let faulty = FaultyStorage::new(SimStorage::new(4, FaultConfig::default()));
    let wal = SegmentedWal::open_with(faulty.clone(), config(Path::new("/watchers"))).unwrap();
    wal.append_durable(Record::new(TY, b"durable")).unwrap();
    let lsns = [Lsn(2), Lsn(3), Lsn(1000), Lsn(u64::MAX)];
    let timeouts = [Duration::MAX, Duration::from_secs(u64::MAX / 2), Duration::from_secs(3600)];
    let ready = std::sync::Barrier::new(lsns.len() * timeouts.len() + 1);
    std::thread::scope(|s| {
        let watchers: Vec<_> = lsns
            .iter()
            .flat_map(|&lsn| timeouts.iter().map(move |&timeout| (lsn, timeout)))
            .map(|(lsn, timeout)| {
                let (wal, ready) = (&wal, &ready);
                s.spawn(move || {
                    ready.wait();
                    (lsn, wal.watch_durable(lsn, timeout))
                })
            })
            .collect();
        ready.wait();
        faulty.fail_once(FaultOp::SyncData, 0, EIO);
        assert!(wal.append_durable(Record::new(TY, b"lost")).is_err(), "the failed sync poisons");
        for watcher in watchers {
            let (lsn, watched) = watcher.join().unwrap();
            assert!(matches!(watched, Err(WalError::Poisoned { .. })), "a watch for {lsn}: {watched:?}");
        }
    });
    assert!(wal.watch_durable(Lsn(1), Duration::MAX).unwrap(), "what was durable before the poison still is");
}

#[test]
fn a_tail_resumes_from_its_cursor_and_times_out_when_caught_up() {
    let dir = Path::new("/resume");
    let sim = SimStorage::new(2, FaultConfig::default());
    let cursor = {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        for i in 0..100u32 {
            wal.append(Record::new(TY, &i.to_le_bytes())).unwrap();
        }
        wal.sync().unwrap();
        let mut tail = wal.tail(Lsn::FIRST);
        for _ in 0..40 {
            tail.next_timeout(Duration::from_secs(1)).unwrap().unwrap();
        }
        tail.cursor()
    };
    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    let mut tail = wal.tail(cursor);
    assert_eq!(tail.next_timeout(Duration::from_secs(1)).unwrap().unwrap().lsn, Lsn(41));
    for _ in 42..=100 {
        tail.next_timeout(Duration::from_secs(1)).unwrap().unwrap();
    }
    assert!(tail.next_timeout(Duration::from_millis(20)).unwrap().is_none(), "caught up: nothing new");
    // Appended but not synced: still nothing for the tail, which never asks for a sync.
    wal.append(Record::new(TY, b"pending")).unwrap();
    assert!(tail.next_timeout(Duration::from_millis(20)).unwrap().is_none());
    wal.sync().unwrap();
    assert_eq!(&tail.next_timeout(Duration::from_secs(1)).unwrap().unwrap().payload, b"pending");
}

#[test]
fn a_tail_whose_cursor_was_truncated_away_is_an_error() {
    let wal = SegmentedWal::open_with(SimStorage::new(3, FaultConfig::default()), config(Path::new("/trunc"))).unwrap();
    for i in 0..2000u32 {
        wal.append(Record::new(TY, &i.to_le_bytes().repeat(20))).unwrap();
    }
    let last = wal.sync().unwrap();
    assert!(wal.truncate_before(last).unwrap() > 0);
    let err = wal.tail(Lsn(2)).next_timeout(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, WalError::LsnNotRetained { .. }), "{err}");
}

#[test]
fn a_tail_keeps_delivering_while_segments_behind_it_are_truncated() {
    let wal = SegmentedWal::open_with(SimStorage::new(4, FaultConfig::default()), config(Path::new("/follow"))).unwrap();
    const N: u64 = 4000;
    let consumed = AtomicU64::new(1);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=N {
                wal.append(Record::new(TY, &i.to_le_bytes().repeat(1 + (i % 5) as usize))).unwrap();
                if i % 41 == 0 {
                    wal.sync().unwrap();
                    // Keep the tail close behind, so that truncation happens while it reads.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while consumed.load(Ordering::Acquire) + 400 < i && std::time::Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                    // A checkpoint at what the subscriber has consumed: everything before it may go.
                    wal.truncate_before(Lsn(consumed.load(Ordering::Acquire))).unwrap();
                }
            }
            wal.sync().unwrap();
        });
        let mut tail = wal.tail(Lsn::FIRST);
        for i in 1..=N {
            let record = tail.next_timeout(Duration::from_secs(10)).unwrap().expect("the writer goes on");
            assert_eq!(record.lsn, Lsn(i));
            assert_eq!(&record.payload[..8], &i.to_le_bytes());
            consumed.store(tail.cursor().0, Ordering::Release);
        }
    });
    assert!(wal.segments().first().unwrap().first_lsn > Lsn(N / 2), "segments behind the tail were truncated");
}

/// Found by an adversarial review: a tail far behind read up to 1024 records into memory
/// whatever their size (800 MiB for a log of 4 MiB records). What one refill reads is bounded
/// by bytes too.
#[test]
fn a_tail_far_behind_a_log_of_large_records_reads_a_few_of_them_at_a_time() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let mut c = config(Path::new("/t"));
    (c.segment_bytes_target, c.batch_bytes_max) = (64 << 20, 1 << 20);
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    const RECORDS: u64 = 48;
    for i in 0..RECORDS {
        wal.append(Record::new(TY, &vec![i as u8; 1 << 20])).unwrap();
    }
    wal.sync().unwrap();
    let before = sim.bytes_read();
    let mut tail = wal.tail(Lsn::FIRST);
    assert_eq!(tail.next_timeout(Duration::from_secs(10)).unwrap().unwrap().payload, vec![0u8; 1 << 20]);
    let read = sim.bytes_read() - before;
    assert!(read < 16 << 20, "one delivery read {read} bytes of a {} MiB log", RECORDS);
    for i in 1..RECORDS {
        assert_eq!(tail.next_timeout(Duration::from_secs(10)).unwrap().unwrap().payload[0], i as u8);
    }
}

/// Found by an adversarial review: a follower that waits without end, `Duration::MAX` (or
/// any timeout that runs past what an `Instant` can hold), panicked before waiting, where the
/// deadline was computed. Such a wait has no deadline: it returns once a record is durable.
#[test]
fn a_tail_may_wait_for_the_next_record_without_a_deadline() {
    let wal = SegmentedWal::open_with(SimStorage::new(5, FaultConfig::default()), config(Path::new("/forever"))).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            wal.append_durable(Record::new(TY, b"later")).unwrap();
        });
        let mut tail = wal.tail(Lsn::FIRST);
        let record = tail.next_timeout(Duration::MAX).unwrap().expect("no deadline: waits until a record is durable");
        assert_eq!((record.lsn, &record.payload[..]), (Lsn(1), &b"later"[..]));
    });
}

// Found by the `readers` fuzz target: a refill that met damage returned the error at once and
// kept the intact records it had read before it, so a subscriber that stops at an error (as
// it should at corruption) never saw records that precede the damage, up to a refill's worth.
// Damage to a segment's end frame is met after its last record: a reader started after that
// record, on the next segment, would not meet it again.
#[test]
fn a_tail_delivers_every_record_before_damage_ahead_of_the_error() {
    for damage_end_frame in [false, true] {
        let dir = Path::new("/damaged");
        let sim = SimStorage::new(6, FaultConfig::default());
        let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
        for i in 0..200u32 {
            wal.append(Record::new(TY, &i.to_le_bytes().repeat(50))).unwrap();
        }
        wal.sync().unwrap();
        // Bit rot after the log was opened: in the last record of the second segment, or in
        // the end frame after it.
        let damaged = wal.segments()[1];
        let last = wal.lazy_reader(damaged.end_lsn.prev().unwrap()).unwrap().next_header().unwrap().unwrap();
        let at = last.offset() as usize + if damage_end_frame { 48 + last.stored_len as usize + 4 } else { 60 };
        let path = nodedb_wal::segment::path(dir, damaged.id);
        let mut bytes = sim.read_file(&path).unwrap();
        bytes[at] ^= 1;
        sim.write_file(&path, &bytes);
        let mut tail = wal.tail(Lsn::FIRST);
        let mut delivered = 0;
        let err = loop {
            match tail.next_timeout(Duration::ZERO) {
                Ok(Some(record)) => {
                    delivered += 1;
                    assert_eq!(record.lsn, Lsn(delivered));
                }
                Ok(None) => panic!("the damage went unnoticed"),
                Err(err) => break err,
            }
        };
        let intact = if damage_end_frame { last.lsn.0 } else { last.lsn.0 - 1 };
        assert_eq!(delivered, intact, "every record before the damage comes before the error");
        assert!(matches!(err, WalError::Corruption { segment, .. } if segment == damaged.id), "{err:?}");
    }
}

/// A tail holding the log through an `Arc` lives in the subscriber's own thread, follows every
/// record there, and keeps the log open (its directory locked) after every other handle is gone,
/// until it is dropped.
#[test]
fn a_shared_tail_follows_on_its_own_thread_and_keeps_the_log_open_until_dropped() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/shared");
    let wal = std::sync::Arc::new(SegmentedWal::open_with(sim.clone(), config(dir)).unwrap());
    let mut tail = std::sync::Arc::clone(&wal).tail_shared(Lsn::FIRST);
    const N: u64 = 500;
    let follower = std::thread::spawn(move || {
        let mut lsns = Vec::new();
        while lsns.len() < N as usize {
            if let Some(record) = tail.next_timeout(Duration::from_secs(10)).unwrap() {
                lsns.push(record.lsn.0);
            }
        }
        (lsns, tail)
    });
    for i in 1..=N {
        wal.append_durable(Record::new(TY, &i.to_le_bytes())).unwrap();
    }
    let (lsns, tail) = follower.join().unwrap();
    assert_eq!(lsns, (1..=N).collect::<Vec<_>>());
    drop(wal);
    let err = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "the tail keeps the log open: {err}");
    drop(tail);
    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, Lsn(N));
}

/// The payload of LSN `lsn` in [`a_tail_behind_a_poisoned_log_delivers_every_durable_record_then_the_poison`].
fn named(lsn: u64) -> Vec<u8> {
    lsn.to_le_bytes().repeat(1 + (lsn % 5) as usize)
}

/// Appends until the log is poisoned: syncs every 30 records and truncates at what the tail
/// consumed every 90, with files kept for reuse. Poisons the log with a failed sync itself if
/// the armed fault has not hit by `last`.
fn append_until_poisoned(
    wal: &SegmentedWal<FaultyStorage<SimStorage>>,
    faulty: &FaultyStorage<SimStorage>,
    consumed: &AtomicU64,
    last: u64,
) {
    for i in 1..=last {
        if wal.append(Record::new(TY, &named(i))).is_err() {
            return;
        }
        if i % 30 == 0 {
            if wal.sync().is_err() {
                return;
            }
            if i % 90 == 0 {
                // A failed rename while truncating is reported and the log goes on; a
                // failure that poisons it stops the next append.
                let _ = wal.truncate_before(Lsn(consumed.load(Ordering::Acquire)));
            }
        }
    }
    faulty.fail_once(FaultOp::SyncData, 0, EIO);
    assert!(wal.append_durable(Record::new(TY, &named(last + 1))).is_err());
}

/// A tail on its own thread, behind a log that a failed step poisons (an fdatasync, a write, a
/// directory sync or a rename, at points spread over rolls, truncations and reuse): it
/// delivers every durable record from its cursor on, in order, each the one appended, then the
/// poison error, and the error again at the next call; never a record past the durable LSN.
#[test]
fn a_tail_behind_a_poisoned_log_delivers_every_durable_record_then_the_poison() {
    for round in 0..32u64 {
        let faulty = FaultyStorage::new(SimStorage::new(40 + round, FaultConfig::default()));
        let config = SegmentedWalConfig { recycle_segments: 2, ..config(Path::new("/poisoned")) };
        let wal = Arc::new(SegmentedWal::open_with(faulty.clone(), config).unwrap());
        let op = [FaultOp::SyncData, FaultOp::Write, FaultOp::SyncDir, FaultOp::Rename][(round % 4) as usize];
        faulty.fail_once(op, round * 2, EIO);
        let consumed = Arc::new(AtomicU64::new(1));
        let mut tail = Arc::clone(&wal).tail_shared(Lsn::FIRST);
        let follower = {
            let consumed = Arc::clone(&consumed);
            std::thread::spawn(move || {
                loop {
                    match tail.next_timeout(Duration::from_secs(60)) {
                        Ok(Some(record)) => {
                            assert_eq!(record.lsn, Lsn(consumed.load(Ordering::Acquire)), "in order, no gap");
                            assert_eq!(record.payload, named(record.lsn.0), "the record appended at {}", record.lsn);
                            consumed.store(tail.cursor().0, Ordering::Release);
                        }
                        Ok(None) => panic!("a tail behind a poisoned log waited out its timeout"),
                        Err(err) => return (err, tail.next_timeout(Duration::from_secs(60)).map(|r| r.map(|r| r.lsn))),
                    }
                }
            })
        };
        append_until_poisoned(&wal, &faulty, &consumed, 3000);
        let (err, again) = follower.join().unwrap();
        assert!(matches!(err, WalError::Poisoned { .. }), "round {round} ({op:?}): {err}");
        assert!(matches!(again, Err(WalError::Poisoned { .. })), "round {round}: {again:?}");
        assert_eq!(consumed.load(Ordering::Acquire), wal.durable_lsn().0 + 1, "round {round} ({op:?}): every durable record, nothing past");
    }
}

/// A log whose records `retyped` (LSNs) were written by a newer build, with an optional type in
/// this crate's range that readers skip; the others are `TY`, their payload their LSN.
fn log_with_skipped_records(sim: &SimStorage, dir: &Path, records: u64, retyped: &[u64]) {
    use nodedb_wal::format::frame::{decode_frame, seal_frame};
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    for lsn in 1..=records {
        wal.append_durable(Record::new(TY, &lsn.to_le_bytes())).unwrap();
    }
    drop(wal);
    let path = dir.join(format!("{:020}.wal", 1));
    let mut bytes = sim.read_file(&path).unwrap();
    let mut at = 16;
    while let Ok(h) = decode_frame(&bytes[at..]) {
        if !h.record_type.is_meta() && retyped.contains(&h.lsn.0) {
            let newer = RecordType::optional(0x0050);
            bytes[at + 6..at + 8].copy_from_slice(&newer.0.to_le_bytes());
            seal_frame(&mut bytes[at..at + h.frame_len()], newer);
        }
        at += h.frame_len();
    }
    sim.write_file(&path, &bytes);
}

// Found by a review: the records a reader skips (a newer build's optional types) never moved
// the tail's cursor, so a tail caught up behind them found its cursor durable at every call,
// read nothing, and returned at once: it spun instead of waiting, whatever its timeout, and
// its cursor named a record it would never deliver.
#[test]
fn a_tail_caught_up_behind_skipped_records_moves_its_cursor_past_them_and_waits() {
    let dir = Path::new("/skipped");
    let sim = SimStorage::new(6, FaultConfig::default());
    log_with_skipped_records(&sim, dir, 3, &[2, 3]);
    let wal = Arc::new(SegmentedWal::open_with(sim, config(dir)).unwrap());
    let mut tail = Arc::clone(&wal).tail_shared(Lsn::FIRST);
    assert_eq!(tail.next_timeout(Duration::from_secs(60)).unwrap().map(|r| r.lsn), Some(Lsn(1)));
    assert!(tail.next_timeout(Duration::ZERO).unwrap().is_none(), "nothing more to deliver");
    assert_eq!(tail.cursor(), Lsn(4), "past the skipped records: the next one it can deliver");
    // Caught up, the tail waits for the next durable record instead of answering at once.
    let follower = std::thread::spawn(move || tail.next_timeout(Duration::MAX).map(|r| r.map(|r| r.lsn)));
    let next = wal.append_durable(Record::new(TY, b"next")).unwrap();
    assert_eq!(follower.join().unwrap().unwrap(), Some(next));
}

// The same for a subscriber of its own over a lazy reader or `read_from` (the pattern
// `watch_durable` documents): the last record's LSN plus one names a skipped record, which
// `watch_durable` then finds durable at every call. `next_lsn` is past it.
#[test]
fn readers_tell_a_subscriber_the_lsn_past_the_records_they_skip() {
    let dir = Path::new("/skipped-readers");
    let sim = SimStorage::new(7, FaultConfig::default());
    log_with_skipped_records(&sim, dir, 3, &[2, 3]);
    // The lazy reader would take the headers from the sealed segment's index, written before
    // the records were retyped: without it, it reads them from the segment.
    let _ = sim.remove(&dir.join(format!("{:020}.hdrs", 1)));
    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    let mut lazy = wal.lazy_reader(Lsn::FIRST).unwrap();
    assert_eq!(lazy.next_lsn(), None, "nothing read yet");
    assert_eq!(lazy.next_header().unwrap().map(|h| h.lsn), Some(Lsn(1)));
    assert_eq!(lazy.next_lsn(), Some(Lsn(2)));
    assert!(lazy.next_header().unwrap().is_none());
    assert_eq!(lazy.next_lsn(), Some(Lsn(4)), "past the two records it skipped");
    let mut iter = wal.read_from(Lsn::FIRST).unwrap();
    assert_eq!(iter.next().map(|r| r.unwrap().lsn), Some(Lsn(1)));
    assert!(iter.next().is_none());
    assert_eq!(iter.next_lsn(), Some(Lsn(4)));
    // A subscriber waiting from there waits for a record to come, not for the skipped ones.
    assert!(!wal.watch_durable(Lsn(4), Duration::ZERO).unwrap(), "nothing durable at LSN 4 yet");
}
