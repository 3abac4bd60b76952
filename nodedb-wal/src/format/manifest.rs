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
//! | 8 | 8 | sequence, little-endian, in `1..2^63` (higher wins) |
//! | 16 | 8 | newest segment id, little-endian |
//! | 24 | 4 | CRC32C of bytes 0..24, little-endian |
//! | 28 | 4 | reserved, zero |
//!
//! The log's `FLOOR` (its truncation floor, the oldest segment it still needs) is the same
//! file with magic `NWFL` and the floor in the segment id field ([`SlotKind::Floor`]).

use super::crc::crc32c;
use crate::types::SegmentId;

/// Sequences are below this: no log makes 2^63 segments.
const SEQUENCE_LIMIT: u64 = 1 << 63;

/// The manifest's file name in the log directory.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::format::manifest::{MANIFEST_FILE, ManifestSlot};
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
/// wal.append_durable(Record::new(RecordType::optional(0x100), b"first"))?;
/// let manifest = sim.read_file(&Path::new("/wal").join(MANIFEST_FILE)).expect("written with the first segment");
/// assert_eq!(ManifestSlot::current(&manifest).map(|slot| slot.newest), Some(SegmentId(1)));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const MANIFEST_FILE: &str = "MANIFEST";

/// The name a new manifest is written under before it is renamed to [`MANIFEST_FILE`].
pub const MANIFEST_TEMP_FILE: &str = "MANIFEST.new";
/// The file naming the log's truncation floor: the oldest segment it still needs. Same two
/// slots as [`MANIFEST_FILE`], told apart by their magic ([`SlotKind::Floor`]); its slot's
/// segment id is the floor. Written by truncation before it removes anything below it.
pub const FLOOR_FILE: &str = "FLOOR";
/// The name a new floor file is written under before it is renamed to [`FLOOR_FILE`].
pub const FLOOR_TEMP_FILE: &str = "FLOOR.new";
/// Bytes of a slot.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SegmentId;
/// use nodedb_wal::format::manifest::{ManifestSlot, SLOT_LEN};
///
/// assert_eq!(ManifestSlot { sequence: 1, newest: SegmentId(1) }.encode().len(), SLOT_LEN);
/// ```
pub const SLOT_LEN: usize = 32;
/// Where the second slot starts: a sector apart, so that one torn sector cannot hit both.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::manifest::{ManifestSlot, SLOT_SPACING};
/// use nodedb_wal::storage::SECTOR;
///
/// assert_eq!(ManifestSlot::offset_of(1), SLOT_SPACING as u64);
/// assert!(SLOT_SPACING >= SECTOR);
/// ```
pub const SLOT_SPACING: usize = 512;
/// Bytes of the whole file.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::manifest::{MANIFEST_LEN, ManifestSlot, SLOT_LEN};
///
/// // Both slots fit, whichever sequence writes them.
/// assert!((0..4).all(|sequence| ManifestSlot::offset_of(sequence) as usize + SLOT_LEN <= MANIFEST_LEN));
/// ```
pub const MANIFEST_LEN: usize = 2 * SLOT_SPACING;

const VERSION: u16 = 1;

/// Which file a slot belongs to. Both use the one layout; the magic tells them apart, so a
/// file copied over the other is not read as it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SegmentId;
/// use nodedb_wal::format::manifest::{ManifestSlot, SlotKind};
///
/// let floor = ManifestSlot { sequence: 3, newest: SegmentId(12) };
/// let bytes = floor.encode_as(SlotKind::Floor);
/// assert_eq!(ManifestSlot::decode_as(&bytes, SlotKind::Floor), Some(floor));
/// assert_eq!(ManifestSlot::decode(&bytes), None, "not a manifest slot");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// `MANIFEST`: the segment id is the newest segment whose first batch was durable.
    Manifest,
    /// `FLOOR`: the segment id is the oldest segment the log still needs.
    Floor,
}

