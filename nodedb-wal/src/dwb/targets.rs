//! The page files the buffer writes into, by [`FileId`]: path, page length, open handle.
//!
//! Files are opened on first use and never created: the storage engine creates its files (and
//! makes their directory entries durable); the buffer only writes pages into them, so recovery
//! can never invent a file. They are closed again at the end of each call ([`Targets::close`]):
//! an engine drops and replaces files (a dropped collection, a compaction), and a handle kept
//! for the buffer's life held one descriptor per file ever written, and the space of every
//! removed one, until the buffer was closed. An open costs microseconds; each call makes at
//! least two fdatasyncs.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{IoOp, Result, WalError};
use crate::format::dwb::FileId;
use crate::storage::{OpenMode, Storage, StorageFile};

/// A page to write: its file, its number, its bytes (exactly the file's page length).
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::dwb::PageWrite;
///
/// let root = [0u8; 4096];
/// let leaf = [1u8; 4096];
/// // Page 0 and page 7 of the same file, written as one batch by `write_pages`.
/// let pages: Vec<PageWrite<'_>> = vec![(FileId(1), 0, &root), (FileId(1), 7, &leaf)];
/// assert_eq!(pages[1].1 * 4096, 28672, "page 7 lives at byte 7 * page_len");
/// ```
pub type PageWrite<'a> = (FileId, u64, &'a [u8]);

#[derive(Debug)]
struct Target<F> {
    path: PathBuf,
    page_len: usize,
    file: Option<F>,
}

/// The registered page files.
#[derive(Debug)]
pub(super) struct Targets<F> {
    map: HashMap<FileId, Target<F>>,
    /// The files open now, to close without a walk over every registration.
    open: Vec<FileId>,
}

impl<F: StorageFile> Targets<F> {
    pub(super) fn new() -> Targets<F> {
        Targets { map: HashMap::new(), open: Vec::new() }
    }

    /// Closes every page file opened since the last call: at the end of each call of the
    /// buffer, whose writes are durable (or have poisoned it) by then.
    pub(super) fn close(&mut self) {
        for id in self.open.drain(..) {
            if let Some(target) = self.map.get_mut(&id) {
                target.file = None;
            }
        }
    }

    /// Registers a file. Registering it again with the same path and page length is a no-op.
    pub(super) fn register(&mut self, id: FileId, path: PathBuf, page_len: usize) -> Result<()> {
        match self.map.get(&id) {
            Some(t) if t.path == path && t.page_len == page_len => Ok(()),
            Some(_) => Err(WalError::InvalidConfig { reason: "dwb file id registered again with another path or page length" }),
            None => {
                self.map.insert(id, Target { path, page_len, file: None });
                Ok(())
            }
        }
    }

    /// Drops a registration (its handle is closed at the end of the call, if open).
    pub(super) fn forget(&mut self, id: FileId) -> Result<()> {
        self.map.remove(&id).map(drop).ok_or(WalError::DwbUnknownFile { file: id })
    }

    /// Whether `id` is registered.
    pub(super) fn contains(&self, id: FileId) -> bool {
        self.map.contains_key(&id)
    }

    /// The page length of a registered file.
    pub(super) fn page_len(&self, id: FileId) -> Option<usize> {
        self.map.get(&id).map(|t| t.page_len)
    }

    /// The byte offset of a page, checked against the file's page length.
    pub(super) fn offset(&self, id: FileId, page_no: u64, len: usize) -> Result<u64> {
        let expected = self.page_len(id).ok_or(WalError::DwbUnknownFile { file: id })?;
        if len != expected {
            return Err(WalError::DwbPageLen { file: id, page_no, len, expected });
        }
        // A page must end within a file offset (`off_t`, signed 64 bits): one beyond could
        // never be written in place, and after its image was made durable every recovery
        // would try again and fail (found by an adversarial review).
        page_no
            .checked_mul(expected as u64)
            .filter(|&offset| offset.checked_add(expected as u64).is_some_and(|end| end <= i64::MAX as u64))
            .ok_or(WalError::InvalidConfig { reason: "dwb page number puts the page past the largest file offset" })
    }

    /// Checks every page of a write and opens its files, before anything is written.
    pub(super) fn prepare<S: Storage<File = F>>(&mut self, storage: &S, pages: &[PageWrite<'_>]) -> Result<()> {
        for &(id, page_no, bytes) in pages {
            self.offset(id, page_no, bytes.len())?;
            self.file(storage, id)?;
        }
        Ok(())
    }

    /// The open file of a registered id, opened now if it is not yet.
    pub(super) fn file<S: Storage<File = F>>(&mut self, storage: &S, id: FileId) -> Result<&F> {
        let target = self.map.get_mut(&id).ok_or(WalError::DwbUnknownFile { file: id })?;
        if target.file.is_none() {
            let mode = OpenMode { create: false, write: true, direct: false, create_new: false };
            let file = storage.open(&target.path, mode).map_err(|e| WalError::io(IoOp::Open, &target.path, e))?;
            target.file = Some(file);
            self.open.push(id);
        }
        Ok(target.file.as_ref().expect("opened above"))
    }

    /// The path of a registered id, for error reports.
    pub(super) fn path(&self, id: FileId) -> PathBuf {
        self.map.get(&id).map(|t| t.path.clone()).unwrap_or_default()
    }
}
