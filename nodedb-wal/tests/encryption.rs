//! Encryption at rest: what is written is ciphertext, what is read back is the plaintext, and
//! any change to an encrypted record, its header or its segment's preamble is an error, never
//! garbage, even when the attacker recomputes the CRC. A key change ends the open segment at
//! the next append while old keys keep decrypting old segments, and no (key, nonce) pair is ever used for two different
//! records: not across restarts that rewind the LSN, truncations, or a restored old copy.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::disk_with;
use common::warnings::warnings_during;
use nodedb_wal::format::frame::{HEADER_LEN, RecordHeader, decode_frame, seal_frame};
use nodedb_wal::format::meta::SegmentHeaderPayload;
use nodedb_wal::format::preamble::{CIPHER_AES_256_GCM, CIPHER_NONE, PREAMBLE_SIZE, SegmentPreamble};
use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const DIR: &str = "/enc";

fn ring(key_id: u32, byte: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(key_id, SecureKey::from_bytes(&mut [byte; 32])))
}

fn config(ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.key_ring = ring;
    c
}

fn seg(id: u64) -> PathBuf {
    Path::new(DIR).join(format!("{id:020}.wal"))
}

fn rec(payload: &[u8]) -> Record<'_> {
    Record::new(RecordType::optional(0x100), payload)
}

fn payload(i: u32) -> Vec<u8> {
    format!("secret record {i} ").repeat(1 + i as usize % 5).into_bytes()
}

fn read_all(sim: &SimStorage, ring: Option<Arc<KeyRing>>) -> Result<Vec<Vec<u8>>, WalError> {
    let wal = SegmentedWal::open_with(sim.clone(), config(ring))?;
    let from = wal.recovery_info().first_lsn;
    wal.read_from(from)?.map(|r| r.map(|r| r.payload.into_vec())).collect()
}

/// Every valid frame of a segment file: (offset, header).
fn frames(bytes: &[u8]) -> Vec<(usize, RecordHeader)> {
    let mut out = Vec::new();
    let mut at = PREAMBLE_SIZE;
    while let Ok(h) = decode_frame(&bytes[at.min(bytes.len())..]) {
        out.push((at, h));
        at += h.frame_len();
    }
    out
}

#[test]
fn records_are_stored_encrypted_and_read_back_in_plaintext() {
    let sim = SimStorage::new(1, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 7)))).unwrap();
    for i in 0..20 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    let raw: Vec<_> = wal.read_from_raw(Lsn(1)).unwrap().map(Result::unwrap).collect();
    assert!(raw.iter().zip(0..).all(|(r, i)| r.payload.len() == payload(i).len() + 16 && r.payload[..8] != payload(i)[..8]));
    drop(wal);
    let file = sim.read_file(&seg(1)).unwrap();
    assert!(!file.windows(13).any(|w| w == b"secret record"), "plaintext reached the disk");
    assert_eq!(SegmentPreamble::decode(&file).unwrap().cipher, CIPHER_AES_256_GCM);
    assert_eq!(read_all(&sim, Some(ring(1, 7))).unwrap(), (0..20).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_wrong_key_a_missing_key_and_a_missing_ring_are_typed_errors() {
    let sim = SimStorage::new(2, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 7)))).unwrap();
    wal.append_durable(rec(b"hello")).unwrap();
    drop(wal);
    assert!(matches!(read_all(&sim, Some(ring(1, 8))), Err(WalError::WrongKey { key_id: 1, .. })));
    assert!(matches!(read_all(&sim, Some(ring(2, 7))), Err(WalError::UnknownKeyId { key_id: 1, segment: Some(_) })));
    assert!(matches!(read_all(&sim, None), Err(WalError::KeyRingMissing { .. })));
}

/// Found by an adversarial review: the owner opened with a wrong key under the right id and
/// appended under it, after which no single ring could read both the old records and the new.
#[test]
fn a_wrong_key_under_the_right_id_is_refused_at_open_before_anything_is_appended() {
    let sim = disk_with(9, Path::new(DIR), &two_segments());
    let before = [sim.read_file(&seg(1)).unwrap(), sim.read_file(&seg(2)).unwrap()];
    let err = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 8)))).unwrap_err();
    assert!(matches!(err, WalError::WrongKey { segment, key_id: 1 } if segment.0 == 1), "{err}");
    assert_eq!([sim.read_file(&seg(1)).unwrap(), sim.read_file(&seg(2)).unwrap()], before, "the refusal wrote nothing");
    assert!(sim.read_file(&seg(3)).is_none(), "no segment was created");
    // A read-only look with the wrong key is refused the same way; with the right key both open.
    assert!(matches!(ReadOnlyWal::open_with(sim.clone(), DIR, Some(ring(1, 8))), Err(WalError::WrongKey { .. })));
    assert_eq!(read_all(&sim, Some(ring(1, 7))).unwrap().len(), 4);
}

/// Segment 1 sealed with three encrypted records, segment 2 after it with one more.
fn two_segments() -> Vec<(PathBuf, Vec<u8>)> {
    let sim = SimStorage::new(3, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 7)))).unwrap();
    for i in 0..3 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    drop(wal);
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 7)))).unwrap();
    wal.append_durable(rec(&payload(3))).unwrap();
    drop(wal);
    vec![(seg(1), sim.read_file(&seg(1)).unwrap()), (seg(2), sim.read_file(&seg(2)).unwrap())]
}

