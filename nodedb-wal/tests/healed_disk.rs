//! A disk that comes back (`FaultyStorage::heal`) never makes an open log good again, whatever
//! poisoned it: a failed batch write, a failed fdatasync, a failed directory sync of a new
//! segment, or the power going. Appends, syncs, key retirement and truncation's floor stay
//! refused, the log writes and syncs nothing more, and once dropped it reopens through the same
//! storage with every acknowledged record.

use std::sync::Arc;

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage};

const TY: RecordType = RecordType::optional(0x100);

fn config(ring: &Arc<KeyRing>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new("/healed");
    c.segment_bytes_target = 16 * 1024;
    c.batch_bytes_max = 4 * 1024;
    c.key_ring = Some(Arc::clone(ring));
    c
}

fn payload(n: u64) -> Vec<u8> {
    vec![n as u8; 300 + (n as usize * 53) % 900]
}

/// The ways a disk poisons the log, each armed on `storage`.
const FAULTS: [&str; 4] = ["write", "fdatasync", "directory sync", "power"];

fn arm(storage: &FaultyStorage<SimStorage>, fault: &str) {
    match fault {
        "write" => storage.fail_once(FaultOp::Write, 0, EIO),
        "fdatasync" => storage.fail_from(FaultOp::SyncData, 0, EIO),
        "directory sync" => storage.fail_from(FaultOp::SyncDir, 0, EIO),
        _ => storage.cut_power_after(1),
    }
}

#[test]
fn a_healed_disk_leaves_a_log_poisoned_by_any_fault_poisoned_and_it_reopens_whole() {
    for fault in FAULTS {
        let storage = FaultyStorage::new(SimStorage::new(9, FaultConfig::default()));
        let ring = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [1; 32])));
        let wal = SegmentedWal::open_with(storage.clone(), config(&ring)).unwrap();
        let mut acked = Vec::new();
        for n in 1..=20 {
            acked.push(wal.append_durable(Record::new(TY, &payload(n))).unwrap());
        }
        ring.insert(2, SecureKey::from_bytes(&mut [2; 32])).unwrap();
        ring.set_active(2).unwrap();
        arm(&storage, fault);
        // Appends until one fails: a directory sync is only asked for at a roll.
        let mut n = 21;
        loop {
            match wal.append_durable(Record::new(TY, &payload(n))) {
                Ok(lsn) => acked.push(lsn),
                Err(_) => break,
            }
            n += 1;
            assert!(n < 200, "{fault}: the fault never struck");
        }
        storage.heal();
        let (writes, syncs) = (storage.calls(FaultOp::Write), storage.calls(FaultOp::SyncData));
        assert!(wal.append_durable(Record::new(TY, b"after the heal")).is_err(), "{fault}: the open log stays poisoned");
        assert!(wal.sync().is_err(), "{fault}: a sync after the heal");
        assert!(wal.retire_key(1).is_err(), "{fault}: a poisoned log cannot tell what its in-doubt records need");
        assert!(ring.get(1).is_some());
        drop(wal);
        assert_eq!(
            (storage.calls(FaultOp::Write), storage.calls(FaultOp::SyncData)),
            (writes, syncs),
            "{fault}: nothing written or synced after the heal, not even at the drop"
        );

        let wal = SegmentedWal::open_with(storage.clone(), config(&ring)).unwrap_or_else(|e| panic!("{fault}: reopen: {e}"));
        let read: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().collect::<Result<_, _>>().unwrap();
        for lsn in &acked {
            assert_eq!(read[(lsn.0 - 1) as usize].payload, payload(lsn.0), "{fault}: acknowledged {lsn}");
        }
        wal.append_durable(Record::new(TY, b"after the reopen")).expect("the reopened log takes appends");
    }
}
