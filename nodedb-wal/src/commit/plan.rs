//! The group committer's shared state: which LSN and which bytes of which batch each append
//! gets, and where each batch will land on disk. Everything here runs under one mutex and does
//! no I/O; the flusher carries the plan out.
//!
//! The [`Plan`] and its moves are here; what it hands out is described in `batch` (batches
//! and segments), `request` (what an append asks for and gets), `turns` (the queue of
//! appenders refused room) and `large` (the budget of one-off buffers grown for records
//! larger than it).

mod batch;
mod large;
mod request;
mod turns;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::format::layout::{END_FRAME_LEN, padded_len};
use crate::storage::BatchBuf;
use crate::types::{Lsn, SegmentId};

pub use self::batch::{Active, BatchMeta, Crypt, Identity, Sealed, SegmentPlan, Target};
use self::large::{LARGE_FRAMES_HELD, LargeFrames, Look};
pub use self::request::{Frames, Keys, LAST_ID, Limits, Reservation, Wait};
pub use self::turns::{Turn, Turns};

/// The shared state behind the group committer's mutex.
#[derive(Debug)]
pub struct Plan {
    pub limits: Limits,
    pub next_lsn: Lsn,
    pub active: Option<Active>,
    pub sealed: VecDeque<Sealed>,
    /// Pooled buffers ready for a batch. Kept in their `Arc`s, which appenders' regions share
    /// while a batch fills: a batch costs no allocation.
    pub free: Vec<Arc<BatchBuf>>,
    /// One-off buffers of oversized batches kept for reuse (see [`Self::recycle`]).
    pub spare_oversized: Vec<Arc<BatchBuf>>,
    /// Pooled buffers currently active, sealed or being written.
    pub buffers_out: usize,
    /// Bytes of the one-off buffers of oversized batches active, sealed or being written.
    pub oversized_out: usize,
    pub segment: SegmentPlan,
    /// The highest LSN a waiter wants durable.
    pub sync_wanted: Lsn,
    pub closing: bool,
    /// Batches activated so far: the next batch's sequence number.
    pub batches_started: u64,
    /// The sequence number of the batch the flusher took last (being written, or durable).
    pub taken_seq: u64,
    /// The flusher sleeps on the work condition variable.
    pub flusher_asleep: bool,
    /// It sleeps out a commit window: a sync request need not wake it (see
    /// `Shared::notify_flusher_for_sync`).
    pub flusher_gathering: bool,
    /// Appenders sleeping on the free-buffer condition variable.
    pub space_waiters: usize,
    /// Appenders of oversized records refused room in flight, in the order they asked.
    pub oversized_turns: Turns,
    /// The largest recent frame beyond the fixed budget of one-off buffers, which grows it.
    large: LargeFrames,
}

impl Plan {
    pub fn new(limits: Limits, next_lsn: Lsn, segment: SegmentPlan) -> Plan {
        Plan {
            limits,
            next_lsn,
            active: None,
            sealed: VecDeque::new(),
            free: Vec::new(),
            spare_oversized: Vec::new(),
            buffers_out: 0,
            oversized_out: 0,
            segment,
            sync_wanted: Lsn::ZERO,
            closing: false,
            batches_started: 0,
            taken_seq: 0,
            flusher_asleep: false,
            flusher_gathering: false,
            space_waiters: 0,
            oversized_turns: Turns::default(),
            large: LargeFrames::default(),
        }
    }

    /// [`Self::reserve_in_turn`] for an appender that will not come back if refused.
    #[cfg(test)]
    pub fn reserve(&mut self, frames: Frames, keys: &mut dyn Keys) -> Result<Reservation, Wait> {
        let mut turn = Turn::default();
        let reserved = self.reserve_in_turn(frames, keys, &mut turn);
        self.oversized_turns.leave(&mut turn);
        reserved
    }

