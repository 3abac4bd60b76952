//! Appends, single and grouped, and the checks every record, tombstone and purge passes before
//! it takes an LSN.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use super::SegmentedWal;
use crate::error::{Result, WalError};
use crate::format::payload::{CalvinAppliedPayload, CollectionTombstonePayload, TemporalPurgePayload};
use crate::record::{GroupEntry, Record};
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, Scope};

impl<S: Storage> SegmentedWal<S> {
    /// Buffers a record and returns its LSN. It is durable once [`Self::wait_durable`] (or
    /// [`Self::sync`]) returns Ok for it. A rejected record uses no LSN.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let lsn = wal.append(Record::new(ty, b"buffered"))?;
    /// assert!(wal.durable_lsn() < lsn || wal.durable_lsn() == lsn);
    /// wal.wait_durable(lsn)?;
    /// assert!(wal.durable_lsn() >= lsn);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append(&self, record: Record<'_>) -> Result<Lsn> {
        self.check_record(&record)?;
        self.committer.append(record.record_type, record.scope, 0, record.payload)
    }

    /// Appends and waits until the record is durable.
    ///
    /// On an error after the record was buffered (the log poisoned by a failed write or sync,
    /// [`WalError::Poisoned`]), the record is in doubt, not lost: it may have reached the disk,
    /// and the next open may return it. A database answers such a write "outcome unknown".
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let lsn = wal.append_durable(Record::new(ty, b"acknowledged"))?;
    /// assert!(wal.durable_lsn() >= lsn);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_durable(&self, record: Record<'_>) -> Result<Lsn> {
        self.check_record(&record)?;
        self.committer.append_durable(record.record_type, record.scope, 0, record.payload)
    }

    /// Buffers `records` as an atomic group and returns their LSNs (consecutive): after any
    /// crash, recovery returns all of them or none. The group travels in one batch (one write
    /// and one fdatasync): a group larger than `batch_bytes_max` gets a batch of its own, as a
    /// large record does, and each record is bounded by `payload_bytes_max` only. That batch is
    /// one buffer of the whole group, encoded: a group larger than the system can allocate is
    /// [`WalError::OutOfMemory`](crate::WalError::OutOfMemory), with no LSN used. Wait on the
    /// last LSN to make all of it durable.
    ///
    /// Every record is checked before any LSN is taken: one refused (a reserved type, a payload
    /// over `payload_bytes_max`) fails the group, which then uses no LSN and writes nothing.
    /// To drop a collection or log a purge in the same group as the records that go with it,
    /// see [`Self::append_group_entries`]. [`Lsn::range`] walks the LSNs returned.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let lsns = wal.append_group(&[Record::new(ty, b"debit"), Record::new(ty, b"credit")])?;
    /// wal.wait_durable(*lsns.end())?;
    /// assert_eq!(lsns, Lsn(1)..=Lsn(2));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_group(&self, records: &[Record<'_>]) -> Result<RangeInclusive<Lsn>> {
        self.append_many(records, true)
    }

    /// Buffers `records` under one reservation and returns their LSNs (consecutive): the cheap
    /// way to append many records at once (one lock round instead of one per record). Unlike
    /// [`Self::append_group`] they are not atomic: a crash before their sync may keep any prefix
    /// of them. Like a group they travel in one batch (a batch larger than the buffers gets a
    /// buffer of its own, and one larger than the system can allocate is
    /// [`WalError::OutOfMemory`](crate::WalError::OutOfMemory)). [`Lsn::range`] walks the LSNs
    /// returned, one per record.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 16]).collect();
    /// let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(ty, p)).collect();
    /// let lsns = wal.append_batch(&records)?;
    /// assert_eq!(lsns, Lsn(1)..=Lsn(100));
    /// wal.wait_durable(*lsns.end())?;
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_batch(&self, records: &[Record<'_>]) -> Result<RangeInclusive<Lsn>> {
        self.append_many(records, false)
    }

    fn append_many(&self, records: &[Record<'_>], grouped: bool) -> Result<RangeInclusive<Lsn>> {
        if records.is_empty() {
            return Err(WalError::EmptyGroup);
        }
        for record in records {
            self.check_record(record)?;
        }
        let first = if grouped { self.committer.append_group(records)? } else { self.committer.append_batch(records)? };
        Ok(first..=Lsn(first.0 + records.len() as u64 - 1))
    }

    /// Like [`Self::append_group`], with collection tombstones and temporal purges among the
    /// records: a database drops a collection, or records a purge, all-or-nothing with its own
    /// records that go with it (the catalog entry), so that no crash leaves one without the
    /// other. Recovery gathers a tombstone or purge of a group into
    /// [`RecoveryInfo::tombstones`] and [`RecoveryInfo::temporal_purges`] only where the whole
    /// group survived.
    ///
    /// Each entry is checked as its single-record call checks it ([`Self::append`],
    /// [`Self::append_tombstone`], [`Self::append_temporal_purge`]), all of them before any
    /// LSN is taken: one bad entry fails the whole group, which uses no LSN and writes nothing.
    /// A tombstone's `purge_lsn` may be at most [`Self::next_lsn`] at the call (so at most the
    /// group's first LSN); a later one is [`WalError::LsnNotIssued`]. A malformed tombstone or
    /// purge is [`WalError::MalformedPayload`], naming the LSN the entry would have had.
    ///
    /// [`RecoveryInfo::tombstones`]: crate::RecoveryInfo::tombstones
    /// [`RecoveryInfo::temporal_purges`]: crate::RecoveryInfo::temporal_purges
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// use nodedb_wal::{CollectionTombstonePayload, GroupEntry, WalError};
    /// const CATALOG: RecordType = RecordType::required(0x100);
    /// let row = wal.append(Record::new(RecordType::optional(0x101), b"a row of orders"))?;
    ///
    /// // The catalog forgets the collection and the log drops its records, in one group.
    /// let dropped = CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn: wal.next_lsn() };
    /// let lsns = wal.append_group_entries(&[Record::new(CATALOG, b"drop orders").into(), GroupEntry::Tombstone(&dropped)])?;
    /// wal.wait_durable(*lsns.end())?;
    ///
    /// // A bad entry fails the group before anything is appended.
    /// let too_late = CollectionTombstonePayload { purge_lsn: Lsn(1000), ..dropped.clone() };
    /// let refused = wal.append_group_entries(&[Record::new(CATALOG, b"drop orders").into(), GroupEntry::Tombstone(&too_late)]);
    /// assert!(matches!(refused, Err(WalError::LsnNotIssued { .. })));
    /// assert_eq!(wal.next_lsn(), lsns.end().next(), "no LSN used");
    /// drop(wal);
    ///
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// let tombstones = &wal.recovery_info().tombstones;
    /// assert!(tombstones.is_dropped(0, 0, "orders", row));
    /// assert_eq!(tombstones.dropped_at(0, 0, "orders"), Some(*lsns.end()));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_group_entries(&self, entries: &[GroupEntry<'_>]) -> Result<RangeInclusive<Lsn>> {
        if entries.is_empty() {
            return Err(WalError::EmptyGroup);
        }
        let next = self.next_lsn();
        let payloads: Vec<Cow<'_, [u8]>> =
            entries.iter().enumerate().map(|(i, entry)| self.check_entry(entry, Lsn(next.0 + i as u64))).collect::<Result<_>>()?;
        let records: Vec<Record<'_>> = entries
            .iter()
            .zip(&payloads)
            .map(|(entry, payload)| Record { record_type: entry.record_type(), scope: entry.scope(), payload })
            .collect();
        let first = self.committer.append_group(&records)?;
        Ok(first..=Lsn(first.0 + records.len() as u64 - 1))
    }

    /// Checks an entry as its single-record call does, and returns the payload to log: a
    /// record's own, or the tombstone's or purge's encoding. `lsn` is the LSN an error names,
    /// the one the entry would get if it were appended now.
    fn check_entry<'a>(&self, entry: &GroupEntry<'a>, lsn: Lsn) -> Result<Cow<'a, [u8]>> {
        match *entry {
            GroupEntry::Record(record) => {
                self.check_record(&record)?;
                return Ok(Cow::Borrowed(record.payload));
            }
            // LSNs only grow, so an LSN at most `next` now is at most the one the tombstone gets.
            GroupEntry::Tombstone(tombstone) => self.check_reached(tombstone.purge_lsn)?,
            GroupEntry::TemporalPurge(..) => {}
        }
        let encoded = entry.encode_system().expect("a tombstone or a purge");
        let malformed = |problem| WalError::MalformedPayload { lsn, record_type: entry.record_type(), problem };
        Ok(Cow::Owned(encoded.map_err(malformed)?))
    }

    /// Records that a collection was dropped; replay drops its records below `purge_lsn`.
    ///
    /// `purge_lsn` may be at most the tombstone's own LSN (any LSN up to [`Self::next_lsn`] at
    /// the call): a drop that reached past its own record would name records written after it,
    /// which would come back to life once truncation removed the tombstone's segment. A later
    /// `purge_lsn` is [`WalError::LsnNotIssued`] and uses no LSN. Like every record, the
    /// tombstone goes with its segment at [`Self::truncate_before`]: truncate only below a
    /// checkpoint at which the engines have applied the drop. A collection name over
    /// [`crate::MAX_COLLECTION_NAME_LEN`] bytes is [`WalError::MalformedPayload`], and uses no
    /// LSN either.
    ///
    /// The drop reaches only the records below `purge_lsn`. Where other threads append rows of
    /// the collection meanwhile, those that take an LSN between the caller's read of
    /// [`Self::next_lsn`] and the tombstone's own LSN survive it: a database that must drop
    /// them too keeps writers of the collection out (its own lock) from that read until the
    /// tombstone is appended, as `examples/kv_engine.rs` does.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use nodedb_wal::CollectionTombstonePayload;
    /// let dropped = wal.append(Record::new(ty, b"a row"))?;
    /// let drop_at = wal.next_lsn();
    /// let tombstone = CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn: drop_at };
    /// wal.append_tombstone(&tombstone)?;
    /// wal.sync()?;
    /// drop(wal);
    ///
    /// // At the next open, recovery has gathered the tombstones in its scan: replay filters
    /// // with them, without reading the log twice.
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// let tombstones = &wal.recovery_info().tombstones;
    /// let row = wal.read_from(Lsn::FIRST)?.next().expect("the row")?;
    /// assert_eq!(row.lsn, dropped);
    /// assert!(!tombstones.is_live(&row, "orders"));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_tombstone(&self, tombstone: &CollectionTombstonePayload) -> Result<Lsn> {
        self.append_entry(&GroupEntry::Tombstone(tombstone))
    }

    /// Records that an engine purged data older than a cutoff. A collection name over
    /// [`crate::MAX_COLLECTION_NAME_LEN`] bytes is [`WalError::MalformedPayload`] and uses no LSN.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use nodedb_wal::{Scope, TemporalPurge, TemporalPurgeEngine, TemporalPurgePayload};
    /// let purge = TemporalPurgePayload { engine: TemporalPurgeEngine::Timeseries, collection: "cpu".into(), cutoff_unix_ms: 1_700_000_000_000, purged_count: 42 };
    /// let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    /// let too_long = TemporalPurgePayload { collection: "c".repeat(256), ..purge.clone() };
    /// let err = wal.append_temporal_purge(&too_long, scope).unwrap_err();
    /// assert!(matches!(err, nodedb_wal::WalError::MalformedPayload { .. }), "{err}");
    /// assert_eq!(wal.next_lsn(), Lsn::FIRST, "no LSN used");
    /// let lsn = wal.append_temporal_purge(&purge, scope)?;
    /// wal.close()?;
    /// // At the next open, recovery hands the purges to the engines, in LSN order.
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// assert_eq!(wal.recovery_info().temporal_purges, vec![TemporalPurge { lsn, scope, purge }]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_temporal_purge(&self, purge: &TemporalPurgePayload, scope: Scope) -> Result<Lsn> {
        self.append_entry(&GroupEntry::TemporalPurge(purge, scope))
    }

    /// Records that a deterministic scheduler applied a transaction.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// use nodedb_wal::{CalvinAppliedPayload, Scope};
    /// let lsn = wal.append_calvin_applied(&CalvinAppliedPayload { epoch: 3, position: 9, vshard: 1 }, Scope::default())?;
    /// wal.wait_durable(lsn)?;
    /// let last = nodedb_wal::last_calvin_applied(&wal.read_from(Lsn::FIRST)?.collect::<Result<Vec<_>, _>>()?)?;
    /// assert_eq!(last.get(&1), Some(&(3, 9)));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn append_calvin_applied(&self, applied: &CalvinAppliedPayload, scope: Scope) -> Result<Lsn> {
        self.append_system(RecordType::CALVIN_APPLIED, scope, &applied.encode())
    }

    fn append_system(&self, record_type: RecordType, scope: Scope, payload: &[u8]) -> Result<Lsn> {
        self.committer.append(record_type, scope, 0, payload)
    }

    /// Refuses a bound (a purge LSN, a checkpoint) past the next LSN: no record reached it.
    pub(super) fn check_reached(&self, bound: Lsn) -> Result<()> {
        let next = self.next_lsn();
        if bound > next {
            return Err(WalError::LsnNotIssued { lsn: bound, next });
        }
        Ok(())
    }

    /// Appends a tombstone or a purge on its own, checked as a group checks it.
    fn append_entry(&self, entry: &GroupEntry<'_>) -> Result<Lsn> {
        let payload = self.check_entry(entry, self.next_lsn())?;
        self.append_system(entry.record_type(), entry.scope(), &payload)
    }

    fn check_record(&self, record: &Record<'_>) -> Result<()> {
        let max = self.config.payload_bytes_max;
        if record.payload.len() > max {
            return Err(WalError::PayloadTooLarge { len: record.payload.len(), max });
        }
        if record.record_type.is_reserved() {
            return Err(WalError::ReservedRecordType { record_type: record.record_type });
        }
        Ok(())
    }
}
