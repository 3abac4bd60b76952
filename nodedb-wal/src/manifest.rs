//! The log's `MANIFEST`: the newest segment whose first batch was made durable, so that
//! recovery can tell a log that ends where it should from one whose newest segments were
//! removed (see [`crate::format::manifest`] for the bytes).
//!
//! Updated by the flusher once per new segment, after that segment's first batch is durable and
//! before that batch is acknowledged; written at open when it is missing or behind (a log made
//! before the manifest existed, or a crash between a segment's first batch and the update).
//! It is created whole under a temporary name and renamed into place, so a `MANIFEST` without
//! an intact slot is damage ([`WalError::ManifestDamaged`]), never a crash's doing.
//!
//! The log's `FLOOR` is the same two-slot file at the other end of the log: the oldest
//! segment still needed, recorded by truncation before it removes (or keeps for reuse) any
//! segment below it, so that recovery can tell a log truncated there from one whose oldest
//! segments were removed by someone else ([`WalError::FloorDamaged`] where it has no slot).
//! A file of its own, not a field of `MANIFEST`: the flusher writes the manifest on the append
//! path, truncation writes the floor on its own thread, and neither waits for the other.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{IoOp, Result, WalError};
use crate::format::manifest::{
    FLOOR_FILE, FLOOR_TEMP_FILE, MANIFEST_FILE, MANIFEST_LEN, MANIFEST_TEMP_FILE, ManifestSlot, SLOT_LEN, SlotKind,
};
use crate::storage::{OpenMode, Storage, StorageFile, is_out_of_space};
use crate::types::SegmentId;

/// What the manifest of `dir` says, or `None` where there is none (a log made before the
/// manifest existed). A manifest without an intact slot is an error: it is created whole and
/// updated one slot at a time (see [`create`]), so no crash leaves it so.
pub(crate) fn read<S: Storage>(storage: &S, dir: &Path) -> Result<Option<ManifestSlot>> {
    read_kind(storage, dir, SlotKind::Manifest)
}

/// The truncation floor `FLOOR` in `dir` records, or `None` where there is none (no
/// truncation has removed a segment since it existed). Like [`read`], a file without an
/// intact slot is an error.
pub(crate) fn read_floor<S: Storage>(storage: &S, dir: &Path) -> Result<Option<FloorSeen>> {
    Ok(read_slots(storage, dir, SlotKind::Floor)?.map(|(slot, other_damaged)| FloorSeen { floor: slot.newest, other_damaged }))
}

/// What `FLOOR` says, and whether its other slot is damaged: then the slot read may be the
/// older one, and a later floor the damaged one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FloorSeen {
    pub floor: SegmentId,
    pub other_damaged: bool,
}

/// The final and the temporary name of a file of `kind`.
fn names(kind: SlotKind) -> (&'static str, &'static str) {
    match kind {
        SlotKind::Manifest => (MANIFEST_FILE, MANIFEST_TEMP_FILE),
        SlotKind::Floor => (FLOOR_FILE, FLOOR_TEMP_FILE),
    }
}

fn damaged(kind: SlotKind, path: PathBuf) -> WalError {
    match kind {
        SlotKind::Manifest => WalError::ManifestDamaged { path },
        SlotKind::Floor => WalError::FloorDamaged { path },
    }
}

fn read_kind<S: Storage>(storage: &S, dir: &Path, kind: SlotKind) -> Result<Option<ManifestSlot>> {
    Ok(read_slots(storage, dir, kind)?.map(|(slot, _)| slot))
}