#[test]
fn a_change_of_any_byte_of_an_encrypted_record_its_header_or_the_preamble_is_detected() {
    let files = two_segments();
    let expected: Vec<_> = (0..4).map(payload).collect();
    assert_eq!(read_all(&disk_with(9, Path::new(DIR), &files), Some(ring(1, 7))).unwrap(), expected);
    let original = &files[0].1;
    let data_frames: Vec<_> = frames(original).into_iter().filter(|(_, h)| !h.record_type.is_meta()).collect();
    assert_eq!(data_frames.len(), 3);
    let positions = (0..PREAMBLE_SIZE).chain(data_frames.iter().flat_map(|(at, h)| *at..at + h.frame_len()));
    for at in positions {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        // The attacker recomputes the CRC of the frame the byte falls in (unless the byte is part
        // of the CRC itself, which recomputing would simply restore).
        if let Some((start, h)) = data_frames.iter().find(|(s, h)| (s + 4..s + h.frame_len()).contains(&at)) {
            seal_frame(&mut bytes[*start..start + h.frame_len()], h.record_type);
        }
        let tampered = [(seg(1), bytes), files[1].clone()];
        let result = read_all(&disk_with(9, Path::new(DIR), &tampered), Some(ring(1, 7)));
        assert!(result.is_err(), "a flip of byte {at} went unnoticed: {:?}", result.map(|r| r.len()));
    }
}

#[test]
fn rotation_takes_effect_at_the_next_roll_and_old_keys_keep_decrypting() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let keys = ring(1, 7);
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&keys)))).unwrap();
    for i in 0..100 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    keys.insert(2, SecureKey::from_bytes(&mut [8; 32])).unwrap();
    keys.set_active(2).unwrap();
    let before = wal.segments().len();
    for i in 100..200 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    let segments = wal.segments();
    drop(wal);
    let key_ids: Vec<u32> =
        segments.iter().map(|s| SegmentPreamble::decode(&sim.read_file(&seg(s.id.0)).unwrap()).unwrap().key_id).collect();
    assert!(key_ids[..before].iter().all(|&k| k == 1), "segments before the rotation keep key 1: {key_ids:?}");
    assert_eq!(key_ids.last(), Some(&2), "segments after the next roll use key 2: {key_ids:?}");
    assert_eq!(read_all(&sim, Some(Arc::clone(&keys))).unwrap(), (0..200).map(payload).collect::<Vec<_>>());
    let only_new = ring(2, 8);
    assert!(matches!(read_all(&sim, Some(only_new)), Err(WalError::UnknownKeyId { key_id: 1, .. })));
}

// A tool (or a process beside the owner) asks which keys the log needs, holding none of them,
// and hears what the owner would say; a segment a truncation removed after the look is left out.
#[test]
fn a_read_only_look_tells_each_segments_key_without_any_key() {
    let sim = SimStorage::new(6, FaultConfig::default());
    let keys = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&keys)))).unwrap();
    wal.append_durable(rec(b"plaintext, before any key")).unwrap();
    for (id, byte) in [(1, 7), (2, 8)] {
        keys.insert(id, SecureKey::from_bytes(&mut [byte; 32])).unwrap();
        keys.set_active(id).unwrap();
        wal.append_durable(rec(b"under the new key")).unwrap();
    }
    let owner = wal.segment_key_ids().unwrap();
    let expected: Vec<_> =
        [None, Some(1), Some(2)].into_iter().enumerate().map(|(i, k)| (nodedb_wal::SegmentId(i as u64 + 1), k)).collect();
    assert_eq!(owner, expected);
    let look = ReadOnlyWal::open_with(sim.clone(), DIR, None).unwrap();
    assert_eq!(look.segment_key_ids().unwrap(), owner);

    wal.truncate_before(wal.sync().unwrap()).unwrap();
    assert_eq!(look.segment_key_ids().unwrap(), &owner[2..], "truncated since the look: left out, not an error");
}

/// Records every (segment key, nonce) pair on a disk with the bytes it sealed.
fn record_nonces(sim: &SimStorage, seen: &mut HashMap<([u8; 16], u64, u32, u64), Vec<u8>>) {
    use nodedb_wal::storage::Storage;
    for name in sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".wal")) {
        let bytes = sim.read_file(&Path::new(DIR).join(&name)).unwrap();
        let Ok(preamble) = SegmentPreamble::decode(&bytes) else { continue };
        let Ok(head) = decode_frame(&bytes[PREAMBLE_SIZE..]) else { continue };
        let header = SegmentHeaderPayload::decode(&bytes[PREAMBLE_SIZE + HEADER_LEN..PREAMBLE_SIZE + head.frame_len()]).unwrap();
        for (at, h) in frames(&bytes).into_iter().filter(|(_, h)| !h.record_type.is_meta()) {
            // The segment key is derived from (ring key, kdf_salt, segment id); the nonce is
            // (epoch, LSN). One ring key throughout this test.
            let key = (header.kdf_salt, header.segment_id.0, preamble.nonce_epoch, h.lsn.0);
            let sealed = bytes[at + HEADER_LEN..at + h.frame_len()].to_vec();
            if let Some(before) = seen.insert(key, sealed.clone()) {
                assert_eq!(before, sealed, "nonce reused for different data: {key:?}");
            }
        }
    }
}

