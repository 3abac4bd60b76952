//! The state appenders, waiters and the flusher share ([`Shared`]): the plan under its mutex,
//! the condition variables they wait on, the durability watermark, the segment list and the
//! recycled files; and the guard that poisons the log if a thread panics inside it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::durable::{Durability, SyncRequester};
use super::plan::{BatchMeta, Plan, Sealed};
use super::stats::CommitStats;
use crate::crypto::KeyRing;
use crate::error::{IoOp, Result, WalError};
use crate::segment::SegmentInfo;
use crate::storage::Storage;
use crate::types::Lsn;

/// State shared by appenders, waiters and the flusher.
pub(crate) struct Shared<S: Storage> {
    pub storage: Arc<S>,
    pub dir: PathBuf,
    pub direct: bool,
    pub block: usize,
    pub zero_fill_bytes: usize,
    pub segment_bytes_target: u64,
    pub(super) commit_window: Option<Duration>,
    pub(super) plan: Mutex<Plan>,
    /// The flusher waits here for work.
    pub(super) work: Condvar,
    /// Appenders wait here for a free buffer.
    pub(super) space: Condvar,
    pub durability: Durability,
    pub(super) key_ring: Option<Arc<KeyRing>>,
    pub(super) segments: Mutex<Vec<SegmentInfo>>,
    /// Truncated segment files kept for reuse, and how many may be kept.
    pub(super) recycled: Mutex<Vec<PathBuf>>,
    pub(super) recycle_segments: usize,
    pub stats: CommitStats,
    /// Records in the batch written last: one means nobody shared its sync (or only the
    /// one-record batches of records larger than a batch, queued behind the one before), and a
    /// waiter may as well write its own batch (see `GroupCommitter::write_own`).
    pub(super) last_batch_records: AtomicU64,
    /// The directory's lock, released when the last of the committer and the flusher thread
    /// lets go of this: a log dropped on the flusher thread itself (by a task's waker owning
    /// the last handle) keeps its directory locked until the flusher has written what it holds.
    pub(super) _dir_lock: S::Lock,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lock if nobody holds it.
pub(super) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl<S: Storage> Shared<S> {
    pub fn segments_lock(&self) -> MutexGuard<'_, Vec<SegmentInfo>> {
        lock(&self.segments)
    }

    /// The most bytes a segment holds unless a single record or group larger than the target
    /// makes it larger: the target in whole blocks, and the block a restart's seal may add.
    pub fn segment_bytes_max(&self) -> u64 {
        let block = self.block as u64;
        self.segment_bytes_target.div_ceil(block).saturating_mul(block).saturating_add(block)
    }

    /// Whether a truncated segment should be kept for reuse rather than removed. Only
    /// truncation (one at a time) adds files, so the answer holds until it adds one.
    pub fn wants_recycled(&self) -> bool {
        lock(&self.recycled).len() < self.recycle_segments
    }

    /// Offers a truncated segment file, already renamed and its directory synced, for reuse.
    pub fn add_recycled(&self, path: PathBuf) {
        lock(&self.recycled).push(path);
    }

    /// A file to reuse for a new segment, if one is kept.
    pub(super) fn take_recycled(&self) -> Option<PathBuf> {
        lock(&self.recycled).pop()
    }

