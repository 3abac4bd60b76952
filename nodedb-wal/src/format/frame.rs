//! The record frame: a fixed 48-byte header followed by the payload.
//!
//! The CRC32C in the first four bytes covers the rest of the header and the payload (for
//! padding frames, the header only: their payload is filler that nothing reads).

use super::crc::crc32c;
use super::read_le;
use crate::types::{Lsn, RecordType, Scope};

/// Bytes in a record header.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::HEADER_LEN;
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let header = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// assert_eq!(header.frame_len(), HEADER_LEN + 5);
/// ```
pub const HEADER_LEN: usize = 48;
/// Marks the start of a frame; zeroed or preallocated space never carries it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, RECORD_MAGIC};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// let mut bytes = [0u8; HEADER_LEN];
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let header = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// header.encode_into(&mut bytes);
/// assert_eq!(bytes[4..6], RECORD_MAGIC.to_le_bytes(), "after the checksum");
/// ```
pub const RECORD_MAGIC: u16 = 0x574E;

const CRC_AT: usize = 0;
/// Where the magic lies in a frame: a scan for frames looks for it there.
pub const MAGIC_AT: usize = CRC_AT + 4;
const TYPE_AT: usize = MAGIC_AT + 2;
const LSN_AT: usize = TYPE_AT + 2;
const DURABLE_AT: usize = LSN_AT + 8;
const SALT_AT: usize = DURABLE_AT + 8;
const LEN_AT: usize = SALT_AT + 4;
const DATABASE_AT: usize = LEN_AT + 4;
const TENANT_AT: usize = DATABASE_AT + 4;
const VSHARD_AT: usize = TENANT_AT + 4;
const FLAGS_AT: usize = VSHARD_AT + 4;
const RESERVED_AT: usize = FLAGS_AT + 2;
const _: () = assert!(RESERVED_AT + 2 == HEADER_LEN);
const _: () = assert!(HEADER_LEN.is_multiple_of(8));

/// Header flag: the payload is AES-256-GCM ciphertext followed by its tag.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// use nodedb_wal::format::frame::FLAG_ENCRYPTED;
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let mut config = SegmentedWalConfig::new("/wal");
/// config.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config)?;
/// wal.append_durable(Record::new(RecordType::optional(0x100), b"secret"))?;
/// let stored = wal.read_from_raw(Lsn::FIRST)?.next().expect("one record")?;
/// assert_ne!(stored.flags & FLAG_ENCRYPTED, 0);
/// assert_eq!(stored.payload.len(), 6 + 16, "ciphertext, then the tag");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const FLAG_ENCRYPTED: u16 = 1 << 0;
/// Header flag: the next record belongs to the same atomic group as this one.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::FLAG_GROUP_CONTINUES;
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// let ty = RecordType::optional(0x100);
/// let lsns = wal.append_group(&[Record::new(ty, b"debit"), Record::new(ty, b"credit")])?;
/// wal.wait_durable(*lsns.end())?;
/// let flags: Vec<u16> = wal.read_from(Lsn::FIRST)?.map(|r| r.map(|r| r.flags & FLAG_GROUP_CONTINUES)).collect::<Result<_, _>>()?;
/// assert_eq!(flags, [FLAG_GROUP_CONTINUES, 0], "every member but the last");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const FLAG_GROUP_CONTINUES: u16 = 1 << 1;
const KNOWN_FLAGS: u16 = FLAG_ENCRYPTED | FLAG_GROUP_CONTINUES;

/// A decoded record header.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, decode_frame, encode_frame};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// let header = RecordHeader {
///     lsn: Lsn(42),
///     durable_lsn: Lsn(40),
///     salt: 0xA5A5_0001,
///     record_type: RecordType::optional(0x100),
///     scope: Scope { database: 1, tenant: 2, vshard: 3 },
///     payload_len: 5,
///     flags: 0,
/// };
/// let mut buf = [0u8; 64];
/// let len = encode_frame(&header, b"hello", &mut buf);
/// assert_eq!(len, header.frame_len());
/// assert_eq!(decode_frame(&buf[..len]), Ok(header));
/// assert_eq!(&buf[HEADER_LEN..len], b"hello");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record's LSN; for meta frames, the next LSN the log will hand out.
    pub lsn: Lsn,
    /// The highest LSN known durable when the frame was written: a lower bound that recovery
    /// uses to tell a torn tail from damage to acknowledged data.
    pub durable_lsn: Lsn,
    /// The segment's random salt: a frame left over from an earlier use of the file carries
    /// another salt and never parses as part of this segment.
    pub salt: u32,
    /// The record type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Payload bytes that follow the header.
    pub payload_len: u32,
    /// `FLAG_*` bits.
    pub flags: u16,
}