#[test]
fn no_key_and_nonce_pair_repeats_across_crashes_truncations_and_a_restored_copy() {
    let mut seen = HashMap::new();
    let mut sim = SimStorage::new(6, FaultConfig::default());
    let mut saved: Option<Vec<(PathBuf, Vec<u8>)>> = None;
    for life in 0..12u32 {
        let wal = SegmentedWal::open_with(sim.clone(), config(Some(ring(1, 7)))).unwrap();
        for i in 0..40 {
            let lsn = wal.append(rec(&payload(life * 100 + i))).unwrap();
            if i % 7 == 0 {
                wal.wait_durable(lsn).unwrap();
            }
        }
        if life % 3 == 2 {
            let durable = wal.durable_lsn();
            wal.truncate_before(Lsn(durable.0 / 2)).unwrap();
        }
        record_nonces(&sim, &mut seen);
        if life == 4 {
            use nodedb_wal::storage::Storage;
            let names = sim.list(Path::new(DIR)).unwrap();
            saved = Some(
                names
                    .into_iter()
                    .filter(|n| n.ends_with(".wal"))
                    .map(|n| (Path::new(DIR).join(&n), sim.read_file(&Path::new(DIR).join(&n)).unwrap()))
                    .collect(),
            );
        }
        // Power cut with the last records unsynced: LSNs after the durable point are reissued.
        sim = sim.crash(u64::from(life));
        drop(wal);
        if life == 8 {
            // Restore the copy taken at life 4 and write on from it: its LSNs are reused too.
            sim = disk_with(9, Path::new(DIR), saved.as_ref().unwrap());
        }
    }
    record_nonces(&sim, &mut seen);
    assert!(seen.len() > 300, "the test saw too few records: {}", seen.len());
}

/// As `two_segments`, with no encryption: a forger's segment 1 holds the same LSNs.
fn two_plaintext_segments() -> Vec<(PathBuf, Vec<u8>)> {
    let sim = SimStorage::new(4, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(None)).unwrap();
    for i in 0..3 {
        wal.append_durable(rec(format!("forged {i}").as_bytes())).unwrap();
    }
    drop(wal);
    SegmentedWal::open_with(sim.clone(), config(None)).unwrap().append_durable(rec(b"forged 3")).unwrap();
    vec![(seg(1), sim.read_file(&seg(1)).unwrap()), (seg(2), sim.read_file(&seg(2)).unwrap())]
}

#[test]
fn a_plaintext_segment_put_in_place_of_an_encrypted_one_is_refused_when_the_ring_says_so() {
    let mut files = two_segments();
    files[0] = two_plaintext_segments().swap_remove(0);
    // Without the policy, the forged records read back as the log's own: the gap it closes.
    let forged = read_all(&disk_with(9, Path::new(DIR), &files), Some(ring(1, 7))).unwrap();
    assert_eq!(forged[0], b"forged 0");

    let strict = ring(1, 7);
    strict.refuse_plaintext();
    // Refused by recovery, at open, before any reader runs.
    let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files), config(Some(Arc::clone(&strict)))).unwrap_err();
    assert!(matches!(err, WalError::PlaintextRefused { segment } if segment.0 == 1), "{err}");
    assert_eq!(read_all(&disk_with(9, Path::new(DIR), &two_segments()), Some(strict)).unwrap().len(), 4, "an all-encrypted log opens");
}

#[test]
fn a_reader_refuses_a_plaintext_segment_swapped_in_after_open() {
    let sim = disk_with(9, Path::new(DIR), &two_segments());
    let strict = ring(1, 7);
    strict.refuse_plaintext();
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(strict))).unwrap();
    let (path, forged) = two_plaintext_segments().swap_remove(0);
    sim.write_file(&path, &forged);
    let err = wal.read_from(Lsn(1)).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(err, WalError::PlaintextRefused { segment } if segment.0 == 1), "{err}");
}

#[test]
fn refusing_plaintext_without_an_active_key_is_a_config_error() {
    let ring = Arc::new(KeyRing::new());
    ring.refuse_plaintext();
    let sim = SimStorage::new(1, FaultConfig::default());
    let err = SegmentedWal::open_with(sim, config(Some(ring))).unwrap_err();
    assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
}

#[test]
fn the_owner_refuses_an_encrypted_log_opened_without_a_key_ring_and_changes_nothing() {
    let sim = disk_with(9, Path::new(DIR), &two_segments());
    let before = [sim.read_file(&seg(1)).unwrap(), sim.read_file(&seg(2)).unwrap()];
    let err = SegmentedWal::open_with(sim.clone(), config(None)).unwrap_err();
    // Opening would have appended plaintext segments after the encrypted ones.
    assert!(matches!(err, WalError::KeyRingMissing { segment } if segment.0 == 1), "{err}");
    assert_eq!([sim.read_file(&seg(1)).unwrap(), sim.read_file(&seg(2)).unwrap()], before, "the refusal wrote nothing");
    assert!(sim.read_file(&seg(3)).is_none(), "no segment was created");

    // A tool still looks without a key: finding the end of a log needs none.
    let view = ReadOnlyWal::open_with(sim.clone(), DIR, None).unwrap();
    assert_eq!(view.recovery_info().record_count, 4);
}

