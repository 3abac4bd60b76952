//! The file header of the double-write buffer: 40 bytes at the start of block 0 that name the
//! ring's geometry (block size, ring length) and the salt every slot of the file carries.
//!
//! It is apart from the slot codec because it is read once, when the buffer opens, and decides
//! whether the file is one this build may use at all (magic, version, geometry), where slots
//! are read by the thousand in a scan and only decide which page images are whole.

use super::{DWB_VERSION, DWB_VERSION_UNSALTED};
use crate::format::crc::crc32c;
use crate::format::read_le;

/// Bytes of the file header (at offset 0; the rest of block 0 is zero): the 32 bytes of
/// version 1, then the salt and a checksum of all before it.
///
/// The salt lies past version 1's 32 bytes, which stay as they were (their reserved bytes
/// zero), so that a build of version 1 reads the header, finds version 2 and refuses the file
/// (`DwbUnsupportedVersion`) rather than take it for a damaged header and format it again.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FILE_HEADER_LEN, FileHeader};
///
/// let header = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 4 << 20, salt: 0x5EED };
/// assert_eq!(header.encode().len(), FILE_HEADER_LEN);
/// assert_eq!(header.encode()[24..32], [0; 8], "version 1's reserved bytes stay zero");
/// ```
pub const FILE_HEADER_LEN: usize = 40;
/// Bytes of a version 1 file header.
pub(super) const FILE_HEADER_V1_LEN: usize = 32;
/// Magic of a double-write buffer file: `NDWB`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FILE_MAGIC, FileHeader};
///
/// let bytes = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 4 << 20, salt: 0x5EED }.encode();
/// assert_eq!(bytes[4..8], FILE_MAGIC, "after the checksum");
/// ```
pub const FILE_MAGIC: [u8; 4] = *b"NDWB";
/// Where the file header keeps [`FILE_MAGIC`]: after its checksum.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FILE_MAGIC, FILE_MAGIC_RANGE, FileHeader};
///
/// let bytes = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 4 << 20, salt: 0x5EED }.encode();
/// assert_eq!(bytes[FILE_MAGIC_RANGE], FILE_MAGIC);
/// ```
pub const FILE_MAGIC_RANGE: std::ops::Range<usize> = FH_MAGIC_AT..FH_VERSION_AT;

const FH_CRC_AT: usize = 0;
pub(super) const FH_MAGIC_AT: usize = FH_CRC_AT + 4;
pub(super) const FH_VERSION_AT: usize = FH_MAGIC_AT + 4;
const FH_RESERVED_AT: usize = FH_VERSION_AT + 2;
const FH_BLOCK_AT: usize = FH_RESERVED_AT + 2;
const FH_RING_AT: usize = FH_BLOCK_AT + 4;
const FH_RESERVED2_AT: usize = FH_RING_AT + 8;
pub(super) const FH_SALT_AT: usize = FH_RESERVED2_AT + 8;
const FH_SALT_CRC_AT: usize = FH_SALT_AT + 4;
const _: () = assert!(FH_SALT_AT == FILE_HEADER_V1_LEN && FH_SALT_CRC_AT + 4 == FILE_HEADER_LEN);

/// The decoded file header: the geometry of the ring, and the salt its slots carry.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FileHeader, FileHeaderError};
///
/// let header = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 4 << 20, salt: 0x5EED };
/// let mut bytes = header.encode();
/// assert_eq!(FileHeader::decode(&bytes), Ok(header));
/// bytes[12] ^= 1; // the block length
/// assert_eq!(FileHeader::decode(&bytes), Err(FileHeaderError::Checksum));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version.
    pub version: u16,
    /// Block size: the header block's length, and the unit batches are padded to.
    pub block_len: u32,
    /// Bytes of the ring, which starts right after the header block.
    pub ring_bytes: u64,
    /// Random and non-zero, drawn when the file is formatted (version 2); every slot of the
    /// file carries it. 0 in version 1, which had no salt.
    pub salt: u32,
}

