//! Configuration of a [`super::DoubleWriteBuffer`].

use std::path::PathBuf;

use crate::error::{Result, WalError};
use crate::format::dwb::{PAGE_BYTES_MAX, slot_len};

/// How page writes are protected.
///
/// # Examples
///
/// In mode `Off` pages go straight to their place, counted as unprotected, and no buffer file
/// is made:
///
/// ```
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, FileId, PageCheck, SimStorage};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let sim = SimStorage::new(1, FaultConfig::default());
/// # sim.create_dir_all(Path::new("/db"))?;
/// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(4096)?;
///
/// let mut config = DwbConfig::new("/db/dwb");
/// config.mode = DwbMode::Off;
/// let dwb = DoubleWriteBuffer::open_with(sim.clone(), config)?;
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// dwb.recover(|_, _| PageCheck::Torn)?; // nothing to recover without a file
/// dwb.write_pages(&[(FileId(1), 0, &[5u8; 4096])])?;
/// assert_eq!((dwb.stats().unprotected_pages, dwb.stats().batches), (1, 0));
/// assert!(sim.read_file(Path::new("/db/dwb")).is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DwbMode {
    /// No buffer: pages are written in place and synced, unprotected. An existing buffer file is
    /// still used by recovery, then removed, so its images can never be applied to pages
    /// written later without protection.
    Off,
    /// The buffer file is written through the page cache.
    Buffered,
    /// The buffer file is written with O_DIRECT: its bytes are read only by recovery, so they
    /// have no business in the page cache.
    Direct,
}

/// What page writes do while the buffer is degraded (its file could not be opened or written).
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::faulty::FaultyStorage;
/// use nodedb_wal::{DegradedPolicy, DoubleWriteBuffer, DwbConfig, FileId, SimStorage};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// # storage.create_dir_all(Path::new("/db"))?;
/// # storage.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(4096)?;
/// storage.refuse_open(Path::new("/db/dwb"));
/// let mut config = DwbConfig::new("/db/dwb");
/// assert_eq!(config.on_degraded, DegradedPolicy::FailWrites);
/// config.on_degraded = DegradedPolicy::WriteUnprotected; // stay available, accept the risk
/// let dwb = DoubleWriteBuffer::open_with(storage, config)?;
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096])])?;
/// assert!(dwb.is_degraded());
/// assert_eq!(dwb.stats().unprotected_pages, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DegradedPolicy {
    /// Refuse them with [`WalError::DwbDegraded`]; nothing is written in place. The default: a
    /// torn page must never be the price of staying available.
    #[default]
    FailWrites,
    /// Write them in place, unprotected, and count them in `unprotected_pages`.
    WriteUnprotected,
}

/// Where the buffer lives and how big it is.
///
/// The buffer checks the values when it opens and refuses bad ones with
/// [`WalError::InvalidConfig`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, SimStorage, WalError};
///
/// let mut config = DwbConfig::new("/db/dwb");
/// config.ring_bytes = 64 << 10;
/// config.batch_bytes_max = 128 << 10; // larger than the ring
/// let err = DoubleWriteBuffer::open_with(SimStorage::new(1, FaultConfig::default()), config).unwrap_err();
/// assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct DwbConfig {
    /// The buffer file (its directory is created if missing).
    pub path: PathBuf,
    /// How page writes are protected.
    pub mode: DwbMode,
    /// Bytes of the ring of batches. The file is this plus one block, allocated once.
    pub ring_bytes: u64,
    /// Bytes one batch (one write + one fdatasync of the buffer) holds at most; a
    /// `write_pages` call with more is split into several batches.
    pub batch_bytes_max: usize,
    /// Block size: the header block's length and the unit batches are padded to. O_DIRECT needs
    /// the device's logical block size or a multiple: in `Direct` mode, where the kernel
    /// reports a coarser alignment, open refuses with [`WalError::DirectIoAlignment`].
    pub block_len: usize,
    /// What page writes do while the buffer is degraded.
    pub on_degraded: DegradedPolicy,
}

impl DwbConfig {
    /// Defaults for a buffer file at `path`: buffered, a 4 MiB ring, 1 MiB batches (63 pages of
    /// 16 KiB with their headers), 4 KiB blocks, page writes refused while degraded.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DegradedPolicy, DwbConfig, DwbMode};
    ///
    /// let config = DwbConfig::new("/var/lib/db/dwb");
    /// assert_eq!((config.mode, config.on_degraded), (DwbMode::Buffered, DegradedPolicy::FailWrites));
    /// assert_eq!((config.ring_bytes, config.batch_bytes_max, config.block_len), (4 << 20, 1 << 20, 4096));
    /// ```
    pub fn new(path: impl Into<PathBuf>) -> DwbConfig {
        DwbConfig {
            path: path.into(),
            mode: DwbMode::Buffered,
            ring_bytes: 4 << 20,
            batch_bytes_max: 1 << 20,
            block_len: 4096,
            on_degraded: DegradedPolicy::FailWrites,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason| Err(WalError::InvalidConfig { reason });
        if !crate::format::meta::is_block_len(self.block_len as u64) {
            return bad("dwb block_len must be a power of two from 512 to 1 MiB");
        }
        if !self.batch_bytes_max.is_multiple_of(self.block_len) || self.batch_bytes_max == 0 {
            return bad("dwb batch_bytes_max must be a non-zero multiple of block_len");
        }
        if !self.ring_bytes.is_multiple_of(self.block_len as u64) || self.ring_bytes < self.batch_bytes_max as u64 {
            return bad("dwb ring_bytes must be a multiple of block_len and hold at least one batch");
        }
        if self.ring_bytes > 1 << 30 {
            return bad("dwb ring_bytes must be at most 1 GiB (recovery reads the ring into memory)");
        }
        if self.path.file_name().is_none() {
            return bad("dwb path must name a file");
        }
        Ok(())
    }

    /// Whether a page of `page_len` bytes fits in a slot and its slot in one batch.
    pub(crate) fn fits_page(&self, page_len: usize) -> bool {
        (1..=PAGE_BYTES_MAX).contains(&page_len) && slot_len(page_len).next_multiple_of(self.block_len) <= self.batch_bytes_max
    }
}
