//! A simulated open file ([`SimFile`]): reads and writes against its inode's images, the
//! faults a write or a sync may meet, O_DIRECT's alignment, `flock`-like holds, and the page
//! cache's eviction (`Advice::DontNeed`) in whole pages as Linux does it.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, SECTOR, SyncFailure, alive, eio, errno};
use crate::storage::StorageFile;

/// A file of [`SimStorage`](super::SimStorage).
#[derive(Debug)]
pub struct SimFile {
    pub(super) disk: Arc<Mutex<Disk>>,
    pub(super) ino: u64,
    /// This open's own number: the owner of its hold (see `Disk::holds`).
    pub(super) handle: u64,
    /// Required alignment of offsets, lengths and addresses (1 unless opened O_DIRECT).
    pub(super) align: usize,
    pub(super) writable: bool,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        self.release_hold();
    }
}

impl SimFile {
    /// Takes this handle's hold on its inode, shared or exclusive, if no other handle's hold
    /// conflicts; whether it did.
    fn try_hold(&self, exclusive: bool) -> bool {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let holders = disk.holds.entry(self.ino).or_default();
        let conflicts = holders.iter().any(|(&handle, &other_exclusive)| handle != self.handle && (exclusive || other_exclusive));
        if !conflicts {
            holders.insert(self.handle, exclusive);
        }
        !conflicts
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        alive(&disk)?;
        Ok(disk)
    }

    fn fail_writeback(&self, disk: &mut Disk) {
        let policy = disk.sync_failure;
        let Disk { inodes, rng, .. } = disk;
        inodes.get_mut(&self.ino).expect("open inode exists").fail_writeback(policy, rng);
    }