/// Why bytes are not a file header.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FileHeader, FileHeaderError};
///
/// assert_eq!(FileHeader::decode(&[0u8; 8]), Err(FileHeaderError::Truncated));
/// assert_eq!(FileHeader::decode(&[0u8; 4096]), Err(FileHeaderError::BadMagic), "zeros are no header");
/// let odd = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 5000, salt: 1 };
/// assert_eq!(FileHeader::decode(&odd.encode()), Err(FileHeaderError::BadGeometry));
/// let unsalted = FileHeader { ring_bytes: 8192, salt: 0, ..odd };
/// assert_eq!(FileHeader::decode(&unsalted.encode()), Err(FileHeaderError::BadGeometry), "version 2 has a salt");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileHeaderError {
    /// Fewer than [`FILE_HEADER_LEN`] bytes.
    Truncated,
    /// The magic is wrong.
    BadMagic,
    /// The checksum does not match.
    Checksum,
    /// Reserved bytes are not zero, the salt does not fit the version, or the geometry is
    /// impossible.
    BadGeometry,
}

impl FileHeader {
    /// Encodes into exactly [`FILE_HEADER_LEN`] bytes (a header of version 1 into its 32, the
    /// rest zero). See [`FileHeader`] for an example.
    #[must_use]
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut out = [0u8; FILE_HEADER_LEN];
        out[FH_MAGIC_AT..FH_VERSION_AT].copy_from_slice(&FILE_MAGIC);
        out[FH_VERSION_AT..FH_RESERVED_AT].copy_from_slice(&self.version.to_le_bytes());
        out[FH_BLOCK_AT..FH_RING_AT].copy_from_slice(&self.block_len.to_le_bytes());
        out[FH_RING_AT..FH_RESERVED2_AT].copy_from_slice(&self.ring_bytes.to_le_bytes());
        let crc = crc32c(&out[FH_MAGIC_AT..FILE_HEADER_V1_LEN]);
        out[FH_CRC_AT..FH_MAGIC_AT].copy_from_slice(&crc.to_le_bytes());
        if self.version != DWB_VERSION_UNSALTED {
            out[FH_SALT_AT..FH_SALT_CRC_AT].copy_from_slice(&self.salt.to_le_bytes());
            let crc = crc32c(&out[..FH_SALT_CRC_AT]);
            out[FH_SALT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decodes a header from the front of `bytes`. The version is checked first, and one newer
    /// than this build's is returned as found, nothing after the version checked (`salt` 0):
    /// refusing it is the caller's decision, and no field a later version may have changed can
    /// make it look damaged. See [`FileHeader`] for an example.
    pub fn decode(bytes: &[u8]) -> Result<FileHeader, FileHeaderError> {
        if bytes.len() < FILE_HEADER_V1_LEN {
            return Err(FileHeaderError::Truncated);
        }
        if bytes[FH_MAGIC_AT..FH_VERSION_AT] != FILE_MAGIC {
            return Err(FileHeaderError::BadMagic);
        }
        if crc32c(&bytes[FH_MAGIC_AT..FILE_HEADER_V1_LEN]) != read_le!(u32, bytes, FH_CRC_AT) {
            return Err(FileHeaderError::Checksum);
        }
        let version = read_le!(u16, bytes, FH_VERSION_AT);
        let mut header =
            FileHeader { version, block_len: read_le!(u32, bytes, FH_BLOCK_AT), ring_bytes: read_le!(u64, bytes, FH_RING_AT), salt: 0 };
        if version > DWB_VERSION {
            return Ok(header);
        }
        let reserved_zero = read_le!(u16, bytes, FH_RESERVED_AT) == 0 && read_le!(u64, bytes, FH_RESERVED2_AT) == 0;
        if version == 0 || !reserved_zero || !header.geometry_ok() {
            return Err(FileHeaderError::BadGeometry);
        }
        if version == DWB_VERSION_UNSALTED {
            return Ok(header);
        }
        if bytes.len() < FILE_HEADER_LEN {
            return Err(FileHeaderError::Truncated);
        }
        if crc32c(&bytes[..FH_SALT_CRC_AT]) != read_le!(u32, bytes, FH_SALT_CRC_AT) {
            return Err(FileHeaderError::Checksum);
        }
        header.salt = read_le!(u32, bytes, FH_SALT_AT);
        if header.salt == 0 {
            return Err(FileHeaderError::BadGeometry);
        }
        Ok(header)
    }

    /// Block size a power of two in `512..=1 MiB`; ring a non-zero multiple of it.
    fn geometry_ok(&self) -> bool {
        let block = self.block_len;
        block.is_power_of_two()
            && (512..=1 << 20).contains(&block)
            && self.ring_bytes > 0
            && self.ring_bytes.is_multiple_of(u64::from(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_round_trips_and_rejects_impossible_geometry() {
        let h = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 1 << 22, salt: 0x5EED };
        assert_eq!(FileHeader::decode(&h.encode()), Ok(h));
        let odd = FileHeader { ring_bytes: 5000, ..h };
        assert_eq!(FileHeader::decode(&odd.encode()), Err(FileHeaderError::BadGeometry));
        let mut flipped = h.encode();
        flipped[20] ^= 1;
        assert_eq!(FileHeader::decode(&flipped), Err(FileHeaderError::Checksum));
    }

    #[test]
    fn a_version_1_reader_of_a_version_2_header_finds_version_2_and_nothing_damaged() {
        // What a build of version 1 checked: magic, checksum of bytes 4..32, reserved bytes
        // 10..12 and 24..32 zero, the geometry; then it refused any version but its own.
        let bytes = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 1 << 22, salt: u32::MAX }.encode();
        assert_eq!(&bytes[FH_MAGIC_AT..FH_VERSION_AT], b"NDWB");
        assert_eq!(crc32c(&bytes[4..32]), read_le!(u32, bytes, 0));
        assert_eq!((read_le!(u16, bytes, 10), read_le!(u64, bytes, 24)), (0, 0));
        assert_eq!(read_le!(u16, bytes, 8), 2);
    }

    #[test]
    fn a_newer_version_with_geometry_this_build_rejects_is_still_returned_as_found() {
        let newer = FileHeader { version: DWB_VERSION + 1, block_len: 2 << 20, ring_bytes: 4 << 20, salt: 0 };
        assert_eq!(FileHeader::decode(&newer.encode()).map(|h| h.version), Ok(DWB_VERSION + 1));
    }

    #[test]
    fn a_newer_version_is_returned_as_found_whatever_its_later_fields_hold() {
        let newer = FileHeader { version: DWB_VERSION + 1, block_len: 4096, ring_bytes: 1 << 22, salt: 0 };
        let mut bytes = newer.encode();
        bytes[FH_RESERVED2_AT] = 1;
        let crc = crc32c(&bytes[FH_MAGIC_AT..FILE_HEADER_V1_LEN]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(FileHeader::decode(&bytes).map(|h| h.version), Ok(DWB_VERSION + 1), "the reader refuses it by its version");
    }

    #[test]
    fn a_file_header_with_an_empty_ring_is_refused() {
        let empty = FileHeader { version: DWB_VERSION, block_len: 4096, ring_bytes: 0, salt: 9 };
        assert_eq!(FileHeader::decode(&empty.encode()), Err(FileHeaderError::BadGeometry));
        let one_block = FileHeader { ring_bytes: 4096, ..empty };
        assert_eq!(FileHeader::decode(&one_block.encode()), Ok(one_block));
    }

    /// Both reserved fields are checked on their own: a header of this version with either
    /// one set is not one this build wrote, even where both checksums are right.
    #[test]
    fn either_reserved_field_of_a_file_header_is_refused_under_valid_checksums() {
        for version in [DWB_VERSION_UNSALTED, DWB_VERSION] {
            let header = FileHeader { version, block_len: 4096, ring_bytes: 1 << 22, salt: if version == DWB_VERSION { 9 } else { 0 } };
            for at in (FH_RESERVED_AT..FH_BLOCK_AT).chain(FH_RESERVED2_AT..FH_SALT_AT) {
                let mut bytes = header.encode();
                bytes[at] = 1;
                let crc = crc32c(&bytes[FH_MAGIC_AT..FILE_HEADER_V1_LEN]);
                bytes[FH_CRC_AT..FH_MAGIC_AT].copy_from_slice(&crc.to_le_bytes());
                let crc = crc32c(&bytes[..FH_SALT_CRC_AT]);
                bytes[FH_SALT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
                assert_eq!(FileHeader::decode(&bytes), Err(FileHeaderError::BadGeometry), "version {version}, byte {at}");
            }
        }
    }
}
