//! The crash: [`SimStorage::crash`] pulls the plug and returns the disk a restart finds, built
//! from what each directory and each file's sectors may have kept.
//!
//! It is apart from the disk's state because it is the one call that builds a new disk from
//! an old one; what a directory or a file keeps is decided in `namespace` and `inode`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::inode::survivor;
use super::namespace::{Dir, dir_survives};
use super::{Disk, FaultConfig, SimRng, SimStorage};

impl SimStorage {
    /// Pulls the plug. This storage and every file opened from it fail all later calls with
    /// EIO; the returned storage is the disk a restart finds.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let acked = wal.append_durable(Record::new(RecordType::optional(0x100), b"acked"))?;
    /// wal.append(Record::new(RecordType::optional(0x100), b"in flight"))?;
    /// let restarted = sim.crash(99); // no close: the power is cut
    /// # drop(wal);
    /// let wal = SegmentedWal::open_with(restarted, SegmentedWalConfig::new("/wal"))?;
    /// assert!(wal.recovery_info().last_lsn >= acked, "every acknowledged record survives");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    #[must_use]
    pub fn crash(&self, seed: u64) -> SimStorage {
        let mut disk = self.lock();
        disk.dead = true;
        let mut rng = SimRng::new(seed);
        let mut inodes = HashMap::new();
        let mut dirs = BTreeMap::new();
        for (path, dir) in disk.dirs.iter().filter(|(path, _)| dir_survives(&disk.dirs, path)) {
            let entries = dir.after_crash(&mut rng);
            for &ino in entries.values() {
                inodes.entry(ino).or_insert_with(|| survivor(&disk.inodes[&ino], &mut rng));
            }
            dirs.insert(path.clone(), Dir { volatile: entries.clone(), durable: entries, written_back: Vec::new(), entry_durable: true });
        }
        let next = Disk {
            rng: SimRng::new(rng.next_u64()),
            faults: FaultConfig::default(),
            dead: false,
            inodes,
            next_ino: disk.next_ino,
            dirs,
            locks: HashSet::new(),
            holds: HashMap::new(),
            next_handle: disk.next_handle,
            fail_next_sync: false,
            sync_failure: disk.sync_failure,
            intermediate_writes: disk.intermediate_writes,
            syncs: 0,
            bytes_read: 0,
        };
        SimStorage { disk: Arc::new(Mutex::new(next)), direct_align: self.direct_align }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::mode;
    use super::*;
    use crate::storage::{Storage, StorageFile};

    #[test]
    fn synced_data_survives_a_crash_and_unsynced_entries_may_or_may_not() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let sim = SimStorage::new(1, FaultConfig::default());
            let dir = Path::new("/d");
            sim.create_dir_all(dir).unwrap();
            sim.create_dir_all(Path::new("/e")).unwrap();
            sim.sync_dir(Path::new("/")).unwrap();
            sim.create_dir_all(Path::new("/e/unsynced")).unwrap();
            let f = sim.open(&dir.join("a"), mode()).unwrap();
            f.write_at(b"hello", 0).unwrap();
            f.sync_data().unwrap();
            sim.sync_dir(dir).unwrap();
            let g = sim.open(&dir.join("b"), mode()).unwrap();
            g.write_at(b"kept", 0).unwrap();
            g.sync_data().unwrap();
            sim.remove(&dir.join("a")).unwrap();
            let after = sim.crash(seed);
            // Each of the three states the directory went through since its sync: synced (a),
            // after creating b (a, b), after removing a (b).
            let (a, b) = (after.read_file(&dir.join("a")), after.read_file(&dir.join("b")));
            assert!(a.is_some() || b.is_some(), "seed {seed}: no state of the directory lacked both");
            assert!(
                a.as_ref().is_none_or(|a| a == b"hello") && b.as_ref().is_none_or(|b| b == b"kept"),
                "seed {seed}: synced data is whole"
            );
            if b.is_some() {
                kept += 1
            } else {
                lost += 1
            }
            assert!(after.list(Path::new("/e")).is_ok());
            assert!(after.list(Path::new("/e/unsynced")).is_err(), "a directory whose parent was never synced vanishes");
            assert!(f.write_at(b"x", 0).is_err(), "old handles are dead");
            // A crash leaves a synced state: the next one finds the same entries.
            let names = after.list(dir).unwrap();
            assert_eq!(after.crash(seed + 1).list(dir).unwrap(), names, "seed {seed}");
        }
        assert!(kept > 0 && lost > 0, "an unsynced entry both survived and vanished: {kept} / {lost}");
    }
}
