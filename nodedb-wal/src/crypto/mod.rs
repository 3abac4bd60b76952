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
