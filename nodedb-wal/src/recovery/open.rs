//! Opening a segment file for recovery and the readers: held against reuse while open, with
//! a file truncation took away told from one that is missing, and its header checked against
//! its name.

use std::path::Path;

use crate::error::{CorruptionKind, IoOp, MissingBecause, Result, WalError};
use crate::manifest;
use crate::segment;
use crate::segment::scan::SegmentHead;
use crate::storage::{OpenMode, Storage, StorageFile, is_listed};
use crate::types::SegmentId;

/// Opens segment `id` at `path` for reading and holds it against reuse
/// ([`StorageFile::hold_shared`]) while the file is open. Where the log's truncation may have
/// taken the segment since it was listed (`may_be_truncated`: readers, and looks beside a
/// writer), a missing file is [`WalError::SegmentTruncated`], unless `FLOOR` says truncation
/// did not take it ([`gone`]).
pub(crate) fn open_held<S: Storage>(
    storage: &S,
    path: &Path,
    id: SegmentId,
    direct: bool,
    may_be_truncated: bool,
) -> Result<(S::File, u64)> {
    let (file, len) = match open_existing(storage, path, direct, false) {
        Err(WalError::Io { source, .. })
            if may_be_truncated && source.kind() == std::io::ErrorKind::NotFound && !is_listed(storage, path) =>
        {
            return Err(gone(storage, path, id));
        }
        opened => opened?,
    };
    file.hold_shared().map_err(|e| WalError::io(IoOp::Lock, path, e))?;
    Ok((file, len))
}

/// `err` as a reader beside the writer should see it. A key the ring no longer holds, for a
/// segment whose name is gone since the reader opened it, is the truncation's doing:
/// `retire_key` lets a key go once no listed segment names it, so this is
/// [`WalError::SegmentTruncated`] (read again from the oldest LSN), not a lost key (or, where
/// `FLOOR` says truncation did not take it, [`WalError::MissingSegment`]: see [`gone`]).
pub(crate) fn key_gone_with_segment<S: Storage>(
    err: WalError,
    storage: &S,
    path: &Path,
    id: SegmentId,
    may_be_truncated: bool,
) -> WalError {
    match err {
        WalError::UnknownKeyId { .. } if may_be_truncated && !is_listed(storage, path) => gone(storage, path, id),
        err => err,
    }
}

/// The error for segment `id`, listed and now gone. Truncation makes a floor above a segment
/// durable before it takes the file away, so a `FLOOR` that still names `id` or a segment below
/// it as the oldest the log needs says the log did not take it: the file was removed or renamed
/// by other means, and [`WalError::SegmentTruncated`]'s advice, to read again from the oldest
/// LSN, would meet the same hole forever. Without a floor to go by (no `FLOOR`, one that does
/// not read, or one whose other slot is damaged and may have held a later floor), it counts as
/// truncated, as before `FLOOR` existed.
fn gone<S: Storage>(storage: &S, path: &Path, id: SegmentId) -> WalError {
    let Some(dir) = path.parent() else { return WalError::SegmentTruncated { segment: id } };
    match manifest::read_floor(storage, dir) {
        Ok(Some(seen)) if !seen.other_damaged && seen.floor <= id => {
            let why = if seen.floor == id { MissingBecause::Floor } else { MissingBecause::Hole };
            WalError::MissingSegment { missing: id, next_present: next_listed(storage, dir, id), why }
        }
        _ => WalError::SegmentTruncated { segment: id },
    }
}

/// The lowest segment id above `id` with a file in `dir`, for the message of a hole.
fn next_listed<S: Storage>(storage: &S, dir: &Path, id: SegmentId) -> Option<SegmentId> {
    let names = storage.list(dir).ok()?;
    names.iter().filter_map(|n| segment::parse_name(n)).filter(|&n| n > id).min()
}

/// That the header of the file named for segment `id` names it too. Ids only grow, so where
/// truncation may have reused the file since it was listed, a later id means exactly that
/// ([`WalError::SegmentTruncated`]); any other id is corruption.
pub(crate) fn check_identity(head: &SegmentHead, id: SegmentId, may_be_truncated: bool) -> Result<()> {
    let header_id = head.header.segment_id;
    if header_id > id && may_be_truncated {
        return Err(WalError::SegmentTruncated { segment: id });
    }
    if header_id != id {
        return Err(WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::IdentityMismatch { header_id } });
    }
    Ok(())
}

/// Opens an existing segment, for writing only where it will be written (reading and scanning
/// need no write access, so tools work on a read-only copy).
pub(crate) fn open_existing<S: Storage>(storage: &S, path: &Path, direct: bool, write: bool) -> Result<(S::File, u64)> {
    let mode = OpenMode { create: false, write, direct, create_new: false };
    let file = storage.open(path, mode).map_err(|e| WalError::io(IoOp::Open, path, e))?;
    let len = file.len().map_err(|e| WalError::io(IoOp::Stat, path, e))?;
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FaultConfig, SimStorage};

    fn unknown_key() -> WalError {
        WalError::UnknownKeyId { segment: Some(SegmentId(1)), key_id: 1 }
    }

    // The reader's side of this is `tests/key_retirement.rs`; a look beside the writer meets
    // it only if the key goes between two lookups microseconds apart, so it is checked here.
    #[test]
    fn a_missing_key_is_the_truncation_only_where_it_may_be_and_the_segment_s_name_is_gone() {
        let sim = SimStorage::new(1, FaultConfig::default());
        sim.create_dir_all(Path::new("/wal")).unwrap();
        let path = &crate::segment::path(Path::new("/wal"), SegmentId(1));
        let gone = key_gone_with_segment(unknown_key(), &sim, path, SegmentId(1), true);
        assert!(matches!(gone, WalError::SegmentTruncated { segment: SegmentId(1) }), "{gone}");
        let owner = key_gone_with_segment(unknown_key(), &sim, path, SegmentId(1), false);
        assert!(matches!(owner, WalError::UnknownKeyId { .. }), "the owner's log is not truncated under it: {owner}");
        let mode = OpenMode { create: true, write: true, direct: false, create_new: false };
        drop(sim.open(path, mode).unwrap());
        let listed = key_gone_with_segment(unknown_key(), &sim, path, SegmentId(1), true);
        assert!(matches!(listed, WalError::UnknownKeyId { .. }), "a listed segment's key is missing: {listed}");
        let other =
            key_gone_with_segment(WalError::KeyRingMissing { segment: SegmentId(1) }, &sim, Path::new("/wal/x"), SegmentId(1), true);
        assert!(matches!(other, WalError::KeyRingMissing { .. }), "{other}");
    }
}
