//! Recovery: every page with an image in a complete batch is checked in place and, when torn
//! or stale, restored from its newest image (the one with the highest sequence), by the table
//! of [`decide`]. Every page file that was checked is synced before recovery reports success,
//! restored or not: what recovery saw must be durable before the ring space holding its images
//! can be reused.

use std::collections::{BTreeMap, BTreeSet};

use super::scan::{FoundSlot, RingScan};
use super::targets::Targets;
use crate::error::{IoOp, Result, WalError};
use crate::format::dwb::FileId;
use crate::storage::{Advice, Storage, StorageFile};

/// The caller's verdict on a page's bytes.
///
/// The buffer knows nothing of the engine's page format: the validator given to
/// [`super::DoubleWriteBuffer::recover`] checks a page the engine's way (a checksum, a header
/// that matches a trailer) and reads its version.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{FileId, PageCheck};
///
/// // A page format that repeats its version in its first and last eight bytes: a page torn
/// // between the two disagrees with itself.
/// fn check(_: FileId, page: &[u8]) -> PageCheck {
///     let head = u64::from_le_bytes(page[..8].try_into().expect("8 bytes"));
///     let tail = u64::from_le_bytes(page[page.len() - 8..].try_into().expect("8 bytes"));
///     if head == tail { PageCheck::Intact { version: head } } else { PageCheck::Torn }
/// }
///
/// let mut page = [0u8; 4096];
/// page[..8].copy_from_slice(&42u64.to_le_bytes());
/// page[4088..].copy_from_slice(&42u64.to_le_bytes());
/// assert_eq!(check(FileId(1), &page), PageCheck::Intact { version: 42 });
/// page[..8].copy_from_slice(&43u64.to_le_bytes()); // only the first sector of a newer write landed
/// assert_eq!(check(FileId(1), &page), PageCheck::Torn);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    /// The page is whole (its own checksum holds); `version` orders its writes (an LSN).
    Intact {
        /// The page's version; a later write of the page has a higher one.
        version: u64,
    },
    /// The page is torn or garbage.
    Torn,
}

/// What recovery does with one page: what [`decide`] returns.
///
/// # Examples
///
/// ```
/// use nodedb_wal::dwb::{PageAction, decide};
/// use nodedb_wal::PageCheck;
///
/// assert_eq!(decide(PageCheck::Torn, PageCheck::Torn), PageAction::Unrepairable);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAction {
    /// Leave the page in place as it is.
    Keep,
    /// Write the buffered image over it.
    Restore,
    /// Torn, with no usable image: report it.
    Unrepairable,
}

/// What recovery does with a page, from the caller's validator's verdicts on the page found in
/// place and on its newest buffered image:
///
/// | in place            | newest image          | action       | why                                                 |
/// |---------------------|-----------------------|--------------|-----------------------------------------------------|
/// | intact, version ≥ v | intact, version v     | keep         | the in-place write landed, or a newer page is there |
/// | intact, version < v | intact, version v     | restore      | stale: the in-place write never landed              |
/// | torn (or short)     | intact                | restore      | the in-place write was torn                         |
/// | intact              | rejected by validator | keep         | nothing better to put there                         |
/// | torn (or short)     | rejected by validator | unrepairable | reported as `DwbUnrepairable`, left untouched       |
///
/// So recovery never writes a page it has no image for, and never replaces an intact page
/// whose version is at least the image's.
///
/// # Examples
///
/// ```
/// use nodedb_wal::dwb::{PageAction, decide};
/// use nodedb_wal::PageCheck;
///
/// let v = |version| PageCheck::Intact { version };
/// assert_eq!(decide(v(9), v(9)), PageAction::Keep, "the in-place write landed");
/// assert_eq!(decide(v(8), v(9)), PageAction::Restore, "the in-place write never landed");
/// assert_eq!(decide(PageCheck::Torn, v(9)), PageAction::Restore, "the in-place write was torn");
/// assert_eq!(decide(v(8), PageCheck::Torn), PageAction::Keep, "nothing better to put there");
/// assert_eq!(decide(PageCheck::Torn, PageCheck::Torn), PageAction::Unrepairable);
/// ```
#[must_use]
pub fn decide(in_place: PageCheck, image: PageCheck) -> PageAction {
    match (in_place, image) {
        (PageCheck::Intact { version: here }, PageCheck::Intact { version: buffered }) if here >= buffered => PageAction::Keep,
        (PageCheck::Intact { .. }, PageCheck::Intact { .. }) => PageAction::Restore,
        (PageCheck::Torn, PageCheck::Intact { .. }) => PageAction::Restore,
        (PageCheck::Intact { .. }, PageCheck::Torn) => PageAction::Keep,
        (PageCheck::Torn, PageCheck::Torn) => PageAction::Unrepairable,
    }
}

