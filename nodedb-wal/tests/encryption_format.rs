//! The encryption envelope is what docs/FORMAT.md writes down, and stays so: records of a
//! segment the log wrote open with nothing but the documented recipe (HKDF-SHA256 of the ring
//! key, the header frame's `kdf_salt` and the segment id; nonce = epoch || LSN; associated data
//! = preamble || header bytes 4..48), and fixed inputs give the answers an implementation outside
//! this crate (Python's `cryptography`, from FORMAT.md alone) computed. Round trips alone would
//! pass after a change to the info string, the nonce or the associated data, and every
//! encrypted log already written would then fail as `WrongKey`.
//!
//! Also here: a wrong key is refused before recovery cuts anything, torn tail or not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use nodedb_wal::format::frame::{FLAG_ENCRYPTED, FLAG_GROUP_CONTINUES, HEADER_LEN};
use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{
    CIPHER_AES_256_GCM, EngineFileProblem, KeyRing, Lsn, Record, RecordHeader, RecordType, Scope, SecureKey, SegmentId, SegmentPreamble,
    SegmentedWal, SegmentedWalConfig, SimStorage, WalError, decrypt_engine_file,
};
use sha2::Sha256;

const DIR: &str = "/enc-format";
const MASTER: [u8; 32] = [0x42; 32];

fn ring(byte: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [byte; 32])))
}

fn config(ring: Arc<KeyRing>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.key_ring = Some(ring);
    c
}

fn seg(id: u64) -> PathBuf {
    Path::new(DIR).join(format!("{id:020}.wal"))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Every data record of an encrypted segment file, opened by FORMAT.md's recipe alone:
/// (LSN, plaintext).
fn open_by_the_recipe(bytes: &[u8], master: &[u8; 32]) -> Vec<(u64, Vec<u8>)> {
    let preamble = &bytes[..16];
    assert_eq!((&preamble[..4], preamble[6]), (&b"NWAL"[..], CIPHER_AES_256_GCM));
    let epoch = le_u32(preamble, 12);
    // The header frame: its payload holds the segment id and, at 24..40, the kdf_salt.
    let header_payload = &bytes[16 + HEADER_LEN..16 + HEADER_LEN + le_u32(bytes, 16 + 28) as usize];
    let segment_id = le_u64(header_payload, 0);
    let mut info = b"nodedb-wal segment key v1".to_vec();
    info.extend_from_slice(&segment_id.to_le_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&header_payload[24..40]), master).expand(&info, &mut key).unwrap();
    let aead = Aes256Gcm::new_from_slice(&key).unwrap();
    let mut records = Vec::new();
    let mut at = 16 + HEADER_LEN + header_payload.len();
    while at + HEADER_LEN <= bytes.len() && le_u16(bytes, at + 4) == 0x574E {
        let (record_type, lsn, len) = (le_u16(bytes, at + 6), le_u64(bytes, at + 8), le_u32(bytes, at + 28) as usize);
        let frame = &bytes[at..at + HEADER_LEN + len];
        at += frame.len();
        match record_type {
            0x8003 => break, // SEGMENT_END
            0x8001..=0x800F => continue,
            _ => {}
        }
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&epoch.to_le_bytes());
        nonce[4..].copy_from_slice(&lsn.to_le_bytes());
        let mut aad = preamble.to_vec();
        aad.extend_from_slice(&frame[4..HEADER_LEN]);
        let (ciphertext, tag) = frame[HEADER_LEN..].split_at(len - 16);
        let mut plain = ciphertext.to_vec();
        let tag = Tag::try_from(tag).unwrap();
        aead.decrypt_inout_detached(&Nonce::from(nonce), &aad, plain.as_mut_slice().into(), &tag)
            .unwrap_or_else(|_| panic!("record {lsn} does not open by the documented recipe"));
        records.push((lsn, plain));
    }
    records
}