    /// Reserves consecutive LSNs and one contiguous region for `frames` (one record, a batch of
    /// them or an atomic group), all in the same batch, sealing and rolling as needed. The
    /// region holds the frames in order. `keys` gives a segment's salt and keys when its first
    /// batch needs them, and says when a change to the key ring ends a segment.
    ///
    /// An appender that may be refused and come back ([`Wait::ForBuffer`]) passes the same
    /// `turn` each time, and takes it out of [`Self::oversized_turns`] once it is done; see
    /// [`Turn`].
    pub fn reserve_in_turn(&mut self, frames: Frames, keys: &mut dyn Keys, turn: &mut Turn) -> Result<Reservation, Wait> {
        let total = |identity: &Identity| frames.records * identity.frame_len(0) + frames.payload_bytes;
        let end = u64::try_from(frames.records).ok().and_then(|n| self.next_lsn.0.checked_add(n));
        if end.is_none_or(|end| end > Lsn::LIMIT.0) {
            return Err(Wait::NoLsn);
        }
        let generation = keys.generation();
        loop {
            if self.segment.generation != generation {
                // The ring changed (a new active key, plaintext refused): a segment whose
                // identity it no longer wants ends here, and records go on in a new one.
                let fits = self.segment.identity.as_ref().is_none_or(|identity| keys.still_fits(identity));
                if !fits && self.segment.started {
                    if self.active.is_none() {
                        self.activate(0, turn)?;
                    }
                    self.seal_active(true);
                    self.roll();
                    continue;
                }
                if !fits {
                    // Chosen but not yet written: choose again.
                    self.segment.identity = None;
                }
                self.segment.generation = generation;
            }
            if self.active.is_none() {
                if !self.segment.started && self.segment.id == LAST_ID {
                    return Err(Wait::NoSegmentId);
                }
                if self.segment.identity.is_none() {
                    self.segment.identity = Some(keys.new_identity(self.segment.id).ok_or(Wait::NoIdentity)?);
                }
                let frame_len = total(self.segment.identity.as_ref().expect("chosen above"));
                self.activate(frame_len, turn)?;
            }
            let active = self.active.as_ref().expect("activated above");
            let frame_len = total(&active.target.identity);
            let used = active.buf.used();
            if self.must_roll(active, used, frame_len) {
                self.seal_active(true);
                self.roll();
                continue;
            }
            if let Some(region) = active.buf.try_reserve(frame_len) {
                let lsn = self.next_lsn;
                self.next_lsn = Lsn(lsn.0 + frames.records as u64);
                return Ok(Reservation { lsn, batch: active.seq, identity: active.target.identity.clone(), region });
            }
            // Full (or too small for an oversized record): close it and start another.
            self.seal_active(false);
        }
    }

    /// Whether appending `frame_len` more bytes would take the segment past its target size.
    /// A segment that holds nothing yet takes any batch, so a huge record cannot roll forever.
    fn must_roll(&self, active: &Active, used: usize, frame_len: usize) -> bool {
        let block = self.limits.block as u64;
        let holds_something = active.target.offset > block || used > 0;
        let end = active.target.offset + padded_len(used + frame_len + END_FRAME_LEN, self.limits.block) as u64;
        holds_something && end > self.limits.segment_bytes_target
    }

    fn activate(&mut self, frame_len: usize, turn: &mut Turn) -> Result<(), Wait> {
        let oversized = frame_len > self.limits.batch_bytes_max;
        let buf = if oversized {
            // A bounded number of bytes in flight, unless none are: appenders of large
            // records wait for the disk as others do, instead of queueing buffers without end
            // (found by review: 100 appends of 4 MiB on a slow disk queued ~360 MiB). They go
            // in the order they first asked.
            self.note_large(frame_len);
            let room = self.oversized_out == 0 || self.oversized_out + self.limits.buffer_bytes(frame_len) <= self.oversized_budget();
            if !room || !self.oversized_turns.is_turn(turn) {
                self.oversized_turns.join(turn);
                return Err(Wait::ForBuffer);
            }
            let buf = self.oversized_buffer(frame_len).ok_or(Wait::NoMemory { bytes: self.limits.buffer_bytes(frame_len) })?;
            self.oversized_out += buf.capacity();
            buf
        } else if let Some(buf) = self.free.pop() {
            self.buffers_out += 1;
            buf
        } else if self.buffers_out < self.limits.batch_buffers {
            self.buffers_out += 1;
            Arc::new(BatchBuf::new(self.limits.batch_bytes_max, self.limits.block, self.limits.slack()))
        } else {
            return Err(Wait::ForBuffer);
        };
        let target = Target {
            segment: self.segment.id,
            identity: self.segment.identity.clone().expect("chosen by reserve before activating"),
            segment_first_lsn: self.segment.first_lsn,
            offset: self.segment.offset,
            create: !self.segment.started,
        };
        self.segment.started = true;
        self.batches_started += 1;
        self.active = Some(Active { buf, first_lsn: self.next_lsn, seq: self.batches_started, target });
        Ok(())
    }

    /// Closes the active batch (if any) and queues it for the flusher.
    pub fn seal_active(&mut self, ends_segment: bool) {
        let Some(active) = self.active.take() else { return };
        let used = active.buf.seal();
        let closing = if ends_segment { END_FRAME_LEN } else { 0 };
        let padded = padded_len(used + closing, self.limits.block);
        assert!(padded <= active.buf.capacity(), "batch of {padded} bytes overflows its buffer");
        self.segment.offset += padded as u64;
        let oversized = active.buf.limit() > self.limits.batch_bytes_max;
        let meta = BatchMeta {
            seq: active.seq,
            first_lsn: active.first_lsn,
            end_lsn: self.next_lsn,
            used,
            padded,
            target: active.target,
            ends_segment,
            oversized,
        };
        self.sealed.push_back(Sealed { buf: active.buf, meta });
    }

