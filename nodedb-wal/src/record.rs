//! Records as callers hand them in and as readers hand them out.

use crate::types::{Lsn, RecordType, Scope};

/// A record to append.
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
    /// The payload.
    pub payload: Vec<u8>,
}
