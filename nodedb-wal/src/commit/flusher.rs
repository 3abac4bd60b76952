//! The flusher thread: takes sealed batches in order, closes them with padding (and an end
//! frame when they seal a segment), creates segments, and writes the batches queued in one
//! segment one after another with one fdatasync after the last.
//! A failed write or sync poisons the log; nothing is ever retried. How a new segment's file is
//! made (created or reused) lives in `flusher/create.rs`.

mod create;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::plan::{BatchMeta, Sealed};
use super::{PoisonOnPanic, Shared};
use crate::error::IoOp;
use crate::format::layout::{round_up, write_padding, write_segment_end};
use crate::manifest::Manifest;
use crate::segment;
use crate::segment::index::{IndexBuilder, IndexScratch, write_index};
use crate::storage::{AlignedBuf, BatchBuf, Storage, StorageFile};
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
                shared.poison(op, path.as_deref(), &err);
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
                shared.poison(op, Some(&segment::path(&shared.dir, id)), &err);
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
}

/// The flusher thread: sleeps until a batch is due, then takes the writer (waiting while a
/// caller writes its own batch) and writes what is due. Runs until the log closes or is
/// poisoned.
pub(crate) fn run<S: Storage>(shared: &Shared<S>, writer: &Mutex<Flusher<S>>) {
    // `write_ready` and `seal_at_close` guard their own work; this one covers the waits between
    // them, so that a broken invariant there stops the log with an error for every waiter
    // rather than leaving them asleep with no flusher to wake them.
    let _guard = PoisonOnPanic { shared, what: "the flusher panicked while waiting for work" };
    let lock = || writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while shared.wait_for_work() {
        lock().write_ready(None);
    }
    // Closed and drained (or poisoned, which `seal_at_close` checks): no batch follows.
    lock().seal_at_close();
}

/// Writes and syncs the block that seals a segment whose records end at `records_end` (at the
/// first block boundary at or after it), and returns the segment's length, which ends with that
/// block. With `cut`, a file longer than that is first shortened to end with that block: where
/// zeros (or a crash's leftovers, at open) lie past it, a sealed segment never grows again, and
/// they would only take space until it is truncated. Both the close's seal and the open's use it.
///
/// The cut comes before the seal, and the seal's sync makes both durable: once a reader can see
/// the end frame (a look beside the writer, in this process or another), the file has its final
/// length, so a map it makes of a sealed segment never reaches past the file's end. Cut after
/// the seal, a look between the two mapped the zeros the cut then took away, and touching them
/// (the checking helper walks on past the end frame) was a `SIGBUS`. A crash between the cut
/// and the seal leaves the segment unsealed with every byte before the seal's block as it was,
/// as a crash before the close does. The cut only shortens: a file that ends before the seal's
/// block is extended by the seal's own write, never by zeros that could complete a frame a
/// crash cut short while no seal yet says where the records end (see `SegmentScan`).
pub(crate) fn seal_file<F: StorageFile>(
    file: &F,
    block: usize,
    records_end: u64,
    next_lsn: Lsn,
    salt: u32,
    cut: bool,
) -> Result<u64, (IoOp, io::Error)> {
    let at = round_up(records_end, block as u64);
    let len = at + block as u64;
    if cut && file.len().map_err(|e| (IoOp::Stat, e))? > len {
        file.set_len(len).map_err(|e| (IoOp::SetLen, e))?;
    }
    file.write_and_sync(&seal_block(block, records_end, next_lsn, salt), at)?;
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
