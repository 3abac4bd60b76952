//! [`Tail`]: a follower of a live log (the event plane's subscriber). It hands out records in
//! LSN order, each only once it is durable, so nothing it delivers can be taken back by a
//! crash; it never asks for a sync itself; it follows segment rolls, and its cursor is the
//! position to resume from after a restart.
//!
//! Each refill reads what became durable since the last one, with the reader of the last refill
//! (its segment open, its position kept), or from where it stopped: sealed segments it
//! catches up on are memory-mapped (see [`SegmentedWal::read_mapped`]), the live segment is
//! read a few blocks at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Result, WalError};
use crate::read::WalIter;
use crate::record::WalRecord;
use crate::storage::Storage;
use crate::types::Lsn;
use crate::wal::SegmentedWal;

/// Records read ahead at most per refill, and payload bytes after which a refill stops: a
/// subscriber far behind a log of large records holds a few MiB, not 1024 of them (a review
/// measured 800 MiB held for a log of 4 MiB records).
const READ_AHEAD: usize = 1024;
const READ_AHEAD_BYTES: usize = 4 << 20;

/// Bytes per read of the live segment: a follower that keeps up reads little at a time.
pub(crate) const TAIL_CHUNK: usize = 64 << 10;

/// Follows a log from a cursor. See the module documentation.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// use std::time::Duration;
/// let lsn = wal.append_durable(Record::new(ty, b"first"))?;
/// let mut tail = wal.tail(Lsn::FIRST);
/// assert_eq!(tail.next_timeout(Duration::from_secs(1))?.map(|r| r.lsn), Some(lsn));
/// // Caught up: the next call waits up to its timeout for a durable record.
/// assert!(tail.next_timeout(Duration::from_millis(5))?.is_none());
/// // Store `tail.cursor()` with the subscriber's state; after a restart, `wal.tail(cursor)`.
/// assert_eq!(tail.cursor(), Lsn(2));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Debug)]
pub struct Tail<'a, S: Storage> {
    wal: Followed<'a, S>,
    cursor: Lsn,
    ready: VecDeque<WalRecord>,
    /// The reader of the last refill, kept for the next.
    reader: Option<WalIter<S>>,
    /// The error a refill met after reading records, returned once they are delivered.
    failed: Option<WalError>,
}

/// The log a tail follows: borrowed, or held through an `Arc` so that the tail, with its kept
/// reader, can live in a subscriber's own struct beside the handle it shares.
#[derive(Debug)]
enum Followed<'a, S: Storage> {
    Borrowed(&'a SegmentedWal<S>),
    Shared(Arc<SegmentedWal<S>>),
}

impl<S: Storage> std::ops::Deref for Followed<'_, S> {
    type Target = SegmentedWal<S>;

    fn deref(&self) -> &SegmentedWal<S> {
        match self {
            Followed::Borrowed(wal) => wal,
            Followed::Shared(wal) => wal,
        }
    }
}

impl<'a, S: Storage> Tail<'a, S> {
    pub(crate) fn new(wal: &'a SegmentedWal<S>, from: Lsn) -> Tail<'a, S> {
        Tail::following(Followed::Borrowed(wal), from)
    }

    fn following(wal: Followed<'a, S>, from: Lsn) -> Tail<'a, S> {
        Tail { wal, cursor: from, ready: VecDeque::new(), reader: None, failed: None }
    }
}

impl<S: Storage + 'static> Tail<'static, S> {
    pub(crate) fn shared(wal: Arc<SegmentedWal<S>>, from: Lsn) -> Tail<'static, S> {
        Tail::following(Followed::Shared(wal), from)
    }
}

impl<S: Storage> Tail<'_, S> {
    /// The LSN of the next record this tail will deliver: store it with the subscriber's state
    /// and pass it to [`SegmentedWal::tail`] to resume.
    #[must_use]
    pub fn cursor(&self) -> Lsn {
        self.cursor
    }

