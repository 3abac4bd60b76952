//! The queue of appenders refused room for an oversized record ([`Turns`]), so that the one
//! refused first goes first.

use std::collections::VecDeque;

/// An appender's place among those waiting for room, once it was refused: kept across its
/// tries, so that one refused first goes first. Each refused appender waited on every free
/// buffer with all the others and the ones just acknowledged, and the same one could lose
/// again and again: at 16 threads of 4 MiB records, p99 was ~4x the mean wait.
#[derive(Debug, Default)]
pub struct Turn(Option<u64>);

impl Turn {
    /// Whether it was refused and waits in the queue.
    pub fn is_queued(&self) -> bool {
        self.0.is_some()
    }
}

/// The queue of [`Turn`]s.
#[derive(Debug, Default)]
pub struct Turns {
    waiting: VecDeque<u64>,
    next: u64,
}

impl Turns {
    /// Whether `turn` may go now: nobody waits, or it is the first of those who do.
    pub(super) fn is_turn(&self, turn: &Turn) -> bool {
        self.waiting.front().is_none_or(|first| turn.0 == Some(*first))
    }

    /// Queues `turn` if it is not queued yet.
    pub(super) fn join(&mut self, turn: &mut Turn) {
        if turn.0.is_none() {
            turn.0 = Some(self.next);
            self.waiting.push_back(self.next);
            self.next += 1;
        }
    }

    /// Takes `turn` out of the queue (it went, or gave up waiting).
    pub fn leave(&mut self, turn: &mut Turn) {
        if let Some(ticket) = turn.0.take() {
            self.waiting.retain(|t| *t != ticket);
        }
    }

    /// Whether anyone waits.
    pub fn any(&self) -> bool {
        !self.waiting.is_empty()
    }
}
