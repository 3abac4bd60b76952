//! The longer `Display` sentences of [`WalError`](super::WalError) variants, built from their fields.
//!
//! A `#[error(...)]` attribute holds one format string; where the sentence depends on the
//! fields (what says a segment is missing, whether a path is known), it is built here.

use std::io;
use std::path::Path;

use super::{IoOp, MissingBecause};
use crate::types::SegmentId;

/// The end of an `UnknownKeyId` message: the segment that needs the key, if any.
pub(super) fn needed_by(segment: Option<SegmentId>) -> String {
    segment.map_or_else(String::new, |s| format!("; segment {s} is encrypted under it"))
}

/// The end of a `MissingSegment` message: what says the segment should be there, and what is.
pub(super) fn missing_why(missing: SegmentId, next_present: Option<SegmentId>, why: MissingBecause) -> String {
    let before = missing.0.saturating_sub(1);
    match (why, next_present) {
        // Only what is known: a reader that finds its segment gone knows nothing of the one
        // before it, which may be gone too.
        (MissingBecause::Hole, Some(next)) => format!(
            "a hole: segment {next} is there ({}, a file of this log or a stray one), and segment {missing} before it is not",
            crate::segment::file_name(next)
        ),
        (MissingBecause::Hole, None) => format!("a hole: segment {missing} is not there, and truncation did not take it"),
        (MissingBecause::Floor, next) => {
            let there = next.map_or_else(
                || "no segment from it on is there".to_string(),
                |n| format!("the oldest one there is {}", crate::segment::file_name(n)),
            );
            format!(
                "FLOOR names segment {missing} as the oldest the log still needs (truncation removed only those below it), and {there}; \
                 if a build older than FLOOR truncated this log, removing FLOOR opens it with the segments present, unchecked at its low end"
            )
        }
        (MissingBecause::Manifest { named }, _) => {
            let there = match before {
                0 => "no segment is there".to_string(),
                newest => format!("the newest there is {newest}"),
            };
            format!("MANIFEST names segment {named} as the newest whose records were durable, and {there}")
        }
    }
}

/// The message of [`WalError::FloorSlotDamaged`](super::WalError::FloorSlotDamaged).
pub(super) fn floor_slot_damaged(path: &Path, floor: SegmentId, oldest_present: Option<SegmentId>, contiguous: bool) -> String {
    let there = match (oldest_present, contiguous) {
        (None, _) => "no segment from it on is there".to_string(),
        (Some(oldest), true) => format!("the oldest segment there is {oldest}, and every one from it on is there"),
        (Some(oldest), false) => format!("the oldest segment there is {oldest}, and some above it are missing too"),
    };
    format!(
        "{} has a damaged slot; its intact slot names segment {floor} as the oldest the log still needs, but {there}. \
         Most likely the damaged slot held a later floor and the segments below it were truncated, losing nothing, \
         but segments removed by other means look the same, so the log is refused. \
         If a checkpoint covers every segment below the oldest one there (truncated on purpose), remove {}: \
         the log then opens with the segments present, unchecked at its low end, and its owner writes a new one",
        path.display(),
        path.display()
    )
}

/// The message of [`WalError::Poisoned`](super::WalError::Poisoned).
pub(super) fn poisoned(op: IoOp, kind: io::ErrorKind, os_error: Option<i32>, path: Option<&Path>) -> String {
    match path {
        Some(path) if kind == io::ErrorKind::AlreadyExists && matches!(op, IoOp::Open | IoOp::Rename) => format!(
            "the log is poisoned: {} is in the way of its next segment, a file the log did not make and left as it was; move it away, then reopen the log",
            path.display()
        ),
        _ => {
            let of = path.map_or_else(String::new, |p| format!(" of {}", p.display()));
            // The same error ends a log, a WalWriter and a double-write buffer: the words fit all.
            format!(
                "poisoned by an earlier failed {op:?}{of} ({}): nothing more is accepted; drop every handle, then open the log (or the double-write buffer) again to recover what the disk holds",
                describe(kind, os_error)
            )
        }
    }
}

/// An error kind in words, with the system's message for its number where there is one.
fn describe(kind: io::ErrorKind, os_error: Option<i32>) -> String {
    os_error.map_or_else(|| kind.to_string(), |code| io::Error::from_raw_os_error(code).to_string())
}
