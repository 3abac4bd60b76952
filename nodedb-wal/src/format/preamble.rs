//! The 16-byte preamble that opens every segment file.

use super::read_le;

/// Bytes in a preamble.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{PREAMBLE_SIZE, SegmentPreamble};
///
/// assert_eq!(SegmentPreamble::plaintext_wal().encode().len(), PREAMBLE_SIZE);
/// ```
pub const PREAMBLE_SIZE: usize = 16;
/// The current segment format version.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{PREAMBLE_VERSION, SegmentPreamble};
///
/// assert_eq!(SegmentPreamble::plaintext_wal().version, PREAMBLE_VERSION);
/// ```
pub const PREAMBLE_VERSION: u16 = 1;
/// Magic of a WAL segment file: `NWAL`.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::storage::{FaultConfig, Storage};
/// use nodedb_wal::{Lsn, SegmentId, SimStorage, WAL_PREAMBLE_MAGIC, WalWriter, WalWriterConfig};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// sim.create_dir_all(Path::new("/log"))?;
/// let writer = WalWriter::create_with(sim.clone(), Path::new("/log"), SegmentId(1), Lsn(1), WalWriterConfig::default())?;
/// let bytes = sim.read_file(writer.path()).expect("segment file");
/// assert_eq!(bytes[..4], WAL_PREAMBLE_MAGIC);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const WAL_PREAMBLE_MAGIC: [u8; 4] = *b"NWAL";
/// Magic of a storage engine's own segment file: `NSEG`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CIPHER_AES_256_GCM, KeyRing, SEG_PREAMBLE_MAGIC, SecureKey, SegmentPreamble, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(4, SecureKey::generate());
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &b"columnar segment"[..], &mut file)?;
/// let preamble = SegmentPreamble::decode(&file).expect("an engine file starts with a preamble");
/// assert_eq!(preamble.magic, SEG_PREAMBLE_MAGIC);
/// assert_eq!((preamble.cipher, preamble.key_id), (CIPHER_AES_256_GCM, 4));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const SEG_PREAMBLE_MAGIC: [u8; 4] = *b"NSEG";
/// Cipher id of an unencrypted segment.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CIPHER_NONE, SegmentPreamble};
///
/// let plain = SegmentPreamble::plaintext_wal();
/// assert_eq!((plain.cipher, plain.key_id, plain.nonce_epoch), (CIPHER_NONE, 0, 0));
/// ```
pub const CIPHER_NONE: u8 = 0;
/// Cipher id of AES-256-GCM.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CIPHER_AES_256_GCM, SegmentPreamble};
///
/// let encrypted = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 2, nonce_epoch: 77, ..SegmentPreamble::plaintext_wal() };
/// assert_eq!(encrypted.encode()[6], CIPHER_AES_256_GCM, "the byte after the version");
/// ```
pub const CIPHER_AES_256_GCM: u8 = 1;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 4;
const CIPHER_AT: usize = VERSION_AT + 2;
const RESERVED_AT: usize = CIPHER_AT + 1;
const KEY_ID_AT: usize = RESERVED_AT + 1;
const EPOCH_AT: usize = KEY_ID_AT + 4;
const _: () = assert!(EPOCH_AT + 4 == PREAMBLE_SIZE);

/// The decoded preamble.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CIPHER_AES_256_GCM, SegmentPreamble};
///
/// let preamble = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 7, nonce_epoch: 0xDEAD_BEEF, ..SegmentPreamble::plaintext_wal() };
/// let bytes = preamble.encode();
/// assert_eq!(&bytes[..4], b"NWAL");
/// assert_eq!(SegmentPreamble::decode(&bytes), Ok(preamble));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPreamble {
    /// [`WAL_PREAMBLE_MAGIC`] or [`SEG_PREAMBLE_MAGIC`].
    pub magic: [u8; 4],
    /// Format version.
    pub version: u16,
    /// [`CIPHER_NONE`] or [`CIPHER_AES_256_GCM`].
    pub cipher: u8,
    /// Which key of the key ring encrypts the segment (0 when unencrypted).
    pub key_id: u32,
    /// Per-segment nonce epoch (0 when unencrypted).
    pub nonce_epoch: u32,
}

