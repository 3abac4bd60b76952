//! The buffer file: creating it, reading it back for recovery, writing batches into its ring.
//!
//! Block 0 holds the file header; the ring is the `ring_bytes` after it. A batch is written at
//! the write position, or at the ring's start when it would pass the ring's end. Whoever calls
//! [`Ring::write_batch`] guarantees that the batches it overwrites have had their in-place
//! writes made durable.

use std::io;
use std::path::{Path, PathBuf};

use super::config::{DwbConfig, DwbMode};
use super::stats::count_buffer_bytes;
use crate::error::{IoOp, Result, WalError};
use crate::format::dwb::{DWB_VERSION, DWB_VERSION_UNSALTED, FILE_HEADER_LEN, FileHeader, FileHeaderError, SLOT_HEADER_LEN};
use crate::storage::{Advice, AlignedBuf, OpenMode, Storage, StorageFile, create_dir_durably, is_direct_io_refusal, is_listed, too_fine};

/// Zeros are written in chunks of this many bytes when the file is created.
const ZERO_CHUNK: usize = 1 << 20;
/// The largest file any valid geometry makes: a 1 GiB ring after a 1 MiB header block.
const FILE_BYTES_MAX: usize = (1 << 30) + (1 << 20);

/// The open buffer file.
#[derive(Debug)]
pub(super) struct Ring<F> {
    file: F,
    path: PathBuf,
    /// The geometry batches are written with (the configuration's).
    block_len: usize,
    ring_bytes: u64,
    /// Where the next batch goes (a file offset inside the ring).
    write_pos: u64,
    /// What the file header said at open, until recovery rewrites it.
    found: Found,
    /// The salt of the current format: the header's, or drawn for the header recovery writes.
    salt: u32,
}

/// What the file's header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// Version 2 with this build's geometry: nothing to rewrite.
    Current,
    /// Version 2 of another geometry (or file length): its salt is kept.
    OtherGeometry,
    /// Version 1: its slots carry no salt. Rewritten as version 2 under a new salt.
    Unsalted,
    /// Missing, torn or damaged. Slots of version 1 need no header; slots with a salt cannot
    /// be checked without it.
    Damaged,
}

/// What opening the buffer file found.
#[derive(Debug)]
pub(super) enum Opened<F> {
    /// A new, empty file: nothing to recover.
    Fresh(Ring<F>),
    /// A file from an earlier life: recover before writing.
    Existing(Ring<F>),
    /// No file, and the mode does not want one.
    Absent,
    /// The file could not be opened or created.
    Failed(IoOp, io::Error),
}