    fn check_alignment(&self, addr: usize, len: usize, offset: u64) -> io::Result<()> {
        let a = self.align;
        if !addr.is_multiple_of(a) || !len.is_multiple_of(a) || !offset.is_multiple_of(a as u64) {
            return Err(errno(rustix::io::Errno::INVAL));
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check_alignment(buf.as_ptr() as usize, buf.len(), offset)?;
        let mut disk = self.lock()?;
        let inode = &disk.inodes[&self.ino];
        let data = &inode.volatile;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        if self.align > 1 {
            // O_DIRECT reads the disk, not the clean pages a failed sync left in the cache.
            let sectors = start / SECTOR..(start + n).div_ceil(SECTOR);
            for &sector in inode.unwritten_clean.range(sectors) {
                inode.overlay_disk(sector, &mut buf[..n], start);
            }
        }
        disk.bytes_read += n as u64;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_alignment(buf.as_ptr() as usize, buf.len(), offset)?;
        if !self.writable {
            return Err(errno(rustix::io::Errno::BADF));
        }
        let mut disk = self.lock()?;
        let faults = disk.faults;
        let failure = if disk.rng.chance_ppm(faults.write_eio_ppm) {
            Some(eio())
        } else if disk.rng.chance_ppm(faults.write_enospc_ppm) {
            Some(errno(rustix::io::Errno::NOSPC))
        } else {
            None
        };
        // A failing write may still have landed some of its sectors.
        let landed = match failure {
            Some(_) => usize::try_from(disk.rng.below(buf.len() as u64 + 1)).unwrap_or(0) / SECTOR * SECTOR,
            None => buf.len(),
        };
        let start = usize::try_from(offset).expect("offset fits in memory");
        let intermediate = disk.intermediate_writes;
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        if intermediate {
            inode.note_overwrites(start, landed);
        }
        if inode.volatile.len() < start + landed {
            inode.volatile.resize(start + landed, 0);
        }
        inode.volatile[start..start + landed].copy_from_slice(&buf[..landed]);
        let sectors = start / SECTOR..(start + landed).div_ceil(SECTOR);
        inode.holes.retain(|s| !sectors.contains(s));
        inode.unwritten_clean.retain(|s| !sectors.contains(s));
        inode.dirty.extend(sectors);
        failure.map_or(Ok(()), Err)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.lock()?;
        disk.syncs += 1;
        let rate = disk.faults.sync_fail_ppm;
        let fail = std::mem::take(&mut disk.fail_next_sync) || disk.rng.chance_ppm(rate);
        if fail {
            // Never retried by the kernel: the unsynced data is gone or stranded (SyncFailure).
            self.fail_writeback(&mut disk);
            return Err(eio());
        }
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.earlier.clear();
        let len = inode.volatile.len();
        inode.durable.resize(len, 0);
        inode.holes.clear();
        for sector in std::mem::take(&mut inode.dirty) {
            let start = sector * SECTOR;
            let end = (start + SECTOR).min(len);
            if start < end {
                inode.durable[start..end].copy_from_slice(&inode.volatile[start..end]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.lock()?;
        let len = usize::try_from(len).expect("length fits in memory");
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        let old = inode.volatile.len();
        inode.volatile.resize(len, 0);
        if len > old {
            // The sector the old end falls in holds data already; the ones after are a hole.
            inode.holes.extend(old.div_ceil(SECTOR)..len.div_ceil(SECTOR));
            inode.dirty.extend(old / SECTOR..len.div_ceil(SECTOR));
        } else {
            inode.dirty.retain(|&s| s * SECTOR < len);
            inode.holes.retain(|&s| s * SECTOR < len);
            inode.unwritten_clean.retain(|&s| s * SECTOR < len);
            inode.earlier.retain(|&s, _| s * SECTOR < len);
            // A shrink is metadata: it becomes durable with the next sync of this file.
            inode.dirty.insert(len / SECTOR);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let disk = self.lock()?;
        Ok(disk.inodes[&self.ino].volatile.len() as u64)
    }

    fn advise(&self, advice: crate::storage::Advice, offset: u64, len: u64) {
        if advice != crate::storage::Advice::DontNeed {
            return;
        }
        let Ok(mut disk) = self.lock() else { return };
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        let (from, to) = whole_cache_pages(offset, len, inode.volatile.len());
        inode.evict_clean(from, to);
    }

    fn hold_shared(&self) -> io::Result<()> {
        // As `flock`: waits while another handle holds the file exclusively (the writer, only
        // while it turns a truncated file into a new segment).
        while !self.try_hold(false) {
            std::thread::yield_now();
        }
        Ok(())
    }

    fn try_hold_exclusive(&self) -> io::Result<bool> {
        Ok(self.try_hold(true))
    }

    fn release_hold(&self) {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(holders) = disk.holds.get_mut(&self.ino) {
            holders.remove(&self.handle);
            if holders.is_empty() {
                disk.holds.remove(&self.ino);
            }
        }
    }

    fn sync_failed(&self) {
        let Ok(mut disk) = self.lock() else { return };
        // Only the Linux model changes what an injected failure leaves: under the first one
        // a wrapper's failed sync left the writes pending, and old tests rely on that.
        if disk.sync_failure == SyncFailure::KeepsCleanPages {
            self.fail_writeback(&mut disk);
        }
    }
}

/// Bytes of a page of the simulated page cache: what `Advice::DontNeed` drops whole or not at all.
const CACHE_PAGE: usize = 4096;

/// The part of `len` bytes at `offset` (to the end of the file where `len` is 0) that Linux's
/// `POSIX_FADV_DONTNEED` drops from a file of `file_len` bytes: whole pages only. A page the
/// range covers in part is kept, at either end, unless the range ends exactly at the end of
/// the file (`generic_fadvise`: "first and last FULL page"). Large folios make real pages
/// larger still; the simulation keeps to 4 KiB.
fn whole_cache_pages(offset: u64, len: u64, file_len: usize) -> (usize, usize) {
    let from = usize::try_from(offset).unwrap_or(usize::MAX).checked_next_multiple_of(CACHE_PAGE).unwrap_or(usize::MAX);
    if len == 0 {
        return (from, usize::MAX);
    }
    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
    let to = if end == file_len || end == usize::MAX { end } else { end - end % CACHE_PAGE };
    (from, to)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{durable_empty_file, linux_sim, mode};
    use super::*;
    use crate::storage::{FaultConfig, OpenMode, SimStorage, Storage};

    #[test]
    fn a_failed_sync_drops_unsynced_data() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.open(&dir.join("a"), mode()).unwrap();
        f.write_at(b"abc", 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 0);
    }

    #[test]
    fn a_failed_sync_under_the_linux_model_strands_clean_pages_no_later_sync_writes() {
        let (mut landed, mut stranded) = (0, 0);
        for seed in 0..32 {
            let sim = linux_sim(seed);
            let dir = Path::new("/d");
            let f = durable_empty_file(&sim);
            f.write_at(&[1u8; 8 * SECTOR], 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(&[2u8; 8 * SECTOR], 0).unwrap();
            sim.fail_next_sync();
            assert!(f.sync_data().is_err());
            f.sync_data().expect("a second sync succeeds: nothing is dirty");
            let mut cached = vec![0u8; 8 * SECTOR];
            f.read_at(&mut cached, 0).unwrap();
            assert_eq!(cached, [2u8; 8 * SECTOR], "seed {seed}: buffered reads see the stranded bytes");
            let direct = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
            let mut disk = crate::storage::AlignedBuf::zeroed(8 * SECTOR, 4096);
            direct.read_at(&mut disk, 0).unwrap();
            let after = sim.crash(seed).read_file(&dir.join("a")).unwrap();
            assert_eq!(after, &disk[..], "seed {seed}: O_DIRECT reads what a crash keeps");
            for sector in after.chunks(SECTOR) {
                assert!(sector == [1u8; SECTOR] || sector == [2u8; SECTOR], "seed {seed}: whole sectors, old or new");
                if sector[0] == 2 { landed += 1 } else { stranded += 1 }
            }
        }
        assert!(landed > 0 && stranded > 0, "some sectors reached the disk before the error, some not: {landed} / {stranded}");
    }

    #[test]
    fn evicting_stranded_pages_shows_the_disk_and_a_new_write_makes_them_durable() {
        let sim = linux_sim(5);
        let dir = Path::new("/d");
        let f = durable_empty_file(&sim);
        f.write_at(&[2u8; 16 * SECTOR], 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 16 * SECTOR as u64, "the file keeps its length");
        // Rewritten, the first half is dirty again and the next sync writes it.
        f.write_at(&[3u8; 8 * SECTOR], 0).unwrap();
        f.sync_data().unwrap();
        f.advise(crate::storage::Advice::DontNeed, 0, 0);
        let mut now = vec![0u8; 16 * SECTOR];
        f.read_at(&mut now, 0).unwrap();
        let after = sim.crash(1).read_file(&dir.join("a")).unwrap();
        assert_eq!(&after[..8 * SECTOR], &[3u8; 8 * SECTOR][..]);
        assert_eq!(&now[..after.len()], &after[..], "after eviction a buffered read sees the disk");
        assert!(now[after.len()..].iter().all(|&b| b == 0), "past the disk's end: zeros");
        assert!(now[8 * SECTOR..].chunks(SECTOR).any(|s| s == [0u8; SECTOR]), "some stranded sector never reached the disk");
    }

    #[test]
    fn dont_need_drops_only_whole_cache_pages_like_linux() {
        const LEN: usize = 2 * CACHE_PAGE + 1024;
        let sim = SimStorage::new(5, FaultConfig::default());
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        let f = sim.open(&dir.join("a"), mode()).unwrap();
        sim.sync_dir(dir).unwrap();
        f.write_at(&[2u8; LEN], 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        // O_DIRECT reads the disk.
        let direct = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
        let mut disk = crate::storage::AlignedBuf::zeroed(3 * CACHE_PAGE, 4096);
        direct.read_at(&mut disk, 0).unwrap();
        assert!(disk[..LEN].chunks(CACHE_PAGE).all(|page| page.contains(&0)), "some sector of each page stranded");
        let read = |f: &SimFile| {
            let mut buf = vec![0u8; LEN];
            f.read_at(&mut buf, 0).unwrap();
            buf
        };
        // Part of a page at either end is kept; a page wholly inside goes.
        f.advise(crate::storage::Advice::DontNeed, 1024, (2 * CACHE_PAGE - 512) as u64);
        let now = read(&f);
        assert!(now[..CACHE_PAGE].iter().all(|&b| b == 2), "the first page, in part in the range, stays");
        assert!(now[CACHE_PAGE..2 * CACHE_PAGE] == disk[CACHE_PAGE..2 * CACHE_PAGE], "the second page went");
        assert!(now[2 * CACHE_PAGE..].iter().all(|&b| b == 2), "the last page, in part in the range, stays");
        // A range ending past the end of the file, inside its last page, keeps that page; one
        // ending at the end of the file takes it.
        f.advise(crate::storage::Advice::DontNeed, (2 * CACHE_PAGE) as u64, 2048);
        assert!(read(&f)[2 * CACHE_PAGE..].iter().all(|&b| b == 2), "kept");
        f.advise(crate::storage::Advice::DontNeed, (2 * CACHE_PAGE) as u64, 1024);
        assert!(read(&f)[2 * CACHE_PAGE..] == disk[2 * CACHE_PAGE..LEN], "dropped");
    }

    #[test]
    fn an_injected_sync_failure_strands_the_writes_under_the_linux_model() {
        let sim = linux_sim(9);
        let faulty = crate::storage::faulty::FaultyStorage::new(sim.clone());
        let dir = Path::new("/d");
        let f = durable_empty_file(&faulty);
        f.write_at(&[2u8; 16 * SECTOR], 0).unwrap();
        faulty.fail_once(crate::storage::faulty::FaultOp::SyncData, 0, crate::storage::faulty::EIO);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        let after = sim.crash(1).read_file(&dir.join("a")).unwrap();
        assert!(after.len() < 16 * SECTOR || after.chunks(SECTOR).any(|s| s == [0u8; SECTOR]), "the later sync did not write them all");
    }

    #[test]
    fn direct_io_rejects_misaligned_writes() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
        let err = f.write_at(&[0u8; 100], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::INVAL.raw_os_error()));
    }
}
