//! Targets for the files the crate reads outside a log directory: the storage engines'
//! encrypted segment files (`decrypt_engine_file`) and key files (`SecureKey::load`).

use std::sync::OnceLock;

use nodedb_wal::crypto::{ENGINE_CHUNK_LEN, ENGINE_HEADER_LEN};
use nodedb_wal::{EngineFileProblem, KeyFileProblem, KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};

/// Plaintext lengths of the base files this build writes: empty, one short chunk, a full chunk
/// (then an empty last one), and two chunks.
const PLAIN_LENS: [usize; 4] = [0, 100, ENGINE_CHUNK_LEN as usize, ENGINE_CHUNK_LEN as usize + 37];

/// Where a version 2 header holds its key check value.
const KEY_CHECK: std::ops::Range<usize> = ENGINE_HEADER_LEN - 4..ENGINE_HEADER_LEN;

fn plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 253) as u8).collect()
}

fn ring() -> KeyRing {
    KeyRing::with_active(3, SecureKey::from_bytes(&mut [0xC3; 32]))
}

/// A file the fuzzer changes: its bytes, the ring that wrote it, its plaintext, and whether it
/// is of version 1 (no key check value).
struct Base {
    file: Vec<u8>,
    ring: fn() -> KeyRing,
    plain: Vec<u8>,
    version_1: bool,
}

/// Another key under the same id as `ring`'s.
fn wrong_ring(ring: &KeyRing) -> KeyRing {
    let (id, _) = ring.active().expect("the bases' rings have an active key");
    KeyRing::with_active(id, SecureKey::from_bytes(&mut [0x5E; 32]))
}

/// The ring of `nodedb-wal/tests/engine_fixtures.rs`, which wrote the version 1 fixtures.
fn fixture_ring() -> KeyRing {
    KeyRing::with_active(5, SecureKey::from_bytes(&mut std::array::from_fn(|i| (i as u8).wrapping_mul(3).wrapping_add(1))))
}

fn fixture_plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 11 + i / 241) as u8).collect()
}

/// The version 1 golden fixtures as the build before version 2 wrote them (no key check value),
/// so the reader's version 1 path is fuzzed too, then files this build writes, encrypted once
/// per process (their salt and epoch are random).
fn bases() -> &'static [Base] {
    static BASES: OnceLock<Vec<Base>> = OnceLock::new();
    BASES.get_or_init(|| {
        let fixtures: [(&[u8], usize); 3] = [
            (include_bytes!("../../nodedb-wal/tests/fixtures/engine-v1/empty"), 0),
            (include_bytes!("../../nodedb-wal/tests/fixtures/engine-v1/short"), 100),
            (include_bytes!("../../nodedb-wal/tests/fixtures/engine-v1/chunks"), 2 * ENGINE_CHUNK_LEN as usize + 37),
        ];
        let old = fixtures.into_iter().map(|(file, len)| Base {
            file: file.to_vec(),
            ring: fixture_ring,
            plain: fixture_plain(len),
            version_1: true,
        });
        let new = PLAIN_LENS.iter().map(|&len| {
            let mut file = Vec::new();
            encrypt_engine_file(&ring(), &mut &plain(len)[..], &mut file).expect("a base engine file");
            Base { file, ring, plain: plain(len), version_1: false }
        });
        new.chain(old).collect()
    })
}

/// Whom a failure to decrypt `file`, changed from `base`, under the key that wrote it may
/// blame: with the header as written, the key is right and only damage may be reported; with a
/// version 2 file changed in its key check bytes alone, exactly that (a damaged header where
/// they became zeros).
fn check_blame(base: &Base, file: &[u8], problem: EngineFileProblem) {
    let header_kept = file.get(..ENGINE_HEADER_LEN) == Some(&base.file[..ENGINE_HEADER_LEN]);
    let key_blamed = matches!(problem, EngineFileProblem::WrongKey { .. } | EngineFileProblem::KeyCheckDamaged);
    assert!(!(header_kept && key_blamed), "a file with its header as written blames the key: {problem:?}");
    let only_key_check = file.len() == base.file.len()
        && file[..KEY_CHECK.start] == base.file[..KEY_CHECK.start]
        && file[KEY_CHECK.end..] == base.file[KEY_CHECK.end..];
    if only_key_check && !header_kept && !base.version_1 {
        // Zeros there are what a version 1 header holds: no writer's check value, a damaged header.
        let expected =
            if file[KEY_CHECK].iter().all(|&b| b == 0) { EngineFileProblem::BadHeader } else { EngineFileProblem::KeyCheckDamaged };
        assert_eq!(problem, expected, "only the key check bytes changed");
    }
}