    fn roll(&mut self) {
        // Only a started segment rolls, and the one with the last id is never started.
        let id = self.segment.id.0.checked_add(1).expect("a segment with the last id never rolls");
        self.segment = SegmentPlan {
            id: SegmentId(id),
            identity: None,
            generation: self.segment.generation,
            first_lsn: self.next_lsn,
            offset: self.limits.block as u64,
            started: false,
        };
    }

    /// Hands the oldest sealed batch to the flusher.
    pub fn take_sealed(&mut self) -> Option<Sealed> {
        let job = self.sealed.pop_front()?;
        self.taken_seq = job.meta.seq;
        Some(job)
    }

    /// Moves the sealed batches the flusher can write with one sync into `run`, oldest first:
    /// the oldest sealed batch and each next one that goes on where it ends, in the same
    /// segment. A batch that creates a segment only starts a run; one that seals a segment
    /// ends it. Batches queue up only when the disk is slower than the appenders (records as
    /// large as a batch, or an ingest stream), and then one sync covers them all instead of
    /// one each.
    pub fn take_sealed_run(&mut self, run: &mut Vec<Sealed>) {
        while let Some(next) = self.sealed.front() {
            if run.last().is_some_and(|prev| !continues(&prev.meta, &next.meta)) {
                break;
            }
            let job = self.take_sealed().expect("the front was just seen");
            run.push(job);
        }
    }

    /// The sequence number of the batch holding `lsn`, an issued LSN not yet known durable:
    /// the active batch, a sealed one, or else the last one the flusher took. That one ends the
    /// run being written, which holds `lsn`, and is acknowledged after every other batch of it.
    pub fn batch_of(&self, lsn: Lsn) -> u64 {
        if let Some(active) = self.active.as_ref().filter(|a| lsn >= a.first_lsn) {
            return active.seq;
        }
        self.sealed.iter().rev().find(|s| lsn >= s.meta.first_lsn).map_or(self.taken_seq, |s| s.meta.seq)
    }

