//! Adversarial concurrency: every wait on the log ends (durable, or the poison error), never
//! hangs and never keeps a task's waker once its future is gone; readers and tails running
//! beside rolls and truncations hand out records in order with dense LSNs or a typed error;
//! a panic in a caller's closure leaves the log usable.
//!
//! Every scenario runs under a watchdog that fails the test if it does not finish (a hang),
//! never on how long it took. `NODEDB_WAL_RACE_ROUNDS` widens the seeded sweeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    DurableFuture, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError,
};

const TY: RecordType = RecordType::optional(0x100);
/// How long a scenario may run before it counts as hung.
const HANG: Duration = Duration::from_secs(120);

fn rounds(default: u64) -> u64 {
    std::env::var("NODEDB_WAL_RACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(dir: &str) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 16 * 1024;
    c.batch_bytes_max = 4 * 1024;
    c
}

/// Runs `f` on its own thread and fails the test if it has not finished within [`HANG`] per
/// round of the sweep.
fn watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    // Each round of a widened sweep gets its own allowance.
    match rx.recv_timeout(HANG * u32::try_from(rounds(1).max(1)).unwrap_or(u32::MAX)) {
        Ok(value) => {
            handle.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(handle.join().unwrap_err()),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hung"),
    }
}

/// The payload of the record at `lsn` in a single-writer log: says which LSN it is.
fn payload_of(lsn: u64) -> Vec<u8> {
    lsn.to_le_bytes().repeat(1 + (lsn % 40) as usize)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A task of a thread-parking executor; counts its wake-ups.
struct Unpark {
    thread: std::thread::Thread,
    woken: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn unpark_here() -> Arc<Unpark> {
    Arc::new(Unpark { thread: std::thread::current(), woken: AtomicUsize::new(0) })
}

/// Polls `future` to completion on this thread with `task`'s waker; `None` if it is still
/// pending at `deadline` (a hang: the callers fail the test on it).
fn block_on<F: Future + Unpin>(future: &mut F, task: &Arc<Unpark>, deadline: Instant) -> Option<F::Output> {
    let waker = Waker::from(Arc::clone(task));
    loop {
        if let Poll::Ready(output) = Pin::new(&mut *future).poll(&mut Context::from_waker(&waker)) {
            return Some(output);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left.min(Duration::from_millis(100)));
    }
}

/// Waits until nothing but the test holds `task`: the log kept no clone of its waker. A sync
/// may still hold one for a moment, between taking it off the list and waking it.
fn settles_unreferenced(task: &Arc<Unpark>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(task) > 1 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

fn poisoned<T: std::fmt::Debug>(result: &Result<T, WalError>) -> bool {
    matches!(result, Err(WalError::Poisoned { .. }))
}

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
                            let top = Lsn(wal.next_lsn().0 - 1);
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
            for lsn in [next, Lsn(next.0 + 1), Lsn(u64::MAX)] {
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

/// What a reader handed out, checked against the single writer's payloads: LSNs dense from
/// where it started, each record the one appended at its LSN. A typed "no longer retained"
/// error may end it.
fn check_run(what: &str, from: Lsn, records: impl Iterator<Item = Result<(Lsn, Vec<u8>), WalError>>, max: usize) -> usize {
    let mut expected = from.0;
    let mut n = 0;
    for record in records.take(max) {
        match record {
            Ok((lsn, payload)) => {
                assert_eq!(lsn.0, expected, "{what} from {from}: a gap or a record out of order");
                assert_eq!(payload, payload_of(lsn.0), "{what} from {from}: the wrong record at {lsn}");
                expected += 1;
                n += 1;
            }
            Err(WalError::SegmentTruncated { .. } | WalError::LsnNotRetained { .. }) => break,
            Err(err) => panic!("{what} from {from} failed: {err}"),
        }
    }
    n
}

/// The first `max` records a parallel replay from `from` with `threads` decoders applies, and
/// the error that stopped it before them, if any.
fn replay_some<S: Storage>(wal: &SegmentedWal<S>, from: Lsn, threads: usize, max: usize) -> Vec<Result<(Lsn, Vec<u8>), WalError>> {
    let mut records = Vec::new();
    let replayed = wal.replay_parallel(from, threads, |r| {
        records.push(Ok((r.lsn, r.payload.to_vec())));
        if records.len() < max { Ok(()) } else { Err(WalError::Closed) }
    });
    if let Err(err) = replayed
        && !matches!(err, WalError::Closed)
    {
        records.push(Err(err));
    }
    records
}

/// `read_from`, the lazy reader and a tail run while one writer rolls segments every few
/// batches and truncates behind itself (keeping files for reuse): each hands out records in
/// order, dense, each the one appended at its LSN, or stops with a typed error; none hangs.
fn readers_beside_rolls_and_truncation<S: Storage>(
    open: impl Fn(u64, SegmentedWalConfig) -> SegmentedWal<S> + Send + 'static,
    recycle_segments: usize,
) {
    watchdog("readers", move || {
        for round in 0..rounds(4) {
            let mut c = config("/readers");
            c.recycle_segments = recycle_segments;
            // Odd rounds encrypted: replay then runs decoder threads whatever the cores.
            if round % 2 == 1 {
                c.key_ring = encrypted("/readers").key_ring;
            }
            let wal = open(round, c);
            const N: u64 = 3000;
            let done = AtomicBool::new(false);
            let read = AtomicU64::new(0);
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 1..=N {
                        assert_eq!(wal.append(Record::new(TY, &payload_of(i))).unwrap(), Lsn(i));
                        if i % 50 == 0 {
                            let durable = wal.sync().unwrap();
                            if i % 200 == 0 {
                                wal.truncate_before(Lsn(durable.0.saturating_sub(300).max(1))).unwrap();
                            }
                        }
                    }
                    wal.sync().unwrap();
                    done.store(true, Ordering::SeqCst);
                });
                for r in 0..4u64 {
                    let (wal, done, read) = (&wal, &done, &read);
                    s.spawn(move || {
                        let mut rng = 31 + r + round;
                        while !done.load(Ordering::SeqCst) {
                            let (oldest, durable) = (wal.oldest_lsn().0, wal.durable_lsn().0);
                            let from = Lsn(oldest + xorshift(&mut rng) % (durable.saturating_sub(oldest) + 1));
                            let n = match r {
                                0 => match wal.read_from(from) {
                                    Ok(it) => check_run("read_from", from, it.map(|r| r.map(|r| (r.lsn, r.payload.into_vec()))), 500),
                                    Err(WalError::LsnNotRetained { .. }) => 0,
                                    Err(err) => panic!("read_from({from}): {err}"),
                                },
                                1 => match wal.lazy_reader(from) {
                                    Ok(mut lazy) => {
                                        let records = std::iter::from_fn(|| match lazy.next_header() {
                                            Ok(Some(h)) => Some(lazy.payload().map(|p| (h.lsn, p))),
                                            Ok(None) => None,
                                            Err(err) => Some(Err(err)),
                                        });
                                        check_run("lazy", from, records, 500)
                                    }
                                    Err(WalError::LsnNotRetained { .. }) => 0,
                                    Err(err) => panic!("lazy_reader({from}): {err}"),
                                },
                                2 => {
                                    // With a key ring: decoder threads, each opening its
                                    // segment when its turn comes.
                                    check_run("replay", from, replay_some(wal, from, 4, 500).into_iter(), usize::MAX)
                                }
                                _ => {
                                    let mut tail = wal.tail(from);
                                    let records = std::iter::from_fn(|| match tail.next_timeout(Duration::from_millis(20)) {
                                        Ok(Some(r)) => Some(Ok((r.lsn, r.payload.into_vec()))),
                                        Ok(None) => None,
                                        Err(err) => Some(Err(err)),
                                    });
                                    check_run("tail", from, records, 2000)
                                }
                            };
                            read.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
            });
            assert!(read.load(Ordering::Relaxed) > 0, "the readers read something");
            // A tail from where the log now starts follows it to the end.
            let oldest = wal.oldest_lsn();
            let mut tail = wal.tail(oldest);
            let records = std::iter::from_fn(|| tail.next_timeout(Duration::from_secs(60)).transpose());
            let wanted = usize::try_from(N + 1 - oldest.0).unwrap();
            let n = check_run("final tail", oldest, records.map(|r| r.map(|r| (r.lsn, r.payload.into_vec()))), wanted);
            assert_eq!(oldest.0 + n as u64, N + 1, "round {round}");
        }
    });
}

#[test]
fn readers_and_tails_beside_rolls_and_truncation_read_dense_records_or_stop_typed_sim() {
    readers_beside_rolls_and_truncation(
        |round, c| SegmentedWal::open_with(SimStorage::new(200 + round, FaultConfig::default()), c).unwrap(),
        2,
    );
}

#[test]
fn readers_and_tails_beside_rolls_and_truncation_without_reuse_read_dense_records_or_stop_typed_sim() {
    readers_beside_rolls_and_truncation(
        |round, c| SegmentedWal::open_with(SimStorage::new(300 + round, FaultConfig::default()), c).unwrap(),
        0,
    );
}

#[test]
fn readers_and_tails_beside_rolls_and_truncation_read_dense_records_or_stop_typed_fs() {
    readers_beside_rolls_and_truncation(
        |round, mut c| {
            let tmp = tempfile::tempdir().unwrap();
            c.dir = tmp.path().join(format!("wal-{round}"));
            // Kept for the test's length: the log lives in it.
            std::mem::forget(tmp);
            SegmentedWal::open(c).unwrap()
        },
        2,
    );
}

fn encrypted(dir: &str) -> SegmentedWalConfig {
    let mut c = config(dir);
    // With a key ring, `replay_parallel` always runs its decoder threads, whatever the cores.
    c.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [3; 32]))));
    c
}

/// A panic in a caller's closure or loop over the log (a replay's apply callback, with decoder
/// threads working ahead; a tail loop; a reader loop) unwinds to the caller and leaves the log
/// working: appends are acknowledged and the log reads back whole.
#[test]
fn a_panic_in_a_replay_callback_a_tail_loop_or_a_reader_loop_leaves_the_log_usable() {
    watchdog("panics in callers", || {
        // Plaintext: a replay reads in sequence on few cores (with a read-ahead helper).
        for config in [config("/panics"), encrypted("/panics")] {
            panics_in_callers(config);
        }
    });
}

fn panics_in_callers(config: SegmentedWalConfig) {
    {
        let wal = SegmentedWal::open_with(SimStorage::new(9, FaultConfig::default()), config).unwrap();
        for i in 1..=3000u64 {
            wal.append(Record::new(TY, &payload_of(i))).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.segments().len() > 4);
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for at in [1u64, 700, 2999] {
            for threads in [1, 2, 4] {
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    wal.replay_parallel(Lsn::FIRST, threads, |r| {
                        if r.lsn.0 == at {
                            panic!("the apply callback failed");
                        }
                        Ok(())
                    })
                }));
                assert!(panicked.is_err(), "the panic reached the caller");
            }
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut tail = wal.tail(Lsn::FIRST);
                while let Some(r) = tail.next_timeout(Duration::from_secs(5)).unwrap() {
                    assert!(r.lsn.0 != at, "the subscriber failed");
                }
            }));
            assert!(panicked.is_err());
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for r in wal.read_from(Lsn::FIRST).unwrap() {
                    assert!(r.unwrap().lsn.0 != at, "the reader's caller failed");
                }
            }));
            assert!(panicked.is_err());
        }
        std::panic::set_hook(quiet);
        let lsn = wal.append_durable(Record::new(TY, &payload_of(3001))).unwrap();
        assert_eq!(lsn, Lsn(3001));
        let mut applied = 0u64;
        wal.replay_parallel(Lsn::FIRST, 4, |r| {
            applied += 1;
            assert_eq!(r.payload, payload_of(r.lsn.0));
            Ok(())
        })
        .unwrap();
        assert_eq!(applied, 3001);
        let mut tail = wal.tail(Lsn(2990));
        let records = std::iter::from_fn(|| tail.next_timeout(Duration::from_millis(50)).transpose());
        assert_eq!(check_run("tail", Lsn(2990), records.map(|r| r.map(|r| (r.lsn, r.payload.into_vec()))), usize::MAX), 12);
        wal.close().unwrap();
    }
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

