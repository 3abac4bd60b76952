//! The crate's own records (tombstones, temporal purges) decoded one at a time, for an engine
//! that applies them in LSN order as its replay meets them rather than from the sets recovery
//! gathered at open.

use crate::error::{Result, WalError};
use crate::format::payload::{CollectionTombstonePayload, TemporalPurgePayload};
use crate::read::RecordView;
use crate::record::WalRecord;
use crate::replay::{TemporalPurge, tombstone_found};
use crate::types::{Lsn, RecordType, Scope};

impl WalRecord {
    /// The collection tombstone this record carries: `Ok(None)` for a record of any other type.
    ///
    /// A replay from a checkpoint meets the drops logged after it among the engines' records;
    /// applied as they come, each drops what was written below its purge LSN and nothing
    /// written after it: a purge LSN past the record's own LSN (an older build could append
    /// one) is handed out as its own LSN, as recovery's [`crate::TombstoneSet`] reads it. A tombstone that does not decode is [`WalError::MalformedPayload`], as
    /// is one read by [`crate::SegmentedWal::read_from_raw`] from an encrypted segment (its
    /// payload is still ciphertext).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::BTreeMap;
    ///
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// const PUT: RecordType = RecordType::optional(0x100);
    /// let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    /// let other_tenant = Scope { tenant: 3, ..scope };
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// wal.append(Record::new(PUT, b"orders/1").scoped(scope))?;
    /// wal.append(Record::new(PUT, b"orders/1").scoped(other_tenant))?;
    /// wal.append(Record::new(PUT, b"users/1").scoped(scope))?;
    /// let purge_lsn = wal.next_lsn();
    /// wal.append_tombstone(&CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn })?;
    /// wal.append(Record::new(PUT, b"orders/2").scoped(scope))?;
    /// wal.sync()?;
    ///
    /// // An engine's replay: rows by LSN, and each drop applied where the log has it, to the
    /// // rows of its collection in its database and tenant only.
    /// let mut rows = BTreeMap::new();
    /// for record in wal.read_from(Lsn::FIRST)? {
    ///     let record = record?;
    ///     if record.record_type == PUT {
    ///         let row = String::from_utf8(record.payload.into_vec()).expect("text");
    ///         rows.insert(record.lsn, (record.scope, row));
    ///     } else if let Some(drop) = record.tombstone()? {
    ///         rows.retain(|lsn, (s, row)| {
    ///             let of_it = (s.database, s.tenant) == (drop.database, drop.tenant) && row.split('/').next() == Some(&drop.collection);
    ///             !of_it || *lsn >= drop.purge_lsn
    ///         });
    ///     }
    /// }
    /// let kept: Vec<_> = rows.into_values().map(|(s, row)| (s.tenant, row)).collect();
    /// assert_eq!(kept, [(3, "orders/1".to_owned()), (2, "users/1".to_owned()), (2, "orders/2".to_owned())]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn tombstone(&self) -> Result<Option<CollectionTombstonePayload>> {
        tombstone(self.lsn, self.record_type, &self.payload)
    }

    /// The temporal purge this record carries, with its LSN and scope as
    /// [`crate::RecoveryInfo::temporal_purges`] holds them: `Ok(None)` for a record of any
    /// other type. A purge that does not decode is [`WalError::MalformedPayload`].
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let purge = TemporalPurgePayload { engine: TemporalPurgeEngine::Document, collection: "orders".into(), cutoff_unix_ms: 5_000, purged_count: 3 };
    /// let scope = Scope { database: 1, tenant: 2, vshard: 0 };
    /// wal.append(Record::new(RecordType::optional(0x100), b"a row"))?;
    /// let lsn = wal.append_temporal_purge(&purge, scope)?;
    /// wal.sync()?;
    ///
    /// let mut found = Vec::new();
    /// for record in wal.read_from(Lsn::FIRST)? {
    ///     found.extend(record?.temporal_purge()?);
    /// }
    /// assert_eq!(found.len(), 1, "the row is not a purge");
    /// assert_eq!((found[0].lsn, found[0].scope, found[0].purge.cutoff_unix_ms), (lsn, scope, 5_000));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn temporal_purge(&self) -> Result<Option<TemporalPurge>> {
        temporal_purge(self.lsn, self.record_type, self.scope, &self.payload)
    }
}

