//! The double-write buffer file: a 40-byte file header in block 0, then a ring of batches,
//! each a run of packed slots (a 56-byte slot header followed by one page image).
//!
//! Every slot checksums its header and its image with CRC32C and names the batch it belongs
//! to (`epoch`, `batch_seq`, `batch_slots`), so recovery can tell a batch whose buffer write
//! completed from one a crash tore, without a separate commit record. Since version 2 every
//! slot also carries its file's random salt, which the file header holds: page images are the
//! engine's users' bytes, and a slot they spell out inside one cannot know the salt. The byte
//! tables are in `docs/FORMAT.md`.
//!
//! The file header, which holds the ring's geometry and the file's salt, is in `file_header`;
//! a slot (its header, its page image, its checksum) in `slot`. What both share is here: the
//! versions and the salt rule, the alignment of batches in the ring, and [`FileId`].

mod file_header;
mod slot;

use std::fmt;

pub use self::file_header::{FILE_HEADER_LEN, FILE_MAGIC, FILE_MAGIC_RANGE, FileHeader, FileHeaderError};
pub use self::slot::{
    PAGE_BYTES_MAX, SEQ_END, SLOT_ALIGN, SLOT_HEADER_LEN, SLOT_MAGIC, SlotError, SlotHeader, decode_slot, encode_slot, slot_len,
};

/// The format version of the file and its slots that this build writes. It reads version 1
/// too ([`DWB_VERSION_UNSALTED`]).
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::{DWB_VERSION, FileHeader};
///
/// // Decoding returns the version found; refusing a newer one is the reader's call.
/// let newer = FileHeader { version: DWB_VERSION + 1, block_len: 4096, ring_bytes: 4 << 20, salt: 1 };
/// assert_eq!(FileHeader::decode(&newer.encode())?.version, DWB_VERSION + 1);
/// # Ok::<(), nodedb_wal::format::dwb::FileHeaderError>(())
/// ```
pub const DWB_VERSION: u16 = 2;
/// Version 1 of the file and its slots: no salt (the field is zero). Still read, never written.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::format::dwb::{DWB_VERSION_UNSALTED, SlotHeader, encode_slot};
///
/// // A slot without a salt is a version 1 slot.
/// let header = SlotHeader { file: FileId(1), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 8, page_no: 0, epoch: 1, salt: 0 };
/// let mut out = [0u8; 64];
/// encode_slot(&header, &[0; 8], &mut out);
/// assert_eq!(u16::from_le_bytes([out[8], out[9]]), DWB_VERSION_UNSALTED);
/// ```
pub const DWB_VERSION_UNSALTED: u16 = 1;

/// Batches start on multiples of this; the scanner looks for them at every such offset.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::dwb::BATCH_ALIGN;
///
/// // Every block length a buffer may be configured with is a multiple of it.
/// assert!([512, 4096, 1 << 20].iter().all(|block: &usize| block % BATCH_ALIGN == 0));
/// ```
pub const BATCH_ALIGN: usize = 512;

/// Identifies a page file (a B-tree, columnar or vector-index file) across restarts. The
/// caller chooses the numbers and maps them to paths; the buffer stores only the number.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
///
/// const BTREE: FileId = FileId(1);
/// assert_eq!(BTREE.to_string(), "1");
/// assert!(BTREE < FileId(2));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether `salt` is what a file or slot of `version` carries: none (0) in version 1, a
/// non-zero one since version 2.
const fn salt_fits(version: u16, salt: u32) -> bool {
    (version == DWB_VERSION_UNSALTED) == (salt == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_space_never_parses_as_a_slot_or_a_file_header() {
        assert_eq!(decode_slot(&[0u8; 4096]), Err(SlotError::Blank));
        assert_eq!(FileHeader::decode(&[0u8; 4096]), Err(FileHeaderError::BadMagic));
    }

    /// Error messages name a page file by its bare number ("page file 3 is not registered").
    #[test]
    fn a_file_id_displays_as_its_bare_number() {
        assert_eq!(FileId(3).to_string(), "3");
        assert_eq!(FileId(u32::MAX).to_string(), u32::MAX.to_string());
    }
}
