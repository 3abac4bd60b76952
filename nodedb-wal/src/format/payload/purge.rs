//! A temporal purge: an engine dropped a collection's data older than a cutoff time.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | engine ([`TemporalPurgeEngine`] code) |
//! | 1 | 1 | reserved, 0 |
//! | 2 | 8 | cutoff, milliseconds since the Unix epoch (i64) |
//! | 10 | 8 | purged count |
//! | 18 | 2 | name length (at most 255) |
//! | 20 | n | collection name, UTF-8 |

use super::{PayloadError, decode_name, encode_name, take};

const FIXED: usize = 18;

/// The engine a purge belongs to.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{PayloadError, TemporalPurgeEngine};
///
/// let engine = TemporalPurgeEngine::Columnar;
/// assert_eq!(engine.code(), 6);
/// assert_eq!(TemporalPurgeEngine::from_code(engine.code()), Ok(engine));
/// assert_eq!(TemporalPurgeEngine::from_code(0), Err(PayloadError::UnknownEngine { code: 0 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TemporalPurgeEngine {
    /// Time-series.
    Timeseries,
    /// Documents.
    Document,
    /// Graph.
    Graph,
    /// Vector indexes.
    Vector,
    /// Key-value.
    KeyValue,
    /// Columnar.
    Columnar,
}

impl TemporalPurgeEngine {
    /// Its code in the payload. See [`TemporalPurgeEngine`] for an example.
    pub const fn code(self) -> u8 {
        match self {
            TemporalPurgeEngine::Timeseries => 1,
            TemporalPurgeEngine::Document => 2,
            TemporalPurgeEngine::Graph => 3,
            TemporalPurgeEngine::Vector => 4,
            TemporalPurgeEngine::KeyValue => 5,
            TemporalPurgeEngine::Columnar => 6,
        }
    }

    /// The engine with this code. See [`TemporalPurgeEngine`] for an example.
    pub fn from_code(code: u8) -> Result<TemporalPurgeEngine, PayloadError> {
        Ok(match code {
            1 => TemporalPurgeEngine::Timeseries,
            2 => TemporalPurgeEngine::Document,
            3 => TemporalPurgeEngine::Graph,
            4 => TemporalPurgeEngine::Vector,
            5 => TemporalPurgeEngine::KeyValue,
            6 => TemporalPurgeEngine::Columnar,
            code => return Err(PayloadError::UnknownEngine { code }),
        })
    }
}

/// Payload of [`crate::RecordType::TEMPORAL_PURGE`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::{PayloadError, TemporalPurgeEngine, TemporalPurgePayload};
///
/// let purge = TemporalPurgePayload {
///     engine: TemporalPurgeEngine::Timeseries,
///     collection: "cpu".into(),
///     cutoff_unix_ms: 1_700_000_000_000,
///     purged_count: 5_000,
/// };
/// let bytes = purge.encode()?;
/// assert_eq!(bytes.len(), 20 + 3, "fixed fields, then the name");
/// assert_eq!(TemporalPurgePayload::decode(&bytes), Ok(purge));
/// # Ok::<(), PayloadError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemporalPurgePayload {
    /// The engine that purged.
    pub engine: TemporalPurgeEngine,
    /// The collection.
    pub collection: String,
    /// Data older than this (ms since the Unix epoch) was dropped.
    pub cutoff_unix_ms: i64,
    /// How many items were dropped.
    pub purged_count: u64,
}

