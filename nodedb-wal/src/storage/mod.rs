//! The storage seam: the only layer that makes system calls or uses `unsafe`.
//!
//! Everything above is generic over [`Storage`], with the real file system ([`FsStorage`]) as
//! the default and a deterministic simulation ([`SimStorage`]) for crash and fault tests.

mod aligned;
mod batch;
mod dio;
pub mod faulty;
mod fs;
pub mod memlock;
pub mod mmap;
mod sim;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
mod uring;

use std::io;
use std::path::Path;

use crate::error::IoOp;

pub use aligned::AlignedBuf;
pub use batch::{BatchBuf, Region};
pub(crate) use dio::too_fine;
pub use dio::{DioAlign, DirectIoPlan, plan_direct_io};
pub use fs::{FsStorage, IoBackend};
pub use mmap::Mapping;
pub use sim::{FaultConfig, SECTOR, SimRng, SimStorage, SyncFailure};

/// How to open a file.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// sim.create_dir_all("/d".as_ref())?;
/// let file = sim.open("/d/f".as_ref(), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// file.write_at(b"hello", 0)?;
/// file.sync_data()?;
/// let mut buf = [0u8; 5];
/// assert_eq!(file.read_at(&mut buf, 0)?, 5);
/// assert_eq!(&buf, b"hello");
/// assert_eq!(file.len()?, 5);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenMode {
    /// Create the file if it does not exist (never truncates an existing one).
    pub create: bool,
    /// Open for writing too.
    pub write: bool,
    /// Bypass the page cache (O_DIRECT). Offsets, lengths and buffer addresses must then be
    /// multiples of the alignment; a file system that refuses it returns `EINVAL` at open.
    pub direct: bool,
    /// Create the file, failing with `AlreadyExists` where its name is taken by anything (a
    /// file, a directory, a symbolic link, even one that leads nowhere): `O_CREAT | O_EXCL`.
    /// The check and the creation are one step, so a file someone else makes at the same
    /// moment is never opened as if it were new. `create` does not matter then.
    pub create_new: bool,
}

/// Proof that the caller is this crate: [`StorageFile::map_sealed`] takes one, and only this
/// crate can make one, because only it knows which files are sealed. Other storages can
/// implement the method (they have no way to build a [`Mapping`] and return `None`) but not
/// call it.
#[derive(Debug)]
pub struct CrateOnly(());

impl CrateOnly {
    pub(crate) fn new() -> CrateOnly {
        CrateOnly(())
    }
}

/// A hint about how a file will be read (`posix_fadvise`); storage may ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// Read front to back: read ahead generously.
    Sequential,
    /// Read here and there: read ahead nothing, so that bytes no one asks for stay on disk.
    Random,
    /// These bytes will be read soon: start reading them now.
    WillNeed,
    /// These bytes are done with: drop them from the page cache. Clean pages go (dirty ones are
    /// only started on their way to the disk), so a read after it sees the disk where a failed
    /// sync had left pages it never wrote; recovery relies on that. Only cache pages (folios)
    /// wholly inside the range go: a range that ends inside one keeps it, unless it ends at
    /// the end of the file (a `len` of 0 is to the end of the file).
    DontNeed,
}