    /// Whether the active batch holds records.
    pub fn active_has_records(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.first_lsn < self.next_lsn)
    }

    /// A one-off buffer for an oversized batch of `frame_len` bytes: the smallest kept one
    /// that is large enough, else a new one, for which kept ones too small are let go as far
    /// as the budget needs. Smallest, not first: a small oversized batch taking a kept 16 MiB
    /// buffer would leave the next large record to allocate a fresh one. `None` where the
    /// system has no memory for a new one: its size is what one call appends (a group may hold
    /// any number of records, the same payload many times over), and a failed allocation
    /// aborted the process, for a call the log can refuse before it takes an LSN.
    fn oversized_buffer(&mut self, frame_len: usize) -> Option<Arc<BatchBuf>> {
        let slack = self.limits.slack();
        let wanted = frame_len.saturating_add(slack);
        let best = (self.spare_oversized.iter().enumerate())
            .filter(|(_, buf)| buf.capacity() >= wanted)
            .min_by_key(|(_, buf)| buf.capacity())
            .map(|(i, _)| i);
        if let Some(best) = best {
            let mut buf = self.spare_oversized.swap_remove(best);
            let fits = sole(&mut buf).reset_to(frame_len, slack);
            debug_assert!(fits, "chosen because it holds the frame");
            return Some(buf);
        }
        let needed = self.oversized_out + self.limits.buffer_bytes(frame_len);
        while self.spare_oversized_bytes() + needed > self.oversized_budget() && self.spare_oversized.pop().is_some() {}
        BatchBuf::try_new(frame_len, self.limits.block, slack).map(Arc::new)
    }

    /// Bytes one-off buffers may hold now, in flight and kept: the fixed budget, grown while
    /// records larger than it come (see `large.rs`).
    pub fn oversized_budget(&self) -> usize {
        self.large.budget(self.limits.oversized_bytes())
    }

    /// Grows the budget for a frame of `frame_len` bytes if [`LARGE_FRAMES_HELD`] of its
    /// buffers would not fit the fixed one, unless it is larger than any one record
    /// ([`Limits::large_frame_max`]).
    fn note_large(&mut self, frame_len: usize) {
        if frame_len > self.limits.large_frame_max() {
            return;
        }
        let bytes = self.limits.buffer_bytes(frame_len);
        if LARGE_FRAMES_HELD.saturating_mul(bytes) > self.limits.oversized_bytes() {
            self.large.note(bytes);
        }
    }

    /// Whether the budget grown for large frames is still needed (`now` reads the clock, only
    /// while it is grown). Once it shrinks, the kept buffers that no longer fit it go into
    /// `let_go`, for the caller to drop once it has let go of the lock. Returns when the next
    /// look is due, if one is: the flusher sleeps no longer than that, so that an idle log
    /// lets them go too.
    pub fn look_at_large(&mut self, now: impl FnOnce() -> Instant, let_go: &mut Vec<Arc<BatchBuf>>) -> Option<Duration> {
        if !self.large.grown() {
            return None;
        }
        match self.large.look(now()) {
            Look::Idle => None,
            Look::Again(after) => Some(after),
            Look::Shrunk => {
                self.trim_spare(let_go);
                None
            }
        }
    }

    /// Moves into `let_go` the kept buffers that no longer fit the budget beside those in
    /// flight.
    fn trim_spare(&mut self, let_go: &mut Vec<Arc<BatchBuf>>) {
        let budget = self.oversized_budget();
        let mut held = self.oversized_out;
        let mut i = 0;
        while i < self.spare_oversized.len() {
            let bytes = self.spare_oversized[i].capacity();
            if held + bytes <= budget {
                held += bytes;
                i += 1;
            } else {
                let_go.push(self.spare_oversized.swap_remove(i));
            }
        }
    }

    fn spare_oversized_bytes(&self) -> usize {
        self.spare_oversized.iter().map(|buf| buf.capacity()).sum()
    }

    /// Takes back a written buffer. The pool keeps its own. One-off buffers of oversized
    /// batches are kept too, while they and those in flight fit [`Self::oversized_budget`]: an ingest
    /// loop appending groups larger than a batch otherwise paid for a fresh, zeroed buffer
    /// (page faults and all) for every group, and ran at ~0.5 of the same records appended
    /// one by one (`compare --pipelined --size 4k`, BENCHMARKS.md). Returns a buffer it lets
    /// go, for the caller to drop once it has let go of the lock (unmapping a large buffer
    /// in small pages takes a millisecond or more).
    #[must_use = "a buffer let go is to be dropped after the lock is"]
    pub fn recycle(&mut self, mut buf: Arc<BatchBuf>, oversized: bool) -> Option<Arc<BatchBuf>> {
        if oversized {
            self.oversized_out -= buf.capacity();
            if self.spare_oversized_bytes() + self.oversized_out + buf.capacity() <= self.oversized_budget() {
                self.spare_oversized.push(buf);
                return None;
            }
            return Some(buf);
        }
        sole(&mut buf).reset();
        self.buffers_out -= 1;
        self.free.push(buf);
        None
    }
}

/// Whether batch `next` goes on where `prev` ends, in the same open segment.
/// Batches are sealed in order and each starts where the one before ended, so within one
/// segment they always continue each other: only a segment's end or start breaks a run.
fn continues(prev: &BatchMeta, next: &BatchMeta) -> bool {
    let goes_on = !prev.ends_segment && !next.target.create;
    debug_assert!(
        !goes_on || (next.target.segment == prev.target.segment && next.target.offset == prev.target.offset + prev.padded as u64),
        "batches of one segment sealed out of order"
    );
    goes_on
}

/// A buffer back from the flusher (or kept), which no region shares any more.
fn sole(buf: &mut Arc<BatchBuf>) -> &mut BatchBuf {
    Arc::get_mut(buf).expect("a written or kept buffer has no regions left")
}

#[cfg(test)]
mod tests {
    use super::large::LET_GO_AFTER;
    use super::*;
    use crate::format::frame::HEADER_LEN;

    fn plan(target: u64) -> Plan {
        let limits = Limits {
            block: 4096,
            batch_bytes_max: 16 * 1024,
            batch_buffers: 2,
            segment_bytes_target: target,
            payload_bytes_max: 32 * 1024,
        };
        let segment = SegmentPlan { id: SegmentId(1), identity: None, generation: 0, first_lsn: Lsn(1), offset: 4096, started: false };
        Plan::new(limits, Lsn(1), segment)
    }

    fn salt() -> impl FnMut(SegmentId) -> Option<Identity> {
        let mut n = 100;
        move |_| {
            n += 1;
            Some(Identity { salt: n, crypt: None })
        }
    }

    #[test]
    fn lsns_are_dense_and_follow_buffer_order() {
        let mut p = plan(1 << 30);
        let mut s = salt();
        let a = p.reserve(Frames::one(100 - HEADER_LEN), &mut s).unwrap();
        let b = p.reserve(Frames::one(100 - HEADER_LEN), &mut s).unwrap();
        assert_eq!((a.lsn, b.lsn), (Lsn(1), Lsn(2)));
        assert!(a.region.start() < b.region.start());
    }

