//! The owner's scan of a log directory: segment by segment, oldest first, checking that each
//! follows the one before, that the manifest's newest segment is there, and removing the
//! remains of an interrupted roll.
//!
//! A look beside a live writer ([`inspect_dir`](super::inspect_dir)) runs the same scan with
//! [`Scan::Look`], which changes nothing on disk.

use std::path::Path;

use super::ids::{listed_ids, split_at_floor};
use super::scan::{ScanCtx, scan_segment};
use super::{Outcome, Recovered, RecoveryInfo, live};
use crate::crypto::KeyRing;
use crate::error::{CorruptionKind, IoOp, MissingBecause, Result, WalError};
use crate::manifest;
use crate::segment::{self, SegmentInfo};
use crate::storage::Storage;
use crate::types::{Lsn, SegmentId};

/// Reads every segment of `dir` and decides what the log holds. Changes nothing on disk except
/// removing a segment left by an interrupted roll.
pub(crate) fn recover_dir<S: Storage>(storage: &S, dir: &Path, direct: bool, align: usize, ring: Option<&KeyRing>) -> Result<Recovered> {
    scan_dir(storage, dir, direct, align, ring, Scan::Repair)
}

/// How a scan of the directory reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// The owner, holding the lock: repairs (removes an interrupted roll).
    Repair,
    /// A look beside a live writer, whose truncation and reuse may change listed segments.
    Look,
    /// The last of the looks [`inspect_dir`](super::inspect_dir) retries.
    LastLook,
}

pub(super) fn scan_dir<S: Storage>(
    storage: &S,
    dir: &Path,
    direct: bool,
    align: usize,
    ring: Option<&KeyRing>,
    scan: Scan,
) -> Result<Recovered> {
    let repair = scan == Scan::Repair;
    // The newest segment a durable batch went to, as the manifest says (logs made before it
    // existed have none: nothing to check). Read before the listing: a segment is created
    // before the manifest names it, so a reader beside a live writer lists what it names.
    let vouched = manifest::read(storage, dir)?.map(|slot| slot.newest);
    let listed = listed_ids(storage, dir)?;
    // Read after the listing: truncation records the floor before it removes anything below
    // it, so every segment a listing misses to truncation lies below a floor read after it
    // (which beside a live writer may lie above every listed one: `inspect_dir` looks again).
    let floor = manifest::read_floor(storage, dir)?;
    let (below_floor, ids) = split_at_floor(dir, listed, floor, vouched)?;
    let proven_keys = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let ctx =
        ScanCtx { storage, dir, direct, align, ring, beside_writer: !repair, reuse_races: scan == Scan::Look, proven_keys: &proven_keys };
    let mut info = RecoveryInfo::default();
    let mut seal = None;
    let mut prev_end: Option<Lsn> = None;
    for (index, &id) in ids.iter().enumerate() {
        let last = index + 1 == ids.len();
        let outcome = if last && !repair {
            live::scan_live_segment(&ctx, id, prev_end, &mut info)?
        } else {
            scan_segment(&ctx, id, last, prev_end, &mut info)?
        };
        match outcome {
            Outcome::Sealed(seg) => {
                prev_end = Some(seg.end_lsn);
                info.segments.push(seg);
            }
            Outcome::Open(seg, _, torn) if seg.end_lsn == seg.first_lsn && vouched.is_some_and(|v| id <= v) => {
                // The manifest names a segment once its first batch is durable: one left with
                // no record lost acknowledged ones (its first batch damaged, or the file cut).
                let offset = torn.map_or(seg.bytes, |t| t.offset);
                return Err(WalError::Corruption { segment: id, offset, kind: CorruptionKind::BadFrame });
            }
            Outcome::Open(seg, pending, torn) => {
                prev_end = Some(seg.end_lsn);
                info.segments.push(seg);
                info.torn_tail = torn;
                seal = Some(pending);
            }
            Outcome::InterruptedRoll if vouched.is_some_and(|v| id <= v) => {
                // Not an interrupted roll: a batch of this segment was durable, so its head was.
                return Err(WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::BadSegmentHeader });
            }
            Outcome::InterruptedRoll => {
                if repair {
                    remove_interrupted_roll(storage, dir, id, &info)?;
                } else {
                    check_interrupted_roll(&info)?;
                }
                info.removed_interrupted_roll = Some(id);
            }
        }
    }
    let newest = info.segments.last().map_or(0, |s| s.id.0);
    if let Some(vouched) = vouched
        && vouched.0 > newest
    {
        // Acknowledged records lived in segments that are gone: say so rather than recover
        // to an older end.
        let why = MissingBecause::Manifest { named: vouched };
        return Err(WalError::MissingSegment { missing: SegmentId(newest + 1), next_present: None, why });
    }
    let next_lsn = prev_end.unwrap_or(Lsn::FIRST);
    info.first_lsn = info.segments.first().map_or(next_lsn, |s| s.first_lsn);
    info.record_count = info.segments.iter().map(SegmentInfo::record_count).sum();
    info.last_lsn = Lsn(next_lsn.0 - 1);
    // Counted from what remains: an interrupted roll's id is reused, leaving no hole.
    // No writer of this crate makes a segment with the last id (nothing could follow it).
    let next_segment = match info.segments.last() {
        None => SegmentId(1),
        Some(s) => SegmentId(s.id.0.checked_add(1).ok_or(WalError::Corruption {
            segment: s.id,
            offset: 0,
            kind: CorruptionKind::BadSegmentHeader,
        })?),
    };
    Ok(Recovered { info, seal, next_lsn, next_segment, below_floor })
}

/// An empty newest segment is an interrupted roll only if the one before it is sealed.
fn check_interrupted_roll(info: &RecoveryInfo) -> Result<()> {
    if let Some(prev) = info.segments.last()
        && !prev.sealed
    {
        // The writer seals a segment durably before it creates the next one.
        return Err(WalError::Corruption { segment: prev.id, offset: prev.bytes, kind: CorruptionKind::UnsealedSegment });
    }
    Ok(())
}

fn remove_interrupted_roll<S: Storage>(storage: &S, dir: &Path, id: SegmentId, info: &RecoveryInfo) -> Result<()> {
    check_interrupted_roll(info)?;
    let path = segment::path(dir, id);
    tracing::warn!(segment = %id, "removing a segment left by an interrupted roll");
    storage.remove(&path).map_err(|e| WalError::io(IoOp::Remove, &path, e))?;
    storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))
}
