//! No (key, nonce) pair of an encrypted log is ever used for two different records, whatever
//! the crashes in between. A segment's key is derived from the ring key, the segment's random
//! `kdf_salt` and its id; a record's nonce is the preamble's epoch and the record's LSN. Many
//! events write the same LSNs or the same segment id twice: a power cut at any operation of a
//! roll (between a preamble's write and its sync, between the sync and the rename of a kept
//! file), a failed roll that poisons the log, a kept file reused as a new segment, a torn tail
//! cut at recovery, a rotation to a new key and back to reading old ones, and a directory
//! restored from a copy and written on. This test lives through all of them on the simulated
//! disk and decodes every frame ever found in any file, at every point where bytes could be
//! overwritten, and checks that a (key id, salt, segment id, epoch, LSN) seen twice always
//! sealed the same bytes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::disk_with;
use nodedb_wal::format::frame::{HEADER_LEN, decode_frame};
use nodedb_wal::format::meta::SegmentHeaderPayload;
use nodedb_wal::format::preamble::{CIPHER_AES_256_GCM, PREAMBLE_SIZE, SegmentPreamble};
use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SimRng, Storage};
use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage};

const DIR: &str = "/nonces";

/// (key id, kdf salt, segment id, nonce epoch, LSN): the segment key and the nonce.
type NonceKey = (u32, [u8; 16], u64, u32, u64);

fn config(ring: Arc<KeyRing>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.recycle_segments = 2;
    c.key_ring = Some(ring);
    c
}

/// A ring holding keys 1..=newest (each its own bytes), the newest active.
fn ring(newest: u32) -> Arc<KeyRing> {
    let ring = KeyRing::new();
    for id in 1..=newest {
        ring.insert(id, SecureKey::from_bytes(&mut [id as u8; 32])).unwrap();
    }
    ring.set_active(newest).unwrap();
    Arc::new(ring)
}

fn payload(life: u32, i: u32) -> Vec<u8> {
    format!("life {life} record {i} ").repeat(1 + (i as usize * 7) % 13).into_bytes()
}

/// Every nonce used in one file's bytes: the frames after its header that carry its salt (a
/// kept file reused as a new segment still holds the old segment's frames behind the new
/// ones, under the old salt and key, and those were seen when they were written).
fn file_nonces(bytes: &[u8], seen: &mut HashMap<NonceKey, Vec<u8>>) -> usize {
    let Ok(preamble) = SegmentPreamble::decode(bytes) else { return 0 };
    if preamble.cipher != CIPHER_AES_256_GCM {
        return 0;
    }
    let Ok(head) = decode_frame(&bytes[PREAMBLE_SIZE..]) else { return 0 };
    let Some(header) = SegmentHeaderPayload::decode(&bytes[PREAMBLE_SIZE + HEADER_LEN..PREAMBLE_SIZE + head.frame_len()]) else {
        return 0;
    };
    let mut at = PREAMBLE_SIZE + head.frame_len();
    let mut count = 0;
    // Batches start on fresh blocks: walk every frame the scan would find, skipping zeros
    // (and padding) up to the next block.
    while at + HEADER_LEN <= bytes.len() {
        let frame = decode_frame(&bytes[at..]);
        let Ok(h) = frame else {
            at = (at + 1).next_multiple_of(header.block_len as usize);
            continue;
        };
        if h.salt == header.salt && !h.record_type.is_meta() {
            let key = (preamble.key_id, header.kdf_salt, header.segment_id.0, preamble.nonce_epoch, h.lsn.0);
            let sealed = bytes[at + HEADER_LEN..at + h.frame_len()].to_vec();
            if let Some(before) = seen.insert(key, sealed.clone()) {
                assert_eq!(before, sealed, "a (key, nonce) pair sealed two different records: {key:?}");
            }
            count += 1;
        }
        at += h.frame_len();
    }
    count
}

/// Every nonce in every file of the directory, segments and kept files alike.
fn all_nonces(sim: &SimStorage, seen: &mut HashMap<NonceKey, Vec<u8>>) -> usize {
    let names = sim.list(Path::new(DIR)).unwrap_or_default();
    names.iter().filter_map(|name| sim.read_file(&Path::new(DIR).join(name))).map(|bytes| file_nonces(&bytes, seen)).sum()
}

/// The directory's files as they are now (a backup copy taken without stopping the log).
fn copy_of(sim: &SimStorage) -> Vec<(PathBuf, Vec<u8>)> {
    let names = sim.list(Path::new(DIR)).unwrap();
    names
        .into_iter()
        .filter(|n| n != "LOCK")
        .filter_map(|n| Some((Path::new(DIR).join(&n), sim.read_file(&Path::new(DIR).join(&n))?)))
        .collect()
}

