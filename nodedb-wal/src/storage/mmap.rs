//! Read-only memory maps of sealed segment files, for readers that catch up on a long log.
//!
//! A map saves the copy a `pread` makes from the page cache into a buffer, and with sequential
//! advice the kernel reads ahead on its own. Pages a reader has passed are given back, both
//! from the process (`MADV_DONTNEED`) and from the page cache (`POSIX_FADV_DONTNEED`), so a
//! catch-up over gigabytes neither grows the reader's resident memory nor evicts the
//! database's hot pages.
//!
//! Only files that no one writes or shrinks while they are mapped may be mapped: the log maps
//! sealed segments only, which are never written again. Truncation unlinks them, which leaves
//! a mapping intact, or keeps a file to reuse as a later segment; every reader holds a shared
//! lock on the file it reads (`StorageFile::hold_shared`), and the writer reuses a file only
//! when it can lock it exclusively, so never one that is mapped. A segment's file is cut to its
//! final length before its end frame is written (`commit::seal_file`), so a segment seen sealed
//! never shrinks. The price of a map is that a disk read error is a `SIGBUS` instead of an
//! `EIO`; readers that need every error typed use the `pread` path, the default.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};

/// Pages are given back in steps of this many bytes: a multiple of every page size Linux uses
/// (4 KiB to 64 KiB), and large enough that the system calls cost nothing next to the reading.
pub const RELEASE_STEP: u64 = 4 << 20;

/// A read-only, shared map of the first `len` bytes of a file.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    /// Bytes below this were given back. Only the reader that owns the map moves it; an
    /// atomic lets a helper that checks ahead share the map (see `segment::ahead`).
    released: AtomicU64,
    /// Leave released steps in the page cache (the file was cached before the reader came).
    keep_cached: AtomicBool,
}

