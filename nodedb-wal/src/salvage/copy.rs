//! The salvage's new log: segment for segment as the source, written with [`WalWriter`], and
//! vouched for by its `MANIFEST` only once every record is durable.
//!
//! The new directory's `MANIFEST` is made first, naming [`PENDING`], a segment no log ever
//! holds: until the last step names the real newest segment, recovery refuses the directory
//! (`MissingSegment`, `why: Manifest`), so a salvage that a crash, a kill or an error cut short
//! leaves a log that does not open, never one that opens short of what the report would have
//! said. The last step writes the real newest segment into both slots (two writes, each
//! synced): a damaged newer slot must not let the older one's [`PENDING`] refuse the log later.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::error::{IoOp, Result, WalError};
use crate::format::frame::{FLAG_GROUP_CONTINUES, RecordHeader};
use crate::format::manifest::MANIFEST_FILE;
use crate::manifest::Manifest;
use crate::record::Record;
use crate::recovery::is_collected;
use crate::segment::SegmentInfo;
use crate::storage::{Storage, create_dir_durably, lock_log_dir};
use crate::types::{Lsn, RecordType, SegmentId};
use crate::writer::{WalWriter, WalWriterConfig};

/// The segment the new log's `MANIFEST` names while the salvage runs (see the module docs).
pub const PENDING: SegmentId = SegmentId(u64::MAX);

/// Bytes a [`WalWriter`] of the copy buffers per write.
const BATCH_BYTES: usize = 1 << 20;

/// What the copy holds once finished.
#[derive(Debug)]
pub(super) struct Copied {
    pub segments: Vec<SegmentInfo>,
    /// The members of a group the stop cut, dropped whole.
    pub group_dropped: Option<RangeInclusive<Lsn>>,
    /// The tombstones and purges among them.
    pub group_drops_and_purges: Vec<(Lsn, RecordType)>,
}

/// The new log being written.
pub(super) struct Copier<'a, S: Storage> {
    storage: &'a S,
    dir: &'a Path,
    manifest: Manifest<S::File>,
    writer: Option<WalWriter<S>>,
    /// The records of a group whose last member has not been read yet.
    group: Vec<(RecordHeader, Vec<u8>)>,
    segments: Vec<SegmentInfo>,
}

impl<'a, S: Storage + Clone> Copier<'a, S> {
    /// Makes `dir` (missing, or empty but for a `LOCK`) the new log's directory, with a
    /// `MANIFEST` naming [`PENDING`]. Anything else there is
    /// [`WalError::SalvageDestinationNotEmpty`], and nothing is written.
    pub fn create(storage: &'a S, dir: &'a Path) -> Result<Copier<'a, S>> {
        match storage.list(dir) {
            Ok(names) => check_empty(dir, &names)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_dir_durably(storage, dir).map_err(|(op, e)| WalError::io(op, dir, e))?;
            }
            Err(e) => return Err(WalError::io(IoOp::ListDir, dir, e)),
        }
        // Held while the manifest is made: a log or a second salvage must not start here meanwhile.
        let _lock = lock_log_dir(storage, dir)?;
        check_empty(dir, &storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?)?;
        let manifest = Manifest::bring_up_to(None, storage, dir, PENDING)?;
        Ok(Copier { storage, dir, manifest, writer: None, group: Vec::new(), segments: Vec::new() })
    }

    /// Starts the copy of segment `id`, whose first record is `first_lsn`.
    pub fn begin(&mut self, id: SegmentId, first_lsn: Lsn, block_len: u32) -> Result<()> {
        assert!(self.writer.is_none(), "the previous segment was finished");
        let alignment = block_len as usize;
        let config = WalWriterConfig { direct_io: false, alignment, batch_bytes: BATCH_BYTES.max(4 * alignment) };
        self.writer = Some(WalWriter::create_with(self.storage.clone(), self.dir, id, first_lsn, config)?);
        Ok(())
    }

    /// Copies one record, read and checked; a group's members wait until its last one is read.
    pub fn record(&mut self, header: &RecordHeader, plain: Vec<u8>) -> Result<()> {
        let continues = header.flags & FLAG_GROUP_CONTINUES != 0;
        if !continues && self.group.is_empty() {
            return self.write(header, &plain);
        }
        self.group.push((*header, plain));
        if continues {
            return Ok(());
        }
        for (header, plain) in std::mem::take(&mut self.group) {
            self.write(&header, &plain)?;
        }
        Ok(())
    }

    fn write(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<()> {
        let writer = self.writer.as_mut().expect("a segment was begun");
        let record = Record { record_type: header.record_type, scope: header.scope, payload };
        let lsn = writer.append_copied(record, header.flags & FLAG_GROUP_CONTINUES)?;
        assert_eq!(lsn, header.lsn, "the copy keeps every record's LSN");
        Ok(())
    }

    /// Whether a group's last member is still to come.
    pub fn group_open(&self) -> bool {
        !self.group.is_empty()
    }

    /// Seals the segment being copied.
    pub fn end_segment(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            self.segments.push(writer.finish()?);
        }
        Ok(())
    }

    /// Drops a group the stop cut, seals the last segment and names it in `MANIFEST`: from here
    /// on the new log opens.
    pub fn finish(mut self) -> Result<Copied> {
        let group = std::mem::take(&mut self.group);
        let group_dropped = group.first().zip(group.last()).map(|(first, last)| first.0.lsn..=last.0.lsn);
        let group_drops_and_purges =
            group.iter().filter(|(h, _)| is_collected(h.record_type)).map(|(h, _)| (h.lsn, h.record_type)).collect();
        self.end_segment()?;
        // No segment: nothing to vouch for (0, as a log that never wrote one).
        let newest = self.segments.last().map_or(SegmentId(0), |s| s.id);
        let path: PathBuf = self.dir.join(MANIFEST_FILE);
        for _ in 0..2 {
            self.manifest.record(newest).map_err(|(op, e)| WalError::io(op, &path, e))?;
        }
        Ok(Copied { segments: self.segments, group_dropped, group_drops_and_purges })
    }
}

/// A new log may only go into a directory that holds nothing (a `LOCK` alone is a log's that
/// never wrote anything).
fn check_empty(dir: &Path, names: &[String]) -> Result<()> {
    if names.iter().any(|n| n != "LOCK") {
        return Err(WalError::SalvageDestinationNotEmpty { path: dir.to_path_buf() });
    }
    Ok(())
}