/// The current slot of the file of `kind` in `dir`, and whether the other slot is damaged.
fn read_slots<S: Storage>(storage: &S, dir: &Path, kind: SlotKind) -> Result<Option<(ManifestSlot, bool)>> {
    let path = dir.join(names(kind).0);
    let file = match storage.open(&path, OpenMode { create: false, write: false, direct: false, create_new: false }) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(IoOp::Open, &path, e)),
    };
    let mut bytes = vec![0u8; MANIFEST_LEN];
    let n = file.read_at(&mut bytes, 0).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
    let Some(slot) = ManifestSlot::current_as(&bytes[..n], kind) else { return Err(damaged(kind, path)) };
    // Each slot is written within one sector, which a crash writes whole (FORMAT.md,
    // "Assumptions about the media"): a damaged one is damage, or an update a reader beside
    // the writer caught in flight.
    let other_damaged = ManifestSlot::other_damaged_as(&bytes[..n], kind);
    if other_damaged {
        tracing::warn!(path = %path.display(), current = %slot.newest, "one slot is damaged: the intact one may be the older");
    }
    Ok(Some((slot, other_damaged)))
}

/// Creates the manifest of `dir` naming `newest`: its first slot is written and synced under a
/// temporary name, which is then renamed to `MANIFEST` and the directory synced. So `MANIFEST`
/// never exists without an intact slot, neither after a crash nor for a reader beside the
/// writer, and one without is known to be damaged. Returns the open file and what it says.
fn create<S: Storage>(storage: &S, dir: &Path, kind: SlotKind, newest: SegmentId) -> Result<(S::File, ManifestSlot)> {
    let (name, temp) = names(kind);
    let temp = dir.join(temp);
    let file = storage
        .open(&temp, OpenMode { create: true, write: true, direct: false, create_new: false })
        .map_err(|e| WalError::io(IoOp::Open, &temp, e))?;
    // Emptied first: one left by a creation that a crash cut short vouches for nothing.
    file.set_len(0).map_err(|e| WalError::io(IoOp::SetLen, &temp, e))?;
    let first = ManifestSlot { sequence: 1, newest };
    file.write_at(&first.encode_as(kind), ManifestSlot::offset_of(first.sequence)).map_err(|e| WalError::io(IoOp::Write, &temp, e))?;
    file.sync_data().map_err(|e| WalError::io(IoOp::SyncData, &temp, e))?;
    let path = dir.join(name);
    storage.rename(&temp, &path).map_err(|e| WalError::io(IoOp::Rename, &temp, e))?;
    storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    Ok((file, first))
}

/// A sequence from which the owner's open creates the file anew: half the range a reader
/// takes (`1..2^63`), so that the sequence of an open file never runs out.
const SEQUENCE_RESTART_FROM: u64 = 1 << 62;

/// The open manifest of a log being written.
#[derive(Debug)]
pub(crate) struct Manifest<F> {
    file: F,
    path: PathBuf,
    kind: SlotKind,
    current: ManifestSlot,
}

impl<F: StorageFile> Manifest<F> {
    /// Opens the manifest of `dir` for writing, where there is one, and changes nothing. Done
    /// before recovery writes anything (the seal of the newest segment, its index): a manifest
    /// the log may not write (its permissions, an immutable flag) then fails the open before
    /// anything on disk has changed, not after.
    pub fn open_existing<S: Storage<File = F>>(storage: &S, dir: &Path) -> Result<Option<Manifest<F>>> {
        Manifest::open_kind(storage, dir, SlotKind::Manifest)
    }

    /// Opens the file of `kind` in `dir` for writing, where there is one, and changes nothing.
    pub fn open_kind<S: Storage<File = F>>(storage: &S, dir: &Path, kind: SlotKind) -> Result<Option<Manifest<F>>> {
        Ok(Manifest::open_slots(storage, dir, kind)?.map(|(manifest, _)| manifest))
    }

    /// [`Self::open_kind`], and whether the file's other slot is damaged, from one read.
    fn open_slots<S: Storage<File = F>>(storage: &S, dir: &Path, kind: SlotKind) -> Result<Option<(Manifest<F>, bool)>> {
        let path = dir.join(names(kind).0);
        let Some((current, other_damaged)) = read_slots(storage, dir, kind)? else { return Ok(None) };
        let file = storage
            .open(&path, OpenMode { create: false, write: true, direct: false, create_new: false })
            .map_err(|e| WalError::io(IoOp::Open, &path, e))?;
        Ok(Some((Manifest { file, path, kind, current }, other_damaged)))
    }

