//! Waits on durability: futures from many executors, a panicking waker, waits for LSNs never
//! issued, and tails' waits racing the flusher.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{DurableFuture, Lsn, Record, SegmentedWal, SimStorage, WalError};

use crate::support::{HANG, TY, Unpark, block_on, config, payload_of, rounds, settles_unreferenced, unpark_here, watchdog, xorshift};

/// Many executors on many threads wait for the same and for different LSNs; futures are
/// dropped after one poll (a cancelled branch), polled again with another waker, and moved to
/// another thread half way. Every future that is driven completes with `Ok` and only once its
/// LSN is durable, and no waker stays with the log once its future is gone.
#[test]
fn durable_futures_from_many_executors_all_complete_and_leave_no_waker_behind() {
    watchdog("durable futures", || {
        for round in 0..rounds(3) {
            let wal = SegmentedWal::open_with(SimStorage::new(round, FaultConfig::default()), config("/futures")).unwrap();
            let stop = AtomicBool::new(false);
            let tasks = Mutex::new(Vec::<Arc<Unpark>>::new());
            std::thread::scope(|s| {
                s.spawn(|| {
                    // Appends only: every sync is asked for by a future.
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        wal.append(Record::new(TY, &payload_of(i))).unwrap();
                        if i.is_multiple_of(64) {
                            std::thread::yield_now();
                        }
                    }
                });
                let executors: Vec<_> = (0..6u64)
                    .map(|e| {
                        let (wal, tasks) = (&wal, &tasks);
                        s.spawn(move || {
                            let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (round << 8) ^ (e + 1);
                            for _ in 0..150 {
                                let issued = wal.next_lsn().0 - 1;
                                if issued == 0 {
                                    std::thread::yield_now();
                                    continue;
                                }
                                let lsn = Lsn(1 + xorshift(&mut rng) % issued);
                                let deadline = Instant::now() + HANG;
                                let task = unpark_here();
                                tasks.lock().unwrap().push(Arc::clone(&task));
                                let mut future = wal.durable(lsn).unwrap();
                                match xorshift(&mut rng) % 4 {
                                    // Driven to the end.
                                    0 => block_on(&mut future, &task, deadline).expect("hung").unwrap(),
                                    // Cancelled after one poll.
                                    1 => {
                                        let _ = Pin::new(&mut future).poll(&mut Context::from_waker(&Waker::from(Arc::clone(&task))));
                                        drop(future);
                                        continue;
                                    }
                                    // Polled with a waker that will never be used again, then
                                    // driven with another.
                                    2 => {
                                        let first = unpark_here();
                                        let _ = Pin::new(&mut future).poll(&mut Context::from_waker(&Waker::from(Arc::clone(&first))));
                                        tasks.lock().unwrap().push(first);
                                        block_on(&mut future, &task, deadline).expect("hung").unwrap();
                                    }
                                    // Polled here, finished on another thread.
                                    _ => {
                                        let _ = Pin::new(&mut future).poll(&mut Context::from_waker(&Waker::from(Arc::clone(&task))));
                                        std::thread::scope(|inner| {
                                            inner
                                                .spawn(move || {
                                                    let there = unpark_here();
                                                    block_on(&mut future, &there, deadline).expect("hung").unwrap();
                                                    assert!(settles_unreferenced(&there), "a waker kept after its future resolved");
                                                })
                                                .join()
                                                .unwrap();
                                        });
                                    }
                                }
                                assert!(wal.durable_lsn() >= lsn, "resolved before {lsn} was durable");
                            }
                            // Many futures on one LSN and on its neighbours, all pending at once.
                            while wal.next_lsn() == Lsn::FIRST {
                                std::thread::yield_now();
                            }
                            let top = wal.next_lsn().prev().expect("next_lsn is never ZERO");
                            let task = unpark_here();
                            let mut futures: Vec<DurableFuture<'_>> =
                                (0..64).map(|k| wal.durable(Lsn(top.0.saturating_sub(k % 3).max(1))).unwrap()).collect();
                            let deadline = Instant::now() + HANG;
                            for future in &mut futures {
                                block_on(future, &task, deadline).expect("hung").unwrap();
                            }
                            drop(futures);
                            assert!(settles_unreferenced(&task), "a waker kept after its futures resolved");
                        })
                    })
                    .collect();
                let outcomes: Vec<_> = executors.into_iter().map(|executor| executor.join()).collect();
                stop.store(true, Ordering::Relaxed);
                for outcome in outcomes {
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            });
            for task in tasks.into_inner().unwrap() {
                assert!(settles_unreferenced(&task), "round {round}: the log kept a waker of a finished or dropped future");
            }
            wal.close().unwrap();
        }
    });
}

