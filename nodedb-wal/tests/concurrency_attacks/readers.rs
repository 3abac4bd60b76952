//! Readers, lazy readers, replays and tails beside rolls and truncation, with and without reuse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{Lsn, Record, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

use crate::support::{TY, check_run, config, encrypted, payload_of, replay_some, rounds, watchdog, xorshift};

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
            let running = AtomicU64::new(READERS);
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
                        // Half way, the writer lets the readers catch up before it goes on:
                        // on a busy machine it could otherwise finish before any reader ran,
                        // and the readers would have raced nothing (seen once under load,
                        // "the readers read something", one run of two with one test thread).
                        // (A reader gone before `done` panicked: its panic is the failure.)
                        if i == N / 2 {
                            while read.load(Ordering::SeqCst) == 0 && running.load(Ordering::SeqCst) == READERS {
                                std::thread::yield_now();
                            }
                        }
                    }
                    wal.sync().unwrap();
                    done.store(true, Ordering::SeqCst);
                });
                for r in 0..READERS {
                    let (wal, done, read, running) = (&wal, &done, &read, &running);
                    s.spawn(move || {
                        let _running = Running(running);
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
                            read.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    });
                }
            });
            assert!(read.load(Ordering::SeqCst) > 0, "the readers read something");
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

/// Reader threads: `read_from`, the lazy reader, a parallel replay and a tail.
const READERS: u64 = 4;

/// Counts a reader thread down when it ends, by a panic too.
struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