/// Arms one fault for the rest of a life: a power cut some operations on, or one failing
/// write, sync, directory sync or rename (a roll that fails half way poisons the log).
fn arm_fault(storage: &FaultyStorage<SimStorage>, rng: &mut SimRng) {
    let after = rng.below(40);
    match rng.below(6) {
        0 | 1 => storage.cut_power_after(after),
        2 => storage.fail_once(FaultOp::Write, after / 4, EIO),
        3 => storage.fail_once(FaultOp::SyncDir, rng.below(3), EIO),
        4 => storage.fail_once(FaultOp::Rename, 0, ENOSPC),
        _ => storage.fail_once(FaultOp::SyncData, after / 4, EIO),
    }
}

/// One life of the log: appends (some waited for), truncations that keep files for reuse, a
/// rotation now and then, and a fault; ends without a close. Returns the newest key id.
fn live(sim: &SimStorage, life: u32, mut newest: u32, rng: &mut SimRng, seen: &mut HashMap<NonceKey, Vec<u8>>) -> u32 {
    let storage = FaultyStorage::new(sim.clone());
    let keys = ring(newest);
    let wal = SegmentedWal::open_with(storage.clone(), config(Arc::clone(&keys)))
        .unwrap_or_else(|e| panic!("life {life}: the log does not open after the last crash: {e}"));
    let fault_at = rng.below(60) as u32;
    for i in 0..80 {
        if i == fault_at {
            arm_fault(&storage, rng);
        }
        if rng.below(40) == 0 {
            // Rotate at run time: the next append rolls into a segment under the new key.
            newest += 1;
            keys.insert(newest, SecureKey::from_bytes(&mut [newest as u8; 32])).unwrap();
            keys.set_active(newest).unwrap();
        }
        let Ok(lsn) = wal.append(Record::new(RecordType::optional(0x100), &payload(life, i))) else { break };
        if rng.below(5) == 0 && wal.wait_durable(lsn).is_err() {
            break;
        }
        if rng.below(25) == 0 {
            // A truncation makes kept files that a later roll reuses, overwriting their heads:
            // their frames are seen first.
            all_nonces(sim, seen);
            let durable = wal.durable_lsn();
            if durable.0 > 2 && wal.truncate_before(Lsn(durable.0 - 1)).is_err() {
                break;
            }
        }
    }
    all_nonces(sim, seen);
    drop(wal);
    all_nonces(sim, seen);
    newest
}

#[test]
fn no_key_and_nonce_pair_is_reused_across_power_cuts_failed_rolls_reused_files_and_a_restored_copy() {
    let mut seen = HashMap::new();
    let mut rng = SimRng::new(0x5EED_0001);
    let mut sim = SimStorage::new(1, FaultConfig::default());
    let mut newest = 1;
    let mut backup = None;
    for life in 0..60u32 {
        newest = live(&sim, life, newest, &mut rng, &mut seen);
        if life == 10 || life == 35 {
            backup = Some((copy_of(&sim), newest));
        }
        sim = sim.crash(u64::from(life) + 1000);
        all_nonces(&sim, &mut seen);
        if life == 25 || life == 50 {
            // The operator restores the copy and the database writes on from it: its LSNs and
            // segment ids are issued again.
            let (files, keys) = backup.take().unwrap();
            sim = disk_with(u64::from(life), Path::new(DIR), &files);
            // The ring keeps every key made since: an id once used is never given another key.
            newest = newest.max(keys);
        }
    }
    let total = all_nonces(&sim, &mut seen);
    assert!(seen.len() > 1500, "the test saw too few records: {} ({total} on the last disk)", seen.len());
    // The events the property is about really happened: a segment id written again under
    // another salt, an LSN sealed again in another segment, segments under several keys.
    let mut salts_of_id: HashMap<u64, Vec<[u8; 16]>> = HashMap::new();
    let mut segments_of_lsn: HashMap<u64, Vec<[u8; 16]>> = HashMap::new();
    for &(_, salt, id, _, lsn) in seen.keys() {
        salts_of_id.entry(id).or_default().push(salt);
        segments_of_lsn.entry(lsn).or_default().push(salt);
    }
    let distinct = |salts: &[[u8; 16]]| salts.iter().collect::<std::collections::BTreeSet<_>>().len();
    let ids_again = salts_of_id.values().filter(|s| distinct(s) > 1).count();
    let lsns_again = segments_of_lsn.values().filter(|s| distinct(s) > 1).count();
    eprintln!("{} nonces, {ids_again} segment ids written again, {lsns_again} LSNs sealed again", seen.len());
    let keys: std::collections::BTreeSet<u32> = seen.keys().map(|k| k.0).collect();
    assert!(ids_again >= 5, "segment ids written again: {ids_again}");
    assert!(lsns_again >= 100, "LSNs sealed again: {lsns_again}");
    assert!(keys.len() >= 3, "keys used: {keys:?}");
}