/// Why bytes are not a valid frame.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{FrameError, decode_frame, encode_frame};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// assert_eq!(decode_frame(&[0u8; 4096]), Err(FrameError::Blank), "zeros never parse");
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let header = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// let mut buf = [0u8; 64];
/// let len = encode_frame(&header, b"hello", &mut buf);
/// assert_eq!(decode_frame(&buf[..len - 1]), Err(FrameError::Truncated));
/// buf[len - 1] ^= 1;
/// assert_eq!(decode_frame(&buf[..len]), Err(FrameError::Checksum));
/// buf[4] ^= 0xFF;
/// assert_eq!(decode_frame(&buf[..len]), Err(FrameError::BadMagic));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the payload length needs.
    Truncated,
    /// The header is all zeros: space never written.
    Blank,
    /// The magic is wrong (and the header is not all zeros).
    BadMagic,
    /// Reserved bits are set.
    Reserved,
    /// The checksum does not match.
    Checksum,
}

impl RecordHeader {
    /// Total frame length: header plus payload. See [`HEADER_LEN`] for an example.
    #[must_use]
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// Encodes the header with a zero checksum field; [`seal_frame`] fills it in.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::frame::{HEADER_LEN, seal_frame};
    /// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
    ///
    /// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
    /// let header = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
    /// let mut frame = [0u8; HEADER_LEN + 5];
    /// header.encode_into(&mut frame);
    /// assert_eq!(frame[..4], [0; 4], "no checksum yet");
    /// frame[HEADER_LEN..].copy_from_slice(b"hello");
    /// seal_frame(&mut frame, header.record_type);
    /// assert_ne!(frame[..4], [0; 4]);
    /// ```
    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out[CRC_AT..MAGIC_AT].fill(0);
        out[MAGIC_AT..TYPE_AT].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[TYPE_AT..LSN_AT].copy_from_slice(&self.record_type.0.to_le_bytes());
        out[LSN_AT..DURABLE_AT].copy_from_slice(&self.lsn.0.to_le_bytes());
        out[DURABLE_AT..SALT_AT].copy_from_slice(&self.durable_lsn.0.to_le_bytes());
        out[SALT_AT..LEN_AT].copy_from_slice(&self.salt.to_le_bytes());
        out[LEN_AT..DATABASE_AT].copy_from_slice(&self.payload_len.to_le_bytes());
        out[DATABASE_AT..TENANT_AT].copy_from_slice(&self.scope.database.to_le_bytes());
        out[TENANT_AT..VSHARD_AT].copy_from_slice(&self.scope.tenant.to_le_bytes());
        out[VSHARD_AT..FLAGS_AT].copy_from_slice(&self.scope.vshard.to_le_bytes());
        out[FLAGS_AT..RESERVED_AT].copy_from_slice(&self.flags.to_le_bytes());
        out[RESERVED_AT..HEADER_LEN].fill(0);
    }

    /// Decodes a header's fields without checking the checksum (which needs the payload).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::format::frame::{FrameError, HEADER_LEN};
    /// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
    ///
    /// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
    /// let header = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
    /// let mut bytes = [0u8; HEADER_LEN];
    /// header.encode_into(&mut bytes);
    /// // A reader learns the payload's length before it has read the payload.
    /// assert_eq!(RecordHeader::decode(&bytes)?.payload_len, 5);
    /// bytes[46] = 1; // a reserved byte
    /// assert_eq!(RecordHeader::decode(&bytes), Err(FrameError::Reserved));
    /// # Ok::<(), FrameError>(())
    /// ```
    #[inline]
    pub fn decode(bytes: &[u8]) -> Result<RecordHeader, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        let bytes = &bytes[..HEADER_LEN];
        if read_le!(u16, bytes, MAGIC_AT) != RECORD_MAGIC {
            return Err(no_magic(bytes));
        }
        let flags = read_le!(u16, bytes, FLAGS_AT);
        if flags & !KNOWN_FLAGS != 0 || read_le!(u16, bytes, RESERVED_AT) != 0 {
            return Err(FrameError::Reserved);
        }
        Ok(RecordHeader {
            lsn: Lsn(read_le!(u64, bytes, LSN_AT)),
            durable_lsn: Lsn(read_le!(u64, bytes, DURABLE_AT)),
            salt: read_le!(u32, bytes, SALT_AT),
            record_type: RecordType(read_le!(u16, bytes, TYPE_AT)),
            scope: Scope {
                database: read_le!(u32, bytes, DATABASE_AT),
                tenant: read_le!(u32, bytes, TENANT_AT),
                vshard: read_le!(u32, bytes, VSHARD_AT),
            },
            payload_len: read_le!(u32, bytes, LEN_AT),
            flags,
        })
    }
}

