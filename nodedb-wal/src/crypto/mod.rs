//! Encryption at rest: keys in locked memory, a key ring, and AES-256-GCM of record payloads
//! under per-segment keys.

mod cipher;
mod key;
mod ring;

pub use cipher::{AuthFailed, SegmentCipher, TAG_LEN};
pub use key::{KEY_LEN, SecureKey};
pub use ring::KeyRing;
