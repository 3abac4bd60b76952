//! Fault injection on any storage, per instance: a wrapper that makes chosen operations fail
//! with chosen errors, so tests of the real file system run in parallel without process-wide
//! failpoints. Reads and `len` never fail; everything else can.
//!
//! The fault plan and the calls a test arms it with are here; the wrapped storage's and
//! file's pass-through is in `wrap`.

mod wrap;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::wrap::FaultyFile;

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

    /// The disk came back: every fault armed and not yet spent ([`Self::fail_once`],
    /// [`Self::fail_from`], [`Self::fail_write_partially`]) is disarmed, and a cut power is
    /// restored. What models the file system rather than a failing disk stays
    /// ([`Self::refuse_open`], [`Self::refuse_direct_io`]), as do the counts.
    ///
    /// A log the fault poisoned stays poisoned: it never retries a failed fdatasync, whose
    /// success after a failure would not say that the earlier writes reached the disk. Drop it
    /// and open the log again through the same storage; recovery reads what the disk holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
    ///
    /// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let ty = RecordType::optional(0x100);
    /// wal.append_durable(Record::new(ty, b"kept"))?;
    /// storage.fail_from(FaultOp::SyncData, 0, EIO); // the disk fails every sync
    /// assert!(wal.append_durable(Record::new(ty, b"in doubt")).is_err());
    ///
    /// storage.heal();
    /// let err = wal.append_durable(Record::new(ty, b"refused")).unwrap_err();
    /// assert!(matches!(err, WalError::Poisoned { .. }), "the open log stays poisoned");
    /// drop(wal);
    ///
    /// let wal = SegmentedWal::open_with(storage, SegmentedWalConfig::new("/wal"))?;
    /// wal.append_durable(Record::new(ty, b"after"))?;
    /// assert_eq!(wal.read_from(wal.oldest_lsn())?.next().expect("a record")?.payload, b"kept");
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn heal(&self) {
        let mut state = self.state();
        state.rules.clear();
        state.power = None;
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
