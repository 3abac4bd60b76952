//! A sealed segment's header index: every record header of the segment, with its offset, in
//! one small file beside it (`{id:020}.hdrs`). A headers-only scan ([`crate::LazyWalReader`])
//! reads it instead of one block per record, which for large records is most of the cost of
//! the scan (a dependent random read from disk, or a system call from the page cache).
//!
//! The index is advisory. The flusher writes it after the segment's last batch is durable,
//! without a sync; a reader uses it only if it decodes whole (CRC) and names the segment it
//! sits beside (id, salt, first LSN, record count), and otherwise scans the segment. A payload
//! read through a handle from the index is still checked against the segment's own frame.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `NWHX` |
//! | 4 | 2 | version (1), little-endian |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | segment id |
//! | 16 | 4 | the segment's salt |
//! | 20 | 4 | record count `n` |
//! | 24 | 8 | first LSN |
//! | 32 | 56 × `n` | per record: its frame's offset in the segment (8), then its 48-byte header (as in the frame, checksum field zero) |
//! | 32 + 56 × `n` | 4 | CRC32C of every byte before it |

use crate::format::crc::crc32c;
use crate::format::frame::{HEADER_LEN, RecordHeader};

use crate::types::{Lsn, SegmentId};

const MAGIC: [u8; 4] = *b"NWHX";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 32;
/// Bytes per record in the index.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::HEADER_LEN;
/// use nodedb_wal::format::header_index::ENTRY_LEN;
///
/// assert_eq!(ENTRY_LEN, 8 + HEADER_LEN);
/// ```
pub const ENTRY_LEN: usize = 8 + HEADER_LEN;

/// The header index of one sealed segment.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, RecordHeader};
/// use nodedb_wal::format::header_index::HeaderIndex;
/// use nodedb_wal::{Lsn, RecordType, Scope, SegmentId};
///
/// let header = |lsn| RecordHeader {
///     lsn: Lsn(lsn),
///     durable_lsn: Lsn(lsn - 1),
///     record_type: RecordType::optional(0x100),
///     scope: Scope::default(),
///     flags: 0,
///     salt: 9,
///     payload_len: 100,
/// };
/// let mut index = HeaderIndex::new(SegmentId(3), 9, Lsn(10));
/// index.push(4096, &header(10));
/// index.push(4096 + (HEADER_LEN as u64 + 100), &header(11));
/// let bytes = index.encode();
/// assert_eq!(HeaderIndex::decode(&bytes), Some(index.clone()));
/// assert_eq!(index.entries()[1].1.lsn, Lsn(11));
///
/// // Anything torn or altered is no index at all.
/// let mut torn = bytes.clone();
/// torn[40] ^= 1;
/// assert_eq!(HeaderIndex::decode(&torn), None);
/// assert_eq!(HeaderIndex::decode(&bytes[..bytes.len() - 1]), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderIndex {
    /// The segment it indexes.
    pub segment: SegmentId,
    /// The segment's salt: every indexed header carries it.
    pub salt: u32,
    /// The LSN of the first record.
    pub first_lsn: Lsn,
    entries: Vec<(u64, RecordHeader)>,
}

impl HeaderIndex {
    /// An empty index of a segment whose first record will be `first_lsn`.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::header_index::HeaderIndex;
    /// use nodedb_wal::{Lsn, SegmentId};
    ///
    /// let empty = HeaderIndex::new(SegmentId(1), 5, Lsn(1));
    /// assert!(empty.entries().is_empty());
    /// assert_eq!(empty.end_lsn(), Lsn(1));
    /// assert_eq!(HeaderIndex::decode(&empty.encode()), Some(empty));
    /// ```
    #[must_use]
    pub fn new(segment: SegmentId, salt: u32, first_lsn: Lsn) -> HeaderIndex {
        HeaderIndex { segment, salt, first_lsn, entries: Vec::new() }
    }

    /// Empties the index for another segment, keeping the memory of its entries: a writer
    /// that indexes one segment after another does not grow a fresh list (and fault in its
    /// pages) each time.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::header_index::HeaderIndex;
    /// use nodedb_wal::{Lsn, SegmentId};
    ///
    /// let mut index = HeaderIndex::new(SegmentId(1), 5, Lsn(1));
    /// index.reset(SegmentId(2), 6, Lsn(40));
    /// assert_eq!(index, HeaderIndex::new(SegmentId(2), 6, Lsn(40)));
    /// ```
    pub fn reset(&mut self, segment: SegmentId, salt: u32, first_lsn: Lsn) {
        self.entries.clear();
        (self.segment, self.salt, self.first_lsn) = (segment, salt, first_lsn);
    }