// SAFETY: the map is read-only and owned by this value; the pointer is never written through,
// so sharing or moving it between threads is like sharing a `&[u8]` / moving a `Box<[u8]>`.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only hands out shared byte slices.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).field("released", &self.released).finish()
    }
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` for sequential reading. The caller promises that
    /// those bytes are neither written nor cut off while the map lives (see the module docs):
    /// which is why only this crate may make one, for sealed segments.
    pub(crate) fn sequential(fd: impl AsFd, len: u64) -> io::Result<Mapping> {
        let fd = fd.as_fd().try_clone_to_owned()?;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Ok(Mapping { ptr: NonNull::dangling(), len: 0, fd, released: AtomicU64::new(0), keep_cached: AtomicBool::new(false) });
        }
        // SAFETY: a fresh shared read-only map chosen by the kernel (null hint) overlaps no Rust
        // object. The bytes stay valid while the map lives because the caller guarantees that
        // the first `len` bytes of the file are not truncated away (which would fault), and
        // unchanged, so handing them out as `&[u8]` never observes a write.
        let raw = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED, &fd, 0) }?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // SAFETY: advice on the range just mapped; it changes read-ahead only, never contents.
        if let Err(err) = unsafe { rustix::mm::madvise(raw, len, Advice::Sequential) } {
            tracing::debug!(%err, "madvise(MADV_SEQUENTIAL) refused; reading without it");
        }
        Ok(Mapping { ptr, len, fd, released: AtomicU64::new(0), keep_cached: AtomicBool::new(false) })
    }

    /// Bytes mapped.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes.
    #[must_use]
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` readable bytes for as long as `self` lives (see
        // `sequential`); for `len == 0` a dangling, aligned pointer makes an empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// From now on, released steps leave this process but stay in the page cache: for a file
    /// that was cached before the reader came, which it should leave as it found it.
    pub fn keep_cached(&self) {
        self.keep_cached.store(true, Ordering::Relaxed);
    }

    /// Says that the reader is done with the bytes below `offset`: whole release steps below it
    /// are dropped from this process and from the page cache. Reading them again still works
    /// (they fault back in from the disk); it is only slower.
    #[inline]
    pub fn release_below(&self, offset: u64) {
        // Called on every read: the common case is one comparison.
        if offset < self.released.load(Ordering::Relaxed) + RELEASE_STEP {
            return;
        }
        self.release_steps_below(offset);
    }

    fn release_steps_below(&self, offset: u64) {
        let upto = (offset.min(self.len as u64) / RELEASE_STEP) * RELEASE_STEP;
        let released = self.released.load(Ordering::Relaxed);
        if upto <= released {
            return;
        }
        let (start, len) = (released, upto - released);
        // SAFETY: `start..start + len` lies inside the map and starts on a page boundary (a
        // multiple of RELEASE_STEP from the page-aligned base). MADV_DONTNEED on a shared file map
        // only drops this process's page table entries; the next access reads the file again,
        // so no slice handed out earlier can see different bytes (the file is unchanged).
        let advised =
            unsafe { rustix::mm::madvise(self.ptr.as_ptr().add(start as usize).cast::<c_void>(), len as usize, Advice::LinuxDontNeed) };
        if let Err(err) = advised {
            tracing::debug!(%err, "madvise(MADV_DONTNEED) refused");
        }
        self.drop_from_cache(start, len);
        self.released.store(upto, Ordering::Relaxed);
    }

    /// Drops `len` bytes at `start` from the page cache, unless the file is to stay cached.
    fn drop_from_cache(&self, start: u64, len: u64) {
        if self.keep_cached.load(Ordering::Relaxed) {
            return;
        }
        if let Err(err) = rustix::fs::fadvise(&self.fd, start, NonZeroU64::new(len), rustix::fs::Advice::DontNeed) {
            tracing::debug!(%err, "posix_fadvise(DONTNEED) refused");
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: unmaps exactly the range `sequential` mapped; `&mut self` proves that no slice
        // borrowed from it is alive.
        if let Err(err) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) } {
            tracing::warn!(%err, "munmap failed");
        }
        // The steps not yet released (the reader's last ones, and what read-ahead brought past
        // it) leave the page cache too, now that no page of them is mapped here.
        let released = self.released.load(Ordering::Relaxed);
        if released < self.len as u64 {
            self.drop_from_cache(released, self.len as u64 - released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapping_reads_the_file_and_survives_releasing_its_pages() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..(3 * RELEASE_STEP as usize + 100)).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).expect("write");
        let map = Mapping::sequential(&file, data.len() as u64).expect("map");
        assert_eq!(map.bytes(), &data[..]);
        map.release_below(2 * RELEASE_STEP + 17);
        // Released pages fault back in with the same contents.
        assert_eq!(map.bytes(), &data[..]);
        assert_eq!(map.released.load(Ordering::Relaxed), 2 * RELEASE_STEP);
    }

    /// Resident kilobytes of the map starting at `addr`, from /proc/self/smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{addr:x}-")));
        lines.find_map(|l| l.strip_prefix("Rss:")).expect("the map is listed").trim().trim_end_matches("kB").trim().parse().expect("kB")
    }

    #[test]
    fn released_pages_leave_the_process() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let len = 4 * RELEASE_STEP as usize;
        file.write_all(&vec![7u8; len]).expect("write");
        let map = Mapping::sequential(&file, len as u64).expect("map");
        let sum: u64 = map.bytes().iter().step_by(4096).map(|&b| u64::from(b)).sum();
        assert_eq!(sum, 7 * (len / 4096) as u64);
        let addr = map.bytes().as_ptr() as usize;
        let before = resident_kib(addr);
        map.release_below(3 * RELEASE_STEP);
        let after = resident_kib(addr);
        assert!(before >= (len as u64 / 1024) * 9 / 10, "all pages were touched: {before} KiB resident");
        assert!(after <= RELEASE_STEP / 1024 + 64, "three of four steps given back: {after} KiB still resident");
    }

    #[test]
    fn an_empty_file_maps_to_an_empty_slice() {
        let file = tempfile::tempfile().expect("tempfile");
        let map = Mapping::sequential(&file, 0).expect("map");
        assert!(map.is_empty());
        assert_eq!(map.bytes(), &[] as &[u8]);
    }
}
