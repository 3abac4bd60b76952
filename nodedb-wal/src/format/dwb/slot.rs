//! A slot of the double-write buffer: a 56-byte header naming the page and the batch it
//! belongs to, the page image, zero padding to [`SLOT_ALIGN`], and one CRC32C over all of it.
//!
//! It is apart from the file header because it is the unit recovery trusts or discards: a scan
//! of the ring decodes slots by the thousand, and every field that lets recovery tell a whole
//! batch from a torn one (sequences, epoch, salt) lives in the slot's header.

use super::{DWB_VERSION, DWB_VERSION_UNSALTED, FileId, salt_fits};
use crate::format::crc::crc32c;
use crate::format::read_le;

/// Bytes of a slot header; the page image follows it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, slot_len};
///
/// assert_eq!(slot_len(4096), SLOT_HEADER_LEN + 4096);
/// ```
pub const SLOT_HEADER_LEN: usize = 56;
/// Marks the start of a slot; zeroed or preallocated space never carries it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{SLOT_MAGIC, SlotHeader, encode_slot};
///
/// let header = SlotHeader { file: FileId(1), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 8, page_no: 0, epoch: 1, salt: 9 };
/// let mut out = [0u8; 64];
/// encode_slot(&header, &[0; 8], &mut out);
/// assert_eq!(out[4..8], SLOT_MAGIC, "after the checksum");
/// ```
pub const SLOT_MAGIC: [u8; 4] = *b"NDWS";
/// Slots start on multiples of this inside a batch.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{SLOT_ALIGN, slot_len};
///
/// assert_eq!(slot_len(13), 72, "56 + 13 bytes, rounded up");
/// assert!((1..100).all(|len| slot_len(len) % SLOT_ALIGN == 0));
/// ```
pub const SLOT_ALIGN: usize = 8;
/// The largest page image a slot holds.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::PAGE_BYTES_MAX;
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, SimStorage};
///
/// let mut config = DwbConfig::new("/db/dwb");
/// config.batch_bytes_max = 2 << 20; // a slot holds the page and its header
/// let dwb = DoubleWriteBuffer::open_with(SimStorage::new(1, FaultConfig::default()), config)?;
/// dwb.register_file(FileId(1), "/db/pages", PAGE_BYTES_MAX)?;
/// assert!(dwb.register_file(FileId(2), "/db/huge", PAGE_BYTES_MAX + 1).is_err());
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const PAGE_BYTES_MAX: usize = 1 << 20;

const CRC_AT: usize = 0;
const MAGIC_AT: usize = CRC_AT + 4;
const VERSION_AT: usize = MAGIC_AT + 4;
const RESERVED_AT: usize = VERSION_AT + 2;
const FILE_AT: usize = RESERVED_AT + 2;
const SEQ_AT: usize = FILE_AT + 4;
const BATCH_SEQ_AT: usize = SEQ_AT + 8;
const BATCH_SLOTS_AT: usize = BATCH_SEQ_AT + 8;
const PAGE_LEN_AT: usize = BATCH_SLOTS_AT + 4;
const PAGE_NO_AT: usize = PAGE_LEN_AT + 4;
const EPOCH_AT: usize = PAGE_NO_AT + 8;
const SALT_AT: usize = EPOCH_AT + 4;
const _: () = assert!(SALT_AT + 4 == SLOT_HEADER_LEN);
const _: () = assert!(SLOT_HEADER_LEN.is_multiple_of(SLOT_ALIGN));

/// Sequences lie below this: a batch's `batch_seq + batch_slots` is at most it. New sequences
/// are numbered above the highest found, so a slot with a sequence near `u64::MAX` (damage
/// that checks, or bytes spelled out in a page image of a version 1 file) would make them
/// wrap; 2^62 slots are more than any buffer writes (146,000 years at a million a second).
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{SEQ_END, SlotError, SlotHeader, decode_slot, encode_slot};
///
/// let last = SlotHeader { file: FileId(1), seq: SEQ_END - 1, batch_seq: SEQ_END - 1, batch_slots: 1, page_len: 8, page_no: 0, epoch: 1, salt: 9 };
/// let mut out = [0u8; 64];
/// encode_slot(&last, &[0; 8], &mut out);
/// assert_eq!(decode_slot(&out), Ok(last));
/// encode_slot(&SlotHeader { seq: SEQ_END, batch_seq: SEQ_END, ..last }, &[0; 8], &mut out);
/// assert_eq!(decode_slot(&out), Err(SlotError::BadHeader));
/// ```
pub const SEQ_END: u64 = 1 << 62;

