//! The log manifest's slot: which segment is the newest whose first batch was made durable.
//!
//! Without it, a newest segment removed by hand (or lost with a file) would leave a log that
//! recovers cleanly to an older end: acknowledged records gone, nothing reported. The manifest
//! file `MANIFEST` holds two slots of [`SLOT_SPACING`] bytes; each update writes the slot the
//! older sequence occupies and syncs it, so a torn update leaves the other slot intact.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `NWMF` |
//! | 4 | 2 | version (1), little-endian |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | sequence, little-endian (higher wins) |
//! | 16 | 8 | newest segment id, little-endian |
//! | 24 | 4 | CRC32C of bytes 0..24, little-endian |
//! | 28 | 4 | reserved, zero |

use crate::types::SegmentId;

/// The manifest's file name in the log directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Bytes of a slot.
pub const SLOT_LEN: usize = 32;
/// Where the second slot starts: a sector apart, so that one torn sector cannot hit both.
pub const SLOT_SPACING: usize = 512;
/// Bytes of the whole file.
pub const MANIFEST_LEN: usize = 2 * SLOT_SPACING;

const MAGIC: [u8; 4] = *b"NWMF";
const VERSION: u16 = 1;

/// One slot's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestSlot {
    /// Updates are numbered; the valid slot with the higher number is current.
    pub sequence: u64,
    /// The newest segment whose first batch was durable when the slot was written.
    pub newest: SegmentId,
}

impl ManifestSlot {
    /// The slot's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out[16..24].copy_from_slice(&self.newest.0.to_le_bytes());
        let crc = crc32c::crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// A slot, or `None` for anything that is not an intact slot of this version (zeros, a
    /// torn write, another file).
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<ManifestSlot> {
        let bytes = bytes.get(..SLOT_LEN)?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        let intact = bytes[0..4] == MAGIC
            && bytes[4..6] == VERSION.to_le_bytes()
            && bytes[6..8] == [0, 0]
            && bytes[28..32] == [0; 4]
            && crc32c::crc32c(&bytes[..24]) == crc;
        intact.then(|| ManifestSlot { sequence: u64_at(8), newest: SegmentId(u64_at(16)) })
    }

    /// The current slot of a manifest file's bytes: the intact one with the higher sequence.
    #[must_use]
    pub fn current(file: &[u8]) -> Option<ManifestSlot> {
        let slot = |at: usize| file.get(at..).and_then(ManifestSlot::decode);
        match (slot(0), slot(SLOT_SPACING)) {
            (Some(a), Some(b)) => Some(if b.sequence > a.sequence { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Where the update numbered `sequence` is written: updates alternate between the two
    /// slots, so each one leaves the previous intact.
    #[must_use]
    pub fn offset_of(sequence: u64) -> u64 {
        (sequence % 2) * SLOT_SPACING as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_round_trips_and_any_flipped_bit_is_refused() {
        let slot = ManifestSlot { sequence: 7, newest: SegmentId(42) };
        let bytes = slot.encode();
        assert_eq!(ManifestSlot::decode(&bytes), Some(slot));
        for bit in 0..SLOT_LEN * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(ManifestSlot::decode(&bad), None, "bit {bit}");
        }
        assert_eq!(ManifestSlot::decode(&[0; SLOT_LEN]), None);
        assert_eq!(ManifestSlot::decode(&bytes[..SLOT_LEN - 1]), None);
    }

    #[test]
    fn the_intact_slot_with_the_higher_sequence_is_current() {
        let mut file = [0u8; MANIFEST_LEN];
        let old = ManifestSlot { sequence: 1, newest: SegmentId(3) };
        let new = ManifestSlot { sequence: 2, newest: SegmentId(4) };
        let old_at = ManifestSlot::offset_of(old.sequence) as usize;
        file[old_at..old_at + SLOT_LEN].copy_from_slice(&old.encode());
        assert_eq!(ManifestSlot::current(&file), Some(old));
        let at = ManifestSlot::offset_of(new.sequence) as usize;
        assert_ne!(at, old_at);
        file[at..at + SLOT_LEN].copy_from_slice(&new.encode());
        assert_eq!(ManifestSlot::current(&file), Some(new));
        // A torn update of the newer slot falls back to the older one.
        file[at + 3] ^= 0xFF;
        assert_eq!(ManifestSlot::current(&file), Some(old));
        assert_eq!(ManifestSlot::current(&[0u8; 10]), None);
    }
}
