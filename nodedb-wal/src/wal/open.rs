//! Opening a log: the direct-I/O probe, recovery, and the repairs recovery asks for (sealing a
//! torn segment, syncing the newest) before the group committer starts.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::SegmentedWal;
use super::truncate::{remove_below_floor, remove_kept_for_room, tidy_dir};
use crate::commit::{CommitStart, GroupCommitter, Limits, seal_file};
use crate::config::SegmentedWalConfig;
use crate::error::{IoOp, Result, WalError};
use crate::format::manifest::MANIFEST_FILE;
use crate::manifest::{Floor, Manifest};
use crate::recovery::{PendingSeal, Recovered, RecoveryInfo, open_existing, recover_dir};
use crate::segment::{self, index};
use crate::storage::{
    DirectIoPlan, FsStorage, OpenMode, Storage, StorageFile, create_dir_durably, is_direct_io_refusal, is_out_of_space, lock_log_dir,
    plan_direct_io,
};
use crate::types::SegmentId;

impl SegmentedWal<FsStorage> {
    /// Opens (or creates) the log in `config.dir` on the real file system, recovering whatever
    /// a crash left there. See the type's example.
    pub fn open(config: SegmentedWalConfig) -> Result<SegmentedWal<FsStorage>> {
        SegmentedWal::open_with(FsStorage::new(), config)
    }
}

impl<S: Storage> SegmentedWal<S> {
    /// Opens (or creates) the log on the given storage.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    ///
    /// // The deterministic simulation: the same code paths as the real file system.
    /// let sim = SimStorage::new(7, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/db/wal"))?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"x"))?;
    /// drop(wal);
    /// assert_eq!(SegmentedWal::open_with(sim, SegmentedWalConfig::new("/db/wal"))?.recovery_info().record_count, 1);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn open_with(storage: S, config: SegmentedWalConfig) -> Result<SegmentedWal<S>> {
        config.validate()?;
        let dir = config.dir.clone();
        if !config.create_if_missing {
            require_log(&storage, &dir)?;
        }
        create_dir_durably(&storage, &dir).map_err(|(op, e)| WalError::io(op, &dir, e))?;
        let lock = lock_log_dir(&storage, &dir)?;
        let direct = probe_direct(&storage, &config)?;
        let _span = tracing::info_span!("recovery", dir = %dir.display()).entered();
        let mut recovered = recover_newest_past_cache(&storage, &config, direct)?;
        let manifest = Manifest::open_existing(&storage, &dir)?;
        let mut floor = Floor::open(&storage, &dir)?;
        // A new log never written: the manifest names no segment, and the floor (unchecked by
        // recovery) names the segment the first batch was to create.
        let never_written = manifest.as_ref().is_some_and(|m| m.current() == SegmentId(0));
        if let Some(mut pending) = recovered.seal {
            let index = pending.index.take();
            // A segment written with smaller blocks than this open's (a log moved to a disk
            // with larger sectors, or first written through the page cache) is sealed through
            // the page cache: its block boundary may be no offset O_DIRECT accepts here.
            let direct = direct && pending.block >= config.alignment as u64;
            let bytes = seal_segment(&storage, &dir, direct, &pending)?;
            if let Some(index) = index {
                index::write_index(&storage, &dir, &index, direct, config.alignment, &mut index::IndexScratch::default());
            }
            let last = recovered.info.segments.last_mut().expect("the pending segment is listed");
            last.sealed = true;
            last.bytes = bytes;
        } else if let Some(last) = recovered.info.segments.last() {
            sync_newest_segment(&storage, &dir, direct, last.id)?;
        }
        if let Some(torn) = recovered.info.torn_tail {
            tracing::warn!(segment = %torn.segment, offset = torn.offset, bytes = torn.bytes_discarded, "cut a torn tail");
        }
        tracing::info!(records = recovered.info.record_count, last_lsn = %recovered.info.last_lsn, "recovered");
        // Recovery read a listing that may not be durable (a roll or a truncation whose
        // directory fsync failed, or whose process died first, under the same kernel): the
        // segments it returns, the one the manifest is about to name, and the kept files the
        // flusher will write new headers into must keep their names through a power cut.
        // (That sync also makes durable the removal of segments a truncation left below the
        // floor: none is read again either way.)
        floor.restart_if_exhausted(&storage, &dir)?;
        // A slot of `FLOOR` a power cut tore is written over now rather than at the next
        // truncation: while one is damaged, a reader cannot tell a segment removed by hand from
        // a truncated one, and takes it for truncated, for ever if nobody truncates.
        if !recovered.below_floor.is_empty() || floor.has_damaged_slot() {
            floor.rewrite()?;
            remove_below_floor(&storage, &dir, &recovered.below_floor)?;
        }
        storage.sync_dir(&dir).map_err(|e| WalError::io(IoOp::SyncDir, &dir, e))?;
        let newest = recovered.info.segments.last().map_or(SegmentId(0), |s| s.id);
        let manifest = Manifest::bring_up_to(manifest, &storage, &dir, newest)?;
        // A log without `FLOOR` (new, or written before it existed) gets one at its first
        // open, naming its oldest segment: from then on truncation only updates a slot in
        // place, one fdatasync, and a removed oldest segment is told from a truncated one.
        // A log without segments (a new one) names the one its first batch will create: a
        // floor of 0 would leave the first segments unchecked until the next open.
        let oldest = recovered.info.segments.first().map_or(recovered.next_segment, |s| s.id);
        if never_written {
            floor.lower_to(oldest)?;
        }
        floor.advance(&storage, &dir, oldest)?;
        let recycled = tidy_dir(&storage, &dir, &recovered.info.segments, config.recycle_segments)?;
        let limits = Limits {
            block: config.alignment,
            batch_bytes_max: config.batch_bytes_max,
            batch_buffers: config.batch_buffers,
            segment_bytes_target: config.segment_bytes_target,
            payload_bytes_max: config.payload_bytes_max,
        };
        let start = CommitStart {
            dir,
            direct,
            limits,
            commit_window: config.commit_window,
            zero_fill_bytes: config.zero_fill_bytes,
            next_lsn: recovered.next_lsn,
            next_segment: recovered.next_segment,
            segments: recovered.info.segments.clone(),
            key_ring: config.key_ring.clone(),
            manifest,
            recycled,
            recycle_segments: config.recycle_segments,
            dir_lock: lock,
        };
        let storage = Arc::new(storage);
        let committer = GroupCommitter::start(Arc::clone(&storage), start)?;
        Ok(SegmentedWal { storage, config, direct, recovery: recovered.info, committer, truncation: Mutex::new(floor) })
    }
}

