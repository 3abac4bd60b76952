//! The flusher thread: takes sealed batches in order, closes them with padding (and an end
//! frame when they seal a segment), creates segments, and writes the batches queued in one
//! segment one after another with one fdatasync after the last.
//! A failed write or sync poisons the log; nothing is ever retried.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::plan::{BatchMeta, Sealed, Target};
use super::{PoisonOnPanic, Shared};
use crate::error::IoOp;
use crate::format::layout::{round_up, write_header_block, write_padding, write_segment_end};
use crate::format::meta::SegmentHeaderPayload;
use crate::format::preamble::{CIPHER_AES_256_GCM, PREAMBLE_SIZE};
use crate::manifest::Manifest;
use crate::segment;
use crate::segment::index::{IndexBuilder, IndexScratch, write_index};
use crate::segment::scan::decode_head;
use crate::storage::{AlignedBuf, BatchBuf, OpenMode, Storage, StorageFile, is_out_of_space};
use crate::types::{Lsn, SegmentId};

/// A failed step: the system call, its error, and the file it was on (the error names it).
struct IoFailure {
    op: IoOp,
    err: io::Error,
    path: Option<PathBuf>,
}

impl IoFailure {
    /// The failure, on `path` unless the failed step already named its own file (a directory
    /// sync names the directory while the log makes a segment).
    fn on(self, path: impl FnOnce() -> PathBuf) -> IoFailure {
        IoFailure { path: self.path.or_else(|| Some(path())), ..self }
    }
}

impl From<(IoOp, io::Error)> for IoFailure {
    fn from((op, err): (IoOp, io::Error)) -> IoFailure {
        IoFailure { op, err, path: None }
    }
}

/// A failed step on the file at `path`.
fn failed_on(path: &Path) -> impl FnOnce((IoOp, io::Error)) -> IoFailure {
    move |failure| IoFailure::from(failure).on(|| path.to_path_buf())
}

/// A failure on segment `id` of the log in `dir`, naming it. Its path is built only on a
/// failure: every batch's write and sync pass through here.
fn on_segment(dir: &Path, id: SegmentId) -> impl FnOnce(IoFailure) -> IoFailure + '_ {
    move |failure| failure.on(|| segment::path(dir, id))
}

/// A failure of `op` on the file at `path`.
fn failed_on_op(op: IoOp, path: &Path) -> impl FnOnce(io::Error) -> IoFailure {
    move |err| failed_on(path)((op, err))
}

/// The flusher's own state: the open segment file and how far it is zero-filled.
pub(crate) struct Flusher<S: Storage> {
    shared: Arc<Shared<S>>,
    file: Option<(SegmentId, S::File)>,
    /// The end of the bytes of the open segment already written (records or zeros).
    written_to: u64,
    zeros: Option<AlignedBuf>,
    /// Small batches written since the last large one (saturating).
    small_streak: u32,
    /// Names the newest segment; only the flusher updates it once the log is open.
    manifest: Manifest<S::File>,
    /// The headers of the open segment, for its header index.
    index: IndexBuilder,
    index_scratch: IndexScratch,
    /// The batches being written with one sync, kept to reuse its room.
    run: Vec<Sealed>,
    /// The file system refused a rename that never replaces: kept files are not reused.
    cannot_rename_no_replace: bool,
    /// Where the open segment's last durable batch ends, and what follows it: what sealing it
    /// at close needs.
    open_end: Option<OpenEnd>,
}

/// The end of the open segment's written batches.
#[derive(Clone, Copy, Debug)]
struct OpenEnd {
    /// The block boundary after the last batch.
    at: u64,
    /// The LSN after its last record.
    next_lsn: Lsn,
    salt: u32,
}

/// Zero-fill ahead only after this many small batches in a row. A writer that alternates a
/// full batch with a small remainder (an ingest loop that waits every N records) would
/// otherwise write a zero-fill after every remainder only for the next full batch to overwrite
/// it: twice the bytes, measured in the pipelined 4 KiB benchmark.
const SMALL_STREAK_FOR_ZERO_FILL: u32 = 4;

