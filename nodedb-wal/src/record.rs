//! Records as callers hand them in and as readers hand them out.

use crate::format::payload::{CollectionTombstonePayload, PayloadError, TemporalPurgePayload};
use crate::payload::Payload;
use crate::types::{Lsn, RecordType, Scope};

/// A record to append. It borrows its payload: nothing is copied until the log encodes it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{Record, RecordType, Scope};
///
/// let payload = b"insert into orders";
/// let record = Record::new(RecordType::optional(0x100), payload);
/// assert_eq!(record.scope, Scope::default());
/// let scoped = record.scoped(Scope { database: 3, tenant: 1, vshard: 9 });
/// assert_eq!(scoped.scope.database, 3);
/// assert_eq!((scoped.record_type, scoped.payload), (record.record_type, &payload[..]));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// The bytes to log.
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// A record of `record_type` in the default scope.
    #[must_use]
    pub fn new(record_type: RecordType, payload: &'a [u8]) -> Record<'a> {
        Record { record_type, scope: Scope::default(), payload }
    }

    /// The same record in `scope`.
    #[must_use]
    pub fn scoped(self, scope: Scope) -> Record<'a> {
        Record { scope, ..self }
    }
}

/// A record read back from the log.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
/// let scope = Scope { database: 1, tenant: 2, vshard: 3 };
/// let lsn = wal.append_durable(Record::new(RecordType::optional(0x100), b"hello").scoped(scope))?;
///
/// let record = wal.read_from(Lsn::FIRST)?.next().expect("one record")?;
/// assert_eq!(record.lsn, lsn);
/// assert_eq!(record.record_type, RecordType::optional(0x100));
/// assert_eq!(record.scope, scope);
/// assert_eq!(record.flags, 0, "a lone plaintext record carries no flags");
/// assert_eq!(record.payload, b"hello");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Header flags.
    pub flags: u16,
    /// The payload (see [`Payload`] for when it shares a read buffer).
    pub payload: Payload,
}

/// One member of an atomic group ([`crate::SegmentedWal::append_group_entries`]): a record of
/// the caller's own type, or a collection tombstone or temporal purge, so that a drop or a
/// purge goes to the log all-or-nothing with the caller's records that go with it (its catalog
/// entry, say). The crate's other reserved types cannot be written this way either.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CollectionTombstonePayload, GroupEntry, Lsn, Record, RecordType, Scope};
///
/// let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(7) };
/// let entries = [GroupEntry::from(Record::new(RecordType::optional(0x100), b"catalog: drop orders")), GroupEntry::Tombstone(&tombstone)];
/// assert_eq!(entries[1].record_type(), RecordType::COLLECTION_TOMBSTONE);
/// assert_eq!(entries[1].scope(), Scope { database: 1, tenant: 2, vshard: 0 }, "a tombstone's scope is its database and tenant");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEntry<'a> {
    /// A record of the caller's own type (a reserved type is refused, as by `append`).
    Record(Record<'a>),
    /// A dropped collection, as [`crate::SegmentedWal::append_tombstone`] logs it.
    Tombstone(&'a CollectionTombstonePayload),
    /// A temporal purge in a scope, as [`crate::SegmentedWal::append_temporal_purge`] logs it.
    TemporalPurge(&'a TemporalPurgePayload, Scope),
}

impl GroupEntry<'_> {
    /// The type of the record this entry becomes.
    #[must_use]
    pub fn record_type(&self) -> RecordType {
        match self {
            GroupEntry::Record(record) => record.record_type,
            GroupEntry::Tombstone(_) => RecordType::COLLECTION_TOMBSTONE,
            GroupEntry::TemporalPurge(..) => RecordType::TEMPORAL_PURGE,
        }
    }

    /// The scope of the record this entry becomes (a tombstone's is its database and tenant,
    /// vshard 0, as `append_tombstone` writes it).
    #[must_use]
    pub fn scope(&self) -> Scope {
        match self {
            GroupEntry::Record(record) => record.scope,
            GroupEntry::Tombstone(t) => Scope { database: t.database, tenant: t.tenant, vshard: 0 },
            GroupEntry::TemporalPurge(_, scope) => *scope,
        }
    }

    /// The encoded payload of a tombstone or purge; `None` for a record, which is logged as
    /// handed in.
    pub(crate) fn encode_system(&self) -> Option<Result<Vec<u8>, PayloadError>> {
        match self {
            GroupEntry::Record(_) => None,
            GroupEntry::Tombstone(t) => Some(t.encode()),
            GroupEntry::TemporalPurge(p, _) => Some(p.encode()),
        }
    }
}

impl<'a> From<Record<'a>> for GroupEntry<'a> {
    fn from(record: Record<'a>) -> GroupEntry<'a> {
        GroupEntry::Record(record)
    }
}