#[test]
fn a_ring_without_an_active_key_opens_an_encrypted_log_and_continues_in_plaintext() {
    let sim = disk_with(9, Path::new(DIR), &two_segments());
    // Old keys still read; no active key says new segments are meant to be plaintext. (An
    // empty ring is the same choice for keys that are lost.)
    let reading = KeyRing::new();
    reading.insert(1, SecureKey::from_bytes(&mut [7; 32])).unwrap();
    let (wal, warnings) = warnings_during(|| SegmentedWal::open_with(sim.clone(), config(Some(Arc::new(reading)))).unwrap());
    // Meant or a mistake (a ring built without `set_active`), the operator hears of it.
    assert!(warnings.iter().any(|w| w.contains("no active key") && w.contains("plaintext")), "{warnings:?}");
    let lsn = wal.append_durable(rec(b"after encryption was switched off")).unwrap();
    let read: Vec<_> = wal.read_from(Lsn(1)).unwrap().map(|r| r.unwrap().payload).collect();
    assert_eq!((read.len(), read.last().unwrap().as_slice()), (lsn.0 as usize, &b"after encryption was switched off"[..]));
    drop(wal);
    let newest = sim.read_file(&seg(3)).unwrap();
    assert_eq!(SegmentPreamble::decode(&newest).unwrap().cipher, CIPHER_NONE);
}

/// `two_segments` with the second record of segment 1 retyped to an unknown optional type of
/// this crate's range, its CRC recomputed as an attacker without the key can.
fn retyped_second_record() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = two_segments();
    let bytes = &mut files[0].1;
    let (at, h) = frames(bytes).into_iter().filter(|(_, h)| !h.record_type.is_meta()).nth(1).expect("a second record");
    let unknown = RecordType::optional(0x0011);
    bytes[at + 6..at + 8].copy_from_slice(&unknown.0.to_le_bytes());
    seal_frame(&mut bytes[at..at + h.frame_len()], unknown);
    files
}

#[test]
fn a_record_retyped_to_an_unknown_optional_type_is_refused_by_the_lazy_reader_too() {
    let disk = disk_with(9, Path::new(DIR), &retyped_second_record());
    let view = ReadOnlyWal::open_with(disk, Path::new(DIR), Some(ring(1, 7))).unwrap();
    assert!(view.read_from(Lsn(1)).unwrap().any(|r| matches!(r, Err(WalError::AuthenticationFailed { .. }))));
    let mut lazy = view.lazy_reader(Lsn(1)).unwrap();
    let mut seen = Vec::new();
    let err = loop {
        match lazy.next_header() {
            Ok(Some(h)) => seen.push(h.lsn),
            Ok(None) => panic!("the retyped record was skipped unnoticed after {seen:?}"),
            Err(err) => break err,
        }
    };
    assert!(matches!(err, WalError::AuthenticationFailed { .. }), "{err}");
    assert_eq!(seen, [Lsn(1)]);
}

#[test]
fn an_altered_first_record_is_told_from_a_wrong_key_by_the_record_after_it() {
    // Segment 1 holds three records: its first one altered, the second still authenticates
    // under the ring's key, so the key is right and the record is what changed.
    let mut files = two_segments();
    let (at, h) = frames(&files[0].1).into_iter().find(|(_, h)| !h.record_type.is_meta()).expect("a first record");
    files[0].1[at + HEADER_LEN] ^= 0x01;
    seal_frame(&mut files[0].1[at..at + h.frame_len()], h.record_type);
    let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files), config(Some(ring(1, 7)))).unwrap_err();
    assert!(matches!(err, WalError::AuthenticationFailed { segment, lsn: Lsn(1) } if segment.0 == 1), "{err}");
    assert!(matches!(
        ReadOnlyWal::open_with(disk_with(9, Path::new(DIR), &files), DIR, Some(ring(1, 7))),
        Err(WalError::AuthenticationFailed { .. })
    ));
    // Segment 2 holds one record: altered, nothing in segment 2 tells it from a wrong key, but
    // segment 1, under the same key id, authenticated: the key is right (see the test below).
    let mut files = two_segments();
    let (at, h) = frames(&files[1].1).into_iter().find(|(_, h)| !h.record_type.is_meta()).expect("a record");
    files[1].1[at + HEADER_LEN] ^= 0x01;
    seal_frame(&mut files[1].1[at..at + h.frame_len()], h.record_type);
    let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files), config(Some(ring(1, 7)))).unwrap_err();
    assert!(matches!(err, WalError::AuthenticationFailed { segment, lsn: Lsn(4) } if segment.0 == 2), "{err}");
    // Alone in the log, the same segment cannot be told from one under another key.
    let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files[1..]), config(Some(ring(1, 7)))).unwrap_err();
    assert!(matches!(err, WalError::WrongKey { segment, .. } if segment.0 == 2), "{err}");
}