    /// The next durable record, waiting up to `timeout` for one; `Ok(None)` at the timeout.
    /// A cursor below the oldest retained segment (truncated away) is `LsnNotRetained`. A
    /// cursor past the log's next LSN (one stored for another log, say) is no error: it waits
    /// until the log gets there.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<WalRecord>> {
        // `Duration::MAX` (wait without end) has no deadline.
        let deadline = Instant::now().checked_add(timeout);
        while self.ready.is_empty() {
            if let Some(err) = self.failed.take() {
                return Err(err);
            }
            let wanted = self.cursor.max(Lsn::FIRST);
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            if !self.wal.committer().await_durable(wanted, left)? {
                return Ok(None);
            }
            self.refill(wanted)?;
            // A refill that delivers nothing read only records a reader skips (a newer build's
            // optional types): the cursor moves past them and the tail waits again, or it
            // would find its cursor durable at every call and spin. One that did not even
            // move the cursor has nothing to wait for: it answers as at the timeout.
            if self.ready.is_empty() && !self.skip_to_reader() {
                return Ok(None);
            }
        }
        let Some(record) = self.ready.pop_front() else { return Ok(None) };
        self.cursor = record.lsn.next();
        Ok(Some(record))
    }

    /// Reads what is durable from `wanted` (the cursor) on into `ready`.
    fn refill(&mut self, wanted: Lsn) -> Result<()> {
        // What is durable from the cursor on (readers stop at the durable LSN), at most a
        // bounded batch at a time however far behind the follower is.
        // The reader of the last refill goes on where it stopped, its segment still open; a
        // new one (after an error, or once truncation took its segment) starts at the
        // position the old one reached, not at its segment's start.
        let mut old = self.reader.take();
        let kept = match old.as_mut() {
            Some(reader) => self.wal.extend_reader(reader)?,
            None => false,
        };
        let reader = match old {
            Some(reader) if kept => self.reader.insert(reader),
            old => self.reader.insert(self.wal.tail_reader(wanted, old.and_then(|r| r.resume_point()))?),
        };
        let mut bytes = 0;
        while self.ready.len() < READ_AHEAD && bytes < READ_AHEAD_BYTES {
            let Some(record) = reader.next_view() else { break };
            let record = match record {
                Ok(view) => view.to_record(),
                // The records before an error go first: a subscriber stops at the error.
                Err(err) if !self.ready.is_empty() => {
                    self.failed = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            };
            bytes += record.payload.len();
            self.ready.push_back(record);
        }
        // Kept until the next refill, which may be far off: not with a large record's buffers.
        reader.trim();
        Ok(())
    }

    /// Moves the cursor to where the kept reader stands, if that is past it (the reader passed
    /// records it skips); whether it moved.
    fn skip_to_reader(&mut self) -> bool {
        match self.reader.as_ref().and_then(WalIter::resume_point) {
            Some(at) if at.lsn > self.cursor => {
                self.cursor = at.lsn;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SegmentedWalConfig;
    use crate::crypto::{KeyRing, SecureKey};
    use crate::record::Record;
    use crate::storage::{FaultConfig, SimStorage};
    use crate::types::RecordType;

    // Found by a review: a tail keeps its reader from one refill to the next for as long as it
    // follows the log, and one large record left that reader holding a buffer of its size (the
    // live segment's read window, or the decryption buffer) until the segment rolled, which on
    // a quiet log is never.
    #[test]
    fn a_tail_holds_no_large_buffer_between_refills_after_a_large_record() {
        for encrypted in [false, true] {
            let mut config = SegmentedWalConfig::new("/tail-large");
            if encrypted {
                config.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [9; 32]))));
            }
            let wal = SegmentedWal::open_with(SimStorage::new(3, FaultConfig::default()), config).unwrap();
            let ty = RecordType::optional(0x100);
            let mut tail = wal.tail(Lsn::FIRST);
            for len in [16 << 20, 10] {
                wal.append_durable(Record::new(ty, &vec![5; len])).unwrap();
                let record = tail.next_timeout(Duration::from_secs(60)).unwrap().expect("durable");
                assert_eq!(record.payload.len(), len);
                drop(record);
                let held = tail.reader.as_ref().map_or(0, WalIter::held_bytes);
                assert!(held <= 2 << 20, "encrypted {encrypted}: {} KiB held after a record of {len} bytes", held >> 10);
            }
        }
    }
}
