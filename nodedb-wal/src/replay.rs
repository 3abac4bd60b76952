//! What replay hands the engines besides their own records: dropped collections (tombstones),
//! temporal purges, and where a deterministic scheduler left off.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Result, WalError};
use crate::format::payload::{CalvinAppliedPayload, CollectionTombstonePayload, PayloadError, TemporalPurgePayload};
use crate::record::WalRecord;
use crate::types::{Lsn, RecordType, Scope};

/// Dropped collections and the LSN below which their records are dead.
///
/// Collection names compare byte for byte: no case folding or Unicode normalization, so the
/// engines must spell a name the same way in the tombstone and in their records.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CollectionTombstonePayload, Lsn, TombstoneSet};
///
/// let mut set = TombstoneSet::new();
/// assert!(set.is_empty());
/// set.insert(&CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(50) });
/// assert_eq!(set.len(), 1);
/// assert_eq!(set.purge_lsn(1, 2, "orders"), Some(Lsn(50)));
/// assert!(set.is_dropped(1, 2, "orders", Lsn(49)));
/// assert!(!set.is_dropped(1, 2, "orders", Lsn(50)), "written after the drop: a new collection");
/// assert!(!set.is_dropped(1, 3, "orders", Lsn(1)), "another tenant's collection");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TombstoneSet {
    by_tenant: HashMap<(u32, u32), HashMap<Box<str>, Dropped>>,
}

/// One dropped collection of a [`TombstoneSet`], as [`TombstoneSet::drops`] hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedCollection<'a> {
    /// The collection's database.
    pub database: u32,
    /// The collection's tenant.
    pub tenant: u32,
    /// The collection's name.
    pub collection: &'a str,
    /// Its records below this LSN are dropped ([`TombstoneSet::purge_lsn`]).
    pub purge_lsn: Lsn,
    /// The LSN of its last tombstone record found in the log; `None` where it came only from
    /// [`TombstoneSet::insert`] ([`TombstoneSet::dropped_at`]).
    pub dropped_at: Option<Lsn>,
}

/// One dropped collection: the purge LSN, and the LSN of its last tombstone record where it
/// came from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dropped {
    purge_lsn: Lsn,
    at: Option<Lsn>,
}

impl TombstoneSet {
    /// An empty set.
    pub fn new() -> TombstoneSet {
        TombstoneSet::default()
    }

    /// Adds a tombstone; a later drop of the same collection raises its purge LSN. It was not
    /// read from a log, so it tells no [`Self::dropped_at`] of its own.
    pub fn insert(&mut self, t: &CollectionTombstonePayload) {
        self.add(t, None);
    }

    fn add(&mut self, t: &CollectionTombstonePayload, at: Option<Lsn>) {
        let names = self.by_tenant.entry((t.database, t.tenant)).or_default();
        match names.get_mut(t.collection.as_str()) {
            Some(dropped) => {
                dropped.purge_lsn = dropped.purge_lsn.max(t.purge_lsn);
                dropped.at = dropped.at.max(at);
            }
            None => {
                names.insert(t.collection.clone().into_boxed_str(), Dropped { purge_lsn: t.purge_lsn, at });
            }
        }
    }

    /// Adds the tombstone found in the log at `lsn`, as [`tombstone_found`] read it.
    pub(crate) fn insert_found(&mut self, t: &CollectionTombstonePayload, lsn: Lsn) {
        debug_assert!(t.purge_lsn <= lsn, "read through tombstone_found");
        self.add(t, Some(lsn));
    }

    /// The purge LSN of a dropped collection. Does not allocate.
    pub fn purge_lsn(&self, database: u32, tenant: u32, collection: &str) -> Option<Lsn> {
        Some(self.by_tenant.get(&(database, tenant))?.get(collection)?.purge_lsn)
    }

