//! Authenticated encryption of the storage engines' own files (columnar segments, vector index
//! segments) with the log's key ring, streamed in chunks so a large file is never held in
//! memory whole.
//!
//! A file is a 40-byte header (the 16-byte preamble under [`SEG_PREAMBLE_MAGIC`], a random
//! 16-byte HKDF salt, the chunk length, 4 reserved bytes) and then chunks, each the AES-256-GCM
//! ciphertext of up to `chunk_len` plaintext bytes followed by its 16-byte tag. Every chunk but
//! the last holds exactly `chunk_len` bytes; the last holds fewer (possibly none), so the end of
//! the file is authenticated too. The key is HKDF-SHA256 of the ring key with the file's salt,
//! so every file has its own key; the nonce is the preamble's random epoch and the chunk index,
//! unique within the file. The associated data is the whole header and a final-chunk flag: a
//! swapped preamble or salt, reordered, dropped or appended chunks, and a flipped byte all fail.
//! The bytes are in docs/FORMAT.md ("Engine segment files").
//!
//! Decryption writes each chunk's plaintext once that chunk is authenticated; on an error the
//! output holds a prefix that the caller must discard.

use std::io::{self, Read, Write};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::cipher::TAG_LEN;
use super::key::{KEY_LEN, SecureKey};
use super::ring::KeyRing;
use crate::error::{EngineFileProblem, IoOp, Result, WalError};
use crate::format::preamble::{CIPHER_AES_256_GCM, PREAMBLE_SIZE, PREAMBLE_VERSION, SEG_PREAMBLE_MAGIC, SegmentPreamble};
use crate::storage::memlock::SecretBox;

/// Bytes of an engine file's header: preamble, salt, chunk length, reserved.
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
pub const ENGINE_HEADER_LEN: usize = PREAMBLE_SIZE + 16 + 4 + 4;
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
const INFO: &[u8] = b"nodedb-wal engine file v1";

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
    header: [u8; ENGINE_HEADER_LEN],
}

impl FileCipher {
    fn new(master: &SecureKey, header: [u8; ENGINE_HEADER_LEN], epoch: u32) -> FileCipher {
        let salt = &header[PREAMBLE_SIZE..PREAMBLE_SIZE + 16];
        let mut okm = [0u8; KEY_LEN];
        Hkdf::<Sha256>::new(Some(salt), master.expose()).expand(INFO, &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
        let aead = SecretBox::new(Aes256Gcm::new_from_slice(&okm).expect("32-byte key"));
        okm.zeroize();
        FileCipher { aead, epoch, header }
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
    let mut random = [0u8; 20];
    crate::crypto::random::fill_random(&mut random);
    let epoch = u32::from_le_bytes(random[16..].try_into().expect("4 bytes"));
    let preamble =
        SegmentPreamble { magic: SEG_PREAMBLE_MAGIC, version: PREAMBLE_VERSION, cipher: CIPHER_AES_256_GCM, key_id, nonce_epoch: epoch };
    let mut header = [0u8; ENGINE_HEADER_LEN];
    header[..PREAMBLE_SIZE].copy_from_slice(&preamble.encode());
    header[PREAMBLE_SIZE..PREAMBLE_SIZE + 16].copy_from_slice(&random[..16]);
    header[PREAMBLE_SIZE + 16..PREAMBLE_SIZE + 20].copy_from_slice(&ENGINE_CHUNK_LEN.to_le_bytes());
    let cipher = FileCipher::new(&key, header, epoch);
    output.write_all(&header).map_err(write_err)?;
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

/// Decrypts an engine file from `input` into `output`, with whichever key of the ring its
/// preamble names. Returns the plaintext bytes. On an error, `output` holds a prefix of the
/// plaintext (each chunk written only once authenticated) that must be discarded.
///
/// # Examples
///
/// A file stays readable after the ring's active key rotates, for as long as the ring holds
/// the key it was written under:
///
/// ```
/// use nodedb_wal::{KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};
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
/// # Ok::<(), WalError>(())
/// ```
pub fn decrypt_engine_file(ring: &KeyRing, input: &mut impl Read, output: &mut impl Write) -> Result<u64> {
    let mut header = [0u8; ENGINE_HEADER_LEN];
    if read_full(input, &mut header).map_err(read_err)? < ENGINE_HEADER_LEN {
        return Err(problem(EngineFileProblem::Truncated));
    }
    let preamble = SegmentPreamble::decode(&header).map_err(|_| problem(EngineFileProblem::NotAnEngineFile))?;
    if preamble.magic != SEG_PREAMBLE_MAGIC {
        return Err(problem(EngineFileProblem::NotAnEngineFile));
    }
    if preamble.version != PREAMBLE_VERSION {
        return Err(problem(EngineFileProblem::UnsupportedVersion { version: preamble.version }));
    }
    if preamble.cipher != CIPHER_AES_256_GCM {
        return Err(problem(EngineFileProblem::UnsupportedCipher { cipher: preamble.cipher }));
    }
    let chunk_len = u32::from_le_bytes(header[PREAMBLE_SIZE + 16..PREAMBLE_SIZE + 20].try_into().expect("4 bytes"));
    let reserved = &header[PREAMBLE_SIZE + 20..];
    if chunk_len == 0 || chunk_len > CHUNK_LEN_MAX || reserved.iter().any(|&b| b != 0) {
        return Err(problem(EngineFileProblem::BadHeader));
    }
    let key = ring.get(preamble.key_id).ok_or(WalError::UnknownKeyId { segment: None, key_id: preamble.key_id })?;
    let cipher = FileCipher::new(&key, header, preamble.nonce_epoch);
    let full = chunk_len as usize + TAG_LEN;
    let mut chunk = Zeroizing::new(vec![0u8; full]);
    let mut plaintext = 0u64;
    for index in 0u64.. {
        let got = read_full(input, &mut chunk).map_err(read_err)?;
        if got < TAG_LEN {
            // The last chunk is missing or cut inside its tag.
            return Err(problem(EngineFileProblem::Truncated));
        }
        let last = got < full;
        let (body, tag) = chunk[..got].split_at_mut(got - TAG_LEN);
        let tag = Tag::try_from(&*tag).expect("16 bytes");
        cipher
            .aead
            .decrypt_inout_detached(&cipher.nonce(index), &cipher.aad(last), body.into(), &tag)
            .map_err(|_| problem(EngineFileProblem::AuthenticationFailed { chunk: index }))?;
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
