//! AES-256-GCM of record payloads under a per-segment key.
//!
//! Each segment derives its own key: HKDF-SHA256 with the ring key as input, the segment's
//! random 16-byte `kdf_salt` as salt and the segment id as info. The nonce is the preamble's
//! random epoch followed by the record's LSN. LSNs never repeat inside a segment, so a
//! (key, nonce) pair repeats only if two segments draw the same 128-bit salt (see DESIGN.md).
//! The associated data is the preamble and the record header (all but its CRC field), so a
//! record moved to another segment or position, or with any header field changed, fails.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use super::key::{KEY_LEN, SecureKey};
use crate::format::frame::HEADER_LEN;
use crate::format::preamble::{PREAMBLE_SIZE, SegmentPreamble};
use crate::types::{Lsn, SegmentId};

/// Bytes of the authentication tag that follows each encrypted payload.
pub const TAG_LEN: usize = 16;
const INFO: &[u8] = b"nodedb-wal segment key v1";
const AAD_LEN: usize = PREAMBLE_SIZE + HEADER_LEN - 4;

/// The cipher state of one segment.
pub struct SegmentCipher {
    aead: Aes256Gcm,
    preamble: [u8; PREAMBLE_SIZE],
    epoch: u32,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCipher").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// Authentication failed: wrong key, or the record, its header or its segment were altered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

impl SegmentCipher {
    /// Derives the segment's key from the ring key.
    pub fn derive(master: &SecureKey, kdf_salt: &[u8; 16], segment: SegmentId, preamble: &SegmentPreamble) -> SegmentCipher {
        let mut info = [0u8; INFO.len() + 8];
        info[..INFO.len()].copy_from_slice(INFO);
        info[INFO.len()..].copy_from_slice(&segment.0.to_le_bytes());
        let mut okm = [0u8; KEY_LEN];
        Hkdf::<Sha256>::new(Some(kdf_salt), master.expose()).expand(&info, &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
        let aead = Aes256Gcm::new_from_slice(&okm).expect("32-byte key");
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
    pub fn seal(&self, lsn: Lsn, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag =
            self.aead.encrypt_inout_detached(&self.nonce(lsn), &self.aad(header), payload.into()).expect("payload within AES-GCM limits");
        tag.into()
    }

    /// Decrypts `ciphertext` in place and checks its tag.
    pub fn open(&self, lsn: Lsn, header: &[u8], ciphertext: &mut [u8], tag: &[u8]) -> Result<(), AuthFailed> {
        let tag = Tag::try_from(tag).map_err(|_| AuthFailed)?;
        self.aead.decrypt_inout_detached(&self.nonce(lsn), &self.aad(header), ciphertext.into(), &tag).map_err(|_| AuthFailed)
    }
}
