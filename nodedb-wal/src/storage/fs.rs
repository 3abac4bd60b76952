//! The real file system, through `rustix`. This file opens files and works on directories
//! (creating, locking, listing, renaming, syncing them); the calls on an open file are in
//! `fs/file.rs`.

mod file;

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Access, AtFlags, CWD, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

pub use self::file::FsFile;
use super::{OpenMode, Storage};

/// How writes and syncs reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring: the write and the fdatasync are linked submissions of one system call.
    IoUring,
    /// pwrite followed by fdatasync.
    Pwrite,
}

/// The operating system's file system.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{FsStorage, IoBackend};
///
/// assert_eq!(FsStorage::new().backend(), IoBackend::Pwrite);
/// assert_eq!(FsStorage::pwrite_only().backend(), IoBackend::Pwrite);
/// // io_uring where the kernel allows it; the choice is logged and readable.
/// let chosen = FsStorage::io_uring().backend();
/// assert!(matches!(chosen, IoBackend::IoUring | IoBackend::Pwrite));
/// ```
#[derive(Clone, Debug)]
pub struct FsStorage {
    backend: IoBackend,
}

impl Default for FsStorage {
    fn default() -> Self {
        FsStorage::new()
    }
}

impl FsStorage {
    /// The default backend: pwrite + fdatasync. With one write and one sync in flight at a
    /// time, io_uring has nothing to batch and costs three hand-offs between threads per commit
    /// that a blocking pwrite and fdatasync do not (the direct-I/O completion worker, the
    /// submitter's task work, the io-wq worker that runs every io_uring fsync): measured slower
    /// at 1, 16 and 64 threads, whatever the ring's setup flags (docs/DESIGN.md, "Why pwrite is
    /// the default backend"). [`FsStorage::io_uring`] chooses io_uring.
    #[must_use]
    pub fn new() -> FsStorage {
        FsStorage::pwrite_only()
    }

    /// Always pwrite + fdatasync.
    #[must_use]
    pub fn pwrite_only() -> FsStorage {
        FsStorage { backend: IoBackend::Pwrite }
    }

    /// io_uring where the kernel allows it (and the `io-uring` feature is on): the write and the
    /// fdatasync as linked entries of one system call, through a ring the file sets up at its
    /// first durable write. Where io_uring is refused (ENOSYS, EPERM under seccomp,
    /// `kernel.io_uring_disabled`) or has no write operation (before Linux 5.6), pwrite +
    /// fdatasync; the choice is logged and reported by [`FsStorage::backend`].
    #[must_use]
    pub fn io_uring() -> FsStorage {
        let backend = probe_backend();
        tracing::info!(?backend, "nodedb-wal I/O backend chosen");
        FsStorage { backend }
    }

    /// The backend files opened by this storage use. (On io_uring, a file whose own ring cannot
    /// be set up at its first durable write uses pwrite + fdatasync instead, with a warning.)
    #[must_use]
    pub fn backend(&self) -> IoBackend {
        self.backend
    }
}

#[cfg(all(target_os = "linux", feature = "io-uring"))]
fn probe_backend() -> IoBackend {
    match super::uring::Ring::probe() {
        Ok(()) => IoBackend::IoUring,
        Err(err) => {
            tracing::warn!(%err, "io_uring refused; falling back to pwrite + fdatasync");
            IoBackend::Pwrite
        }
    }
}

#[cfg(not(all(target_os = "linux", feature = "io-uring")))]
fn probe_backend() -> IoBackend {
    IoBackend::Pwrite
}

/// Refuses a FIFO, socket, character device or directory opened where a file of the log (or a
/// page file) is expected: reading the first three can wait forever or never end, and a
/// directory opens for reading only to fail each read with EISDIR. Regular files and block
/// devices pass.
fn refuse_special_file(fd: &OwnedFd) -> io::Result<()> {
    let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode);
    let name = match kind {
        rustix::fs::FileType::Fifo => "a FIFO",
        rustix::fs::FileType::Socket => "a socket",
        rustix::fs::FileType::CharacterDevice => "a character device",
        rustix::fs::FileType::Directory => "a directory",
        _ => return Ok(()),
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file but {name}")))
}

