//! The decision table of the module docs, as code: what a segment's end ([`TailEnd`]) and the
//! bytes after it ([`Evidence`]) make recovery do ([`TailAction`]), and which corruption it
//! reports when the answer is to stop.
//!
//! Everything here is pure: the scan gathers the facts, and this file alone decides, so that
//! the table can be tested exhaustively without a disk.

use crate::error::CorruptionKind;
use crate::segment::evidence::Claims;
use crate::segment::scan::TailEnd;
use crate::types::Lsn;

/// What the bytes after the first bad position say about it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// // The same torn last batch: safe to cut unless a later frame says it was acknowledged.
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::Unacknowledged), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::Acknowledged), TailAction::Corrupt);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Only zeros follow (or nothing).
    None,
    /// Non-zero bytes follow, but no intact frame of the segment.
    Debris,
    /// Intact frames follow, but none claims the lost LSN was durable.
    Unacknowledged,
    /// An intact frame claims the lost LSN was durable.
    Acknowledged,
}

/// What recovery does at a segment's end.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// let sealed = TailEnd::Sealed { records_end: 8192 };
/// assert_eq!(decide(false, sealed, Evidence::None), TailAction::Accept);
/// assert_eq!(decide(true, TailEnd::Blank, Evidence::None), TailAction::Accept, "zeros after the last batch");
/// assert_eq!(decide(false, TailEnd::Blank, Evidence::None), TailAction::Corrupt, "an older segment must be sealed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailAction {
    /// The segment ends cleanly here.
    Accept,
    /// Cut the torn, unacknowledged tail here.
    CutTorn,
    /// Stop: acknowledged data is damaged.
    Corrupt,
}

/// The recovery decision table (see the module docs), as one `match`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// let sealed = TailEnd::Sealed { records_end: 4096 };
/// assert_eq!(decide(true, sealed, Evidence::Acknowledged), TailAction::Accept, "the end frame settles it");
/// assert_eq!(decide(false, TailEnd::Damaged, Evidence::None), TailAction::Corrupt);
/// assert_eq!(decide(true, TailEnd::Eof, Evidence::None), TailAction::Accept);
/// assert_eq!(decide(true, TailEnd::Stale, Evidence::Debris), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::None), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Eof, Evidence::Acknowledged), TailAction::Corrupt);
/// ```
#[must_use]
pub fn decide(last_segment: bool, end: TailEnd, evidence: Evidence) -> TailAction {
    match (last_segment, end, evidence) {
        (_, TailEnd::Sealed { .. }, _) => TailAction::Accept,
        (false, _, _) => TailAction::Corrupt,
        (true, _, Evidence::Acknowledged) => TailAction::Corrupt,
        (true, TailEnd::Eof | TailEnd::Blank | TailEnd::Stale, Evidence::None) => TailAction::Accept,
        (true, TailEnd::Eof | TailEnd::Blank | TailEnd::Stale, Evidence::Debris | Evidence::Unacknowledged) => TailAction::CutTorn,
        (true, TailEnd::Damaged, Evidence::None | Evidence::Debris | Evidence::Unacknowledged) => TailAction::CutTorn,
    }
}

pub(super) fn evidence(claims: Claims, claim_at_end: Option<Lsn>, lost: Lsn) -> Evidence {
    match claims.durable.max(claim_at_end) {
        Some(durable) if durable >= lost => Evidence::Acknowledged,
        Some(_) => Evidence::Unacknowledged,
        None if claims.debris => Evidence::Debris,
        None => Evidence::None,
    }
}

pub(super) fn corruption_kind(last: bool, end: TailEnd, evidence: Evidence, lost: Lsn, claim: Option<Lsn>) -> CorruptionKind {
    match (last, end) {
        (false, TailEnd::Damaged) => CorruptionKind::BadFrame,
        (false, _) => CorruptionKind::UnsealedSegment,
        (true, _) => {
            debug_assert_eq!(evidence, Evidence::Acknowledged);
            CorruptionKind::DamageBeforeDurableRecords { lost_from: lost, durable_claimed: claim.unwrap_or(lost) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tail_state_maps_to_exactly_one_action() {
        let ends = [TailEnd::Sealed { records_end: 0 }, TailEnd::Eof, TailEnd::Blank, TailEnd::Stale, TailEnd::Damaged];
        let evidences = [Evidence::None, Evidence::Debris, Evidence::Unacknowledged, Evidence::Acknowledged];
        for last in [false, true] {
            for end in ends {
                for ev in evidences {
                    let expected = match (last, end, ev) {
                        (_, TailEnd::Sealed { .. }, _) => TailAction::Accept,
                        (false, ..) => TailAction::Corrupt,
                        (true, _, Evidence::Acknowledged) => TailAction::Corrupt,
                        (true, TailEnd::Damaged, _) => TailAction::CutTorn,
                        (true, _, Evidence::Unacknowledged | Evidence::Debris) => TailAction::CutTorn,
                        (true, _, Evidence::None) => TailAction::Accept,
                    };
                    assert_eq!(decide(last, end, ev), expected, "{last} {end:?} {ev:?}");
                }
            }
        }
    }
}