impl RecordView<'_> {
    /// [`WalRecord::tombstone`] for a lent record (from [`crate::WalIter::next_view`] or
    /// [`crate::SegmentedWal::replay_parallel`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let dropped = CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn: Lsn::FIRST };
    /// wal.append_tombstone(&dropped)?;
    /// wal.sync()?;
    /// let mut drops = Vec::new();
    /// wal.replay_parallel(Lsn::FIRST, 2, |view| {
    ///     drops.extend(view.tombstone()?);
    ///     Ok(())
    /// })?;
    /// assert_eq!(drops, [dropped]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn tombstone(&self) -> Result<Option<CollectionTombstonePayload>> {
        tombstone(self.lsn, self.record_type, self.payload)
    }

    /// [`WalRecord::temporal_purge`] for a lent record.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Lsn, Scope, SegmentedWal, SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let purge = TemporalPurgePayload { engine: TemporalPurgeEngine::Timeseries, collection: "cpu".into(), cutoff_unix_ms: 0, purged_count: 1 };
    /// wal.append_temporal_purge(&purge, Scope::default())?;
    /// wal.sync()?;
    /// let mut reader = wal.read_from(Lsn::FIRST)?;
    /// let view = reader.next_view().expect("one record")?;
    /// assert_eq!(view.temporal_purge()?.map(|p| p.purge), Some(purge));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn temporal_purge(&self) -> Result<Option<TemporalPurge>> {
        temporal_purge(self.lsn, self.record_type, self.scope, self.payload)
    }
}

fn tombstone(lsn: Lsn, record_type: RecordType, payload: &[u8]) -> Result<Option<CollectionTombstonePayload>> {
    if record_type != RecordType::COLLECTION_TOMBSTONE {
        return Ok(None);
    }
    let decoded = tombstone_found(payload, lsn);
    decoded.map(Some).map_err(|problem| WalError::MalformedPayload { lsn, record_type, problem })
}

fn temporal_purge(lsn: Lsn, record_type: RecordType, scope: Scope, payload: &[u8]) -> Result<Option<TemporalPurge>> {
    if record_type != RecordType::TEMPORAL_PURGE {
        return Ok(None);
    }
    match TemporalPurgePayload::decode(payload) {
        Ok(purge) => Ok(Some(TemporalPurge { lsn, scope, purge })),
        Err(problem) => Err(WalError::MalformedPayload { lsn, record_type, problem }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::payload::{PayloadError, TemporalPurgeEngine};

    fn record(record_type: RecordType, payload: Vec<u8>) -> WalRecord {
        WalRecord { lsn: Lsn(9), record_type, scope: Scope { database: 1, tenant: 2, vshard: 3 }, flags: 0, payload: payload.into() }
    }

    #[test]
    fn records_of_other_types_carry_no_tombstone_or_purge() {
        let row = record(RecordType::optional(0x100), b"a row".to_vec());
        assert_eq!(row.tombstone().unwrap(), None);
        assert_eq!(row.temporal_purge().unwrap(), None);
        let calvin = record(RecordType::CALVIN_APPLIED, vec![0; 16]);
        assert_eq!((calvin.tombstone().unwrap(), calvin.temporal_purge().unwrap()), (None, None));
    }

    #[test]
    fn a_tombstone_and_a_purge_decode_the_same_lent_or_owned() {
        let t = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(4) };
        let owned = record(RecordType::COLLECTION_TOMBSTONE, t.encode().unwrap());
        assert_eq!(owned.tombstone().unwrap(), Some(t.clone()));
        assert_eq!(owned.temporal_purge().unwrap(), None, "a tombstone is not a purge");
        let view = RecordView { lsn: owned.lsn, record_type: owned.record_type, scope: owned.scope, flags: 0, payload: &owned.payload };
        assert_eq!(view.tombstone().unwrap(), Some(t));

        let p = TemporalPurgePayload { engine: TemporalPurgeEngine::Graph, collection: "g".into(), cutoff_unix_ms: -1, purged_count: 2 };
        let owned = record(RecordType::TEMPORAL_PURGE, p.encode().unwrap());
        let expected = TemporalPurge { lsn: Lsn(9), scope: owned.scope, purge: p };
        assert_eq!(owned.temporal_purge().unwrap(), Some(expected.clone()));
        assert_eq!(owned.tombstone().unwrap(), None, "a purge is not a tombstone");
        let view = RecordView { lsn: owned.lsn, record_type: owned.record_type, scope: owned.scope, flags: 0, payload: &owned.payload };
        assert_eq!(view.temporal_purge().unwrap(), Some(expected));
    }

    #[test]
    fn a_malformed_tombstone_or_purge_is_a_typed_error_naming_its_lsn() {
        for ty in [RecordType::COLLECTION_TOMBSTONE, RecordType::TEMPORAL_PURGE] {
            let bad = record(ty, vec![1, 0, 3]);
            let err = if ty == RecordType::TEMPORAL_PURGE { bad.temporal_purge().unwrap_err() } else { bad.tombstone().unwrap_err() };
            let named = matches!(err, WalError::MalformedPayload { lsn: Lsn(9), record_type, problem: PayloadError::Truncated } if record_type == ty);
            assert!(named, "{err}");
        }
    }
}
