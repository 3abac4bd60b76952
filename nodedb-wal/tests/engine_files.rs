//! Encryption of the storage engines' own segment files: what goes in comes out, under any key
//! the ring still holds; a wrong or missing key, a truncated file, a swapped preamble or salt,
//! reordered or appended chunks and a flipped byte are each a typed error, never garbage.

use std::io::{self, Read, Write};

use nodedb_wal::{EngineFileProblem, KeyRing, PREAMBLE_SIZE, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};

const CHUNK: usize = nodedb_wal::crypto::ENGINE_CHUNK_LEN as usize;
const HEADER: usize = nodedb_wal::crypto::ENGINE_HEADER_LEN;
const TAG: usize = 16;

fn key(byte: u8) -> SecureKey {
    SecureKey::from_bytes(&mut [byte; 32])
}

fn plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn encrypt(ring: &KeyRing, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt_engine_file(ring, &mut &bytes[..], &mut out).unwrap();
    out
}

fn decrypt(ring: &KeyRing, file: &[u8]) -> Result<Vec<u8>, WalError> {
    let mut out = Vec::new();
    decrypt_engine_file(ring, &mut &file[..], &mut out).map(|_| out)
}

fn problem(result: Result<Vec<u8>, WalError>) -> EngineFileProblem {
    match result {
        Err(WalError::EngineFile { problem }) => problem,
        other => panic!("expected an engine file error, got {other:?}"),
    }
}

#[test]
fn a_file_decrypts_under_its_key_after_the_ring_rotates() {
    let ring = KeyRing::with_active(1, key(1));
    let bytes = plain(2 * CHUNK + 10);
    let file = encrypt(&ring, &bytes);
    assert_eq!(&file[..4], b"NSEG");
    assert!(!file.windows(64).any(|w| bytes.windows(64).next() == Some(w)), "the plaintext does not appear in the file");
    ring.insert(2, key(2)).unwrap();
    ring.set_active(2).unwrap();
    assert_eq!(decrypt(&ring, &file).unwrap(), bytes, "key 1 still decrypts the file it wrote");
    assert_eq!(decrypt(&ring, &encrypt(&ring, &bytes)).unwrap(), bytes);
}

#[test]
fn a_wrong_key_or_a_missing_key_is_a_typed_error() {
    let file = encrypt(&KeyRing::with_active(1, key(1)), &plain(1000));
    assert_eq!(problem(decrypt(&KeyRing::with_active(1, key(9)), &file)), EngineFileProblem::AuthenticationFailed { chunk: 0 });
    let err = decrypt(&KeyRing::with_active(2, key(1)), &file).unwrap_err();
    assert!(matches!(err, WalError::UnknownKeyId { key_id: 1, segment: None }), "{err}");
    let mut out = Vec::new();
    let err = encrypt_engine_file(&KeyRing::new(), &mut &b"x"[..], &mut out).unwrap_err();
    assert!(matches!(err, WalError::EngineFile { problem: EngineFileProblem::NoActiveKey }), "{err}");
}

// Found by an operator's review: a wrong key and a damaged first chunk are the same
// `AuthenticationFailed { chunk: 0 }`, and the header holds the key's id, not anything that
// tells the key itself, so no reader can tell them apart; the message must say both. Past
// chunk 0 the key is known right (chunk 0 authenticated under it), and the message blamed it too.
#[test]
fn a_first_chunk_failure_says_wrong_key_or_corrupt_first_chunk_and_a_later_one_blames_the_file() {
    let ring = KeyRing::with_active(1, key(1));
    let file = encrypt(&ring, &plain(2 * CHUNK + 10));
    let wrong_key = decrypt(&KeyRing::with_active(1, key(9)), &file).unwrap_err().to_string();
    let mut first = file.clone();
    first[HEADER + 10] ^= 1;
    let first = decrypt(&ring, &first).unwrap_err().to_string();
    assert_eq!(wrong_key, first, "one error for both, so one message");
    assert!(first.contains("wrong key or corrupt first chunk"), "{first}");
    let mut second = file.clone();
    second[HEADER + CHUNK + TAG + 10] ^= 1;
    let second = decrypt(&ring, &second).unwrap_err();
    assert!(matches!(second, WalError::EngineFile { problem: EngineFileProblem::AuthenticationFailed { chunk: 1 } }), "{second}");
    assert!(!second.to_string().contains("wrong key"), "chunk 0 authenticated under the key: {second}");
}