/// A payload large enough (~3 KiB on average) that sealed segments get header indexes, and
/// that names its LSN: a record of a reused file's earlier life, or of another LSN, differs.
fn indexed_payload_of(lsn: u64) -> Vec<u8> {
    let mut bytes = lsn.to_le_bytes().repeat(1 + (lsn % 7) as usize);
    bytes.resize(1500 + (lsn as usize * 97) % 3000, lsn as u8);
    bytes
}

/// Like [`check_run`] for [`indexed_payload_of`]; `None` for a payload not read (a headers-only
/// scan that skipped it).
fn check_indexed(what: &str, from: Lsn, records: impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>>, max: usize) -> usize {
    let mut expected = from.0;
    for record in records.take(max) {
        match record {
            Ok((lsn, payload)) => {
                assert_eq!(lsn.0, expected, "{what} from {from}: a gap or a record out of order");
                if let Some(payload) = payload {
                    assert!(payload == indexed_payload_of(lsn.0), "{what} from {from}: the wrong record at {lsn}");
                }
                expected += 1;
            }
            Err(WalError::SegmentTruncated { .. } | WalError::LsnNotRetained { .. }) => break,
            Err(err) => panic!("{what} from {from} failed: {err}"),
        }
    }
    usize::try_from(expected - from.0).unwrap()
}