    #[test]
    fn a_full_pool_makes_appenders_wait_instead_of_overwriting() {
        let mut p = plan(1 << 30);
        let mut s = salt();
        let mut held = Vec::new();
        for _ in 0..32 {
            match p.reserve(Frames::one(8 * 1024 - HEADER_LEN), &mut s) {
                Ok(r) => held.push(r),
                Err(Wait::ForBuffer) => break,
                Err(wait) => unreachable!("every segment gets a salt and an id here: {wait:?}"),
            }
        }
        assert_eq!(held.len(), 4, "two buffers of two records each");
        assert_eq!(p.sealed.len(), 2, "both full buffers wait for the flusher");
    }

    #[test]
    fn rolling_seals_the_segment_and_starts_the_next_at_the_same_lsn() {
        let mut p = plan(4 * 4096);
        let mut s = salt();
        let mut ended = Vec::new();
        for _ in 0..6 {
            drop(p.reserve(Frames::one(3000 - HEADER_LEN), &mut s).unwrap());
            p.seal_active(false);
            while let Some(b) = p.sealed.pop_front() {
                let m = b.meta.clone();
                if m.ends_segment {
                    ended.push((m.target.segment, m.end_lsn, m.target.offset + m.padded as u64));
                }
                let oversized = m.oversized;
                let _ = p.recycle(b.buf, oversized);
            }
        }
        // Three one-block batches fit after the header block; the fourth rolls.
        assert_eq!(ended, vec![(SegmentId(1), Lsn(4), 4 * 4096 + 4096)]);
        assert_eq!(p.segment.id, SegmentId(2));
        assert_eq!(p.segment.first_lsn, Lsn(4));
    }

    #[test]
    fn an_oversized_record_gets_its_own_batch() {
        let mut p = plan(1 << 30);
        let mut s = salt();
        let r = p.reserve(Frames::one(100 * 1024 - HEADER_LEN), &mut s).unwrap();
        assert_eq!(r.lsn, Lsn(1));
        drop(r);
        p.seal_active(false);
        assert!(p.sealed[0].meta.oversized);
        assert_eq!(p.buffers_out, 0);
    }

    /// Reserves one oversized record of `payload` bytes, seals its batch, and returns the
    /// sealed batch's buffer (as the flusher would, once written) and its address.
    fn oversized_batch(p: &mut Plan, payload: usize) -> (Arc<BatchBuf>, usize) {
        let r = p.reserve(Frames::one(payload), &mut salt()).unwrap();
        drop(r);
        p.seal_active(false);
        let sealed = p.take_sealed().unwrap();
        assert!(sealed.meta.oversized);
        let mut buf = sealed.buf;
        let at = sole(&mut buf).bytes_mut().as_ptr() as usize;
        (buf, at)
    }

    #[test]
    fn oversized_buffers_are_reused_when_they_fit_and_kept_only_up_to_their_budget() {
        let mut p = plan(1 << 30);
        p.limits.batch_buffers = 2;
        let budget = p.limits.oversized_bytes();
        let (buf, first) = oversized_batch(&mut p, 20 * 1024);
        let _ = p.recycle(buf, true);
        // A smaller oversized batch reuses the kept buffer, limited to its own length.
        let (buf, second) = oversized_batch(&mut p, 18 * 1024);
        assert_eq!(second, first, "the kept buffer");
        assert_eq!(buf.limit(), HEADER_LEN + 18 * 1024, "no room for records the batch does not hold");
        let _ = p.recycle(buf, true);
        // A larger one needs a new buffer; both are kept while they fit the budget.
        let (buf, third) = oversized_batch(&mut p, 24 * 1024);
        assert_ne!(third, first);
        let _ = p.recycle(buf, true);
        assert_eq!(p.spare_oversized.len(), 2);
        let kept: usize = p.spare_oversized.iter().map(|buf| buf.capacity()).sum();
        assert!(kept <= budget, "{kept} bytes kept");
        // One that would take the kept bytes past the budget is dropped.
        let (big, _) = oversized_batch(&mut p, budget - kept);
        let _ = p.recycle(big, true);
        assert_eq!(p.spare_oversized.len(), 2);
        assert_eq!(p.oversized_out, 0);
    }

    #[test]
    fn an_oversized_batch_takes_the_smallest_kept_buffer_that_holds_it() {
        let mut p = plan(1 << 30);
        p.limits.batch_buffers = 2;
        let (large, at_large) = oversized_batch(&mut p, 40 * 1024);
        let (small, at_small) = oversized_batch(&mut p, 20 * 1024);
        assert!(p.recycle(large, true).is_none() && p.recycle(small, true).is_none(), "both kept");
        let (buf, at) = oversized_batch(&mut p, 18 * 1024);
        assert_eq!(at, at_small, "the 20 KiB buffer, not the first kept (40 KiB) one");
        let _ = p.recycle(buf, true);
        let (_, at) = oversized_batch(&mut p, 30 * 1024);
        assert_eq!(at, at_large, "the large one is still there for a batch only it holds");
    }

