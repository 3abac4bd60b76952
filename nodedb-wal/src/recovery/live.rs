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

use std::time::{Duration, Instant};

use super::{Outcome, RecoveryInfo, ScanCtx, open_existing, scan_segment};
use crate::error::{CorruptionKind, Result, WalError};
use crate::segment;
use crate::storage::{Storage, StorageFile};
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
    loop {
        scans += 1;
        let mut trial = info.clone();
        let outcome = scan_segment(ctx, id, true, prev_end, &mut trial);
        let Err(WalError::Corruption { offset, kind, .. }) = outcome else {
            *info = trial;
            return outcome;
        };
        let seen = sight(ctx, id, offset, kind);
        let waited = started.elapsed();
        if (seen.is_some() && seen == last) || (waited >= DEADLINE && scans >= MIN_SCANS) {
            return outcome;
        }
        last = seen;
        // Short of the deadline, the pause ends at it; past it (too few scans yet), it is whole.
        let left = DEADLINE.saturating_sub(waited);
        std::thread::sleep(if left.is_zero() { pause } else { pause.min(left) });
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

/// The file of segment `id` around `offset` now, or `None` where it cannot be read (truncation
/// took it: the next scan says so).
fn sight<S: Storage>(ctx: &ScanCtx<'_, S>, id: SegmentId, offset: u64, kind: CorruptionKind) -> Option<Sighting> {
    let (file, file_len) = open_existing(ctx.storage, &segment::path(ctx.dir, id), false, false).ok()?;
    let from = offset - offset % 4096;
    let mut around = vec![0u8; AROUND.min(file_len.saturating_sub(from)) as usize];
    let n = file.read_at(&mut around, from).ok()?;
    around.truncate(n);
    Some(Sighting { offset, kind, file_len, around })
}