/// A file system: a flat set of directories of files.
///
/// Guarantees every implementation gives:
/// - `create_dir_all`, `remove`, `rename` and file creation are durable only after `sync_dir`
///   of the parent directory returns Ok; a `rename` within a directory is atomic: after a crash
///   the file has its old name or its new one;
/// - `open` with [`OpenMode::create_new`] and `rename_no_replace` never take over or replace a
///   file that has the name already;
/// - `lock_dir` fails with `WouldBlock` while another holder keeps the lock.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// sim.create_dir_all("/d".as_ref())?;
/// drop(sim.open("/d/a".as_ref(), OpenMode { create: true, write: true, direct: false, create_new: false })?);
/// sim.sync_dir("/d".as_ref())?; // the new entry is durable only now
/// assert_eq!(sim.list("/d".as_ref())?, ["a"]);
/// let new = OpenMode { create: true, write: true, direct: false, create_new: true };
/// assert_eq!(sim.open("/d/a".as_ref(), new).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
/// let _lock = sim.lock_dir("/d".as_ref())?;
/// assert!(sim.lock_dir("/d".as_ref()).is_err(), "held");
/// sim.sync_dir("/".as_ref())?; // and /d's own entry
/// sim.rename("/d/a".as_ref(), "/d/b".as_ref())?;
/// assert_eq!(sim.list("/d".as_ref())?, ["b"]);
/// let restarted = sim.crash(2); // before a sync of the directory: the old name survives
/// assert_eq!(restarted.list("/d".as_ref())?, ["a"]);
/// drop(restarted.open("/d/b".as_ref(), new)?);
/// let refused = restarted.rename_no_replace("/d/b".as_ref(), "/d/a".as_ref());
/// assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists, "a is never replaced");
/// assert_eq!(restarted.list("/d".as_ref())?, ["a", "b"]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Storage: Send + Sync + 'static {
    /// An open file.
    type File: StorageFile;
    /// Held while the directory is locked; dropping it releases the lock.
    type Lock: Send + Sync + 'static;

    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on a directory (advisory, for writers of this crate). Fails
    /// where the directory takes no new entries: a writer that could never create a segment
    /// must not open.
    fn lock_dir(&self, dir: &Path) -> io::Result<Self::Lock>;
    /// Names of the entries of a directory, whatever their type: a name the log uses that is
    /// not a regular file must fail when opened, not be taken for a file that is not there.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens (or creates) a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file within one directory, replacing any file of the new name, atomically:
    /// after a crash the file has one name or the other (the new one once the directory is
    /// synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames a file within one directory as [`Storage::rename`] does, but never over
    /// another: where anything has the new name already, fails with `AlreadyExists` and
    /// changes nothing. The check and the rename are one step (`renameat2` with
    /// `RENAME_NOREPLACE`). Where the file system cannot do that, fails with `Unsupported`
    /// and changes nothing: a check followed by a plain rename could still replace a file
    /// made in between.
    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, removals and renames in a directory durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. All methods take `&self`: positions are explicit.
#[expect(clippy::len_without_is_empty, reason = "a file's length is a position, not a collection size")]
pub trait StorageFile: Send + Sync + 'static {
    /// Reads at `offset`; returns fewer bytes than asked only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (short writes are completed or turned into errors).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write and length change durable (fdatasync). After an error the
    /// state of unsynced data is unknown: callers must not retry and must not report it durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Writes and then syncs, as one step where the backend can chain them (io_uring).
    /// The error says which of the two failed.
    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, io::Error)> {
        self.write_at(buf, offset).map_err(|e| (IoOp::Write, e))?;
        self.sync_data().map_err(|e| (IoOp::SyncData, e))
    }
    /// Truncates or extends (with zeros) the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Reads at `offset` only if every byte is in the page cache already: `Ok(None)` where the
    /// read would wait for the disk, or where storage cannot tell (the default).
    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        let _ = (buf, offset);
        Ok(None)
    }
    /// Passes a reading hint for `len` bytes at `offset` (0 = to the end of the file) to the
    /// page cache. Best effort: a refused hint changes speed, never contents. The default
    /// ignores it.
    fn advise(&self, advice: Advice, offset: u64, len: u64) {
        let _ = (advice, offset, len);
    }
    /// Takes a shared advisory lock on the file, held while this handle (or a map made from
    /// it) is open: a reader's claim that the file must not be reused as a new segment under
    /// it (see [`StorageFile::try_hold_exclusive`]). Waits while the writer holds the file
    /// exclusively, which is only while it turns a truncated file into a new segment. Works
    /// across processes. The default does nothing (storage whose files are not shared).
    fn hold_shared(&self) -> io::Result<()> {
        Ok(())
    }
    /// Takes the advisory lock exclusively if no reader holds the file; `Ok(false)` where one
    /// does. The writer takes it before it reuses a truncated segment's file and lets it go
    /// ([`StorageFile::release_hold`]) once the file carries its new name. The default always
    /// succeeds.
    fn try_hold_exclusive(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Lets go of the lock taken by [`StorageFile::try_hold_exclusive`].
    fn release_hold(&self) {}
    /// Tells storage that a wrapper failed a `sync_data` of this file without passing it on
    /// ([`faulty::FaultyStorage`]), so that a simulation can leave the unsynced writes as a
    /// failed writeback would ([`SyncFailure`]) instead of pending for the next sync. Real
    /// storage decides that by itself; the default does nothing.
    fn sync_failed(&self) {}
    /// Whether the file has names besides the one it was opened by (hard links, such as a
    /// backup made with `cp -al`, or a symbolic link it was opened through): such a file must
    /// not be rewritten in place as a new segment, or the other names would change with it.
    /// The default says no (storage without links).
    fn has_other_links(&self) -> io::Result<bool> {
        Ok(false)
    }
    /// A read-only map of the first `len` bytes of a sealed segment, which no one writes or
    /// shrinks again, for fast sequential reading; `None` where this storage cannot map (the
    /// default), and readers then use [`StorageFile::read_at`]. Only this crate can call it
    /// (see [`CrateOnly`]): a map of a file someone writes or shrinks would hand out bytes
    /// that change under a `&[u8]`.
    fn map_sealed(&self, len: u64, token: CrateOnly) -> io::Result<Option<Mapping>> {
        let _ = (len, token);
        Ok(None)
    }
    /// What O_DIRECT I/O on this file must be aligned to, where the kernel says
    /// (`statx` with `STATX_DIOALIGN`, Linux 6.1 on); `None` where it does not, or where
    /// storage cannot tell (the default). Asked once per open of a log, a double-write buffer
    /// or a [`crate::WalWriter`] file, before anything is written (see [`plan_direct_io`]).
    fn direct_io_alignment(&self) -> Option<DioAlign> {
        None
    }
}

