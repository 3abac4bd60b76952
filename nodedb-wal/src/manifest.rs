//! The log's `MANIFEST`: the newest segment whose first batch was made durable, so that
//! recovery can tell a log that ends where it should from one whose newest segments were
//! removed (see [`crate::format::manifest`] for the bytes).
//!
//! Updated by the flusher once per new segment, after that segment's first batch is durable and
//! before that batch is acknowledged; written at open when it is missing or behind (a log made
//! before the manifest existed, or a crash between a segment's first batch and the update).
//! It is created whole under a temporary name and renamed into place, so a `MANIFEST` without
//! an intact slot is damage ([`WalError::ManifestDamaged`]), never a crash's doing.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{IoOp, Result, WalError};
use crate::format::manifest::{MANIFEST_FILE, MANIFEST_LEN, MANIFEST_TEMP_FILE, ManifestSlot, SLOT_LEN};
use crate::storage::{OpenMode, Storage, StorageFile};
use crate::types::SegmentId;

/// What the manifest of `dir` says, or `None` where there is none (a log made before the
/// manifest existed). A manifest without an intact slot is an error: it is created whole and
/// updated one slot at a time (see [`create`]), so no crash leaves it so.
pub(crate) fn read<S: Storage>(storage: &S, dir: &Path) -> Result<Option<ManifestSlot>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match storage.open(&path, OpenMode { create: false, write: false, direct: false, create_new: false }) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(IoOp::Open, &path, e)),
    };
    let mut bytes = vec![0u8; MANIFEST_LEN];
    let n = file.read_at(&mut bytes, 0).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
    match ManifestSlot::current(&bytes[..n]) {
        Some(slot) => Ok(Some(slot)),
        None => Err(WalError::ManifestDamaged { path }),
    }
}

/// Creates the manifest of `dir` naming `newest`: its first slot is written and synced under a
/// temporary name, which is then renamed to `MANIFEST` and the directory synced. So `MANIFEST`
/// never exists without an intact slot, neither after a crash nor for a reader beside the
/// writer, and one without is known to be damaged. Returns the open file and what it says.
fn create<S: Storage>(storage: &S, dir: &Path, newest: SegmentId) -> Result<(S::File, ManifestSlot)> {
    let temp = dir.join(MANIFEST_TEMP_FILE);
    let file = storage
        .open(&temp, OpenMode { create: true, write: true, direct: false, create_new: false })
        .map_err(|e| WalError::io(IoOp::Open, &temp, e))?;
    // Emptied first: one left by a creation that a crash cut short vouches for nothing.
    file.set_len(0).map_err(|e| WalError::io(IoOp::SetLen, &temp, e))?;
    let first = ManifestSlot { sequence: 1, newest };
    file.write_at(&first.encode(), ManifestSlot::offset_of(first.sequence)).map_err(|e| WalError::io(IoOp::Write, &temp, e))?;
    file.sync_data().map_err(|e| WalError::io(IoOp::SyncData, &temp, e))?;
    let path = dir.join(MANIFEST_FILE);
    storage.rename(&temp, &path).map_err(|e| WalError::io(IoOp::Rename, &temp, e))?;
    storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    Ok((file, first))
}

/// The open manifest of a log being written.
#[derive(Debug)]
pub(crate) struct Manifest<F> {
    file: F,
    path: PathBuf,
    current: ManifestSlot,
}

impl<F: StorageFile> Manifest<F> {
    /// Opens the manifest of `dir` for writing, where there is one, and changes nothing. Done
    /// before recovery writes anything (the seal of the newest segment, its index): a manifest
    /// the log may not write (its permissions, an immutable flag) then fails the open before
    /// anything on disk has changed, not after.
    pub fn open_existing<S: Storage<File = F>>(storage: &S, dir: &Path) -> Result<Option<Manifest<F>>> {
        let path = dir.join(MANIFEST_FILE);
        let Some(current) = read(storage, dir)? else { return Ok(None) };
        let file = storage
            .open(&path, OpenMode { create: false, write: true, direct: false, create_new: false })
            .map_err(|e| WalError::io(IoOp::Open, &path, e))?;
        Ok(Some(Manifest { file, path, current }))
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
        let Some(mut manifest) = opened else {
            let (file, current) = create(storage, dir, newest)?;
            return Ok(Manifest { file, path: dir.join(MANIFEST_FILE), current });
        };
        if manifest.current.newest < newest {
            manifest.record(newest).map_err(|(op, e)| WalError::io(op, &manifest.path, e))?;
        }
        Ok(manifest)
    }

    /// The manifest file, for the error that names it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `newest` the manifest's durable answer: the slot the previous update did not use,
    /// written and synced. A failure is returned as the failing step; the caller poisons.
    pub fn record(&mut self, newest: SegmentId) -> std::result::Result<(), (IoOp, io::Error)> {
        let next = ManifestSlot { sequence: self.current.sequence + 1, newest };
        let bytes: [u8; SLOT_LEN] = next.encode();
        self.file.write_at(&bytes, ManifestSlot::offset_of(next.sequence)).map_err(|e| (IoOp::Write, e))?;
        self.file.sync_data().map_err(|e| (IoOp::SyncData, e))?;
        self.current = next;
        Ok(())
    }
}