impl SlotKind {
    const fn magic(self) -> [u8; 4] {
        match self {
            SlotKind::Manifest => *b"NWMF",
            SlotKind::Floor => *b"NWFL",
        }
    }
}

/// One slot's contents.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SegmentId;
/// use nodedb_wal::format::manifest::{MANIFEST_LEN, ManifestSlot, SLOT_LEN};
///
/// let mut file = [0u8; MANIFEST_LEN];
/// let mut write = |slot: ManifestSlot| {
///     let at = ManifestSlot::offset_of(slot.sequence) as usize;
///     file[at..at + SLOT_LEN].copy_from_slice(&slot.encode());
///     at
/// };
/// let old = ManifestSlot { sequence: 1, newest: SegmentId(3) };
/// let new = ManifestSlot { sequence: 2, newest: SegmentId(4) };
/// write(old);
/// let new_at = write(new);
/// assert_eq!(ManifestSlot::current(&file), Some(new));
///
/// // An update torn by a crash leaves the slot before it current.
/// file[new_at + 20] ^= 0xFF;
/// assert_eq!(ManifestSlot::decode(&file[new_at..]), None);
/// assert_eq!(ManifestSlot::current(&file), Some(old));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestSlot {
    /// Updates are numbered; the valid slot with the higher number is current.
    pub sequence: u64,
    /// The newest segment whose first batch was durable when the slot was written; in a
    /// [`SlotKind::Floor`] slot, the oldest segment the log still needs.
    pub newest: SegmentId,
}

