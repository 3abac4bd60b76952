//! The record a deterministic (Calvin-style) scheduler writes once it has applied a transaction.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | sequencer epoch |
//! | 8 | 4 | position in the epoch's batch |
//! | 12 | 4 | vshard |

use super::{PayloadError, take};

/// Bytes in a [`CalvinAppliedPayload`].
pub const CALVIN_APPLIED_LEN: usize = 16;

/// Payload of [`crate::RecordType::CALVIN_APPLIED`].
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
    pub fn encode(&self) -> [u8; CALVIN_APPLIED_LEN] {
        let mut out = [0u8; CALVIN_APPLIED_LEN];
        out[0..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..12].copy_from_slice(&self.position.to_le_bytes());
        out[12..16].copy_from_slice(&self.vshard.to_le_bytes());
        out
    }

    /// Decodes exactly [`CALVIN_APPLIED_LEN`] bytes.
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
}