    /// Every file kept for reuse, taken off the list (a poisoned log's truncation removes them:
    /// see `SegmentedWal::truncate_before`).
    pub fn take_all_recycled(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *lock(&self.recycled))
    }

    /// Sleeps until there is a batch to write: a sealed one, or an active one a waiter needs
    /// (after the commit window, if one is set) or the closing log must flush. `false` once
    /// the log is closed and drained, or poisoned.
    pub(super) fn wait_for_work(&self) -> bool {
        let mut plan = lock(&self.plan);
        // When the commit window ends, once a waiter asked for the active batch.
        let mut window_ends: Option<Instant> = None;
        loop {
            if self.durability.check_poison().is_err() {
                return false;
            }
            if !plan.sealed.is_empty() {
                return true;
            }
            let wanted = plan.active.as_ref().is_some_and(|a| plan.sync_wanted >= a.first_lsn);
            if plan.active_has_records() && (wanted || plan.closing) {
                if let Some(window) = self.commit_window
                    && !plan.closing
                {
                    // Slept out to its end: a wake-up before it (a spurious one) sleeps again.
                    let now = Instant::now();
                    let ends = *window_ends.get_or_insert_with(|| now.checked_add(window).unwrap_or(now));
                    if now < ends {
                        plan.flusher_asleep = true;
                        plan.flusher_gathering = true;
                        plan = self.work.wait_timeout(plan, ends - now).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                        plan.flusher_asleep = false;
                        plan.flusher_gathering = false;
                        continue;
                    }
                    // Over: the batch goes now (`take_jobs` leaves a wanted one to this).
                    plan.seal_active(false);
                }
                return true;
            }
            if plan.closing {
                return false;
            }
            // Buffers kept for large records are let go on time even while the log is idle.
            let mut let_go = Vec::new();
            let look_again = plan.look_at_large(Instant::now, &mut let_go);
            if !let_go.is_empty() {
                drop(plan);
                drop(let_go);
                plan = lock(&self.plan);
                continue;
            }
            plan.flusher_asleep = true;
            plan = match look_again {
                Some(after) => self.work.wait_timeout(plan, after).unwrap_or_else(std::sync::PoisonError::into_inner).0,
                None => self.work.wait(plan).unwrap_or_else(std::sync::PoisonError::into_inner),
            };
            plan.flusher_asleep = false;
        }
    }

    /// The next batches to write with one sync, for the holder of the writer: the oldest
    /// sealed ones that continue each other (see [`Plan::take_sealed_run`]), and the active one
    /// after them if a waiter needs it, the log closes, or it holds `own` (the holder's own
    /// issued LSN). Leaves `run` empty when nothing is due or the log is poisoned.
    pub(super) fn take_jobs(&self, own: Option<Lsn>, run: &mut Vec<Sealed>) {
        let mut plan = lock(&self.plan);
        if self.durability.check_poison().is_err() {
            return;
        }
        plan.take_sealed_run(run);
        if !plan.sealed.is_empty() {
            return;
        }
        let Some(first) = plan.active.as_ref().map(|a| a.first_lsn) else { return };
        let holds_own = own.is_some_and(|lsn| lsn >= first && lsn < plan.next_lsn);
        // With a commit window the flusher leaves a wanted batch to `wait_for_work`, which
        // sleeps the window out first: taken here, on a busy log (a sync requested while the
        // last batch synced) every batch but the first after a lull went without its window.
        let windowed = own.is_none() && self.commit_window.is_some();
        let wanted = plan.sync_wanted >= first && !windowed;
        if plan.active_has_records() && (wanted || plan.closing || holds_own) {
            plan.seal_active(false);
            plan.take_sealed_run(run);
        }
    }

    /// Whether the log is quiet enough for a waiter to write its own batch: the last batch
    /// held one record, so no other appender would have shared its sync, and a handoff to the
    /// flusher thread and back would only add two wake-ups. A commit window asks for waiting,
    /// so it turns this off.
    pub(super) fn quiet(&self) -> bool {
        self.commit_window.is_none() && self.last_batch_records.load(Ordering::Relaxed) <= 1
    }

    /// Wakes the flusher if it sleeps waiting for work. (A notify costs a system call whether
    /// or not anyone waits, and appenders would otherwise make one per append while a sealed
    /// batch is queued.)
    pub(super) fn notify_flusher(&self, plan: &Plan) {
        if plan.flusher_asleep {
            self.work.notify_one();
        }
    }

    /// Wakes the flusher for a sync request, unless it is sleeping out a commit window: it
    /// writes the active batch when the window ends anyway, and the window is there to gather
    /// the waiters that come meanwhile (woken by each, it ended at the second).
    pub(super) fn notify_flusher_for_sync(&self, plan: &Plan) {
        if !plan.flusher_gathering {
            self.notify_flusher(plan);
        }
    }

    /// The batches of a run are durable: return their buffers to the pool.
    pub(super) fn finish_batches(&self, run: &mut Vec<Sealed>) {
        let mut let_go = Vec::new();
        let mut plan = lock(&self.plan);
        for Sealed { buf, meta } in run.drain(..) {
            let_go.extend(plan.recycle(buf, meta.oversized));
        }
        // On a busy log, where the flusher seldom sleeps. A caller that wrote its own batch
        // (a quiet log) may have found the flusher asleep with no look due, since before the
        // large records came: wake it, so that it sleeps no longer than the next look and an
        // idle log lets the buffers go too.
        if plan.look_at_large(Instant::now, &mut let_go).is_some() && !plan.flusher_gathering {
            self.notify_flusher(&plan);
        }
        if plan.space_waiters > 0 {
            self.space.notify_all();
        }
        drop(plan);
        drop(let_go);
    }

    /// Records what a written batch added to its segment and advances the durable watermark.
    pub(super) fn note_segment_progress(&self, meta: &BatchMeta) {
        let (target, end_lsn, padded, sealed) = (&meta.target, meta.end_lsn, meta.padded, meta.ends_segment);
        {
            let mut segments = self.segments_lock();
            // A new segment is listed only once its first batch is durable: until then it may
            // vanish in a crash, and the segment before it must not count as truncatable.
            if target.create {
                let first = target.segment_first_lsn;
                segments.push(SegmentInfo { id: target.segment, first_lsn: first, end_lsn: first, bytes: 0, sealed: false });
            }
            let seg = segments.last_mut().expect("the written segment is listed");
            assert_eq!(seg.id, target.segment, "batch written to an unlisted segment");
            seg.end_lsn = end_lsn;
            seg.bytes = target.offset + padded as u64;
            seg.sealed = sealed;
        }
        self.last_batch_records.store(end_lsn.0 - meta.first_lsn.0, Ordering::Relaxed);
        self.durability.advance(Lsn(end_lsn.0 - 1), meta.seq);
    }

    /// Records that the newest segment was sealed at close, `bytes` long.
    pub(super) fn note_sealed(&self, id: crate::types::SegmentId, bytes: u64) {
        let mut segments = self.segments_lock();
        let seg = segments.last_mut().expect("the sealed segment is listed");
        assert_eq!(seg.id, id, "sealed an unlisted segment");
        (seg.sealed, seg.bytes) = (true, bytes);
    }

    /// Ends the log, naming the file at `path` if the failed step had one, and wakes every
    /// sleeper. The one way to poison it: once poisoned the flusher takes no batch, so no buffer
    /// comes free, and an appender waiting for one is woken only here (a truncation that
    /// poisoned without the wake-up left one hung: a 20,000-seed run of tests/everything.rs).
    pub(crate) fn poison(&self, op: IoOp, path: Option<&Path>, err: &std::io::Error) {
        match path {
            Some(path) => self.durability.poison_at(op, path, err),
            None => self.durability.poison(op, err),
        }
        self.wake_all();
    }

    /// Wakes every appender and the flusher (after poisoning or closing). Takes the plan lock,
    /// so that a thread between its check and its wait cannot miss the wake-up.
    pub(super) fn wake_all(&self) {
        let _plan = lock(&self.plan);
        self.space.notify_all();
        self.work.notify_all();
    }
}