/// A lock on a directory: an flock on its `LOCK` file, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    fd: OwnedFd,
    /// The process that took the lock.
    pid: rustix::process::Pid,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlock before the descriptor closes. An flock belongs to the open file, and a child
        // process that another thread is starting holds a copy of every descriptor from its
        // fork to its exec (close-on-exec or not): closing ours alone left the directory
        // locked until that child exec'd, and a reopen right after a close failed with
        // `Locked`. Only the process that locked unlocks: a child forked without exec that
        // drops its copy of the log must not release its parent's lock.
        if rustix::process::getpid() == self.pid
            && let Err(err) = rustix::fs::flock(&self.fd, FlockOperation::Unlock)
        {
            tracing::warn!(%err, "cannot release a log directory's lock");
        }
    }
}

impl Storage for FsStorage {
    type File = FsFile;
    type Lock = DirLock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir.join("LOCK"), flags, Mode::from_raw_mode(0o644))?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
        // A writer creates a segment at its first append: where the directory takes no new
        // entries (immutable, read-only to this user) it could never append, and an open that
        // succeeded would first have sealed the newest segment.
        takes_new_entries(dir)?;
        Ok(DirLock { fd, pid: rustix::process::getpid() })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        // Every entry, whatever its type: a directory or FIFO under a segment's name left out
        // would read as a segment gone, and the oldest one gone reads as truncated, so its
        // acknowledged records would vanish without a word. Listed, it fails when opened, and a
        // symlink is read through (a segment moved elsewhere and linked back).
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.extend(entry?.file_name().to_str().map(str::to_owned));
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FsFile> {
        let mut flags = OFlags::CLOEXEC;
        flags |= if mode.write { OFlags::RDWR } else { OFlags::RDONLY };
        if mode.create_new {
            // With O_EXCL the kernel refuses any entry under the name, a symbolic link too
            // (EEXIST, never ELOOP): the retry through a link below is never reached.
            flags |= OFlags::CREATE | OFlags::EXCL;
        } else if mode.create {
            flags |= OFlags::CREATE;
        }
        if mode.direct {
            flags |= OFlags::DIRECT;
        }
        // Whether the name is a symbolic link is asked of the open itself, not of a second
        // look that a rename in between could answer for another file: `O_NOFOLLOW` refuses a
        // link with ELOOP, and only then is the link followed. Non-blocking for the open alone:
        // a FIFO (or a link to one) under a file's name would otherwise block it until some
        // process opens the FIFO for writing, maybe never. O_DIRECT too is set only after the
        // file's type is checked: the kernel refuses it on a directory with EINVAL, which would
        // read as a file system that takes no O_DIRECT, not as a directory under a file's name.
        let (flags_once, mode_bits) = ((flags - OFlags::DIRECT) | OFlags::NONBLOCK, Mode::from_raw_mode(0o644));
        let (fd, via_link) = match rustix::fs::open(path, flags_once | OFlags::NOFOLLOW, mode_bits) {
            Err(rustix::io::Errno::LOOP) => (rustix::fs::open(path, flags_once, mode_bits)?, true),
            opened => (opened?, false),
        };
        refuse_special_file(&fd)?;
        // Cleared again: io_uring hands EAGAIN back for a file opened non-blocking. The status
        // flags are the ones just asked for (`F_SETFL` ignores the access and creation ones),
        // so no `F_GETFL` is needed to learn them. O_DIRECT is set here: `F_SETFL` refuses it
        // with EINVAL exactly where `open` would (a file system without direct I/O).
        rustix::fs::fcntl_setfl(&fd, flags)?;
        Ok(FsFile::new(fd, via_link, self.backend))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags};
        match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // Kernels before 3.15 lack renameat2 (ENOSYS); a file system without the flag
            // refuses it (EINVAL). Nothing was renamed either way.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "this file system cannot rename without replacing (RENAME_NOREPLACE)"))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::fs::fsync(&fd)?;
        Ok(())
    }
}

