//! Truncation: whole segments below a checkpoint go, the floor made durable first; and, at the
//! next open, what a truncation left behind (segments below the floor, spare files, indexes).

use std::path::{Path, PathBuf};

use super::SegmentedWal;
use crate::error::{IoOp, Result, WalError};
use crate::manifest::Floor;
use crate::recovery::open_existing;
use crate::segment::scan::{HEAD_BYTES, decode_head};
use crate::segment::{self, SegmentInfo, index};
use crate::storage::{Storage, StorageFile, is_out_of_space};
use crate::types::{Lsn, SegmentId};

impl<S: Storage> SegmentedWal<S> {
    /// Removes whole segments whose records all lie below `checkpoint`, oldest first, each
    /// removal made durable before the next. The newest segment is always kept: it carries the
    /// log's position across restarts. Returns how many segments were removed.
    ///
    /// `checkpoint` is exclusive: the first LSN the engines' own files do not hold (the one
    /// after the last record they applied), which is also where the next open replays from
    /// with [`Self::read_from`]. The record at `checkpoint` is kept.
    ///
    /// Tombstones and temporal purges in the removed segments are gone too, so a later
    /// recovery no longer reports them: pass a checkpoint at which the engines have applied
    /// every drop and purge below it, to their own files, and replay from that checkpoint.
    /// Recovery still reports drops and purges in kept segments below the checkpoint (a segment
    /// goes only whole): [`crate::TombstoneSet::dropped_at`] and [`crate::TemporalPurge::lsn`]
    /// tell those from the ones the engines' files do not hold yet. A checkpoint past
    /// [`Self::next_lsn`] names records never appended (another log's LSN, a byte offset): it
    /// is [`WalError::LsnNotIssued`] and nothing is removed.
    ///
    /// It runs on a poisoned log too, to free the room a full disk denied before the log is
    /// reopened: there it keeps no segment for reuse (`recycle_segments`) and removes the files
    /// kept before, which would hold that room.
    ///
    /// A failed fdatasync of `FLOOR` poisons the log, as any failed sync does, and is returned
    /// as [`WalError::Poisoned`] naming that step and file; any other failure is
    /// [`WalError::Io`] and the log goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// # let mut config = SegmentedWalConfig::new("/small");
    /// # config.segment_bytes_target = 64 * 1024;
    /// # let wal = SegmentedWal::open_with(SimStorage::new(2, FaultConfig::default()), config)?;
    /// for _ in 0..200 {
    ///     wal.append(Record::new(ty, &[7; 1000]))?;
    /// }
    /// // The engines' files now hold every record up to `applied`: the log below the next
    /// // LSN can go, and a restart replays from there.
    /// let applied = wal.sync()?;
    /// let checkpoint = applied.next();
    /// let removed = wal.truncate_before(checkpoint)?;
    /// assert!(removed > 0);
    /// assert_eq!(wal.segments().len(), 1, "the newest segment is always kept");
    /// assert!(wal.oldest_lsn() <= checkpoint, "a replay from the checkpoint finds its records");
    /// assert_eq!(wal.read_from(checkpoint)?.count(), 0, "nothing was appended after it");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn truncate_before(&self, checkpoint: Lsn) -> Result<usize> {
        self.check_reached(checkpoint)?;
        let mut floor = self.truncation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _span = tracing::info_span!("truncate", checkpoint = %checkpoint).entered();
        let dir = &self.config.dir;
        if self.committer.shared().durability.check_poison().is_err() {
            self.remove_kept_files();
        }
        let Some(target) = self.floor_for(checkpoint) else { return Ok(0) };
        self.record_floor(&mut floor, target)?;
        let mut removed = 0;
        loop {
            let (victim, bytes) = {
                let segments = self.committer.shared().segments_lock();
                match segments.as_slice() {
                    [first, ..] if first.id < target => (first.id, first.bytes),
                    _ => break,
                }
            };
            let path = segment::path(dir, victim);
            let shared = self.committer.shared();
            // Kept under another name for reuse as a later segment, or removed. Not one larger
            // than a segment (a record or group larger than the target): reused, it would keep
            // that size for good, its space never freed by any checkpoint. Nor on a poisoned
            // log, which writes nothing more before it is reopened, and whose reopen may need
            // the room (a full disk): a kept file would hold it.
            let healthy = shared.durability.check_poison().is_ok();
            let keep =
                (healthy && shared.wants_recycled() && bytes <= shared.segment_bytes_max()).then(|| segment::recycled_path(dir, victim));
            let kept = match keep {
                Some(to) => self.keep_or_remove(&path, to)?,
                None => {
                    remove_truncated(&*self.storage, &path)?;
                    None
                }
            };
            // The segment is gone whether or not the directory sync below succeeds: stop listing it.
            shared.segments_lock().retain(|s| s.id != victim);
            index::remove_index(&*self.storage, dir, victim);
            if let Err(e) = self.storage.sync_dir(dir) {
                // A kept file whose new name may not be durable is not reused (its new header
                // could land under the old name), nor left unused on the disk until the next
                // open, a segment's space per failed truncation: removed, as without reuse.
                if let Some(kept) = &kept
                    && let Err(err) = self.storage.remove(kept)
                {
                    tracing::warn!(%err, path = %kept.display(), "cannot remove a truncated segment not kept for reuse");
                }
                return Err(WalError::io(IoOp::SyncDir, dir, e));
            }
            if let Some(kept) = kept {
                shared.add_recycled(kept);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// The oldest segment a truncation at `checkpoint` keeps, where it removes any: the first
    /// that is not sealed, holds a record at or above `checkpoint`, or is the newest. Segments
    /// are only added at the newest end meanwhile, so the ones below stay removable.
    fn floor_for(&self, checkpoint: Lsn) -> Option<SegmentId> {
        let segments = self.committer.shared().segments_lock();
        let older = &segments[..segments.len().saturating_sub(1)];
        let removable = older.iter().take_while(|s| s.sealed && s.end_lsn <= checkpoint).count();
        (removable > 0).then(|| segments[removable].id)
    }

    /// Makes `target` the durable truncation floor before any segment below it goes: a crash
    /// then leaves segments below the floor, which the next open removes, and never a log
    /// whose oldest segments are gone with nothing to tell it from lost ones. A failed sync
    /// poisons the log (it is never retried) and truncates nothing.
    fn record_floor(&self, floor: &mut Floor<S::File>, target: SegmentId) -> Result<()> {
        let shared = self.committer.shared();
        if floor.is_broken() {
            return Err(shared.durability.check_poison().expect_err("a failed sync of the floor poisoned the log"));
        }
        let result = floor.advance(&*self.storage, &self.config.dir, target);
        if let Err(WalError::Io { op, path, source }) = &result
            && floor.is_broken()
        {
            // Said as what it is, the end of the log, as to an appender whose sync failed: an
            // `Io` from here otherwise means a truncation that failed while the log goes on.
            shared.poison(*op, Some(path), source);
            return Err(shared.durability.check_poison().expect_err("just poisoned"));
        }
        result
    }

    /// Removes the files kept for reuse, on a poisoned log: it reuses none before it is
    /// reopened, and the open needs room to write (it seals the newest segment), which on a
    /// full disk they would hold, truncation having been the way to free it. Not synced: a
    /// removal a power cut undoes leaves a kept file, as before. One that cannot be removed
    /// is left, unused.
    fn remove_kept_files(&self) {
        for kept in self.committer.shared().take_all_recycled() {
            remove_kept(&*self.storage, &kept);
        }
    }

    /// Renames a truncated segment to `to` to keep it for reuse, and returns `to`; or, where the
    /// disk has no room for the new name (a file system may need a new directory block for it,
    /// XFS does), removes it and returns `None`: a full disk is where truncation must free
    /// space, and removing a file always can.
    fn keep_or_remove(&self, path: &Path, to: PathBuf) -> Result<Option<PathBuf>> {
        match self.storage.rename(path, &to) {
            Ok(()) => Ok(Some(to)),
            Err(err) if is_out_of_space(&err) => {
                tracing::warn!(%err, path = %path.display(), "no room to keep a truncated segment for reuse; removing it");
                remove_truncated(&*self.storage, path)?;
                Ok(None)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "a truncated segment was removed by other means before the truncation");
                Ok(None)
            }
            Err(err) => Err(WalError::io(IoOp::Rename, path, err)),
        }
    }
}

/// Removes a segment truncation takes. One already gone (removed by hand) is what the removal
/// would have made of it: the floor above it is durable, so the log no longer needs it, and an
/// error there would stop this truncation and every later one at the same file.
fn remove_truncated<S: Storage>(storage: &S, path: &Path) -> Result<()> {
    match storage.remove(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "a truncated segment was removed by other means before the truncation");
            Ok(())
        }
        removed => removed.map_err(|e| WalError::io(IoOp::Remove, path, e)),
    }
}