/// An engine file, changed as the input says, decrypts only if it is unchanged, and then to
/// exactly the plaintext written; any other file is a typed error, never a panic or garbage.
/// The error blames the key only when the header changed, and a change confined to a version 2
/// file's key check value is `KeyCheckDamaged`. Under another key with the file's key id
/// nothing decrypts, and a version 2 file whose header is as written is `WrongKey` whatever its
/// chunks hold.
///
/// Input: which base file, then the file's new bytes as a difference from it (XOR, and the new
/// length), so that an input means the same change whatever salt and epoch the file was drawn.
pub fn engine_file(data: &[u8]) {
    let Some((&which, delta)) = data.split_first() else { return };
    let base = &bases()[usize::from(which) % bases().len()];
    let file: Vec<u8> = delta.iter().enumerate().map(|(i, d)| d ^ base.file.get(i).copied().unwrap_or(0)).collect();
    let ring = (base.ring)();
    let mut out = Vec::new();
    match decrypt_engine_file(&ring, &mut &file[..], &mut out) {
        Ok(n) => {
            assert_eq!(file, base.file, "only the file as written decrypts");
            assert_eq!((n as usize, &out), (base.plain.len(), &base.plain));
        }
        Err(WalError::EngineFile { problem }) => check_blame(base, &file, problem),
        Err(WalError::UnknownKeyId { segment: None, .. }) => {}
        Err(other) => panic!("an engine file's bytes give an engine file error: {other:?}"),
    }
    let wrong = decrypt_engine_file(&wrong_ring(&ring), &mut &file[..], &mut Vec::new());
    assert!(wrong.is_err(), "a file decrypted under another key");
    if !base.version_1 && file.get(..ENGINE_HEADER_LEN) == Some(&base.file[..ENGINE_HEADER_LEN]) {
        let wrong = wrong.expect_err("checked above");
        assert!(matches!(wrong, WalError::EngineFile { problem: EngineFileProblem::WrongKey { key_id: 3 } }), "{wrong:?}");
    }
}

/// A key file of any content loads if and only if it holds exactly 32 bytes, and then it is
/// the key those bytes make: a file encrypted under one decrypts under the other.
pub fn key_file(data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = crate::RealDir::with(&[]);
    let path = dir.0.join("key");
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("a key file");
    std::io::Write::write_all(&mut file, data).expect("key bytes");
    drop(file);
    let loaded = SecureKey::load(&path);
    let Ok(raw) = <[u8; 32]>::try_from(data) else {
        let err = loaded.expect_err("a key file of another length than 32 bytes is refused");
        assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Length { len }, .. } if len == data.len() as u64), "{err:?}");
        return;
    };
    let loaded = KeyRing::with_active(1, loaded.expect("a private 32-byte key file loads"));
    let made = KeyRing::with_active(1, SecureKey::from_bytes(&mut { raw }));
    let mut sealed = Vec::new();
    encrypt_engine_file(&loaded, &mut &b"key"[..], &mut sealed).expect("encrypts");
    let mut out = Vec::new();
    let result = decrypt_engine_file(&made, &mut &sealed[..], &mut out);
    assert!(result.is_ok() && out == b"key", "the loaded key is the file's bytes: {result:?}");
}

/// Seeds: each base file unchanged (a zero difference), one cut inside its last tag, and (for
/// version 2) one with a bit of its key check value flipped.
pub fn engine_file_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (which, base) in (0u8..).zip(bases()) {
        let len = base.file.len();
        seeds.push([&[which][..], &vec![0; len]].concat());
        seeds.push([&[which][..], &vec![0; len - 5]].concat());
        if !base.version_1 {
            let mut flip = vec![0; len];
            flip[KEY_CHECK.start + 1] = 0x20;
            seeds.push([&[which][..], &flip].concat());
        }
    }
    seeds
}