// Found by an adversarial review: a segment whose first record (its only one), preamble epoch
// or key-derivation salt was altered by someone who holds no key was reported as a wrong key
// (`WrongKey`; the tool's status 4, "supply the right key") although an earlier segment under
// the same key id had just authenticated under that key: an operator holding the right key was
// sent looking for another, and damage went unreported as damage.
#[test]
fn a_segment_altered_after_one_under_the_same_key_authenticated_is_damage_not_a_wrong_key() {
    let alter_epoch = |bytes: &mut Vec<u8>| {
        let mut preamble = SegmentPreamble::decode(bytes).unwrap();
        preamble.nonce_epoch ^= 1;
        bytes[..PREAMBLE_SIZE].copy_from_slice(&preamble.encode());
    };
    let alter_kdf_salt = |bytes: &mut Vec<u8>| {
        let head = decode_frame(&bytes[PREAMBLE_SIZE..]).unwrap();
        let payload = PREAMBLE_SIZE + HEADER_LEN;
        let mut header = SegmentHeaderPayload::decode(&bytes[payload..PREAMBLE_SIZE + head.frame_len()]).unwrap();
        header.kdf_salt[0] ^= 1;
        bytes[payload..payload + header.encode().len()].copy_from_slice(&header.encode());
        seal_frame(&mut bytes[PREAMBLE_SIZE..PREAMBLE_SIZE + head.frame_len()], head.record_type);
    };
    for (what, alter) in [("nonce epoch", &alter_epoch as &dyn Fn(&mut Vec<u8>)), ("key-derivation salt", &alter_kdf_salt)] {
        let mut files = two_segments();
        alter(&mut files[1].1);
        let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files), config(Some(ring(1, 7)))).unwrap_err();
        assert!(matches!(err, WalError::AuthenticationFailed { segment, lsn: Lsn(4) } if segment.0 == 2), "{what}: {err}");
        let err = ReadOnlyWal::open_with(disk_with(9, Path::new(DIR), &files), DIR, Some(ring(1, 7))).unwrap_err();
        assert!(matches!(err, WalError::AuthenticationFailed { segment, lsn: Lsn(4) } if segment.0 == 2), "{what}: {err}");
        // A ring whose key 1 is another key: segment 1 fails first, and that is a wrong key.
        let err = SegmentedWal::open_with(disk_with(9, Path::new(DIR), &files), config(Some(ring(1, 8)))).unwrap_err();
        assert!(matches!(err, WalError::WrongKey { segment, key_id: 1 } if segment.0 == 1), "{what}: {err}");
    }
}

// Found by an adversarial review: a segment's salt and keys were chosen when the log opened
// (or when the segment before it rolled), not when the segment was created, so a key made
// active after the open did not reach the first segment written after it: records appended
// after turning encryption on went to disk in plaintext, and rotating right after the open
// wrote the next segment under the key being retired.
#[test]
fn a_key_made_active_after_open_encrypts_the_next_segment_created() {
    let sim = SimStorage::new(21, FaultConfig::default());
    let ring = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&ring)))).unwrap();
    ring.insert(1, SecureKey::from_bytes(&mut [1; 32])).unwrap();
    ring.set_active(1).unwrap();
    ring.refuse_plaintext();
    wal.append_durable(rec(b"top secret row")).unwrap();
    let file = sim.read_file(&seg(1)).unwrap();
    assert_eq!(SegmentPreamble::decode(&file).unwrap().key_id, 1);
    assert!(!file.windows(14).any(|w| w == b"top secret row"), "no plaintext on disk");

    ring.insert(2, SecureKey::from_bytes(&mut [2; 32])).unwrap();
    ring.set_active(2).unwrap();
    drop(wal);
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&ring)))).unwrap();
    ring.insert(3, SecureKey::from_bytes(&mut [3; 32])).unwrap();
    ring.set_active(3).unwrap();
    wal.append_durable(rec(b"after rotation")).unwrap();
    let newest = wal.segments().last().unwrap().id;
    let file = sim.read_file(&seg(newest.0)).unwrap();
    assert_eq!(SegmentPreamble::decode(&file).unwrap().key_id, 3, "rotated right after the open");
    drop(wal);
    let wal = SegmentedWal::open_with(sim, config(Some(ring))).unwrap();
    let payloads: Vec<Vec<u8>> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().payload.into_vec()).collect();
    assert_eq!(payloads, [b"top secret row".to_vec(), b"after rotation".to_vec()]);
}

/// A ring told to refuse plaintext after the log opened, with no key to write with, makes the
/// append that needs a new segment fail, instead of writing a segment its own readers refuse.
#[test]
fn refusing_plaintext_after_open_without_an_active_key_fails_the_append_and_writes_nothing() {
    let sim = SimStorage::new(22, FaultConfig::default());
    let ring = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&ring)))).unwrap();
    ring.refuse_plaintext();
    let err = wal.append(rec(b"nowhere to go")).unwrap_err();
    assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
    assert_eq!(wal.next_lsn(), Lsn::FIRST, "no LSN used");
    assert!(sim.read_file(&seg(1)).is_none(), "no segment written");
    ring.insert(1, SecureKey::from_bytes(&mut [1; 32])).unwrap();
    ring.set_active(1).unwrap();
    assert_eq!(wal.append_durable(rec(b"now encrypted")).unwrap(), Lsn::FIRST);
}