    #[test]
    // Miri backs each allocation with host memory and reports a terabyte as resource
    // exhaustion instead of returning null; every other build runs this.
    #[cfg_attr(miri, ignore)]
    fn a_batch_the_system_cannot_allocate_is_refused_and_leaves_the_plan_as_it_was() {
        let mut p = plan(1 << 30);
        let first = p.reserve(Frames::one(100), &mut salt()).unwrap();
        // A terabyte: no allocator gives that much (the machine's memory and more).
        let huge = Frames { records: 16, payload_bytes: 1 << 40 };
        assert!(matches!(p.reserve(huge, &mut salt()), Err(Wait::NoMemory { bytes }) if bytes > 1 << 40));
        assert_eq!(p.next_lsn, Lsn(first.lsn.0 + 1), "no LSN taken");
        assert_eq!(p.oversized_out, 0, "no buffer counted as out");
        drop(first);
        let next = p.reserve(Frames::one(100), &mut salt()).unwrap();
        assert_eq!(next.lsn, Lsn(2), "the plan goes on");
    }

    #[test]
    fn oversized_batches_hold_at_most_their_budget_in_flight_but_one_always_goes() {
        let mut p = plan(1 << 30);
        p.limits.batch_buffers = 2;
        let budget = p.limits.oversized_bytes();
        let large = budget * 2 / 5;
        assert!(large > p.limits.batch_bytes_max);
        // A record larger than the whole budget still gets a batch when none is in flight.
        let (huge, _) = oversized_batch(&mut p, 2 * budget);
        assert!(matches!(p.reserve(Frames::one(20 * 1024), &mut salt()), Err(Wait::ForBuffer)), "waits while the huge one is out");
        let _ = p.recycle(huge, true);
        // Below the budget several go at once; the one that would pass it waits for the disk.
        let (first, _) = oversized_batch(&mut p, large);
        let (second, _) = oversized_batch(&mut p, large);
        assert!(matches!(p.reserve(Frames::one(large), &mut salt()), Err(Wait::ForBuffer)));
        assert!(p.active.is_none(), "the waiter left nothing active that the flusher would not write");
        let _ = p.recycle(first, true);
        let (third, _) = oversized_batch(&mut p, large);
        // Small records are not held back by large ones in flight: they use the pool.
        let small = p.reserve(Frames::one(100), &mut salt()).unwrap();
        drop(small);
        p.seal_active(false);
        let pooled = p.take_sealed().unwrap();
        assert!(!pooled.meta.oversized);
        for buf in [second, third] {
            let _ = p.recycle(buf, true);
        }
        assert_eq!(p.oversized_out, 0);
    }

    #[test]
    fn a_run_takes_queued_batches_of_one_segment_and_stops_where_a_segment_ends() {
        // Three blocks' worth of target: the header block, then two one-block batches fit;
        // the third record rolls, which seals the segment with an empty batch.
        let mut p = plan(3 * 4096);
        p.limits.batch_buffers = 8;
        let mut s = salt();
        for _ in 0..4 {
            drop(p.reserve(Frames::one(3000 - HEADER_LEN), &mut s).unwrap());
            p.seal_active(false);
        }
        let mut run = Vec::new();
        p.take_sealed_run(&mut run);
        let seen: Vec<_> = run.iter().map(|b| (b.meta.target.segment, b.meta.target.create, b.meta.ends_segment)).collect();
        let first_segment = vec![(SegmentId(1), true, false), (SegmentId(1), false, false), (SegmentId(1), false, true)];
        assert_eq!(seen, first_segment, "up to the segment's end");
        assert_eq!(p.taken_seq, 3, "waiters of the run wait for its last batch");
        run.clear();
        p.take_sealed_run(&mut run);
        let seen: Vec<_> = run.iter().map(|b| (b.meta.target.segment, b.meta.target.create)).collect();
        assert_eq!(seen, vec![(SegmentId(2), true), (SegmentId(2), false)], "a new segment starts the next run");
        run.clear();
        p.take_sealed_run(&mut run);
        assert!(run.is_empty());
    }

