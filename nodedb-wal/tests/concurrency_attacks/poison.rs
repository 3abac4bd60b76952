//! A failed step (fdatasync, write, directory sync) under load releases every waiter with the
//! poison error and loses no acknowledged record.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::{Lsn, Record, SegmentedWal, SimStorage, WalError};

use crate::support::{HANG, TY, block_on, config, poisoned, rounds, settles_unreferenced, unpark_here, watchdog};

/// The fault a round of [`a_failed_step_under_eight_appenders_and_truncation_releases_everyone_and_loses_no_acknowledged_record`] arms.
fn arm(faulty: &FaultyStorage<SimStorage>, round: u64) -> FaultOp {
    let (op, after) = match round % 3 {
        0 => (FaultOp::SyncData, 3 + round * 5),
        1 => (FaultOp::Write, 10 + round * 3),
        // A segment roll's directory sync (truncation's syncs count too).
        _ => (FaultOp::SyncDir, 2 + round),
    };
    faulty.fail_once(op, after, EIO);
    op
}

/// Eight threads append (most of them waiting for durability), two executors await futures and
/// a ninth thread truncates behind them, while an fdatasync, a write or a directory sync fails:
/// nobody hangs, every wait after the failure gets the poison error, every acknowledged record
/// not truncated away is there after reopening, and nothing was acknowledged past the durable
/// watermark at which the log was poisoned.
#[test]
fn a_failed_step_under_eight_appenders_and_truncation_releases_everyone_and_loses_no_acknowledged_record() {
    watchdog("poison under load", || {
        for round in 0..rounds(6) {
            let sim = SimStorage::new(100 + round, FaultConfig::default());
            let faulty = FaultyStorage::new(sim.clone());
            let op = arm(&faulty, round);
            let dir = "/poison";
            let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
            let acked = Mutex::new(Vec::<(Lsn, Vec<u8>)>::new());
            let checkpoint = AtomicU64::new(0);
            let truncation_failed = AtomicBool::new(false);
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let (wal, acked) = (&wal, &acked);
                    s.spawn(move || {
                        // Bounded: a fault that hits truncation leaves the log going.
                        for i in 0..1500 {
                            // Threads 6 and 7 now and then append records larger than a batch,
                            // which queue for their own buffers in turn.
                            let len = if t >= 6 && i % 4 == 0 { 9000 + (i % 3) as usize * 5000 } else { (i % 300) as usize };
                            let payload = format!("t{t} r{i} {}", "x".repeat(len)).into_bytes();
                            let result = match (t + i) % 3 {
                                0 => wal.append_durable(Record::new(TY, &payload)),
                                1 => wal.append(Record::new(TY, &payload)).and_then(|lsn| wal.wait_durable(lsn).map(|()| lsn)),
                                _ => wal.append(Record::new(TY, &payload)),
                            };
                            match result {
                                Ok(lsn) if (t + i) % 3 != 2 => acked.lock().unwrap().push((lsn, payload)),
                                Ok(_) => {}
                                Err(err) => {
                                    assert!(poisoned::<()>(&Err(err)), "round {round}: an error other than the poison");
                                    break;
                                }
                            }
                        }
                    });
                }
                for e in 0..2u64 {
                    let (wal, acked) = (&wal, &acked);
                    s.spawn(move || {
                        let task = unpark_here();
                        for i in 0..300 {
                            let payload = format!("e{e} r{i}").into_bytes();
                            let Ok(lsn) = wal.append(Record::new(TY, &payload)) else { break };
                            let mut future = wal.durable(lsn).unwrap();
                            match block_on(&mut future, &task, Instant::now() + HANG).expect("a future hung") {
                                Ok(()) => acked.lock().unwrap().push((lsn, payload)),
                                Err(err) => {
                                    assert!(poisoned::<()>(&Err(err)), "round {round}: a future failed otherwise");
                                    break;
                                }
                            }
                        }
                        assert!(settles_unreferenced(&task), "round {round}: a waker kept after poison");
                    });
                }
                let (wal, checkpoint, truncation_failed) = (&wal, &checkpoint, &truncation_failed);
                s.spawn(move || {
                    for _ in 0..2000 {
                        let at = Lsn(wal.durable_lsn().0.saturating_sub(200).max(1));
                        checkpoint.fetch_max(at.0, Ordering::SeqCst);
                        match wal.truncate_before(at) {
                            Ok(_) => {}
                            Err(WalError::Poisoned { .. }) => break,
                            // The armed fault may hit truncation's own directory sync.
                            Err(WalError::Io { op: nodedb_wal::IoOp::SyncDir, .. }) if op == FaultOp::SyncDir => {
                                truncation_failed.store(true, Ordering::SeqCst);
                            }
                            Err(err) => panic!("round {round}: truncation failed: {err}"),
                        }
                        std::thread::yield_now();
                    }
                });
            });
            assert_eq!(faulty.injected(), 1, "round {round}: the fault fired");
            let durable = wal.durable_lsn();
            // A failed step the log needs poisons it. Truncation's directory sync fails only
            // the truncation, and a failed write of a header index (which only speeds up
            // headers-only scans) is logged and skipped: the log goes on acknowledging.
            if !poisoned(&wal.sync()) {
                assert!(truncation_failed.into_inner() || op == FaultOp::Write, "round {round}: the log went on after a failed {op:?}");
                acked.lock().unwrap().push((wal.append_durable(Record::new(TY, b"goes on")).unwrap(), b"goes on".to_vec()));
            }
            let durable = durable.max(wal.durable_lsn());
            let acked = acked.into_inner().unwrap();
            assert!(acked.iter().all(|(lsn, _)| *lsn <= durable), "round {round}: acknowledged past the watermark");
            drop(wal);

            let reopened = SegmentedWal::open_with(sim, config(dir)).unwrap();
            let found: std::collections::HashMap<Lsn, Vec<u8>> = reopened
                .read_from(reopened.oldest_lsn())
                .unwrap()
                .map(|r| r.map(|r| (r.lsn, r.payload.into_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            let kept_from = checkpoint.load(Ordering::SeqCst);
            assert!(reopened.oldest_lsn().0 <= kept_from.max(1), "round {round}: truncated past its checkpoint");
            for (lsn, payload) in acked.iter().filter(|(lsn, _)| lsn.0 >= kept_from) {
                assert_eq!(found.get(lsn), Some(payload), "round {round}: acknowledged {lsn} lost or changed");
            }
            reopened.close().unwrap();
        }
    });
}

/// A tail waiting without end for a record that never becomes durable, because the fdatasync
/// that would cover it fails, is released with the poison error.
#[test]
fn a_tail_waiting_without_end_is_released_by_poison() {
    watchdog("tail and poison", || {
        let faulty = FaultyStorage::new(SimStorage::new(12, FaultConfig::default()));
        let wal = SegmentedWal::open_with(faulty.clone(), config("/tail-poison")).unwrap();
        let first = wal.append_durable(Record::new(TY, b"durable")).unwrap();
        std::thread::scope(|s| {
            let follower = s.spawn(|| {
                let mut tail = wal.tail(first);
                let delivered = tail.next_timeout(Duration::MAX).unwrap().map(|r| r.lsn);
                (delivered, tail.next_timeout(Duration::MAX))
            });
            faulty.fail_once(FaultOp::SyncData, 0, EIO);
            assert!(poisoned(&wal.append_durable(Record::new(TY, b"never durable"))));
            let (delivered, then) = follower.join().unwrap();
            assert_eq!(delivered, Some(first), "the durable record is delivered first");
            assert!(poisoned(&then), "{then:?}");
        });
    });
}