    /// The LSN of the collection's last tombstone record found in the log (`None` if it was not
    /// dropped, or only by [`Self::insert`]). Does not allocate.
    ///
    /// A purge LSN is often below its tombstone's own LSN (taken from `next_lsn` while other
    /// writers went on), and an engine's checkpoint may fall between the two. At open, a drop
    /// with `dropped_at` below the checkpoint is already in the engine's files (a collection
    /// made again after it keeps its rows there); one at or above it must still be applied to
    /// them, to the rows written below its purge LSN. An engine that keeps each row's LSN needs
    /// neither: it drops the rows below the purge LSN, which holds either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    /// # use nodedb_wal::storage::FaultConfig;
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let purge_lsn = wal.next_lsn();
    /// wal.append(Record::new(RecordType::optional(0x100), b"another writer's record"))?;
    /// let checkpoint = wal.next_lsn(); // the engine checkpoints here
    /// let at = wal.append_tombstone(&CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn })?;
    /// wal.close()?;
    ///
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// let set = &wal.recovery_info().tombstones;
    /// assert!(set.purge_lsn(0, 0, "orders") < Some(checkpoint), "the purge LSN alone says: already applied");
    /// assert_eq!(set.dropped_at(0, 0, "orders"), Some(at));
    /// assert!(Some(checkpoint) <= set.dropped_at(0, 0, "orders"), "but the checkpoint does not hold the drop");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn dropped_at(&self, database: u32, tenant: u32, collection: &str) -> Option<Lsn> {
        self.by_tenant.get(&(database, tenant))?.get(collection)?.at
    }

    /// Whether a record of this collection at `lsn` was dropped with it. Does not allocate.
    pub fn is_dropped(&self, database: u32, tenant: u32, collection: &str, lsn: Lsn) -> bool {
        self.purge_lsn(database, tenant, collection).is_some_and(|purge| lsn < purge)
    }

    /// Whether a replayed record, belonging to `collection` (which only the engine can tell),
    /// survives the tombstones: its database and tenant come from its scope. Does not allocate.
    /// A lent [`crate::RecordView`] (from `next_view` or `replay_parallel`) asks
    /// [`Self::is_dropped`] with its scope and LSN instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, RecordType, Scope, TombstoneSet, WalRecord};
    ///
    /// let mut set = TombstoneSet::new();
    /// set.insert(&CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(50) });
    /// let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    /// let old = WalRecord { lsn: Lsn(10), record_type: RecordType::optional(0x100), scope, flags: 0, payload: Vec::new().into() };
    /// assert!(!set.is_live(&old, "orders"));
    /// assert!(set.is_live(&old, "customers"));
    /// ```
    pub fn is_live(&self, record: &WalRecord, collection: &str) -> bool {
        !self.is_dropped(record.scope.database, record.scope.tenant, collection, record.lsn)
    }

    /// Every dropped collection as (database, tenant, collection, purge LSN), in no particular
    /// order: an engine applies the drops recovery found without knowing the names beforehand.
    /// [`Self::drops`] also gives each drop's own LSN.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, TombstoneSet};
    /// let mut set = TombstoneSet::new();
    /// set.insert(&CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(40) });
    /// let drops: Vec<_> = set.iter().collect();
    /// assert_eq!(drops, [(1, 2, "orders", Lsn(40))]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, &str, Lsn)> + '_ {
        self.drops().map(|d| (d.database, d.tenant, d.collection, d.purge_lsn))
    }

    /// Every dropped collection, in no particular order, with its purge LSN and the LSN of its
    /// last tombstone record ([`Self::dropped_at`]): an engine that meets a drop it did not
    /// know of at open tells from the drop's own LSN whether its checkpoint holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let purge_lsn = wal.next_lsn();
    /// wal.append(Record::new(RecordType::optional(0x100), b"another writer's row"))?;
    /// let checkpoint = wal.next_lsn(); // what the engine's files hold: every LSN below
    /// let at = wal.append_tombstone(&CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn })?;
    /// wal.close()?;
    ///
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// let drops: Vec<_> = wal.recovery_info().tombstones.drops().collect();
    /// let [drop] = drops[..] else { panic!("one drop, found {drops:?}") };
    /// assert_eq!((drop.database, drop.tenant, drop.collection, drop.purge_lsn), (0, 0, "orders", purge_lsn));
    /// assert_eq!(drop.dropped_at, Some(at));
    /// assert!(drop.dropped_at >= Some(checkpoint), "the engine's files do not hold this drop yet");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn drops(&self) -> impl Iterator<Item = DroppedCollection<'_>> + '_ {
        self.by_tenant.iter().flat_map(|(&(database, tenant), names)| {
            names.iter().map(move |(name, d)| DroppedCollection {
                database,
                tenant,
                collection: name,
                purge_lsn: d.purge_lsn,
                dropped_at: d.at,
            })
        })
    }

    /// Dropped collections held.
    pub fn len(&self) -> usize {
        self.by_tenant.values().map(HashMap::len).sum()
    }

    /// Whether no collection was dropped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tombstone whose payload the log holds at `lsn`, as every reader of the log reads it. A
