//! One simulated file's bytes: the volatile image reads see, the durable image a crash keeps,
//! and the sectors between the two ([`Inode`]); and what a crash leaves of it ([`survivor`]).
//!
//! A sector is the unit a crash keeps or loses whole, so every set here is a set of sector
//! indexes.

use std::collections::{BTreeMap, BTreeSet};

use super::{SECTOR, SimRng, SyncFailure};

#[derive(Clone, Debug, Default)]
pub(super) struct Inode {
    pub(super) volatile: Vec<u8>,
    pub(super) durable: Vec<u8>,
    pub(super) dirty: BTreeSet<usize>,
    /// Dirty sectors that only `set_len` made (a hole, never written since): a crash never
    /// fills them with stale bytes.
    pub(super) holes: BTreeSet<usize>,
    /// Sectors a failed sync left in the page cache, clean but never written
    /// ([`SyncFailure::KeepsCleanPages`]): `volatile` holds what buffered reads see, `durable`
    /// what the disk holds.
    pub(super) unwritten_clean: BTreeSet<usize>,
    /// Earlier contents of dirty sectors that were written again before a sync, oldest first
    /// (only with
    /// [`SimStorage::set_intermediate_writes`](super::SimStorage::set_intermediate_writes)):
    /// writeback may have taken any of them to the disk in between.
    pub(super) earlier: BTreeMap<usize, Vec<Vec<u8>>>,
}

impl Inode {
    /// Copies one sector of `volatile` to the disk image, extending it as needed.
    pub(super) fn persist(&mut self, sector: usize) {
        let start = sector * SECTOR;
        let end = (start + SECTOR).min(self.volatile.len());
        if start >= end {
            return;
        }
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(&self.volatile[start..end]);
    }

    /// The disk's bytes of `sector` in `buf`, for the part of it that `buf` covers (`buf`
    /// starts at byte `at` of the file); zeros past the disk image's end.
    pub(super) fn overlay_disk(&self, sector: usize, buf: &mut [u8], at: usize) {
        let (start, end) = ((sector * SECTOR).max(at), (sector * SECTOR + SECTOR).min(at + buf.len()));
        for i in start..end {
            buf[i - at] = self.durable.get(i).copied().unwrap_or(0);
        }
    }

    /// What a failed sync does under `policy`.
    pub(super) fn fail_writeback(&mut self, policy: SyncFailure, rng: &mut SimRng) {
        match policy {
            SyncFailure::DropsUnsynced => {
                self.volatile = self.durable.clone();
                self.dirty.clear();
                self.unwritten_clean.clear();
            }
            SyncFailure::KeepsCleanPages => {
                for sector in std::mem::take(&mut self.dirty) {
                    if rng.below(2) == 0 {
                        self.persist(sector);
                    } else {
                        self.unwritten_clean.insert(sector);
                    }
                }
            }
        }
        self.holes.clear();
        self.earlier.clear();
    }

    /// Keeps the contents of dirty sectors that a write of `len` bytes at `start` replaces.
    pub(super) fn note_overwrites(&mut self, start: usize, len: usize) {
        /// Versions kept per sector: enough to pick from, bounded for long runs.
        const VERSIONS_MAX: usize = 8;
        for sector in start / SECTOR..(start + len).div_ceil(SECTOR) {
            let (from, to) = (sector * SECTOR, (sector * SECTOR + SECTOR).min(self.volatile.len()));
            if !self.dirty.contains(&sector) || from >= to {
                continue;
            }
            let versions = self.earlier.entry(sector).or_default();
            if versions.len() == VERSIONS_MAX {
                versions.remove(0);
            }
            versions.push(self.volatile[from..to].to_vec());
        }
    }