    #[test]
    fn oversized_buffers_in_flight_and_kept_stay_within_one_budget() {
        let mut p = plan(1 << 30);
        let budget = p.limits.oversized_bytes();
        let held = |p: &Plan| p.oversized_out + p.spare_oversized.iter().map(|buf| buf.capacity()).sum::<usize>();
        // Kept buffers of small records, then larger records that none of them fits.
        let small: Vec<_> = (0..3).map(|_| oversized_batch(&mut p, budget / 5).0).collect();
        for buf in small {
            let _ = p.recycle(buf, true);
        }
        assert_eq!(p.spare_oversized.len(), 3);
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(oversized_batch(&mut p, budget * 2 / 5).0);
            assert!(held(&p) <= budget, "{} bytes held against {budget}", held(&p));
        }
        assert!(p.spare_oversized.len() < 3, "small kept buffers let go for the large ones");
        for buf in out {
            let _ = p.recycle(buf, true);
            assert!(held(&p) <= budget, "{} bytes held against {budget}", held(&p));
        }
    }

    #[test]
    fn oversized_appenders_refused_room_go_in_the_order_they_asked() {
        let mut p = plan(1 << 30);
        let large = p.limits.oversized_bytes() * 2 / 5;
        let (first, _) = oversized_batch(&mut p, large);
        let (second, _) = oversized_batch(&mut p, large);
        let (mut a, mut b, mut late) = (Turn::default(), Turn::default(), Turn::default());
        let try_in = |p: &mut Plan, turn: &mut Turn| match p.reserve_in_turn(Frames::one(large), &mut salt(), turn) {
            Ok(r) => {
                drop(r);
                p.seal_active(false);
                p.oversized_turns.leave(turn);
                true
            }
            Err(Wait::ForBuffer) => false,
            Err(other) => panic!("{other:?}"),
        };
        assert!(!try_in(&mut p, &mut a) && !try_in(&mut p, &mut b), "no room for either");
        let _ = p.recycle(first, true);
        assert!(!try_in(&mut p, &mut b), "room for one, and it is a's");
        assert!(!try_in(&mut p, &mut late), "nor for one who asks later");
        assert!(try_in(&mut p, &mut a));
        let _ = p.recycle(second, true);
        assert!(!try_in(&mut p, &mut late), "b asked first");
        assert!(try_in(&mut p, &mut b));
        p.oversized_turns.leave(&mut late);
        assert!(!p.oversized_turns.any());
    }

    #[test]
    fn each_waiting_lsn_maps_to_the_batch_that_will_sync_it() {
        let mut p = plan(1 << 30);
        p.limits.batch_buffers = 3;
        let mut s = salt();
        let first = p.reserve(Frames::one(100), &mut s).unwrap().lsn;
        p.seal_active(false);
        let second = p.reserve(Frames::one(100), &mut s).unwrap().lsn;
        p.seal_active(false);
        let third = p.reserve(Frames::one(100), &mut s).unwrap().lsn;
        assert_eq!([p.batch_of(first), p.batch_of(second), p.batch_of(third)], [1, 2, 3], "sealed, sealed, active");
        let taken = p.take_sealed().unwrap();
        assert_eq!(taken.meta.seq, 1);
        assert_eq!(p.batch_of(first), 1, "the batch being written");
        assert_eq!((p.batch_of(second), p.batch_of(third)), (2, 3));
    }

    /// A plan whose one-off buffers have a fixed budget of 128 KiB and whose records may be
    /// up to 1 MiB: records of more than a third of the budget grow it.
    fn plan_of_large_records() -> Plan {
        let mut p = plan(1 << 30);
        p.limits.payload_bytes_max = 1 << 20;
        p
    }

    /// Bytes the one-off buffers hold, in flight and kept.
    fn held(p: &Plan) -> usize {
        p.oversized_out + p.spare_oversized_bytes()
    }

    #[test]
    fn records_larger_than_the_fixed_budget_go_three_at_a_time_and_their_buffers_are_kept() {
        let mut p = plan_of_large_records();
        let fixed = p.limits.oversized_bytes();
        let large = fixed * 3 / 4;
        let written: Vec<_> = (0..3).map(|_| oversized_batch(&mut p, large)).collect();
        assert!(matches!(p.reserve(Frames::one(large), &mut salt()), Err(Wait::ForBuffer)), "a fourth waits");
        let kept_at: Vec<usize> = written.iter().map(|(_, at)| *at).collect();
        for (buf, _) in written {
            assert!(p.recycle(buf, true).is_none(), "kept");
        }
        let budget = p.oversized_budget();
        assert!(budget > fixed && held(&p) <= budget, "{} bytes held against {budget}", held(&p));
        for _ in 0..3 {
            let (_, at) = oversized_batch(&mut p, large);
            assert!(kept_at.contains(&at), "a kept buffer, not a fresh one");
        }
        assert!(p.spare_oversized.is_empty());
    }

    #[test]
    fn buffers_kept_for_large_records_are_let_go_after_a_period_without_one() {
        let mut p = plan_of_large_records();
        let fixed = p.limits.oversized_bytes();
        let (small, _) = oversized_batch(&mut p, 20 * 1024);
        assert!(p.recycle(small, true).is_none());
        for _ in 0..3 {
            let (large, _) = oversized_batch(&mut p, fixed);
            assert!(p.recycle(large, true).is_none());
        }
        assert!(held(&p) > fixed);

        let start = Instant::now();
        let at = |periods: u32| move || start + LET_GO_AFTER * periods;
        let mut let_go = Vec::new();
        assert_eq!(p.look_at_large(at(0), &mut let_go), Some(LET_GO_AFTER), "the first period starts");
        assert_eq!(p.look_at_large(at(1), &mut let_go), Some(LET_GO_AFTER), "large records came in the first");
        let (again, _) = oversized_batch(&mut p, fixed);
        assert!(p.recycle(again, true).is_none());
        assert_eq!(p.look_at_large(at(2), &mut let_go), Some(LET_GO_AFTER), "and in the second");
        assert!(let_go.is_empty());
        assert_eq!(p.look_at_large(at(3), &mut let_go), None, "none in the third");
        assert_eq!(let_go.len(), 1, "the kept large buffer");
        assert_eq!(p.spare_oversized.len(), 1, "the small one fits the fixed budget and stays");
        assert_eq!(p.oversized_budget(), fixed);

        // One in flight when the budget shrinks goes once it is written.
        let (out, _) = oversized_batch(&mut p, fixed);
        assert_eq!(p.look_at_large(at(4), &mut let_go), Some(LET_GO_AFTER));
        assert_eq!(p.look_at_large(at(5), &mut let_go), Some(LET_GO_AFTER));
        assert_eq!(p.look_at_large(at(6), &mut let_go), None);
        assert!(p.recycle(out, true).is_some(), "not kept");
        assert!(held(&p) <= fixed);
    }

    #[test]
    fn a_group_larger_than_any_one_record_goes_alone_and_grows_no_budget() {
        let mut p = plan_of_large_records();
        let fixed = p.limits.oversized_bytes();
        let group = Frames { records: 4, payload_bytes: 4 * p.limits.payload_bytes_max };
        drop(p.reserve(group, &mut salt()).unwrap());
        p.seal_active(false);
        let alone = p.take_sealed().unwrap();
        assert_eq!(p.oversized_budget(), fixed);
        assert!(matches!(p.reserve(Frames::one(fixed), &mut salt()), Err(Wait::ForBuffer)), "nothing large goes beside it");
        assert!(p.recycle(alone.buf, true).is_some(), "nor is it kept");
    }

    /// Random reservations of records small and large (and groups larger than any record),
    /// written in order by a flusher that lags, and looks at a clock that runs on: the one-off
    /// buffers never hold more than the documented bound, and an appender refused room always
    /// has something in flight to wait for.
    #[test]
    fn one_off_buffers_never_hold_more_than_three_of_the_largest_record_or_one_frame_alone() {
        let mut p = plan_of_large_records();
        let bound = p.limits.oversized_bytes().max(3 * p.limits.buffer_bytes(p.limits.large_frame_max()));
        let sizes = [100, 20 << 10, 50 << 10, 100 << 10, 300 << 10, 1 << 20, 3 << 20];
        let mut x = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut in_flight = VecDeque::new();
        let mut now = Instant::now();
        let mut let_go = Vec::new();
        for _ in 0..5000 {
            match next(4) {
                0 | 1 => {
                    let size = sizes[next(sizes.len() as u64) as usize];
                    let frames = Frames { records: 1 + usize::from(size > 1 << 20), payload_bytes: size };
                    match p.reserve(frames, &mut salt()) {
                        Ok(r) => drop(r),
                        Err(Wait::ForBuffer) => assert!(!in_flight.is_empty() || !p.sealed.is_empty(), "refused with nothing to wait for"),
                        Err(other) => panic!("{other:?}"),
                    }
                    p.seal_active(false);
                    while let Some(sealed) = p.take_sealed() {
                        in_flight.push_back((sealed.buf, sealed.meta.oversized));
                    }
                }
                2 => {
                    if let Some((buf, oversized)) = in_flight.pop_front() {
                        let_go.extend(p.recycle(buf, oversized));
                    }
                }
                _ => {
                    now += LET_GO_AFTER * u32::try_from(next(3)).unwrap() / 2;
                    let _ = p.look_at_large(|| now, &mut let_go);
                }
            }
            let alone = p.spare_oversized.is_empty() && in_flight.iter().filter(|(_, oversized)| *oversized).count() == 1;
            assert!(held(&p) <= bound || alone, "{} bytes held against {bound}", held(&p));
            let_go.clear();
        }
    }
}
