//! `SegmentedWal`: the façade that opens (recovers) a log directory, appends through the group
//! committer, replays and truncates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::commit::{CommitStart, CommitStatsSnapshot, DurableFuture, GroupCommitter, Limits, seal_file};
use crate::config::SegmentedWalConfig;
use crate::error::{IoOp, Result, WalError};
use crate::format::payload::{CalvinAppliedPayload, CollectionTombstonePayload, TemporalPurgePayload};
use crate::manifest::{Floor, Manifest};
use crate::parallel::{Ahead, DECODED_CHUNKS_AHEAD, decode_segment};
use crate::read::{Decrypt, LazyWalReader, Position, ReadSpec, RecordView, WalIter};
use crate::record::{GroupEntry, Record};
use crate::recovery::{PendingSeal, RecoveryInfo, open_existing, recover_dir};
use crate::segment::{self, SegmentInfo, index};
use crate::storage::{
    DirectIoPlan, FsStorage, OpenMode, Storage, StorageFile, create_dir_durably, is_direct_io_refusal, is_out_of_space, lock_log_dir,
    plan_direct_io,
};
use crate::tail::{TAIL_CHUNK, Tail};
use crate::types::{Lsn, RecordType, Scope, SegmentId};
use std::borrow::Cow;
use std::ops::RangeInclusive;

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

impl SegmentedWal<FsStorage> {
    /// Opens (or creates) the log in `config.dir` on the real file system, recovering whatever
    /// a crash left there. See the type's example.
    pub fn open(config: SegmentedWalConfig) -> Result<SegmentedWal<FsStorage>> {
        SegmentedWal::open_with(FsStorage::new(), config)
    }
}

/// The decoders of a [`SegmentedWal::replay_parallel`] asked for `threads`: at least one, at
/// most one per core.
fn decoders_for(threads: usize) -> usize {
    threads.min(crate::segment::reader::usable_cores()).max(1)
}

