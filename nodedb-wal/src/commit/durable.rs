//! The durable watermark and everyone waiting on it: blocked threads and async tasks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;

use crate::error::{IoOp, Result, WalError};
use crate::types::Lsn;

/// The first failure that poisoned the log.
#[derive(Clone, Copy, Debug)]
pub struct PoisonCause {
    pub op: IoOp,
    pub kind: io::ErrorKind,
}

/// The highest LSN a successful fdatasync covered, or the poison that ended the log.
#[derive(Debug, Default)]
pub struct Durability {
    lsn: AtomicU64,
    poisoned: AtomicBool,
    cause: OnceLock<PoisonCause>,
    /// Blocked threads and the LSN each waits for: a sync wakes only those it covers, so
    /// threads whose records are in the next batch sleep on (no thundering herd).
    parked: Mutex<Vec<(Lsn, Thread)>>,
    wakers: Mutex<Vec<(Lsn, Waker)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Durability {
    pub fn new(durable: Lsn) -> Durability {
        Durability { lsn: AtomicU64::new(durable.0), ..Durability::default() }
    }

    /// The durable watermark.
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Ordering::Acquire))
    }

    /// `Ok(true)` if `lsn` is durable, `Ok(false)` if not yet, the poison error if it never will be.
    pub fn check(&self, lsn: Lsn) -> Result<bool> {
        if self.lsn() >= lsn {
            return Ok(true);
        }
        self.check_poison()?;
        Ok(false)
    }

    /// The poison error, if the log is poisoned.
    pub fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let cause = self.cause.get().copied().expect("cause is set before the flag");
            return Err(WalError::Poisoned { op: cause.op, kind: cause.kind });
        }
        Ok(())
    }

    /// Called by the flusher after a successful sync that covered everything below `lsn`.
    pub fn advance(&self, lsn: Lsn) {
        self.lsn.fetch_max(lsn.0, Ordering::AcqRel);
        self.wake(|waiting| waiting <= lsn);
    }

    /// Ends the log: nothing more becomes durable. The first cause wins.
    pub fn poison(&self, op: IoOp, err: &io::Error) {
        let _ = self.cause.set(PoisonCause { op, kind: err.kind() });
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(?op, %err, "nodedb-wal poisoned: no further append will be acknowledged");
        self.wake(|_| true);
    }

    /// Wakes the parked threads and the tasks whose LSN `which` accepts. Each is removed from
    /// its list before it is woken, so a waiter that is still listed has not been woken yet.
    fn wake(&self, which: impl Fn(Lsn) -> bool) {
        let threads: Vec<Thread> = {
            let mut parked = lock(&self.parked);
            let mut ready = Vec::new();
            parked.retain(|(lsn, thread)| {
                let wake = which(*lsn);
                if wake {
                    ready.push(thread.clone());
                }
                !wake
            });
            ready
        };
        threads.iter().for_each(Thread::unpark);
        let ready: Vec<Waker> = {
            let mut wakers = lock(&self.wakers);
            let (ready, waiting): (Vec<_>, Vec<_>) = wakers.drain(..).partition(|(lsn, _)| which(*lsn));
            *wakers = waiting;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        ready.into_iter().for_each(Waker::wake);
    }

    /// Blocks until `lsn` is durable or the log is poisoned.
    ///
    /// The thread lists itself before it checks, and the flusher raises the watermark before it
    /// looks at the list: so either the check sees the new watermark or the flusher sees the
    /// thread and unparks it (an unpark before the park makes the park return at once).
    pub fn wait(&self, lsn: Lsn) -> Result<()> {
        self.park_until(lsn, None).map(drop)
    }

    /// Like [`Self::wait`], giving up after `timeout`: `Ok(true)` once `lsn` is durable,
    /// `Ok(false)` at the timeout. Asks for no sync: for followers of the log, not writers.
    pub fn wait_timeout(&self, lsn: Lsn, timeout: std::time::Duration) -> Result<bool> {
        self.park_until(lsn, Some(std::time::Instant::now() + timeout))
    }

    /// Parks on the waiter list until `lsn` is durable (`Ok(true)`), the log is poisoned, or
    /// the deadline passes (`Ok(false)`).
    fn park_until(&self, lsn: Lsn, deadline: Option<std::time::Instant>) -> Result<bool> {
        if self.check(lsn)? {
            return Ok(true);
        }
        let me = std::thread::current();
        lock(&self.parked).push((lsn, me.clone()));
        let result = loop {
            match (self.check(lsn), deadline) {
                (Ok(false), None) => std::thread::park(),
                (Ok(false), Some(deadline)) => match deadline.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                    _ => break Ok(false),
                },
                (done, _) => break done,
            }
        };
        // Woken threads were taken off the list; one that returned on its own check or at its
        // deadline is still on it and must not be unparked later for nothing.
        lock(&self.parked).retain(|(_, t)| t.id() != me.id());
        result
    }

    /// Registers a task to wake once `lsn` is durable (or the log is poisoned).
    pub fn register(&self, lsn: Lsn, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        match wakers.iter_mut().find(|(l, w)| *l == lsn && w.will_wake(waker)) {
            Some(_) => {}
            None => wakers.push((lsn, waker.clone())),
        }
    }
}

/// Something that can ask the flusher to make an LSN durable.
pub trait SyncRequester: Send + Sync {
    /// Asks for a sync that covers `lsn`.
    fn request_sync(&self, lsn: Lsn);
    /// The watermark to wait on.
    fn durability(&self) -> &Durability;
}

/// Resolves once a successful fdatasync covers the LSN. Works under any executor: the flusher
/// thread wakes the task.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
/// # use std::future::Future;
/// # use std::sync::Arc;
/// # use std::task::{Context, Poll, Wake, Waker};
/// # fn block_on<F: Future>(future: F) -> F::Output {
/// #     struct Unpark(std::thread::Thread);
/// #     impl Wake for Unpark {
/// #         fn wake(self: Arc<Self>) {
/// #             self.0.unpark();
/// #         }
/// #     }
/// #     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
/// #     let mut future = std::pin::pin!(future);
/// #     loop {
/// #         match future.as_mut().poll(&mut Context::from_waker(&waker)) {
/// #             Poll::Ready(output) => return output,
/// #             Poll::Pending => std::thread::park(),
/// #         }
/// #     }
/// # }
///
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// let lsn = wal.append(Record::new(RecordType::optional(0x100), b"async"))?;
/// // `block_on` stands for any executor's (a thread-parking one is hidden in this example).
/// block_on(wal.durable(lsn)?)?;
/// assert!(wal.durable_lsn() >= lsn);
/// // Waiting for an LSN the log has not handed out is an error, not a hang.
/// assert!(matches!(wal.durable(Lsn(99)), Err(WalError::LsnNotIssued { .. })));
/// # Ok::<(), WalError>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct DurableFuture<'a> {
    pub(crate) requester: &'a dyn SyncRequester,
    pub(crate) lsn: Lsn,
    pub(crate) requested: bool,
}

impl std::fmt::Debug for DurableFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableFuture").field("lsn", &self.lsn).finish()
    }
}

impl Future for DurableFuture<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let durability = self.requester.durability();
        if durability.check(self.lsn)? {
            return Poll::Ready(Ok(()));
        }
        durability.register(self.lsn, cx.waker());
        if !self.requested {
            self.requester.request_sync(self.lsn);
            self.requested = true;
        }
        // The flusher may have advanced between the first check and the registration.
        match durability.check(self.lsn)? {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        }
    }
}
