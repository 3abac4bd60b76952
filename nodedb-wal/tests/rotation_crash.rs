//! A power cut at any operation of the roll into a segment under a new key, followed by a
//! restart whose ring lacks that key (the operator's key store never kept it): the log opens,
//! every record it acknowledged under the old key reads back, and the only thing refused is a
//! record that did reach the disk under the missing key (`UnknownKeyId` naming it), never
//! garbage and never a refusal to open over an interrupted roll that holds no record.

use std::sync::Arc;

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::storage::faulty::FaultyStorage;
use nodedb_wal::{KeyRing, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const DIR: &str = "/rotation";

fn config(ring: Arc<KeyRing>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.recycle_segments = 2;
    c.key_ring = Some(ring);
    c
}

fn key(id: u32) -> SecureKey {
    SecureKey::from_bytes(&mut [id as u8 + 40; 32])
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i} ").repeat(1 + (i as usize % 9)).into_bytes()
}

fn rec(bytes: &[u8]) -> Record<'_> {
    Record::new(RecordType::optional(0x100), bytes)
}

/// Reads every record from the start: the payloads before the first error, and that error.
fn read_all(wal: &SegmentedWal<SimStorage>) -> (Vec<Vec<u8>>, Option<WalError>) {
    let mut records = Vec::new();
    for record in wal.read_from(wal.recovery_info().first_lsn).unwrap() {
        match record {
            Ok(r) => records.push(r.payload.into_vec()),
            Err(e) => return (records, Some(e)),
        }
    }
    (records, None)
}

#[test]
fn a_power_cut_during_the_roll_to_a_new_key_restarted_without_that_key_loses_nothing_acknowledged() {
    let mut survived_under_new_key = 0;
    let mut clean = 0;
    for cut in 0..30u64 {
        for seed in 0..4u64 {
            let sim = SimStorage::new(cut * 10 + seed, FaultConfig::default());
            let storage = FaultyStorage::new(sim.clone());
            let ring = Arc::new(KeyRing::with_active(1, key(1)));
            let wal = SegmentedWal::open_with(storage.clone(), config(Arc::clone(&ring))).unwrap();
            // A kept file under key 1 exists, so that some rolls reuse one.
            let mut acked = Vec::new();
            for i in 0..60 {
                wal.append_durable(rec(&payload(i))).unwrap();
                acked.push(payload(i));
            }
            wal.truncate_before(wal.sync().unwrap()).unwrap();
            for i in 60..70 {
                wal.append_durable(rec(&payload(i))).unwrap();
                acked.push(payload(i));
            }
            let old_acked = acked.len();
            ring.insert(2, key(2)).unwrap();
            ring.set_active(2).unwrap();
            storage.cut_power_after(cut);
            for i in 70..90 {
                match wal.append_durable(rec(&payload(i))) {
                    Ok(_) => acked.push(payload(i)),
                    Err(_) => break,
                }
            }
            drop(wal);
            let restarted = sim.crash(cut * 100 + seed);
            // Restarted with key 1 only.
            let ring = Arc::new(KeyRing::with_active(1, key(1)));
            let context = format!("cut {cut}, seed {seed}");
            let wal = SegmentedWal::open_with(restarted, config(ring)).unwrap_or_else(|e| panic!("{context}: the log does not open: {e}"));
            let (records, error) = read_all(&wal);
            let under_key_1 = &acked[60..old_acked];
            match error {
                None => {
                    assert_eq!(acked.len(), old_acked, "{context}: a record acknowledged under key 2 reads without key 2");
                    assert!(records.ends_with(under_key_1), "{context}: the records under key 1 are not all there, unchanged");
                    clean += 1;
                }
                Some(WalError::UnknownKeyId { key_id: 2, .. }) => {
                    assert!(records.ends_with(under_key_1), "{context}: the records before key 2's segment are not all there");
                    survived_under_new_key += 1;
                }
                Some(e) => panic!("{context}: reading fails with {e}"),
            }
            // New appends go under key 1 and read back with the rest.
            wal.append_durable(rec(b"after the restart")).unwrap();
            drop(wal);
        }
    }
    eprintln!("{clean} restarts read everything, {survived_under_new_key} kept a record under the missing key");
    assert!(clean > 10 && survived_under_new_key > 10, "the cuts land on both sides of the first durable record under key 2");
}
