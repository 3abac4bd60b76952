//! A file of [`FsStorage`](super::FsStorage): reads and writes by `pread`/`pwrite` (or one
//! io_uring submission for a write and its sync), and the per-file calls the log makes of the
//! kernel (fdatasync, flock holds, `posix_fadvise`, maps, `statx`). Apart from `fs.rs`, which
//! opens files and works on directories, because these are the calls on one open descriptor.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::FlockOperation;

use super::IoBackend;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
use crate::error::IoOp;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
use crate::storage::uring::Ring;
use crate::storage::{Advice, CrateOnly, DioAlign, Mapping, StorageFile};

/// A file of [`FsStorage`](super::FsStorage).
#[derive(Debug)]
pub struct FsFile {
    fd: OwnedFd,
    /// Opened through a symbolic link: the file lives under another name too.
    via_link: bool,
    /// The file's ring, set up by its first durable write: most files (readers, indexes) never
    /// make one, and a ring costs a descriptor and locked memory. On the pwrite backend it is
    /// set, to none, from the start.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    ring: std::sync::OnceLock<Option<std::sync::Mutex<Ring>>>,
}

impl FsFile {
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    pub(super) fn new(fd: OwnedFd, via_link: bool, backend: IoBackend) -> FsFile {
        let ring = match backend {
            IoBackend::IoUring => std::sync::OnceLock::new(),
            IoBackend::Pwrite => std::sync::OnceLock::from(None),
        };
        FsFile { fd, via_link, ring }
    }

    #[cfg(not(all(target_os = "linux", feature = "io-uring")))]
    pub(super) fn new(fd: OwnedFd, via_link: bool, _backend: IoBackend) -> FsFile {
        FsFile { fd, via_link }
    }

    /// The file's ring, if it writes through io_uring and one could be set up. Where the kernel
    /// refuses a ring for this file (out of locked memory on an older kernel, say), the file
    /// writes with pwrite + fdatasync: nothing was written yet, so nothing is retried.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    fn ring(&self) -> Option<&std::sync::Mutex<Ring>> {
        let ring = self.ring.get_or_init(|| match Ring::new() {
            Ok(ring) => Some(std::sync::Mutex::new(ring)),
            Err(err) => {
                tracing::warn!(%err, "cannot set up an io_uring for a file; it writes with pwrite + fdatasync");
                None
            }
        });
        ring.as_ref()
    }
}

impl StorageFile for FsFile {
    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
        let mut total = 0;
        while !buf.is_empty() {
            match rustix::io::pread(&self.fd, &mut *buf, offset) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    fn write_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match rustix::io::pwrite(&self.fd, buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing")),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(rustix::fs::fdatasync(&self.fd)?)
    }

    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, io::Error)> {
        match self.ring() {
            Some(ring) => ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write_and_sync(&self.fd, buf, offset),
            None => {
                self.write_at(buf, offset).map_err(|e| (IoOp::Write, e))?;
                self.sync_data().map_err(|e| (IoOp::SyncData, e))
            }
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        Ok(rustix::fs::ftruncate(&self.fd, len)?)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(u64::try_from(rustix::fs::fstat(&self.fd)?.st_size).unwrap_or(0))
    }

    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        let want = buf.len();
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        match rustix::io::preadv2(&self.fd, &mut [io::IoSliceMut::new(buf)], offset, flags) {
            Ok(n) if n == want => Ok(Some(n)),
            // Short: partly cached, or the end of the file; the caller reads again either way.
            Ok(_) => Ok(None),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL | rustix::io::Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn hold_shared(&self) -> io::Result<()> {
        // flock, not fcntl: its locks belong to the open file, so they conflict between two
        // opens in one process too, and a map's duplicate of the descriptor keeps them.
        match rustix::fs::flock(&self.fd, FlockOperation::LockShared) {
            // A file system without flock: read on. The writer cannot lock the file either,
            // and then removes truncated segments instead of reusing them.
            Err(rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
                tracing::debug!("no flock on this file system; segment files are not held");
                Ok(())
            }
            held => held.map_err(io::Error::from),
        }
    }

    fn has_other_links(&self) -> io::Result<bool> {
        Ok(self.via_link || rustix::fs::fstat(&self.fd)?.st_nlink > 1)
    }

    fn try_hold_exclusive(&self) -> io::Result<bool> {
        match rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn release_hold(&self) {
        if let Err(err) = rustix::fs::flock(&self.fd, FlockOperation::Unlock) {
            tracing::warn!(%err, "cannot release a segment file's lock");
        }
    }

    fn advise(&self, advice: Advice, offset: u64, len: u64) {
        use rustix::fs::Advice as Fadv;
        let advice = match advice {
            Advice::Sequential => Fadv::Sequential,
            Advice::Random => Fadv::Random,
            Advice::WillNeed => Fadv::WillNeed,
            Advice::DontNeed => Fadv::DontNeed,
        };
        if let Err(err) = rustix::fs::fadvise(&self.fd, offset, std::num::NonZeroU64::new(len), advice) {
            tracing::debug!(%err, ?advice, "posix_fadvise refused");
        }
    }

    fn map_sealed(&self, len: u64, _: CrateOnly) -> io::Result<Option<Mapping>> {
        Mapping::sequential(&self.fd, len).map(Some)
    }

    fn direct_io_alignment(&self) -> Option<DioAlign> {
        use rustix::fs::{AtFlags, StatxFlags};
        // ENOSYS before Linux 4.11, and a kernel before 6.1 leaves the bit out of the mask:
        // either way nothing is known, and the caller goes on as it did before it asked.
        let stat = rustix::fs::statx(&self.fd, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
        if !StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::DIOALIGN) {
            return None;
        }
        Some(DioAlign { offset: stat.stx_dio_offset_align, memory: stat.stx_dio_mem_align })
    }
}
