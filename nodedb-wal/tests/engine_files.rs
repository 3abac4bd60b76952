//! Encryption of the storage engines' own segment files: what goes in comes out, under any key
//! the ring still holds; a wrong or missing key, a truncated file, a swapped preamble or salt,
//! reordered or appended chunks and a flipped byte are each a typed error, never garbage. The
//! header's key check value (version 2) tells a wrong key under the file's key id from damage,
//! and damage to the check value itself from a wrong key. Version 1 files, which have no check
//! value, are read from golden fixtures in `engine_fixtures.rs`.

mod engine_support;

use std::io::{self, Read, Write};

use engine_support::{decrypt, problem};
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

/// The problem decrypting `file` under `ring` reports, after checking that no plaintext was
/// handed out before it (every case here fails at the header or chunk 0).
#[track_caller]
fn refused_at_once(ring: &KeyRing, file: &[u8]) -> EngineFileProblem {
    let mut out = Vec::new();
    let result = decrypt_engine_file(ring, &mut &file[..], &mut out);
    assert!(out.is_empty(), "{} plaintext bytes out before {result:?}", out.len());
    problem(result.map(|_| out))
}

/// Plaintext lengths of every class: empty (one empty chunk), inside one chunk, a chunk exactly
/// (then an empty one), and many chunks.
const LENGTHS: [usize; 7] = [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17];
/// Where the header's key check value lies.
const KEY_CHECK: std::ops::Range<usize> = HEADER - 4..HEADER;

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
    assert_eq!(problem(decrypt(&KeyRing::with_active(1, key(9)), &file)), EngineFileProblem::WrongKey { key_id: 1 });
    let err = decrypt(&KeyRing::with_active(2, key(1)), &file).unwrap_err();
    assert!(matches!(err, WalError::UnknownKeyId { key_id: 1, segment: None }), "{err}");
    let mut out = Vec::new();
    let err = encrypt_engine_file(&KeyRing::new(), &mut &b"x"[..], &mut out).unwrap_err();
    assert!(matches!(err, WalError::EngineFile { problem: EngineFileProblem::NoActiveKey }), "{err}");
}

// Found by an operator's review: a wrong key and a damaged first chunk were the same
// `AuthenticationFailed { chunk: 0 }`, "wrong key or corrupt first chunk", as a version 1 header
// holds nothing that checks the key. Version 2's key check value tells them apart.
#[test]
fn a_wrong_key_under_the_right_id_is_wrong_key_for_files_of_every_length() {
    let ring = KeyRing::with_active(1, key(1));
    let wrong = KeyRing::with_active(1, key(9));
    for len in LENGTHS {
        let file = encrypt(&ring, &plain(len));
        assert_eq!(refused_at_once(&wrong, &file), EngineFileProblem::WrongKey { key_id: 1 }, "len {len}");
        // A wrong key is named before the cut: the right key then reports the cut.
        assert_eq!(refused_at_once(&wrong, &file[..HEADER]), EngineFileProblem::WrongKey { key_id: 1 }, "len {len}");
        assert_eq!(refused_at_once(&ring, &file[..HEADER]), EngineFileProblem::Truncated, "len {len}");
    }
    let message = decrypt(&wrong, &encrypt(&ring, b"x")).unwrap_err().to_string();
    assert!(message.contains("key 1 is not the key this file was written with"), "{message}");
}

// The key check value is part of the header every chunk authenticates, so with a flipped check
// bit chunk 0 fails under the right key too: trying chunk 0 as read cannot tell it from a wrong
// key. The reader tries it under the value its key gives instead.
#[test]
fn a_flipped_bit_in_the_key_check_value_is_header_damage_not_a_wrong_key() {
    let ring = KeyRing::with_active(1, key(1));
    let wrong = KeyRing::with_active(1, key(9));
    for len in LENGTHS {
        let file = encrypt(&ring, &plain(len));
        for bit in 0..KEY_CHECK.len() * 8 {
            let mut bad = file.clone();
            bad[KEY_CHECK.start + bit / 8] ^= 1 << (bit % 8);
            assert_eq!(refused_at_once(&ring, &bad), EngineFileProblem::KeyCheckDamaged, "len {len}, bit {bit}");
            assert_eq!(refused_at_once(&wrong, &bad), EngineFileProblem::WrongKey { key_id: 1 }, "len {len}, bit {bit}");
        }
    }
    let mut bad = encrypt(&ring, b"x");
    bad[KEY_CHECK.start] ^= 1;
    let message = decrypt(&ring, &bad).unwrap_err().to_string();
    assert!(message.contains("key check value is damaged") && message.contains("the key is right"), "{message}");
}