    /// Evicts clean pages: sectors a failed sync left unwritten read as the disk has them.
    pub(super) fn evict_clean(&mut self, from: usize, to: usize) {
        let evicted: Vec<usize> = self.unwritten_clean.iter().copied().filter(|&s| s * SECTOR < to && s * SECTOR + SECTOR > from).collect();
        for sector in evicted {
            self.unwritten_clean.remove(&sector);
            let start = sector * SECTOR;
            let end = (start + SECTOR).min(self.volatile.len());
            if start < end {
                let mut disk = vec![0u8; end - start];
                self.overlay_disk(sector, &mut disk, start);
                self.volatile[start..end].copy_from_slice(&disk);
            }
        }
    }
}

/// What a crash leaves of one file: the durable image plus a random subset of dirty sectors.
/// Where unsynced writes had made the file longer, the new length may have been written back
/// without all the data (half the time): written sectors that did not land then read as zeros,
/// or as whatever an earlier file left in those blocks (stale bytes, modelled as random ones).
/// Space the file never wrote stays a hole of zeros.
pub(super) fn survivor(inode: &Inode, rng: &mut SimRng) -> Inode {
    let durable_len = inode.durable.len();
    let mut bytes = inode.durable.clone();
    let grown = inode.volatile.len() > durable_len && rng.below(2) == 0;
    if grown {
        bytes.resize(inode.volatile.len(), 0);
    }
    let stale = grown && rng.below(2) == 0;
    for &sector in &inode.dirty {
        let start = sector * SECTOR;
        let end = (start + SECTOR).min(inode.volatile.len());
        if start >= end {
            continue;
        }
        if rng.below(2) == 0 {
            if stale && start >= durable_len && !inode.holes.contains(&sector) {
                bytes[start..end].iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            }
            continue;
        }
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(&inode.volatile[start..end]);
        // Written back in between: an earlier write of the sector may be the one on disk.
        if let Some(versions) = inode.earlier.get(&sector) {
            let pick = rng.below(versions.len() as u64 + 1) as usize;
            if let Some(version) = versions.get(pick) {
                let n = version.len().min(end - start);
                bytes[start..start + n].copy_from_slice(&version[..n]);
            }
        }
    }
    Inode { volatile: bytes.clone(), durable: bytes, ..Inode::default() }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::mode;
    use crate::storage::{FaultConfig, SECTOR, SimStorage, Storage, StorageFile};

    #[test]
    fn a_crash_may_keep_a_grown_length_with_zeros_or_stale_bytes_where_writes_did_not_land() {
        let (mut short, mut zeros, mut stale) = (0, 0, 0);
        for seed in 0..200 {
            let sim = SimStorage::new(1, FaultConfig::default());
            let dir = Path::new("/d");
            sim.create_dir_all(dir).unwrap();
            sim.sync_dir(Path::new("/")).unwrap();
            let f = sim.open(&dir.join("a"), mode()).unwrap();
            f.write_at(&[7u8; SECTOR], 0).unwrap();
            f.sync_data().unwrap();
            sim.sync_dir(dir).unwrap();
            f.set_len(4 * SECTOR as u64).unwrap(); // a hole, never written
            f.write_at(&[9u8; 2 * SECTOR], 4 * SECTOR as u64).unwrap();
            let after = sim.crash(seed).read_file(&dir.join("a")).unwrap();
            assert_eq!(&after[..SECTOR], &[7u8; SECTOR][..], "seed {seed}: synced bytes are kept");
            if after.len() == SECTOR {
                short += 1;
                continue;
            }
            assert!(after[SECTOR..(4 * SECTOR).min(after.len())].iter().all(|&b| b == 0), "seed {seed}: a hole reads as zeros");
            for sector in after.get(4 * SECTOR..).unwrap_or_default().chunks(SECTOR) {
                if sector.iter().all(|&b| b == 0) {
                    zeros += 1;
                } else if sector.iter().any(|&b| b != 9) {
                    stale += 1;
                }
            }
        }
        assert!(short > 0 && zeros > 0 && stale > 0, "old length {short}, lost sectors as zeros {zeros}, as stale bytes {stale}");
    }
}