/// If a thread panics inside the log's shared state (a broken invariant, or no randomness for a
/// new segment's salt), that state may be half changed and nobody may be left to wake the
/// waiters or let a queued large record go: poison the log instead, so that every caller gets
/// an error rather than a hang. Declared before any lock it guards, so that the lock is let go
/// first.
pub(crate) struct PoisonOnPanic<'a, S: Storage> {
    pub shared: &'a Shared<S>,
    pub what: &'static str,
}

impl<S: Storage> Drop for PoisonOnPanic<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.poison(IoOp::Write, None, &std::io::Error::other(self.what));
        }
    }
}

impl<S: Storage> Shared<S> {
    /// Asks the flusher for a sync covering `lsn`, which must have been issued, and returns the
    /// sequence number of the batch holding it. One lock.
    pub(super) fn request_issued(&self, lsn: Lsn) -> Result<u64> {
        let mut plan = lock(&self.plan);
        if lsn >= plan.next_lsn {
            return Err(WalError::LsnNotIssued { lsn, next: plan.next_lsn });
        }
        if plan.sync_wanted < lsn {
            plan.sync_wanted = lsn;
            self.notify_flusher_for_sync(&plan);
        }
        Ok(plan.batch_of(lsn))
    }
}

impl<S: Storage> SyncRequester for Shared<S> {
    fn request_sync(&self, lsn: Lsn) {
        let _ = self.request_issued(lsn);
    }

    fn durability(&self) -> &Durability {
        &self.durability
    }
}
