//! Readers of the durable records (owned, raw, mapped, headers first) and tails that follow the
//! log.

use std::sync::Arc;

use super::SegmentedWal;
use crate::error::Result;
use crate::read::{Decrypt, LazyWalReader, Position, ReadSpec, WalIter};
use crate::storage::Storage;
use crate::tail::{TAIL_CHUNK, Tail};
use crate::types::Lsn;

impl<S: Storage> SegmentedWal<S> {
    /// Reads the durable records from `from` on, in LSN order, decrypting encrypted ones.
    ///
    /// The reader ends at the durable LSN of the moment it was made; records made durable later
    /// need a new reader, or a [`Self::tail`]. From below [`Self::oldest_lsn`] it is
    /// [`WalError::LsnNotRetained`]. From past the last durable record it reads nothing and is
    /// no error, even from an LSN never issued (unlike [`Self::truncate_before`]): where a
    /// stored position may come from another log, compare it with [`Self::next_lsn`] first.
    ///
    /// It hands out the records of dropped collections and purged data too, as every reader
    /// does: the engines leave them out ([`crate::TombstoneSet::is_live`] with
    /// [`crate::RecoveryInfo::tombstones`], or [`crate::WalRecord::tombstone`] applied in order).
    ///
    /// [`WalError::LsnNotRetained`]: crate::WalError::LsnNotRetained
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// for i in 0..3u8 {
    ///     wal.append(Record::new(ty, &[i]))?;
    /// }
    /// wal.sync()?;
    /// let mut reader = wal.read_from(Lsn(2))?;
    /// wal.append_durable(Record::new(ty, &[3]))?; // after the reader was made
    /// let payloads: Vec<Vec<u8>> = reader.by_ref().map(|r| r.map(|r| r.payload.into_vec())).collect::<Result<_, _>>()?;
    /// assert_eq!(payloads, [[1], [2]]);
    /// assert_eq!(wal.read_from(Lsn(1000))?.count(), 0, "never issued, yet no error");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn read_from(&self, from: Lsn) -> Result<WalIter<S>> {
        self.reader(from, self.decrypt())
    }

    /// Like [`Self::read_from`], but hands out encrypted payloads as stored (ciphertext then
    /// tag), for tools that copy or inspect segments without keys.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// wal.append_durable(Record::new(ty, b"plain"))?;
    /// // Without a key ring nothing is encrypted, so raw and decrypted reads agree.
    /// assert_eq!(wal.read_from_raw(Lsn::FIRST)?.next().unwrap()?.payload, b"plain");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn read_from_raw(&self, from: Lsn) -> Result<WalIter<S>> {
        self.reader(from, Decrypt::Raw)
    }

    /// Like [`Self::read_from`], for catching up on a long stretch of log: sealed segments are
    /// read through a memory map with sequential advice, and the pages the reader has passed
    /// are given back (to the system and out of the page cache), so a catch-up neither grows
    /// the process nor evicts the database's working set. The active segment is read as usual.
    ///
    /// The map's price: a disk read error in a mapped segment stops the process (`SIGBUS`)
    /// instead of coming back as [`WalError::Io`]. So does a mapped file cut short by someone
    /// else (a program or a hand truncating segment files): the log itself never shortens or
    /// rewrites a file a reader has open, mapped or not (truncation unlinks it or, kept for
    /// reuse, rewrites it only once no reader holds it; recovery cuts only the segment a
    /// crash left open, and only where no reader holds it: one may map it where a batch
    /// whose fdatasync failed sealed it in the page cache). Where storage cannot map (the simulation),
    /// this is [`Self::read_from`].
    ///
    /// [`WalError::Io`]: crate::WalError::Io
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// wal.append_durable(Record::new(ty, b"caught up"))?;
    /// // The simulation cannot map: the same records come through reads.
    /// let mut reader = wal.read_mapped(Lsn::FIRST)?;
    /// let view = reader.next_view().expect("one record")?;
    /// assert_eq!(view.payload, b"caught up");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn read_mapped(&self, from: Lsn) -> Result<WalIter<S>> {
        WalIter::new(Arc::clone(&self.storage), ReadSpec { mapped: true, ..self.read_spec(from, self.decrypt()) })
    }

    /// Lets a tail's reader go on to the current durable LSN (see `WalIter::extend`).
    pub(crate) fn extend_reader(&self, reader: &mut WalIter<S>) -> Result<bool> {
        let until = self.durable_lsn();
        reader.extend(until, self.segments())
    }

    fn reader(&self, from: Lsn, decrypt: Decrypt) -> Result<WalIter<S>> {
        WalIter::new(Arc::clone(&self.storage), self.read_spec(from, decrypt))
    }

    pub(super) fn decrypt(&self) -> Decrypt {
        Decrypt::With(self.config.key_ring.clone())
    }

    /// A reader for a [`Tail`]'s refill: mapped catch-up, small reads of the live segment, and
    /// a start at `resume` (where the last refill stopped) when it is the record `from`.
    pub(crate) fn tail_reader(&self, from: Lsn, resume: Option<Position>) -> Result<WalIter<S>> {
        let spec = ReadSpec { mapped: true, chunk: TAIL_CHUNK, resume, ..self.read_spec(from, self.decrypt()) };
        WalIter::new(Arc::clone(&self.storage), spec)
    }

    /// Follows the log from `from`, handing out each record once it is durable: see [`Tail`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use std::time::Duration;
    /// let mut tail = wal.tail(Lsn::FIRST);
    /// wal.append(Record::new(ty, b"event"))?;
    /// assert!(tail.next_timeout(Duration::from_millis(10))?.is_none(), "not durable yet");
    /// wal.sync()?;
    /// let record = tail.next_timeout(Duration::from_secs(1))?.expect("durable now");
    /// assert_eq!(record.payload, b"event");
    /// assert_eq!(tail.cursor(), Lsn(2), "where to resume after a restart");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn tail(&self, from: Lsn) -> Tail<'_, S> {
        Tail::new(self, from)
    }

    /// [`Self::tail`] holding the log through an `Arc` instead of a borrow: a tail that can be
    /// kept in a subscriber's own struct, or moved to its thread, for as long as it follows.
    /// It keeps the log open (the directory locked) until it is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, Tail, storage::FaultConfig};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// # let ty = RecordType::optional(0x100);
    /// struct Subscriber {
    ///     tail: Tail<'static, SimStorage>,
    /// }
    /// let wal = Arc::new(SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?);
    /// let mut subscriber = Subscriber { tail: Arc::clone(&wal).tail_shared(Lsn::FIRST) };
    /// let follower = std::thread::spawn(move || subscriber.tail.next_timeout(Duration::from_secs(5)));
    /// let lsn = wal.append_durable(Record::new(ty, b"event"))?;
    /// assert_eq!(follower.join().unwrap()?.map(|r| r.lsn), Some(lsn));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn tail_shared(self: Arc<Self>, from: Lsn) -> Tail<'static, S>
    where
        S: 'static,
    {
        Tail::shared(self, from)
    }

    /// Reads durable records from `from` on, headers first: see [`LazyWalReader`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let wanted = RecordType::optional(0x200);
    /// wal.append(Record::new(ty, &[0; 4096]))?;
    /// wal.append(Record::new(wanted, b"this one"))?;
    /// wal.sync()?;
    /// let mut lazy = wal.lazy_reader(Lsn::FIRST)?;
    /// let mut found = Vec::new();
    /// while let Some(handle) = lazy.next_header()? {
    ///     if handle.record_type == wanted {
    ///         found.push(lazy.payload()?); // only this payload is read
    ///     }
    /// }
    /// assert_eq!(found, [b"this one".to_vec()]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn lazy_reader(&self, from: Lsn) -> Result<LazyWalReader<S>> {
        LazyWalReader::new(Arc::clone(&self.storage), self.read_spec(from, self.decrypt()))
    }

    pub(super) fn read_spec(&self, from: Lsn, decrypt: Decrypt) -> ReadSpec {
        // The durable LSN first: a segment's listing grows before the watermark moves past it,
        // so the listing taken after covers every record up to `until`.
        let until = self.durable_lsn();
        ReadSpec {
            direct: self.direct,
            align: self.config.alignment,
            check_ahead: self.config.check_ahead,
            clip_active: true,
            ..ReadSpec::new(self.config.dir.clone(), self.segments(), from, until, decrypt)
        }
    }
}