/// A decoded slot header.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::SlotHeader;
///
/// // The third slot of a batch of four that starts at sequence 10.
/// let header = SlotHeader { file: FileId(1), seq: 12, batch_seq: 10, batch_slots: 4, page_len: 4096, page_no: 77, epoch: 5, salt: 0x5EED };
/// assert_eq!(header.index(), 2);
/// assert_eq!(header.slot_len(), 56 + 4096);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    /// The page's file.
    pub file: FileId,
    /// The slot's sequence number: unique and increasing among the slots of the file's salt,
    /// below [`SEQ_END`]. When a page appears in several slots, the highest sequence is its
    /// newest image.
    pub seq: u64,
    /// Sequence of the first slot of the batch this slot belongs to.
    pub batch_seq: u64,
    /// Slots in that batch (their sequences are `batch_seq..batch_seq + batch_slots`).
    pub batch_slots: u32,
    /// Bytes of the page image that follows the header.
    pub page_len: u32,
    /// The page's number; it lives at byte `page_no * page_len` of its file.
    pub page_no: u64,
    /// Random, drawn each time the buffer is opened: slots of a batch torn in an earlier life
    /// never chain with a new batch written over them, even where sequences repeat.
    pub epoch: u32,
    /// The salt of the file the slot was written for (its header's); 0 in a version 1 slot.
    /// The version is the salt's: a slot with a salt is encoded as version 2, one without as
    /// version 1.
    pub salt: u32,
}

/// Why bytes are not a valid slot.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{SlotError, SlotHeader, decode_slot, encode_slot};
///
/// assert_eq!(decode_slot(&[0u8; 4096]), Err(SlotError::Blank), "never-written space");
/// let header = SlotHeader { file: FileId(1), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 100, page_no: 0, epoch: 1, salt: 0x5EED };
/// let mut out = [0u8; 256];
/// let len = encode_slot(&header, &[3; 100], &mut out);
/// assert_eq!(decode_slot(&out[..len - 50]), Err(SlotError::Truncated));
/// out[100] ^= 1;
/// assert_eq!(decode_slot(&out[..len]), Err(SlotError::Checksum));
/// out[5] ^= 1;
/// assert_eq!(decode_slot(&out[..len]), Err(SlotError::BadMagic));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// Fewer bytes than the header or the image needs.
    Truncated,
    /// The header is all zeros: space never written.
    Blank,
    /// The magic is wrong (and the header is not all zeros).
    BadMagic,
    /// A version this build does not read, reserved bits set, a salt that does not fit the
    /// version, or impossible fields.
    BadHeader,
    /// The checksum does not match.
    Checksum,
}

impl SlotHeader {
    /// Bytes the slot takes in its batch: header and image, rounded up to [`SLOT_ALIGN`]. See
    /// [`SlotHeader`] for an example.
    #[must_use]
    pub const fn slot_len(&self) -> usize {
        slot_len(self.page_len as usize)
    }

    /// The slot's index inside its batch. See [`SlotHeader`] for an example.
    #[must_use]
    pub const fn index(&self) -> u64 {
        self.seq - self.batch_seq
    }