impl<S: Storage> Flusher<S> {
    pub fn new(shared: Arc<Shared<S>>, manifest: Manifest<S::File>) -> Flusher<S> {
        let zeros = (shared.zero_fill_bytes > 0).then(|| AlignedBuf::zeroed(shared.zero_fill_bytes, shared.block));
        let index = IndexBuilder::new(shared.segment_bytes_target);
        Flusher {
            shared,
            file: None,
            written_to: 0,
            zeros,
            small_streak: SMALL_STREAK_FOR_ZERO_FILL,
            manifest,
            index,
            index_scratch: IndexScratch::default(),
            run: Vec::new(),
            cannot_rename_no_replace: false,
            open_end: None,
        }
    }

    /// Writes batches in order for as long as this thread holds the writer: every batch that
    /// is due (the flusher thread), or up to the one holding `own` (a caller writing its own
    /// record). A failure poisons the log and wakes everyone; callers learn of it from the
    /// durable watermark.
    pub fn write_ready(&mut self, own: Option<Lsn>) {
        let shared = Arc::clone(&self.shared);
        let _guard = PoisonOnPanic { shared: &shared, what: "writing a batch panicked" };
        let mut run = std::mem::take(&mut self.run);
        loop {
            if own.is_some_and(|lsn| shared.durability.lsn() >= lsn) {
                break;
            }
            shared.take_jobs(own, &mut run);
            if run.is_empty() {
                break;
            }
            if let Err(IoFailure { op, err, path }) = self.write_run(&mut run) {
                run.clear();
                match path {
                    Some(path) => shared.durability.poison_at(op, &path, &err),
                    None => shared.durability.poison(op, &err),
                }
                shared.wake_all();
                break;
            }
            shared.finish_batches(&mut run);
        }
        self.run = run;
    }