/// Why a header without its magic does not decode: blank (never written) or something else.
/// Out of line, so that [`RecordHeader::decode`] stays small enough to inline into the scan,
/// where its result then stays in registers.
#[cold]
#[inline(never)]
fn no_magic(header: &[u8]) -> FrameError {
    if header.iter().all(|&b| b == 0) { FrameError::Blank } else { FrameError::BadMagic }
}

#[inline]
fn checksum(frame: &[u8], record_type: RecordType) -> u32 {
    crc32c(&frame[checksummed(record_type, frame.len())])
}

/// The bytes of a frame of `frame_len` bytes its checksum covers: from the magic on, to the
/// end of the header for a `PADDING` frame, else to the end of the payload.
#[must_use]
#[inline]
pub fn checksummed(record_type: RecordType, frame_len: usize) -> std::ops::Range<usize> {
    MAGIC_AT..if record_type == RecordType::PADDING { HEADER_LEN } else { frame_len }
}

/// The checksum a frame's header carries.
#[must_use]
#[inline]
pub fn stored_checksum(header: &[u8; HEADER_LEN]) -> u32 {
    read_le!(u32, header, CRC_AT)
}

/// Writes the checksum of a frame whose header and payload are already in `frame`
/// (exactly `frame_len` bytes). See [`RecordHeader::encode_into`] for an example.
pub fn seal_frame(frame: &mut [u8], record_type: RecordType) {
    let crc = checksum(frame, record_type);
    frame[CRC_AT..MAGIC_AT].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a whole frame (header, payload, checksum) into the front of `out`.
/// Returns the frame length. Panics if `out` is too short: callers size it first.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{decode_frame, encode_frame};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// // Frames are packed back to back; each one's length says where the next starts.
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let first = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// let second = RecordHeader { lsn: Lsn(43), payload_len: 3, ..first };
/// let mut buf = [0u8; 256];
/// let at = encode_frame(&first, b"hello", &mut buf);
/// encode_frame(&second, b"bye", &mut buf[at..]);
/// assert_eq!(decode_frame(&buf[at..])?.lsn, Lsn(43));
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
pub fn encode_frame(header: &RecordHeader, payload: &[u8], out: &mut [u8]) -> usize {
    debug_assert_eq!(header.payload_len as usize, payload.len());
    let len = header.frame_len();
    header.encode_into(out);
    out[HEADER_LEN..len].copy_from_slice(payload);
    seal_frame(&mut out[..len], header.record_type);
    len
}

/// Decodes and verifies the frame at the front of `bytes`.
/// Returns the header; the payload is `bytes[HEADER_LEN..header.frame_len()]`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, decode_frame, encode_frame};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let written = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// let mut buf = [0u8; 4096];
/// encode_frame(&written, b"hello", &mut buf);
/// // Bytes after the frame do not matter: the header says where it ends.
/// let header = decode_frame(&buf)?;
/// assert_eq!(header, written);
/// assert_eq!(&buf[HEADER_LEN..header.frame_len()], b"hello");
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
pub fn decode_frame(bytes: &[u8]) -> Result<RecordHeader, FrameError> {
    let header = RecordHeader::decode(bytes)?;
    let len = header.frame_len();
    if bytes.len() < len {
        return Err(FrameError::Truncated);
    }
    if !checksum_matches(&bytes[..len], &header) {
        return Err(FrameError::Checksum);
    }
    Ok(header)
}

/// Whether `frame` (exactly one frame, whose header decodes to `header`) carries the checksum
/// of its bytes: [`decode_frame`] for a reader that has decoded the header already.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{checksum_matches, encode_frame};
/// use nodedb_wal::{Lsn, RecordHeader, RecordType, Scope};
///
/// let (ty, scope) = (RecordType::optional(0x100), Scope::default());
/// let written = RecordHeader { lsn: Lsn(42), durable_lsn: Lsn(40), salt: 7, record_type: ty, scope, payload_len: 5, flags: 0 };
/// let mut buf = [0u8; 64];
/// let len = encode_frame(&written, b"hello", &mut buf);
/// let header = RecordHeader::decode(&buf)?; // the header alone, checksum not yet checked
/// assert!(checksum_matches(&buf[..len], &header));
/// assert!(!checksum_matches(&buf[..len - 1], &header), "not exactly one frame");
/// buf[len - 1] ^= 1;
/// assert!(!checksum_matches(&buf[..len], &header));
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
#[must_use]
#[inline]
pub fn checksum_matches(frame: &[u8], header: &RecordHeader) -> bool {
    frame.len() == header.frame_len() && checksum(frame, header.record_type) == read_le!(u32, frame, CRC_AT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_len: u32) -> RecordHeader {
        RecordHeader {
            lsn: Lsn(42),
            durable_lsn: Lsn(40),
            salt: 0xA5A5_0001,
            record_type: RecordType::optional(0x100),
            scope: Scope { database: 1, tenant: 2, vshard: 3 },
            payload_len,
            flags: 0,
        }
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = [0u8; 64];
        let len = encode_frame(&header(5), b"hello", &mut buf);
        assert_eq!(len, HEADER_LEN + 5);
        assert_eq!(decode_frame(&buf[..len]), Ok(header(5)));
        assert_eq!(&buf[HEADER_LEN..len], b"hello");
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let mut buf = [0u8; 64];
        let len = encode_frame(&header(5), b"hello", &mut buf);
        for bit in 0..len * 8 {
            let mut copy = buf;
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&copy[..len]).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn zeroed_space_never_parses() {
        assert_eq!(decode_frame(&[0u8; 4096]), Err(FrameError::Blank));
    }

    /// The bytes are written out by hand from the table in `docs/FORMAT.md`, not from the
    /// offsets above, so a moved field or a changed flag bit fails here and not only in a
    /// fixture test.
    #[test]
    fn header_bytes_follow_the_format_table() {
        let both = RecordHeader { flags: FLAG_ENCRYPTED | FLAG_GROUP_CONTINUES, ..header(5) };
        let mut bytes = [0xFFu8; HEADER_LEN];
        both.encode_into(&mut bytes);
        #[rustfmt::skip]
        let expected: [u8; HEADER_LEN] = [
            0, 0, 0, 0, // checksum, filled in by seal_frame
            0x4E, 0x57, // magic 0x574E
            0x00, 0x01, // record type 0x0100
            42, 0, 0, 0, 0, 0, 0, 0, // lsn
            40, 0, 0, 0, 0, 0, 0, 0, // durable_lsn
            0x01, 0x00, 0xA5, 0xA5, // salt
            5, 0, 0, 0, // payload_len
            1, 0, 0, 0, // database
            2, 0, 0, 0, // tenant
            3, 0, 0, 0, // vshard
            0b11, 0, // flags: bit 0 encrypted, bit 1 group continues
            0, 0, // reserved
        ];
        assert_eq!(bytes, expected);
        assert_eq!(RecordHeader::decode(&bytes), Ok(both));
    }

    /// A bit this version does not know may mean something to a later writer; reading past
    /// it would misread the record, so it is refused even where the checksum covers it.
    #[test]
    fn unknown_flag_bits_and_reserved_bytes_are_refused_under_a_valid_checksum() {
        for (at, bit) in [(44, 1u8 << 2), (45, 1 << 7), (46, 1), (47, 1 << 7)] {
            let mut buf = [0u8; 64];
            let len = encode_frame(&header(5), b"hello", &mut buf);
            buf[at] |= bit;
            seal_frame(&mut buf[..len], header(5).record_type);
            assert_eq!(decode_frame(&buf[..len]), Err(FrameError::Reserved), "byte {at}, bit {bit:#x}");
        }
    }

    #[test]
    fn short_payload_is_truncated() {
        let mut buf = [0u8; 64];
        let len = encode_frame(&header(5), b"hello", &mut buf);
        assert_eq!(decode_frame(&buf[..len - 1]), Err(FrameError::Truncated));
    }
}