/// Owned records of a `WalIter` as [`check_indexed`] takes them.
fn owned<I: Iterator<Item = Result<nodedb_wal::WalRecord, WalError>>>(
    it: I,
) -> impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>> {
    it.map(|r| r.map(|r| (r.lsn, Some(r.payload.into_vec()))))
}

/// A lazy reader's records, reading every `every`th payload (none with 0).
fn lazy_records<S: Storage>(
    mut lazy: nodedb_wal::LazyWalReader<S>,
    every: u64,
) -> impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>> {
    std::iter::from_fn(move || match lazy.next_header() {
        Ok(Some(h)) if every > 0 && h.lsn.0 % every == 0 => Some(lazy.payload().map(|p| (h.lsn, Some(p)))),
        Ok(Some(h)) => Some(Ok((h.lsn, None))),
        Ok(None) => None,
        Err(err) => Some(Err(err)),
    })
}

/// The one writer of [`every_reader_beside_rolls_rotation_and_reuse`]: appends `n` records,
/// syncs every 20, truncates behind itself every 80 (files kept for reuse) and, with a key
/// ring, rotates to a new key every 150 records, so the next append rolls the segment.
fn churn<S: Storage>(wal: &SegmentedWal<S>, n: u64, ring: Option<&KeyRing>) {
    for i in 1..=n {
        assert_eq!(wal.append(Record::new(TY, &indexed_payload_of(i))).unwrap(), Lsn(i));
        if let Some(ring) = ring.filter(|_| i % 150 == 0) {
            let id = u32::try_from(i / 150 + 1).unwrap();
            ring.insert(id, SecureKey::from_bytes(&mut [id as u8; 32])).unwrap();
            ring.set_active(id).unwrap();
        }
        if i % 20 == 0 {
            let durable = wal.sync().unwrap();
            if i % 80 == 0 {
                wal.truncate_before(Lsn(durable.0.saturating_sub(300).max(1))).unwrap();
            }
        }
    }
    wal.sync().unwrap();
}

