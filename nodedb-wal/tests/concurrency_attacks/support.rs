//! What the scenarios share: the watchdog that fails a hung scenario, a thread-parking
//! executor that counts its wake-ups, the single writer's payloads, and the check of what a
//! reader handed out.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use nodedb_wal::storage::Storage;
use nodedb_wal::{KeyRing, Lsn, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, WalError};

pub const TY: RecordType = RecordType::optional(0x100);
/// How long a scenario may run before it counts as hung.
pub const HANG: Duration = Duration::from_secs(120);

pub fn rounds(default: u64) -> u64 {
    std::env::var("NODEDB_WAL_RACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn config(dir: &str) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 16 * 1024;
    c.batch_bytes_max = 4 * 1024;
    c
}

/// Runs `f` on its own thread and fails the test if it has not finished within [`HANG`] per
/// round of the sweep.
pub fn watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
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
pub fn payload_of(lsn: u64) -> Vec<u8> {
    lsn.to_le_bytes().repeat(1 + (lsn % 40) as usize)
}

pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A task of a thread-parking executor; counts its wake-ups.
pub struct Unpark {
    thread: std::thread::Thread,
    woken: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

pub fn unpark_here() -> Arc<Unpark> {
    Arc::new(Unpark { thread: std::thread::current(), woken: AtomicUsize::new(0) })
}

/// Polls `future` to completion on this thread with `task`'s waker; `None` if it is still
/// pending at `deadline` (a hang: the callers fail the test on it).
pub fn block_on<F: Future + Unpin>(future: &mut F, task: &Arc<Unpark>, deadline: Instant) -> Option<F::Output> {
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
pub fn settles_unreferenced(task: &Arc<Unpark>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(task) > 1 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

pub fn poisoned<T: std::fmt::Debug>(result: &Result<T, WalError>) -> bool {
    matches!(result, Err(WalError::Poisoned { .. }))
}

/// What a reader handed out, checked against the single writer's payloads: LSNs dense from
/// where it started, each record the one appended at its LSN. A typed "no longer retained"
/// error may end it.
pub fn check_run(what: &str, from: Lsn, records: impl Iterator<Item = Result<(Lsn, Vec<u8>), WalError>>, max: usize) -> usize {
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
pub fn replay_some<S: Storage>(wal: &SegmentedWal<S>, from: Lsn, threads: usize, max: usize) -> Vec<Result<(Lsn, Vec<u8>), WalError>> {
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

pub fn encrypted(dir: &str) -> SegmentedWalConfig {
    let mut c = config(dir);
    // With a key ring, `replay_parallel` always runs its decoder threads, whatever the cores.
    c.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [3; 32]))));
    c
}
