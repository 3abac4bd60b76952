//! Which segment ids the log holds: the directory's listing, split at the truncation floor
//! (`FLOOR`), with no hole between the oldest and the newest.
//!
//! Kept apart from the scan because a missing segment is decided from names alone, before any
//! file is opened.

use std::path::Path;

use crate::error::{IoOp, MissingBecause, Result, WalError};
use crate::format::manifest::FLOOR_FILE;
use crate::manifest::FloorSeen;
use crate::segment;
use crate::storage::Storage;
use crate::types::SegmentId;

/// Splits the listed segment ids at the truncation floor `FLOOR` records: those below it,
/// which a truncation that a crash cut short left for the next open to remove, and those the
/// log holds, which must start at the floor (no hole either). The oldest present above the
/// floor means segments the log still needed were removed, not truncated: an error, with
/// nothing changed; [`WalError::FloorSlotDamaged`] where the floor's other slot is damaged (it
/// may have held a later floor). No floor (a log no truncation has cut since `FLOOR`
/// existed): no check. Nor where the manifest (`vouched`) names no segment (0): a new log
/// whose floor names the segment its first batch will create, and which holds nothing of its
/// own until one is durable (no segment, or segments a `WalWriter` imported, of any ids).
pub(super) fn split_at_floor(
    dir: &Path,
    listed: Vec<SegmentId>,
    floor: Option<FloorSeen>,
    vouched: Option<SegmentId>,
) -> Result<(Vec<SegmentId>, Vec<SegmentId>)> {
    // Every floor a truncation records is a listed segment, which the manifest named first.
    let floor = floor.filter(|_| vouched != Some(SegmentId(0)));
    let at = floor.map_or(SegmentId(0), |f| f.floor);
    let (below, ids): (Vec<SegmentId>, Vec<SegmentId>) = listed.into_iter().partition(|&id| id < at);
    match floor {
        Some(seen) if ids.first() != Some(&seen.floor) && seen.other_damaged => {
            return Err(WalError::FloorSlotDamaged {
                path: dir.join(FLOOR_FILE),
                floor: seen.floor,
                oldest_present: ids.first().copied(),
                contiguous: check_contiguous(&ids).is_ok(),
            });
        }
        Some(seen) if ids.first() != Some(&seen.floor) => {
            return Err(WalError::MissingSegment { missing: seen.floor, next_present: ids.first().copied(), why: MissingBecause::Floor });
        }
        _ => {}
    }
    check_contiguous(&ids)?;
    Ok((below, ids))
}

/// Segment ids in the directory, oldest first.
pub(crate) fn listed_ids<S: Storage>(storage: &S, dir: &Path) -> Result<Vec<SegmentId>> {
    let names = storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?;
    let mut ids: Vec<SegmentId> = names.iter().filter_map(|n| segment::parse_name(n)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A hole in the sequence of segment ids is an error.
fn check_contiguous(ids: &[SegmentId]) -> Result<()> {
    for pair in ids.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            let missing = SegmentId(pair[0].0 + 1);
            return Err(WalError::MissingSegment { missing, next_present: Some(pair[1]), why: MissingBecause::Hole });
        }
    }
    Ok(())
}
