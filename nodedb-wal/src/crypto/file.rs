//! Authenticated encryption of the storage engines' own files (columnar segments, vector index
//! segments) with the log's key ring, streamed in chunks so a large file is never held in
//! memory whole.
//!
//! A file is a 40-byte header (the 16-byte preamble under [`SEG_PREAMBLE_MAGIC`], a random
//! 16-byte HKDF salt, the chunk length, a 4-byte key check value) and then chunks, each the
//! AES-256-GCM ciphertext of up to `chunk_len` plaintext bytes followed by its 16-byte tag. Every
//! chunk but the last holds exactly `chunk_len` bytes; the last holds fewer (possibly none), so
//! the end of the file is authenticated too. The key is HKDF-SHA256 of the ring key with the
//! file's salt, so every file has its own key; the nonce is the preamble's random epoch and the
//! chunk index, unique within the file. The associated data is the whole header and a
//! final-chunk flag: a swapped preamble or salt, reordered, dropped or appended chunks, and a
//! flipped byte all fail. The bytes are in docs/FORMAT.md ("Engine segment files").
//!
//! The key check value (version 2; version 1 left the bytes zero) is a second output of the same
//! HKDF, under its own info string: a wrong key under the right id is told from damage before
//! any chunk is read, and chunk 0 then tells a damaged check value from a wrong key (see
//! [`KeyCheck`]).
//!
//! Decryption writes each chunk's plaintext once that chunk is authenticated; on an error the
//! output holds a prefix that the caller must discard.

use std::io::{self, Read, Write};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::cipher::TAG_LEN;
use super::key::{KEY_LEN, SecureKey};
use super::ring::KeyRing;
use crate::error::{EngineFileProblem, IoOp, Result, WalError};
use crate::format::preamble::{CIPHER_AES_256_GCM, PREAMBLE_SIZE, SEG_PREAMBLE_MAGIC, SegmentPreamble};
use crate::storage::memlock::SecretBox;

const SALT_AT: usize = PREAMBLE_SIZE;
const SALT_LEN: usize = 16;
const CHUNK_LEN_AT: usize = SALT_AT + SALT_LEN;
const KEY_CHECK_AT: usize = CHUNK_LEN_AT + 4;
const KEY_CHECK_LEN: usize = 4;

/// Bytes of an engine file's header: preamble, salt, chunk length, key check value.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::{ENGINE_HEADER_LEN, TAG_LEN};
/// use nodedb_wal::{KeyRing, SecureKey, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let mut file = Vec::new();
/// let written = encrypt_engine_file(&ring, &mut &[9u8; 1000][..], &mut file)?;
/// // One short (and so last) chunk: header, ciphertext, tag.
/// assert_eq!(written as usize, ENGINE_HEADER_LEN + 1000 + TAG_LEN);
/// assert_eq!(&file[..4], b"NSEG");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const ENGINE_HEADER_LEN: usize = KEY_CHECK_AT + KEY_CHECK_LEN;
const _: () = assert!(ENGINE_HEADER_LEN == 40);
/// The engine file version this build writes (in the preamble's version field). Version 2
/// holds a key check value where version 1 reserved four zero bytes; both are read.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::ENGINE_FILE_VERSION;
/// use nodedb_wal::{KeyRing, SecureKey, SegmentPreamble, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &b"column"[..], &mut file)?;
/// assert_eq!(SegmentPreamble::decode(&file).map(|p| p.version), Ok(ENGINE_FILE_VERSION));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const ENGINE_FILE_VERSION: u16 = 2;
/// Plaintext bytes per chunk of the files [`encrypt_engine_file`] writes.
///
/// # Examples
///
/// ```
/// use nodedb_wal::crypto::{ENGINE_CHUNK_LEN, ENGINE_HEADER_LEN, TAG_LEN};
/// use nodedb_wal::{KeyRing, SecureKey, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let plain = vec![1u8; 2 * ENGINE_CHUNK_LEN as usize];
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &plain[..], &mut file)?;
/// // Two full chunks, then an empty last chunk that authenticates the end of the file.
/// assert_eq!(file.len(), ENGINE_HEADER_LEN + plain.len() + 3 * TAG_LEN);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub const ENGINE_CHUNK_LEN: u32 = 64 * 1024;
/// The largest chunk length a reader accepts (a bound on the memory a header can demand).
const CHUNK_LEN_MAX: u32 = 16 << 20;
/// The file key's HKDF info, in both versions: version 2 changed the header only.
const INFO: &[u8] = b"nodedb-wal engine file v1";
/// The key check value's HKDF info. Another info string under the same extracted key gives an
/// output independent of the file key (HKDF-Expand is a PRF of its info), so publishing four
/// bytes of it says nothing about the key that encrypts the chunks, and no AES-GCM key or nonce
/// the chunks use is touched.
const KEY_CHECK_INFO: &[u8] = b"nodedb-wal engine file v2 key check";