/// A reader that could not be made: its start truncated away meanwhile (0 records), or a
/// failure.
fn not_made(what: &str, from: Lsn, err: WalError) -> usize {
    match err {
        WalError::LsnNotRetained { .. } | WalError::SegmentTruncated { .. } => 0,
        err => panic!("{what}({from}): {err}"),
    }
}

/// One reader of kind `kind` made now from a random LSN the log holds, read to its end, to a
/// typed "not retained" stop or to `max` records; returns how many it handed out.
fn read_once<S: Storage + 'static>(wal: &Arc<SegmentedWal<S>>, kind: u64, rng: &mut u64) -> usize {
    let (oldest, durable) = (wal.oldest_lsn().0, wal.durable_lsn().0);
    let from = Lsn(oldest + xorshift(rng) % (durable.saturating_sub(oldest) + 1));
    let made = |what: &str, err: WalError| not_made(what, from, err);
    match kind {
        0 => wal.read_from(from).map_or_else(|e| made("read_from", e), |it| check_indexed("read_from", from, owned(it), 400)),
        1 => wal.read_mapped(from).map_or_else(|e| made("read_mapped", e), |it| check_indexed("read_mapped", from, owned(it), 400)),
        2 => wal.lazy_reader(from).map_or_else(|e| made("lazy_reader", e), |lazy| check_indexed("lazy", from, lazy_records(lazy, 3), 400)),
        3 => {
            wal.lazy_reader(from).map_or_else(|e| made("lazy_reader", e), |lazy| check_indexed("headers", from, lazy_records(lazy, 0), 400))
        }
        4 => {
            let records = replay_some(wal, from, 3, 300).into_iter().map(|r| r.map(|(lsn, payload)| (lsn, Some(payload))));
            check_indexed("replay", from, records, usize::MAX)
        }
        _ => {
            // A tail on its own thread, holding the log through its `Arc`.
            let mut tail = Arc::clone(wal).tail_shared(from);
            let records = std::thread::spawn(move || {
                std::iter::from_fn(|| tail.next_timeout(Duration::from_millis(20)).transpose())
                    .take(1500)
                    .map(|r| r.map(|r| (r.lsn, Some(r.payload.into_vec()))))
                    .collect::<Vec<_>>()
            });
            check_indexed("tail_shared", from, records.join().unwrap().into_iter(), usize::MAX)
        }
    }
}

