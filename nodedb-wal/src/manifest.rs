//! The log's `MANIFEST`: the newest segment whose first batch was made durable, so that
//! recovery can tell a log that ends where it should from one whose newest segments were
//! removed (see [`crate::format::manifest`] for the bytes).
//!
//! Updated by the flusher once per new segment, after that segment's first batch is durable and
//! before that batch is acknowledged; written at open when it is missing or behind (a log made
//! before the manifest existed, or a crash between a segment's first batch and the update).

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{IoOp, Result, WalError};
use crate::format::manifest::{MANIFEST_FILE, MANIFEST_LEN, ManifestSlot, SLOT_LEN};
use crate::storage::{OpenMode, Storage, StorageFile};
use crate::types::SegmentId;

/// What the manifest of `dir` says, or `None` where there is none (or no intact slot: a
/// manifest whose creation was cut short, which vouches for nothing).
pub(crate) fn read<S: Storage>(storage: &S, dir: &Path) -> Result<Option<ManifestSlot>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match storage.open(&path, OpenMode { create: false, write: false, direct: false }) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(IoOp::Open, &path, e)),
    };
    let mut bytes = vec![0u8; MANIFEST_LEN];
    let n = file.read_at(&mut bytes, 0).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
    Ok(ManifestSlot::current(&bytes[..n]))
}

/// The open manifest of a log being written.
#[derive(Debug)]
pub(crate) struct Manifest<F> {
    file: F,
    path: PathBuf,
    current: ManifestSlot,
}

impl<F: StorageFile> Manifest<F> {
    /// Opens (or creates) the manifest of `dir` and brings it up to `newest`, the newest segment
    /// recovery found.
    pub fn open<S: Storage<File = F>>(storage: &S, dir: &Path, newest: SegmentId) -> Result<Manifest<F>> {
        let found = read(storage, dir)?;
        let path = dir.join(MANIFEST_FILE);
        let file =
            storage.open(&path, OpenMode { create: true, write: true, direct: false }).map_err(|e| WalError::io(IoOp::Open, &path, e))?;
        let current = found.unwrap_or(ManifestSlot { sequence: 0, newest: SegmentId(0) });
        let mut manifest = Manifest { file, path, current };
        if found.is_none() || current.newest < newest {
            manifest.record(newest).map_err(|(op, e)| WalError::io(op, &manifest.path, e))?;
        }
        if found.is_none() {
            storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
        }
        Ok(manifest)
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