    /// Writes a run of batches that continue each other, with one fdatasync after the last,
    /// then acknowledges them in order.
    fn write_run(&mut self, run: &mut [Sealed]) -> Result<(), IoFailure> {
        let durable = self.shared.durability.lsn();
        for Sealed { buf, meta } in run.iter_mut() {
            close_batch(wait_for_regions(buf), meta, durable);
        }
        let first = run[0].meta.target.clone();
        let last = &run[run.len() - 1].meta;
        let run_end = last.target.offset + last.padded as u64;
        let record_count = last.end_lsn.0 - run[0].meta.first_lsn.0;
        if first.create {
            let path = segment::path(&self.shared.dir, first.segment);
            self.create_segment(&path, &first, durable).map_err(|failure| failure.on(|| path))?;
        }
        self.zero_fill_ahead(run_end, (run_end - first.offset) as usize).map_err(on_segment(&self.shared.dir, first.segment))?;
        let span = tracing::trace_span!("sync", segment = %first.segment, offset = first.offset, batches = run.len()).entered();
        let started = std::time::Instant::now();
        let (id, file) = self.file.as_ref().expect("a batch always has an open segment");
        let count = run.len();
        for (i, Sealed { buf, meta }) in run.iter_mut().enumerate() {
            assert_eq!(*id, meta.target.segment, "batch planned for another segment than the open one");
            let bytes = &written(buf)[..meta.padded];
            let result = if i + 1 == count {
                file.write_and_sync(bytes, meta.target.offset)
            } else {
                file.write_at(bytes, meta.target.offset).map_err(|e| (IoOp::Write, e))
            };
            result.map_err(IoFailure::from).map_err(on_segment(&self.shared.dir, first.segment))?;
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        drop(span);
        self.written_to = self.written_to.max(run_end);
        let stats = &self.shared.stats;
        stats.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        stats.sync_nanos_max.fetch_max(nanos, Ordering::Relaxed);
        // Counted with their sync: they are written and durable, even if the MANIFEST write
        // below fails and nobody is told.
        stats.batches.fetch_add(count as u64, Ordering::Relaxed);
        stats.records.fetch_add(record_count, Ordering::Relaxed);
        stats.bytes_written.fetch_add(run_end - first.offset, Ordering::Relaxed);
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        if first.create {
            // The new segment's first batch is durable: from now on, a log without it has lost
            // acknowledged records. Said before any of them is acknowledged.
            let manifest = &mut self.manifest;
            manifest.record(first.segment).map_err(failed_on(manifest.path()))?;
        }
        for Sealed { buf, meta } in run.iter_mut() {
            self.acknowledge(&written(buf)[..meta.used], meta);
        }
        Ok(())
    }

    /// A written batch is durable: advances the watermark, and adds its headers to the
    /// segment's index, writing the index out when the batch sealed the segment.
    fn acknowledge(&mut self, records: &[u8], job: &BatchMeta) {
        self.shared.note_segment_progress(job);
        // After the acknowledgement: the index only speeds up later headers-only scans.
        self.index.add_batch(records, job.target.offset);
        let at = job.target.offset + job.padded as u64;
        self.open_end = (!job.ends_segment).then_some(OpenEnd { at, next_lsn: job.end_lsn, salt: job.target.identity.salt });
        if job.ends_segment {
            self.segment_sealed();
        }
    }

    /// The open segment's end frame is durable: no batch goes to it again, and its header
    /// index is written.
    fn segment_sealed(&mut self) {
        self.file = None;
        self.open_end = None;
        if let Some(index) = self.index.finish() {
            let shared = &self.shared;
            write_index(&*shared.storage, &shared.dir, &index, shared.direct, shared.block, &mut self.index_scratch);
            self.index.reuse(index);
        }
    }

    /// At close, once every batch is durable: seals the open segment with an end frame in the
    /// block after its last batch, which claims that batch durable, and syncs it. Without it
    /// the next open would take damage in the last batch for a torn write and cut it: no
    /// later frame would say its records were acknowledged. The last batch is synced before,
    /// so the claim is true whenever the block is read back. A poisoned log seals nothing; a
    /// failed write or sync poisons it (the next open seals or cuts, as after a crash).
    pub fn seal_at_close(&mut self) {
        let shared = Arc::clone(&self.shared);
        let _guard = PoisonOnPanic { shared: &shared, what: "sealing the segment at close panicked" };
        if shared.durability.check_poison().is_err() {
            return;
        }
        let (Some(end), Some((id, file))) = (self.open_end, self.file.as_ref()) else { return };
        let id = *id;
        let cut = self.written_to > end.at + shared.block as u64;
        let bytes = match seal_file(file, shared.block, end.at, end.next_lsn, end.salt, cut) {
            Ok(bytes) => bytes,
            Err((op, err)) => {
                shared.durability.poison_at(op, &segment::path(&shared.dir, id), &err);
                shared.wake_all();
                return;
            }
        };
        shared.note_sealed(id, bytes);
        self.segment_sealed();
    }

    /// Writes zeros past the end of a small write (a batch, or a run of them), when the writes
    /// before it were small too, so that later small batches land in blocks the file system has
    /// already allocated. The run's fdatasync makes them durable too. Only ever writes past
    /// everything written so far: never a block holding records.
    fn zero_fill_ahead(&mut self, batch_end: u64, batch_len: usize) -> Result<(), IoFailure> {
        let Some(zeros) = &self.zeros else { return Ok(()) };
        if batch_len >= zeros.len() / 16 {
            self.small_streak = 0;
            return Ok(());
        }
        self.small_streak = self.small_streak.saturating_add(1);
        if batch_end <= self.written_to || self.small_streak < SMALL_STREAK_FOR_ZERO_FILL {
            return Ok(());
        }
        // A segment rolls near its target size: zeros beyond it would never be used. A target
        // within a block of `u64::MAX` (a log that never rolls) has no block boundary above it.
        let target = self.shared.segment_bytes_target;
        let limit = target.checked_next_multiple_of(self.shared.block as u64).unwrap_or(target);
        let len = (limit.saturating_sub(batch_end)).min(zeros.len() as u64) as usize;
        if len == 0 {
            return Ok(());
        }
        let (_, file) = self.file.as_ref().expect("a batch always has an open segment");
        file.write_at(&zeros[..len], batch_end).map_err(|e| (IoOp::Write, e))?;
        self.written_to = batch_end + len as u64;
        self.shared.stats.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Creates the segment file at `path` (or reuses a truncated one), writes its header block
    /// and makes the new entry durable.
    ///
    /// Never over a file that has the name already. Recovery removes an interrupted roll's
    /// file before the log opens, and the next segment's id is past every segment it listed,
    /// so no file of this log can be there: one that is was put there by someone else (not a
    /// `WalWriter`, which holds the directory's lock as the log does). The log cannot go on
    /// without this segment, and poisons itself with an error naming the file; the file is
    /// left as it was.
    fn create_segment(&mut self, path: &Path, target: &Target, durable: Lsn) -> Result<(), IoFailure> {
        let _span = tracing::debug_span!("roll", segment = %target.segment, first_lsn = %target.segment_first_lsn).entered();
        let block = self.header_block(target, durable);
        self.index.start(target.segment, target.identity.salt, target.segment_first_lsn);
        let key_id = target.identity.crypt.as_ref().map(|c| c.key_id);
        if let Some(file) = self.reuse_recycled(path, &block, key_id)? {
            self.file = Some((target.segment, file));
            return Ok(());
        }
        let shared = &self.shared;
        let mode = OpenMode { create: true, write: true, direct: shared.direct, create_new: true };
        let file = shared.storage.open(path, mode).map_err(|e| (IoOp::Open, e))?;
        file.write_at(&block, 0).map_err(|e| (IoOp::Write, e))?;
        shared.storage.sync_dir(&shared.dir).map_err(failed_on_op(IoOp::SyncDir, &shared.dir))?;
        tracing::debug!(segment = %target.segment, first_lsn = %target.segment_first_lsn, "segment created");
        self.file = Some((target.segment, file));
        self.written_to = shared.block as u64;
        Ok(())
    }

    /// Makes a kept truncated segment file the segment at `path`, if one is kept and can be
    /// opened. The new header is durable before the file takes the segment's name, so after a
    /// crash a file of that name never carries the old segment's header. The old frames behind
    /// it carry the old segment's salt: recovery and readers take them for the end of the new
    /// segment's records, never for records of it. They stay on disk until overwritten, so a
    /// segment encrypted under `key_id` reuses only a file encrypted under that key (see
    /// [`fits_for_reuse`]).
    fn reuse_recycled(&mut self, path: &Path, header: &AlignedBuf, key_id: Option<u32>) -> Result<Option<S::File>, IoFailure> {
        let shared = Arc::clone(&self.shared);
        let Some(from) = shared.take_recycled() else { return Ok(None) };
        if self.cannot_rename_no_replace {
            remove_kept(&*shared.storage, &from);
            return Ok(None);
        }
        let mode = OpenMode { create: false, write: true, direct: shared.direct, create_new: false };
        let file = match shared.storage.open(&from, mode) {
            Ok(file) => file,
            Err(err) => {
                // Nothing was changed yet: a fresh segment does as well. The file is off the
                // list of kept files, so removed: left there, it held a segment's space until
                // the next open, and truncation kept another in its place.
                tracing::warn!(%err, path = %from.display(), "cannot reuse a truncated segment; removing it and creating a new one");
                if err.kind() != io::ErrorKind::NotFound {
                    remove_kept(&*shared.storage, &from);
                }
                return Ok(None);
            }
        };
        // A reader still holding the old segment (it was truncated under a slow reader) would
        // see its bytes change: remove the file instead (the reader keeps it until it closes).
        // Where the file system cannot lock, no reader can be ruled out: remove it too. So with
        // a file that has another name (a hard-linked backup): rewriting it would change the
        // backup; removing this name leaves the backup whole.
        // A file larger than a segment (kept with a larger target, or before truncation kept
        // only files of a segment's size) would keep its size for good: removed too.
        let free = file.try_hold_exclusive();
        let linked = file.has_other_links();
        let len = file.len().map_err(|e| (IoOp::Stat, e))?;
        let too_large = len > shared.segment_bytes_max();
        let kept = from.file_name().and_then(|n| n.to_str()).and_then(segment::parse_recycled);
        let unfit = !kept.is_some_and(|kept| first_block_fits(&file, shared.block, kept, key_id));
        if !matches!(free, Ok(true)) || !matches!(linked, Ok(false)) || too_large || unfit {
            drop(file);
            tracing::debug!(path = %from.display(), ?free, ?linked, too_large, unfit, "a truncated segment may be read, has other names, is too large or does not fit the new segment; removing it instead of reusing it");
            remove_kept(&*shared.storage, &from);
            return Ok(None);
        }
        file.write_and_sync(header, 0)?;
        // Never over a file of the segment's name (see `create_segment`).
        match shared.storage.rename_no_replace(&from, path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Unsupported => {
                // This file system cannot rename without replacing (NFS, say), and a check
                // before a plain rename could still replace a file made in between: kept
                // files are removed from now on, and segments created fresh. The new header
                // under the kept name is nothing recovery reads.
                tracing::info!(%err, "kept segment files cannot be renamed safely here; they are removed instead of reused");
                self.cannot_rename_no_replace = true;
                file.release_hold();
                drop(file);
                remove_kept(&*shared.storage, &from);
                return Ok(None);
            }
            Err(err) if is_out_of_space(&err) => {
                // No room for the new name (a file system may need a directory block for it,
                // XFS does). Removing the kept file frees a segment's space, where a fresh
                // segment may fit; if none does, creating it poisons the log as before. A file
                // left under the kept name (its removal failed) now names the new segment in
                // its header and is never reused (see `fits_for_reuse`).
                tracing::warn!(%err, path = %from.display(), "no room to rename a truncated segment for reuse; removing it and creating a new one");
                file.release_hold();
                drop(file);
                remove_kept(&*shared.storage, &from);
                return Ok(None);
            }
            Err(err) => return Err((IoOp::Rename, err).into()),
        }
        shared.storage.sync_dir(&shared.dir).map_err(failed_on_op(IoOp::SyncDir, &shared.dir))?;
        // Readers that opened the old name before the rename find the new header once they
        // hold the file, and stop there (see `Cursor::open_scan`).
        file.release_hold();
        tracing::debug!(from = %from.display(), to = %path.display(), "segment reused");
        // Every block of the old file was written: nothing to zero-fill ahead within it.
        self.written_to = len - len % shared.block as u64;
        Ok(Some(file))
    }

    /// The first block of a new segment: preamble and header record.
    fn header_block(&self, target: &Target, durable: Lsn) -> AlignedBuf {
        let shared = &self.shared;
        let mut block = AlignedBuf::zeroed(shared.block, shared.block);
        let header = SegmentHeaderPayload {
            segment_id: target.segment,
            first_lsn: target.segment_first_lsn,
            salt: target.identity.salt,
            block_len: u32::try_from(shared.block).expect("block fits u32"),
            kdf_salt: target.identity.crypt.as_ref().map_or([0; 16], |c| c.kdf_salt),
        };
        write_header_block(&mut block, &super::encode::preamble(&target.identity), &header, durable);
        block
    }
}

/// Whether the kept file's first block lets it become the new segment (see [`fits_for_reuse`]);
/// a block that cannot be read says no.
fn first_block_fits<F: StorageFile>(file: &F, block: usize, kept: SegmentId, key_id: Option<u32>) -> bool {
    // A whole aligned block: the file may be open with O_DIRECT.
    let mut first = AlignedBuf::zeroed(block, block);
    let read = file.read_at(&mut first, 0);
    read.is_ok_and(|n| n >= PREAMBLE_SIZE) && fits_for_reuse(&first, kept, key_id)
}

/// Whether a kept file whose first block is `first`, kept as segment `kept`, may become a new
/// segment encrypted under `key_id` (`None`: plaintext). Its old frames stay behind the new
/// header until overwritten, so:
/// - it must still be the segment it was kept as (a valid header naming `kept`). A crash after
///   a reuse wrote the new segment's header, but before the rename, leaves a file whose header
///   names the new segment while its frames are the old one's: its preamble no longer says what
///   they are (a plaintext segment's records behind an encrypted preamble), so it is not reused;
/// - for an encrypted segment, it must have been encrypted under the same key: plaintext records
///   would stay in the clear inside the encrypted log, and records under a retired key readable
///   to whoever still holds that key, for as long as the file lives.
fn fits_for_reuse(first: &[u8], kept: SegmentId, key_id: Option<u32>) -> bool {
    let Ok(Some(head)) = decode_head(first, kept) else { return false };
    let p = head.preamble;
    head.header.segment_id == kept && key_id.is_none_or(|key| p.cipher == CIPHER_AES_256_GCM && p.key_id == key)
}

/// Removes a truncated segment file kept for reuse that will not be reused; one that cannot
/// be removed is left (it holds no record of the log, and recovery ignores it).
fn remove_kept<S: Storage>(storage: &S, path: &Path) {
    if let Err(err) = storage.remove(path) {
        tracing::warn!(%err, path = %path.display(), "cannot remove a truncated segment");
    }
}

/// The flusher thread: sleeps until a batch is due, then takes the writer (waiting while a
/// caller writes its own batch) and writes what is due. Runs until the log closes or is
/// poisoned.
pub(crate) fn run<S: Storage>(shared: &Shared<S>, writer: &Mutex<Flusher<S>>) {
    let lock = || writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while shared.wait_for_work() {
        lock().write_ready(None);
    }
    // Closed and drained (or poisoned, which `seal_at_close` checks): no batch follows.
    lock().seal_at_close();
}

/// Writes and syncs the block that seals a segment whose records end at `records_end` (at the
/// first block boundary at or after it), and returns the segment's length, which ends with that
/// block. With `cut`, the file is then shortened after the block and synced: where zeros (or a
/// crash's leftovers, at open) lie past it, a sealed segment never grows again, and they would
/// only take space until it is truncated. Both the close's seal and the open's use it.
pub(crate) fn seal_file<F: StorageFile>(
    file: &F,
    block: usize,
    records_end: u64,
    next_lsn: Lsn,
    salt: u32,
    cut: bool,
) -> Result<u64, (IoOp, io::Error)> {
    let at = round_up(records_end, block as u64);
    file.write_and_sync(&seal_block(block, records_end, next_lsn, salt), at)?;
    let len = at + block as u64;
    if cut {
        file.set_len(len).map_err(|e| (IoOp::SetLen, e))?;
        file.sync_data().map_err(|e| (IoOp::SyncData, e))?;
    }
    Ok(len)
}

/// One block that seals a segment whose records end at `records_end` (the block goes at the
/// first boundary at or after it): an end frame claiming every record before `next_lsn`
/// durable, then padding.
fn seal_block(block: usize, records_end: u64, next_lsn: Lsn, salt: u32) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(block, block);
    let durable = Lsn(next_lsn.0 - 1);
    let used = write_segment_end(&mut buf, 0, records_end, next_lsn, durable, salt);
    write_padding(&mut buf, used, next_lsn, durable, salt);
    buf
}

/// Closes a sealed batch's bytes: padding to its block, and the end frame first when it
/// seals its segment.
fn close_batch(buf: &mut BatchBuf, job: &BatchMeta, durable: Lsn) {
    let salt = job.target.identity.salt;
    let bytes = &mut buf.bytes_mut()[..job.padded];
    let mut used = job.used;
    if job.ends_segment {
        let records_end = job.target.offset + used as u64;
        used += write_segment_end(bytes, used, records_end, job.end_lsn, durable, salt);
    }
    write_padding(bytes, used, job.end_lsn, durable, salt);
}

/// The bytes of a batch whose regions are all closed (see [`wait_for_regions`]).
fn written(buf: &mut Arc<BatchBuf>) -> &mut [u8] {
    Arc::get_mut(buf).expect("no region left").bytes_mut()
}

/// Waits until every appender that reserved bytes in the batch has finished writing them (the
/// buffer stays in its `Arc`, to go back to the pool in it). Appenders only encode into
/// memory, so this is short; yield rather than sleep.
fn wait_for_regions(buf: &mut Arc<BatchBuf>) -> &mut BatchBuf {
    let mut spins = 0u32;
    // `Arc::get_mut` acquires what each appender released when it dropped its region.
    while Arc::get_mut(buf).is_none() {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    Arc::get_mut(buf).expect("no region left")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::preamble::SegmentPreamble;

    /// The first block of segment `id`, plaintext or encrypted under `key_id`.
    fn first_block(id: u64, key_id: Option<u32>) -> Vec<u8> {
        let preamble = match key_id {
            Some(key_id) => SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id, nonce_epoch: 3, ..SegmentPreamble::plaintext_wal() },
            None => SegmentPreamble::plaintext_wal(),
        };
        let header = SegmentHeaderPayload { segment_id: SegmentId(id), first_lsn: Lsn(40), salt: 6, block_len: 4096, kdf_salt: [1; 16] };
        let mut block = vec![0; 4096];
        write_header_block(&mut block, &preamble, &header, Lsn(39));
        block
    }

    #[test]
    fn a_kept_file_fits_a_plaintext_segment_whatever_it_held_while_its_header_names_it() {
        assert!(fits_for_reuse(&first_block(7, None), SegmentId(7), None));
        assert!(fits_for_reuse(&first_block(7, Some(2)), SegmentId(7), None));
        assert!(!fits_for_reuse(&first_block(9, None), SegmentId(7), None), "a header written by an interrupted reuse");
    }

    #[test]
    fn a_kept_file_fits_an_encrypted_segment_only_if_encrypted_under_the_same_key() {
        assert!(fits_for_reuse(&first_block(7, Some(2)), SegmentId(7), Some(2)));
        assert!(!fits_for_reuse(&first_block(7, Some(1)), SegmentId(7), Some(2)), "a retired key");
        assert!(!fits_for_reuse(&first_block(7, None), SegmentId(7), Some(2)), "plaintext");
        assert!(!fits_for_reuse(&first_block(9, Some(2)), SegmentId(7), Some(2)), "a header written by an interrupted reuse");
    }

    #[test]
    fn a_kept_file_whose_first_block_is_damaged_or_foreign_fits_nothing() {
        let mut damaged = first_block(7, None);
        damaged[PREAMBLE_SIZE + 30] ^= 1; // inside the header frame: its CRC fails
        assert!(!fits_for_reuse(&damaged, SegmentId(7), None));
        assert!(!fits_for_reuse(&[0; 4096], SegmentId(7), None));
        assert!(!fits_for_reuse(&first_block(7, None)[..PREAMBLE_SIZE + 8], SegmentId(7), None), "cut short");
        let mut foreign = first_block(7, None);
        foreign[..4].copy_from_slice(b"NSEG"); // an engine file's magic
        assert!(!fits_for_reuse(&foreign, SegmentId(7), None));
    }
}