    /// Brings the manifest [`Self::open_existing`] opened up to `newest`, the newest segment
    /// recovery found, or creates one naming it where there was none. Called once that
    /// segment's records are durable: the manifest must never name a segment a power cut could
    /// still take.
    pub fn bring_up_to<S: Storage<File = F>>(
        opened: Option<Manifest<F>>,
        storage: &S,
        dir: &Path,
        newest: SegmentId,
    ) -> Result<Manifest<F>> {
        let Some(manifest) = opened else {
            let (file, current) = create(storage, dir, SlotKind::Manifest, newest)?;
            return Ok(Manifest { file, path: dir.join(MANIFEST_FILE), kind: SlotKind::Manifest, current });
        };
        let mut manifest = manifest.restarted_if_exhausted(storage, dir)?;
        if manifest.current.newest < newest {
            manifest.record(newest).map_err(|(op, e)| WalError::io(op, &manifest.path, e))?;
        }
        Ok(manifest)
    }

    /// This file, created anew (sequence 1, naming the same segment) where its sequence leaves
    /// too little room for the updates to come: every update takes the next sequence, and one
    /// from 2^63 on reads as a damaged slot (FORMAT.md), so a file a few updates short of it
    /// would have its next update unread and the one after overwrite the last intact slot. No
    /// log makes 2^62 updates; a sequence that high was crafted (its checksum recomputed). The
    /// creation is the rename of a whole file, so a crash leaves the old file or the new one,
    /// both naming the same segment.
    fn restarted_if_exhausted<S: Storage<File = F>>(self, storage: &S, dir: &Path) -> Result<Manifest<F>> {
        if self.current.sequence < SEQUENCE_RESTART_FROM {
            return Ok(self);
        }
        tracing::warn!(path = %self.path.display(), sequence = self.current.sequence, "sequence near its limit: the file is created anew");
        let (file, current) = create(storage, dir, self.kind, self.current.newest)?;
        Ok(Manifest { file, path: self.path, kind: self.kind, current })
    }

    /// The manifest file, for the error that names it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `newest` the manifest's durable answer: the slot the previous update did not use,
    /// written and synced. A failure is returned as the failing step; the caller poisons.
    pub fn record(&mut self, newest: SegmentId) -> std::result::Result<(), (IoOp, io::Error)> {
        let next = ManifestSlot { sequence: self.current.sequence + 1, newest };
        let bytes: [u8; SLOT_LEN] = next.encode_as(self.kind);
        self.file.write_at(&bytes, ManifestSlot::offset_of(next.sequence)).map_err(|e| (IoOp::Write, e))?;
        self.file.sync_data().map_err(|e| (IoOp::SyncData, e))?;
        self.current = next;
        Ok(())
    }

    /// The segment id of the current slot (as read or written by this process).
    pub fn current(&self) -> SegmentId {
        self.current.newest
    }
}

/// The log's `FLOOR`, as its owner keeps it between truncations.
#[derive(Debug)]
pub(crate) struct Floor<F> {
    file: Option<Manifest<F>>,
    /// A sync of the file failed: it is never written again (the log is poisoned). A failed
    /// sync is not retried, and an update after one would go to the slot of the last durable
    /// update, which a torn write could then take too.
    broken: bool,
    /// One slot did not read when the file was opened: a power cut tore an update of it.
    damaged_slot: bool,
}

impl<F: StorageFile> Floor<F> {
    /// Opens `FLOOR` in `dir` for writing where there is one; changes nothing.
    pub fn open<S: Storage<File = F>>(storage: &S, dir: &Path) -> Result<Floor<F>> {
        let (file, damaged_slot) = match Manifest::open_slots(storage, dir, SlotKind::Floor)? {
            Some((file, other_damaged)) => (Some(file), other_damaged),
            None => (None, false),
        };
        Ok(Floor { file, broken: false, damaged_slot })
    }