// Found by a review of the fix above: a key made active while a segment was being written
// still reached only the next segment, so a record appended right after turning encryption on
// (or after a rotation) went into the open segment in plaintext (or under the old key). A
// change to the ring now ends the segment at the next append.
#[test]
fn the_first_append_after_a_key_change_goes_into_a_segment_under_the_new_key() {
    let sim = SimStorage::new(23, FaultConfig::default());
    let ring = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&ring)))).unwrap();
    wal.append_durable(rec(b"before encryption")).unwrap();
    ring.insert(1, SecureKey::from_bytes(&mut [1; 32])).unwrap();
    ring.set_active(1).unwrap();
    let secret = wal.append_durable(rec(b"top secret row")).unwrap();
    ring.insert(2, SecureKey::from_bytes(&mut [2; 32])).unwrap();
    ring.set_active(2).unwrap();
    let rotated = wal.append_durable(rec(b"after rotation")).unwrap();
    let key_of = |lsn: Lsn| {
        let segment = wal.segments().into_iter().find(|s| s.first_lsn <= lsn && lsn < s.end_lsn).expect("listed").id;
        SegmentPreamble::decode(&sim.read_file(&seg(segment.0)).unwrap()).unwrap().key_id
    };
    assert_eq!((key_of(Lsn(1)), key_of(secret), key_of(rotated)), (0, 1, 2));
    for id in 1..=3 {
        let file = sim.read_file(&seg(id)).unwrap();
        assert!(!file.windows(14).any(|w| w == b"top secret row"), "segment {id} holds the secret in plaintext");
    }
    drop(wal);
    let wal = SegmentedWal::open_with(sim, config(Some(ring))).unwrap();
    let payloads: Vec<Vec<u8>> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().payload.into_vec()).collect();
    assert_eq!(payloads, [b"before encryption".to_vec(), b"top secret row".to_vec(), b"after rotation".to_vec()]);
}

/// `two_segments` with one ciphertext byte of segment 1's second record changed and the frame's
/// CRC recomputed, as someone who can write the files but holds no key can.
fn tampered_second_ciphertext() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = two_segments();
    let bytes = &mut files[0].1;
    let (at, h) = frames(bytes).into_iter().filter(|(_, h)| !h.record_type.is_meta()).nth(1).expect("a second record");
    assert_eq!(h.lsn, Lsn(2));
    bytes[at + HEADER_LEN + 3] ^= 0x01;
    seal_frame(&mut bytes[at..at + h.frame_len()], h.record_type);
    files
}

#[test]
fn tampered_ciphertext_in_a_sealed_segment_opens_and_every_read_of_it_fails_authentication() {
    let sim = disk_with(9, Path::new(DIR), &tampered_second_ciphertext());
    // Recovery authenticates only each segment's first record (and tombstones and purges),
    // so the log opens with all its records counted (DESIGN.md, "Encryption at rest").
    let wal = SegmentedWal::open_with(sim, config(Some(ring(1, 7)))).unwrap();
    assert_eq!(wal.recovery_info().record_count, 4);
    let tampered = |err: &WalError| matches!(err, WalError::AuthenticationFailed { segment, lsn: Lsn(2) } if segment.0 == 1);

    let mut owned = wal.read_from(Lsn(1)).unwrap();
    assert_eq!(owned.next().unwrap().unwrap().payload, payload(0), "the record before it is intact");
    let err = owned.next().unwrap().unwrap_err();
    assert!(tampered(&err), "{err}");
    let err = wal.read_from(Lsn(2)).unwrap().next().unwrap().unwrap_err();
    assert!(tampered(&err), "a read starting at the record: {err}");

    // The lazy reader hands out the header (checked by the CRC only); its payload fails.
    let mut lazy = wal.lazy_reader(Lsn(1)).unwrap();
    assert_eq!(lazy.next_header().unwrap().unwrap().lsn, Lsn(1));
    assert_eq!(lazy.payload().unwrap(), payload(0));
    assert_eq!(lazy.next_header().unwrap().unwrap().lsn, Lsn(2));
    let err = lazy.payload().unwrap_err();
    assert!(tampered(&err), "{err}");
}

