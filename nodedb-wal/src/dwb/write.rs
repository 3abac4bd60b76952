//! Writing pages ([`DoubleWriteBuffer::write_pages`]): each batch durable in the ring first,
//! then the pages in place with one fdatasync per page file; and what a failure does, which
//! degrades the buffer (its own file failed) or poisons it (a page file failed).

use std::io;

use super::config::{DegradedPolicy, DwbMode};
use super::stats::Counters;
use super::targets::PageWrite;
use super::{Buffer, DoubleWriteBuffer, Inner, batch};
use crate::error::{IoOp, Result, WalError};
use crate::format::dwb::{FileId, SEQ_END};
use crate::storage::{AlignedBuf, Storage, StorageFile};

impl<S: Storage> DoubleWriteBuffer<S> {
    /// Writes pages: through the buffer in batches (each one write and one fdatasync of the
    /// buffer, then the pages in place and one fdatasync per page file), or in place only in
    /// mode `Off` or while degraded with [`DegradedPolicy::WriteUnprotected`].
    ///
    /// Returns Ok once every page is durable in place. Each batch is all-or-nothing across a
    /// crash (after recovery); a call too large for one batch is split, and is not. Every page
    /// is checked (registered file, page length) before anything is written. A failed in-place
    /// write or sync poisons the buffer: later calls fail with [`WalError::Poisoned`] and the
    /// buffer must be reopened, whose recovery repairs what the failure left.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage, WalError};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    /// let config = DwbConfig::new("/db/dwb");
    /// drop(DoubleWriteBuffer::open_with(sim.clone(), config.clone())?); // creates the file
    ///
    /// // The file existed at this open: its images must be applied before new pages land.
    /// let dwb = DoubleWriteBuffer::open_with(sim, config)?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// let page = [3u8; 4096];
    /// let err = dwb.write_pages(&[(FileId(1), 1, &page)]).unwrap_err();
    /// assert!(matches!(err, WalError::DwbNotRecovered { .. }), "{err}");
    /// dwb.recover(|_, page| PageCheck::Intact { version: u64::from(page[0]) })?;
    /// dwb.write_pages(&[(FileId(1), 1, &page)])?;
    /// assert_eq!(dwb.stats().protected_pages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_pages(&self, pages: &[PageWrite<'_>]) -> Result<()> {
        let mut guard = self.lock();
        let written = self.write_pages_locked(&mut guard, pages);
        guard.targets.close();
        written
    }

    fn write_pages_locked(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<()> {
        inner.usable()?;
        if inner.needs_recovery {
            return Err(WalError::DwbNotRecovered { path: self.config.path.clone() });
        }
        inner.targets.prepare(&self.storage, pages)?;
        let mut rest = pages;
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(batch::batch_prefix(rest, self.config.batch_bytes_max));
            self.write_one_batch(inner, batch)?;
            rest = tail;
        }
        Ok(())
    }

    fn write_one_batch(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<()> {
        if self.config.mode != DwbMode::Off && matches!(inner.buffer, Buffer::Ready(_)) {
            match self.buffer_batch(inner, pages) {
                Ok(()) => return self.write_in_place(inner, pages, true),
                Err((op, err)) => self.degrade(inner, op, &err),
            }
        }
        match (self.config.mode, &inner.buffer, self.config.on_degraded) {
            (DwbMode::Off, _, _) | (_, _, DegradedPolicy::WriteUnprotected) => self.write_in_place(inner, pages, false),
            (_, Buffer::Degraded { op, kind }, DegradedPolicy::FailWrites) => Err(self.degraded_error(*op, *kind)),
            (_, _, DegradedPolicy::FailWrites) => unreachable!("a buffer that is not degraded took the batch above"),
        }
    }

    /// Encodes the batch and makes it durable in the ring.
    fn buffer_batch(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>]) -> Result<(), (IoOp, io::Error)> {
        // The ring space this batch may overwrite must hold no image whose page is not yet
        // durable in place: batches are serialised and a failure poisons, so none is left.
        assert!(!inner.unapplied, "a batch is written while the previous one is not applied");
        let block_len = self.config.block_len;
        let scratch = inner.scratch.get_or_insert_with(|| AlignedBuf::zeroed(self.config.batch_bytes_max, block_len));
        let batch_seq = inner.next_seq;
        // A slot numbered past the end of sequences does not decode: its batch could never be
        // applied, and its pages would be acknowledged unprotected.
        if batch_seq + pages.len() as u64 > SEQ_END {
            return Err((IoOp::Write, io::Error::other("double-write buffer sequences are used up")));
        }
        // Sequences are never reused, even by a batch that fails.
        inner.next_seq += pages.len() as u64;
        let Buffer::Ready(ring) = &mut inner.buffer else { unreachable!("checked by the caller") };
        // Recovery formats an existing file before the first batch; a new one is formatted.
        debug_assert!(ring.formatted(), "a batch is written before the file header carries its salt");
        let len = batch::encode_batch(pages, batch_seq, (inner.epoch, ring.salt()), block_len, scratch);
        ring.write_batch(&scratch[..len])?;
        inner.unapplied = true;
        Counters::add(&self.counters.batches, 1);
        Counters::add(&self.counters.buffer_bytes, len as u64);
        Ok(())
    }

    /// Writes the pages in place and syncs each page file once. Failures poison.
    fn write_in_place(&self, inner: &mut Inner<S::File>, pages: &[PageWrite<'_>], protected: bool) -> Result<()> {
        let mut files: Vec<FileId> = Vec::new();
        let mut bytes_total = 0;
        for &(file, page_no, bytes) in pages {
            let offset = inner.targets.offset(file, page_no, bytes.len())?;
            let handle = inner.targets.file(&self.storage, file)?;
            if let Err(e) = handle.write_at(bytes, offset) {
                return Err(inner.poisoned_by(IoOp::Write, inner.targets.path(file), e));
            }
            bytes_total += bytes.len() as u64;
            if !files.contains(&file) {
                files.push(file);
            }
        }
        for file in files {
            if let Err(e) = inner.targets.file(&self.storage, file)?.sync_data() {
                return Err(inner.poisoned_by(IoOp::SyncData, inner.targets.path(file), e));
            }
            Counters::add(&self.counters.target_syncs, 1);
        }
        inner.unapplied = false;
        Counters::add(&self.counters.in_place_bytes, bytes_total);
        let pages_counter = if protected { &self.counters.protected_pages } else { &self.counters.unprotected_pages };
        Counters::add(pages_counter, pages.len() as u64);
        Ok(())
    }

    pub(super) fn degrade(&self, inner: &mut Inner<S::File>, op: IoOp, err: &io::Error) {
        tracing::warn!(path = %self.config.path.display(), ?op, %err, policy = ?self.config.on_degraded, "double-write buffer degraded");
        self.counters.set_degraded(op, err.kind());
        inner.buffer = Buffer::Degraded { op, kind: err.kind() };
    }

    pub(super) fn degraded_error(&self, op: IoOp, kind: io::ErrorKind) -> WalError {
        WalError::DwbDegraded { path: self.config.path.clone(), op, kind }
    }
}
