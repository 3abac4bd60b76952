//! Targets for the files the crate reads outside a log directory: the storage engines'
//! encrypted segment files (`decrypt_engine_file`) and key files (`SecureKey::load`).

use std::sync::OnceLock;

use nodedb_wal::crypto::ENGINE_CHUNK_LEN;
use nodedb_wal::{KeyFileProblem, KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};

/// Plaintext lengths of the base files: empty, one short chunk, a full chunk (then an empty
/// last one), and two chunks.
const PLAIN_LENS: [usize; 4] = [0, 100, ENGINE_CHUNK_LEN as usize, ENGINE_CHUNK_LEN as usize + 37];

fn plain(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 253) as u8).collect()
}

fn ring() -> KeyRing {
    KeyRing::with_active(3, SecureKey::from_bytes(&mut [0xC3; 32]))
}

/// The base files, encrypted once per process (their salt and epoch are random).
fn bases() -> &'static [Vec<u8>] {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        PLAIN_LENS
            .iter()
            .map(|&len| {
                let mut file = Vec::new();
                encrypt_engine_file(&ring(), &mut &plain(len)[..], &mut file).expect("a base engine file");
                file
            })
            .collect()
    })
}

/// An engine file, changed as the input says, decrypts only if it is unchanged, and then to
/// exactly the plaintext written; any other file is a typed error, never a panic or garbage.
///
/// Input: which base file, then the file's new bytes as a difference from it (XOR, and the new
/// length), so that an input means the same change whatever salt and epoch the file was drawn.
pub fn engine_file(data: &[u8]) {
    let Some((&which, delta)) = data.split_first() else { return };
    let index = usize::from(which) % PLAIN_LENS.len();
    let base = &bases()[index];
    let file: Vec<u8> = delta.iter().enumerate().map(|(i, d)| d ^ base.get(i).copied().unwrap_or(0)).collect();
    let mut out = Vec::new();
    match decrypt_engine_file(&ring(), &mut &file[..], &mut out) {
        Ok(n) => {
            assert_eq!(&file, base, "only the file as written decrypts");
            assert_eq!((n as usize, out), (PLAIN_LENS[index], plain(PLAIN_LENS[index])));
        }
        Err(WalError::EngineFile { .. } | WalError::UnknownKeyId { segment: None, .. }) => {}
        Err(other) => panic!("an engine file's bytes give an engine file error: {other:?}"),
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

/// Seeds: each base file unchanged (a zero difference), and one cut inside its last tag.
pub fn engine_file_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (which, base) in (0u8..).zip(bases()) {
        seeds.push([&[which][..], &vec![0; base.len()]].concat());
        seeds.push([&[which][..], &vec![0; base.len() - 5]].concat());
    }
    seeds
}
