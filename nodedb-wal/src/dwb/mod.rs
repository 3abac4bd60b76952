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

mod batch;
mod config;
mod recover;
mod ring;
pub mod scan;
mod stats;
mod targets;

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
use crate::format::dwb::{FILE_MAGIC, FILE_MAGIC_RANGE, SEQ_END};
use crate::storage::{AlignedBuf, FsStorage, Storage, StorageFile};

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

    /// Checks every page that has an image in the buffer with `validator` and restores torn
    /// and stale ones from their newest image (the rules are in [`decide`]), then syncs every
    /// page file it checked. Only after it returns Ok are new pages accepted, if the buffer file
    /// existed at open. In mode `Off` the file is removed afterwards.
    ///
    /// # Examples
    ///
    /// A page torn in place is put back from its buffered image:
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    ///
    /// // A toy page format: whole when every byte equals the first, which is its version.
    /// let check = |_: FileId, page: &[u8]| {
    ///     if page.iter().all(|&b| b == page[0]) { PageCheck::Intact { version: u64::from(page[0]) } } else { PageCheck::Torn }
    /// };
    /// let dwb = DoubleWriteBuffer::open_with(sim.clone(), DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// dwb.recover(check)?;
    /// dwb.write_pages(&[(FileId(1), 0, &[7u8; 4096])])?;
    /// drop(dwb);
    ///
    /// // Tear page 0 as a crash in the middle of its in-place write would.
    /// let pages = Path::new("/db/pages");
    /// let mut bytes = sim.read_file(pages).expect("page file");
    /// bytes[2048..4096].fill(0xEE);
    /// sim.write_file(pages, &bytes);
    ///
    /// let dwb = DoubleWriteBuffer::open_with(sim.clone(), DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), pages, 4096)?;
    /// let report = dwb.recover(check)?;
    /// assert_eq!(report.pages_restored, [(FileId(1), 0)]);
    /// assert_eq!(sim.read_file(pages).expect("page file")[..4096], [7u8; 4096]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recover(&self, validator: impl Fn(FileId, &[u8]) -> PageCheck) -> Result<DwbRecovery> {
        let mut guard = self.lock();
        let recovered = self.recover_locked(&mut guard, &validator);
        guard.targets.close();
        recovered
    }

    fn recover_locked(&self, inner: &mut Inner<S::File>, validator: &dyn Fn(FileId, &[u8]) -> PageCheck) -> Result<DwbRecovery> {
        inner.usable()?;
        let ring = match &mut inner.buffer {
            Buffer::Degraded { op, kind } => return Err(self.degraded_error(*op, *kind)),
            Buffer::Absent => return Ok(DwbRecovery::default()),
            Buffer::Ready(_) if !inner.needs_recovery => return Ok(DwbRecovery::default()),
            Buffer::Ready(ring) => ring,
        };
        let (image, len) = ring.read_all().map_err(|e| WalError::io(IoOp::Read, &self.config.path, e))?;
        let scan = scan::scan_ring(&image[..len], ring.scan_salt());
        if ring.header_damaged() && scan.other_salt > 0 {
            // Batches whose salt is lost with the header: applying them could write a slot
            // spelled out in a page image; ignoring them could leave a torn page torn.
            return Err(WalError::DwbHeaderDamaged { path: self.config.path.clone(), salted_batches: scan.other_salt });
        }
        if ring.header_damaged() && made_elsewhere(&image[..len], &scan) {
            // Reformatting it (or removing it, in mode `Off`) would destroy someone's file.
            return Err(WalError::DwbForeignFile { path: self.config.path.clone() });
        }
        let report = match recover::repair(&self.storage, &mut inner.targets, &image[..len], &scan, validator) {
            Ok(report) => report,
            // After a failed write or sync the page files' state is unknown: no retry. A file
            // that cannot be opened or read can be fixed and recovery run again.
            Err(WalError::Io { op: op @ (IoOp::Write | IoOp::SyncData), path, source }) => return Err(inner.poisoned_by(op, path, source)),
            Err(other) => return Err(other),
        };
        Counters::add(&self.counters.pages_restored, report.pages_restored.len() as u64);
        // Every image is applied and durable in place: the ring may be reused. New slots are
        // numbered above every slot that can still count; where the header is rewritten under
        // a new salt, none can, and numbering on from slots of version 1 would carry a number a
        // page image spelled out (up to the end of sequences) into the new salt's slots.
        inner.next_seq = if ring.salt_changes() { 1 } else { scan.seq_max + 1 };
        if !report.pages_restored.is_empty() {
            tracing::warn!(pages = report.pages_restored.len(), "double-write buffer restored torn or stale pages");
        }
        self.finish_recovery(inner, scan.newest().map(|b| b.end as u64))?;
        Ok(report)
    }

    /// After a successful repair: removes the file in mode `Off`, else makes its name durable,
    /// rewrites its header if needed and resumes writing after the newest batch.
    fn finish_recovery(&self, inner: &mut Inner<S::File>, newest_end: Option<u64>) -> Result<()> {
        let Buffer::Ready(ring) = &mut inner.buffer else { unreachable!("recovery runs on an open buffer") };
        let path = ring.path().to_path_buf();
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        if self.config.mode == DwbMode::Off {
            match self.storage.remove(&path) {
                Ok(()) => {}
                // Removed by someone else: its removal is made durable below all the same.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(IoOp::Remove, &path, e)),
            }
            // After a failed directory fsync whether the removal is durable is unknown, and a
            // second fsync may succeed without making it so: the buffer is poisoned, never
            // synced again and never reports the removal done.
            if let Err(e) = self.storage.sync_dir(&dir) {
                return Err(inner.poisoned_by(IoOp::SyncDir, dir, e));
            }
            inner.buffer = Buffer::Absent;
        } else if let Err(e) = self.storage.sync_dir(&dir) {
            // The file's name may not be durable yet (the directory fsync of its creation
            // failed, or its process died first, under this kernel): batches written into it
            // could be lost with its name, the next open formatting them away.
            self.degrade(inner, IoOp::SyncDir, &e);
        } else if !ring.formatted()
            && let Err((op, err)) = ring.format(false)
        {
            self.degrade(inner, op, &err);
        }
        if let Buffer::Ready(ring) = &mut inner.buffer {
            ring.resume_after(newest_end);
        }
        inner.needs_recovery = false;
        Ok(())
    }

    /// Writes pages: through the buffer in batches (each one write and one fdatasync of the
    /// buffer, then the pages in place and one fdatasync per page file), or in place only in
    /// mode `Off` or while degraded with [`DegradedPolicy::WriteUnprotected`].
    ///
    /// Returns Ok once every page is durable in place. Each batch is all-or-nothing across a
    /// crash (after recovery); a call too large for one batch is split, and is not. Every page
    /// is checked (registered file, page length) before anything is written. A failed in-place
    /// write or sync poisons the buffer: later calls fail with [`WalError::Poisoned`] and the
    /// buffer must be reopened, whose recovery repairs what the failure left.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage, WalError};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    /// let config = DwbConfig::new("/db/dwb");
    /// drop(DoubleWriteBuffer::open_with(sim.clone(), config.clone())?); // creates the file
    ///
    /// // The file existed at this open: its images must be applied before new pages land.
    /// let dwb = DoubleWriteBuffer::open_with(sim, config)?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// let page = [3u8; 4096];
    /// let err = dwb.write_pages(&[(FileId(1), 1, &page)]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbNotRecovered { .. }), "{err}");
    /// dwb.recover(|_, page| PageCheck::Intact { version: u64::from(page[0]) })?;
    /// dwb.write_pages(&[(FileId(1), 1, &page)])?;
    /// assert_eq!(dwb.stats().protected_pages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_pages(&self, pages: &[PageWrite<'_>]) -> Result<()> {
        let mut guard = self.lock();
        let written = self.write_pages_locked(&mut guard, pages);
        guard.targets.close();
        written
    }

    fn write_pages_locked(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<()> {
        inner.usable()?;
        if inner.needs_recovery {
            return Err(WalError::DwbNotRecovered { path: self.config.path.clone() });
        }
        inner.targets.prepare(&self.storage, pages)?;
        let mut rest = pages;
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(batch::batch_prefix(rest, self.config.batch_bytes_max));
            self.write_one_batch(inner, batch)?;
            rest = tail;
        }
        Ok(())
    }

    fn write_one_batch(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<()> {
        if self.config.mode != DwbMode::Off && matches!(inner.buffer, Buffer::Ready(_)) {
            match self.buffer_batch(inner, pages) {
                Ok(()) => return self.write_in_place(inner, pages, true),
                Err((op, err)) => self.degrade(inner, op, &err),
            }
        }
        match (self.config.mode, &inner.buffer, self.config.on_degraded) {
            (DwbMode::Off, _, _) | (_, _, DegradedPolicy::WriteUnprotected) => self.write_in_place(inner, pages, false),
            (_, Buffer::Degraded { op, kind }, DegradedPolicy::FailWrites) => Err(self.degraded_error(*op, *kind)),
            (_, _, DegradedPolicy::FailWrites) => unreachable!("a buffer that is not degraded took the batch above"),
        }
    }

    /// Encodes the batch and makes it durable in the ring.
    fn buffer_batch(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<(), (IoOp, io::Error)> {
        // The ring space this batch may overwrite must hold no image whose page is not yet
        // durable in place: batches are serialised and a failure poisons, so none is left.
        assert!(!inner.unapplied, "a batch is written while the previous one is not applied");
        let block_len = self.config.block_len;
        let scratch = inner.scratch.get_or_insert_with(|| AlignedBuf::zeroed(self.config.batch_bytes_max, block_len));
        let batch_seq = inner.next_seq;
        // A slot numbered past the end of sequences does not decode: its batch could never be
        // applied, and its pages would be acknowledged unprotected.
        if batch_seq + pages.len() as u64 > SEQ_END {
            return Err((IoOp::Write, io::Error::other("double-write buffer sequences are used up")));
        }
        // Sequences are never reused, even by a batch that fails.
        inner.next_seq += pages.len() as u64;
        let Buffer::Ready(ring) = &mut inner.buffer else { unreachable!("checked by the caller") };
        // Recovery formats an existing file before the first batch; a new one is formatted.
        debug_assert!(ring.formatted(), "a batch is written before the file header carries its salt");
        let len = batch::encode_batch(pages, batch_seq, (inner.epoch, ring.salt()), block_len, scratch);
        ring.write_batch(&scratch[..len])?;
        inner.unapplied = true;
        Counters::add(&self.counters.batches, 1);
        Counters::add(&self.counters.buffer_bytes, len as u64);
        Ok(())
    }

    /// Writes the pages in place and syncs each page file once. Failures poison.
    fn write_in_place(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>], protected: bool) -> Result<()> {
        let mut files: Vec<FileId> = Vec::new();
        let mut bytes_total = 0;
        for &(file, page_no, bytes) in pages {
            let offset = inner.targets.offset(file, page_no, bytes.len())?;
            let handle = inner.targets.file(&self.storage, file)?;
            if let Err(e) = handle.write_at(bytes, offset) {
                return Err(inner.poisoned_by(IoOp::Write, inner.targets.path(file), e));
            }
            bytes_total += bytes.len() as u64;
            if !files.contains(&file) {
                files.push(file);
            }
        }
        for file in files {
            if let Err(e) = inner.targets.file(&self.storage, file)?.sync_data() {
                return Err(inner.poisoned_by(IoOp::SyncData, inner.targets.path(file), e));
            }
            Counters::add(&self.counters.target_syncs, 1);
        }
        inner.unapplied = false;
        Counters::add(&self.counters.in_place_bytes, bytes_total);
        let pages_counter = if protected { &self.counters.protected_pages } else { &self.counters.unprotected_pages };
        Counters::add(pages_counter, pages.len() as u64);
        Ok(())
    }

    fn degrade(&self, inner: &mut Inner<S::File>, op: IoOp, err: &io::Error) {
        tracing::warn!(path = %self.config.path.display(), ?op, %err, policy = ?self.config.on_degraded, "double-write buffer degraded");
        self.counters.set_degraded(op, err.kind());
        inner.buffer = Buffer::Degraded { op, kind: err.kind() };
    }

    fn degraded_error(&self, op: IoOp, kind: io::ErrorKind) -> WalError {
        WalError::DwbDegraded { path: self.config.path.clone(), op, kind }
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

/// Whether a file whose header did not decode is no buffer at all: no magic where the header
/// keeps it, no slot of any batch, and bytes that are not all zero. A crash while the buffer
/// file is made leaves zeros and at most a whole header (it is one sector, written after the
/// zeros), and media damage to a buffer's header leaves its magic or its slots; a file made
/// by something else (the path mistyped, or shared) leaves neither, and must not be
/// reformatted or removed.
fn made_elsewhere(image: &[u8], scan: &scan::RingScan) -> bool {
    let magic = image.get(FILE_MAGIC_RANGE) == Some(&FILE_MAGIC[..]);
    let slots = !scan.batches.is_empty() || scan.incomplete_batches > 0 || scan.other_salt > 0 || scan.seq_max > 0;
    !magic && !slots && image.iter().any(|&b| b != 0)
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
