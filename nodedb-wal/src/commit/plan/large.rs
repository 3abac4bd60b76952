//! Room for records larger than the fixed budget of one-off buffers ([`LargeFrames`]): while
//! such records come, the budget grows to hold a few of the largest; once they stop coming, it
//! shrinks back, and the buffers kept for them are let go.

use std::time::{Duration, Instant};

/// How many buffers of the largest recent frame the one-off buffers may hold, in flight and
/// kept together. Under the fixed budget a record larger than it went alone: its buffer was
/// fresh (mapped, faulted in, zeroed) every time and never kept, and the next record could not
/// even be encoded before that one was written and synced: 16 threads of 16 MiB records ran
/// at 0.7-1.4x okaywal, and spent ~2x the CPU per record (BENCHMARKS.md). With room for
/// three, one is written while the next waits sealed and a third is encoded, and a written
/// buffer is kept for the next record. Room for two did about as well (fewer records shared
/// a sync); three is what was measured most.
pub const LARGE_FRAMES_HELD: usize = 3;

/// How long the grown budget outlives the last frame that needed it, at least (at most twice
/// this): a burst of huge records does not pin their buffers for the life of the log.
pub const LET_GO_AFTER: Duration = Duration::from_secs(1);

/// The largest recent frame beyond the fixed budget, and when it was last seen.
#[derive(Debug, Default)]
pub struct LargeFrames {
    /// Bytes of the buffer of the largest such frame since the budget last shrank (0: none).
    buffer_bytes: usize,
    /// Whether one came since the last look that kept the budget.
    seen: bool,
    /// When the looks' current period started.
    looked_at: Option<Instant>,
}

/// What a look at the clock decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing grown: no look is due.
    Idle,
    /// Look again in this long.
    Again(Duration),
    /// No such frame came for a whole period: the budget is the fixed one again.
    Shrunk,
}

impl LargeFrames {
    /// A frame whose buffer takes `bytes` got one, and the budget must grow to hold
    /// [`LARGE_FRAMES_HELD`] of it.
    pub fn note(&mut self, bytes: usize) {
        self.buffer_bytes = self.buffer_bytes.max(bytes);
        self.seen = true;
    }

    /// The budget: the fixed one, or room for [`LARGE_FRAMES_HELD`] of the largest recent
    /// frame's buffers if that is more.
    pub fn budget(&self, fixed: usize) -> usize {
        fixed.max(LARGE_FRAMES_HELD.saturating_mul(self.buffer_bytes))
    }

    /// Whether the budget is grown.
    pub fn grown(&self) -> bool {
        self.buffer_bytes > 0
    }

    /// Looks at the clock: a period of [`LET_GO_AFTER`] starts at the first look after the
    /// budget grew, and another after each period in which such a frame came; one without
    /// shrinks the budget. Frames are noted without a clock (the append path reads none);
    /// whoever looks brings one.
    pub fn look(&mut self, now: Instant) -> Look {
        if !self.grown() {
            return Look::Idle;
        }
        let since = *self.looked_at.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed < LET_GO_AFTER {
            return Look::Again(LET_GO_AFTER - elapsed);
        }
        if std::mem::take(&mut self.seen) {
            self.looked_at = Some(now);
            return Look::Again(LET_GO_AFTER);
        }
        *self = LargeFrames::default();
        Look::Shrunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_to_three_of_the_largest_frame_and_never_below_the_fixed_one() {
        let mut large = LargeFrames::default();
        assert_eq!(large.budget(100), 100);
        large.note(20);
        assert_eq!(large.budget(100), 100, "three of 20 fit the fixed budget");
        large.note(50);
        large.note(40);
        assert_eq!(large.budget(100), 150, "three of the largest");
    }

    #[test]
    fn the_budget_shrinks_only_after_a_whole_period_without_a_large_frame() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut large = LargeFrames::default();
        assert_eq!(large.look(at(0)), Look::Idle);
        large.note(50);
        assert_eq!(large.look(at(0)), Look::Again(LET_GO_AFTER), "the first period starts");
        assert_eq!(large.look(at(400)), Look::Again(Duration::from_millis(600)));
        // A frame noted in the first period keeps the budget for another.
        assert_eq!(large.look(at(1000)), Look::Again(LET_GO_AFTER));
        large.note(50);
        assert_eq!(large.look(at(2100)), Look::Again(LET_GO_AFTER), "noted in the second period");
        assert_eq!(large.look(at(2500)), Look::Again(Duration::from_millis(600)));
        assert_eq!(large.look(at(3100)), Look::Shrunk, "nothing in the third");
        assert_eq!(large.budget(100), 100);
        assert_eq!(large.look(at(5000)), Look::Idle);
        large.note(30);
        assert_eq!(large.look(at(5000)), Look::Again(LET_GO_AFTER), "a new first period");
    }
}