/// The pseudo-path I/O errors of a stream are reported under.
const STREAM: &str = "<engine file stream>";

fn problem(problem: EngineFileProblem) -> WalError {
    WalError::EngineFile { problem }
}

/// One file's cipher: its derived key, nonce epoch and header.
struct FileCipher {
    /// The expanded key schedule: as much a secret as the key.
    aead: SecretBox<Aes256Gcm>,
    epoch: u32,
    /// The header as the key would have written it: from version 2 on, its key check bytes are
    /// the value this key gives, whatever the file holds (see [`KeyCheck`]).
    header: [u8; ENGINE_HEADER_LEN],
    key_check: [u8; KEY_CHECK_LEN],
}

impl FileCipher {
    fn new(master: &SecureKey, mut header: [u8; ENGINE_HEADER_LEN], version: u16, epoch: u32) -> FileCipher {
        let hkdf = Hkdf::<Sha256>::new(Some(&header[SALT_AT..CHUNK_LEN_AT]), master.expose());
        let mut okm = [0u8; KEY_LEN];
        hkdf.expand(INFO, &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
        let aead = super::locked_aead(&okm);
        okm.zeroize();
        let mut key_check = [0u8; KEY_CHECK_LEN];
        hkdf.expand(KEY_CHECK_INFO, &mut key_check).expect("4 bytes is a valid HKDF-SHA256 length");
        if version >= 2 {
            header[KEY_CHECK_AT..].copy_from_slice(&key_check);
        }
        FileCipher { aead, epoch, header, key_check }
    }

    fn nonce(&self, chunk: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.epoch.to_le_bytes());
        n[4..].copy_from_slice(&chunk.to_le_bytes());
        n.into()
    }

    fn aad(&self, last: bool) -> [u8; ENGINE_HEADER_LEN + 1] {
        let mut aad = [0u8; ENGINE_HEADER_LEN + 1];
        aad[..ENGINE_HEADER_LEN].copy_from_slice(&self.header);
        aad[ENGINE_HEADER_LEN] = u8::from(last);
        aad
    }
}

/// What a file's key check value says of the ring's key, and so what a failed chunk means.
///
/// A damaged check value cannot be caught by trying chunk 0 under the header as read: the
/// header is the associated data of every chunk, so with changed check bytes chunk 0 fails
/// under the right key too. The cipher therefore authenticates under the header with the
/// value its own key gives. Under the right key that is the header as written, so chunk 0
/// authenticates if only the check bytes changed; under a wrong key it fails. Either way
/// nothing is written out: a file whose check bytes are damaged is refused, not repaired.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// Version 1: no check value; a failure at chunk 0 is a wrong key or damage.
    Absent,
    /// The value matches: the key is right (a wrong one passes 1 time in 2^32, and then chunk
    /// 0 fails as damage), so every failure is damage.
    Matched,
    /// The value differs: the key is wrong, unless chunk 0 authenticates.
    Mismatched,
}

impl KeyCheck {
    fn of(version: u16, header: &[u8; ENGINE_HEADER_LEN], cipher: &FileCipher) -> KeyCheck {
        match (version, header[KEY_CHECK_AT..] == cipher.key_check) {
            (1, _) => KeyCheck::Absent,
            (_, true) => KeyCheck::Matched,
            (_, false) => KeyCheck::Mismatched,
        }
    }