/// A read-only look opened beside the owner (another process would do the same), read mapped
/// or headers-first from a random LSN it holds.
fn look_once<S: Storage + Clone>(wal: &SegmentedWal<S>, dir: &std::path::Path, ring: Option<Arc<KeyRing>>, rng: &mut u64) -> usize {
    let look = match ReadOnlyWal::open_with(wal.storage().clone(), dir, ring) {
        Ok(look) => look,
        Err(err) => panic!("a read-only look beside the writer: {err}"),
    };
    let info = look.recovery_info();
    let (first, last) = (info.first_lsn.0, info.last_lsn.0);
    if last < first {
        return 0;
    }
    let from = Lsn(first + xorshift(rng) % (last - first + 1));
    let made = |what: &str, err: WalError| not_made(what, from, err);
    if xorshift(rng).is_multiple_of(2) {
        look.read_mapped(from).map_or_else(|e| made("look mapped", e), |it| check_indexed("look mapped", from, owned(it), 400))
    } else {
        look.lazy_reader(from).map_or_else(|e| made("look lazy", e), |lazy| check_indexed("look lazy", from, lazy_records(lazy, 2), 400))
    }
}

/// Every kind of reader (owned, mapped, headers-first with and without payloads, a parallel
/// replay, a shared tail on its own thread, a read-only look) runs while one writer appends
/// records large enough for header indexes, rolls, truncates behind itself with files kept
/// and reused, and (encrypted rounds) rotates its key every few segments: each hands out
/// records in order, dense, each the one appended at its LSN (never one of a reused file's
/// earlier life), or stops with a typed error. Segments of 1 MiB or more in some rounds, so
/// that helpers read and check ahead.
fn every_reader_beside_rolls_rotation_and_reuse<S: Storage + Clone + 'static>(
    dir_of: impl Fn(u64) -> std::path::PathBuf + Send + 'static,
    open: impl Fn(u64, SegmentedWalConfig) -> SegmentedWal<S> + Send + 'static,
) {
    watchdog("every reader", move || {
        for round in 0..rounds(4) {
            let dir = dir_of(round);
            let mut c = config("");
            c.dir = dir.clone();
            c.recycle_segments = 2;
            c.segment_bytes_target = if round % 4 < 2 { 96 * 1024 } else { 2 << 20 };
            c.batch_bytes_max = 32 * 1024;
            let ring = (round % 2 == 1).then(|| Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [1; 32]))));
            c.key_ring = ring.clone();
            let wal = Arc::new(open(round, c));
            const N: u64 = 4000;
            let done = AtomicBool::new(false);
            let read = AtomicU64::new(0);
            std::thread::scope(|s| {
                s.spawn(|| {
                    churn(&wal, N, ring.as_deref());
                    done.store(true, Ordering::SeqCst);
                });
                for r in 0..7u64 {
                    let (wal, done, read, dir, ring) = (&wal, &done, &read, &dir, ring.clone());
                    s.spawn(move || {
                        let mut rng = 77 + r * 13 + round;
                        let mut kind = r;
                        // Until the writer is done and something was read: on the simulated
                        // disk the writer can finish before any reader was scheduled.
                        while !done.load(Ordering::SeqCst) || read.load(Ordering::Relaxed) == 0 {
                            let n = if kind % 7 == 6 {
                                look_once(wal, dir, ring.clone(), &mut rng)
                            } else {
                                read_once(wal, kind % 7, &mut rng)
                            };
                            read.fetch_add(n as u64, Ordering::Relaxed);
                            kind += 1;
                        }
                    });
                }
            });
            assert!(read.load(Ordering::Relaxed) > 0, "the readers read something");
            let oldest = wal.oldest_lsn();
            let all = check_indexed("final", oldest, owned(wal.read_mapped(oldest).unwrap()), usize::MAX);
            assert_eq!(oldest.0 + all as u64, N + 1, "round {round}");
            drop(wal);
            // On real files, a widened sweep would otherwise keep every round's log (the
            // simulation's path is not on disk).
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

#[test]
fn every_reader_beside_rolls_rotation_and_reuse_reads_dense_records_or_stops_typed_sim() {
    every_reader_beside_rolls_rotation_and_reuse(
        |round| format!("/every-reader-{round}").into(),
        |round, c| SegmentedWal::open_with(SimStorage::new(400 + round, FaultConfig::default()), c).unwrap(),
    );
}

/// On real files, so that sealed segments are mapped.
#[test]
fn every_reader_beside_rolls_rotation_and_reuse_reads_dense_records_or_stops_typed_fs() {
    every_reader_beside_rolls_rotation_and_reuse(
        {
            let tmp = tempfile::tempdir().unwrap();
            move |round| tmp.path().join(format!("wal-{round}"))
        },
        |_, c| SegmentedWal::open(SegmentedWalConfig { allow_buffered_fallback: true, ..c }).unwrap(),
    );
}