/// Runs recovery on the log `config` names, with every repair opening makes (a torn tail cut
/// and sealed, an interrupted roll removed, the newest segment synced), and returns what it
/// found, leaving the log closed. The same as opening and closing it, for a tool or a start-up
/// step that only needs the [`RecoveryInfo`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig};
///
/// let dir = tempfile::tempdir()?;
/// let config = SegmentedWalConfig { allow_buffered_fallback: true, ..SegmentedWalConfig::new(dir.path()) };
/// SegmentedWal::open(config.clone())?.append_durable(Record::new(RecordType::optional(0x100), b"x"))?;
/// let info = nodedb_wal::recover(config)?;
/// assert_eq!(info.record_count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn recover(config: SegmentedWalConfig) -> Result<RecoveryInfo> {
    let wal = SegmentedWal::open(config)?;
    let info = wal.recovery_info().clone();
    wal.close()?;
    Ok(info)
}

/// Whether this directory's file system takes O_DIRECT in this config's blocks, and whether the
/// config lets us go on without it. Decided before recovery reads or writes anything: blocks
/// finer than the kernel says O_DIRECT takes there used to open fine and then poison the log
/// at its first write (`EINVAL`), and make recovery of an existing log fail with a bare I/O
/// error.
/// That `dir` holds a log: its `MANIFEST` (every log this crate makes writes one at its first
/// open) or a segment (older logs had no manifest). A lock file or a side file alone is not a
/// log: a directory emptied by hand keeps those.
fn require_log<S: Storage>(storage: &S, dir: &Path) -> Result<()> {
    let names = match storage.list(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        listed => listed.map_err(|e| WalError::io(IoOp::ListDir, dir, e))?,
    };
    let is_log_file = |name: &String| name == MANIFEST_FILE || segment::parse_name(name).is_some();
    if names.iter().any(is_log_file) {
        return Ok(());
    }
    Err(WalError::LogMissing { path: dir.to_path_buf() })
}

fn probe_direct<S: Storage>(storage: &S, config: &SegmentedWalConfig) -> Result<bool> {
    if !config.direct_io {
        return Ok(false);
    }
    let probe = config.dir.join("LOCK");
    let mode = OpenMode { create: true, write: false, direct: true, create_new: false };
    match storage.open(&probe, mode) {
        // The open takes O_DIRECT on any block device; whether this config's blocks are coarse
        // enough for it is a separate question, asked of the same file (regular, in the log's
        // directory, so on the file system the segments live on).
        Ok(file) => match plan_direct_io(config.alignment, file.direct_io_alignment(), config.allow_buffered_fallback) {
            DirectIoPlan::Direct => Ok(true),
            DirectIoPlan::Buffered { required } => {
                tracing::warn!(dir = %config.dir.display(), alignment = config.alignment, required, "O_DIRECT needs coarser blocks here; using buffered I/O");
                Ok(false)
            }
            DirectIoPlan::Refuse { required } => {
                Err(WalError::DirectIoAlignment { path: config.dir.clone(), configured: config.alignment, required })
            }
        },
        Err(e) if is_direct_io_refusal(&e) && config.allow_buffered_fallback => {
            tracing::warn!(dir = %config.dir.display(), "O_DIRECT refused; using buffered I/O");
            Ok(false)
        }
        Err(e) if is_direct_io_refusal(&e) => Err(WalError::DirectIoUnsupported { path: config.dir.clone() }),
        Err(e) => Err(WalError::io(IoOp::Open, probe, e)),
    }
}

