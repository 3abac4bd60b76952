//! Why a file of the encryption layer was refused: an engine file ([`EngineFileProblem`]) or
//! a key file ([`KeyFileProblem`]).
//!
//! Both come from files the caller hands in, not from the log's own segments, so their
//! problems are spelled out here, apart from the log's corruption kinds.

use std::io;

/// Why an engine segment file could not be encrypted or decrypted.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{EngineFileProblem, KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};
///
/// let problem = |result: nodedb_wal::Result<u64>| match result {
///     Err(WalError::EngineFile { problem }) => Some(problem),
///     _ => None,
/// };
/// // Encrypting needs an active key.
/// let empty = KeyRing::new();
/// assert_eq!(problem(encrypt_engine_file(&empty, &mut &b"data"[..], &mut Vec::new())), Some(EngineFileProblem::NoActiveKey));
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &b"column bytes"[..], &mut file)?;
/// let zeros = vec![0u8; file.len()];
/// assert_eq!(problem(decrypt_engine_file(&ring, &mut &zeros[..], &mut Vec::new())), Some(EngineFileProblem::NotAnEngineFile));
/// assert_eq!(problem(decrypt_engine_file(&ring, &mut &file[..20], &mut Vec::new())), Some(EngineFileProblem::Truncated));
/// let mut tampered = file.clone();
/// *tampered.last_mut().expect("a tag") ^= 1; // one flipped bit in the only chunk's tag
/// let found = problem(decrypt_engine_file(&ring, &mut &tampered[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::FirstChunkDamaged), "the key check value matched: damage");
/// // Another key under the file's key id, and a damaged key check value (header bytes 36..40).
/// let wrong = KeyRing::with_active(1, SecureKey::generate());
/// let found = problem(decrypt_engine_file(&wrong, &mut &file[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::WrongKey { key_id: 1 }));
/// let mut tampered = file.clone();
/// tampered[37] ^= 1;
/// let found = problem(decrypt_engine_file(&ring, &mut &tampered[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::KeyCheckDamaged));
/// # Ok::<(), WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineFileProblem {
    /// Encrypting needs an active key in the ring.
    NoActiveKey,
    /// The bytes do not start with an engine file preamble (`NSEG`).
    NotAnEngineFile,
    /// A format version this build does not read.
    UnsupportedVersion {
        /// The file's version.
        version: u16,
    },
    /// A cipher id this build does not know.
    UnsupportedCipher {
        /// The file's cipher id.
        cipher: u8,
    },
    /// The header's chunk length is invalid, a version 1 header's reserved bytes are not
    /// zero, or a version 2 header's key check value is (which no writer writes: most likely a
    /// version 1 header whose version field was damaged).
    BadHeader,
    /// The file ends before its header or its last chunk.
    Truncated,
    /// A chunk failed authentication. At a later chunk than 0 the key is right (chunk 0
    /// authenticated under it): the file was altered, reordered or cut there. At chunk 0, only
    /// in a version 1 file, this is a wrong key or a corrupt first chunk (or header), which no
    /// reader can tell apart: a version 1 header names the key's id and holds nothing that
    /// checks the key under that id. Version 2 reports [`WrongKey`](Self::WrongKey),
    /// [`KeyCheckDamaged`](Self::KeyCheckDamaged) or
    /// [`FirstChunkDamaged`](Self::FirstChunkDamaged) there instead.
    AuthenticationFailed {
        /// The chunk's index.
        chunk: u64,
    },
    /// The ring's key under the file's key id is not the key the file was written with: the
    /// header's key check value (version 2) does not match it, and chunk 0 does not
    /// authenticate under it either. A damaged salt (16 header bytes) reads the same, as no
    /// key then opens the file; so does a file whose check value is damaged and that is cut
    /// or damaged again in chunk 0. Reported before [`Truncated`](Self::Truncated): with the
    /// right key, a cut file reports the cut.
    WrongKey {
        /// The key id the file names.
        key_id: u32,
    },
    /// The header's key check value is damaged, the key being right: chunk 0 authenticates
    /// under the header with the value that key gives. Nothing is decrypted.
    KeyCheckDamaged,
    /// Chunk 0 of a version 2 file failed authentication although the header's key check value
    /// matches the key: the key is right, and the header (outside its salt and key id) or
    /// chunk 0 was altered, or the file was cut inside chunk 0.
    FirstChunkDamaged,
}