#[test]
fn records_the_log_wrote_open_by_the_documented_recipe_alone() {
    let sim = SimStorage::new(31, FaultConfig::default());
    let keys = ring(MASTER[0]);
    let wal = SegmentedWal::open_with(sim.clone(), config(Arc::clone(&keys))).unwrap();
    for i in 0..20u32 {
        let scope = Scope { database: i, tenant: 2 * i, vshard: 3 * i };
        let payload = format!("record {i} ").repeat(1 + i as usize * 7);
        wal.append(Record::new(RecordType::optional(0x100 + i as u16), payload.as_bytes()).scoped(scope)).unwrap();
    }
    wal.append_group(&[Record::new(RecordType::required(0x9000), b"first of a group"), Record::new(RecordType::optional(0x200), b"last")])
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A second life: recovery seals segment 1 and the records go on in segment 2.
    let wal = SegmentedWal::open_with(sim.clone(), config(Arc::clone(&keys))).unwrap();
    wal.append_durable(Record::new(RecordType::optional(0x100), b"after a restart")).unwrap();
    let expected: Vec<(u64, Vec<u8>)> =
        wal.read_from(Lsn::FIRST).unwrap().map(|r| r.map(|r| (r.lsn.0, r.payload.into_vec())).unwrap()).collect();
    let segments = wal.segments();
    drop(wal);
    assert!(segments.len() >= 2, "{segments:?}");
    let by_recipe: Vec<(u64, Vec<u8>)> =
        segments.iter().flat_map(|s| open_by_the_recipe(&sim.read_file(&seg(s.id.0)).unwrap(), &MASTER)).collect();
    assert_eq!(by_recipe, expected);
}

// Computed by an implementation of FORMAT.md in Python (`cryptography` 48: HKDF, AESGCM), not
// by this crate.
const WAL_KNOWN_ANSWER: &str =
    "4369b11b73348f73d3a7b6f7873c2015bdc49e2ec37185c33b9498b5c383e30d011237df60f7f5612f8386bb66981cfc9bbc7c7eea04145eac";

#[test]
fn a_segment_record_is_sealed_as_an_outside_implementation_of_the_format_seals_it() {
    let master = SecureKey::from_bytes(&mut std::array::from_fn(|i| i as u8));
    let kdf_salt: [u8; 16] = std::array::from_fn(|i| 0xA0 + i as u8);
    let preamble = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 3, nonce_epoch: 0x0102_0304, ..SegmentPreamble::plaintext_wal() };
    let cipher = nodedb_wal::crypto::SegmentCipher::derive(&master, &kdf_salt, SegmentId(7), &preamble);
    let plaintext = b"a record, sealed by the documented recipe";
    let header = RecordHeader {
        lsn: Lsn(42),
        durable_lsn: Lsn(41),
        salt: 0xDEAD_BEEF,
        record_type: RecordType::optional(0x0100),
        scope: Scope { database: 5, tenant: 6, vshard: 7 },
        payload_len: (plaintext.len() + 16) as u32,
        flags: FLAG_ENCRYPTED | FLAG_GROUP_CONTINUES,
    };
    let mut encoded = [0u8; HEADER_LEN];
    header.encode_into(&mut encoded);
    let mut sealed = plaintext.to_vec();
    let tag = cipher.seal(header.lsn, &encoded, &mut sealed);
    sealed.extend_from_slice(&tag);
    assert_eq!(sealed, unhex(WAL_KNOWN_ANSWER));
}

// Engine files of 40 and 32 plaintext bytes in chunks of 16 (a short last chunk, and an empty
// one after an exact multiple), ring key 0..32 under id 3, salt 0x10..0x20, epoch 0x0A0B0C0D:
// written by the same Python implementation of FORMAT.md. Version 1 (key check bytes zero):
const ENGINE_40: &str = "4e53454701000100030000000d0c0b0a101112131415161718191a1b1c1d1e1f10000000000000003accd08e34e38db7be85b7a7fe4b4b68ffeb7962460bf64e669b34b7f709e0f33c2cfa0259be48e2563155e24aeed6256f5ea7c9cbe0569edda493356ae9f5cbaa76501c6db6fe5734f49a92a19b0acb3ee9f8f08d26241e";
const ENGINE_32: &str = "4e53454701000100030000000d0c0b0a101112131415161718191a1b1c1d1e1f10000000000000003accd08e34e38db7be85b7a7fe4b4b68ffeb7962460bf64e669b34b7f709e0f33c2cfa0259be48e2563155e24aeed6256f5ea7c9cbe0569edda493356ae9f5cb252336ee2c34f18405f209b820c1e4b7";