#[test]
fn a_damaged_first_chunk_is_damage_and_a_later_one_too_neither_blames_the_key() {
    let ring = KeyRing::with_active(1, key(1));
    let file = encrypt(&ring, &plain(2 * CHUNK + 10));
    let mut first = file.clone();
    first[HEADER + 10] ^= 1;
    assert_eq!(refused_at_once(&ring, &first), EngineFileProblem::FirstChunkDamaged);
    let first = decrypt(&ring, &first).unwrap_err().to_string();
    assert!(first.contains("chunk 0 was altered") && first.contains("the key is right"), "{first}");
    assert!(!first.contains("wrong key"), "{first}");
    let mut second = file.clone();
    second[HEADER + CHUNK + TAG + 10] ^= 1;
    let second = decrypt(&ring, &second).unwrap_err();
    assert!(matches!(second, WalError::EngineFile { problem: EngineFileProblem::AuthenticationFailed { chunk: 1 } }), "{second}");
    assert!(!second.to_string().contains("wrong key"), "chunk 0 authenticated under the key: {second}");
}

/// What a flipped bit at header byte `at` of a version 2 file must give under the right key.
fn header_flip_gives(at: usize, found: &Result<Vec<u8>, WalError>) -> bool {
    let p = match found {
        Err(WalError::UnknownKeyId { key_id, segment: None }) => return (8..12).contains(&at) && *key_id != 1,
        Err(WalError::EngineFile { problem }) => *problem,
        _ => return false,
    };
    match at {
        // Magic, and the preamble's reserved byte.
        0..4 | 7 => p == EngineFileProblem::NotAnEngineFile,
        4..6 => matches!(p, EngineFileProblem::UnsupportedVersion { .. }),
        6 => matches!(p, EngineFileProblem::UnsupportedCipher { .. }),
        // The nonce epoch: covered by nothing but the chunks' associated data.
        12..16 => p == EngineFileProblem::FirstChunkDamaged,
        // The salt: another derived key, which no key check tells from a wrong ring key.
        16..32 => p == EngineFileProblem::WrongKey { key_id: 1 },
        // The chunk length: out of bounds, or chunk 0 read at the wrong length.
        32..36 => matches!(p, EngineFileProblem::BadHeader | EngineFileProblem::FirstChunkDamaged),
        36..40 => p == EngineFileProblem::KeyCheckDamaged,
        _ => false,
    }
}

#[test]
fn every_flipped_header_bit_gives_the_error_of_its_field() {
    let ring = KeyRing::with_active(1, key(1));
    for len in [0, 100, CHUNK + 5] {
        let file = encrypt(&ring, &plain(len));
        for bit in 0..HEADER * 8 {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let found = decrypt(&ring, &bad);
            assert!(header_flip_gives(bit / 8, &found), "len {len}, bit {bit}: {found:?}");
        }
    }
}

#[test]
fn a_file_cut_anywhere_is_an_error() {
    let ring = KeyRing::with_active(1, key(1));
    let file = encrypt(&ring, &plain(2 * CHUNK + 10));
    let chunk_end = HEADER + CHUNK + TAG;
    for cut in [0, 10, HEADER - 1, HEADER, HEADER + 5, chunk_end - 1, chunk_end, 2 * chunk_end - HEADER, file.len() - TAG, file.len() - 1] {
        let p = problem(decrypt(&ring, &file[..cut]));
        assert!(
            matches!(
                p,
                EngineFileProblem::Truncated | EngineFileProblem::FirstChunkDamaged | EngineFileProblem::AuthenticationFailed { .. }
            ),
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
    assert_eq!(problem(decrypt(&ring, &reordered)), EngineFileProblem::FirstChunkDamaged);
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
