//! AES-256-GCM of record payloads under a per-segment key.
//!
//! Each segment derives its own key: HKDF-SHA256 with the ring key as input, the segment's
//! random 16-byte `kdf_salt` as salt and the segment id as info. The nonce is the preamble's
//! random epoch followed by the record's LSN. LSNs never repeat inside a segment, so a
//! (key, nonce) pair repeats only if two segments draw the same 128-bit salt (see DESIGN.md).
//! The associated data is the preamble and the record header (all but its CRC field), so a
//! record moved to another segment or position, or with any header field changed, fails.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use super::key::{KEY_LEN, SecureKey};
use crate::format::frame::HEADER_LEN;
use crate::format::preamble::{PREAMBLE_SIZE, SegmentPreamble};
use crate::storage::memlock::SecretBox;
use crate::types::{Lsn, SegmentId};

/// Bytes of the authentication tag that follows each encrypted payload.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::TAG_LEN;
///
/// // An encrypted record's payload is as long as its plaintext plus the tag.
/// let plaintext_len = 100;
/// assert_eq!(plaintext_len + TAG_LEN, 116);
/// ```
pub const TAG_LEN: usize = 16;
const INFO: &[u8] = b"nodedb-wal segment key v1";
const AAD_LEN: usize = PREAMBLE_SIZE + HEADER_LEN - 4;

/// The cipher state of one segment.
///
/// The log builds one per encrypted segment; it is public for tools that decrypt records by
/// hand. A payload sealed for one LSN, header, segment or key opens under no other.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::{AuthFailed, SegmentCipher, TAG_LEN};
/// use nodedb_wal::format::frame::{FLAG_ENCRYPTED, HEADER_LEN};
/// use nodedb_wal::{CIPHER_AES_256_GCM, Lsn, RecordHeader, RecordType, Scope, SecureKey, SegmentId, SegmentPreamble};
///
/// let master = SecureKey::generate();
/// let preamble = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 1, nonce_epoch: 99, ..SegmentPreamble::plaintext_wal() };
/// let cipher = SegmentCipher::derive(&master, &[5; 16], SegmentId(1), &preamble);
///
/// let mut payload = *b"secret row";
/// let (lsn, scope, record_type) = (Lsn(7), Scope::default(), RecordType::optional(0x100));
/// let header = RecordHeader { lsn, durable_lsn: Lsn(6), salt: 1, record_type, scope, payload_len: 26, flags: FLAG_ENCRYPTED };
/// let mut encoded = [0u8; HEADER_LEN];
/// header.encode_into(&mut encoded);
/// let tag: [u8; TAG_LEN] = cipher.seal(lsn, &encoded, &mut payload);
/// assert_ne!(&payload, b"secret row");
///
/// // Another LSN (a record moved) or another segment's key: authentication fails.
/// let mut moved = payload;
/// assert_eq!(cipher.open(Lsn(8), &encoded, &mut moved, &tag), Err(AuthFailed));
/// let other = SegmentCipher::derive(&master, &[5; 16], SegmentId(2), &preamble);
/// assert_eq!(other.open(lsn, &encoded, &mut moved, &tag), Err(AuthFailed));
///
/// cipher.open(lsn, &encoded, &mut payload, &tag)?;
/// assert_eq!(&payload, b"secret row");
/// # Ok::<(), AuthFailed>(())
/// ```
pub struct SegmentCipher {
    /// The expanded key schedule: as much a secret as the key.
    aead: SecretBox<Aes256Gcm>,
    preamble: [u8; PREAMBLE_SIZE],
    epoch: u32,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCipher").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// Authentication failed: wrong key, or the record, its header or its segment were altered.
///
/// Returned by [`SegmentCipher::open`], whose example shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

impl SegmentCipher {
    /// Derives the segment's key from the ring key, the segment's `kdf_salt` and its id; the
    /// preamble's epoch starts every nonce. See the type's example.
    pub fn derive(master: &SecureKey, kdf_salt: &[u8; 16], segment: SegmentId, preamble: &SegmentPreamble) -> SegmentCipher {
        let mut info = [0u8; INFO.len() + 8];
        info[..INFO.len()].copy_from_slice(INFO);
        info[INFO.len()..].copy_from_slice(&segment.0.to_le_bytes());
        let mut okm = [0u8; KEY_LEN];
        Hkdf::<Sha256>::new(Some(kdf_salt), master.expose()).expand(&info, &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
        let aead = super::locked_aead(&okm);
        okm.zeroize();
        SegmentCipher { aead, preamble: preamble.encode(), epoch: preamble.nonce_epoch }
    }

    fn nonce(&self, lsn: Lsn) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.epoch.to_le_bytes());
        n[4..].copy_from_slice(&lsn.0.to_le_bytes());
        n.into()
    }

    fn aad(&self, header: &[u8]) -> [u8; AAD_LEN] {
        let mut aad = [0u8; AAD_LEN];
        aad[..PREAMBLE_SIZE].copy_from_slice(&self.preamble);
        aad[PREAMBLE_SIZE..].copy_from_slice(&header[4..HEADER_LEN]);
        aad
    }

    /// Encrypts `payload` in place; `header` is the encoded header (final flags and length).
    /// Returns the tag to store after the ciphertext. See the type's example.
    pub fn seal(&self, lsn: Lsn, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag =
            self.aead.encrypt_inout_detached(&self.nonce(lsn), &self.aad(header), payload.into()).expect("payload within AES-GCM limits");
        tag.into()
    }

    /// Decrypts `ciphertext` in place and checks its tag. See the type's example.
    pub fn open(&self, lsn: Lsn, header: &[u8], ciphertext: &mut [u8], tag: &[u8]) -> Result<(), AuthFailed> {
        let tag = Tag::try_from(tag).map_err(|_| AuthFailed)?;
        self.aead.decrypt_inout_detached(&self.nonce(lsn), &self.aad(header), ciphertext.into(), &tag).map_err(|_| AuthFailed)
    }
}
