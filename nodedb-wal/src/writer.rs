//! [`WalWriter`]: one segment file, written on its own by one thread, in exactly the format
//! [`crate::SegmentedWal`] reads. For tools and tests that produce a segment (an import, a
//! snapshot shipped to a replica) without running a group committer; plaintext only.
//!
//! The same rules as the log: the header block first, then batches that start and end on block
//! boundaries (padding frames fill the gap), each block written once; [`WalWriter::sync`]
//! makes everything appended durable; [`WalWriter::finish`] seals the file with an end frame.
//! A failed write or sync poisons the writer.
//!
//! A segment may only follow a sealed one. A [`crate::SegmentedWal`] seals its newest segment
//! when it closes; one that crashed, or whose close failed, leaves it open (the next open seals
//! it), so before adding a segment to a log that was not closed, open and close the log without
//! appending ([`crate::recover`] does just that, and it does no harm after a clean close).
//! Otherwise the next open refuses the log with [`crate::CorruptionKind::UnsealedSegment`] for the open
//! segment; nothing is lost, and once the added segment is taken away the log opens again.
//!
//! The writer holds the directory's lock, the one a [`crate::SegmentedWal`] holds, from
//! [`WalWriter::create_with`] until it is finished or dropped: it cannot add a segment while a
//! log has the directory open, nor a log open while it writes ([`WalError::Locked`] either
//! way). It only ever makes a new file: a segment id whose file exists (a segment, an empty
//! file, a symbolic link) is [`WalError::SegmentFileExists`], and the file is left as it was.
//!
//! This file holds the configuration, the writer and how it makes its file; appending,
//! syncing and sealing are in `writer/append.rs`.

mod append;

use std::path::{Path, PathBuf};

use crate::config::BUFFER_BYTES_MAX;
use crate::error::{IoOp, Poison, Result, WalError};
use crate::format::layout::write_header_block;
use crate::format::meta::{SegmentHeaderPayload, is_block_len};
use crate::format::preamble::SegmentPreamble;
use crate::segment;
use crate::storage::{AlignedBuf, FsStorage, OpenMode, Storage, StorageFile, lock_log_dir, too_fine};
use crate::types::{Lsn, SegmentId};

/// How a [`WalWriter`] writes.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Lsn, SegmentId, SimStorage, WalError, WalWriter, WalWriterConfig};
///
/// let config = WalWriterConfig::default();
/// assert!(!config.direct_io, "buffered: works on any file system");
/// assert_eq!((config.alignment, config.batch_bytes), (4096, 1 << 20));
///
/// // A batch must hold at least four blocks.
/// let tiny = WalWriterConfig { batch_bytes: 4096, ..config };
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let err = WalWriter::create_with(sim, Path::new("/log"), SegmentId(1), Lsn(1), tiny).unwrap_err();
/// assert!(matches!(err, WalError::InvalidConfig { .. }));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct WalWriterConfig {
    /// Write with O_DIRECT (the file system must take it, in blocks of `alignment`: where the
    /// kernel reports a coarser alignment, `create_with` refuses with
    /// [`WalError::DirectIoAlignment`] and leaves no file).
    pub direct_io: bool,
    /// Block size: a power of two from 512 bytes to 1 MiB; 4096 matches
    /// [`crate::SegmentedWalConfig`].
    pub alignment: usize,
    /// Bytes buffered before a batch is written (without a sync): four blocks to 1 GiB.
    pub batch_bytes: usize,
}

impl Default for WalWriterConfig {
    fn default() -> WalWriterConfig {
        WalWriterConfig { direct_io: false, alignment: 4096, batch_bytes: 1 << 20 }
    }
}

/// A writer of one segment file. See the module documentation.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentId, WalWriter};
///
/// let dir = tempfile::tempdir()?;
/// let mut writer = WalWriter::create(dir.path(), SegmentId(1), Lsn(1))?;
/// writer.append(Record::new(RecordType::optional(0x100), b"imported"))?;
/// let segment = writer.finish()?;
/// assert_eq!(segment.end_lsn, Lsn(2));
/// // The directory is now a log.
/// assert_eq!(ReadOnlyWal::open(dir.path(), None)?.recovery_info().record_count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WalWriter<S: Storage = FsStorage> {
    file: S::File,
    path: PathBuf,
    id: SegmentId,
    first_lsn: Lsn,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    salt: u32,
    block: usize,
    buf: AlignedBuf,
    used: usize,
    /// Where the next batch goes.
    offset: u64,
    poisoned: Option<Poison>,
    /// The directory's lock, held for the writer's life.
    _dir_lock: S::Lock,
}

impl WalWriter<FsStorage> {
    /// Creates segment `id` in `dir` (named as the log names it), its first record to be
    /// `first_lsn`, with the default configuration. The type's example uses it.
    pub fn create(dir: &Path, id: SegmentId, first_lsn: Lsn) -> Result<WalWriter<FsStorage>> {
        WalWriter::create_with(FsStorage::new(), dir, id, first_lsn, WalWriterConfig::default())
    }
}

/// Removes the segment file a [`WalWriter`] made a moment ago and gives up on: it holds no
/// record, so it goes rather than lie in the log's directory as the trace of an interrupted
/// roll (or be refused as someone else's file by the next writer of the id). Its creation was
/// never synced, so neither is its removal.
fn remove_made_file<S: Storage>(storage: &S, file: S::File, path: &Path) {
    drop(file);
    if let Err(err) = storage.remove(path) {
        tracing::warn!(path = %path.display(), %err, "cannot remove the segment file of a WalWriter that failed to start");
    }
}