/// Takes the lock of a log directory for one writer of it (a [`crate::SegmentedWal`] or a
/// [`crate::WalWriter`]): held by another, it is [`crate::WalError::Locked`].
pub(crate) fn lock_log_dir<S: Storage>(storage: &S, dir: &Path) -> crate::error::Result<S::Lock> {
    storage.lock_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => crate::error::WalError::Locked { path: dir.to_path_buf() },
        _ => crate::error::WalError::Io { op: IoOp::Lock, path: dir.to_path_buf(), source: e },
    })
}

/// Whether an open error means "this file system refuses O_DIRECT".
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::is_direct_io_refusal;
///
/// assert!(is_direct_io_refusal(&std::io::Error::from_raw_os_error(22))); // EINVAL
/// assert!(!is_direct_io_refusal(&std::io::Error::from_raw_os_error(2)));
/// ```
#[must_use]
pub fn is_direct_io_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Whether an error means "no room": the disk is full (`ENOSPC`) or the user's quota is used up
/// (`EDQUOT`).
pub(crate) fn is_out_of_space(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Creates `dir` and makes its entry, and every ancestor's, durable: a new directory's entry
/// survives a power cut only once its parent is synced. Levels that already existed are
/// synced too, because an earlier open may have created them and died before syncing; where
/// such a level's parent may not be read the sync is skipped (that open could not have
/// created the level either). A few directory syncs, once per open. Returns the failing step.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::{FaultConfig, Storage, create_dir_durably};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// create_dir_durably(&sim, "/data/db/wal".as_ref()).map_err(|(_, e)| e)?;
/// assert!(sim.list("/data/db/wal".as_ref())?.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn create_dir_durably<S: Storage>(storage: &S, dir: &Path) -> Result<(), (IoOp, io::Error)> {
    let levels: Vec<&Path> = dir.ancestors().filter(|p| !p.as_os_str().is_empty()).collect();
    let missing: Vec<&Path> =
        levels.iter().copied().take_while(|p| storage.list(p).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)).collect();
    storage.create_dir_all(dir).map_err(|e| (IoOp::CreateDir, not_a_directory(e)))?;
    for level in levels.iter().rev() {
        // The root has no entry to sync; a relative path's top level lives in ".".
        let Some(parent) = level.parent() else { continue };
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        match storage.sync_dir(parent) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !missing.contains(level) => {
                tracing::debug!(dir = %parent.display(), "directory not readable; its sync is skipped");
            }
            other => other.map_err(|e| (IoOp::SyncDir, e))?,
        }
    }
    Ok(())
}

/// Whether `path`'s name is in its directory's listing, where opening it may have found
/// nothing: a name that is listed but opens to nothing is a symbolic link to nothing, not a
/// missing file. Where the directory cannot be listed, the name counts as not listed.
pub(crate) fn is_listed<S: Storage>(storage: &S, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    storage.list(dir).is_ok_and(|names| names.iter().any(|n| n == name))
}

/// `create_dir_all` says "File exists" where the path (or a parent) is a file: it is there, but
/// no directory, which is what the caller needs to hear (and what a look at it says).
fn not_a_directory(err: io::Error) -> io::Error {
    match err.kind() {
        io::ErrorKind::AlreadyExists => io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error()),
        _ => err,
    }
}
