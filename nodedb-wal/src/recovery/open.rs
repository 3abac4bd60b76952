//! Opening a segment file for recovery and the readers: held against reuse while open, with
//! a file truncation took away told from one that is missing, and its header checked against
//! its name.

use std::path::Path;

use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::segment::scan::SegmentHead;
use crate::storage::{OpenMode, Storage, StorageFile};
use crate::types::SegmentId;

/// Opens segment `id` at `path` for reading and holds it against reuse
/// ([`StorageFile::hold_shared`]) while the file is open. Where the log's truncation may have
/// taken the segment since it was listed (`may_be_truncated`: readers, and looks beside a
/// writer), a missing file is [`WalError::SegmentTruncated`].
pub(crate) fn open_held<S: Storage>(
    storage: &S,
    path: &Path,
    id: SegmentId,
    direct: bool,
    may_be_truncated: bool,
) -> Result<(S::File, u64)> {
    let (file, len) = match open_existing(storage, path, direct, false) {
        Err(WalError::Io { source, .. })
            if may_be_truncated && source.kind() == std::io::ErrorKind::NotFound && !still_listed(storage, path) =>
        {
            return Err(WalError::SegmentTruncated { segment: id });
        }
        opened => opened?,
    };
    file.hold_shared().map_err(|e| WalError::io(IoOp::Lock, path, e))?;
    Ok((file, len))
}

/// Whether `path`'s name is still in its directory. Truncation takes a segment's name away; a
/// name that is still there but opens to nothing (a symbolic link whose target is gone) was
/// not truncated, and its open error, which names it, is the answer. Where the directory
/// cannot be listed, the name counts as gone.
fn still_listed<S: Storage>(storage: &S, path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return false };
    storage.list(dir).is_ok_and(|names| names.iter().any(|n| n == name))
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