    /// Adds the next record: its frame's offset and its header. See [`HeaderIndex`] for an
    /// example.
    pub fn push(&mut self, offset: u64, header: &RecordHeader) {
        self.entries.push((offset, *header));
    }

    /// Offset and header of each record, in LSN order. See [`HeaderIndex`] for an example.
    #[must_use]
    pub fn entries(&self) -> &[(u64, RecordHeader)] {
        &self.entries
    }

    /// Offset and header of each record, taken out of the index.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::header_index::HeaderIndex;
    /// use nodedb_wal::{Lsn, SegmentId};
    ///
    /// assert!(HeaderIndex::new(SegmentId(1), 5, Lsn(1)).into_entries().is_empty());
    /// ```
    #[must_use]
    pub fn into_entries(self) -> Vec<(u64, RecordHeader)> {
        self.entries
    }

    /// The LSN after the last record. See [`HeaderIndex::new`] for an example.
    #[must_use]
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + self.entries.len() as u64)
    }

    /// Bytes [`Self::encode`] produces for `records` records.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::header_index::{ENTRY_LEN, HeaderIndex};
    /// use nodedb_wal::{Lsn, SegmentId};
    ///
    /// assert_eq!(HeaderIndex::encoded_len(2) - HeaderIndex::encoded_len(1), ENTRY_LEN);
    /// assert_eq!(HeaderIndex::new(SegmentId(1), 5, Lsn(1)).encode().len(), HeaderIndex::encoded_len(0));
    /// ```
    #[must_use]
    pub fn encoded_len(records: usize) -> usize {
        FIXED_LEN + records * ENTRY_LEN + 4
    }

    /// The file's bytes. See [`HeaderIndex`] for an example.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; Self::encoded_len(self.entries.len())];
        self.encode_into(&mut out);
        out
    }

    /// Writes the file's bytes into `out`, which must be [`Self::encoded_len`] long: for a
    /// writer that reuses one buffer (an index of a full segment is about a megabyte).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::header_index::HeaderIndex;
    /// use nodedb_wal::{Lsn, SegmentId};
    ///
    /// let index = HeaderIndex::new(SegmentId(1), 5, Lsn(1));
    /// let mut reused = vec![0xAA; HeaderIndex::encoded_len(0)];
    /// index.encode_into(&mut reused);
    /// assert_eq!(reused, index.encode());
    /// ```
    ///
    /// # Panics
    ///
    /// If `out` is not exactly [`Self::encoded_len`] bytes long.
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), Self::encoded_len(self.entries.len()), "an index is encoded into a buffer of its exact length");
        out[..FIXED_LEN].fill(0);
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.segment.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.salt.to_le_bytes());
        let count = u32::try_from(self.entries.len()).expect("a segment holds fewer than 2^32 records");
        out[20..24].copy_from_slice(&count.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        for (i, (offset, header)) in self.entries.iter().enumerate() {
            let at = FIXED_LEN + i * ENTRY_LEN;
            out[at..at + 8].copy_from_slice(&offset.to_le_bytes());
            header.encode_into(&mut out[at + 8..at + ENTRY_LEN]);
        }
        let crc_at = out.len() - 4;
        let crc = crc32c(&out[..crc_at]);
        out[crc_at..].copy_from_slice(&crc.to_le_bytes());
    }

    /// The index in `bytes`, or `None` unless it is whole and consistent: right length and
    /// CRC, reserved and checksum fields zero, every header decodable, of a data type (meta
    /// frames are never indexed, and a reader would hand one out as a record), of the index's salt,
    /// with dense LSNs from `first_lsn` below [`Lsn::LIMIT`], at rising offsets whose frames
    /// do not overlap. See [`HeaderIndex`] for an example.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<HeaderIndex> {
        let fixed = bytes.get(..FIXED_LEN + 4)?;
        if fixed[0..4] != MAGIC || u16::from_le_bytes([fixed[4], fixed[5]]) != VERSION || fixed[6..8] != [0, 0] {
            return None;
        }
        let count = u32::from_le_bytes(bytes[20..24].try_into().ok()?) as usize;
        if bytes.len() != Self::encoded_len(count) {
            return None;
        }
        let crc_at = bytes.len() - 4;
        if crc32c(&bytes[..crc_at]).to_le_bytes() != bytes[crc_at..] {
            return None;
        }
        let segment = SegmentId(u64::from_le_bytes(bytes[8..16].try_into().ok()?));
        let salt = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
        let first_lsn = Lsn(u64::from_le_bytes(bytes[24..32].try_into().ok()?));
        // Every record's LSN is below the limit, so the LSN after the last is at most it.
        if first_lsn.0.checked_add(count as u64).is_none_or(|end| end > Lsn::LIMIT.0) {
            return None;
        }
        let mut index = HeaderIndex { segment, salt, first_lsn, entries: Vec::with_capacity(count) };
        let mut next_free = 0u64;
        for i in 0..count {
            let at = FIXED_LEN + i * ENTRY_LEN;
            let offset = u64::from_le_bytes(bytes[at..at + 8].try_into().ok()?);
            let entry = &bytes[at + 8..at + ENTRY_LEN];
            let header = RecordHeader::decode(entry).ok()?;
            // Checksum field zero: an index has one encoding, which decoding gives back.
            let expected = first_lsn.0 + i as u64;
            let meta = header.record_type.is_meta();
            if entry[..4] != [0; 4] || meta || header.salt != salt || header.lsn != Lsn(expected) || offset < next_free {
                return None;
            }
            next_free = offset.checked_add(header.frame_len() as u64)?;
            index.entries.push((offset, header));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{RecordType, Scope};

    fn header(lsn: u64, salt: u32, payload_len: u32) -> RecordHeader {
        RecordHeader {
            lsn: Lsn(lsn),
            durable_lsn: Lsn(lsn - 1),
            salt,
            record_type: RecordType::optional(0x100),
            scope: Scope { database: 1, tenant: 2, vshard: 3 },
            payload_len,
            flags: 0,
        }
    }

    /// Three records of 100-byte payloads from LSN 10, packed one after another from 4096.
    fn three() -> HeaderIndex {
        let mut index = HeaderIndex::new(SegmentId(3), 9, Lsn(10));
        for i in 0..3 {
            index.push(4096 + i * (HEADER_LEN as u64 + 100), &header(10 + i, 9, 100));
        }
        index
    }

    /// The CRC recomputed over altered bytes, so that only the rule under test can refuse them.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let at = bytes.len() - 4;
        let crc = crc32c(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn le(bytes: &[u8], at: usize, len: usize) -> u64 {
        bytes[at..at + len].iter().rev().fold(0, |acc, &b| acc << 8 | u64::from(b))
    }

    #[test]
    fn every_field_lies_where_the_format_table_puts_it() {
        let index = three();
        let bytes = index.encode();
        assert_eq!(bytes.len(), HeaderIndex::encoded_len(3));
        assert_eq!(bytes.len(), 32 + 3 * 56 + 4);
        assert_eq!(&bytes[0..4], b"NWHX");
        assert_eq!((le(&bytes, 4, 2), le(&bytes, 6, 2)), (1, 0), "version, reserved");
        assert_eq!((le(&bytes, 8, 8), le(&bytes, 16, 4), le(&bytes, 20, 4), le(&bytes, 24, 8)), (3, 9, 3, 10));
        for (i, (offset, header)) in index.entries().iter().enumerate() {
            let at = 32 + i * 56;
            assert_eq!(le(&bytes, at, 8), *offset);
            let mut expected = [0u8; HEADER_LEN];
            header.encode_into(&mut expected);
            assert_eq!(bytes[at + 8..at + 56], expected, "entry {i}: the frame's header, checksum field zero");
        }
        let crc_at = bytes.len() - 4;
        assert_eq!(le(&bytes, crc_at, 4), u64::from(crc32c(&bytes[..crc_at])));
        assert_eq!(HeaderIndex::decode(&bytes), Some(index));
    }

    #[test]
    fn the_end_lsn_is_the_one_after_the_last_record() {
        assert_eq!(three().end_lsn(), Lsn(13));
        assert_eq!(HeaderIndex::new(SegmentId(1), 1, Lsn(7)).end_lsn(), Lsn(7));
    }

    #[test]
    fn entries_are_handed_out_in_the_order_pushed_and_a_reset_drops_them() {
        let mut index = three();
        let offsets: Vec<u64> = index.entries().iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, [4096, 4096 + 148, 4096 + 2 * 148]);
        assert_eq!(index.clone().into_entries(), index.entries());
        index.reset(SegmentId(4), 8, Lsn(40));
        assert_eq!(index, HeaderIndex::new(SegmentId(4), 8, Lsn(40)));
    }

    #[test]
    fn encoding_into_a_used_buffer_gives_the_same_bytes() {
        let index = three();
        let mut reused = vec![0xAA; HeaderIndex::encoded_len(3)];
        index.encode_into(&mut reused);
        assert_eq!(reused, index.encode());
    }

    #[test]
    fn a_fixed_field_off_the_format_is_no_index_even_under_a_valid_crc() {
        let bytes = three().encode();
        for (what, at, value) in [("magic", 0, b'X'), ("version", 4, 2), ("version", 4, 0), ("reserved", 6, 1), ("reserved", 7, 1)] {
            let mut altered = bytes.clone();
            altered[at] = value;
            assert_eq!(HeaderIndex::decode(&resealed(altered)), None, "{what} byte {at} = {value}");
        }
        for count in [2u32, 4, u32::MAX] {
            let mut altered = bytes.clone();
            altered[20..24].copy_from_slice(&count.to_le_bytes());
            assert_eq!(HeaderIndex::decode(&resealed(altered)), None, "a count of {count} for 3 entries");
        }
    }

    #[test]
    fn a_torn_or_extended_index_is_no_index() {
        let bytes = three().encode();
        assert_eq!(HeaderIndex::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(HeaderIndex::decode(&resealed(longer)), None);
        let empty = HeaderIndex::new(SegmentId(1), 1, Lsn(1)).encode();
        assert_eq!(HeaderIndex::decode(&empty[..FIXED_LEN + 3]), None, "shorter than an empty index");
        assert_eq!(HeaderIndex::decode(&[]), None);
        let mut flipped = bytes;
        flipped[FIXED_LEN] ^= 1;
        assert_eq!(HeaderIndex::decode(&flipped), None, "the CRC covers the entries");
    }

    #[test]
    fn an_entry_of_another_salt_or_out_of_lsn_order_is_no_index() {
        let entries = [(9, 10), (8, 11), (9, 12)];
        let mut other_salt = HeaderIndex::new(SegmentId(3), 9, Lsn(10));
        for (i, (salt, lsn)) in entries.into_iter().enumerate() {
            other_salt.push(4096 + i as u64 * 148, &header(lsn, salt, 100));
        }
        assert_eq!(HeaderIndex::decode(&other_salt.encode()), None, "salt");
        for lsns in [[10, 12, 13], [10, 11, 11], [11, 12, 13], [9, 10, 11]] {
            let mut index = HeaderIndex::new(SegmentId(3), 9, Lsn(10));
            for (i, lsn) in lsns.into_iter().enumerate() {
                index.push(4096 + i as u64 * 148, &header(lsn, 9, 100));
            }
            assert_eq!(HeaderIndex::decode(&index.encode()), None, "LSNs {lsns:?} from 10");
        }
    }

    /// A frame may start where the one before it ends, and not a byte sooner; the first may
    /// start anywhere (a segment's first record is past its header block).
    #[test]
    fn frames_lie_at_rising_offsets_that_do_not_overlap() {
        let at = |offsets: [u64; 2]| {
            let mut index = HeaderIndex::new(SegmentId(3), 9, Lsn(10));
            index.push(offsets[0], &header(10, 9, 100));
            index.push(offsets[1], &header(11, 9, 100));
            HeaderIndex::decode(&index.encode())
        };
        let frame = HEADER_LEN as u64 + 100;
        assert!(at([0, frame]).is_some(), "back to back from 0");
        assert!(at([4096, 4096 + frame]).is_some());
        assert!(at([4096, 8192]).is_some(), "a gap (padding) between them");
        assert_eq!(at([4096, 4096 + frame - 1]), None, "overlapping by a byte");
        assert_eq!(at([4096, 4096]), None);
        assert_eq!(at([4096, 0]), None, "falling");
        assert_eq!(at([u64::MAX - 10, u64::MAX]), None, "a frame past the end of any file");
    }

    /// The LSN after the last record must not pass [`Lsn::LIMIT`], so `end_lsn` cannot wrap.
    #[test]
    fn the_last_lsn_of_an_index_lies_below_the_limit() {
        let limit = Lsn::LIMIT.0;
        let index = |first: u64, count: u64| {
            let mut index = HeaderIndex::new(SegmentId(3), 9, Lsn(first));
            for i in 0..count {
                index.push(4096 + i * 148, &header(first + i, 9, 100));
            }
            index.encode()
        };
        assert!(HeaderIndex::decode(&index(limit - 2, 2)).is_some());
        assert_eq!(HeaderIndex::decode(&index(limit - 1, 2)), None);
        assert!(HeaderIndex::decode(&index(limit, 0)).is_some(), "an empty index ends where it starts");
        assert_eq!(HeaderIndex::decode(&index(limit + 1, 0)), None);
        assert_eq!(HeaderIndex::decode(&index(u64::MAX, 0)), None);
    }
}
