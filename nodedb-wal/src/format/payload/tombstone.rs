//! A collection tombstone: the collection was dropped; its records below `purge_lsn` are dead.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | database |
//! | 4 | 4 | tenant |
//! | 8 | 8 | purge_lsn |
//! | 16 | 2 | name length (at most 255) |
//! | 18 | n | collection name, UTF-8 |

use super::{PayloadError, decode_name, encode_name, take};
use crate::types::Lsn;

/// Longest collection name a tombstone carries, in bytes.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CollectionTombstonePayload, Lsn, MAX_COLLECTION_NAME_LEN};
///
/// let longest = "n".repeat(MAX_COLLECTION_NAME_LEN);
/// let mut tombstone = CollectionTombstonePayload { database: 1, tenant: 1, collection: longest, purge_lsn: Lsn(1) };
/// assert!(tombstone.encode().is_ok());
/// tombstone.collection.push('n');
/// assert!(tombstone.encode().is_err());
/// ```
pub const MAX_COLLECTION_NAME_LEN: usize = 255;
const FIXED: usize = 16;

/// Payload of [`crate::RecordType::COLLECTION_TOMBSTONE`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CollectionTombstonePayload, Lsn, PayloadError};
///
/// let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(99) };
/// let bytes = tombstone.encode()?;
/// assert_eq!(bytes.len(), 18 + "orders".len());
/// assert_eq!(CollectionTombstonePayload::decode(&bytes), Ok(tombstone));
/// # Ok::<(), PayloadError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionTombstonePayload {
    /// Database id.
    pub database: u32,
    /// Tenant id.
    pub tenant: u32,
    /// The dropped collection.
    pub collection: String,
    /// Records of the collection with a lower LSN are dropped with it. At most the tombstone's
    /// own LSN: one past it (an older build could write it) is read as that LSN, as
    /// [`crate::WalRecord::tombstone`] and recovery read it; [`Self::decode`] alone, which
    /// does not know the record's LSN, hands out the stored value.
    pub purge_lsn: Lsn,
}

impl CollectionTombstonePayload {
    /// Encodes; a name over [`MAX_COLLECTION_NAME_LEN`] bytes is an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(1) };
    /// // The log encodes the payload itself; a reader finds the same bytes.
    /// let lsn = wal.append_tombstone(&tombstone)?;
    /// wal.wait_durable(lsn)?;
    /// let record = wal.read_from(lsn)?.next().expect("the tombstone")?;
    /// assert_eq!(record.record_type, RecordType::COLLECTION_TOMBSTONE);
    /// assert_eq!(Ok(record.payload.into_vec()), tombstone.encode());
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let mut out = Vec::with_capacity(FIXED + 2 + self.collection.len());
        out.extend_from_slice(&self.database.to_le_bytes());
        out.extend_from_slice(&self.tenant.to_le_bytes());
        out.extend_from_slice(&self.purge_lsn.0.to_le_bytes());
        encode_name(&self.collection, &mut out)?;
        Ok(out)
    }

    /// Decodes, refusing truncated, oversized or trailing input.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CollectionTombstonePayload, Lsn, PayloadError};
    ///
    /// let bytes = CollectionTombstonePayload { database: 1, tenant: 2, collection: "t".into(), purge_lsn: Lsn(5) }.encode()?;
    /// assert_eq!(CollectionTombstonePayload::decode(&bytes)?.purge_lsn, Lsn(5));
    /// let mut oversized = bytes.clone();
    /// oversized[16..18].copy_from_slice(&300u16.to_le_bytes()); // the name's length
    /// assert_eq!(CollectionTombstonePayload::decode(&oversized), Err(PayloadError::NameTooLong { len: 300 }));
    /// # Ok::<(), PayloadError>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<CollectionTombstonePayload, PayloadError> {
        let database = u32::from_le_bytes(take(bytes, 0)?);
        let tenant = u32::from_le_bytes(take(bytes, 4)?);
        let purge_lsn = Lsn(u64::from_le_bytes(take(bytes, 8)?));
        let (name, rest) = decode_name(bytes.get(FIXED..).ok_or(PayloadError::Truncated)?)?;
        if !rest.is_empty() {
            return Err(PayloadError::TrailingBytes);
        }
        Ok(CollectionTombstonePayload { database, tenant, collection: name.to_owned(), purge_lsn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstone_round_trips_and_refuses_bad_input() {
        let t = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(99) };
        let bytes = t.encode().unwrap();
        assert_eq!(CollectionTombstonePayload::decode(&bytes), Ok(t));
        assert_eq!(CollectionTombstonePayload::decode(&bytes[..bytes.len() - 1]), Err(PayloadError::Truncated));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(CollectionTombstonePayload::decode(&long), Err(PayloadError::TrailingBytes));
        let too_long = CollectionTombstonePayload { collection: "x".repeat(256), ..CollectionTombstonePayload::decode(&bytes).unwrap() };
        assert_eq!(too_long.encode(), Err(PayloadError::NameTooLong { len: 256 }));
    }

    /// Written out by hand from the table in `docs/FORMAT.md`.
    #[test]
    fn tombstone_bytes_follow_the_format_table() {
        let t = CollectionTombstonePayload { database: 1, tenant: 2, collection: "ab".into(), purge_lsn: Lsn(0x0102) };
        #[rustfmt::skip]
        let expected = [
            1, 0, 0, 0, // database
            2, 0, 0, 0, // tenant
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // purge_lsn
            2, 0, // name length
            b'a', b'b',
        ];
        assert_eq!(t.encode().unwrap(), expected);
    }

    /// The limit is the same on both sides: what a writer may encode, a reader takes, and a
    /// longer name on disk is refused as such, not read as a shorter one.
    #[test]
    fn a_name_of_the_longest_length_decodes_and_one_byte_more_is_refused() {
        let longest = CollectionTombstonePayload { database: 1, tenant: 2, collection: "n".repeat(255), purge_lsn: Lsn(3) };
        let mut bytes = longest.encode().unwrap();
        assert_eq!(CollectionTombstonePayload::decode(&bytes), Ok(longest));
        bytes.push(b'n');
        bytes[16..18].copy_from_slice(&256u16.to_le_bytes());
        assert_eq!(CollectionTombstonePayload::decode(&bytes), Err(PayloadError::NameTooLong { len: 256 }));
    }

    #[test]
    fn every_cut_of_a_tombstone_is_truncated_and_a_bad_name_is_not_utf8() {
        let bytes = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(9) }.encode().unwrap();
        for len in 0..bytes.len() {
            assert_eq!(CollectionTombstonePayload::decode(&bytes[..len]), Err(PayloadError::Truncated), "{len} bytes");
        }
        let mut bad = bytes.clone();
        bad[18] = 0xFF;
        assert_eq!(CollectionTombstonePayload::decode(&bad), Err(PayloadError::NameNotUtf8));
    }
}