// Found by a review: a truncated segment kept for reuse (`recycle_segments`) keeps its old
// bytes behind the new header, and the new segment overwrites them only as far as it grows.
// A plaintext segment reused for an encrypted one left the old records in the clear inside
// the encrypted log, for as long as the file lived: switching encryption on and truncating
// the plaintext segments did not take their records off the disk's live files.
#[test]
fn a_truncated_plaintext_segment_is_never_reused_for_an_encrypted_one() {
    use nodedb_wal::storage::Storage;
    let sim = SimStorage::new(8, FaultConfig::default());
    let keys = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { recycle_segments: 2, ..config(Some(Arc::clone(&keys))) }).unwrap();
    for i in 0.. {
        if wal.segments().len() == 5 {
            break;
        }
        wal.append_durable(rec(format!("plaintext record {i} ").repeat(40).as_bytes())).unwrap();
    }
    wal.truncate_before(wal.durable_lsn()).unwrap();
    let kept = sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".recycled")).count();
    assert_eq!(kept, 2, "truncation kept files for reuse");
    keys.insert(1, SecureKey::from_bytes(&mut [7; 32])).unwrap();
    keys.set_active(1).unwrap();
    for i in 0..3 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    for name in sim.list(Path::new(DIR)).unwrap() {
        let bytes = sim.read_file(&Path::new(DIR).join(&name)).unwrap();
        if SegmentPreamble::decode(&bytes).is_ok_and(|p| p.cipher == CIPHER_AES_256_GCM) {
            assert!(!bytes.windows(16).any(|w| w == b"plaintext record"), "{name} is encrypted but holds plaintext records");
        }
    }
    // Files that held encrypted segments are still reused for encrypted ones.
    let kept = || sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".recycled")).count();
    // Past the plaintext files still kept: each is taken (and removed) by a new segment.
    for _ in 0..3 {
        while wal.segments().len() < 4 {
            wal.append_durable(rec(&payload(3))).unwrap();
        }
        wal.truncate_before(wal.durable_lsn()).unwrap();
    }
    assert_eq!(kept(), 2);
    for name in sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".recycled")) {
        let preamble = SegmentPreamble::decode(&sim.read_file(&Path::new(DIR).join(&name)).unwrap()).unwrap();
        assert_eq!(preamble.cipher, CIPHER_AES_256_GCM, "{name} was an encrypted segment");
    }
    let newest = wal.segments().last().unwrap().id;
    while wal.segments().last().unwrap().id == newest {
        wal.append_durable(rec(&payload(3))).unwrap();
    }
    assert_eq!(kept(), 1, "an encrypted segment's file was reused");
    drop(wal);
    assert_eq!(read_all(&sim, Some(keys)).unwrap().last(), Some(&payload(3)));
}

/// A plaintext log of five segments, the older ones truncated and two kept for reuse; returns
/// the kept files' paths. Every record says "plaintext record".
fn plaintext_log_with_kept_files(sim: &SimStorage, keys: &Arc<KeyRing>) -> Vec<PathBuf> {
    use nodedb_wal::storage::Storage;
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { recycle_segments: 2, ..config(Some(Arc::clone(keys))) }).unwrap();
    for i in 0.. {
        if wal.segments().len() == 5 {
            break;
        }
        wal.append_durable(rec(format!("plaintext record {i} ").repeat(40).as_bytes())).unwrap();
    }
    wal.truncate_before(wal.durable_lsn()).unwrap();
    drop(wal);
    let kept: Vec<PathBuf> =
        sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".recycled")).map(|n| Path::new(DIR).join(n)).collect();
    assert_eq!(kept.len(), 2, "truncation kept files for reuse");
    kept
}

/// A file whose name ends with `suffix` that opens with an encrypted preamble and holds
/// `marker` in the clear.
fn encrypted_file_holding(sim: &SimStorage, suffix: &str, marker: &[u8]) -> Option<String> {
    use nodedb_wal::storage::Storage;
    sim.list(Path::new(DIR)).unwrap().into_iter().filter(|name| name.ends_with(suffix)).find(|name| {
        let bytes = sim.read_file(&Path::new(DIR).join(name)).unwrap();
        SegmentPreamble::decode(&bytes).is_ok_and(|p| p.cipher == CIPHER_AES_256_GCM) && bytes.windows(marker.len()).any(|w| w == marker)
    })
}

// A reuse writes the new segment's header into the kept file, then renames it to the
// segment's name. A crash in between leaves the kept file with an encrypted segment's header
// in front of a plaintext segment's records: judged by its preamble alone, it was reused for
// the next encrypted segment, and the plaintext stayed inside the encrypted log.
#[test]
fn a_plaintext_file_left_by_an_interrupted_reuse_is_never_reused_for_an_encrypted_segment() {
    use nodedb_wal::format::layout::write_header_block;
    use nodedb_wal::{Lsn, SegmentId};
    let sim = SimStorage::new(11, FaultConfig::default());
    let keys = Arc::new(KeyRing::new());
    let kept = plaintext_log_with_kept_files(&sim, &keys);
    keys.insert(1, SecureKey::from_bytes(&mut [7; 32])).unwrap();
    keys.set_active(1).unwrap();
    // What the interrupted reuse left: the header block of the next (encrypted) segment, as
    // the flusher writes it, over the first block of each kept file.
    for path in &kept {
        let mut bytes = sim.read_file(path).unwrap();
        let preamble = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 1, nonce_epoch: 9, ..SegmentPreamble::plaintext_wal() };
        let header = SegmentHeaderPayload { segment_id: SegmentId(6), first_lsn: Lsn(1000), salt: 5, block_len: 4096, kdf_salt: [3; 16] };
        write_header_block(&mut bytes[..4096], &preamble, &header, Lsn(999));
        sim.write_file(path, &bytes);
    }
    assert!(encrypted_file_holding(&sim, ".recycled", b"plaintext record").is_some(), "the crash's leftovers look encrypted");

    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { recycle_segments: 2, ..config(Some(Arc::clone(&keys))) }).unwrap();
    // The first appends after an open go to a new segment, which takes a kept file.
    for i in 0..3 {
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    assert_eq!(kept.iter().filter(|path| sim.read_file(path).is_none()).count(), 1, "the new segment took a kept file");
    assert_eq!(encrypted_file_holding(&sim, ".wal", b"plaintext record"), None, "an encrypted segment holds plaintext records");
    drop(wal);
    assert_eq!(read_all(&sim, Some(keys)).unwrap().last(), Some(&payload(2)));
}