    /// Creates the file anew where its sequence is too near its limit for the updates to come
    /// (see [`Manifest::restarted_if_exhausted`]); the owner's open calls it before it writes
    /// the file. The new file holds one slot: a damaged one is gone with the old file.
    pub fn restart_if_exhausted<S: Storage<File = F>>(&mut self, storage: &S, dir: &Path) -> Result<()> {
        let Some(file) = self.file.take() else { return Ok(()) };
        let before = file.current.sequence;
        let file = file.restarted_if_exhausted(storage, dir)?;
        if file.current.sequence != before {
            self.damaged_slot = false;
        }
        self.file = Some(file);
        Ok(())
    }

    /// Whether one slot did not read when the file was opened. [`Self::rewrite`] mends it.
    pub fn has_damaged_slot(&self) -> bool {
        self.damaged_slot
    }

    /// Whether a failed sync of the file poisoned the log.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Brings the floor down to `floor`. Only for a new log the open found never written (the
    /// manifest names no segment) holding segments below it, which a `WalWriter` imported:
    /// left above them, the floor would have a later open take them for a truncation's
    /// leftovers and remove them.
    pub fn lower_to(&mut self, floor: SegmentId) -> Result<()> {
        let Some(file) = &mut self.file else { return Ok(()) };
        if file.current() <= floor {
            return Ok(());
        }
        file.record(floor).map_err(|(op, e)| WalError::io(op, &file.path, e))
    }

    /// Writes the floor the file says once more, as the next update, and syncs it: the open
    /// does so before it removes segments below it, and over a damaged slot. What it read may be only in the page cache
    /// (a truncation whose sync failed, reopened under the same kernel, where the failed pages
    /// can be left clean, so that a sync alone would write nothing); removing those segments
    /// on its word would leave a durable floor below the oldest segment after a power cut.
    /// The update goes to the other slot, one sector apart, so a crash keeps one of the two.
    pub fn rewrite(&mut self) -> Result<()> {
        let Some(file) = &mut self.file else { return Ok(()) };
        file.record(file.current()).map_err(|(op, e)| WalError::io(op, &file.path, e))?;
        self.damaged_slot = false;
        Ok(())
    }

    /// Makes `floor` the durable truncation floor, unless one at or above it already is: an
    /// update of the file's older slot, or the file's creation where there is none. One
    /// fdatasync (creation: one more, and a directory sync). An `Err` from a sync marks the
    /// file broken; the caller poisons the log.
    pub fn advance<S: Storage<File = F>>(&mut self, storage: &S, dir: &Path, floor: SegmentId) -> Result<()> {
        assert!(!self.broken, "a floor whose sync failed is never written again");
        if self.file.as_ref().is_some_and(|f| f.current() >= floor) {
            return Ok(());
        }
        let result = match &mut self.file {
            Some(file) => file.record(floor).map_err(|(op, e)| WalError::io(op, &file.path, e)),
            None => create(storage, dir, SlotKind::Floor, floor).map(|(file, current)| {
                self.file = Some(Manifest { file, path: dir.join(FLOOR_FILE), kind: SlotKind::Floor, current });
            }),
        };
        match &result {
            Err(WalError::Io { op: IoOp::SyncData | IoOp::SyncDir, .. }) => self.broken = true,
            // No room for a new `FLOOR` (its temporary file, its bytes or its name): the log goes
            // on without one, as a log written before it existed, unchecked at its low end. A full
            // disk is when an open and a truncation, which frees space, matter most; a check
            // must not stop them. An update of an existing file allocates nothing.
            Err(WalError::Io { source, path, .. }) if self.file.is_none() && is_out_of_space(source) => {
                tracing::warn!(path = %path.display(), err = %source, "no room to create FLOOR: the log's low end goes unchecked until it can be");
                return Ok(());
            }
            _ => {}
        }
        result
    }
}