/// A task whose waker panics, beside tasks whose wakers do not: the batch that wakes it is
/// still durable, the other tasks are woken, and the log goes on.
#[test]
fn a_panicking_waker_leaves_the_log_and_the_other_tasks_going() {
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("an executor's bug");
        }
    }
    watchdog("panicking waker", || {
        let wal = SegmentedWal::open_with(SimStorage::new(5, FaultConfig::default()), config("/panicky")).unwrap();
        for i in 1..=50u64 {
            let lsn = wal.append(Record::new(TY, &payload_of(i))).unwrap();
            let mut bad = wal.durable(lsn).unwrap();
            let bad_waker = Waker::from(Arc::new(Panics));
            assert!(Pin::new(&mut bad).poll(&mut Context::from_waker(&bad_waker)).is_pending() || wal.durable_lsn() >= lsn);
            let task = unpark_here();
            let mut good = wal.durable(lsn).unwrap();
            block_on(&mut good, &task, Instant::now() + HANG).expect("hung").unwrap();
            // The panicking task's future resolves too once polled again.
            assert!(matches!(Pin::new(&mut bad).poll(&mut Context::from_waker(Waker::noop())), Poll::Ready(Ok(()))));
        }
        assert!(!wal.stats().poisoned);
        wal.append_durable(Record::new(TY, b"after")).unwrap();
    });
}

/// A wait for an LSN the log never issued is `LsnNotIssued` on a quiet log and a busy one, for
/// every form of wait that asks for a sync; a tail's wait (`await_durable`), which asks for
/// none, times out with any timeout from zero up, and a wait without end, or with a timeout
/// past what an `Instant` can hold, is released by a later sync.
#[test]
fn waits_for_unissued_lsns_are_typed_errors_and_timeouts_of_any_size_end() {
    watchdog("unissued and timeouts", || {
        let wal = SegmentedWal::open_with(SimStorage::new(6, FaultConfig::default()), config("/unissued")).unwrap();
        wal.append_durable(Record::new(TY, &payload_of(1))).unwrap();
        let not_issued = |r: &Result<(), WalError>| matches!(r, Err(WalError::LsnNotIssued { .. }));
        for busy in [false, true] {
            if busy {
                // A batch of several records: the log no longer counts as quiet.
                let batch = [Record::new(TY, b"a"), Record::new(TY, b"b"), Record::new(TY, b"c")];
                let lsns = wal.append_batch(&batch).unwrap();
                wal.wait_durable(*lsns.end()).unwrap();
            }
            let next = wal.next_lsn();
            for lsn in [next, next.next(), Lsn(u64::MAX)] {
                assert!(not_issued(&wal.wait_durable(lsn)), "busy {busy}: wait_durable({lsn})");
                assert!(not_issued(&wal.request_sync(lsn)), "busy {busy}: request_sync({lsn})");
                assert!(matches!(wal.durable(lsn), Err(WalError::LsnNotIssued { .. })), "busy {busy}: durable({lsn})");
                for timeout in [Duration::ZERO, Duration::from_nanos(1), Duration::from_millis(1)] {
                    assert!(wal.tail(lsn).next_timeout(timeout).unwrap().is_none(), "{lsn} is not durable");
                }
            }
        }
        // A follower waiting without end (and one with a timeout past any deadline) for an LSN
        // not yet issued is released once it is durable.
        let wal = Arc::new(wal);
        let awaited = wal.next_lsn();
        let followers: Vec<_> = [Duration::MAX, Duration::from_secs(u64::MAX / 4), Duration::from_secs(1 << 40)]
            .into_iter()
            .map(|timeout| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || wal.tail(awaited).next_timeout(timeout).map(|r| r.map(|r| r.lsn)))
            })
            .collect();
        assert_eq!(wal.append_durable(Record::new(TY, b"awaited")).unwrap(), awaited);
        for follower in followers {
            assert_eq!(follower.join().unwrap().unwrap(), Some(awaited));
        }
    });
}

/// Tails with tiny and large timeouts race a flusher syncing small batches: a record is only
/// ever delivered once durable, and each wait ends.
#[test]
fn await_durable_with_any_timeout_races_the_flusher_and_never_says_durable_too_early() {
    watchdog("await_durable race", || {
        let wal = SegmentedWal::open_with(SimStorage::new(8, FaultConfig::default()), config("/await")).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..=3000u64 {
                    let lsn = wal.append(Record::new(TY, &payload_of(i))).unwrap();
                    if i % 7 == 0 {
                        wal.wait_durable(lsn).unwrap();
                    }
                }
                wal.sync().unwrap();
                done.store(true, Ordering::SeqCst);
            });
            for f in 0..4u64 {
                let (wal, done) = (&wal, &done);
                s.spawn(move || {
                    let mut rng = 77 + f;
                    while !done.load(Ordering::SeqCst) {
                        let lsn = Lsn(wal.durable_lsn().0 + 1 + xorshift(&mut rng) % 16);
                        let timeout = match xorshift(&mut rng) % 3 {
                            0 => Duration::ZERO,
                            1 => Duration::from_nanos(xorshift(&mut rng) % 50_000),
                            _ => Duration::from_secs(3600),
                        };
                        // A long wait must end: every seventh record is synced, and the last
                        // sync covers everything appended.
                        if timeout > Duration::from_secs(1) && lsn.0 > 3000 {
                            continue;
                        }
                        if let Some(record) = wal.tail(lsn).next_timeout(timeout).unwrap() {
                            assert_eq!(record.lsn, lsn);
                            assert!(wal.durable_lsn() >= lsn, "{lsn} delivered before it was durable");
                        }
                    }
                });
            }
        });
    });
}