/// tombstone drops what was written before it, never after: a purge LSN past its own (which
/// `append_tombstone` refuses, and an older build did not) is read as its own LSN, so that
/// records appended after the drop, of a collection made again, are not hidden. Recovery's
/// set, [`extract_tombstones`] and a replay that applies each drop as it meets it
/// ([`WalRecord::tombstone`]) all read it here, so they drop the same records.
pub(crate) fn tombstone_found(payload: &[u8], lsn: Lsn) -> std::result::Result<CollectionTombstonePayload, PayloadError> {
    let mut t = CollectionTombstonePayload::decode(payload)?;
    if t.purge_lsn > lsn {
        tracing::warn!(%lsn, purge_lsn = %t.purge_lsn, collection = %t.collection, "a tombstone's purge LSN is past its own; using its own");
        t.purge_lsn = lsn;
    }
    Ok(t)
}

/// Builds the tombstone set from records in one pass; a malformed tombstone is an error.
///
/// At open, recovery has already done this for the whole log: [`crate::RecoveryInfo::tombstones`].
/// This is for records held in memory anyway (a batch shipped to a replica, say); collecting a
/// whole log to call it holds every record at once.
pub fn extract_tombstones<'a>(records: impl IntoIterator<Item = &'a WalRecord>) -> Result<TombstoneSet> {
    let mut set = TombstoneSet::new();
    for r in records {
        if let Some(tombstone) = r.tombstone()? {
            set.insert_found(&tombstone, r.lsn);
        }
    }
    Ok(set)
}

/// A temporal purge found in the log, for its engine to apply at recovery.
///
/// The scope is the one the purge was appended with: two tenants may each purge a collection
/// of the same name, and only the scope tells their purges apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemporalPurge {
    /// The purge record's LSN.
    pub lsn: Lsn,
    /// The database, tenant and vshard it was appended under.
    pub scope: Scope,
    /// What was purged.
    pub purge: TemporalPurgePayload,
}

/// The temporal purges among records, in the order given (LSN order for records as a reader
/// hands them out), for the engines to apply at recovery.
///
/// At open, recovery has already done this for the whole log:
/// [`crate::RecoveryInfo::temporal_purges`].
pub fn extract_temporal_purges<'a>(records: impl IntoIterator<Item = &'a WalRecord>) -> Result<Vec<TemporalPurge>> {
    records.into_iter().filter_map(|r| r.temporal_purge().transpose()).collect()
}

/// The last applied (epoch, position) per vshard, in one pass over records.
pub fn last_calvin_applied<'a>(records: impl IntoIterator<Item = &'a WalRecord>) -> Result<BTreeMap<u32, (u64, u32)>> {
    let mut last = BTreeMap::new();
    for r in records.into_iter().filter(|r| r.record_type == RecordType::CALVIN_APPLIED) {
        let p = CalvinAppliedPayload::decode(&r.payload).map_err(|e| malformed(r, e))?;
        let entry = last.entry(p.vshard).or_insert((p.epoch, p.position));
        *entry = (*entry).max((p.epoch, p.position));
    }
    Ok(last)
}

fn malformed(r: &WalRecord, problem: PayloadError) -> WalError {
    WalError::MalformedPayload { lsn: r.lsn, record_type: r.record_type, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: u64, record_type: RecordType, payload: Vec<u8>) -> WalRecord {
        WalRecord { lsn: Lsn(lsn), record_type, scope: Scope::default(), flags: 0, payload: payload.into() }
    }

    #[test]
    fn the_replay_filter_drops_records_below_the_purge_lsn_only() {
        let t = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(10) };
        let records = [record(10, RecordType::COLLECTION_TOMBSTONE, t.encode().unwrap())];
        let set = extract_tombstones(&records).unwrap();
        assert!(set.is_dropped(1, 2, "orders", Lsn(9)));
        assert!(!set.is_dropped(1, 2, "orders", Lsn(10)), "written after the drop: a new collection");
        assert!(!set.is_dropped(1, 3, "orders", Lsn(9)), "another tenant's collection");
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_malformed_tombstone_is_a_typed_error() {
        let records = [record(4, RecordType::COLLECTION_TOMBSTONE, vec![1, 2, 3])];
        let err = extract_tombstones(&records).unwrap_err();
        assert!(matches!(err, WalError::MalformedPayload { lsn: Lsn(4), problem: PayloadError::Truncated, .. }), "{err}");
    }

    #[test]
    fn the_last_applied_position_per_vshard_wins() {
        let c = |epoch, position, vshard| {
            record(1, RecordType::CALVIN_APPLIED, CalvinAppliedPayload { epoch, position, vshard }.encode().to_vec())
        };
        let records = [c(1, 5, 0), c(2, 1, 0), c(1, 9, 0), c(3, 0, 7)];
        let last = last_calvin_applied(&records).unwrap();
        assert_eq!(last[&0], (2, 1));
        assert_eq!(last[&7], (3, 0));
    }
}