// Version 2, the same inputs: the key check value (header bytes 36..40) is `ff85a310`, the first
// 4 bytes of HKDF-SHA256 with info "nodedb-wal engine file v2 key check".
const ENGINE_40_V2: &str = "4e53454702000100030000000d0c0b0a101112131415161718191a1b1c1d1e1f10000000ff85a3103accd08e34e38db7be85b7a7fe4b4b688d756ded1775346e6e78ec68b69490ae3c2cfa0259be48e2563155e24aeed6251dc0b3469a9e94bed5474bea2b748596aa76501c6db6fe57466a8e1df0e5c8eb360a202fccbb5443";
const ENGINE_32_V2: &str = "4e53454702000100030000000d0c0b0a101112131415161718191a1b1c1d1e1f10000000ff85a3103accd08e34e38db7be85b7a7fe4b4b688d756ded1775346e6e78ec68b69490ae3c2cfa0259be48e2563155e24aeed6251dc0b3469a9e94bed5474bea2b748596940b4deb1309152a35363825c526527e";

#[test]
fn engine_files_written_by_an_outside_implementation_of_the_format_decrypt() {
    let keys = KeyRing::with_active(3, SecureKey::from_bytes(&mut std::array::from_fn(|i| i as u8)));
    let wrong = KeyRing::with_active(3, SecureKey::from_bytes(&mut [7; 32]));
    for (file, len, version) in [(ENGINE_40, 40, 1), (ENGINE_32, 32, 1), (ENGINE_40_V2, 40, 2), (ENGINE_32_V2, 32, 2)] {
        let expected: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut plain = Vec::new();
        decrypt_engine_file(&keys, &mut &unhex(file)[..], &mut plain).unwrap();
        assert_eq!(plain, expected, "{len} bytes, version {version}");
        let err = decrypt_engine_file(&wrong, &mut &unhex(file)[..], &mut Vec::new()).unwrap_err();
        let expected =
            if version == 1 { EngineFileProblem::AuthenticationFailed { chunk: 0 } } else { EngineFileProblem::WrongKey { key_id: 3 } };
        assert!(matches!(err, WalError::EngineFile { problem } if problem == expected), "version {version}: {err}");
    }
}

#[test]
fn a_wrong_key_is_refused_before_recovery_cuts_a_torn_tail_and_the_right_key_then_cuts_it() {
    let sim = SimStorage::new(32, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(ring(7))).unwrap();
    for i in 0..3u8 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[i; 300])).unwrap();
    }
    // A power cut, not a close (which seals the segment after its last batch).
    let crashed = sim.crash(5);
    drop(wal);
    let sim = crashed;
    // Half a batch that never finished: a block of debris after the last synced one.
    let mut bytes = sim.read_file(&seg(1)).unwrap();
    let end = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
    let at = end.next_multiple_of(4096);
    bytes.resize(at, 0);
    bytes.extend_from_slice(&[0xAB; 4096]);
    sim.write_file(&seg(1), &bytes);

    let err = SegmentedWal::open_with(sim.clone(), config(ring(8))).unwrap_err();
    assert!(matches!(err, WalError::WrongKey { segment: SegmentId(1), key_id: 3 }), "{err}");
    assert_eq!(sim.read_file(&seg(1)).unwrap(), bytes, "nothing cut, nothing sealed");
    assert!(sim.read_file(&seg(2)).is_none(), "no segment created");

    let wal = SegmentedWal::open_with(sim.clone(), config(ring(7))).unwrap();
    assert!(wal.recovery_info().torn_tail.is_some());
    let payloads: Vec<Vec<u8>> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().payload.into_vec()).collect();
    assert_eq!(payloads, (0..3u8).map(|i| vec![i; 300]).collect::<Vec<_>>());
}
