//! The write path's counters ([`CommitStats`]) and the snapshot a metrics exporter reads
//! ([`CommitStatsSnapshot`]).
//!
//! Plain atomics, bumped where the work happens; nothing here takes a lock.

use std::sync::atomic::AtomicU64;

/// Counters of the write path, cheap enough to leave on.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// fdatasync calls that succeeded.
    pub fsyncs: AtomicU64,
    /// Batches written. Batches that queued up behind a sync share the next one, so there may
    /// be more batches than fsyncs.
    pub batches: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written to segment bodies (records plus padding).
    pub bytes_written: AtomicU64,
    /// Nanoseconds spent in batch writes and their fdatasyncs, in total and the longest one.
    pub sync_nanos: AtomicU64,
    /// See `sync_nanos`.
    pub sync_nanos_max: AtomicU64,
    /// `wait_durable` calls that had to block, and the nanoseconds they blocked in total.
    pub waits: AtomicU64,
    /// See `waits`.
    pub wait_nanos: AtomicU64,
    /// Appends that found every buffer full and waited for the writer to free one.
    pub buffer_waits: AtomicU64,
}

/// A snapshot of the write path's counters: plain numbers for a metrics exporter.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// let before = wal.stats();
/// let ty = RecordType::optional(0x100);
/// let lsns = wal.append_batch(&[Record::new(ty, b"a"), Record::new(ty, b"b"), Record::new(ty, b"c")])?;
/// wal.wait_durable(*lsns.end())?;
///
/// let delta = wal.stats().since(&before);
/// assert_eq!((delta.records, delta.batches), (3, 1), "one reservation, one batch");
/// assert!(delta.fsyncs >= 1 && delta.bytes_written % 4096 == 0);
/// assert!(!delta.poisoned);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStatsSnapshot {
    /// fdatasync calls that succeeded.
    pub fsyncs: u64,
    /// Batches written (queued batches share a sync: at least `fsyncs`).
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written to segment bodies (records plus padding).
    pub bytes_written: u64,
    /// Nanoseconds spent writing and fdatasyncing batches (the commit latency's disk part).
    pub sync_nanos: u64,
    /// The longest single write + fdatasync (of a batch, or of batches queued behind a sync),
    /// in nanoseconds.
    pub sync_nanos_max: u64,
    /// `wait_durable` calls that had to block (the group-commit wait).
    pub waits: u64,
    /// Nanoseconds those calls blocked in total.
    pub wait_nanos: u64,
    /// Appends that found every buffer full and waited for the writer to free one: the disk
    /// falls behind the appenders, or the buffers are too small for the load (PostgreSQL counts
    /// the same as `wal_buffers_full`).
    pub buffer_waits: u64,
    /// Whether a failed write or sync poisoned the log.
    pub poisoned: bool,
}

impl CommitStatsSnapshot {
    /// Records per batch, on average (0 before the first batch): how well group commit shares
    /// its fdatasyncs.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::CommitStatsSnapshot;
    ///
    /// assert_eq!(CommitStatsSnapshot::default().records_per_batch(), 0.0);
    /// let busy = CommitStatsSnapshot { records: 600, batches: 40, ..CommitStatsSnapshot::default() };
    /// assert_eq!(busy.records_per_batch(), 15.0);
    /// ```
    #[must_use]
    pub fn records_per_batch(&self) -> f64 {
        if self.batches == 0 { 0.0 } else { self.records as f64 / self.batches as f64 }
    }

    /// The counters accumulated since `earlier` (the maximum and the poisoned flag are kept).
    ///
    /// Counters start again from zero when the log is opened again (the way out of poisoning),
    /// so a snapshot taken before a reopen may be larger than one taken after it. Where any
    /// counter went down, they restarted: the result is then everything counted since the
    /// restart, `self` itself, as a metrics system reads a counter reset. A reopened log that has
    /// already counted past every counter of the older snapshot cannot be told from the same
    /// log: take a fresh snapshot after each open for exact deltas.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::CommitStatsSnapshot;
    ///
    /// let earlier = CommitStatsSnapshot { records: 100, fsyncs: 10, sync_nanos_max: 900, ..CommitStatsSnapshot::default() };
    /// let now = CommitStatsSnapshot { records: 160, fsyncs: 12, sync_nanos_max: 700, ..CommitStatsSnapshot::default() };
    /// let delta = now.since(&earlier);
    /// assert_eq!((delta.records, delta.fsyncs), (60, 2));
    /// assert_eq!(delta.sync_nanos_max, 700, "the newer snapshot's maximum, not a difference");
    ///
    /// // After a reopen the counters restarted: the delta is what the new log counted.
    /// let reopened = CommitStatsSnapshot { records: 30, fsyncs: 3, ..CommitStatsSnapshot::default() };
    /// assert_eq!(reopened.since(&now), reopened);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &CommitStatsSnapshot) -> CommitStatsSnapshot {
        if self.restarted_after(earlier) {
            return *self;
        }
        CommitStatsSnapshot {
            fsyncs: self.fsyncs - earlier.fsyncs,
            batches: self.batches - earlier.batches,
            records: self.records - earlier.records,
            bytes_written: self.bytes_written - earlier.bytes_written,
            sync_nanos: self.sync_nanos - earlier.sync_nanos,
            sync_nanos_max: self.sync_nanos_max,
            waits: self.waits - earlier.waits,
            wait_nanos: self.wait_nanos - earlier.wait_nanos,
            buffer_waits: self.buffer_waits - earlier.buffer_waits,
            poisoned: self.poisoned,
        }
    }

    /// Whether any counter is below `earlier`'s: they cannot go down within one open log.
    fn restarted_after(&self, earlier: &CommitStatsSnapshot) -> bool {
        self.fsyncs < earlier.fsyncs
            || self.batches < earlier.batches
            || self.records < earlier.records
            || self.bytes_written < earlier.bytes_written
            || self.sync_nanos < earlier.sync_nanos
            || self.waits < earlier.waits
            || self.wait_nanos < earlier.wait_nanos
            || self.buffer_waits < earlier.buffer_waits
    }
}
