//! What a buffer does before it accepts pages: [`DoubleWriteBuffer::recover`] reads the ring,
//! refuses a damaged header whose batches need its salt or a file made by something else,
//! has `recover::repair` put every page back, and then removes the file (mode `Off`) or makes
//! its name durable and its header current.
//!
//! The decision per page is in `recover.rs`; this file is the buffer's side of it: its locks,
//! its counters, and what a failure does to its state.

use std::path::Path;

use super::config::DwbMode;
use super::recover::{DwbRecovery, PageCheck};
use super::stats::Counters;
use super::{Buffer, DoubleWriteBuffer, Inner, recover, scan};
use crate::error::{IoOp, Result, WalError};
use crate::format::dwb::{FILE_MAGIC, FILE_MAGIC_RANGE, FileId};
use crate::storage::Storage;

impl<S: Storage> DoubleWriteBuffer<S> {
    /// Checks every page that has an image in the buffer with `validator` and restores torn
    /// and stale ones from their newest image (the rules are in [`decide`](super::decide)), then syncs every
    /// page file it checked. Only after it returns Ok are new pages accepted, if the buffer file
    /// existed at open. In mode `Off` the file is removed afterwards.
    ///
    /// # Examples
    ///
    /// A page torn in place is put back from its buffered image:
    ///
    /// ```
    /// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck, SimStorage};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/db"))?;
    /// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
    ///
    /// // A toy page format: whole when every byte equals the first, which is its version.
    /// let check = |_: FileId, page: &[u8]| {
    ///     if page.iter().all(|&b| b == page[0]) { PageCheck::Intact { version: u64::from(page[0]) } } else { PageCheck::Torn }
    /// };
    /// let dwb = DoubleWriteBuffer::open_with(sim.clone(), DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), "/db/pages", 4096)?;
    /// dwb.recover(check)?;
    /// dwb.write_pages(&[(FileId(1), 0, &[7u8; 4096])])?;
    /// drop(dwb);
    ///
    /// // Tear page 0 as a crash in the middle of its in-place write would.
    /// let pages = Path::new("/db/pages");
    /// let mut bytes = sim.read_file(pages).expect("page file");
    /// bytes[2048..4096].fill(0xEE);
    /// sim.write_file(pages, &bytes);
    ///
    /// let dwb = DoubleWriteBuffer::open_with(sim.clone(), DwbConfig::new("/db/dwb"))?;
    /// dwb.register_file(FileId(1), pages, 4096)?;
    /// let report = dwb.recover(check)?;
    /// assert_eq!(report.pages_restored, [(FileId(1), 0)]);
    /// assert_eq!(sim.read_file(pages).expect("page file")[..4096], [7u8; 4096]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recover(&self, validator: impl Fn(FileId, &[u8]) -> PageCheck) -> Result<DwbRecovery> {
        let mut guard = self.lock();
        let recovered = self.recover_locked(&mut guard, &validator);
        guard.targets.close();
        recovered
    }

    fn recover_locked(&self, inner: &mut Inner<S::File>, validator: &dyn Fn(FileId, &[u8]) -> PageCheck) -> Result<DwbRecovery> {
        inner.usable()?;
        let ring = match &mut inner.buffer {
            Buffer::Degraded { op, kind } => return Err(self.degraded_error(*op, *kind)),
            Buffer::Absent => return Ok(DwbRecovery::default()),
            Buffer::Ready(_) if !inner.needs_recovery => return Ok(DwbRecovery::default()),
            Buffer::Ready(ring) => ring,
        };
        let (image, len) = ring.read_all().map_err(|e| WalError::io(IoOp::Read, &self.config.path, e))?;
        let scan = scan::scan_ring(&image[..len], ring.scan_salt());
        if ring.header_damaged() && scan.other_salt > 0 {
            // Batches whose salt is lost with the header: applying them could write a slot
            // spelled out in a page image; ignoring them could leave a torn page torn.
            return Err(WalError::DwbHeaderDamaged { path: self.config.path.clone(), salted_batches: scan.other_salt });
        }
        if ring.header_damaged() && made_elsewhere(&image[..len], &scan) {
            // Reformatting it (or removing it, in mode `Off`) would destroy someone's file.
            return Err(WalError::DwbForeignFile { path: self.config.path.clone() });
        }
        let report = match recover::repair(&self.storage, &mut inner.targets, &image[..len], &scan, validator) {
            Ok(report) => report,
            // After a failed write or sync the page files' state is unknown: no retry. A file
            // that cannot be opened or read can be fixed and recovery run again.
            Err(WalError::Io { op: op @ (IoOp::Write | IoOp::SyncData), path, source }) => return Err(inner.poisoned_by(op, path, source)),
            Err(other) => return Err(other),
        };
        Counters::add(&self.counters.pages_restored, report.pages_restored.len() as u64);
        // Every image is applied and durable in place: the ring may be reused. New slots are
        // numbered above every slot that can still count; where the header is rewritten under
        // a new salt, none can, and numbering on from slots of version 1 would carry a number a
        // page image spelled out (up to the end of sequences) into the new salt's slots.
        inner.next_seq = if ring.salt_changes() { 1 } else { scan.seq_max + 1 };
        if !report.pages_restored.is_empty() {
            tracing::warn!(pages = report.pages_restored.len(), "double-write buffer restored torn or stale pages");
        }
        self.finish_recovery(inner, scan.newest().map(|b| b.end as u64))?;
        Ok(report)
    }

    /// After a successful repair: removes the file in mode `Off`, else makes its name durable,
    /// rewrites its header if needed and resumes writing after the newest batch.
    fn finish_recovery(&self, inner: &mut Inner<S::File>, newest_end: Option<u64>) -> Result<()> {
        let Buffer::Ready(ring) = &mut inner.buffer else { unreachable!("recovery runs on an open buffer") };
        let path = ring.path().to_path_buf();
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        if self.config.mode == DwbMode::Off {
            match self.storage.remove(&path) {
                Ok(()) => {}
                // Removed by someone else: its removal is made durable below all the same.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(IoOp::Remove, &path, e)),
            }
            // After a failed directory fsync whether the removal is durable is unknown, and a
            // second fsync may succeed without making it so: the buffer is poisoned, never
            // synced again and never reports the removal done.
            if let Err(e) = self.storage.sync_dir(&dir) {
                return Err(inner.poisoned_by(IoOp::SyncDir, dir, e));
            }
            inner.buffer = Buffer::Absent;
        } else if let Err(e) = self.storage.sync_dir(&dir) {
            // The file's name may not be durable yet (the directory fsync of its creation
            // failed, or its process died first, under this kernel): batches written into it
            // could be lost with its name, the next open formatting them away.
            self.degrade(inner, IoOp::SyncDir, &e);
        } else if !ring.formatted()
            && let Err((op, err)) = ring.format(false)
        {
            self.degrade(inner, op, &err);
        }
        if let Buffer::Ready(ring) = &mut inner.buffer {
            ring.resume_after(newest_end);
        }
        inner.needs_recovery = false;
        Ok(())
    }
}

/// Whether a file whose header did not decode is no buffer at all: no magic where the header
/// keeps it, no slot of any batch, and bytes that are not all zero. A crash while the buffer
/// file is made leaves zeros and at most a whole header (it is one sector, written after the
/// zeros), and media damage to a buffer's header leaves its magic or its slots; a file made
/// by something else (the path mistyped, or shared) leaves neither, and must not be
/// reformatted or removed.
fn made_elsewhere(image: &[u8], scan: &scan::RingScan) -> bool {
    let magic = image.get(FILE_MAGIC_RANGE) == Some(&FILE_MAGIC[..]);
    let slots = !scan.batches.is_empty() || scan.incomplete_batches > 0 || scan.other_salt > 0 || scan.seq_max > 0;
    !magic && !slots && image.iter().any(|&b| b != 0)
}
