//! The durable watermark and everyone waiting on it: blocked threads and async tasks.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use rustix::thread::futex;

use crate::error::{IoOp, Poison, Result};
use crate::types::Lsn;

/// The highest LSN a successful fdatasync covered, or the poison that ended the log.
///
/// Blocked threads sleep on one futex word, `epoch`, each with the bit of the batch that holds
/// its record (`FUTEX_WAIT_BITSET`). A sync wakes the threads of the batch it covered, and only
/// those, with one `FUTEX_WAKE_BITSET` call: one system call per batch instead of one per
/// waiter, and threads whose records are in the next batch sleep on.
#[derive(Debug, Default)]
pub struct Durability {
    /// The watermark, with [`POISONED`] set once the log is poisoned: one word, so that a sync
    /// finishing on the flusher while another thread poisons the log (a truncation's failed
    /// sync of `FLOOR`) either raised the watermark before the poison or never does.
    lsn: AtomicU64,
    cause: OnceLock<Poison>,
    /// Changed by every advance and by poison, before the wake-up: a thread that read the old
    /// value and then missed the new watermark finds the word changed and does not sleep.
    epoch: AtomicU32,
    /// Threads sleeping (or about to) on `epoch`: the flusher skips the wake call when none is.
    sleepers: AtomicU32,
    /// Tasks to wake (see [`Wakers`]).
    wakers: Mutex<Wakers>,
    /// The next registration's number.
    registrations: AtomicU64,
}

/// The bit of [`Durability::lsn`] that says the log is poisoned: LSNs stay below
/// [`Lsn::LIMIT`], so it is never part of a watermark.
const POISONED: u64 = Lsn::LIMIT.0;
const _: () = assert!(POISONED.is_power_of_two());

/// Tasks waiting for LSNs, by registration. A registration is one future's, so two futures of
/// one task on one LSN hold one each, and dropping one leaves the other's. Ordered by LSN, so
/// that a sync takes the tasks it covers without looking at the others: with thousands of
/// futures pending, a list scanned at every sync and every poll cost each sync its length.
#[derive(Debug, Default)]
struct Wakers {
    by_lsn: BTreeMap<(Lsn, u64), Waker>,
    lsn_of: HashMap<u64, Lsn>,
}

impl Wakers {
    /// Takes every registration up to `lsn` (all of them for `None`).
    fn take_up_to(&mut self, lsn: Option<Lsn>) -> Vec<Waker> {
        let waiting = match lsn {
            Some(lsn) if lsn.0 < u64::MAX => self.by_lsn.split_off(&(Lsn(lsn.0 + 1), 0)),
            _ => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.by_lsn, waiting);
        ready
            .into_iter()
            .map(|((_, id), waker)| {
                self.lsn_of.remove(&id);
                waker
            })
            .collect()
    }

    fn insert(&mut self, lsn: Lsn, id: u64, waker: &Waker) {
        if let Some(old) = self.lsn_of.insert(id, lsn) {
            if old == lsn && self.by_lsn.get(&(lsn, id)).is_some_and(|w| w.will_wake(waker)) {
                return;
            }
            self.by_lsn.remove(&(old, id));
        }
        self.by_lsn.insert((lsn, id), waker.clone());
    }

    fn remove(&mut self, id: u64) {
        if let Some(lsn) = self.lsn_of.remove(&id) {
            self.by_lsn.remove(&(lsn, id));
        }
    }
}

/// The futex bit of batch `seq`. Batches 32 apart share a bit; a thread woken for the other
/// batch finds its LSN not yet durable and sleeps again.
fn batch_bit(seq: u64) -> NonZeroU32 {
    NonZeroU32::new(1 << (seq % 32)).expect("one bit is set")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn timespec(d: std::time::Duration) -> futex::Timespec {
    futex::Timespec { tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), tv_nsec: i64::from(d.subsec_nanos()) }
}

impl Durability {
    pub fn new(durable: Lsn) -> Durability {
        Durability { lsn: AtomicU64::new(durable.0), ..Durability::default() }
    }