/// Whether this process may create entries in `dir`: asked with the effective ids and
/// capabilities (`faccessat2` with `AT_EACCESS`), as the kernel will judge the creation.
///
/// A seccomp filter older than `faccessat2` (Docker's default profile before 20.10, older
/// systemd sandboxes) answers it with `EPERM` rather than `ENOSYS`, which rustix falls back on
/// by itself; that `EPERM` would refuse every open. Plain `faccessat`, which such filters
/// allow, asks with the real ids, the same ones unless the process is set-id; an immutable
/// directory is `EPERM` there too. (It leaves out capabilities of a process whose real user
/// is not root: in such a sandbox, a user who may write the directory only by a capability
/// is refused.)
fn takes_new_entries(dir: &Path) -> io::Result<()> {
    match rustix::fs::accessat(CWD, dir, Access::WRITE_OK, AtFlags::EACCESS) {
        Err(Errno::PERM) if same_ids() => Ok(rustix::fs::accessat(CWD, dir, Access::WRITE_OK, AtFlags::empty())?),
        answer => Ok(answer?),
    }
}

/// Whether the real and effective user and group ids are the same (not a set-id process).
fn same_ids() -> bool {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    getuid() == geteuid() && getgid() == getegid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageFile;

    // Found by running the suite under load: a test reopening a log it had just closed got
    // `Locked` while another test of the binary was starting a process. A child holds a copy of
    // every descriptor between its fork and its exec, and a flock belongs to the open file, not
    // to one descriptor: closing ours left the directory locked until the child exec'd. The
    // copy is made here with `dup`, which shares the open file the same way.
    #[test]
    fn a_dropped_lock_is_released_even_where_a_copy_of_its_descriptor_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new();
        let lock = storage.lock_dir(dir.path()).unwrap();
        let forked_copy = rustix::io::dup(&lock.fd).unwrap();
        assert!(storage.lock_dir(dir.path()).is_err(), "held");
        drop(lock);
        let again = storage.lock_dir(dir.path()).expect("released when dropped, whoever else holds the open file");
        drop((again, forked_copy));
    }

    fn new_file() -> OpenMode {
        OpenMode { create: true, write: true, direct: false, create_new: true }
    }

    #[test]
    fn a_new_file_never_takes_over_a_name_in_use_not_even_a_link_that_leads_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new();
        let taken = dir.path().join("taken");
        std::fs::write(&taken, b"someone else's").unwrap();
        let err = storage.open(&taken, new_file()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
        // A plain create follows a link and makes its target; a new file does not.
        let (link, target) = (dir.path().join("link"), dir.path().join("target"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = storage.open(&link, new_file()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(!target.exists(), "nothing made through the link");
        let file = storage.open(&dir.path().join("free"), new_file()).unwrap();
        file.write_at(b"mine", 0).unwrap();
        assert_eq!(std::fs::read(dir.path().join("free")).unwrap(), b"mine");
    }

    #[test]
    fn a_rename_without_replacing_leaves_a_file_of_the_new_name_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::new();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::write(&from, b"kept").unwrap();
        std::fs::write(&to, b"someone else's").unwrap();
        let err = storage.rename_no_replace(&from, &to).unwrap_err();
        // A file system without RENAME_NOREPLACE (this test's temporary directory may be on
        // one) refuses the same way: nothing renamed.
        assert!(matches!(err.kind(), io::ErrorKind::AlreadyExists | io::ErrorKind::Unsupported), "{err}");
        assert_eq!((std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap()), (b"kept".to_vec(), b"someone else's".to_vec()));
        std::fs::remove_file(&to).unwrap();
        match storage.rename_no_replace(&from, &to) {
            Ok(()) => assert_eq!(std::fs::read(&to).unwrap(), b"kept"),
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}"),
        }
    }
}