/// What recovery found and did. [`super::DoubleWriteBuffer::recover`] shows a page being
/// restored.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbRecovery, FileId, PageCheck, SimStorage};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let sim = SimStorage::new(1, FaultConfig::default());
/// # sim.create_dir_all(Path::new("/db"))?;
/// # sim.open(Path::new("/db/pages"), OpenMode { create: true, write: true, direct: false, create_new: false })?.set_len(2 * 4096)?;
///
/// let config = DwbConfig::new("/db/dwb");
/// let dwb = DoubleWriteBuffer::open_with(sim.clone(), config.clone())?;
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// dwb.register_file(FileId(2), "/db/pages", 4096)?;
/// assert_eq!(dwb.recover(|_, _| PageCheck::Torn)?, DwbRecovery::default(), "a new buffer holds nothing");
/// dwb.write_pages(&[(FileId(1), 0, &[1u8; 4096]), (FileId(2), 1, &[2u8; 4096])])?;
/// drop(dwb);
///
/// // After a restart, file 2 (dropped meanwhile, say) is not registered.
/// let dwb = DoubleWriteBuffer::open_with(sim, config)?;
/// dwb.register_file(FileId(1), "/db/pages", 4096)?;
/// let report = dwb.recover(|_, page| PageCheck::Intact { version: u64::from(page[0]) })?;
/// assert_eq!((report.batches, report.incomplete_batches), (1, 0));
/// assert_eq!((report.pages_checked, report.pages_kept), (1, 1));
/// assert!(report.pages_restored.is_empty());
/// assert_eq!(report.unregistered_files, [FileId(2)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DwbRecovery {
    /// Complete batches in the buffer.
    pub batches: usize,
    /// Batches whose start was intact but not the rest (torn or partly overwritten): ignored.
    pub incomplete_batches: usize,
    /// Distinct pages with an image in a complete batch of a registered file.
    pub pages_checked: usize,
    /// Pages left as they were.
    pub pages_kept: usize,
    /// Pages written back from the buffer, as (file, page number).
    pub pages_restored: Vec<(FileId, u64)>,
    /// Images the validator rejected while the page in place was intact (kept).
    pub images_rejected: usize,
    /// Files that have images in the buffer but were not registered: their pages were not
    /// touched (a dropped file needs no repair; a forgotten registration is the caller's bug).
    pub unregistered_files: Vec<FileId>,
}

/// The newest image of each page: the one with the highest sequence.
fn newest_images(scan: &RingScan) -> BTreeMap<(FileId, u64), FoundSlot> {
    let mut newest: BTreeMap<(FileId, u64), FoundSlot> = BTreeMap::new();
    for slot in scan.batches.iter().flat_map(|b| &b.slots) {
        let key = (slot.header.file, slot.header.page_no);
        match newest.get(&key) {
            Some(kept) if kept.header.seq >= slot.header.seq => {}
            _ => {
                newest.insert(key, *slot);
            }
        }
    }
    newest
}

