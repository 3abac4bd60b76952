//! The record a deterministic (Calvin-style) scheduler writes once it has applied a transaction.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | sequencer epoch |
//! | 8 | 4 | position in the epoch's batch |
//! | 12 | 4 | vshard |

use super::{PayloadError, take};

/// Bytes in a [`CalvinAppliedPayload`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::CalvinAppliedPayload;
/// use nodedb_wal::format::payload::CALVIN_APPLIED_LEN;
///
/// assert_eq!(CalvinAppliedPayload { epoch: 1, position: 2, vshard: 3 }.encode().len(), CALVIN_APPLIED_LEN);
/// ```
pub const CALVIN_APPLIED_LEN: usize = 16;

/// Payload of [`crate::RecordType::CALVIN_APPLIED`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CalvinAppliedPayload, PayloadError};
///
/// let applied = CalvinAppliedPayload { epoch: 1 << 40, position: 3, vshard: 9 };
/// let bytes = applied.encode();
/// assert_eq!(CalvinAppliedPayload::decode(&bytes), Ok(applied));
/// assert_eq!(CalvinAppliedPayload::decode(&bytes[..15]), Err(PayloadError::Truncated));
///
/// // Ordered by epoch, then position: the later of two is the one to resume after.
/// assert!(applied < CalvinAppliedPayload { position: 4, ..applied });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CalvinAppliedPayload {
    /// Sequencer epoch.
    pub epoch: u64,
    /// Position of the transaction in the epoch's batch.
    pub position: u32,
    /// The vshard that applied it.
    pub vshard: u32,
}

impl CalvinAppliedPayload {
    /// Encodes into exactly [`CALVIN_APPLIED_LEN`] bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{CalvinAppliedPayload, Lsn, RecordType, Scope, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let applied = CalvinAppliedPayload { epoch: 12, position: 0, vshard: 4 };
    /// let lsn = wal.append_calvin_applied(&applied, Scope { vshard: 4, ..Scope::default() })?;
    /// wal.wait_durable(lsn)?;
    /// let record = wal.read_from(lsn)?.next().expect("the record")?;
    /// assert_eq!(record.record_type, RecordType::CALVIN_APPLIED);
    /// assert_eq!(record.payload, applied.encode());
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn encode(&self) -> [u8; CALVIN_APPLIED_LEN] {
        let mut out = [0u8; CALVIN_APPLIED_LEN];
        out[0..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..12].copy_from_slice(&self.position.to_le_bytes());
        out[12..16].copy_from_slice(&self.vshard.to_le_bytes());
        out
    }

    /// Decodes exactly [`CALVIN_APPLIED_LEN`] bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CalvinAppliedPayload, PayloadError};
    ///
    /// let mut bytes = CalvinAppliedPayload { epoch: 5, position: 6, vshard: 7 }.encode().to_vec();
    /// assert_eq!(CalvinAppliedPayload::decode(&bytes).map(|a| a.position), Ok(6));
    /// bytes.push(0);
    /// assert_eq!(CalvinAppliedPayload::decode(&bytes), Err(PayloadError::TrailingBytes));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<CalvinAppliedPayload, PayloadError> {
        if bytes.len() > CALVIN_APPLIED_LEN {
            return Err(PayloadError::TrailingBytes);
        }
        Ok(CalvinAppliedPayload {
            epoch: u64::from_le_bytes(take(bytes, 0)?),
            position: u32::from_le_bytes(take(bytes, 8)?),
            vshard: u32::from_le_bytes(take(bytes, 12)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calvin_applied_round_trips() {
        let c = CalvinAppliedPayload { epoch: 1 << 40, position: 3, vshard: 9 };
        assert_eq!(CalvinAppliedPayload::decode(&c.encode()), Ok(c));
        assert_eq!(CalvinAppliedPayload::decode(&c.encode()[..15]), Err(PayloadError::Truncated));
    }

    #[test]
    fn calvin_applied_fields_lie_where_the_format_table_puts_them() {
        let bytes = CalvinAppliedPayload { epoch: 0x0102_0304_0506_0708, position: 0x1112_1314, vshard: 0x2122_2324 }.encode();
        assert_eq!(bytes[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[8..12], 0x1112_1314u32.to_le_bytes());
        assert_eq!(bytes[12..16], 0x2122_2324u32.to_le_bytes());
    }

    #[test]
    fn a_calvin_payload_of_any_other_length_is_refused() {
        let bytes = CalvinAppliedPayload { epoch: 1, position: 2, vshard: 3 }.encode().to_vec();
        for len in [0, 8, 12, 15] {
            assert_eq!(CalvinAppliedPayload::decode(&bytes[..len]), Err(PayloadError::Truncated), "{len} bytes");
        }
        for extra in [1, 16] {
            let longer = [&bytes[..], &vec![0; extra]].concat();
            assert_eq!(CalvinAppliedPayload::decode(&longer), Err(PayloadError::TrailingBytes), "{extra} bytes more");
        }
    }
}