    /// The durable watermark.
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Ordering::Acquire) & !POISONED)
    }

    /// `Ok(true)` if `lsn` is durable, `Ok(false)` if not yet, the poison error if it never will be.
    pub fn check(&self, lsn: Lsn) -> Result<bool> {
        // One load for both answers: read apart, an advance and a poison landing between the
        // two (a sync finishing as a truncation's sync of `FLOOR` fails) answered `Poisoned`
        // for an LSN durable before the poison, which `watch_durable` promises is `Ok(true)`.
        // Acquire pairs with the `SeqCst` raise in `advance` and `fetch_or` in `poison_with`
        // (both release): what the flusher listed before raising, and the cause set before
        // the flag, are seen with the word.
        let word = self.lsn.load(Ordering::Acquire);
        if word & !POISONED >= lsn.0 {
            return Ok(true);
        }
        self.poison_in(word).map(|()| false)
    }

    /// The poison error, if the log is poisoned.
    pub fn check_poison(&self) -> Result<()> {
        self.poison_in(self.lsn.load(Ordering::Acquire))
    }

    /// The poison error if `word` (a load of the watermark's word) carries the flag.
    fn poison_in(&self, word: u64) -> Result<()> {
        if word & POISONED != 0 {
            return Err(self.cause.get().expect("cause is set before the flag").error());
        }
        Ok(())
    }

    /// Called by the flusher after a successful sync of batch `seq` that covered everything
    /// up to `lsn`. After the poison it raises nothing: the log has said it acknowledges no
    /// more, and the batch's records are in doubt like any other not yet acknowledged.
    pub fn advance(&self, lsn: Lsn, seq: u64) {
        let raise = |word: u64| (word & POISONED == 0).then_some(word.max(lsn.0));
        let _ = self.lsn.fetch_update(Ordering::SeqCst, Ordering::SeqCst, raise);
        self.wake_threads(batch_bit(seq));
        self.wake_tasks(Some(lsn));
    }

    /// Ends the log: nothing more becomes durable. The first cause wins. Outside this module
    /// the log is poisoned through `Shared::poison`, which also wakes appenders waiting for a
    /// buffer.
    pub(super) fn poison(&self, op: IoOp, err: &io::Error) {
        self.poison_with(Poison::of(op, err), err);
    }

    /// [`Self::poison`] by a failed step on the file at `path`, which the error names.
    pub(super) fn poison_at(&self, op: IoOp, path: &std::path::Path, err: &io::Error) {
        self.poison_with(Poison::at(op, path, err), err);
    }

    fn poison_with(&self, cause: Poison, err: &io::Error) {
        let _ = self.cause.set(cause.clone());
        self.lsn.fetch_or(POISONED, Ordering::SeqCst);
        tracing::error!(%err, cause = %cause.error(), "nodedb-wal poisoned: no further append will be acknowledged");
        self.wake_threads(NonZeroU32::MAX);
        self.wake_tasks(None);
    }

    /// Wakes the threads sleeping with any of `bits` (followers sleep with all bits).
    ///
    /// The watermark or poison flag is stored before `epoch` changes, and a sleeper counts
    /// itself before it reads `epoch` (all `SeqCst`): so either this sees the sleeper and wakes
    /// it, or the sleeper reads the new epoch and with it the new watermark.
    fn wake_threads(&self, bits: NonZeroU32) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _ = futex::wake_bitset(&self.epoch, futex::Flags::PRIVATE, u32::MAX >> 1, bits);
        }
    }

    /// Wakes the tasks waiting up to `lsn` (all of them for `None`); each is taken off the list
    /// first.
    fn wake_tasks(&self, lsn: Option<Lsn>) {
        let ready: Vec<Waker> = {
            let mut wakers = lock(&self.wakers);
            if wakers.by_lsn.is_empty() {
                return;
            }
            wakers.take_up_to(lsn)
        };
        for waker in ready {
            // A waker is the caller's (its executor's) code, run on the thread that made the
            // batch durable: one that panics must neither leave the others unwoken (their tasks
            // would hang) nor unwind that thread (which poisoned a durable batch as failed).
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())).is_err() {
                tracing::error!("a task's waker panicked when woken; the other tasks were woken");
            }
        }
    }

    /// Blocks until `lsn`, held by batch `seq`, is durable or the log is poisoned.
    pub fn wait(&self, lsn: Lsn, seq: u64) -> Result<()> {
        self.sleep_until(lsn, batch_bit(seq), None).map(drop)
    }

    /// Like [`Self::wait`] for an LSN in no known batch, giving up after `timeout`: `Ok(true)`
    /// once `lsn` is durable, `Ok(false)` at the timeout. Asks for no sync: for followers of
    /// the log, not writers. Woken by every sync.
    pub fn wait_timeout(&self, lsn: Lsn, timeout: std::time::Duration) -> Result<bool> {
        // A timeout past what an `Instant` can hold (`Duration::MAX`: wait without end) has no
        // deadline.
        self.sleep_until(lsn, NonZeroU32::MAX, std::time::Instant::now().checked_add(timeout))
    }

    /// Sleeps on `epoch` with `bits` until `lsn` is durable (`Ok(true)`), the log is
    /// poisoned, or the deadline passes (`Ok(false)`).
    fn sleep_until(&self, lsn: Lsn, bits: NonZeroU32, deadline: Option<std::time::Instant>) -> Result<bool> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            match self.check(lsn) {
                Ok(false) => {}
                done => break done,
            }
            let left = match deadline.map(|d| d.saturating_duration_since(std::time::Instant::now())) {
                Some(left) if left.is_zero() => break Ok(false),
                left => left,
            };
            // Errors are a changed epoch (AGAIN), a signal (INTR) or the timeout: each means
            // "look again", which the loop does.
            let _ = match left {
                // A wait with every bit is FUTEX_WAIT, whose timeout is relative.
                Some(left) => futex::wait(&self.epoch, futex::Flags::PRIVATE, epoch, Some(&timespec(left))),
                None => futex::wait_bitset(&self.epoch, futex::Flags::PRIVATE, epoch, None, bits),
            };
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// A number for a future to register under, its own for as long as it lives.
    pub fn registration(&self) -> u64 {
        self.registrations.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers (or, polled again, updates) registration `id`'s task to wake once `lsn` is
    /// durable (or the log is poisoned).
    pub fn register(&self, lsn: Lsn, id: u64, waker: &Waker) {
        lock(&self.wakers).insert(lsn, id, waker);
    }

    /// Takes back registration `id`, which will not be needed (its future resolved or was
    /// dropped), so that the waker, and whatever its task owns, is not kept until a sync that
    /// may never come (after poison, none does).
    pub fn unregister(&self, id: u64) {
        lock(&self.wakers).remove(id);
    }

    /// Task registrations held.
    #[cfg(test)]
    fn registered(&self) -> usize {
        let wakers = lock(&self.wakers);
        assert_eq!(wakers.by_lsn.len(), wakers.lsn_of.len(), "the two maps agree");
        wakers.by_lsn.len()
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
/// The task's `Waker` is called on the thread that made the batch durable, while it holds the
/// log's writer, or on the thread that poisoned the log (a truncation whose sync of `FLOOR`
/// failed calls it while holding the truncation's lock): as the `Waker` contract expects,
/// waking must only schedule the task. A waker that polls the task inline and blocks there
/// (in `wait_durable`, say) would hold up every later batch, its own included: a deadlock. A
/// waker may drop the task and with it the log's last handle: the flusher then still writes
/// and syncs everything appended, and the directory stays locked until it has.
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
    requester: &'a dyn SyncRequester,
    lsn: Lsn,
    requested: bool,
    /// This future's registration, taken back when it resolves or is dropped.
    registration: Option<u64>,
}

impl<'a> DurableFuture<'a> {
    pub(crate) fn new(requester: &'a dyn SyncRequester, lsn: Lsn) -> DurableFuture<'a> {
        DurableFuture { requester, lsn, requested: false, registration: None }
    }

    fn register(&mut self, waker: &Waker) {
        let durability = self.requester.durability();
        let id = *self.registration.get_or_insert_with(|| durability.registration());
        // Listed again even if listed before: a sync may have taken the listing to wake it.
        durability.register(self.lsn, id, waker);
    }

    fn unregister(&mut self) {
        if let Some(id) = self.registration.take() {
            self.requester.durability().unregister(id);
        }
    }

    /// `Ready` (and no longer registered) if the LSN is durable or never will be.
    fn settled(&mut self) -> Option<Poll<Result<()>>> {
        let result = match self.requester.durability().check(self.lsn) {
            Ok(false) => return None,
            Ok(true) => Ok(()),
            Err(err) => Err(err),
        };
        // Nothing will wake this future again.
        self.unregister();
        Some(Poll::Ready(result))
    }
}

impl Drop for DurableFuture<'_> {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl std::fmt::Debug for DurableFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableFuture").field("lsn", &self.lsn).finish()
    }
}