/// Opens the buffer file, creating and formatting it if the mode wants one and there is none.
/// Configuration errors (O_DIRECT refused, a newer format) are `Err`; I/O failures are
/// [`Opened::Failed`], which leaves the buffer degraded.
pub(super) fn open<S: Storage>(storage: &S, config: &DwbConfig) -> Result<Opened<S::File>> {
    let path = &config.path;
    let direct = config.mode == DwbMode::Direct;
    let existing = OpenMode { create: false, write: config.mode != DwbMode::Off, direct, create_new: false };
    let file = match storage.open(path, existing) {
        Ok(file) => file,
        // A name that is listed but opens to nothing is a symbolic link to nothing: the buffer
        // it names, images and all, is out of reach (a volume not mounted, a file moved away).
        // A new buffer made beside it could never take the name (its rename is refused,
        // leaving a formatted `<path>.creating`), and mode `Off` would read it as no buffer at
        // all, so that `recover` returned Ok and left torn a page whose image is there.
        // Failing the open degrades the buffer instead and `recover` says why; once the link
        // leads somewhere again a reopen recovers through it, as through a link to a file.
        Err(e) if e.kind() == io::ErrorKind::NotFound && is_listed(storage, path) => return Ok(Opened::Failed(IoOp::Open, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && config.mode == DwbMode::Off => {
            remove_leftover(storage, path);
            return Ok(Opened::Absent);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return create(storage, config),
        Err(e) if direct && is_direct_io_refusal(&e) => return Err(WalError::DirectIoUnsupported { path: path.clone() }),
        Err(e) => return Ok(Opened::Failed(IoOp::Open, e)),
    };
    if direct {
        refuse_finer_blocks(&file, config)?;
    }
    // After a failed fdatasync (a header rewrite, a batch) Linux keeps the bytes it could not
    // write in the page cache, clean: read from there, a header that never reached the disk
    // would pass for formatted and later batches would carry a salt the disk's header lacks.
    // Dirty pages (a killed process's writes) stay, and are synced with the next batch.
    file.advise(Advice::DontNeed, 0, 0);
    let mut block = AlignedBuf::zeroed(config.block_len, config.block_len);
    if let Err(e) = file.read_at(&mut block, 0) {
        return Ok(Opened::Failed(IoOp::Read, e));
    }
    let (found, salt) = match FileHeader::decode(&block) {
        Ok(h) if h.version > DWB_VERSION => {
            return Err(WalError::DwbUnsupportedVersion { path: path.clone(), version: h.version, supported: DWB_VERSION });
        }
        Ok(h) if h.version == DWB_VERSION_UNSALTED => (Found::Unsalted, new_salt()),
        Ok(h) => {
            let len = file.len().unwrap_or(0);
            let same = h.block_len as usize == config.block_len
                && h.ring_bytes == config.ring_bytes
                && len == config.block_len as u64 + h.ring_bytes;
            (if same { Found::Current } else { Found::OtherGeometry }, h.salt)
        }
        // A header torn while the file was created (before any batch), or damaged.
        Err(FileHeaderError::Truncated | FileHeaderError::BadMagic | FileHeaderError::Checksum | FileHeaderError::BadGeometry) => {
            (Found::Damaged, new_salt())
        }
    };
    Ok(Opened::Existing(Ring::new(file, config, found, salt)))
}

/// Refuses a `Direct` buffer whose blocks are finer than the file system takes O_DIRECT I/O in
/// (a disk with 4096-byte sectors under 512-byte blocks), where the kernel says so. Every read
/// and write of the file would fail with EINVAL: before this check the buffer opened degraded
/// by a failed write and refused every page, or failed its recovery read. There is no
/// buffered fallback here: `Buffered` is a mode the caller chooses.
fn refuse_finer_blocks<F: StorageFile>(file: &F, config: &DwbConfig) -> Result<()> {
    match too_fine(config.block_len, file.direct_io_alignment()) {
        None => Ok(()),
        Some(required) => Err(WalError::DirectIoAlignment { path: config.path.clone(), configured: config.block_len, required }),
    }
}

/// A new file's salt: random and never 0 (which marks a slot of version 1).
fn new_salt() -> u32 {
    crate::crypto::random::random_u32().max(1)
}

/// Creates and formats the file: under a name of its own first ([`creating_path`]), the whole
/// ring zeroed (so that no later batch sync has to allocate blocks), header block, fdatasync;
/// then renamed to the buffer's path, never over a file there, and the directory fsynced.
///
/// A crash while the file is formatted in place leaves whatever its new blocks held before
/// (stale bytes, on some file systems) where the zeros did not land: such a file cannot be told
/// from someone else's file at the buffer's path, which recovery must never write over or
/// remove. Made under its own name, the buffer's path names a whole buffer or nothing.
fn create<S: Storage>(storage: &S, config: &DwbConfig) -> Result<Opened<S::File>> {
    let path = &config.path;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err((op, e)) = create_dir_durably(storage, dir) {
        return Ok(Opened::Failed(op, e));
    }
    let creating = creating_path(path);
    // A file of that name is one a crash left while formatting it: it is formatted again whole.
    let mode = OpenMode { create: true, write: true, direct: config.mode == DwbMode::Direct, create_new: false };
    let file = match storage.open(&creating, mode) {
        Ok(file) => file,
        Err(e) if mode.direct && is_direct_io_refusal(&e) => return Err(WalError::DirectIoUnsupported { path: path.clone() }),
        Err(e) => return Ok(Opened::Failed(IoOp::Open, e)),
    };
    if mode.direct
        && let Err(refused) = refuse_finer_blocks(&file, config)
    {
        // Created empty a moment ago and never synced: it goes, so that nothing is left
        // behind, as when O_DIRECT is refused at the open.
        drop(file);
        if let Err(err) = storage.remove(&creating) {
            tracing::warn!(path = %creating.display(), %err, "cannot remove the empty file of a refused double-write buffer");
        }
        return Err(refused);
    }
    let mut ring = Ring::new(file, config, Found::Damaged, new_salt());
    if let Err((op, e)) = ring.format(true) {
        return Ok(Opened::Failed(op, e));
    }
    let renamed = match storage.rename_no_replace(&creating, path) {
        // Where the file system cannot refuse to replace, the path was free a moment ago.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => storage.rename(&creating, path),
        other => other,
    };
    if let Err(e) = renamed {
        return Ok(Opened::Failed(IoOp::Rename, e));
    }
    if let Err(e) = storage.sync_dir(dir) {
        return Ok(Opened::Failed(IoOp::SyncDir, e));
    }
    Ok(Opened::Fresh(ring))
}

/// In mode `Off`, removes the `<path>.creating` a crash left while a buffer file was made: no
/// batch in it counts (batches go only into a file under its own name, made durable), the
/// other modes would format it again whole (the name is what makes it ours, as for them), and
/// this one never uses it, so it would hold up to a ring's space for good. Best effort, and
/// never reported: a failure leaves it, or its removal not durable, for the next open.
fn remove_leftover<S: Storage>(storage: &S, path: &Path) {
    let creating = creating_path(path);
    match storage.remove(&creating) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            tracing::warn!(path = %creating.display(), %err, "cannot remove a double-write buffer file left half made");
            return;
        }
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err(err) = storage.sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), %err, "the removal of a double-write buffer file left half made may not be durable");
    }
}

