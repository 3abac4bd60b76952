//! `SecureKey`: 32 key bytes that stay in locked memory, are wiped on drop, and are never
//! copied or printed by this crate.

use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroize;

use crate::error::{KeyFileProblem, Result, WalError};
use crate::storage::memlock::SecretPage;

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
    /// A page of its own, so that dropping another key never unlocks this one.
    page: SecretPage,
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
        let mut page = SecretPage::new(KEY_LEN);
        page.bytes_mut().copy_from_slice(bytes);
        bytes.zeroize();
        SecureKey::from_page(page)
    }

    /// A key already in its page, which is locked if the limit allowed it.
    fn from_page(page: SecretPage) -> SecureKey {
        if !page.is_locked() {
            tracing::warn!("could not mlock key memory (RLIMIT_MEMLOCK); the key may be swapped out");
        }
        SecureKey { page }
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
        crate::crypto::random::fill_random(&mut bytes);
        SecureKey::from_bytes(&mut bytes)
    }

    /// Loads a key file: exactly 32 raw bytes, a regular file (not a symlink) owned by this
    /// process's user and readable or writable by no one else.
    ///
    /// This crate never writes key files. One can be made from the shell, readable by its
    /// owner from the start (a `chmod` after the write would leave a moment in which it is
    /// not): `(umask 077 && head -c 32 /dev/urandom > wal.key)`. A lost key leaves its segments
    /// unreadable: back the key file up, apart from the log's own backups.
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
        // The checks are made on the file opened, not on the path before opening it: no other
        // file can be put in its place between the two. O_NOFOLLOW refuses a link (ELOOP);
        // O_NONBLOCK keeps a FIFO in its place from blocking the open.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return Err(bad(KeyFileProblem::Symlink)),
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
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
        // Read straight into the key's locked page: a buffer on the stack would be one more copy,
        // and one left unwiped where the read fails part way.
        let mut page = SecretPage::new(KEY_LEN);
        std::io::Read::read_exact(&mut file, page.bytes_mut()).map_err(io)?;
        Ok(SecureKey::from_page(page))
    }

    /// The key bytes, for the cipher layer only.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.page.bytes().try_into().expect("a key's page holds KEY_LEN bytes")
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
        self.page.is_locked()
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
    fn every_key_has_pages_of_its_own_so_dropping_one_never_unlocks_another() {
        // mlock counts pages, not allocations: two keys on one page shared one lock, and the
        // first dropped unlocked the other (found by a review).
        let page = rustix::param::page_size();
        let keys: Vec<SecureKey> = (0..8u8).map(|i| SecureKey::from_bytes(&mut [i; 32])).collect();
        let mut pages: Vec<usize> = keys.iter().map(|k| k.expose().as_ptr() as usize).collect();
        assert!(pages.iter().all(|&at| at % page == 0), "each key starts a page");
        pages.sort_unstable();
        pages.dedup();
        assert_eq!(pages.len(), keys.len(), "no two keys share a page");
        let kept: Vec<SecureKey> = keys.into_iter().filter(|k| k.expose()[0] % 2 == 0).collect();
        assert!(kept.iter().zip([0u8, 2, 4, 6]).all(|(k, i)| k.expose() == &[i; 32]), "the others' drops left these whole");
    }

    #[test]
    fn the_callers_copy_is_wiped() {
        let mut raw = [9u8; 32];
        let key = SecureKey::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32]);
        assert_eq!(key.expose(), &[9u8; 32]);
    }

    #[test]
    // Miri cannot open a file with `O_NONBLOCK`, as `SecureKey::load` does; every other build
    // runs this.
    #[cfg_attr(miri, ignore)]
    fn a_private_32_byte_key_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecureKey::load(&key_file(dir.path(), 0o600, 32)).unwrap();
        assert_eq!(key.expose(), &[7u8; 32]);
    }

    #[test]
    // Miri cannot open a file with `O_NONBLOCK`, as `SecureKey::load` does; every other build
    // runs this.
    #[cfg_attr(miri, ignore)]
    fn unsafe_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let err = SecureKey::load(&key_file(dir.path(), 0o640, 32)).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Permissions { mode: 0o640 }, .. }), "{err}");
        assert!(err.to_string().contains("its mode is 640; group and others must have no access (chmod 600)"), "{err}");
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

    #[test]
    // Miri cannot make a FIFO (`mknodat`); every other build runs this.
    #[cfg_attr(miri, ignore)]
    fn a_fifo_or_a_directory_in_place_of_the_key_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        let err = SecureKey::load(&fifo).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::NotAFile, .. }), "{err}");
        let err = SecureKey::load(dir.path()).unwrap_err();
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::NotAFile, .. }), "{err}");
    }
}
