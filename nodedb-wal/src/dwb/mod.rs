//! The double-write buffer: torn-page protection for storage engines that write pages in place.
//!
//! [`DoubleWriteBuffer::write_pages`] writes a batch of page images, checksummed and numbered,
//! into a ring in a side file with one write and one fdatasync; only then writes each page in
//! place and syncs every page file it touched. A crash can tear the batch in the buffer (the
//! pages in place are then untouched) or the pages in place (the batch is then durable), never
//! both. [`DoubleWriteBuffer::recover`] puts every page back to a whole image: see
//! [`decide`] for the decision table. The space of a batch in the ring is reused only after
//! its in-place writes are durable: batches are written one at a time, each call returns only
//! after its page files are synced, and a failed in-place write or sync poisons the buffer.
//!
//! The buffer shares only `storage` and `format` with the rest of the crate. The design is in
//! `docs/DESIGN.md` ("Double-write buffer"), the bytes in `docs/FORMAT.md`.
//!
//! This file opens the buffer and keeps its registry of page files; what it does at a restart
//! before it accepts pages is in `restart`, and page writes are in `write`.

mod batch;
mod config;
mod recover;
mod restart;
mod ring;
pub mod scan;
mod stats;
mod targets;
mod write;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use config::{DegradedPolicy, DwbConfig, DwbMode};
pub use recover::{DwbRecovery, PageAction, PageCheck, decide};
pub use stats::{DwbStats, wal_dwb_bytes_written_total};
pub use targets::PageWrite;

pub use crate::format::dwb::FileId;

use self::ring::{Opened, Ring};
use self::stats::Counters;
use self::targets::Targets;
use crate::error::{IoOp, Poison, Result, WalError};
use crate::storage::{AlignedBuf, FsStorage, Storage};

/// Torn-page protection for in-place page writes. All methods take `&self`; page writes are
/// serialised (one batch at a time). A fuller example is `examples/page_store.rs`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck};
///
/// let dir = tempfile::tempdir()?;
/// let pages = dir.path().join("pages");
/// std::fs::write(&pages, vec![0u8; 2 * 4096])?;
/// let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb")))?;
/// dwb.register_file(FileId(1), &pages, 4096)?;
/// // The engine's own page check: here the page's first byte is its version.
/// dwb.recover(|_, page| PageCheck::Intact { version: u64::from(page[0]) })?;
/// let page = vec![1u8; 4096];
/// dwb.write_pages(&[(FileId(1), 1, &page)])?; // durable in the buffer, then in place
/// assert_eq!(std::fs::read(&pages)?[4096..], page[..]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DoubleWriteBuffer<S: Storage = FsStorage> {
    storage: S,
    config: DwbConfig,
    inner: Mutex<Inner<S::File>>,
    counters: Counters,
}

/// The buffer file's state.
#[derive(Debug)]
enum Buffer<F> {
    Ready(Ring<F>),
    /// No file (mode `Off`, or removed after recovery in that mode).
    Absent,
    /// The file could not be opened or written; it stays so until the buffer is reopened.
    Degraded {
        op: IoOp,
        kind: io::ErrorKind,
    },
}

#[derive(Debug)]
struct Inner<F> {
    buffer: Buffer<F>,
    targets: Targets<F>,
    /// Drawn at open; every slot of this life carries it.
    epoch: u32,
    next_seq: u64,
    /// The file existed at open: its images must be applied before any new batch is written.
    needs_recovery: bool,
    /// A batch is durable in the ring but its pages are not yet durable in place.
    unapplied: bool,
    /// A page write or sync failed; nothing more is written until reopen.
    poisoned: Option<Poison>,
    /// The encode buffer, kept between batches.
    scratch: Option<AlignedBuf>,
}

impl<S: Storage> fmt::Debug for DoubleWriteBuffer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoubleWriteBuffer")
            .field("path", &self.config.path)
            .field("mode", &self.config.mode)
            .field("degraded", &self.is_degraded())
            .field("stats", &self.stats())
            .finish()
    }
}

impl DoubleWriteBuffer<FsStorage> {
    /// Opens (or creates) the buffer file on the real file system. The type's example uses it.
    pub fn open(config: DwbConfig) -> Result<DoubleWriteBuffer<FsStorage>> {
        DoubleWriteBuffer::open_with(FsStorage::new(), config)
    }
}

