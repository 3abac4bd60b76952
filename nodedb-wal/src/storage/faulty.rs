//! Fault injection on any storage, per instance: a wrapper that makes chosen operations fail
//! with chosen errors, so tests of the real file system run in parallel without process-wide
//! failpoints. Reads and `len` never fail; everything else can.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{OpenMode, Storage, StorageFile};
use crate::error::IoOp;

/// `EIO`: the device reported an I/O error.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// # storage.create_dir_all(Path::new("/d"))?;
/// # let file = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
///
/// storage.fail_once(FaultOp::Write, 0, EIO);
/// let err = file.write_at(b"data", 0).unwrap_err();
/// assert_eq!(err.raw_os_error(), Some(EIO));
/// # Ok::<(), std::io::Error>(())
/// ```
pub const EIO: i32 = 5;
/// `ENOSPC`: no space left on the device.
///
/// # Examples
///
/// ```
/// use std::io::ErrorKind;
///
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::storage::faulty::{ENOSPC, FaultOp, FaultyStorage};
/// use nodedb_wal::{IoOp, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"))?;
/// storage.fail_from(FaultOp::Write, 0, ENOSPC); // the disk is full from now on
/// let err = wal.append_durable(Record::new(RecordType::optional(0x100), b"no room")).unwrap_err();
/// assert!(matches!(err, WalError::Poisoned { op: IoOp::Write, kind: ErrorKind::StorageFull, .. }), "{err}");
/// # Ok::<(), WalError>(())
/// ```
pub const ENOSPC: i32 = 28;
/// `EINVAL`: what `open` returns where the file system refuses O_DIRECT.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::faulty::EINVAL;
/// use nodedb_wal::storage::is_direct_io_refusal;
///
/// assert!(is_direct_io_refusal(&std::io::Error::from_raw_os_error(EINVAL)));
/// ```
pub const EINVAL: i32 = 22;
/// `EACCES`: permission denied.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::faulty::EACCES;
///
/// let err = std::io::Error::from_raw_os_error(EACCES);
/// assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
/// ```
pub const EACCES: i32 = 13;

/// An operation a fault can hit.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::storage::faulty::{FaultOp, FaultyStorage};
/// use nodedb_wal::{SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"))?;
/// // Creating the log directory made its entry durable, up to the root.
/// assert!(storage.calls(FaultOp::SyncDir) >= 1);
/// assert_eq!(storage.calls(FaultOp::Remove), 0);
/// # drop(wal);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `StorageFile::write_at` (and the write half of `write_and_sync`).
    Write,
    /// `StorageFile::sync_data` (and the sync half of `write_and_sync`).
    SyncData,
    /// `Storage::sync_dir`.
    SyncDir,
    /// `Storage::remove`.
    Remove,
    /// `StorageFile::set_len`.
    SetLen,
    /// `Storage::rename` and `Storage::rename_no_replace`.
    Rename,
}

const OPS: usize = 6;

impl FaultOp {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    op: FaultOp,
    /// Matching calls still let through before the fault hits.
    after: u64,
    errno: i32,
    /// A write puts the first half of its bytes down before it fails.
    partial: bool,
    /// Fails every matching call from then on, not just one.
    sticky: bool,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    calls: [u64; OPS],
    injected: u64,
    refuse_direct: bool,
    /// Operations left before the power is cut (`None`: no cut planned).
    power: Option<u64>,
    refuse_open: Option<PathBuf>,
}

/// What a call should do: go on, fail, or (a write) put down half its bytes and then fail.
enum Verdict {
    Pass,
    Fail(i32),
    Partial(i32),
}

