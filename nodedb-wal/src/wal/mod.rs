//! `SegmentedWal`: the façade that opens (recovers) a log directory, appends through the group
//! committer, replays and truncates.
//!
//! One file per concern, each with its own `impl` block: `open` (recovery wiring), `append`
//! (appends and their checks), `durability` (waits, syncs, close), `read` (readers and tails),
//! `replay` (parallel replay), `truncate` (truncation and what it leaves for the next open), `keys`
//! (which keys the segments are encrypted under).

mod append;
mod durability;
mod keys;
mod open;
mod read;
mod replay;
mod truncate;

pub use open::recover;

use std::sync::{Arc, Mutex};

use crate::commit::{CommitStatsSnapshot, GroupCommitter};
use crate::config::SegmentedWalConfig;
use crate::manifest::Floor;
use crate::recovery::RecoveryInfo;
use crate::segment::SegmentInfo;
use crate::storage::{FsStorage, Storage};
use crate::types::Lsn;

/// A segmented write-ahead log, shared by any number of threads (`&self` appends).
///
/// ```
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};
///
/// let dir = tempfile::tempdir()?;
/// let mut config = SegmentedWalConfig::new(dir.path());
/// config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
/// let wal = SegmentedWal::open(config.clone())?;
/// let lsn = wal.append_durable(Record::new(RecordType::optional(0x100), b"hello"))?;
/// drop(wal); // no close: recovery finds every acknowledged record anyway
///
/// let wal = SegmentedWal::open(config)?;
/// assert_eq!(wal.recovery_info().last_lsn, lsn);
/// let first = wal.read_from(Lsn::FIRST)?.next().expect("one record")?;
/// assert_eq!(first.payload, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SegmentedWal<S: Storage = FsStorage> {
    storage: Arc<S>,
    config: SegmentedWalConfig,
    direct: bool,
    recovery: RecoveryInfo,
    committer: GroupCommitter<S>,
    /// The truncation floor, held by one truncation at a time.
    truncation: Mutex<Floor<S::File>>,
}

impl<S: Storage> std::fmt::Debug for SegmentedWal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentedWal")
            .field("dir", &self.config.dir)
            .field("direct", &self.direct)
            .field("committer", &self.committer)
            .finish()
    }
}

impl<S: Storage> SegmentedWal<S> {
    /// What recovery found when the log was opened.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// assert_eq!(wal.recovery_info().record_count, 0, "a new log");
    /// assert!(wal.recovery_info().torn_tail.is_none());
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn recovery_info(&self) -> &RecoveryInfo {
        &self.recovery
    }

    /// The storage the log runs on; for [`FsStorage`], `storage().backend()` tells whether
    /// io_uring or pwrite + fdatasync carries the writes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let _sim: &SimStorage = wal.storage();
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Whether writes bypass the page cache.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// assert!(wal.direct_io(), "O_DIRECT is the default, and the simulation accepts it");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// The highest LSN a successful fdatasync covers.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// assert_eq!(wal.durable_lsn(), Lsn::ZERO);
    /// let lsn = wal.append_durable(Record::new(ty, b"x"))?;
    /// assert_eq!(wal.durable_lsn(), lsn);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn durable_lsn(&self) -> Lsn {
        self.committer.durable_lsn()
    }

    /// The oldest LSN the log still holds (the first record of its oldest segment, or of the
    /// one being written): where a replay of everything starts once
    /// [`Self::truncate_before`] has removed segments, since reading from below it is
    /// [`WalError::LsnNotRetained`].
    ///
    /// [`WalError::LsnNotRetained`]: crate::WalError::LsnNotRetained
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let ty = RecordType::optional(0x100);
    /// let mut config = SegmentedWalConfig::new("/small");
    /// config.segment_bytes_target = 64 * 1024;
    /// let wal = SegmentedWal::open_with(SimStorage::new(2, FaultConfig::default()), config)?;
    /// assert_eq!(wal.oldest_lsn(), Lsn::FIRST);
    /// wal.append(Record::new(ty, b"not yet durable"))?;
    /// assert_eq!(wal.oldest_lsn(), Lsn::FIRST, "where a replay after the sync starts");
    /// for _ in 0..200 {
    ///     wal.append(Record::new(ty, &[7; 1000]))?;
    /// }
    /// wal.truncate_before(wal.sync()?)?;
    /// assert!(wal.oldest_lsn() > Lsn::FIRST);
    /// assert!(matches!(wal.read_from(Lsn::FIRST), Err(nodedb_wal::WalError::LsnNotRetained { .. })));
    /// let all = wal.read_from(wal.oldest_lsn())?.count();
    /// assert_eq!(all as u64, wal.next_lsn().0 - wal.oldest_lsn().0);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn oldest_lsn(&self) -> Lsn {
        // A segment is listed once its first batch is durable, and truncation keeps the
        // newest: with none listed yet, the log starts where it started at the open.
        self.segments().first().map_or(self.recovery.first_lsn, |s| s.first_lsn)
    }

    /// The LSN the next append gets.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// assert_eq!(wal.next_lsn(), Lsn::FIRST);
    /// wal.append(Record::new(ty, b"x"))?;
    /// assert_eq!(wal.next_lsn(), Lsn(2));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn next_lsn(&self) -> Lsn {
        self.committer.next_lsn()
    }

    /// Segments on disk, oldest first.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// assert!(wal.segments().is_empty(), "a segment is listed once its first batch is durable");
    /// wal.append_durable(Record::new(ty, b"x"))?;
    /// let segments = wal.segments();
    /// assert_eq!((segments.len(), segments[0].record_count()), (1, 1));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.committer.segments()
    }

    /// Counters of the write path.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let before = wal.stats();
    /// wal.append_durable(Record::new(ty, b"x"))?;
    /// let delta = wal.stats().since(&before);
    /// assert_eq!((delta.records, delta.fsyncs), (1, 1));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn stats(&self) -> CommitStatsSnapshot {
        self.committer.stats()
    }

    pub(crate) fn committer(&self) -> &GroupCommitter<S> {
        &self.committer
    }
}

/// `SegmentedWal` is shared between threads by reference.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SegmentedWal<FsStorage>>();
    send_sync::<SegmentedWal<crate::storage::SimStorage>>();
};
