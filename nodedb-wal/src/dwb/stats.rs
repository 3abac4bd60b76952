//! Counters: per buffer ([`DwbStats`]) and for the whole process.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::IoOp;

/// Bytes every double-write buffer of this process has written to its buffer file.
static BYTES_WRITTEN_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Bytes written to double-write buffer files by this process so far: batches, and the header
/// and zero-fill of newly created files. In-place page writes are not counted.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage, wal_dwb_bytes_written_total};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let sim = SimStorage::new(1, FaultConfig::default());
/// # sim.create_dir_all(Path::new("/db"))?;
/// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
///
/// let before = wal_dwb_bytes_written_total();
/// let dwb = DoubleWriteBuffer::open_with(sim, DwbConfig::new("/db/dwb"))?;
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// dwb.recover(|_, _| PageCheck::Intact { version: 0 })?;
/// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096])])?;
/// // Other buffers in this process may write at the same time: the total only grows.
/// let grown = wal_dwb_bytes_written_total() - before;
/// assert!(grown >= 4 << 20, "a new file's zeroed ring counts");
/// assert!(grown >= dwb.stats().buffer_bytes);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn wal_dwb_bytes_written_total() -> u64 {
    BYTES_WRITTEN_TOTAL.load(Ordering::Relaxed)
}

pub(super) fn count_buffer_bytes(bytes: u64) {
    BYTES_WRITTEN_TOTAL.fetch_add(bytes, Ordering::Relaxed);
}

/// A snapshot of one buffer's counters.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbStats, FileId, PageCheck, SimStorage};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let sim = SimStorage::new(1, FaultConfig::default());
/// # sim.create_dir_all(Path::new("/db"))?;
/// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
///
/// let dwb = DoubleWriteBuffer::open_with(sim, DwbConfig::new("/db/dwb"))?;
/// assert_eq!(dwb.stats(), DwbStats::default());
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// dwb.recover(|_, _| PageCheck::Intact { version: 0 })?;
/// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096]), (FileId(1), 1, &[2u8; 4096])])?;
/// let stats = dwb.stats();
/// assert_eq!((stats.protected_pages, stats.unprotected_pages), (2, 0));
/// assert_eq!((stats.batches, stats.target_syncs, stats.in_place_bytes), (1, 1, 8192));
/// // Each image carries a 56-byte slot header; the batch is padded to whole blocks.
/// assert_eq!(stats.buffer_bytes, 3 * 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DwbStats {
    /// Pages written in place while their image was durable in the buffer.
    pub protected_pages: u64,
    /// Pages written in place without a durable image (mode `Off`, or degraded with
    /// [`super::DegradedPolicy::WriteUnprotected`]).
    pub unprotected_pages: u64,
    /// Batches written to the buffer (each one write and one fdatasync).
    pub batches: u64,
    /// Bytes of those batches.
    pub buffer_bytes: u64,
    /// Bytes of pages written in place.
    pub in_place_bytes: u64,
    /// fdatasync calls on page files.
    pub target_syncs: u64,
    /// Pages recovery wrote back from the buffer.
    pub pages_restored: u64,
}

/// Live counters, readable without the buffer's lock.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) protected_pages: AtomicU64,
    pub(super) unprotected_pages: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) buffer_bytes: AtomicU64,
    pub(super) in_place_bytes: AtomicU64,
    pub(super) target_syncs: AtomicU64,
    pub(super) pages_restored: AtomicU64,
    degraded: AtomicBool,
    cause: Mutex<Option<(IoOp, io::ErrorKind)>>,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> DwbStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DwbStats {
            protected_pages: get(&self.protected_pages),
            unprotected_pages: get(&self.unprotected_pages),
            batches: get(&self.batches),
            buffer_bytes: get(&self.buffer_bytes),
            in_place_bytes: get(&self.in_place_bytes),
            target_syncs: get(&self.target_syncs),
            pages_restored: get(&self.pages_restored),
        }
    }

    pub(super) fn set_degraded(&self, op: IoOp, kind: io::ErrorKind) {
        *self.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((op, kind));
        self.degraded.store(true, Ordering::Release);
    }

    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    pub(super) fn degraded_cause(&self) -> Option<(IoOp, io::ErrorKind)> {
        *self.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