/// Removes segments a truncation left below the floor when a crash cut it short, oldest
/// first. The caller syncs the directory. A file there whose head does not name its segment
/// is no segment of this log (another program's file, a directory), so it is left as found.
pub(super) fn remove_below_floor<S: Storage>(storage: &S, dir: &Path, ids: &[SegmentId]) -> Result<()> {
    for &id in ids {
        let path = segment::path(dir, id);
        if !holds_own_head(storage, &path, id) {
            tracing::warn!(path = %path.display(), "leaving a file named like a segment below the truncation floor: it is no segment of this log");
            continue;
        }
        tracing::warn!(segment = %id, "removing a segment below the truncation floor, left by an interrupted truncation");
        storage.remove(&path).map_err(|e| WalError::io(IoOp::Remove, &path, e))?;
    }
    Ok(())
}

/// Whether the file at `path` begins with a segment head naming `id`, as every segment a
/// truncation can leave behind does (truncation takes only sealed segments). Read through the
/// page cache, and nothing else read: the file may be anything.
fn holds_own_head<S: Storage>(storage: &S, path: &Path, id: SegmentId) -> bool {
    let Ok((file, _)) = open_existing(storage, path, false, false) else { return false };
    let mut bytes = [0; HEAD_BYTES];
    let mut len = 0;
    while len < bytes.len() {
        match file.read_at(&mut bytes[len..], len as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    matches!(decode_head(&bytes[..len], id), Ok(Some(head)) if head.header.segment_id == id)
}

/// At open, where the disk has no room for what the open must write: removes every truncated
/// segment file kept for reuse (they hold no record), syncs the directory, and says whether
/// it removed any, so that the write may be tried again. Left there, they held the room of a
/// log that filled its disk, and every open failed until someone removed them by hand.
pub(super) fn remove_kept_for_room<S: Storage>(storage: &S, dir: &Path) -> Result<bool> {
    let names = storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?;
    let mut removed = false;
    for id in names.iter().filter_map(|n| segment::parse_recycled(n)) {
        removed |= remove_kept(storage, &segment::recycled_path(dir, id));
    }
    if removed {
        tracing::warn!(dir = %dir.display(), "no room to open the log: removed the truncated segments kept for reuse");
        storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    }
    Ok(removed)
}

/// At open, with one listing of `dir`: removes header indexes whose segment is gone (a crash
/// after a truncation removed the segment but not yet its index), and returns the truncated
/// segment files kept for reuse, at most `keep` of them (their names are durable: the open
/// synced the directory first); any more (the setting was lowered) are removed (one that
/// cannot be is left there, unused).
pub(super) fn tidy_dir<S: Storage>(storage: &S, dir: &Path, segments: &[SegmentInfo], keep: usize) -> Result<Vec<PathBuf>> {
    let names = storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?;
    // A set, not a scan of the list per index file: a log of many segments opens in linear time.
    let live: std::collections::HashSet<SegmentId> = segments.iter().map(|s| s.id).collect();
    let orphans = names.iter().filter_map(|n| segment::parse_index(n)).filter(|id| !live.contains(id));
    orphans.for_each(|id| index::remove_index(storage, dir, id));
    let mut ids: Vec<SegmentId> = names.iter().filter_map(|n| segment::parse_recycled(n)).collect();
    ids.sort_unstable();
    let extra = ids.len().saturating_sub(keep);
    for &id in &ids[..extra] {
        remove_kept(storage, &segment::recycled_path(dir, id));
    }
    if extra > 0 {
        storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    }
    Ok(ids[extra..].iter().map(|&id| segment::recycled_path(dir, id)).collect())
}

/// Removes a truncated segment file kept for reuse, and says whether it went. It holds no
/// record of the log: one that cannot be removed (a permission, an immutable flag) stays,
/// unused, with a warning, rather than fail an open or a truncation; one already gone is no
/// error.
fn remove_kept<S: Storage>(storage: &S, path: &Path) -> bool {
    match storage.remove(path) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => {
            tracing::warn!(%err, path = %path.display(), "cannot remove a truncated segment kept for reuse; leaving it");
            false
        }
    }
}