    /// What it means that chunk `chunk` is missing, cut or fails authentication. A mismatched
    /// value comes first: the right key then reports the damage.
    fn failure(self, chunk: u64, key_id: u32, truncated: bool) -> EngineFileProblem {
        match (self, chunk, truncated) {
            (KeyCheck::Mismatched, ..) => EngineFileProblem::WrongKey { key_id },
            (_, _, true) => EngineFileProblem::Truncated,
            (KeyCheck::Matched, 0, false) => EngineFileProblem::FirstChunkDamaged,
            (_, chunk, false) => EngineFileProblem::AuthenticationFailed { chunk },
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_err(e: io::Error) -> WalError {
    WalError::io(IoOp::Read, STREAM, e)
}

fn write_err(e: io::Error) -> WalError {
    WalError::io(IoOp::Write, STREAM, e)
}

/// Encrypts `input` into `output` as an engine file under the ring's active key. Returns the
/// bytes written. Memory: one chunk.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{KeyRing, SecureKey, decrypt_engine_file, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let column = vec![42u8; 200_000];
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &column[..], &mut file)?;
/// let mut back = Vec::new();
/// decrypt_engine_file(&ring, &mut &file[..], &mut back)?;
/// assert_eq!(back, column);
/// file[100] ^= 1;
/// assert!(decrypt_engine_file(&ring, &mut &file[..], &mut Vec::new()).is_err());
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub fn encrypt_engine_file(ring: &KeyRing, input: &mut impl Read, output: &mut impl Write) -> Result<u64> {
    let (key_id, key) = ring.active().ok_or_else(|| problem(EngineFileProblem::NoActiveKey))?;
    let cipher = loop {
        let mut random = [0u8; 20];
        crate::crypto::random::fill_random(&mut random);
        let epoch = u32::from_le_bytes(random[16..].try_into().expect("4 bytes"));
        let preamble = SegmentPreamble {
            magic: SEG_PREAMBLE_MAGIC,
            version: ENGINE_FILE_VERSION,
            cipher: CIPHER_AES_256_GCM,
            key_id,
            nonce_epoch: epoch,
        };
        let mut header = [0u8; ENGINE_HEADER_LEN];
        header[..PREAMBLE_SIZE].copy_from_slice(&preamble.encode());
        header[SALT_AT..CHUNK_LEN_AT].copy_from_slice(&random[..16]);
        header[CHUNK_LEN_AT..KEY_CHECK_AT].copy_from_slice(&ENGINE_CHUNK_LEN.to_le_bytes());
        // The cipher fills in the key check value. Zeros there mean a damaged header (a
        // version 1 header relabelled), so a salt giving zeros (1 in 2^32) is drawn again.
        let cipher = FileCipher::new(&key, header, ENGINE_FILE_VERSION, epoch);
        if cipher.key_check != [0; KEY_CHECK_LEN] {
            break cipher;
        }
    };
    output.write_all(&cipher.header).map_err(write_err)?;
    let mut written = ENGINE_HEADER_LEN as u64;
    // Zeroed when dropped, on error paths too: it held plaintext.
    let mut chunk = Zeroizing::new(vec![0u8; ENGINE_CHUNK_LEN as usize]);
    for index in 0u64.. {
        let len = read_full(input, &mut chunk).map_err(read_err)?;
        // Only the last chunk is short (possibly empty): that marks the end.
        let last = len < chunk.len();
        let tag = cipher
            .aead
            .encrypt_inout_detached(&cipher.nonce(index), &cipher.aad(last), (&mut chunk[..len]).into())
            .expect("chunk within AES-GCM limits");
        output.write_all(&chunk[..len]).map_err(write_err)?;
        output.write_all(&tag).map_err(write_err)?;
        written += (len + TAG_LEN) as u64;
        if last {
            break;
        }
    }
    Ok(written)
}

/// Reads and checks the header: an engine file of a version and cipher this build reads, with a
/// sane chunk length and (version 1) zero reserved bytes.
fn read_header(input: &mut impl Read) -> Result<([u8; ENGINE_HEADER_LEN], SegmentPreamble, u32)> {
    let mut header = [0u8; ENGINE_HEADER_LEN];
    if read_full(input, &mut header).map_err(read_err)? < ENGINE_HEADER_LEN {
        return Err(problem(EngineFileProblem::Truncated));
    }
    let preamble = SegmentPreamble::decode(&header).map_err(|_| problem(EngineFileProblem::NotAnEngineFile))?;
    if preamble.magic != SEG_PREAMBLE_MAGIC {
        return Err(problem(EngineFileProblem::NotAnEngineFile));
    }
    if !(1..=ENGINE_FILE_VERSION).contains(&preamble.version) {
        return Err(problem(EngineFileProblem::UnsupportedVersion { version: preamble.version }));
    }
    if preamble.cipher != CIPHER_AES_256_GCM {
        return Err(problem(EngineFileProblem::UnsupportedCipher { cipher: preamble.cipher }));
    }
    let chunk_len = u32::from_le_bytes(header[CHUNK_LEN_AT..KEY_CHECK_AT].try_into().expect("4 bytes"));
    // Version 1 reserved these bytes as zeros; version 2 never writes zeros there, so zeros
    // under version 2 are a version 1 header whose version field was damaged, not a key check
    // to blame the key for.
    let key_check_zero = header[KEY_CHECK_AT..] == [0; KEY_CHECK_LEN];
    let check_misplaced = if preamble.version == 1 { !key_check_zero } else { key_check_zero };
    if chunk_len == 0 || chunk_len > CHUNK_LEN_MAX || check_misplaced {
        return Err(problem(EngineFileProblem::BadHeader));
    }
    Ok((header, preamble, chunk_len))
}

/// Decrypts an engine file from `input` into `output`, with whichever key of the ring its
/// preamble names. Returns the plaintext bytes. On an error, `output` holds a prefix of the
/// plaintext (each chunk written only once authenticated) that must be discarded.
///
/// # Examples
///
/// A file stays readable after the ring's active key rotates, for as long as the ring holds
/// the key it was written under; another key under that id is refused as the wrong key:
///
/// ```
/// use nodedb_wal::{EngineFileProblem, KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &b"vector index segment"[..], &mut file)?;
/// ring.insert(2, SecureKey::generate())?;
/// ring.set_active(2)?;
///
/// let mut plain = Vec::new();
/// let n = decrypt_engine_file(&ring, &mut &file[..], &mut plain)?;
/// assert_eq!((n, &plain[..]), (20, &b"vector index segment"[..]));
///
/// let other = KeyRing::with_active(2, SecureKey::generate());
/// let err = decrypt_engine_file(&other, &mut &file[..], &mut Vec::new()).unwrap_err();
/// assert!(matches!(err, WalError::UnknownKeyId { key_id: 1, .. }), "{err}");
/// let wrong = KeyRing::with_active(1, SecureKey::generate());
/// let err = decrypt_engine_file(&wrong, &mut &file[..], &mut Vec::new()).unwrap_err();
/// assert!(matches!(err, WalError::EngineFile { problem: EngineFileProblem::WrongKey { key_id: 1 } }), "{err}");
/// # Ok::<(), WalError>(())
/// ```
pub fn decrypt_engine_file(ring: &KeyRing, input: &mut impl Read, output: &mut impl Write) -> Result<u64> {
    let (header, preamble, chunk_len) = read_header(input)?;
    let key_id = preamble.key_id;
    let key = ring.get(key_id).ok_or(WalError::UnknownKeyId { segment: None, key_id })?;
    let cipher = FileCipher::new(&key, header, preamble.version, preamble.nonce_epoch);
    let check = KeyCheck::of(preamble.version, &header, &cipher);
    let full = chunk_len as usize + TAG_LEN;
    let mut chunk = Zeroizing::new(vec![0u8; full]);
    let mut plaintext = 0u64;
    for index in 0u64.. {
        let got = read_full(input, &mut chunk).map_err(read_err)?;
        if got < TAG_LEN {
            // The last chunk is missing or cut inside its tag.
            return Err(problem(check.failure(index, key_id, true)));
        }
        let last = got < full;
        let (body, tag) = chunk[..got].split_at_mut(got - TAG_LEN);
        let tag = Tag::try_from(&*tag).expect("16 bytes");
        cipher
            .aead
            .decrypt_inout_detached(&cipher.nonce(index), &cipher.aad(last), body.into(), &tag)
            .map_err(|_| problem(check.failure(index, key_id, false)))?;
        if check == KeyCheck::Mismatched {
            // Chunk 0 authenticated under the key's own check value: the key is right, and the
            // file's check bytes are not what was written.
            return Err(problem(EngineFileProblem::KeyCheckDamaged));
        }
        output.write_all(body).map_err(write_err)?;
        plaintext += body.len() as u64;
        if last {
            break;
        }
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u32, byte: u8) -> KeyRing {
        KeyRing::with_active(id, SecureKey::from_bytes(&mut [byte; 32]))
    }

    fn encrypt(ring: &KeyRing, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encrypt_engine_file(ring, &mut &plain[..], &mut out).unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    fn decrypt(ring: &KeyRing, file: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        decrypt_engine_file(ring, &mut &file[..], &mut out).map(|_| out)
    }

    #[test]
    fn files_of_every_length_round_trip_including_exact_chunk_multiples() {
        let r = ring(3, 1);
        let chunk = ENGINE_CHUNK_LEN as usize;
        for len in [0, 1, 100, chunk - 1, chunk, chunk + 1, 2 * chunk, 3 * chunk + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let file = encrypt(&r, &plain);
            assert_eq!(file.len(), ENGINE_HEADER_LEN + len + (len / chunk + 1) * TAG_LEN, "len {len}");
            assert_eq!(decrypt(&r, &file).unwrap(), plain, "len {len}");
        }
    }

    #[test]
    fn two_encryptions_of_the_same_bytes_differ() {
        let r = ring(3, 1);
        assert_ne!(encrypt(&r, b"same"), encrypt(&r, b"same"), "per-file salt and epoch");
    }
}