#[test]
fn a_file_cut_anywhere_is_an_error() {
    let ring = KeyRing::with_active(1, key(1));
    let file = encrypt(&ring, &plain(2 * CHUNK + 10));
    let chunk_end = HEADER + CHUNK + TAG;
    for cut in [0, 10, HEADER - 1, HEADER, HEADER + 5, chunk_end - 1, chunk_end, 2 * chunk_end - HEADER, file.len() - TAG, file.len() - 1] {
        let p = problem(decrypt(&ring, &file[..cut]));
        assert!(
            matches!(p, EngineFileProblem::Truncated | EngineFileProblem::AuthenticationFailed { .. }),
            "cut at {cut} of {}: {p:?}",
            file.len()
        );
    }
}

#[test]
fn a_flipped_byte_anywhere_is_detected() {
    let ring = KeyRing::with_active(1, key(1));
    let bytes = plain(CHUNK + 300);
    let file = encrypt(&ring, &bytes);
    // Every header byte, every byte around the chunk boundary and the tags, and a stride through
    // the bodies.
    let boundary = HEADER + CHUNK + TAG;
    let positions =
        (0..HEADER + 64).chain(boundary - 80..boundary + 80).chain((HEADER..file.len()).step_by(509)).chain(file.len() - 40..file.len());
    for at in positions {
        let mut bad = file.clone();
        bad[at] ^= 0x10;
        let result = decrypt(&ring, &bad);
        assert!(result.is_err(), "flip at {at} went unnoticed");
    }
}

#[test]
fn swapped_headers_reordered_chunks_and_appended_bytes_fail() {
    let ring = KeyRing::with_active(1, key(1));
    let (a, b) = (encrypt(&ring, &plain(2 * CHUNK + 5)), encrypt(&ring, &plain(2 * CHUNK + 5)));
    // Another file's preamble (same key id, another epoch), or its whole header (another salt).
    let mut swapped = a.clone();
    swapped[..PREAMBLE_SIZE].copy_from_slice(&b[..PREAMBLE_SIZE]);
    assert!(decrypt(&ring, &swapped).is_err());
    let mut swapped = a.clone();
    swapped[..HEADER].copy_from_slice(&b[..HEADER]);
    assert!(decrypt(&ring, &swapped).is_err());
    // The first two chunks in the other order.
    let c = CHUNK + TAG;
    let mut reordered = a[..HEADER].to_vec();
    reordered.extend_from_slice(&a[HEADER + c..HEADER + 2 * c]);
    reordered.extend_from_slice(&a[HEADER..HEADER + c]);
    reordered.extend_from_slice(&a[HEADER + 2 * c..]);
    assert_eq!(problem(decrypt(&ring, &reordered)), EngineFileProblem::AuthenticationFailed { chunk: 0 });
    // Bytes after the last chunk.
    let mut longer = a.clone();
    longer.extend_from_slice(&[0; 7]);
    assert!(decrypt(&ring, &longer).is_err());
    // A WAL segment or anything else is not an engine file.
    assert_eq!(problem(decrypt(&ring, &[0u8; 100])), EngineFileProblem::NotAnEngineFile);
    let mut wal = a.clone();
    wal[..4].copy_from_slice(b"NWAL");
    assert_eq!(problem(decrypt(&ring, &wal)), EngineFileProblem::NotAnEngineFile);
}

/// Yields `len` pattern bytes without holding them.
struct Pattern {
    at: usize,
    len: usize,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len - self.at).min(10_000);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((self.at + i) % 253) as u8;
        }
        self.at += n;
        Ok(n)
    }
}

/// Checks the pattern as it is written, holding nothing.
struct Check {
    at: usize,
}

impl Write for Check {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, ((self.at + i) % 253) as u8, "byte {}", self.at + i);
        }
        self.at += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn large_files_stream_through_in_chunks() {
    let ring = KeyRing::with_active(1, key(1));
    let len = 24 << 20;
    let mut file = Vec::new();
    encrypt_engine_file(&ring, &mut Pattern { at: 0, len }, &mut file).unwrap();
    let mut check = Check { at: 0 };
    // The reader hands the file over in pieces, as a disk read would.
    let mut input = io::BufReader::with_capacity(4096, &file[..]);
    assert_eq!(decrypt_engine_file(&ring, &mut input, &mut check).unwrap(), len as u64);
    assert_eq!(check.at, len);
}