/// The name a new buffer file is formatted under before it is renamed to `path`.
fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

impl<F: StorageFile> Ring<F> {
    fn new(file: F, config: &DwbConfig, found: Found, salt: u32) -> Ring<F> {
        let block_len = config.block_len;
        Ring { file, path: config.path.clone(), block_len, ring_bytes: config.ring_bytes, write_pos: block_len as u64, found, salt }
    }

    /// The buffer file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn ring_start(&self) -> u64 {
        self.block_len as u64
    }

    fn ring_end(&self) -> u64 {
        self.ring_start() + self.ring_bytes
    }

    /// Writes the header block for the configured geometry and the salt and sets the file's
    /// length, zeroing first the whole ring of a `fresh` file, or the part of the ring past an
    /// existing file's end, then syncs. The header fits in one sector, which the media write
    /// whole or not at all.
    ///
    /// Ring space is written, not only claimed by the file's length: a hole there is allocated
    /// by the first batch to reach it, and on a full disk that batch, not this format, would
    /// fail, degrading the buffer in the middle of page writes instead of at its recovery.
    pub(super) fn format(&mut self, fresh: bool) -> Result<(), (IoOp, io::Error)> {
        let mut block = AlignedBuf::zeroed(self.block_len, self.block_len);
        let header = FileHeader { version: DWB_VERSION, block_len: self.block_len as u32, ring_bytes: self.ring_bytes, salt: self.salt };
        block[..FILE_HEADER_LEN].copy_from_slice(&header.encode());
        let old_end = if fresh { self.ring_start() } else { self.file.len().map_err(|e| (IoOp::Stat, e))?.max(self.ring_start()) };
        // From the block holding the old end (a file of another geometry may end inside one),
        // whole blocks as O_DIRECT needs. Recovery has applied every image: none is needed.
        self.zero_from(old_end - old_end % self.block_len as u64)?;
        self.write(&block, 0).map_err(|e| (IoOp::Write, e))?;
        self.file.set_len(self.ring_end()).map_err(|e| (IoOp::SetLen, e))?;
        self.file.sync_data().map_err(|e| (IoOp::SyncData, e))?;
        self.found = Found::Current;
        Ok(())
    }

    /// Writes zeros from `from` (a block boundary) to the ring's end.
    fn zero_from(&self, from: u64) -> Result<(), (IoOp, io::Error)> {
        let zeros = AlignedBuf::zeroed(ZERO_CHUNK.min(self.ring_bytes as usize), self.block_len);
        let mut at = from;
        while at < self.ring_end() {
            let len = zeros.len().min((self.ring_end() - at) as usize);
            self.write(&zeros[..len], at).map_err(|e| (IoOp::Write, e))?;
            at += len as u64;
        }
        Ok(())
    }

    /// Zeros the first slot header of each batch starting at `starts` (file offsets in `image`,
    /// the file as [`Self::read_all`] read it), rewriting the whole block around it from
    /// `image`, then syncs. Such a batch no longer decodes: none of its slots is a batch start.
    pub(super) fn unmake_batches(&self, image: &mut [u8], starts: &[usize]) -> Result<(), (IoOp, io::Error)> {
        for &start in starts {
            image[start..start + SLOT_HEADER_LEN].fill(0);
            let block = start - start % self.block_len;
            self.write(&image[block..block + self.block_len], block as u64).map_err(|e| (IoOp::Write, e))?;
        }
        self.file.sync_data().map_err(|e| (IoOp::SyncData, e))
    }

    /// Whether recovery must rewrite the header (a torn creation, a new geometry, version 1).
    pub(super) fn formatted(&self) -> bool {
        self.found == Found::Current
    }

    /// The salt the slots recovery may apply carry: the header's, or none in a file of version
    /// 1 or with a damaged header (where only slots of version 1 can be checked).
    pub(super) fn scan_salt(&self) -> u32 {
        match self.found {
            Found::Current | Found::OtherGeometry => self.salt,
            Found::Unsalted | Found::Damaged => 0,
        }
    }

    /// Whether the header was unreadable at open: slots with a salt found then cannot be told
    /// from slots spelled out inside page images.
    pub(super) fn header_damaged(&self) -> bool {
        self.found == Found::Damaged
    }

    /// Whether recovery rewrites the header under a new salt (a version 1 file, a damaged
    /// header): no slot found now counts once it has.
    pub(super) fn salt_changes(&self) -> bool {
        matches!(self.found, Found::Unsalted | Found::Damaged)
    }

    /// The salt new batches carry. Only valid once the file is [`Self::formatted`].
    pub(super) fn salt(&self) -> u32 {
        self.salt
    }

    fn write(&self, bytes: &[u8], at: u64) -> io::Result<()> {
        self.file.write_at(bytes, at)?;
        count_buffer_bytes(bytes.len() as u64);
        Ok(())
    }

    /// The whole file and the bytes read, for the scanner (slot offsets in it are file
    /// offsets). At most what the largest geometry this build writes could hold.
    pub(super) fn read_all(&self) -> io::Result<(AlignedBuf, usize)> {
        let len = usize::try_from(self.file.len()?).unwrap_or(usize::MAX).min(FILE_BYTES_MAX);
        let mut image = AlignedBuf::zeroed(len, self.block_len);
        // One call: `read_at` returns short only at the end of the file.
        let n = self.file.read_at(&mut image, 0)?;
        Ok((image, n.min(len)))
    }

    /// Puts the write position after the batch that ends at `end` (a file offset), or at the
    /// ring's start when there is none or no room is left after it.
    pub(super) fn resume_after(&mut self, end: Option<u64>) {
        let pos = end.map_or(self.ring_start(), |e| e.next_multiple_of(self.block_len as u64).max(self.ring_start()));
        self.write_pos = if pos < self.ring_end() { pos } else { self.ring_start() };
    }

    /// Writes one batch (a multiple of the block length) and syncs it. Returns its offset.
    pub(super) fn write_batch(&mut self, batch: &[u8]) -> Result<u64, (IoOp, io::Error)> {
        assert!(batch.len().is_multiple_of(self.block_len) && batch.len() as u64 <= self.ring_bytes, "batch of {} bytes", batch.len());
        let len = batch.len() as u64;
        let pos = if self.write_pos + len <= self.ring_end() { self.write_pos } else { self.ring_start() };
        let result = self.file.write_and_sync(batch, pos);
        // A failed sync still wrote the bytes: they count.
        if !matches!(result, Err((IoOp::Write, _))) {
            count_buffer_bytes(len);
        }
        result?;
        self.write_pos = pos + len;
        Ok(pos)
    }
}