impl TemporalPurgePayload {
    /// Encodes; a name over the maximum length is an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{PayloadError, TemporalPurgeEngine, TemporalPurgePayload};
    /// use nodedb_wal::{Scope, SegmentedWal, SegmentedWalConfig, SimStorage, TemporalPurge};
    ///
    /// let mut purge =
    ///     TemporalPurgePayload { engine: TemporalPurgeEngine::Document, collection: "x".repeat(300), cutoff_unix_ms: 0, purged_count: 1 };
    /// assert_eq!(purge.encode(), Err(PayloadError::NameTooLong { len: 300 }));
    ///
    /// // The log encodes it for you, and recovery hands purges back to the engines.
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// purge.collection = "sessions".into();
    /// let scope = Scope { database: 1, tenant: 7, vshard: 0 };
    /// let lsn = wal.append_temporal_purge(&purge, scope)?;
    /// wal.close()?;
    /// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
    /// assert_eq!(wal.recovery_info().temporal_purges, [TemporalPurge { lsn, scope, purge }]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let mut out = Vec::with_capacity(FIXED + 2 + self.collection.len());
        out.push(self.engine.code());
        out.push(0);
        out.extend_from_slice(&self.cutoff_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.purged_count.to_le_bytes());
        encode_name(&self.collection, &mut out)?;
        Ok(out)
    }

    /// Decodes, refusing truncated, unknown or trailing input.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{PayloadError, TemporalPurgeEngine, TemporalPurgePayload};
    ///
    /// let engine = TemporalPurgeEngine::Graph;
    /// let purge = TemporalPurgePayload { engine, collection: "edges".into(), cutoff_unix_ms: -5, purged_count: 7 };
    /// let mut bytes = purge.encode()?;
    /// assert_eq!(TemporalPurgePayload::decode(&bytes)?.cutoff_unix_ms, -5);
    /// bytes[1] = 1; // the reserved byte
    /// assert_eq!(TemporalPurgePayload::decode(&bytes), Err(PayloadError::Reserved));
    /// # Ok::<(), PayloadError>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<TemporalPurgePayload, PayloadError> {
        let [code, reserved] = take::<2>(bytes, 0)?;
        if reserved != 0 {
            return Err(PayloadError::Reserved);
        }
        let engine = TemporalPurgeEngine::from_code(code)?;
        let cutoff_unix_ms = i64::from_le_bytes(take(bytes, 2)?);
        let purged_count = u64::from_le_bytes(take(bytes, 10)?);
        let (name, rest) = decode_name(bytes.get(FIXED..).ok_or(PayloadError::Truncated)?)?;
        if !rest.is_empty() {
            return Err(PayloadError::TrailingBytes);
        }
        Ok(TemporalPurgePayload { engine, collection: name.to_owned(), cutoff_unix_ms, purged_count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_round_trips_and_refuses_unknown_engines() {
        let p =
            TemporalPurgePayload { engine: TemporalPurgeEngine::Timeseries, collection: "cpu".into(), cutoff_unix_ms: -5, purged_count: 7 };
        let bytes = p.encode().unwrap();
        assert_eq!(TemporalPurgePayload::decode(&bytes), Ok(p));
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert_eq!(TemporalPurgePayload::decode(&bad), Err(PayloadError::UnknownEngine { code: 99 }));
        assert_eq!(TemporalPurgePayload::decode(&bytes[..5]), Err(PayloadError::Truncated));
    }

    /// The codes are the table in `docs/FORMAT.md`: a code moved to another engine would hand
    /// a purge to the wrong engine after an upgrade.
    #[test]
    fn every_engine_has_its_code_from_the_format_table_and_no_other_code_decodes() {
        use TemporalPurgeEngine::*;
        let table = [(Timeseries, 1), (Document, 2), (Graph, 3), (Vector, 4), (KeyValue, 5), (Columnar, 6)];
        for (engine, code) in table {
            assert_eq!(engine.code(), code, "{engine:?}");
            assert_eq!(TemporalPurgeEngine::from_code(code), Ok(engine), "code {code}");
        }
        for code in (0..=u8::MAX).filter(|code| !(1..=6).contains(code)) {
            assert_eq!(TemporalPurgeEngine::from_code(code), Err(PayloadError::UnknownEngine { code }));
        }
    }

    /// Written out by hand from the table in `docs/FORMAT.md`.
    #[test]
    fn purge_bytes_follow_the_format_table() {
        let p =
            TemporalPurgePayload { engine: TemporalPurgeEngine::Graph, collection: "ab".into(), cutoff_unix_ms: -2, purged_count: 0x0102 };
        #[rustfmt::skip]
        let expected = [
            3, 0, // engine, reserved
            0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // cutoff -2
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // purged count
            2, 0, // name length
            b'a', b'b',
        ];
        assert_eq!(p.encode().unwrap(), expected);
    }

    #[test]
    fn a_purge_refuses_a_reserved_byte_trailing_bytes_and_every_cut() {
        let bytes =
            TemporalPurgePayload { engine: TemporalPurgeEngine::Vector, collection: "v".into(), cutoff_unix_ms: 1, purged_count: 2 }
                .encode()
                .unwrap();
        for len in 0..bytes.len() {
            assert_eq!(TemporalPurgePayload::decode(&bytes[..len]), Err(PayloadError::Truncated), "{len} bytes");
        }
        let mut reserved = bytes.clone();
        reserved[1] = 1;
        assert_eq!(TemporalPurgePayload::decode(&reserved), Err(PayloadError::Reserved));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(TemporalPurgePayload::decode(&longer), Err(PayloadError::TrailingBytes));
    }
}