impl<S: Storage> DoubleWriteBuffer<S> {
    /// Opens (or creates) the buffer file on the given storage. If the file already existed,
    /// register the page files and call [`Self::recover`] before writing pages.
    ///
    /// A file that cannot be opened or created does not fail the open: the buffer starts
    /// degraded ([`Self::is_degraded`]). O_DIRECT refused in `Direct` mode, a file of a newer
    /// format and a bad configuration are errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, FileId, PageCheck, SimStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    ///
    /// let dwb = DoubleWriteBuffer::open_with(sim.clone(), DwbConfig::new("/db/dwb"))?;
    /// assert_eq!((dwb.mode(), dwb.path()), (DwbMode::Buffered, Path::new("/db/dwb")));
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// dwb.recover(|_, _| PageCheck::Intact { version: 0 })?; // a new buffer holds nothing
    /// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096]), (FileId(1), 1, &[2u8; 4096])])?;
    /// let stats = dwb.stats();
    /// assert_eq!((stats.protected_pages, stats.batches, stats.target_syncs), (2, 1, 1));
    /// assert_eq!(sim.read_file(Path::new("/db/pages")).expect("page file")[4096], 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(storage: S, config: DwbConfig) -> Result<DoubleWriteBuffer<S>> {
        config.validate()?;
        let counters = Counters::default();
        let (buffer, needs_recovery) = match ring::open(&storage, &config)? {
            Opened::Fresh(ring) => (Buffer::Ready(ring), false),
            Opened::Existing(ring) => (Buffer::Ready(ring), true),
            Opened::Absent => (Buffer::Absent, false),
            Opened::Failed(op, err) => {
                tracing::warn!(path = %config.path.display(), ?op, %err, "double-write buffer degraded: its file cannot be opened");
                counters.set_degraded(op, err.kind());
                (Buffer::Degraded { op, kind: err.kind() }, false)
            }
        };
        let inner = Inner {
            buffer,
            targets: Targets::new(),
            epoch: crate::crypto::random::random_u32(),
            next_seq: 1,
            needs_recovery,
            unapplied: false,
            poisoned: None,
            scratch: None,
        };
        Ok(DoubleWriteBuffer { storage, config, inner: Mutex::new(inner), counters })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S::File>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Maps `file` to a page file whose pages are all `page_len` bytes; page `n` lives at byte
    /// `n * page_len`. The file must exist when pages are written or recovered: the buffer never
    /// creates files. Register every file that may have pages in the buffer before recovery.
    /// Any page length from 1 byte to 1 MiB is taken, aligned or not, if its image (the page
    /// and its slot header, rounded up to a block) fits `batch_bytes_max`; anything else is
    /// [`WalError::InvalidConfig`].
    ///
    /// The page length is part of the id: images stay in the buffer until the ring wraps over
    /// them, and recovery refuses ([`WalError::DwbPageLen`]) a file registered with another
    /// length than its images, since it cannot tell a changed page size from a wrong
    /// registration. A file whose page size changes gets a new id (the old id's images are then
    /// an unregistered file's, left alone). A file the engine removes is dropped with
    /// [`Self::forget_file`], after which its id may name another file.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, SimStorage, WalError};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    ///
    /// let dwb = DoubleWriteBuffer::open_with(sim, DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?; // the same again: a no-op
    /// assert!(dwb.register_file(FileId(1), "/db/pages", 8192).is_err(), "another page length");
    /// let err = dwb.register_file(FileId(3), "/db/pages", 0).unwrap_err();
    /// assert!(matches!(err, WalError::InvalidConfig { .. }), "no page of 0 bytes");
    ///
    /// // Pages are checked against their registration before anything is written.
    /// let err = dwb.write_pages(&[(FileId(2), 0, &[0u8; 4096])]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbUnknownFile { file: FileId(2) }));
    /// let err = dwb.write_pages(&[(FileId(1), 0, &[0u8; 512])]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbPageLen { len: 512, expected: 4096, .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_file(&self, file: FileId, path: impl Into<PathBuf>, page_len: usize) -> Result<()> {
        if !self.config.fits_page(page_len) {
            return Err(WalError::InvalidConfig { reason: "dwb page length must be 1 byte to 1 MiB and fit in one batch" });
        }
        self.lock().targets.register(file, path.into(), page_len)
    }

    /// Drops the registration of `file`, for an engine that removed it: registrations are
    /// otherwise kept for the buffer's life. Its id may then be registered again, for any file.
    ///
    /// Before that, every batch in the buffer holding an image of `file` (under the file's salt,
    /// or of version 1) is unmade, durably: its first slot is zeroed and the file synced, so
    /// that no recovery, after a crash or a restart, can write an image of the forgotten file
    /// into a new one registered under its id. Unmaking a batch is safe because every batch's
    /// pages are durable in place by the time any call returns; the other pages of those
    /// batches merely lose images nobody needs. The ring is read whole to find them (4 MiB by
    /// default). Refused before recovery ([`WalError::DwbNotRecovered`]), while degraded
    /// ([`WalError::DwbDegraded`]: the file cannot be searched), for an unknown id; a failed
    /// write or sync of the buffer degrades it and keeps the registration.
    ///
    /// The order for an engine dropping a page file: `forget_file` first, and only once it has
    /// returned `Ok`, remove the file and reuse its id. A crash or an error before that may
    /// leave batches with its images in the buffer, which a later recovery applies to whatever
    /// file is then registered under the id: do not register another file under it until a
    /// `forget_file` of it has returned `Ok`.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage, WalError};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(4096)?;
    ///
    /// let dwb = DoubleWriteBuffer::open_with(sim, DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// dwb.recover(|_, _| PageCheck::Intact { version: 0 })?;
    /// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096])])?;
    /// dwb.forget_file(FileId(1))?; // the engine dropped the file
    /// let err = dwb.write_pages(&[(FileId(1), 0, &[2u8; 4096])]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbUnknownFile { file: FileId(1) }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget_file(&self, file: FileId) -> Result<()> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.usable()?;
        if inner.needs_recovery {
            return Err(WalError::DwbNotRecovered { path: self.config.path.clone() });
        }
        if !inner.targets.contains(file) {
            return Err(WalError::DwbUnknownFile { file });
        }
        let ring = match &mut inner.buffer {
            Buffer::Degraded { op, kind } => return Err(self.degraded_error(*op, *kind)),
            Buffer::Absent => return inner.targets.forget(file),
            Buffer::Ready(ring) => ring,
        };
        let (mut image, len) = ring.read_all().map_err(|e| WalError::io(IoOp::Read, &self.config.path, e))?;
        let starts = batches_of(file, &image[..len], ring.salt());
        if !starts.is_empty()
            && let Err((op, err)) = ring.unmake_batches(&mut image[..len], &starts)
        {
            self.degrade(inner, op, &err);
            return Err(self.degraded_error(op, err.kind()));
        }
        inner.targets.forget(file)
    }

    /// The configured mode. See [`Self::open_with`] for an example.
    pub fn mode(&self) -> DwbMode {
        self.config.mode
    }

    /// The buffer file's path. See [`Self::open_with`] for an example.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Whether the buffer file could not be opened or written. What page writes do then is
    /// the configuration's [`DegradedPolicy`]. Only reopening leaves this state.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::faulty::FaultyStorage;
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, IoOp, SimStorage, WalError};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    ///
    /// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
    /// # storage.create_dir_all(Path::new("/db"))?;
    /// # storage.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(4096)?;
    /// storage.refuse_open(Path::new("/db/dwb"));
    /// let dwb = DoubleWriteBuffer::open_with(storage, DwbConfig::new("/db/dwb"))?;
    /// assert!(dwb.is_degraded(), "opening succeeds, but without its file");
    /// assert_eq!(dwb.degraded_cause(), Some((IoOp::Open, std::io::ErrorKind::PermissionDenied)));
    ///
    /// // The default policy refuses page writes rather than risk a torn page.
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// let err = dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096])]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbDegraded { op: IoOp::Open, .. }), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_degraded(&self) -> bool {
        self.counters.is_degraded()
    }

    /// The step that degraded the buffer, and its error kind. See [`Self::is_degraded`] for an
    /// example.
    pub fn degraded_cause(&self) -> Option<(IoOp, io::ErrorKind)> {
        self.counters.degraded_cause()
    }

    /// Counters: protected and unprotected pages, batches, bytes. See [`Self::open_with`] and
    /// [`DwbStats`] for examples.
    pub fn stats(&self) -> DwbStats {
        self.counters.snapshot()
    }
}

/// Where each complete batch holding an image of `file` starts: of the file's `salt`, and of
/// version 1 (slots without a salt), which a recovery applies should the header be damaged.
fn batches_of(file: FileId, image: &[u8], salt: u32) -> Vec<usize> {
    let mut starts: Vec<usize> = [salt, 0]
        .iter()
        .flat_map(|&salt| scan::scan_ring(image, salt).batches)
        .filter(|batch| batch.slots.iter().any(|slot| slot.header.file == file))
        .map(|batch| batch.offset)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

impl<F> Inner<F> {
    fn usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(poison) => Err(poison.error()),
            None => Ok(()),
        }
    }

    /// Records the first failure and returns it as an I/O error.
    fn poisoned_by(&mut self, op: IoOp, path: PathBuf, source: io::Error) -> WalError {
        self.poisoned.get_or_insert(Poison::at(op, &path, &source));
        WalError::Io { op, path, source }
    }
}
