//! How the flusher makes a new segment: a fresh file created beside the others, or a truncated
//! segment kept for reuse, checked (readers, other names, size, first block, key) and renamed
//! into place. Apart from the batch writing in `flusher.rs` because it is its own protocol: the
//! header is durable before the name, the name never replaces a file, and a kept file that may
//! not be reused is removed instead.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{Flusher, IoFailure, failed_on_op};
use crate::commit::plan::Target;
use crate::error::IoOp;
use crate::format::layout::write_header_block;
use crate::format::meta::SegmentHeaderPayload;
use crate::format::preamble::{CIPHER_AES_256_GCM, PREAMBLE_SIZE};
use crate::segment;
use crate::segment::scan::decode_head;
use crate::storage::{AlignedBuf, OpenMode, Storage, StorageFile, is_out_of_space};
use crate::types::{Lsn, SegmentId};

impl<S: Storage> Flusher<S> {
    /// Creates the segment file at `path` (or reuses a truncated one), writes its header block
    /// and makes the new entry durable.
    ///
    /// Never over a file that has the name already. Recovery removes an interrupted roll's
    /// file before the log opens, and the next segment's id is past every segment it listed,
    /// so no file of this log can be there: one that is was put there by someone else (not a
    /// `WalWriter`, which holds the directory's lock as the log does). The log cannot go on
    /// without this segment, and poisons itself with an error naming the file; the file is
    /// left as it was.
    pub(super) fn create_segment(&mut self, path: &Path, target: &Target, durable: Lsn) -> Result<(), IoFailure> {
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
        write_header_block(&mut block, &crate::commit::encode::preamble(&target.identity), &header, durable);
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