    /// Decodes a header's fields without checking the checksum (which needs the image).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::FileId;
    /// use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, SlotError, SlotHeader, decode_slot, encode_slot};
    ///
    /// let header = SlotHeader { file: FileId(2), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 64, page_no: 9, epoch: 3, salt: 0x5EED };
    /// let mut out = [0u8; 128];
    /// encode_slot(&header, &[1; 64], &mut out);
    /// out[SLOT_HEADER_LEN] ^= 1; // damage the image only
    /// assert_eq!(SlotHeader::decode(&out), Ok(header), "the header alone still reads");
    /// assert_eq!(decode_slot(&out), Err(SlotError::Checksum));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<SlotHeader, SlotError> {
        if bytes.len() < SLOT_HEADER_LEN {
            return Err(SlotError::Truncated);
        }
        let bytes = &bytes[..SLOT_HEADER_LEN];
        if bytes[MAGIC_AT..VERSION_AT] != SLOT_MAGIC {
            return Err(if bytes.iter().all(|&b| b == 0) { SlotError::Blank } else { SlotError::BadMagic });
        }
        let version = read_le!(u16, bytes, VERSION_AT);
        let salt = read_le!(u32, bytes, SALT_AT);
        let known = version == DWB_VERSION_UNSALTED || version == DWB_VERSION;
        if read_le!(u16, bytes, RESERVED_AT) != 0 || !known || !salt_fits(version, salt) {
            return Err(SlotError::BadHeader);
        }
        let header = SlotHeader {
            file: FileId(read_le!(u32, bytes, FILE_AT)),
            seq: read_le!(u64, bytes, SEQ_AT),
            batch_seq: read_le!(u64, bytes, BATCH_SEQ_AT),
            batch_slots: read_le!(u32, bytes, BATCH_SLOTS_AT),
            page_len: read_le!(u32, bytes, PAGE_LEN_AT),
            page_no: read_le!(u64, bytes, PAGE_NO_AT),
            epoch: read_le!(u32, bytes, EPOCH_AT),
            salt,
        };
        let in_range = header.batch_seq.checked_add(u64::from(header.batch_slots)).is_some_and(|end| end <= SEQ_END);
        let in_batch = in_range && header.seq >= header.batch_seq && header.seq - header.batch_seq < u64::from(header.batch_slots);
        let page_ok = header.page_len > 0 && header.page_len as usize <= PAGE_BYTES_MAX;
        if !in_batch || !page_ok {
            return Err(SlotError::BadHeader);
        }
        Ok(header)
    }

    fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..SLOT_HEADER_LEN];
        out[CRC_AT..MAGIC_AT].fill(0);
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&SLOT_MAGIC);
        let version = if self.salt == 0 { DWB_VERSION_UNSALTED } else { DWB_VERSION };
        out[VERSION_AT..RESERVED_AT].copy_from_slice(&version.to_le_bytes());
        out[RESERVED_AT..FILE_AT].fill(0);
        out[FILE_AT..SEQ_AT].copy_from_slice(&self.file.0.to_le_bytes());
        out[SEQ_AT..BATCH_SEQ_AT].copy_from_slice(&self.seq.to_le_bytes());
        out[BATCH_SEQ_AT..BATCH_SLOTS_AT].copy_from_slice(&self.batch_seq.to_le_bytes());
        out[BATCH_SLOTS_AT..PAGE_LEN_AT].copy_from_slice(&self.batch_slots.to_le_bytes());
        out[PAGE_LEN_AT..PAGE_NO_AT].copy_from_slice(&self.page_len.to_le_bytes());
        out[PAGE_NO_AT..EPOCH_AT].copy_from_slice(&self.page_no.to_le_bytes());
        out[EPOCH_AT..SALT_AT].copy_from_slice(&self.epoch.to_le_bytes());
        out[SALT_AT..SLOT_HEADER_LEN].copy_from_slice(&self.salt.to_le_bytes());
    }
}