impl ManifestSlot {
    /// The slot's bytes. See [`ManifestSlot`] for an example.
    #[must_use]
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        self.encode_as(SlotKind::Manifest)
    }

    /// The slot's bytes in a file of `kind`. See [`SlotKind`] for an example.
    #[must_use]
    pub fn encode_as(&self, kind: SlotKind) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        out[0..4].copy_from_slice(&kind.magic());
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out[16..24].copy_from_slice(&self.newest.0.to_le_bytes());
        let crc = crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// A slot, or `None` for anything that is not an intact slot of this version (zeros, a
    /// torn write, another file).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SegmentId;
    /// use nodedb_wal::format::manifest::{ManifestSlot, SLOT_LEN};
    ///
    /// let slot = ManifestSlot { sequence: 7, newest: SegmentId(42) };
    /// assert_eq!(ManifestSlot::decode(&slot.encode()), Some(slot));
    /// assert_eq!(ManifestSlot::decode(&[0u8; SLOT_LEN]), None, "zeros");
    /// assert_eq!(ManifestSlot::decode(&slot.encode()[..SLOT_LEN - 1]), None, "too short");
    /// ```
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<ManifestSlot> {
        ManifestSlot::decode_as(bytes, SlotKind::Manifest)
    }

    /// A slot of a file of `kind`, or `None` for anything else. See [`SlotKind`].
    #[must_use]
    pub fn decode_as(bytes: &[u8], kind: SlotKind) -> Option<ManifestSlot> {
        let bytes = bytes.get(..SLOT_LEN)?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        let intact = bytes[0..4] == kind.magic()
            && bytes[4..6] == VERSION.to_le_bytes()
            && bytes[6..8] == [0, 0]
            && bytes[28..32] == [0; 4]
            && crc32c(&bytes[..24]) == crc;
        // One update per segment made: a sequence of 0 or from 2^63 on was never written, and
        // the next update's `sequence + 1` must not wrap (a forged slot of `u64::MAX` did).
        let sequence = u64_at(8);
        (intact && (1..SEQUENCE_LIMIT).contains(&sequence)).then(|| ManifestSlot { sequence, newest: SegmentId(u64_at(16)) })
    }

    /// The current slot of a manifest file's bytes: the intact one with the higher sequence.
    /// See [`ManifestSlot`] for an example.
    #[must_use]
    pub fn current(file: &[u8]) -> Option<ManifestSlot> {
        ManifestSlot::current_as(file, SlotKind::Manifest)
    }

    /// The current slot of a file of `kind`.
    #[must_use]
    pub fn current_as(file: &[u8], kind: SlotKind) -> Option<ManifestSlot> {
        let slot = |at: usize| file.get(at..).and_then(|b| ManifestSlot::decode_as(b, kind));
        match (slot(0), slot(SLOT_SPACING)) {
            (Some(a), Some(b)) => Some(if b.sequence > a.sequence { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Whether the slot of a file of `kind` that does not hold its current slot is damaged:
    /// neither intact nor the zeros of the slot a file updated once has not used yet (its
    /// current slot's sequence is 1). Then the current slot may be the older of the two, and
    /// the damaged one a later update. `false` where no slot is intact.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SegmentId;
    /// use nodedb_wal::format::manifest::{MANIFEST_LEN, ManifestSlot, SLOT_LEN, SLOT_SPACING, SlotKind};
    ///
    /// let mut file = vec![0u8; MANIFEST_LEN];
    /// let first = ManifestSlot { sequence: 1, newest: SegmentId(3) };
    /// file[SLOT_SPACING..SLOT_SPACING + SLOT_LEN].copy_from_slice(&first.encode_as(SlotKind::Floor));
    /// assert!(!ManifestSlot::other_damaged_as(&file, SlotKind::Floor), "the first slot not used yet");
    /// file[5] = 1; // the second update, torn or damaged
    /// assert!(ManifestSlot::other_damaged_as(&file, SlotKind::Floor));
    /// ```
    #[must_use]
    pub fn other_damaged_as(file: &[u8], kind: SlotKind) -> bool {
        let slot = |at: usize| file.get(at..).and_then(|b| ManifestSlot::decode_as(b, kind));
        let Some(current) = ManifestSlot::current_as(file, kind) else { return false };
        let other_at = if slot(0) == Some(current) { SLOT_SPACING } else { 0 };
        let Some(other) = file.get(other_at..other_at + SLOT_LEN) else { return true };
        slot(other_at).is_none() && !(current.sequence == 1 && other.iter().all(|&b| b == 0))
    }

    /// Where the update numbered `sequence` is written: updates alternate between the two
    /// slots, so each one leaves the previous intact.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::manifest::{ManifestSlot, SLOT_SPACING};
    ///
    /// assert_eq!(ManifestSlot::offset_of(4), 0);
    /// assert_eq!(ManifestSlot::offset_of(5), SLOT_SPACING as u64);
    /// assert_ne!(ManifestSlot::offset_of(6), ManifestSlot::offset_of(7));
    /// ```
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

    /// Written out by hand from the tables in `docs/FORMAT.md`: the two files differ only in
    /// their magic, so a `FLOOR` copied over `MANIFEST` (or the reverse) is not read as it.
    #[test]
    fn slot_bytes_follow_the_format_table_and_the_magic_tells_the_files_apart() {
        let slot = ManifestSlot { sequence: 7, newest: SegmentId(42) };
        for (kind, other, magic) in [(SlotKind::Manifest, SlotKind::Floor, b"NWMF"), (SlotKind::Floor, SlotKind::Manifest, b"NWFL")] {
            let bytes = slot.encode_as(kind);
            assert_eq!(&bytes[0..4], magic, "{kind:?}");
            assert_eq!(bytes[4..8], [1, 0, 0, 0], "version 1, then reserved zeros");
            assert_eq!(bytes[8..16], [7, 0, 0, 0, 0, 0, 0, 0], "sequence");
            assert_eq!(bytes[16..24], [42, 0, 0, 0, 0, 0, 0, 0], "segment id");
            assert_eq!(bytes[24..28], crc32c(&bytes[..24]).to_le_bytes(), "checksum of bytes 0..24");
            assert_eq!(bytes[28..32], [0; 4], "reserved");
            assert_eq!(ManifestSlot::decode_as(&bytes, kind), Some(slot));
            assert_eq!(ManifestSlot::decode_as(&bytes, other), None, "a {kind:?} slot read as {other:?}");
        }
    }

    /// A file of `len` bytes of `fill`, with `slots` (sequence, kind) written where their
    /// sequence puts them.
    fn file_with(len: usize, fill: u8, slots: &[(u64, SlotKind)]) -> Vec<u8> {
        let mut file = vec![fill; len];
        for &(sequence, kind) in slots {
            let at = ManifestSlot::offset_of(sequence) as usize;
            file[at..at + SLOT_LEN].copy_from_slice(&ManifestSlot { sequence, newest: SegmentId(sequence + 10) }.encode_as(kind));
        }
        file
    }

    /// Each update must leave the one before it intact, however many came before.
    #[test]
    fn updates_alternate_between_the_two_slots() {
        for sequence in 1..1000 {
            let (at, next) = (ManifestSlot::offset_of(sequence), ManifestSlot::offset_of(sequence + 1));
            assert!([0, SLOT_SPACING as u64].contains(&at), "update {sequence} at {at}");
            assert_ne!(at, next, "updates {sequence} and {}", sequence + 1);
        }
    }

    #[test]
    fn the_higher_sequence_is_current_in_either_position() {
        for (older, newer) in [(1, 2), (2, 3)] {
            let file = file_with(MANIFEST_LEN, 0, &[(older, SlotKind::Manifest), (newer, SlotKind::Manifest)]);
            assert_eq!(ManifestSlot::current(&file).map(|slot| slot.sequence), Some(newer), "update {newer} after {older}");
        }
    }

    /// Every state the slot beside the current one can be in, for a current slot in either
    /// position: only the zeros of a slot a once-updated file has not used yet, and an intact
    /// slot, are not damage.
    #[test]
    fn the_other_slot_counts_as_damaged_unless_intact_or_not_used_yet() {
        use SlotKind::{Floor, Manifest};
        let cases: [(&str, Vec<u8>, bool); 10] = [
            ("first update, other slot zeros", file_with(MANIFEST_LEN, 0, &[(1, Floor)]), false),
            ("first update, other slot not zeros", file_with(MANIFEST_LEN, 7, &[(1, Floor)]), true),
            ("second update, other slot zeros", file_with(MANIFEST_LEN, 0, &[(2, Floor)]), true),
            ("second update, older slot intact", file_with(MANIFEST_LEN, 0, &[(1, Floor), (2, Floor)]), false),
            ("third update, older slot intact", file_with(MANIFEST_LEN, 0, &[(2, Floor), (3, Floor)]), false),
            ("third update, older slot zeros", file_with(MANIFEST_LEN, 0, &[(3, Floor)]), true),
            ("older slot of the other kind", file_with(MANIFEST_LEN, 0, &[(1, Manifest), (2, Floor)]), true),
            ("file cut inside the second slot", file_with(SLOT_SPACING + SLOT_LEN - 1, 0, &[(2, Floor)]), true),
            ("file cut before the second slot", file_with(SLOT_LEN, 0, &[(2, Floor)]), true),
            ("no intact slot", file_with(MANIFEST_LEN, 7, &[]), false),
        ];
        for (what, file, damaged) in cases {
            assert_eq!(ManifestSlot::other_damaged_as(&file, Floor), damaged, "{what}");
        }
    }

    #[test]
    fn a_slot_with_a_sequence_never_written_is_refused_so_the_next_cannot_wrap() {
        for sequence in [0, SEQUENCE_LIMIT, u64::MAX] {
            let forged = ManifestSlot { sequence, newest: SegmentId(9) };
            assert_eq!(ManifestSlot::decode(&forged.encode()), None, "sequence {sequence}");
        }
        let last = ManifestSlot { sequence: SEQUENCE_LIMIT - 1, newest: SegmentId(9) };
        assert_eq!(ManifestSlot::decode(&last.encode()), Some(last));
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
