//! Configuration of a [`crate::SegmentedWal`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::KeyRing;
use crate::error::{Result, WalError};

/// How a [`crate::SegmentedWal`] lays out and writes its log.
///
/// Start from [`SegmentedWalConfig::new`] and change the fields you need. The log checks the
/// values when it opens and refuses bad ones with [`WalError::InvalidConfig`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
///
/// let mut config = SegmentedWalConfig::new("/wal");
/// config.segment_bytes_target = 8 << 20;
/// config.commit_window = Some(Duration::from_micros(200));
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config.clone())?;
/// wal.close()?;
///
/// config.alignment = 1000; // not a power of two
/// let err = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config).unwrap_err();
/// assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
/// # Ok::<(), WalError>(())
/// ```
#[derive(Clone, Debug)]
pub struct SegmentedWalConfig {
    /// The log directory, created if missing unless `create_if_missing` is off.
    pub dir: PathBuf,
    /// Whether an open that finds no log in `dir` (no directory, or one holding neither
    /// `MANIFEST` nor a segment) makes a new one (the default) or refuses with
    /// [`WalError::LogMissing`], creating nothing. A database restarting on its existing log
    /// turns it off: a mistyped path, a volume not mounted or a directory emptied by hand
    /// would otherwise open as a new, empty log and go on without its records.
    pub create_if_missing: bool,
    /// A segment rolls over once appending another batch would take it past this size. Its
    /// file may be one block (`alignment`) larger: the end frame that seals it can take a
    /// block of its own. At least four blocks.
    pub segment_bytes_target: u64,
    /// Bytes of records one batch (one write; batches queued behind a sync share the next
    /// fdatasync) holds at most: from one block to 1 GiB.
    pub batch_bytes_max: usize,
    /// Batch buffers: while one is written, appenders fill the others. At least 2; with
    /// `batch_bytes_max`, at most 64 GiB in all (buffers are allocated as they are needed).
    pub batch_buffers: usize,
    /// Largest payload `append` accepts, from 1 byte to 2 GiB - 1. Larger payloads than `batch_bytes_max` get a batch of
    /// their own, in a buffer of its own. Such buffers hold at most four times the pool's
    /// bytes (`batch_buffers` × `batch_bytes_max`, 16 MiB by default) in all, in flight and
    /// kept for reuse. While records larger than a third of that come, they may hold three
    /// buffers of the largest of them instead, so up to about three times this limit (192 MiB
    /// by default); one to two seconds after the last such record, the buffers beyond the
    /// four pools are let go. A group or batch larger than one record of this limit goes alone,
    /// with no other such buffer in flight. A log whose records are often larger than a batch
    /// goes faster with a larger `batch_bytes_max`.
    pub payload_bytes_max: usize,
    /// Write with O_DIRECT (the default), bypassing the page cache. Off, the log writes
    /// through the page cache; an open still reads the newest segment with O_DIRECT where the
    /// file system takes it, so that pages a failed fdatasync left in the cache (Linux keeps them,
    /// clean) are not recovered as records. Where O_DIRECT is refused it drops those pages
    /// instead, which misses any page another process maps at that moment (docs/DURABILITY.md).
    pub direct_io: bool,
    /// Where the file system refuses O_DIRECT, fall back to buffered I/O instead of failing
    /// with [`WalError::DirectIoUnsupported`]; likewise where it takes O_DIRECT only in blocks
    /// coarser than `alignment`, instead of failing with [`WalError::DirectIoAlignment`]. The
    /// fallback is logged as a warning, and [`crate::SegmentedWal::direct_io`] reports it.
    pub allow_buffered_fallback: bool,
    /// Block size: batches start and end on its multiples. A power of two from 512 to 1 MiB.
    /// So a batch takes at least a block on disk: one thread's `append_durable` calls, with no
    /// other appends to share their syncs, take a block per record (100 records of 10 bytes:
    /// 101 blocks with the segment's header). Concurrent appends share blocks as they share
    /// syncs; so do `append` calls waited on together.
    /// With O_DIRECT it must also be a multiple of what the file system takes: where the kernel
    /// reports that (Linux 6.1 on), a finer block is refused at open with
    /// [`WalError::DirectIoAlignment`] (4096 on a disk with 4096-byte logical sectors); where it
    /// does not, the first write would fail and poison the log.
    pub alignment: usize,
    /// Like PostgreSQL's `commit_delay`: before a sync, wait this long for more appends to join
    /// the batch. Waiters that come meanwhile join it without ending the wait; a full batch,
    /// a close or a failure does end it. Off by default; at most one second.
    pub commit_window: Option<Duration>,
    /// Zero-fill this many bytes ahead of the writer in the active segment (0: off; a multiple
    /// of `alignment`, at most 1 GiB). An fdatasync after a write into blocks the file system has never seen must also persist
    /// their allocation; into already-written blocks it syncs only data, which on ext4 here is
    /// about twice as fast. Only a run of small batches (under a sixteenth of this size: 64 KiB
    /// by default) is followed by a zero-fill. The zeros cost as many bytes as the batches
    /// that later land on them; from about 64 KiB per batch, writing them costs more than the
    /// allocation they save (measured: pipelined 128-byte records went from ~0.6 to ~0.85 M/s
    /// when 140 KiB batches stopped being zero-filled), and a small batch between large ones
    /// would have its zeros overwritten by the next large one.
    pub zero_fill_bytes: usize,
    /// How many truncated segment files to keep for reuse as new segments (0: remove them).
    /// A new segment made from one is written into blocks the file system has already
    /// allocated, which syncs faster (here about 1.4x the bandwidth of writing fresh blocks,
    /// for 1 MiB and 4 MiB writes alike), as PostgreSQL recycles its WAL files. The cost is
    /// disk space: up to this many segments stay allocated after a truncation. The old
    /// records in a reused file carry another segment's salt, so they never read as records
    /// of the new segment. A reused file sealed by a roll keeps its length (past the new
    /// segment's end frame lie the old bytes; a close's or recovery's seal cuts them off), and
    /// goes round again at the next truncation; so a file larger than
    /// a segment (one record or group larger than the target made it, or it was kept before
    /// `segment_bytes_target` was lowered) is never kept or reused, but removed. An open with
    /// this at 0 removes every kept file (one with a lower value, the oldest kept files beyond
    /// it).
    pub recycle_segments: usize,
    /// Whether readers may start a helper thread per sealed segment (of 1 MiB or more, on a
    /// machine with more than one CPU): for `read_mapped`, one that checks checksums ahead of
    /// the reader; for `read_from` and its views, one that reads the segment ahead and shares
    /// the checksums with the reader. From the page cache, checksums cost about as much as the
    /// rest of a replay. Off, each reader reads and checks every frame on its own thread.
    /// (Recovery at open reads sealed segments with a helper whatever this says.)
    pub check_ahead: bool,
    /// Keys for encryption at rest. With an active key, every new segment is encrypted under it
    /// (AES-256-GCM); older segments are read with whichever key their preamble names.
    ///
    /// A key only inserted ([`KeyRing::insert`]) encrypts nothing: without an active key
    /// ([`KeyRing::with_active`], [`KeyRing::set_active`]) the log writes plaintext, and says
    /// nothing. [`KeyRing::refuse_plaintext`] makes that a refused open instead.
    ///
    /// A wrong key under a segment's key id is refused at open ([`WalError::WrongKey`]), but a
    /// ring that lacks an older segment's key id opens the log (a replay from a checkpoint may
    /// not need old segments), unless that segment holds a tombstone or purge, which recovery
    /// reads. Reading the segment is then [`WalError::UnknownKeyId`]:
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let key_2 = || SecureKey::from_bytes(&mut [2; 32]); // from a key file, in production
    /// let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.key_ring = Some(Arc::clone(&ring));
    /// let wal = SegmentedWal::open_with(sim.clone(), config.clone())?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 1"))?;
    /// ring.insert(2, key_2())?;
    /// ring.set_active(2)?; // the next append starts a segment under key 2
    /// let newer = wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 2"))?;
    /// wal.close()?;
    ///
    /// // Key 1 lost: the log opens, and only its segment is out of reach.
    /// config.key_ring = Some(Arc::new(KeyRing::with_active(2, key_2())));
    /// let wal = SegmentedWal::open_with(sim, config)?;
    /// assert_eq!(wal.recovery_info().ungathered, 0, "no tombstone or purge was out of reach");
    /// assert_eq!(wal.read_from(newer)?.next().expect("a record")?.payload, b"under key 2");
    /// let err = wal.read_from(Lsn::FIRST)?.next().expect("a record").unwrap_err();
    /// assert!(matches!(err, WalError::UnknownKeyId { key_id: 1, .. }), "{err}");
    /// # Ok::<(), WalError>(())
    /// ```
    pub key_ring: Option<Arc<KeyRing>>,
}