// Rotation retires a key so that what it protected stops growing. A kept file encrypted under
// the retired key, reused for a segment under the new one, kept its old records behind the new
// header: readable to whoever holds the retired key, for as long as the file lives.
#[test]
fn a_file_encrypted_under_a_retired_key_is_not_reused_after_rotation() {
    use nodedb_wal::storage::Storage;
    let sim = SimStorage::new(12, FaultConfig::default());
    let keys = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [7; 32])));
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig { recycle_segments: 2, ..config(Some(Arc::clone(&keys))) }).unwrap();
    while wal.segments().len() < 5 {
        wal.append_durable(rec(&payload(4))).unwrap();
    }
    wal.truncate_before(wal.durable_lsn()).unwrap();
    let kept: Vec<PathBuf> =
        sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| n.ends_with(".recycled")).map(|n| Path::new(DIR).join(n)).collect();
    assert_eq!(kept.len(), 2);
    // The last 64 bytes of each kept file's records: ciphertext under key 1, and beyond where a
    // new segment's first few records reach.
    let old_ciphertext: Vec<Vec<u8>> = kept
        .iter()
        .map(|path| {
            let bytes = sim.read_file(path).unwrap();
            let (at, h) = *frames(&bytes).iter().rfind(|(_, h)| !h.record_type.is_meta()).unwrap();
            bytes[at + HEADER_LEN..at + h.frame_len()][..64].to_vec()
        })
        .collect();
    keys.insert(2, SecureKey::from_bytes(&mut [8; 32])).unwrap();
    keys.set_active(2).unwrap();
    let newest = wal.segments().last().unwrap().id;
    while wal.segments().last().unwrap().id.0 < newest.0 + 2 {
        wal.append_durable(rec(&payload(5))).unwrap();
    }
    for name in sim.list(Path::new(DIR)).unwrap() {
        let bytes = sim.read_file(&Path::new(DIR).join(&name)).unwrap();
        if SegmentPreamble::decode(&bytes).is_ok_and(|p| p.key_id == 2) {
            let kept_old = old_ciphertext.iter().any(|old| bytes.windows(old.len()).any(|w| w == old.as_slice()));
            assert!(!kept_old, "{name}, a segment under key 2, still holds records encrypted under the retired key 1");
        }
    }
    drop(wal);
    let rotated = Arc::new(KeyRing::with_active(2, SecureKey::from_bytes(&mut [8; 32])));
    rotated.insert(1, SecureKey::from_bytes(&mut [7; 32])).unwrap();
    assert_eq!(read_all(&sim, Some(rotated)).unwrap().last(), Some(&payload(5)));
}

/// `segment_key_ids` names the key of each segment the log holds (`None` for plaintext) as its
/// preamble does, and forgets the segments a truncation removed: what tells an operator when a
/// rotated-out key is no longer needed to open and read the log.
#[test]
fn segment_key_ids_name_each_retained_segments_key_and_drop_truncated_ones() {
    let sim = SimStorage::new(23, FaultConfig::default());
    let ring = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open_with(sim.clone(), config(Some(Arc::clone(&ring)))).unwrap();
    for (i, key) in (0..180).zip([None, Some(1), Some(2)].into_iter().flat_map(|k| [k; 60])) {
        if i % 60 == 0
            && let Some(key) = key
        {
            ring.insert(key, SecureKey::from_bytes(&mut [key as u8; 32])).unwrap();
            ring.set_active(key).unwrap();
        }
        wal.append_durable(rec(&payload(i))).unwrap();
    }
    let from_preambles: Vec<_> = wal
        .segments()
        .iter()
        .map(|s| {
            let preamble = SegmentPreamble::decode(&sim.read_file(&seg(s.id.0)).unwrap()).unwrap();
            (s.id, (preamble.cipher == CIPHER_AES_256_GCM).then_some(preamble.key_id))
        })
        .collect();
    let keys = wal.segment_key_ids().unwrap();
    assert_eq!(keys, from_preambles);
    for key in [None, Some(1), Some(2)] {
        assert!(keys.iter().any(|&(_, k)| k == key), "{key:?} names a segment: {keys:?}");
    }

    wal.truncate_before(wal.sync().unwrap().next()).unwrap();
    let newest = wal.segments().last().unwrap().id;
    assert_eq!(wal.segment_key_ids().unwrap(), [(newest, Some(2))], "only the newest segment is kept");
    drop(wal);
    // Key 2 alone now opens and reads the log: keys 1 and the plaintext era are retired.
    let only_2 = KeyRing::new();
    only_2.insert(2, ring.get(2).unwrap()).unwrap();
    only_2.set_active(2).unwrap();
    let wal = SegmentedWal::open_with(sim, config(Some(Arc::new(only_2)))).unwrap();
    let kept = wal.read_from(wal.oldest_lsn()).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert!(!kept.is_empty() && kept.iter().all(|r| r.lsn.0 > 120), "the newest segment holds records under key 2");
}