impl<S: Storage> WalWriter<S> {
    /// Creates segment `id` in `dir` on `storage`: takes the directory's lock (held until the
    /// writer is finished or dropped), writes and syncs the new file's header block and makes
    /// its directory entry durable. `dir` must exist: unlike a log, the writer does not make it
    /// (a missing one fails the lock, [`IoOp::Lock`]). A directory a log or another writer holds is
    /// [`WalError::Locked`]; an existing file of that name is [`WalError::SegmentFileExists`],
    /// and the file is left as it was.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Lsn, SegmentId, SimStorage, WalError, WalWriter, WalWriterConfig};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, Storage};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/log"))?;
    ///
    /// let config = WalWriterConfig { batch_bytes: 64 << 10, ..WalWriterConfig::default() };
    /// let writer = WalWriter::create_with(sim.clone(), Path::new("/log"), SegmentId(5), Lsn(1000), config)?;
    /// assert_eq!(writer.path(), Path::new("/log/00000000000000000005.wal"));
    /// assert_eq!(writer.next_lsn(), Lsn(1000));
    ///
    /// let beside = WalWriter::create_with(sim.clone(), Path::new("/log"), SegmentId(6), Lsn(1000), config);
    /// assert!(matches!(beside, Err(WalError::Locked { .. })), "one writer per directory");
    /// drop(writer);
    /// let again = WalWriter::create_with(sim, Path::new("/log"), SegmentId(5), Lsn(1000), config);
    /// assert!(matches!(again, Err(WalError::SegmentFileExists { .. })), "never writes over a file");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_with(storage: S, dir: &Path, id: SegmentId, first_lsn: Lsn, config: WalWriterConfig) -> Result<WalWriter<S>> {
        let block = config.alignment;
        // LSNs count up by one and never wrap: a first LSN in the top half of the range leaves
        // no room that a log could be said to need, and would wrap near its end. The limit
        // itself is a first LSN the format takes (a segment that holds no record, whose every
        // append is `LsnsExhausted`), and salvage copies such a segment with a writer.
        let lsn_ok = first_lsn != Lsn::ZERO && first_lsn <= Lsn::LIMIT;
        // The same bounds as the log's own config: a block length readers accept, a batch
        // buffer that can be allocated, and an id a later segment can follow.
        let batch_ok = (block.saturating_mul(4)..=BUFFER_BYTES_MAX).contains(&config.batch_bytes);
        if !is_block_len(block as u64) || !batch_ok || !lsn_ok || id.0 == u64::MAX {
            return Err(WalError::InvalidConfig {
                reason: "WalWriter needs a power-of-two alignment from 512 to 1 MiB, batch_bytes from four blocks to 1 GiB, a first LSN in 1..=2^63 and a segment id below u64::MAX",
            });
        }
        // Allocated before the file exists: nothing is left behind if it cannot be.
        let buf = AlignedBuf::zeroed(config.batch_bytes, block);
        // Held before the file is made: a log with the directory open would make its next
        // segment over it, or have made one that this file would be made over.
        let dir_lock = lock_log_dir(&storage, dir)?;
        let path = segment::path(dir, id);
        let mode = OpenMode { create: true, write: true, direct: config.direct_io, create_new: true };
        let file = storage.open(&path, mode).map_err(|e| match e.kind() {
            // Whatever it is (a segment, an empty file, a link), it is not this writer's to
            // write over: the check and the creation are one step.
            std::io::ErrorKind::AlreadyExists => WalError::SegmentFileExists { path: path.clone() },
            _ => WalError::io(IoOp::Open, &path, e),
        })?;
        if config.direct_io
            && let Some(required) = too_fine(block, file.direct_io_alignment())
        {
            // Every write would fail with EINVAL (a disk with 4096-byte sectors under 512-byte
            // blocks), and the header's first: refused before it.
            remove_made_file(&storage, file, &path);
            return Err(WalError::DirectIoAlignment { path, configured: block, required });
        }
        let mut salt = [0u8; 4];
        crate::crypto::random::fill_random(&mut salt);
        let salt = u32::from_le_bytes(salt);
        let header = SegmentHeaderPayload {
            segment_id: id,
            first_lsn,
            salt,
            block_len: u32::try_from(block).expect("block fits u32"),
            kdf_salt: [0; 16],
        };
        let durable_lsn = Lsn(first_lsn.0 - 1);
        let mut head = AlignedBuf::zeroed(block, block);
        write_header_block(&mut head, &SegmentPreamble::plaintext_wal(), &header, durable_lsn);
        if let Err((op, e)) = file.write_and_sync(&head, 0) {
            // A full disk, say: the file holds no record, and left behind it would refuse this
            // same call, once the disk has room, as a file this writer never writes over.
            remove_made_file(&storage, file, &path);
            return Err(WalError::io(op, &path, e));
        }
        storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
        Ok(WalWriter {
            file,
            path,
            id,
            first_lsn,
            next_lsn: first_lsn,
            durable_lsn,
            salt,
            block,
            buf,
            used: 0,
            offset: block as u64,
            poisoned: None,
            _dir_lock: dir_lock,
        })
    }

    /// The LSN the next append gets. See [`Self::append`] for an example.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The highest LSN a successful sync covered. See [`Self::sync`] for an example.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// The segment file. See [`Self::create_with`] for an example.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