/// Checks and repairs every page that has an image in `scan` (found in `image`), then syncs
/// the files it checked. An image whose length or page number its registration refuses fails
/// it before anything is written; other errors than [`WalError::Io`] leave every file as it
/// was or holding valid images only.
pub(super) fn repair<S: Storage>(
    storage: &S,
    targets: &mut Targets<S::File>,
    image: &[u8],
    scan: &RingScan,
    validator: &dyn Fn(FileId, &[u8]) -> PageCheck,
) -> Result<DwbRecovery> {
    let mut report = DwbRecovery { batches: scan.batches.len(), incomplete_batches: scan.incomplete_batches, ..DwbRecovery::default() };
    let mut checked = BTreeSet::new();
    let mut unregistered = BTreeSet::new();
    let newest = newest_images(scan);
    // Every image against its file's registration first: a file registered with another page
    // length (or a page past the largest offset) is refused before any page is written, and
    // the validator is only ever handed pages of the length the caller registered.
    for (&(file, page_no), slot) in &newest {
        if targets.page_len(file).is_some() {
            targets.offset(file, page_no, slot.header.page_len as usize)?;
        }
    }
    for ((file, page_no), slot) in newest {
        if targets.page_len(file).is_none() {
            unregistered.insert(file);
            continue;
        }
        let bytes = &image[slot.image_range()];
        if checked.insert(file) {
            drop_clean_pages(storage, targets, file)?;
        }
        report.pages_checked += 1;
        let buffered = validator(file, bytes);
        match repair_page(storage, targets, file, page_no, bytes, buffered, validator)? {
            PageAction::Keep if buffered == PageCheck::Torn => report.images_rejected += 1,
            PageAction::Keep => report.pages_kept += 1,
            PageAction::Restore => report.pages_restored.push((file, page_no)),
            PageAction::Unrepairable => return Err(WalError::DwbUnrepairable { file, page_no, seq: slot.header.seq }),
        }
    }
    for file in checked {
        let path = targets.path(file);
        targets.file(storage, file)?.sync_data().map_err(|e| WalError::io(IoOp::SyncData, path, e))?;
    }
    report.unregistered_files = unregistered.into_iter().collect();
    Ok(report)
}

/// Drops the clean pages of `file` from the page cache, before recovery reads any of its pages
/// in place. A failed fdatasync of the page file (before a reopen under the same kernel) leaves
/// the pages it could not write in the page cache, clean: read from there, a page looks written
/// though the disk holds an old or torn one, and no sync would fix that once its image is
/// overwritten. The whole file, not each page's bytes: Linux drops only the cache pages (the
/// folios, which can be many KiB) that lie wholly inside the range it is given, so a range of
/// one page of the file drops nothing where that page is smaller than a folio or not aligned
/// to one. Dirty pages stay (they are not stranded: the sync after recovery writes them).
fn drop_clean_pages<S: Storage>(storage: &S, targets: &mut Targets<S::File>, file: FileId) -> Result<()> {
    targets.file(storage, file)?.advise(Advice::DontNeed, 0, 0);
    Ok(())
}

/// Reads one page in place, decides, and writes the image back if the table says so.
fn repair_page<S: Storage>(
    storage: &S,
    targets: &mut Targets<S::File>,
    file: FileId,
    page_no: u64,
    bytes: &[u8],
    buffered: PageCheck,
    validator: &dyn Fn(FileId, &[u8]) -> PageCheck,
) -> Result<PageAction> {
    let offset = targets.offset(file, page_no, bytes.len())?;
    let path = targets.path(file);
    let handle = targets.file(storage, file)?;
    let mut here = vec![0u8; bytes.len()];
    let n = handle.read_at(&mut here, offset).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
    // A page that ends past the end of its file was never fully written.
    let in_place = if n == here.len() { validator(file, &here) } else { PageCheck::Torn };
    let action = decide(in_place, buffered);
    if action == PageAction::Restore {
        handle.write_at(bytes, offset).map_err(|e| WalError::io(IoOp::Write, &path, e))?;
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_verdicts_maps_to_exactly_one_action() {
        let verdicts =
            [PageCheck::Torn, PageCheck::Intact { version: 4 }, PageCheck::Intact { version: 5 }, PageCheck::Intact { version: 6 }];
        for here in verdicts {
            for image in verdicts {
                let action = decide(here, image);
                let expected = match (here, image) {
                    (_, PageCheck::Torn) if here != PageCheck::Torn => PageAction::Keep,
                    (PageCheck::Torn, PageCheck::Torn) => PageAction::Unrepairable,
                    (PageCheck::Torn, _) => PageAction::Restore,
                    (PageCheck::Intact { version: h }, PageCheck::Intact { version: i }) => {
                        if h >= i {
                            PageAction::Keep
                        } else {
                            PageAction::Restore
                        }
                    }
                    _ => unreachable!("covered above"),
                };
                assert_eq!(action, expected, "in place {here:?}, image {image:?}");
            }
        }
    }

    #[test]
    fn an_intact_page_newer_than_the_image_is_kept() {
        assert_eq!(decide(PageCheck::Intact { version: 9 }, PageCheck::Intact { version: 3 }), PageAction::Keep);
        assert_eq!(decide(PageCheck::Intact { version: 3 }, PageCheck::Intact { version: 9 }), PageAction::Restore);
    }
}