/// The largest batch buffer and zero-fill buffer a config may ask for.
pub(crate) const BUFFER_BYTES_MAX: usize = 1 << 30;
/// The most `batch_buffers` × `batch_bytes_max` may come to: the pool, and what oversized
/// batches may hold in flight (four times the pool), are sized by it.
const POOL_BYTES_MAX: u64 = 64 << 30;
/// The longest commit window: a sync waits it out, so anything longer reads as a hang.
const COMMIT_WINDOW_MAX: Duration = Duration::from_secs(1);

impl SegmentedWalConfig {
    /// Defaults for a log in `dir`: 64 MiB segments, 1 MiB batches in 4 buffers, payloads up to
    /// 64 MiB, O_DIRECT, 4 KiB blocks, 1 MiB of zero-fill ahead, 2 truncated segments kept for
    /// reuse, read-ahead helpers on, no commit window, no encryption.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SegmentedWalConfig;
    ///
    /// let config = SegmentedWalConfig::new("/var/lib/db/wal");
    /// assert_eq!(config.dir, std::path::Path::new("/var/lib/db/wal"));
    /// assert_eq!((config.segment_bytes_target, config.batch_bytes_max), (64 << 20, 1 << 20));
    /// assert_eq!(config.alignment, 4096);
    /// assert!(config.direct_io && !config.allow_buffered_fallback);
    /// assert!(config.commit_window.is_none() && config.key_ring.is_none());
    /// assert_eq!((config.batch_buffers, config.payload_bytes_max), (4, 64 << 20));
    /// assert_eq!((config.zero_fill_bytes, config.recycle_segments), (1 << 20, 2));
    /// assert!(config.check_ahead && config.create_if_missing);
    /// ```
    pub fn new(dir: impl Into<PathBuf>) -> SegmentedWalConfig {
        SegmentedWalConfig {
            dir: dir.into(),
            create_if_missing: true,
            segment_bytes_target: 64 << 20,
            batch_bytes_max: 1 << 20,
            batch_buffers: 4,
            payload_bytes_max: 64 << 20,
            direct_io: true,
            allow_buffered_fallback: false,
            alignment: 4096,
            commit_window: None,
            zero_fill_bytes: 1 << 20,
            recycle_segments: 2,
            check_ahead: true,
            key_ring: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason| Err(WalError::InvalidConfig { reason });
        if self.key_ring.as_ref().is_some_and(|ring| ring.refuses_plaintext() && ring.active().is_none()) {
            return bad("a key ring that refuses plaintext segments needs an active key to write with");
        }
        if !crate::format::meta::is_block_len(self.alignment as u64) {
            return bad("alignment must be a power of two from 512 to 1 MiB");
        }
        if self.batch_bytes_max < self.alignment {
            return bad("batch_bytes_max must be at least alignment (one block; 4096 bytes by default)");
        }
        // Buffers of these sizes are allocated at open; beyond these bounds a value is a mistake
        // (the allocation would fail or overflow, found by an adversarial review).
        if self.batch_bytes_max > BUFFER_BYTES_MAX || self.zero_fill_bytes > BUFFER_BYTES_MAX {
            return bad("batch_bytes_max and zero_fill_bytes must be at most 1 GiB");
        }
        if self.commit_window.is_some_and(|w| w > COMMIT_WINDOW_MAX) {
            return bad("commit_window must be at most one second (every sync waits it out)");
        }
        if self.batch_buffers < 2 {
            return bad("batch_buffers must be at least 2 so appenders never wait for a sync to buffer");
        }
        if (self.batch_buffers as u64).checked_mul(self.batch_bytes_max as u64).is_none_or(|pool| pool > POOL_BYTES_MAX) {
            return bad("batch_buffers times batch_bytes_max must be at most 64 GiB");
        }
        if self.segment_bytes_target < 4 * self.alignment as u64 {
            return bad("segment_bytes_target must be at least four times alignment (four blocks; 16 KiB by default)");
        }
        if !self.zero_fill_bytes.is_multiple_of(self.alignment) {
            return bad("zero_fill_bytes must be a multiple of the alignment");
        }
        if self.payload_bytes_max == 0 || self.payload_bytes_max > (u32::MAX as usize) / 2 {
            return bad("payload_bytes_max must be between 1 byte and 2 GiB");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by adversarial reviews: a huge batch or zero-fill size panicked at open (the
    /// buffer's layout overflowed), an endless commit window made the first sync hang, and a
    /// huge number of batch buffers overflowed the pool's size at the first oversized batch.
    #[test]
    fn sizes_and_windows_beyond_reason_are_refused_as_invalid_config() {
        let refused = |change: &dyn Fn(&mut SegmentedWalConfig)| {
            let mut config = SegmentedWalConfig::new("/wal");
            change(&mut config);
            matches!(config.validate(), Err(WalError::InvalidConfig { .. }))
        };
        assert!(refused(&|c| c.batch_bytes_max = usize::MAX / 2));
        assert!(refused(&|c| c.zero_fill_bytes = usize::MAX & !4095));
        assert!(refused(&|c| c.commit_window = Some(Duration::MAX)));
        assert!(refused(&|c| c.batch_buffers = usize::MAX), "the pool's size would overflow");
        assert!(!refused(&|c| (c.batch_bytes_max, c.zero_fill_bytes) = (1 << 30, 1 << 30)), "the bound itself is fine");
        assert!(!refused(&|c| c.commit_window = Some(Duration::from_secs(1))));
    }
}