fn lock_state(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Counts the call; an error if a fault hits it (a partial write is the caller's to do).
    fn check(&mut self, op: FaultOp) -> io::Result<()> {
        match self.verdict(op) {
            Verdict::Pass => Ok(()),
            Verdict::Fail(errno) | Verdict::Partial(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn verdict(&mut self, op: FaultOp) -> Verdict {
        self.calls[op.index()] += 1;
        match &mut self.power {
            Some(0) => {
                self.injected += 1;
                return Verdict::Fail(EIO);
            }
            Some(left) => *left -= 1,
            None => {}
        }
        let hit = self.rules.iter().position(|r| r.op == op && r.after == 0);
        // This call counts against every other rule for the operation, hit or not.
        self.rules.iter_mut().filter(|r| r.op == op && r.after > 0).for_each(|r| r.after -= 1);
        let Some(at) = hit else { return Verdict::Pass };
        let rule = self.rules[at];
        if !rule.sticky {
            self.rules.remove(at);
        }
        self.injected += 1;
        if rule.partial { Verdict::Partial(rule.errno) } else { Verdict::Fail(rule.errno) }
    }
}

/// A storage whose operations fail on demand. Clones share their fault plan, so a test keeps a
/// clone to arm faults in a log that owns the other.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let storage = FaultyStorage::new(sim.clone());
/// let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"))?;
/// let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"kept"))?;
/// storage.fail_once(FaultOp::SyncData, 0, EIO);
/// assert!(wal.append_durable(Record::new(ty, b"lost")).is_err());
/// assert_eq!(storage.injected(), 1);
/// drop(wal);
///
/// // After a crash, the acknowledged record is there; the other may or may not be.
/// let wal = SegmentedWal::open_with(sim.crash(7), SegmentedWalConfig::new("/wal"))?;
/// let first = wal.read_from(Lsn::FIRST)?.next().expect("the acknowledged record")?;
/// assert_eq!(first.payload, b"kept");
/// # Ok::<(), WalError>(())
/// ```
#[derive(Clone, Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    state: Arc<Mutex<State>>,
}

impl<S> FaultyStorage<S> {
    /// Wraps a storage; nothing fails until a fault is armed. See [`FaultyStorage`] for an
    /// example.
    pub fn new(inner: S) -> FaultyStorage<S> {
        FaultyStorage { inner, state: Arc::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock_state(&self.state)
    }

    /// The next `op` after `after` more succeed fails once with `errno`.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// # storage.create_dir_all(Path::new("/d"))?;
    /// # let file = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    ///
    /// storage.fail_once(FaultOp::SyncData, 1, EIO);
    /// file.sync_data()?; // one more succeeds
    /// assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(EIO));
    /// file.sync_data()?; // and then the fault is spent
    /// assert_eq!((storage.calls(FaultOp::SyncData), storage.injected()), (3, 1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_once(&self, op: FaultOp, after: u64, errno: i32) {
        self.state().rules.push(Rule { op, after, errno, partial: false, sticky: false });
    }

    /// Every `op` after `after` more succeed fails with `errno`.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// # storage.create_dir_all(Path::new("/d"))?;
    /// # let file = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    ///
    /// storage.fail_from(FaultOp::SetLen, 0, EIO);
    /// assert!(file.set_len(4096).is_err());
    /// assert!(file.set_len(4096).is_err(), "and every time after");
    /// assert_eq!(storage.injected(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_from(&self, op: FaultOp, after: u64, errno: i32) {
        self.state().rules.push(Rule { op, after, errno, partial: false, sticky: true });
    }

    /// The next write after `after` more succeed puts down the first half of its bytes, then
    /// fails with `errno`: a short write the backend could not complete.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::faulty::{EIO, FaultyStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// # storage.create_dir_all(Path::new("/d"))?;
    /// # let file = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    ///
    /// storage.fail_write_partially(0, EIO);
    /// assert!(file.write_at(&[7u8; 8192], 0).is_err());
    /// // Half of the bytes, rounded down to 4 KiB, reached the file anyway.
    /// assert_eq!(file.len()?, 4096);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_write_partially(&self, after: u64, errno: i32) {
        self.state().rules.push(Rule { op: FaultOp::Write, after, errno, partial: true, sticky: false });
    }

    /// The next `ops` operations (of every kind a fault can hit) succeed, every one after fails
    /// with EIO, reads go on working: the moment the power is cut. On a simulated disk, its
    /// `crash` then gives what a restart finds.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::faulty::FaultyStorage;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// # storage.create_dir_all(Path::new("/d"))?;
    /// # let file = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    ///
    /// storage.cut_power_after(2);
    /// file.write_at(b"first", 0)?;
    /// file.sync_data()?;
    /// assert!(file.write_at(b"second", 5).is_err(), "the power is out");
    /// let mut buf = [0u8; 5];
    /// assert_eq!(file.read_at(&mut buf, 0)?, 5, "reads still work");
    /// storage.restore_power();
    /// file.write_at(b"second", 5)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn cut_power_after(&self, ops: u64) {
        self.state().power = Some(ops);
    }

    /// Cancels [`Self::cut_power_after`], whose example shows it.
    pub fn restore_power(&self) {
        self.state().power = None;
    }

    /// Opening `path` fails with `EACCES`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use std::path::Path;
    ///
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::faulty::FaultyStorage;
    /// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage};
    ///
    /// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// storage.create_dir_all(Path::new("/d"))?;
    /// storage.refuse_open(Path::new("/d/secret"));
    /// let mode = OpenMode { create: true, write: true, direct: false, create_new: false };
    /// assert_eq!(storage.open(Path::new("/d/secret"), mode).unwrap_err().kind(), ErrorKind::PermissionDenied);
    /// assert!(storage.open(Path::new("/d/other"), mode).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn refuse_open(&self, path: &Path) {
        self.state().refuse_open = Some(path.to_path_buf());
    }

    /// Every open with O_DIRECT fails with `EINVAL`, as on a file system that refuses it.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::storage::faulty::FaultyStorage;
    /// use nodedb_wal::{SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
    ///
    /// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// storage.refuse_direct_io();
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// let err = SegmentedWal::open_with(storage.clone(), config.clone()).unwrap_err();
    /// assert!(matches!(err, WalError::DirectIoUnsupported { .. }), "{err}");
    /// assert!(err.to_string().contains("set allow_buffered_fallback"), "the message names the way out: {err}");
    ///
    /// config.allow_buffered_fallback = true;
    /// let wal = SegmentedWal::open_with(storage, config)?;
    /// assert!(!wal.direct_io(), "fell back to the page cache");
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn refuse_direct_io(&self) {
        self.state().refuse_direct = true;
    }

    /// Calls of `op` so far, failed or not. See [`Self::fail_once`] for an example.
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.state().calls[op.index()]
    }

    /// Faults injected so far. See [`Self::fail_once`] for an example.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    fn check(&self, op: FaultOp) -> io::Result<()> {
        self.state().check(op)
    }
}

