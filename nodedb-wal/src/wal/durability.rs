//! Waiting for durability (blocking, pipelined, as a future), syncing everything, and the close
//! that syncs and seals last.

use super::SegmentedWal;
use crate::commit::DurableFuture;
use crate::error::Result;
#[cfg(doc)]
use crate::error::WalError;
use crate::storage::Storage;
use crate::types::Lsn;

impl<S: Storage> SegmentedWal<S> {
    /// Blocks until a successful fdatasync covers `lsn`.
    ///
    /// A [`WalError::Poisoned`] (or the write or sync error that poisoned the log) leaves the
    /// records it did not cover in doubt, not lost: some may have reached the disk, and the
    /// next open may return them. A database answers such a write "outcome unknown".
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let lsn = wal.append(Record::new(ty, b"x"))?;
    /// wal.wait_durable(lsn)?; // shares its fdatasync with every record buffered before it
    /// assert!(wal.durable_lsn() >= lsn);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.committer.wait_durable(lsn)
    }

    /// Asks for a sync covering `lsn` and returns at once: a pipelined writer calls this after
    /// a group of appends and [`Self::wait_durable`] later, so the sync runs while it goes on
    /// appending. Errors if `lsn` was never issued, or the log is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let mut in_flight = Vec::new();
    /// for group in 0..4u8 {
    ///     let last = (0..64).map(|_| wal.append(Record::new(ty, &[group]))).last().unwrap()?;
    ///     wal.request_sync(last)?; // the sync runs while the next group is appended
    ///     in_flight.push(last);
    /// }
    /// for lsn in in_flight {
    ///     wal.wait_durable(lsn)?;
    /// }
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn request_sync(&self, lsn: Lsn) -> Result<()> {
        self.committer.request_sync(lsn)
    }

    /// A future that resolves once `lsn` is durable, under any executor
    /// (`examples/ingest.rs` drives it with a small executor that sleeps until woken).
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use std::future::Future;
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let lsn = wal.append(Record::new(ty, b"x"))?;
    /// let mut future = std::pin::pin!(wal.durable(lsn)?);
    /// // Any executor will do; this one polls by hand.
    /// let mut cx = Context::from_waker(Waker::noop());
    /// while let Poll::Pending = future.as_mut().poll(&mut cx) {
    ///     std::thread::yield_now();
    /// }
    /// assert!(wal.durable_lsn() >= lsn);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn durable(&self, lsn: Lsn) -> Result<DurableFuture<'_>> {
        self.committer.durable(lsn)
    }

    /// Waits up to `timeout` until `lsn` is durable, without asking for a sync: for a reader
    /// that follows the log (an event-plane subscriber over [`Self::lazy_reader`]) and wants
    /// to sleep until there is more to read rather than poll [`Self::durable_lsn`]. `lsn` need
    /// not be issued yet. `Ok(true)` once it is durable, `Ok(false)` at the timeout
    /// (`Duration::MAX` waits without end), and the poison error if the log is poisoned before
    /// `lsn` is durable (an LSN made durable before the failure still answers `Ok(true)`).
    /// Such a subscriber waits for its reader's [`LazyWalReader::next_lsn`](crate::LazyWalReader::next_lsn)
    /// once the reader has read all there is, not for the last record's LSN plus one: records
    /// readers skip (a newer build's optional types) would be durable at every wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use std::time::Duration;
    ///
    /// let next = wal.next_lsn();
    /// assert!(!wal.watch_durable(next, Duration::from_millis(1))?, "nothing appended yet");
    /// wal.append_durable(Record::new(ty, b"event"))?;
    /// assert!(wal.watch_durable(next, Duration::from_millis(1))?);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn watch_durable(&self, lsn: Lsn, timeout: std::time::Duration) -> Result<bool> {
        self.committer.await_durable(lsn, timeout)
    }

    /// Makes everything appended so far durable.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// wal.append(Record::new(ty, b"a"))?;
    /// wal.append(Record::new(ty, b"b"))?;
    /// assert_eq!(wal.sync()?, Lsn(2));
    /// assert_eq!(wal.durable_lsn(), Lsn(2));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn sync(&self) -> Result<Lsn> {
        // A poisoned log answers every sync with the poison, even when every LSN it issued
        // was durable before the failure: a caller must not read an Ok as a log that goes on.
        self.committer.check_poison()?;
        let last = Lsn(self.committer.next_lsn().0 - 1);
        self.committer.wait_durable(last)?;
        Ok(last)
    }

    /// Writes and syncs everything appended, seals the newest segment with an end frame that
    /// vouches for its last batch (so that damage there is corruption at the next open, not a
    /// torn tail cut without a word), then stops. Dropping the log does the same but can only
    /// log a failure. A failed seal poisons the log and is returned; every acknowledged record
    /// stays, and the next open seals the segment. Called on the log's flusher thread (from a
    /// task's waker), it cannot wait for that thread: the flusher still writes (and seals)
    /// everything, and this returns [`WalError::CloseUnconfirmed`] if some of it was not
    /// durable yet.
    ///
    /// `close` takes the log by value. Shared in an `Arc`, the holder of the last handle gets it
    /// with `Arc::into_inner` (which gives `None`, and lets go of the handle, while other
    /// handles remain); a holder that cannot know it is the last calls [`Self::sync`] before
    /// letting go, so that a failure comes back as an error and not only as a log line.
    ///
    /// [`WalError::CloseUnconfirmed`]: crate::WalError::CloseUnconfirmed
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// wal.append(Record::new(ty, b"last words"))?;
    /// wal.close()?; // written and synced
    ///
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let shared = std::sync::Arc::new(wal);
    /// let writer = std::sync::Arc::clone(&shared);
    /// std::thread::spawn(move || writer.append(Record::new(ty, b"from a thread"))).join().unwrap()?;
    /// let wal = std::sync::Arc::into_inner(shared).expect("the thread's handle is gone");
    /// wal.close()?;
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn close(self) -> Result<()> {
        self.committer.close()
    }
}
