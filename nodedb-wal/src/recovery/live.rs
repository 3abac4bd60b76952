//! The newest segment, as a read-only look sees it beside a live writer.
//!
//! The look reads the segment window by window while the writer appends to it. A window read
//! before the writer's batch landed there holds zeros where the batch now is, and a later
//! window, read after that batch was synced and more written, holds frames that claim it
//! durable: together, damage before acknowledged records (`DamageBeforeDurableRecords`), on a
//! healthy log. A busy writer can do that to every scan, each time further on; a slow disk or
//! a loaded CPU stretches how long each write takes. So a look scans again, pausing 1, 2, 4 ...
//! up to 128 ms between scans, until a scan is clean or its deadline (one second) passes, and
//! gives up at the deadline only after eight scans: the same load that stretches the writer's
//! writes stretches the look's scans, and one scan of a large segment on a busy machine can
//! outlast the deadline, which alone would report the first race it met as damage.
//!
//! It stops early only when the damage is stable: two scans in a row report the same error at
//! the same offset, in a file of the same length, with the same bytes around it. A writer in
//! flight cannot look like that. A frame that claims a record durable was written after that
//! record's batch was written and synced, and the writer never writes a block holding
//! acknowledged records again, so the bytes where the record should be were final when the
//! first scan saw the claim: if the second scan, which read them after that, still finds them
//! bad, they are bad. A race shows up as a change instead (the damage moves on, or its bytes
//! change). So real damage costs two scans and a pause of 1 ms; a look that a writer overtakes
//! on every scan gives up after about a second (and the scan running then) or eight scans,
//! whichever comes later, reporting what the last scan found.
//!
//! Two scans through the page cache can also agree on bytes the disk no longer holds. The
//! writer writes with O_DIRECT, and the kernel drops the cached pages such a write replaces,
//! but it can fail to (pages someone has mapped): the cache then keeps the segment's old bytes,
//! zeros where a batch now is, under records that claim it durable, and every buffered scan
//! finds the same damage. So before it reports damage a look reads the window around it once
//! more with O_DIRECT. Where those bytes agree, the damage is on the disk (one read more, no
//! wait). Where they differ, the cache was behind the disk: the look scans again, past the
//! cache from then on, within the same deadline. Where O_DIRECT cannot be had (a file system
//! without it, whose cache is the only copy) the buffered bytes stand.

use std::path::Path;
use std::time::{Duration, Instant};

use super::scan::{ScanCtx, scan_segment};
use super::{Outcome, RecoveryInfo, open_existing};
use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::segment;
use crate::storage::{AlignedBuf, Storage, StorageFile};
use crate::types::{Lsn, SegmentId};

/// How long a look goes on scanning the newest segment while what it finds wrong keeps changing.
const DEADLINE: Duration = Duration::from_secs(1);
/// Scans a look makes before its deadline may end it: its verdict on a healthy log must not
/// depend on how fast the machine runs it. Eight scans pause 127 ms in all.
const MIN_SCANS: u32 = 8;
/// The first pause between two scans; each next one is twice as long, up to [`PAUSE_MAX`].
const PAUSE_FIRST: Duration = Duration::from_millis(1);
const PAUSE_MAX: Duration = Duration::from_millis(128);
/// Bytes read around a damaged offset, from the block holding it on: enough for the frame
/// header there and the block after it.
const AROUND: u64 = 8192;
/// What a read with O_DIRECT is aligned to: a whole page, which every disk's sectors divide.
const DIRECT_ALIGN: usize = 4096;

/// What one scan found wrong, and the file as it was right after.
#[derive(Debug, PartialEq, Eq)]
struct Sighting {
    offset: u64,
    kind: CorruptionKind,
    file_len: u64,
    around: Vec<u8>,
}

/// Scans the newest segment `id` beside a possibly live writer; see the module docs. Each try
/// scans into a copy of `info`, so the tombstones and purges of a discarded try are not counted
/// twice.
pub(super) fn scan_live_segment<S: Storage>(
    ctx: &ScanCtx<'_, S>,
    id: SegmentId,
    prev_end: Option<Lsn>,
    info: &mut RecoveryInfo,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut pause = PAUSE_FIRST;
    let mut last: Option<Sighting> = None;
    let mut scans = 0u32;
    // Set once the page cache was seen behind the disk: the scans read past it from then on.
    let mut past_cache: Option<ScanCtx<'_, S>> = None;
    loop {
        scans += 1;
        let scan_ctx = past_cache.as_ref().unwrap_or(ctx);
        let mut trial = info.clone();
        let outcome = scan_segment(scan_ctx, id, true, prev_end, &mut trial);
        let Err(WalError::Corruption { offset, kind, .. }) = outcome else {
            *info = trial;
            return outcome;
        };
        let mut seen = sight(scan_ctx, id, offset, kind);
        if seen.is_some() && seen == last {
            if !cache_behind_disk(scan_ctx, id, seen.as_ref().expect("checked")) {
                return outcome;
            }
            past_cache = Some(ScanCtx { direct: true, align: DIRECT_ALIGN, ..*ctx });
            seen = None;
        }
        let waited = started.elapsed();
        if waited >= DEADLINE && scans >= MIN_SCANS {
            return outcome;
        }
        last = seen;
        // Short of the deadline, the pause ends at it; past it (too few scans yet), it is whole.
        let left = DEADLINE.saturating_sub(waited);
        std::thread::sleep(if left.is_zero() { pause } else { pause.min(left) });
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

/// The file of segment `id` around `offset` now, read as `ctx` reads it, or `None` where it
/// cannot be read (truncation took it: the next scan says so).
fn sight<S: Storage>(ctx: &ScanCtx<'_, S>, id: SegmentId, offset: u64, kind: CorruptionKind) -> Option<Sighting> {
    let (around, file_len) = read_around(ctx.storage, &segment::path(ctx.dir, id), offset, ctx.direct).ok()?;
    Some(Sighting { offset, kind, file_len, around })
}

/// Whether the disk holds other bytes than the page cache did where `seen` was read through
/// it. Not where `seen` was read with O_DIRECT already, nor where O_DIRECT cannot be had.
fn cache_behind_disk<S: Storage>(ctx: &ScanCtx<'_, S>, id: SegmentId, seen: &Sighting) -> bool {
    if ctx.direct {
        return false;
    }
    let Ok((disk, file_len)) = read_around(ctx.storage, &segment::path(ctx.dir, id), seen.offset, true) else { return false };
    file_len != seen.file_len || disk != seen.around
}

/// Up to [`AROUND`] bytes of the file at `path` from the page holding `offset` on, read with
/// O_DIRECT where `direct` says, and the file's length.
fn read_around<S: Storage>(storage: &S, path: &Path, offset: u64, direct: bool) -> Result<(Vec<u8>, u64)> {
    let (file, file_len) = open_existing(storage, path, direct, false)?;
    let from = offset - offset % DIRECT_ALIGN as u64;
    let mut buf = AlignedBuf::zeroed(AROUND as usize, DIRECT_ALIGN);
    let n = file.read_at(&mut buf, from).map_err(|e| WalError::io(IoOp::Read, path, e))?;
    let len = AROUND.min(file_len.saturating_sub(from)) as usize;
    Ok((buf[..n.min(len)].to_vec(), file_len))
}
