//! Encryption at rest: keys in locked memory, a key ring, AES-256-GCM of record payloads under
//! per-segment keys, and of the storage engines' own files under per-file keys.

mod cipher;
mod file;
mod key;
pub(crate) mod random;
mod ring;

pub use cipher::{AuthFailed, SegmentCipher, TAG_LEN};
pub use file::{ENGINE_CHUNK_LEN, ENGINE_FILE_VERSION, ENGINE_HEADER_LEN, decrypt_engine_file, encrypt_engine_file};
pub use key::{KEY_LEN, SecureKey};
pub use ring::KeyRing;

use std::sync::atomic::{AtomicBool, Ordering};

use aes_gcm::{Aes256Gcm, KeyInit};

use crate::storage::memlock::SecretBox;

/// An AES-256-GCM cipher under `key`, its key schedule on pages of its own, locked into RAM
/// where `RLIMIT_MEMLOCK` allows. Each segment and engine file gets one, so a process that
/// runs for months makes many, and past its limit they go on unlocked. The first that cannot
/// be locked is logged, once per process (every later one would repeat it at every segment);
/// a key that cannot be locked is logged by `SecureKey` itself.
pub(crate) fn locked_aead(key: &[u8; KEY_LEN]) -> SecretBox<Aes256Gcm> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let aead = SecretBox::new(Aes256Gcm::new_from_slice(key).expect("32-byte key"));
    if !aead.is_locked() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "could not mlock a cipher's key schedule (RLIMIT_MEMLOCK); it and later ones may be swapped out (logged once per process)"
        );
    }
    aead
}
