//! Records as callers hand them in and as readers hand them out.

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