impl std::fmt::Display for EngineFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineFileProblem::NoActiveKey => f.write_str("encrypting needs an active key in the key ring"),
            EngineFileProblem::NotAnEngineFile => f.write_str("the bytes do not open with an engine file preamble (NSEG)"),
            EngineFileProblem::UnsupportedVersion { version } => write!(f, "format version {version} is not one this build reads"),
            EngineFileProblem::UnsupportedCipher { cipher } => write!(f, "cipher {cipher} is unknown to this build"),
            EngineFileProblem::BadHeader => {
                f.write_str("the header is damaged: its chunk length, or the key check bytes for its version (zero in version 1, never zero in 2), are invalid")
            }
            EngineFileProblem::Truncated => f.write_str("the file ends before its header or its last chunk"),
            EngineFileProblem::AuthenticationFailed { chunk: 0 } => f.write_str(
                "chunk 0 failed authentication: wrong key or corrupt first chunk (the header names the key's id and nothing that checks the key, so the two look the same; a damaged header too)",
            ),
            EngineFileProblem::AuthenticationFailed { chunk } => {
                write!(f, "chunk {chunk} failed authentication: the file was altered, reordered or cut there (chunk 0 authenticated, so the key is right)")
            }
            EngineFileProblem::WrongKey { key_id } => write!(
                f,
                "the key ring's key {key_id} is not the key this file was written with (the header's key check value does not match it and chunk 0 does not authenticate under it): supply the key that was key {key_id} when the file was written (a damaged salt in the header reads the same: no key opens such a file)"
            ),
            EngineFileProblem::KeyCheckDamaged => f.write_str(
                "the header's key check value is damaged: the key is right (chunk 0 authenticates under it) but the file's header is not as written; nothing was decrypted",
            ),
            EngineFileProblem::FirstChunkDamaged => f.write_str(
                "chunk 0 failed authentication: the header or chunk 0 was altered, or the file was cut inside chunk 0 (the header's key check value matches, so the key is right)",
            ),
        }
    }
}

/// Why a key file was refused.
///
/// # Examples
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// use nodedb_wal::{KeyFileProblem, SecureKey, WalError};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("wal.key");
/// std::fs::write(&path, [7u8; 32])?;
/// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
/// let err = SecureKey::load(&path).unwrap_err();
/// assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Permissions { mode: 0o644 }, .. }), "{err}");
///
/// std::fs::write(&path, [7u8; 16])?;
/// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
/// let err = SecureKey::load(&path).unwrap_err();
/// assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Length { len: 16 }, .. }), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The path is a symbolic link.
    Symlink,
    /// The path is not a regular file.
    NotAFile,
    /// Group or others may read or write it.
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// Another user owns it.
    Owner {
        /// The owner.
        uid: u32,
        /// This process's effective user.
        expected: u32,
    },
    /// It does not hold exactly 32 bytes.
    Length {
        /// Its length.
        len: u64,
    },
    /// It could not be read.
    Io(io::ErrorKind),
}

impl std::fmt::Display for KeyFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFileProblem::Symlink => f.write_str("it is a symbolic link; name the key file itself"),
            KeyFileProblem::NotAFile => f.write_str("it is not a regular file"),
            KeyFileProblem::Permissions { mode } => {
                write!(f, "its mode is {:o}; group and others must have no access (chmod 600)", mode & 0o7777)
            }
            KeyFileProblem::Owner { uid, expected } => write!(f, "it belongs to user {uid}, not to this process's user {expected}"),
            KeyFileProblem::Length { len } => write!(f, "it holds {len} bytes; a key file holds exactly 32"),
            KeyFileProblem::Io(kind) => write!(f, "it could not be read ({kind})"),
        }
    }
}