/// Why bytes are not a preamble.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::preamble::PreambleError;
/// use nodedb_wal::SegmentPreamble;
///
/// assert_eq!(SegmentPreamble::decode(&[0u8; 15]), Err(PreambleError::Truncated));
/// assert_eq!(SegmentPreamble::decode(&[0u8; 16]), Err(PreambleError::BadMagic));
/// let mut bytes = SegmentPreamble::plaintext_wal().encode();
/// bytes[7] = 1;
/// assert_eq!(SegmentPreamble::decode(&bytes), Err(PreambleError::ReservedNonZero));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreambleError {
    /// Fewer than [`PREAMBLE_SIZE`] bytes.
    Truncated,
    /// The magic is neither known value.
    BadMagic,
    /// The reserved byte is not zero.
    ReservedNonZero,
}

impl SegmentPreamble {
    /// A preamble for an unencrypted WAL segment of the current version.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CIPHER_NONE, PREAMBLE_VERSION, SegmentPreamble, WAL_PREAMBLE_MAGIC};
    ///
    /// let plain = SegmentPreamble::plaintext_wal();
    /// assert_eq!((plain.magic, plain.version, plain.cipher), (WAL_PREAMBLE_MAGIC, PREAMBLE_VERSION, CIPHER_NONE));
    /// ```
    #[must_use]
    pub const fn plaintext_wal() -> SegmentPreamble {
        SegmentPreamble { magic: WAL_PREAMBLE_MAGIC, version: PREAMBLE_VERSION, cipher: CIPHER_NONE, key_id: 0, nonce_epoch: 0 }
    }

    /// Encodes into exactly [`PREAMBLE_SIZE`] bytes. See [`SegmentPreamble`] for an example.
    #[must_use]
    pub fn encode(&self) -> [u8; PREAMBLE_SIZE] {
        let mut out = [0u8; PREAMBLE_SIZE];
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&self.magic);
        out[VERSION_AT..CIPHER_AT].copy_from_slice(&self.version.to_le_bytes());
        out[CIPHER_AT] = self.cipher;
        out[RESERVED_AT] = 0;
        out[KEY_ID_AT..EPOCH_AT].copy_from_slice(&self.key_id.to_le_bytes());
        out[EPOCH_AT..PREAMBLE_SIZE].copy_from_slice(&self.nonce_epoch.to_le_bytes());
        out
    }

    /// Decodes the first [`PREAMBLE_SIZE`] bytes. The version and cipher are returned as
    /// found: whether this build reads them is the caller's decision.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{PREAMBLE_VERSION, SegmentPreamble};
    ///
    /// let future = SegmentPreamble { version: PREAMBLE_VERSION + 1, ..SegmentPreamble::plaintext_wal() };
    /// // Decoding succeeds; refusing the newer version is up to the reader.
    /// assert_eq!(SegmentPreamble::decode(&future.encode()).map(|p| p.version), Ok(PREAMBLE_VERSION + 1));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<SegmentPreamble, PreambleError> {
        if bytes.len() < PREAMBLE_SIZE {
            return Err(PreambleError::Truncated);
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[MAGIC_AT..VERSION_AT]);
        if magic != WAL_PREAMBLE_MAGIC && magic != SEG_PREAMBLE_MAGIC {
            return Err(PreambleError::BadMagic);
        }
        if bytes[RESERVED_AT] != 0 {
            return Err(PreambleError::ReservedNonZero);
        }
        Ok(SegmentPreamble {
            magic,
            version: read_le!(u16, bytes, VERSION_AT),
            cipher: bytes[CIPHER_AT],
            key_id: read_le!(u32, bytes, KEY_ID_AT),
            nonce_epoch: read_le!(u32, bytes, EPOCH_AT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips() {
        let p = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 7, nonce_epoch: 0xDEAD_BEEF, ..SegmentPreamble::plaintext_wal() };
        assert_eq!(SegmentPreamble::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn zeroed_bytes_are_not_a_preamble() {
        assert_eq!(SegmentPreamble::decode(&[0u8; 16]), Err(PreambleError::BadMagic));
        assert_eq!(SegmentPreamble::decode(&[0u8; 15]), Err(PreambleError::Truncated));
    }
}