/// A file of a [`FaultyStorage`]: the wrapped storage's file, failing as its storage's fault
/// plan says.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::faulty::{FaultyFile, FaultyStorage};
/// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// storage.create_dir_all(Path::new("/d"))?;
/// let file: FaultyFile<_> = storage.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// file.write_at(b"abc", 0)?;
/// assert_eq!(file.len()?, 3);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct FaultyFile<F> {
    inner: F,
    state: Arc<Mutex<State>>,
}

impl<F> FaultyFile<F> {
    fn check(&self, op: FaultOp) -> io::Result<()> {
        lock_state(&self.state).check(op)
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    type File = FaultyFile<S::File>;
    type Lock = S::Lock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<S::Lock> {
        self.inner.lock_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File> {
        let state = self.state();
        if mode.direct && state.refuse_direct {
            return Err(io::Error::from_raw_os_error(EINVAL));
        }
        if state.refuse_open.as_deref() == Some(path) {
            return Err(io::Error::from_raw_os_error(EACCES));
        }
        drop(state);
        Ok(FaultyFile { inner: self.inner.open(path, mode)?, state: Arc::clone(&self.state) })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::Remove)?;
        self.inner.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename)?;
        self.inner.rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename)?;
        self.inner.rename_no_replace(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultOp::SyncDir)?;
        self.inner.sync_dir(dir)
    }
}

impl<F: StorageFile> StorageFile for FaultyFile<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let verdict = lock_state(&self.state).verdict(FaultOp::Write);
        match verdict {
            Verdict::Pass => self.inner.write_at(buf, offset),
            Verdict::Fail(errno) => Err(io::Error::from_raw_os_error(errno)),
            Verdict::Partial(errno) => {
                // Half, rounded down to a multiple of 4 KiB so that O_DIRECT takes it.
                let half = (buf.len() / 2) & !4095;
                if half > 0 {
                    self.inner.write_at(&buf[..half], offset)?;
                }
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Err(e) = self.check(FaultOp::SyncData) {
            self.inner.sync_failed();
            return Err(e);
        }
        self.inner.sync_data()
    }

    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, io::Error)> {
        // Split, so that each half meets its own faults; without faults armed for either, the
        // inner storage's own chained path runs.
        let armed = {
            let mut state = lock_state(&self.state);
            let armed = state.power.is_some() || state.rules.iter().any(|r| matches!(r.op, FaultOp::Write | FaultOp::SyncData));
            if !armed {
                state.calls[FaultOp::Write.index()] += 1;
                state.calls[FaultOp::SyncData.index()] += 1;
            }
            armed
        };
        if !armed {
            return self.inner.write_and_sync(buf, offset);
        }
        self.write_at(buf, offset).map_err(|e| (IoOp::Write, e))?;
        self.sync_data().map_err(|e| (IoOp::SyncData, e))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(FaultOp::SetLen)?;
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn advise(&self, advice: crate::storage::Advice, offset: u64, len: u64) {
        self.inner.advise(advice, offset, len);
    }

    fn hold_shared(&self) -> io::Result<()> {
        self.inner.hold_shared()
    }

    fn try_hold_exclusive(&self) -> io::Result<bool> {
        self.inner.try_hold_exclusive()
    }

    fn has_other_links(&self) -> io::Result<bool> {
        self.inner.has_other_links()
    }

    fn direct_io_alignment(&self) -> Option<crate::storage::DioAlign> {
        self.inner.direct_io_alignment()
    }

    fn release_hold(&self) {
        self.inner.release_hold();
    }

    fn sync_failed(&self) {
        self.inner.sync_failed();
    }
}