/// Whether a log written through the page cache can still read its newest segment with O_DIRECT
/// here (`direct_io: false` on a file system that takes it). Recovery then reads that segment
/// from the disk. After a failed fdatasync Linux keeps the pages it could not write in the page
/// cache, marked clean, and the same boot's next open would read them as records and report
/// them durable. Dropping them (`POSIX_FADV_DONTNEED`, the fallback where O_DIRECT is refused)
/// leaves every page that some process maps at that moment: a read-only look mapping the
/// segment, which the failed batch sealed in the cache, kept them there
/// (`buffered_writeback.rs`). An O_DIRECT read passes every cached clean page, mapped or not.
fn recover_newest_past_cache<S: Storage>(storage: &S, config: &SegmentedWalConfig, direct: bool) -> Result<Recovered> {
    let ring = config.key_ring.as_deref();
    if direct || !direct_reads_work(storage, config) {
        return recover_dir(storage, &config.dir, direct, config.alignment, ring);
    }
    match recover_dir(storage, &config.dir, true, config.alignment, ring) {
        // The file system said it takes O_DIRECT in these blocks, yet refused a read (a segment
        // of finer blocks whose length is none of ours): recovery changes nothing on disk, so
        // it reads again through the page cache, dropping the cached pages first.
        Err(WalError::Io { op: IoOp::Read, source, .. }) if is_direct_io_refusal(&source) => {
            recover_dir(storage, &config.dir, false, config.alignment, ring)
        }
        recovered => recovered,
    }
}

fn direct_reads_work<S: Storage>(storage: &S, config: &SegmentedWalConfig) -> bool {
    let probe = config.dir.join("LOCK");
    let mode = OpenMode { create: false, write: false, direct: true, create_new: false };
    storage.open(&probe, mode).is_ok_and(|file| plan_direct_io(config.alignment, file.direct_io_alignment(), false) == DirectIoPlan::Direct)
}

/// Syncs the newest segment, already sealed, before the log reports its records durable. A
/// process killed between a batch's write and its fdatasync leaves the batch where recovery
/// reads it (the page cache, the device's cache) but not yet durable; recovery returns its
/// records and the durable watermark starts after them, so they must be synced first, or a
/// power cut could take records the log already returned and leave a sealed segment torn.
/// Only the newest segment can hold such a batch: a segment is synced before the next exists.
fn sync_newest_segment<S: Storage>(storage: &S, dir: &Path, direct: bool, id: SegmentId) -> Result<()> {
    let path = segment::path(dir, id);
    let (file, _) = open_existing(storage, &path, direct, true)?;
    file.sync_data().map_err(|e| WalError::io(IoOp::SyncData, &path, e))
}

/// Seals the last segment after recovery: the file cut to end one block past the first block
/// boundary at or after its records' end, then an end frame on that boundary, synced (see
/// `seal_file` for the order). Blocks that hold recovered records are never written. Returns
/// the segment's new length.
///
/// Where the disk has no room for that block, truncated segment files kept for reuse hold a
/// segment's room each and no record: they are removed and the block written again (a write
/// that failed, never a sync).
fn seal_segment<S: Storage>(storage: &S, dir: &Path, direct: bool, p: &PendingSeal) -> Result<u64> {
    let path = segment::path(dir, p.id);
    let (file, _) = open_existing(storage, &path, direct, true)?;
    // A reader of this boot may map the segment: a batch whose fdatasync failed can have sealed
    // it in the page cache (Linux keeps those pages, clean), and a look took it for sealed.
    // Shortening the file under that map stops the reader's process (`SIGBUS`). So where a
    // reader holds the file, the seal goes in without the cut, and the bytes past it take space
    // until truncation. The hold is let go at once: a look waits for a held file, and one that
    // the open kept waiting while it sealed would stall on an open that waits for the disk.
    // (A look that maps the file in the moment between this check and the cut is not covered.)
    let cut = file.try_hold_exclusive().unwrap_or(false);
    if cut {
        file.release_hold();
    }
    let seal = || seal_file(&file, p.block as usize, p.records_end, p.next_lsn, p.salt, cut);
    match seal() {
        Err((IoOp::Write, e)) if is_out_of_space(&e) && remove_kept_for_room(storage, dir)? => seal(),
        sealed => sealed,
    }
    .map_err(|(op, e)| WalError::io(op, &path, e))
}