/// Bytes a slot for a page of `page_len` bytes takes.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::slot_len;
///
/// assert_eq!(slot_len(16 * 1024), 16_440);
/// assert_eq!(slot_len(1), 64);
/// ```
#[must_use]
pub const fn slot_len(page_len: usize) -> usize {
    (SLOT_HEADER_LEN + page_len).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// Encodes a slot (header, image, checksum, zero padding to [`SLOT_ALIGN`]) into the front of
/// `out`. Returns the slot length. Panics if `out` is too short or the image length differs
/// from the header's: callers size and fill both first.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, SlotHeader, decode_slot, encode_slot};
///
/// let image = [0xA5u8; 13];
/// let header = SlotHeader { file: FileId(1), seq: 4, batch_seq: 4, batch_slots: 1, page_len: 13, page_no: 2, epoch: 9, salt: 0x5EED };
/// let mut out = [0xFFu8; 128];
/// let len = encode_slot(&header, &image, &mut out);
/// assert_eq!(len, 72);
/// assert_eq!(out[SLOT_HEADER_LEN..SLOT_HEADER_LEN + 13], image);
/// assert!(out[SLOT_HEADER_LEN + 13..len].iter().all(|&b| b == 0), "padding is zeroed");
/// assert_eq!(decode_slot(&out[..len]), Ok(header));
/// ```
pub fn encode_slot(header: &SlotHeader, image: &[u8], out: &mut [u8]) -> usize {
    assert_eq!(header.page_len as usize, image.len(), "slot header and image disagree on the page length");
    let len = header.slot_len();
    let end = SLOT_HEADER_LEN + image.len();
    header.encode_into(out);
    out[SLOT_HEADER_LEN..end].copy_from_slice(image);
    out[end..len].fill(0);
    let crc = crc32c(&out[MAGIC_AT..end]);
    out[CRC_AT..MAGIC_AT].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Decodes and verifies the slot at the front of `bytes`. Returns the header; the image is
/// `bytes[SLOT_HEADER_LEN..SLOT_HEADER_LEN + header.page_len]`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, SlotHeader, decode_slot, encode_slot};
///
/// let header = SlotHeader { file: FileId(1), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 5, page_no: 0, epoch: 1, salt: 0x5EED };
/// let mut ring = [0u8; 512];
/// encode_slot(&header, b"page!", &mut ring);
/// let found = decode_slot(&ring)?;
/// let image = &ring[SLOT_HEADER_LEN..SLOT_HEADER_LEN + found.page_len as usize];
/// assert_eq!(image, b"page!");
/// # Ok::<(), nodedb_wal::format::dwb::SlotError>(())
/// ```
pub fn decode_slot(bytes: &[u8]) -> Result<SlotHeader, SlotError> {
    let header = SlotHeader::decode(bytes)?;
    let end = SLOT_HEADER_LEN + header.page_len as usize;
    if bytes.len() < end {
        return Err(SlotError::Truncated);
    }
    if crc32c(&bytes[MAGIC_AT..end]) != read_le!(u32, bytes, CRC_AT) {
        return Err(SlotError::Checksum);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dwb::file_header::{FH_MAGIC_AT, FH_SALT_AT, FH_VERSION_AT, FILE_HEADER_V1_LEN};
    use crate::format::dwb::{FileHeader, FileHeaderError};

    fn header(page_len: u32) -> SlotHeader {
        SlotHeader { file: FileId(3), seq: 12, batch_seq: 10, batch_slots: 4, page_len, page_no: 77, epoch: 0xE90C, salt: 0x5EED }
    }

    #[test]
    fn slot_round_trips_and_pads_to_eight_bytes() {
        let image: Vec<u8> = (0..13u8).collect();
        let mut buf = vec![0xFFu8; 128];
        let len = encode_slot(&header(13), &image, &mut buf);
        assert_eq!(len, 72);
        assert_eq!(decode_slot(&buf[..len]), Ok(header(13)));
        assert_eq!(&buf[SLOT_HEADER_LEN..SLOT_HEADER_LEN + 13], &image[..]);
        assert!(buf[SLOT_HEADER_LEN + 13..len].iter().all(|&b| b == 0), "padding is zeroed");
    }

    #[test]
    fn any_single_bit_flip_in_header_or_image_is_detected() {
        let image = [0xA5u8; 40];
        let mut buf = [0u8; 128];
        let len = encode_slot(&header(40), &image, &mut buf);
        for bit in 0..(SLOT_HEADER_LEN + 40) * 8 {
            let mut copy = buf;
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_slot(&copy[..len]).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn a_slot_outside_its_own_batch_is_rejected() {
        let mut buf = [0u8; 128];
        let bad = SlotHeader { seq: 14, ..header(8) };
        encode_slot(&bad, &[1; 8], &mut buf);
        assert_eq!(decode_slot(&buf), Err(SlotError::BadHeader));
    }

    #[test]
    fn a_short_image_is_truncated() {
        let mut buf = [0u8; 128];
        let len = encode_slot(&header(40), &[7; 40], &mut buf);
        assert_eq!(decode_slot(&buf[..len - 9]), Err(SlotError::Truncated));
    }

    #[test]
    fn the_salt_decides_the_version_and_each_version_holds_only_its_own_kind_of_salt() {
        let mut buf = [0u8; 128];
        let unsalted = SlotHeader { salt: 0, ..header(8) };
        let len = encode_slot(&unsalted, &[1; 8], &mut buf);
        assert_eq!(read_le!(u16, buf, VERSION_AT), DWB_VERSION_UNSALTED);
        assert_eq!(decode_slot(&buf[..len]), Ok(unsalted), "version 1 slots still read");
        // A version 1 slot whose salt field (reserved then) is set, and a version 2 slot
        // without a salt, are neither: both re-checksummed so only the rule rejects them.
        for (version, salt) in [(DWB_VERSION_UNSALTED, 7u32), (DWB_VERSION, 0)] {
            encode_slot(&header(8), &[1; 8], &mut buf);
            buf[VERSION_AT..RESERVED_AT].copy_from_slice(&version.to_le_bytes());
            buf[SALT_AT..SLOT_HEADER_LEN].copy_from_slice(&salt.to_le_bytes());
            let crc = crc32c(&buf[MAGIC_AT..SLOT_HEADER_LEN + 8]);
            buf[..4].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_slot(&buf[..len]), Err(SlotError::BadHeader), "version {version}, salt {salt}");
        }
        for version in [0, 3] {
            encode_slot(&header(8), &[1; 8], &mut buf);
            buf[VERSION_AT..RESERVED_AT].copy_from_slice(&u16::to_le_bytes(version));
            let crc = crc32c(&buf[MAGIC_AT..SLOT_HEADER_LEN + 8]);
            buf[..4].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_slot(&buf[..len]), Err(SlotError::BadHeader), "version {version}");
        }
        let v1 = FileHeader { version: DWB_VERSION_UNSALTED, block_len: 512, ring_bytes: 8192, salt: 0 };
        assert_eq!(FileHeader::decode(&v1.encode()), Ok(v1));
        assert_eq!(FileHeader::decode(&v1.encode()[..FILE_HEADER_V1_LEN]), Ok(v1), "32 bytes were all of it");
        let v2 = FileHeader { version: DWB_VERSION, salt: 3, ..v1 };
        assert_eq!(FileHeader::decode(&v2.encode()), Ok(v2));
        assert_eq!(FileHeader::decode(&v2.encode()[..FILE_HEADER_V1_LEN]), Err(FileHeaderError::Truncated));
        let mut flipped = v2.encode();
        flipped[FH_SALT_AT] ^= 1;
        assert_eq!(FileHeader::decode(&flipped), Err(FileHeaderError::Checksum), "the salt has a checksum of its own");
        let mut zero = v1.encode();
        zero[FH_VERSION_AT] = 0;
        let crc = crc32c(&zero[FH_MAGIC_AT..FILE_HEADER_V1_LEN]);
        zero[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(FileHeader::decode(&zero), Err(FileHeaderError::BadGeometry), "no version 0");
    }

    #[test]
    fn a_batch_whose_sequences_would_pass_the_end_is_rejected() {
        let mut buf = [0u8; 128];
        let near = SlotHeader { seq: SEQ_END - 2, batch_seq: SEQ_END - 2, batch_slots: 2, ..header(8) };
        encode_slot(&near, &[1; 8], &mut buf);
        assert_eq!(decode_slot(&buf), Ok(near));
        for bad in
            [SlotHeader { batch_slots: 3, ..near }, SlotHeader { seq: u64::MAX - 1, batch_seq: u64::MAX - 1, batch_slots: 4, ..near }]
        {
            encode_slot(&bad, &[1; 8], &mut buf);
            assert_eq!(decode_slot(&buf), Err(SlotError::BadHeader), "{bad:?}");
        }
    }

    /// A reader may read the header alone to learn how long the image is.
    #[test]
    fn a_slot_header_decodes_from_exactly_its_own_bytes_and_not_one_fewer() {
        let mut buf = [0u8; 128];
        encode_slot(&header(40), &[7; 40], &mut buf);
        assert_eq!(SlotHeader::decode(&buf[..SLOT_HEADER_LEN]), Ok(header(40)));
        for len in 0..SLOT_HEADER_LEN {
            assert_eq!(SlotHeader::decode(&buf[..len]), Err(SlotError::Truncated), "{len} bytes");
        }
    }

    /// An empty page and one past the largest are refused on their own, each with its
    /// checksum right: neither is an image this build writes.
    #[test]
    fn a_slot_of_an_empty_page_or_one_past_the_largest_is_rejected() {
        let mut buf = vec![0u8; slot_len(PAGE_BYTES_MAX + 1)];
        for page_len in [0, PAGE_BYTES_MAX + 1] {
            let len = encode_slot(&header(page_len as u32), &vec![5; page_len], &mut buf);
            assert_eq!(decode_slot(&buf[..len]), Err(SlotError::BadHeader), "page of {page_len} bytes");
        }
        let len = encode_slot(&header(PAGE_BYTES_MAX as u32), &vec![5; PAGE_BYTES_MAX], &mut buf);
        assert_eq!(decode_slot(&buf[..len]), Ok(header(PAGE_BYTES_MAX as u32)));
    }
}
