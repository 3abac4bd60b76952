//! `SecureKey`: 32 key bytes that stay in locked memory, are wiped on drop, and are never
//! copied or printed by this crate.

use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroize;

use crate::error::{KeyFileProblem, Result, WalError};
use crate::storage::memlock;

/// Bytes in a key.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::KEY_LEN;
///
/// assert_eq!(KEY_LEN * 8, 256, "AES-256");
/// ```
pub const KEY_LEN: usize = 32;

/// An AES-256 key in mlocked memory (best effort), zeroized on drop. Not `Clone`; `Debug`
/// shows nothing of the key.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SecureKey;
///
/// let key = SecureKey::generate();
/// // Nothing of the key reaches logs.
/// assert_eq!(format!("{key:?}"), "SecureKey(<redacted>)");
/// ```
pub struct SecureKey {
    bytes: Box<[u8; KEY_LEN]>,
    locked: bool,
}

impl SecureKey {
    /// Takes the key bytes, wiping the caller's copy.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SecureKey;
    ///
    /// let mut raw = [0x5Au8; 32]; // from a key management service, say
    /// let key = SecureKey::from_bytes(&mut raw);
    /// assert_eq!(raw, [0u8; 32], "the caller's copy is zeroed");
    /// # drop(key);
    /// ```
    pub fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> SecureKey {
        let mut boxed = Box::new([0u8; KEY_LEN]);
        boxed.copy_from_slice(bytes);
        bytes.zeroize();
        let locked = match memlock::lock(&boxed[..]) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, "could not mlock key memory; the key may be swapped out");
                false
            }
        };
        SecureKey { bytes: boxed, locked }
    }

    /// A fresh random key (from the kernel's CSPRNG).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{KeyRing, SecureKey};
    ///
    /// let ring = KeyRing::with_active(1, SecureKey::generate());
    /// assert_eq!(ring.key_ids(), [1]);
    /// ```
    pub fn generate() -> SecureKey {
        let mut bytes = [0u8; KEY_LEN];
        crate::commit::fill_random(&mut bytes);
        SecureKey::from_bytes(&mut bytes)
    }

    /// Loads a key file: exactly 32 raw bytes, a regular file (not a symlink) owned by this
    /// process's user and readable or writable by no one else.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::unix::fs::OpenOptionsExt;
    ///
    /// use nodedb_wal::SecureKey;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("wal.key");
    /// let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    /// file.write_all(&[0x42; 32])?;
    /// drop(file);
    /// let key = SecureKey::load(&path)?;
    /// assert_eq!(format!("{key:?}"), "SecureKey(<redacted>)");
    /// // A link to the key file is refused, even though its target is fine.
    /// let link = dir.path().join("link.key");
    /// std::os::unix::fs::symlink(&path, &link)?;
    /// assert!(SecureKey::load(&link).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: &Path) -> Result<SecureKey> {
        let bad = |problem| WalError::KeyFile { path: path.to_path_buf(), problem };
        let io = |e: std::io::Error| bad(KeyFileProblem::Io(e.kind()));
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        if meta.file_type().is_symlink() {
            return Err(bad(KeyFileProblem::Symlink));
        }
        if !meta.is_file() {
            return Err(bad(KeyFileProblem::NotAFile));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(KeyFileProblem::Permissions { mode: meta.mode() & 0o777 }));
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(bad(KeyFileProblem::Owner { uid: meta.uid(), expected: euid }));
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(bad(KeyFileProblem::Length { len: meta.len() }));
        }
        // O_NOFOLLOW closes the window between the check above and the open.
        let mut file =
            std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path).map_err(io)?;
        let mut bytes = [0u8; KEY_LEN];
        std::io::Read::read_exact(&mut file, &mut bytes).map_err(io)?;
        Ok(SecureKey::from_bytes(&mut bytes))
    }

    /// The key bytes, for the cipher layer only.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Whether the key's memory is locked against swapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SecureKey;
    ///
    /// let key = SecureKey::generate();
    /// if !key.is_locked() {
    ///     eprintln!("RLIMIT_MEMLOCK is too small: this key may reach swap");
    /// }
    /// ```
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for SecureKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            let _ = memlock::unlock(&self.bytes[..]);
        }
    }
}

impl fmt::Debug for SecureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecureKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(dir: &Path, mode: u32, len: usize) -> std::path::PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, vec![7u8; len]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = SecureKey::from_bytes(&mut [0xAB; 32]);
        assert_eq!(format!("{key:?}"), "SecureKey(<redacted>)");
    }

    #[test]
    fn the_callers_copy_is_wiped() {
        let mut raw = [9u8; 32];
        let key = SecureKey::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32]);
        assert_eq!(key.expose(), &[9u8; 32]);
    }

    #[test]
    fn a_private_32_byte_key_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecureKey::load(&key_file(dir.path(), 0o600, 32)).unwrap();
        assert_eq!(key.expose(), &[7u8; 32]);
    }

    #[test]
    fn unsafe_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let err = SecureKey::load(&key_file(dir.path(), 0o640, 32)).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Permissions { mode: 0o640 }, .. }), "{err}");
        let err = SecureKey::load(&key_file(dir.path(), 0o600, 31)).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Length { len: 31 }, .. }), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("key"), &link).unwrap();
        let err = SecureKey::load(&link).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Symlink, .. }), "{err}");
        let path = key_file(dir.path(), 0o600, 32);
        // Giving a file away takes root; elsewhere the owner check cannot be exercised.
        if std::os::unix::fs::chown(&path, Some(12345), None).is_ok() {
            let err = SecureKey::load(&path).unwrap_err();
            assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Owner { uid: 12345, .. }, .. }), "{err}");
        } else {
            eprintln!("SKIPPED: the key file owner check needs root to chown");
        }
    }
}