impl Future for DurableFuture<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        if let Some(ready) = this.settled() {
            return ready;
        }
        this.register(cx.waker());
        if !this.requested {
            this.requester.request_sync(this.lsn);
            this.requested = true;
        }
        // The flusher may have advanced (or the log been poisoned) between the first check
        // and the registration.
        this.settled().unwrap_or(Poll::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WalError;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Starts a thread blocked on `lsn` in batch `seq`; the receiver gets its result.
    fn waiter(d: &Arc<Durability>, lsn: u64, seq: u64) -> mpsc::Receiver<Result<()>> {
        let (tx, rx) = mpsc::channel();
        let d = Arc::clone(d);
        std::thread::spawn(move || tx.send(d.wait(Lsn(lsn), seq)));
        rx
    }

    /// Waits until `n` threads sleep on the word, so a test's advance finds them asleep.
    fn until_sleeping(d: &Durability, n: u32) {
        while d.sleepers.load(Ordering::SeqCst) < n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_sync_releases_the_waiters_of_its_batch_and_keeps_later_ones_waiting() {
        let d = Arc::new(Durability::new(Lsn(0)));
        let first = waiter(&d, 5, 1);
        // Batch 33 shares batch 1's bit: it is woken too, must look and sleep again.
        let later = waiter(&d, 9, 33);
        until_sleeping(&d, 2);
        d.advance(Lsn(5), 1);
        first.recv().unwrap().unwrap();
        assert!(later.recv_timeout(Duration::from_millis(50)).is_err(), "LSN 9 is not durable yet");
        d.advance(Lsn(9), 33);
        later.recv().unwrap().unwrap();
    }

    /// A task that counts its wake-ups.
    #[derive(Default)]
    struct Counts(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counts {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counts {
        fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_sync_wakes_exactly_the_tasks_it_covers_once_and_a_moved_or_taken_back_registration_goes_with_it() {
        let d = Durability::new(Lsn(0));
        // 1000 tasks on LSNs 1..=1000, registered out of order.
        let tasks: Vec<Arc<Counts>> = (0..1000).map(|_| Arc::new(Counts::default())).collect();
        let ids: Vec<u64> = (0..1000).map(|_| d.registration()).collect();
        for k in (0..1000).map(|i| (i * 7919) % 1000) {
            d.register(Lsn(k as u64 + 1), ids[k], &Waker::from(Arc::clone(&tasks[k])));
        }
        // Polled again: task 0 now waits for LSN 900; task 999 is dropped; task 1 re-polled.
        d.register(Lsn(900), ids[0], &Waker::from(Arc::clone(&tasks[0])));
        d.unregister(ids[999]);
        d.register(Lsn(2), ids[1], &Waker::from(Arc::clone(&tasks[1])));
        assert_eq!(d.registered(), 999);
        d.advance(Lsn(500), 1);
        let woken = |k: usize| tasks[k].woken();
        assert_eq!(woken(0), 0, "moved to 900");
        assert!((1..500).all(|k| woken(k) == 1), "every task up to 500 woken once");
        assert!((500..1000).all(|k| woken(k) == 0), "none past 500");
        assert_eq!(d.registered(), 500, "499 taken off the list, 500 still waiting");
        d.advance(Lsn(900), 2);
        assert_eq!((woken(0), woken(899), woken(900)), (1, 1, 0));
        d.poison(IoOp::SyncData, &io::Error::from_raw_os_error(5));
        assert!((0..999).all(|k| woken(k) == 1), "poison wakes the rest, once");
        assert_eq!((woken(999), d.registered()), (0, 0));
    }

    #[test]
    fn a_waker_that_panics_neither_unwinds_the_syncing_thread_nor_leaves_other_tasks_unwoken() {
        // Found by a review: the panic unwound the flusher (which poisoned a durable batch as
        // a failed write), and the tasks after it, already off the list, were never woken.
        struct Panics;
        impl std::task::Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("an executor's bug");
            }
        }
        let d = Durability::new(Lsn(0));
        let (first, last) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
        d.register(Lsn(1), d.registration(), &Waker::from(Arc::clone(&first)));
        d.register(Lsn(1), d.registration(), &Waker::from(Arc::new(Panics)));
        d.register(Lsn(1), d.registration(), &Waker::from(Arc::clone(&last)));
        d.advance(Lsn(1), 1);
        assert_eq!((first.woken(), last.woken()), (1, 1), "both other tasks woken");
        assert!(d.check(Lsn(1)).unwrap(), "durable, not poisoned");
    }

    #[test]
    fn a_waiter_whose_lsn_is_durable_returns_at_once_and_leaves_no_sleeper_counted() {
        let d = Durability::new(Lsn(0));
        d.advance(Lsn(3), 1);
        d.wait(Lsn(2), 1).unwrap();
        assert_eq!(d.sleepers.load(Ordering::SeqCst), 0);
    }

    // Found by tests/everything.rs: a truncation's failed sync of `FLOOR` poisons the log on
    // the caller's thread while the flusher's sync of a batch is in flight; that sync's
    // success raised the watermark after the poison, acknowledging the batch.
    #[test]
    fn a_sync_that_succeeds_after_the_poison_raises_nothing() {
        let d = Durability::new(Lsn(3));
        d.poison(IoOp::SyncDir, &io::Error::from_raw_os_error(5));
        d.advance(Lsn(5), 1);
        assert_eq!(d.lsn(), Lsn(3));
        assert!(d.check(Lsn(3)).unwrap(), "what was durable before the poison stays so");
        assert!(matches!(d.check(Lsn(4)), Err(WalError::Poisoned { .. })));
    }

    #[test]
    fn poison_releases_every_waiter_with_the_error() {
        let d = Arc::new(Durability::new(Lsn(0)));
        let waiters: Vec<_> = (1..=3).map(|seq| waiter(&d, seq * 10, seq)).collect();
        until_sleeping(&d, 3);
        d.poison(IoOp::SyncData, &io::Error::other("disk gone"));
        for rx in waiters {
            assert!(matches!(rx.recv().unwrap(), Err(WalError::Poisoned { op: IoOp::SyncData, .. })));
        }
    }

    #[test]
    fn the_poison_names_the_system_error_even_where_it_has_no_kind_of_its_own() {
        let d = Durability::new(Lsn(0));
        d.poison(IoOp::SyncData, &io::Error::from_raw_os_error(5)); // EIO: `ErrorKind::Uncategorized`
        d.poison(IoOp::Write, &io::Error::from_raw_os_error(28)); // later: ignored
        let err = d.check(Lsn(1)).unwrap_err();
        assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, os_error: Some(5), .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("SyncData") && text.contains(&io::Error::from_raw_os_error(5).to_string()), "{text}");
    }

    /// A requester over a bare watermark, for futures without a log.
    struct Bare(Durability);

    impl SyncRequester for Bare {
        fn request_sync(&self, _lsn: Lsn) {}
        fn durability(&self) -> &Durability {
            &self.0
        }
    }

    /// A waker of its own task: no two compare as waking the same one.
    fn noop_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    fn poll(future: &mut DurableFuture<'_>, waker: &Waker) -> Poll<Result<()>> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    // Found by a review: a registration outlived its future (dropped, or resolved by the
    // check after registering, or polled again with another waker), keeping the waker and
    // whatever its task owns until a sync that, after poison, never comes.
    #[test]
    fn a_future_keeps_at_most_one_registration_and_none_once_resolved_or_dropped() {
        let bare = Bare(Durability::new(Lsn(0)));
        let mut future = DurableFuture::new(&bare, Lsn(2));
        for _ in 0..5 {
            assert!(poll(&mut future, &noop_waker()).is_pending());
            assert_eq!(bare.0.registered(), 1, "a new waker replaces the last one");
        }
        drop(future);
        assert_eq!(bare.0.registered(), 0, "dropped while pending");

        let mut future = DurableFuture::new(&bare, Lsn(2));
        assert!(poll(&mut future, &noop_waker()).is_pending());
        bare.0.poison(IoOp::Write, &io::Error::other("disk gone"));
        assert!(matches!(poll(&mut future, &noop_waker()), Poll::Ready(Err(WalError::Poisoned { .. }))));
        assert_eq!(bare.0.registered(), 0, "nothing listed after poison");
        drop(future);
    }

    // Found by a review: registrations were one per (LSN, task), so when one of a task's two
    // futures on an LSN was dropped (a cancelled select branch) it took the other's listing
    // with it, and the other was never woken.
    #[test]
    fn dropping_one_of_a_tasks_two_waits_on_an_lsn_leaves_the_other_woken() {
        let bare = Bare(Durability::new(Lsn(0)));
        let task = Arc::new(Counts::default());
        let waker = Waker::from(Arc::clone(&task));
        let (mut kept, mut cancelled) = (DurableFuture::new(&bare, Lsn(2)), DurableFuture::new(&bare, Lsn(2)));
        assert!(poll(&mut kept, &waker).is_pending());
        assert!(poll(&mut cancelled, &waker).is_pending());
        drop(cancelled);
        assert_eq!(bare.0.registered(), 1, "the kept future's listing stays");
        bare.0.advance(Lsn(2), 1);
        assert_eq!(task.woken(), 1, "the task was woken");
        assert!(matches!(poll(&mut kept, &waker), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_follower_is_released_by_any_batch_and_gives_up_at_its_timeout() {
        let d = Arc::new(Durability::new(Lsn(0)));
        assert!(!d.wait_timeout(Lsn(1), Duration::from_millis(5)).unwrap(), "nothing durable: times out");
        let (tx, rx) = mpsc::channel();
        let follower = Arc::clone(&d);
        std::thread::spawn(move || tx.send(follower.wait_timeout(Lsn(4), Duration::from_secs(600))));
        until_sleeping(&d, 1);
        d.advance(Lsn(4), 7);
        assert!(rx.recv().unwrap().unwrap());
    }
}