impl<S: Storage> SegmentedWal<S> {
    /// Opens (or creates) the log on the given storage.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    ///
    /// // The deterministic simulation: the same code paths as the real file system.
    /// let sim = SimStorage::new(7, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/db/wal"))?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"x"))?;
    /// drop(wal);
    /// assert_eq!(SegmentedWal::open_with(sim, SegmentedWalConfig::new("/db/wal"))?.recovery_info().record_count, 1);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn open_with(storage: S, config: SegmentedWalConfig) -> Result<SegmentedWal<S>> {
        config.validate()?;
        let dir = config.dir.clone();
        create_dir_durably(&storage, &dir).map_err(|(op, e)| WalError::io(op, &dir, e))?;
        let lock = lock_log_dir(&storage, &dir)?;
        let direct = probe_direct(&storage, &config)?;
        let _span = tracing::info_span!("recovery", dir = %dir.display()).entered();
        let mut recovered = recover_dir(&storage, &dir, direct, config.alignment, config.key_ring.as_deref())?;
        let manifest = Manifest::open_existing(&storage, &dir)?;
        let mut floor = Floor::open(&storage, &dir)?;
        // A new log never written: the manifest names no segment, and the floor (unchecked by
        // recovery) names the segment the first batch was to create.
        let never_written = manifest.as_ref().is_some_and(|m| m.current() == SegmentId(0));
        if let Some(mut pending) = recovered.seal {
            let index = pending.index.take();
            // A segment written with smaller blocks than this open's (a log moved to a disk
            // with larger sectors, or first written through the page cache) is sealed through
            // the page cache: its block boundary may be no offset O_DIRECT accepts here.
            let direct = direct && pending.block >= config.alignment as u64;
            let bytes = seal_segment(&storage, &dir, direct, pending)?;
            if let Some(index) = index {
                index::write_index(&storage, &dir, &index, direct, config.alignment, &mut index::IndexScratch::default());
            }
            let last = recovered.info.segments.last_mut().expect("the pending segment is listed");
            last.sealed = true;
            last.bytes = bytes;
        } else if let Some(last) = recovered.info.segments.last() {
            sync_newest_segment(&storage, &dir, direct, last.id)?;
        }
        if let Some(torn) = recovered.info.torn_tail {
            tracing::warn!(segment = %torn.segment, offset = torn.offset, bytes = torn.bytes_discarded, "cut a torn tail");
        }
        tracing::info!(records = recovered.info.record_count, last_lsn = %recovered.info.last_lsn, "recovered");
        // Recovery read a listing that may not be durable (a roll or a truncation whose
        // directory fsync failed, or whose process died first, under the same kernel): the
        // segments it returns, the one the manifest is about to name, and the kept files the
        // flusher will write new headers into must keep their names through a power cut.
        // (That sync also makes durable the removal of segments a truncation left below the
        // floor: none is read again either way.)
        if !recovered.below_floor.is_empty() {
            floor.rewrite()?;
            remove_below_floor(&storage, &dir, &recovered.below_floor)?;
        }
        storage.sync_dir(&dir).map_err(|e| WalError::io(IoOp::SyncDir, &dir, e))?;
        let newest = recovered.info.segments.last().map_or(SegmentId(0), |s| s.id);
        let manifest = Manifest::bring_up_to(manifest, &storage, &dir, newest)?;
        // A log without `FLOOR` (new, or written before it existed) gets one at its first
        // open, naming its oldest segment: from then on truncation only updates a slot in
        // place, one fdatasync, and a removed oldest segment is told from a truncated one.
        // A log without segments (a new one) names the one its first batch will create: a
        // floor of 0 would leave the first segments unchecked until the next open.
        let oldest = recovered.info.segments.first().map_or(recovered.next_segment, |s| s.id);
        if never_written {
            floor.lower_to(oldest)?;
        }
        floor.advance(&storage, &dir, oldest)?;
        let recycled = tidy_dir(&storage, &dir, &recovered.info.segments, config.recycle_segments)?;
        let limits = Limits {
            block: config.alignment,
            batch_bytes_max: config.batch_bytes_max,
            batch_buffers: config.batch_buffers,
            segment_bytes_target: config.segment_bytes_target,
        };
        let start = CommitStart {
            dir,
            direct,
            limits,
            commit_window: config.commit_window,
            zero_fill_bytes: config.zero_fill_bytes,
            next_lsn: recovered.next_lsn,
            next_segment: recovered.next_segment,
            segments: recovered.info.segments.clone(),
            key_ring: config.key_ring.clone(),
            manifest,
            recycled,
            recycle_segments: config.recycle_segments,
            dir_lock: lock,
        };
        let storage = Arc::new(storage);
        let committer = GroupCommitter::start(Arc::clone(&storage), start)?;
        Ok(SegmentedWal { storage, config, direct, recovery: recovered.info, committer, truncation: Mutex::new(floor) })
    }

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
    /// large record does, and each record is bounded by `payload_bytes_max` only. Wait on the
    /// last LSN to make all of it durable.
    ///
    /// Every record is checked before any LSN is taken: one refused (a reserved type, a payload
    /// over `payload_bytes_max`) fails the group, which then uses no LSN and writes nothing.
    /// To drop a collection or log a purge in the same group as the records that go with it,
    /// see [`Self::append_group_entries`].
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
    /// buffer of its own).
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
    fn check_reached(&self, bound: Lsn) -> Result<()> {
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

    /// Blocks until a successful fdatasync covers `lsn`.
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

    /// A future that resolves once `lsn` is durable, under any executor.
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

    /// Reads the durable records from `from` on, in LSN order, decrypting encrypted ones.
    ///
    /// The reader ends at the durable LSN of the moment it was made; records made durable later
    /// need a new reader, or a [`Self::tail`]. From below [`Self::oldest_lsn`] it is
    /// [`WalError::LsnNotRetained`]. From past the last durable record it reads nothing and is
    /// no error, even from an LSN never issued (unlike [`Self::truncate_before`]): where a
    /// stored position may come from another log, compare it with [`Self::next_lsn`] first.
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
    /// crash left open, which no reader maps). Where storage cannot map (the simulation),
    /// this is [`Self::read_from`].
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

    fn decrypt(&self) -> Decrypt {
        Decrypt::With(self.config.key_ring.clone())
    }

    /// A reader for a [`Tail`]'s refill: mapped catch-up, small reads of the live segment, and
    /// a start at `resume` (where the last refill stopped) when it is the record `from`.
    pub(crate) fn tail_reader(&self, from: Lsn, resume: Option<Position>) -> Result<WalIter<S>> {
        let spec = ReadSpec { mapped: true, chunk: TAIL_CHUNK, resume, ..self.read_spec(from, self.decrypt()) };
        WalIter::new(Arc::clone(&self.storage), spec)
    }

    /// Replays the durable records from `from` on, in LSN order, decoding (checking and
    /// decrypting) up to `threads` segments at once: `apply` takes the records of the oldest
    /// segment as its decoder streams them, while the decoders of the next segments work
    /// ahead. Each record is lent ([`RecordView::to_record`] makes an owned copy): decoders
    /// copy payloads into chunk buffers the applying thread hands back, so no record costs an
    /// allocation. Memory: up to ~64 MiB of decoded records per decoder. Stops at the first
    /// error, from reading or from `apply`, which wraps an engine's own error with
    /// [`WalError::caller`] (it comes back as [`WalError::Caller`], to downcast).
    ///
    /// `threads` is a bound, and so are the cores: decoding is work for a core, and each
    /// decoder may hold ~64 MiB, so more decoders than cores would only take memory (a caller's
    /// 1,000 on a log of 1,000 segments would have been 1,000 threads and up to 64 GB). `apply`
    /// runs on the calling thread. A log without a key ring
    /// (plaintext) where fewer than two cores are left beside it is read in sequence instead
    /// (the calling thread checks the records while a read-ahead helper reads ahead): checking
    /// is bound by memory traffic, and the decoders' copy costs more than they save there. On
    /// two cores, warm, 1 KiB records: ~0.55-0.69 of a plain read against ~0.31-0.36 with two
    /// decoders (BENCHMARKS.md). Decrypting is work that splits across decoders, so a log
    /// with a key ring always gets them.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// for i in 0..10u8 {
    ///     wal.append(Record::new(ty, &[i]))?;
    /// }
    /// wal.sync()?;
    /// let mut seen = Vec::new();
    /// let applied = wal.replay_parallel(Lsn::FIRST, 2, |r| {
    ///     seen.push((r.lsn.0, r.payload[0]));
    ///     Ok(())
    /// })?;
    /// assert_eq!(applied, 10);
    /// assert_eq!(seen, (1..=10).map(|i| (i, i as u8 - 1)).collect::<Vec<_>>(), "in LSN order");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn replay_parallel(&self, from: Lsn, threads: usize, mut apply: impl FnMut(RecordView<'_>) -> Result<()>) -> Result<u64> {
        let spare_cores = crate::segment::reader::usable_cores().saturating_sub(1);
        if self.config.key_ring.is_none() && threads.min(spare_cores) < 2 {
            let mut records = self.read_from(from)?;
            let mut applied = 0;
            while let Some(record) = records.next_view() {
                apply(record?)?;
                applied += 1;
            }
            return Ok(applied);
        }
        self.replay_decoded(from, decoders_for(threads), apply)
    }

    /// [`Self::replay_parallel`] with exactly `decoders` decoders (at least one).
    pub(crate) fn replay_decoded(&self, from: Lsn, decoders: usize, mut apply: impl FnMut(RecordView<'_>) -> Result<()>) -> Result<u64> {
        let until = self.durable_lsn();
        let mut segments = self.segments();
        // The same rule as the sequential reader (each worker below starts inside its segment).
        if let Some(oldest) = segments.first() {
            crate::read::check_retained(from, oldest.first_lsn, until)?;
        }
        segments.retain(|s| s.end_lsn > from && s.first_lsn <= until);
        std::thread::scope(|scope| {
            // One decoder per segment, at most `threads` at once, each streaming its records
            // in chunks through a bounded channel; they are applied in segment order while the
            // decoders of the segments after it work ahead. Applied chunks go back to their
            // decoder for reuse.
            let decoder = |seg: &SegmentInfo| {
                let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
                let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
                // The decoders keep the cores busy already: a read-ahead helper per decoder
                // would only crowd them (warm 1 KiB replay with two threads: 79 -> 126 ms).
                let spec = ReadSpec {
                    segments: vec![*seg],
                    from: from.max(seg.first_lsn),
                    until,
                    check_ahead: false,
                    ..self.read_spec(from, self.decrypt())
                };
                let storage = Arc::clone(&self.storage);
                let ahead = Arc::new(Ahead::default());
                let decoder_ahead = Arc::clone(&ahead);
                // A thread the system refuses is an error, not a panic in the caller's replay
                // (the decoders already running stop as their receivers go).
                std::thread::Builder::new()
                    .name("nodedb-wal-decode".into())
                    .spawn_scoped(scope, move || decode_segment(storage, spec, &tx, &spent_rx, &decoder_ahead))
                    .map_err(|e| WalError::io(crate::error::IoOp::Open, "replay decoder thread", e))?;
                Ok::<_, WalError>((rx, spent_tx, ahead))
            };
            let mut queued = segments.iter();
            let mut running = queued.by_ref().take(decoders.max(1)).map(decoder).collect::<Result<std::collections::VecDeque<_>>>()?;
            let mut applied = 0;
            while let Some((decoded, spent, ahead)) = running.pop_front() {
                // Returning early drops the receivers: the decoders' sends fail and they stop.
                for chunk in decoded {
                    let chunk = chunk?;
                    for record in chunk.records() {
                        apply(record)?;
                        applied += 1;
                    }
                    ahead.applied(chunk, &spent);
                }
                if let Some(seg) = queued.next() {
                    running.push_back(decoder(seg)?);
                }
            }
            Ok(applied)
        })
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

    pub(crate) fn committer(&self) -> &GroupCommitter<S> {
        &self.committer
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

    fn read_spec(&self, from: Lsn, decrypt: Decrypt) -> ReadSpec {
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

    /// Removes whole segments whose records all lie below `checkpoint`, oldest first, each
    /// removal made durable before the next. The newest segment is always kept: it carries the
    /// log's position across restarts. Returns how many segments were removed.
    ///
    /// Tombstones and temporal purges in the removed segments are gone too, so a later
    /// recovery no longer reports them: pass a checkpoint at which the engines have applied
    /// every drop and purge below it, to their own files, and replay from that checkpoint.
    /// Recovery still reports drops and purges in kept segments below the checkpoint (a segment
    /// goes only whole): [`crate::TombstoneSet::dropped_at`] and [`crate::TemporalPurge::lsn`]
    /// tell those from the ones the engines' files do not hold yet. A checkpoint past
    /// [`Self::next_lsn`] names records never appended (another log's LSN, a byte offset): it
    /// is [`WalError::LsnNotIssued`] and nothing is removed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// # let mut config = SegmentedWalConfig::new("/small");
    /// # config.segment_bytes_target = 64 * 1024;
    /// # let wal = SegmentedWal::open_with(SimStorage::new(2, FaultConfig::default()), config)?;
    /// for _ in 0..200 {
    ///     wal.append(Record::new(ty, &[7; 1000]))?;
    /// }
    /// let checkpoint = wal.sync()?;
    /// let removed = wal.truncate_before(checkpoint)?;
    /// assert!(removed > 0);
    /// assert_eq!(wal.segments().len(), 1, "the newest segment is always kept");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn truncate_before(&self, checkpoint: Lsn) -> Result<usize> {
        self.check_reached(checkpoint)?;
        let mut floor = self.truncation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _span = tracing::info_span!("truncate", checkpoint = %checkpoint).entered();
        let dir = &self.config.dir;
        let Some(target) = self.floor_for(checkpoint) else { return Ok(0) };
        self.record_floor(&mut floor, target)?;
        let mut removed = 0;
        loop {
            let (victim, bytes) = {
                let segments = self.committer.shared().segments_lock();
                match segments.as_slice() {
                    [first, ..] if first.id < target => (first.id, first.bytes),
                    _ => break,
                }
            };
            let path = segment::path(dir, victim);
            let shared = self.committer.shared();
            // Kept under another name for reuse as a later segment, or removed. Not one larger
            // than a segment (a record or group larger than the target): reused, it would keep
            // that size for good, its space never freed by any checkpoint.
            let keep = (shared.wants_recycled() && bytes <= shared.segment_bytes_max()).then(|| segment::recycled_path(dir, victim));
            let kept = match keep {
                Some(to) => self.keep_or_remove(&path, to)?,
                None => {
                    self.storage.remove(&path).map_err(|e| WalError::io(IoOp::Remove, &path, e))?;
                    None
                }
            };
            // The segment is gone whether or not the directory sync below succeeds: stop listing it.
            shared.segments_lock().retain(|s| s.id != victim);
            index::remove_index(&*self.storage, dir, victim);
            if let Err(e) = self.storage.sync_dir(dir) {
                // A kept file whose new name may not be durable is not reused (its new header
                // could land under the old name), nor left unused on the disk until the next
                // open, a segment's space per failed truncation: removed, as without reuse.
                if let Some(kept) = &kept
                    && let Err(err) = self.storage.remove(kept)
                {
                    tracing::warn!(%err, path = %kept.display(), "cannot remove a truncated segment not kept for reuse");
                }
                return Err(WalError::io(IoOp::SyncDir, dir, e));
            }
            if let Some(kept) = kept {
                shared.add_recycled(kept);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// The oldest segment a truncation at `checkpoint` keeps, where it removes any: the first
    /// that is not sealed, holds a record at or above `checkpoint`, or is the newest. Segments
    /// are only added at the newest end meanwhile, so the ones below stay removable.
    fn floor_for(&self, checkpoint: Lsn) -> Option<SegmentId> {
        let segments = self.committer.shared().segments_lock();
        let older = &segments[..segments.len().saturating_sub(1)];
        let removable = older.iter().take_while(|s| s.sealed && s.end_lsn <= checkpoint).count();
        (removable > 0).then(|| segments[removable].id)
    }

    /// Makes `target` the durable truncation floor before any segment below it goes: a crash
    /// then leaves segments below the floor, which the next open removes, and never a log
    /// whose oldest segments are gone with nothing to tell it from lost ones. A failed sync
    /// poisons the log (it is never retried) and truncates nothing.
    fn record_floor(&self, floor: &mut Floor<S::File>, target: SegmentId) -> Result<()> {
        let durability = &self.committer.shared().durability;
        if floor.is_broken() {
            return Err(durability.check_poison().expect_err("a failed sync of the floor poisoned the log"));
        }
        let result = floor.advance(&*self.storage, &self.config.dir, target);
        if let Err(WalError::Io { op, path, source }) = &result
            && floor.is_broken()
        {
            durability.poison_at(*op, path, source);
        }
        result
    }

    /// Renames a truncated segment to `to` to keep it for reuse, and returns `to`; or, where the
    /// disk has no room for the new name (a file system may need a new directory block for it,
    /// XFS does), removes it and returns `None`: a full disk is where truncation must free
    /// space, and removing a file always can.
    fn keep_or_remove(&self, path: &Path, to: PathBuf) -> Result<Option<PathBuf>> {
        match self.storage.rename(path, &to) {
            Ok(()) => Ok(Some(to)),
            Err(err) if is_out_of_space(&err) => {
                tracing::warn!(%err, path = %path.display(), "no room to keep a truncated segment for reuse; removing it");
                self.storage.remove(path).map_err(|e| WalError::io(IoOp::Remove, path, e))?;
                Ok(None)
            }
            Err(err) => Err(WalError::io(IoOp::Rename, path, err)),
        }
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

/// Removes segments a truncation left below the floor when a crash cut it short, oldest
/// first. The caller syncs the directory.
fn remove_below_floor<S: Storage>(storage: &S, dir: &Path, ids: &[SegmentId]) -> Result<()> {
    for &id in ids {
        let path = segment::path(dir, id);
        tracing::warn!(segment = %id, "removing a segment below the truncation floor, left by an interrupted truncation");
        storage.remove(&path).map_err(|e| WalError::io(IoOp::Remove, &path, e))?;
    }
    Ok(())
}

/// At open, with one listing of `dir`: removes header indexes whose segment is gone (a crash
/// after a truncation removed the segment but not yet its index), and returns the truncated
/// segment files kept for reuse, at most `keep` of them (their names are durable: the open
/// synced the directory first); any more (the setting was lowered) are removed (one that
/// cannot be is left there, unused).
fn tidy_dir<S: Storage>(storage: &S, dir: &Path, segments: &[SegmentInfo], keep: usize) -> Result<Vec<PathBuf>> {
    let names = storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?;
    // A set, not a scan of the list per index file: a log of many segments opens in linear time.
    let live: std::collections::HashSet<SegmentId> = segments.iter().map(|s| s.id).collect();
    let orphans = names.iter().filter_map(|n| segment::parse_index(n)).filter(|id| !live.contains(id));
    orphans.for_each(|id| index::remove_index(storage, dir, id));
    let mut ids: Vec<SegmentId> = names.iter().filter_map(|n| segment::parse_recycled(n)).collect();
    ids.sort_unstable();
    let extra = ids.len().saturating_sub(keep);
    for &id in &ids[..extra] {
        let path = segment::recycled_path(dir, id);
        // A spare holds no record of the log: one that cannot be removed (a permission, an
        // immutable flag) stays, unused, rather than keep the log from opening.
        if let Err(err) = storage.remove(&path) {
            tracing::warn!(%err, path = %path.display(), "cannot remove a truncated segment kept for reuse; leaving it");
        }
    }
    if extra > 0 {
        storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    }
    Ok(ids[extra..].iter().map(|&id| segment::recycled_path(dir, id)).collect())
}

/// Runs recovery on the log `config` names, with every repair opening makes (a torn tail cut
/// and sealed, an interrupted roll removed, the newest segment synced), and returns what it
/// found, leaving the log closed. The same as opening and closing it, for a tool or a start-up
/// step that only needs the [`RecoveryInfo`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig};
///
/// let dir = tempfile::tempdir()?;
/// let config = SegmentedWalConfig { allow_buffered_fallback: true, ..SegmentedWalConfig::new(dir.path()) };
/// SegmentedWal::open(config.clone())?.append_durable(Record::new(RecordType::optional(0x100), b"x"))?;
/// let info = nodedb_wal::recover(config)?;
/// assert_eq!(info.record_count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn recover(config: SegmentedWalConfig) -> Result<RecoveryInfo> {
    let wal = SegmentedWal::open(config)?;
    let info = wal.recovery_info().clone();
    wal.close()?;
    Ok(info)
}

/// Whether this directory's file system takes O_DIRECT in this config's blocks, and whether the
/// config lets us go on without it. Decided before recovery reads or writes anything: blocks
/// finer than the kernel says O_DIRECT takes there used to open fine and then poison the log
/// at its first write (`EINVAL`), and make recovery of an existing log fail with a bare I/O
/// error.
fn probe_direct<S: Storage>(storage: &S, config: &SegmentedWalConfig) -> Result<bool> {
    if !config.direct_io {
        return Ok(false);
    }
    let probe = config.dir.join("LOCK");
    let mode = OpenMode { create: true, write: false, direct: true, create_new: false };
    match storage.open(&probe, mode) {
        // The open takes O_DIRECT on any block device; whether this config's blocks are coarse
        // enough for it is a separate question, asked of the same file (regular, in the log's
        // directory, so on the file system the segments live on).
        Ok(file) => match plan_direct_io(config.alignment, file.direct_io_alignment(), config.allow_buffered_fallback) {
            DirectIoPlan::Direct => Ok(true),
            DirectIoPlan::Buffered { required } => {
                tracing::warn!(dir = %config.dir.display(), alignment = config.alignment, required, "O_DIRECT needs coarser blocks here; using buffered I/O");
                Ok(false)
            }
            DirectIoPlan::Refuse { required } => {
                Err(WalError::DirectIoAlignment { path: config.dir.clone(), configured: config.alignment, required })
            }
        },
        Err(e) if is_direct_io_refusal(&e) && config.allow_buffered_fallback => {
            tracing::warn!(dir = %config.dir.display(), "O_DIRECT refused; using buffered I/O");
            Ok(false)
        }
        Err(e) if is_direct_io_refusal(&e) => Err(WalError::DirectIoUnsupported { path: config.dir.clone() }),
        Err(e) => Err(WalError::io(IoOp::Open, probe, e)),
    }
}

/// Syncs the newest segment, already sealed, before the log reports its records durable. A
/// process killed between a batch's write and its fdatasync leaves the batch where recovery
/// reads it (the page cache, the device's cache) but not yet durable; recovery returns its
/// records and the durable watermark starts after them, so they must be synced first, or a
/// power cut could take records the log already returned and leave a sealed segment torn.
/// Only the newest segment can hold such a batch: a segment is synced before the next exists.
fn sync_newest_segment<S: Storage>(storage: &S, dir: &Path, direct: bool, id: SegmentId) -> Result<()> {
    let path = segment::path(dir, id);
    let (file, _) = open_existing(storage, &path, direct, true)?;
    file.sync_data().map_err(|e| WalError::io(IoOp::SyncData, &path, e))
}

/// Seals the last segment after recovery: an end frame on the first block boundary at or after
/// its records' end, synced, then the file cut to that block. Blocks that hold recovered records
/// are never written. Returns the segment's new length.
fn seal_segment<S: Storage>(storage: &S, dir: &Path, direct: bool, p: PendingSeal) -> Result<u64> {
    let path = segment::path(dir, p.id);
    let (file, _) = open_existing(storage, &path, direct, true)?;
    seal_file(&file, p.block as usize, p.records_end, p.next_lsn, p.salt, true).map_err(|(op, e)| WalError::io(op, &path, e))
}

/// `SegmentedWal` is shared between threads by reference.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SegmentedWal<FsStorage>>();
    send_sync::<SegmentedWal<crate::storage::SimStorage>>();
};

#[cfg(test)]
mod tests {
    use super::decoders_for;
    use crate::segment::reader::usable_cores;

    #[test]
    fn a_parallel_replay_runs_at_most_one_decoder_per_core_and_at_least_one() {
        assert_eq!(decoders_for(1_000), usable_cores());
        assert_eq!(decoders_for(0), 1);
        assert_eq!(decoders_for(1), 1);
    }
}
