//! What lies past the salvage's stop: a resync scan for intact frames in the rest of the
//! stopped segment and in every later one, so an operator knows what the cut costs.

use std::ops::RangeInclusive;

use super::walk::{Source, Stop};
use crate::error::Result;
use crate::format::frame::{HEADER_LEN, MAGIC_AT, RECORD_MAGIC, RecordHeader};
use crate::recovery::{is_collected, open_held};
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::running::{Running, SCAN_CHUNK};
use crate::segment::scan::read_head;
use crate::segment::{self};
use crate::storage::{Storage, StorageFile};
use crate::types::{Lsn, RecordType, SegmentId};

/// Intact records found after the salvage's stop, which the new log does not hold.
///
/// A frame counts where its checksum holds and, in a segment whose head reads, it carries that
/// segment's salt (a reused file's earlier frames do not belong to the log). Found by trying
/// every byte offset that holds a frame's magic, since frames inside a batch start anywhere; each record is counted once,
/// with its LSN as its frame says, from the copy's next LSN on (lower ones the copy holds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntactAfter {
    /// Data records found (padding, segment headers and end frames are not counted).
    pub records: u64,
    /// Their LSNs, as runs of consecutive LSNs in the order found.
    pub lsn_ranges: Vec<RangeInclusive<Lsn>>,
    /// The collection tombstones and temporal purges among them (LSN and type, in the order
    /// found): drops and purges the new log does not hold, so its recovery does not report
    /// them, and an engine whose files do not hold them yet must make them good itself, or a
    /// dropped collection's rows come back.
    pub drops_and_purges: Vec<(Lsn, RecordType)>,
}

impl IntactAfter {
    fn add(&mut self, header: &RecordHeader) {
        let lsn = header.lsn;
        if is_collected(header.record_type) {
            self.drops_and_purges.push((lsn, header.record_type));
        }
        self.records += 1;
        match self.lsn_ranges.last_mut() {
            Some(run) if run.end().0.checked_add(1) == Some(lsn.0) => *run = *run.start()..=lsn,
            _ => self.lsn_ranges.push(lsn..=lsn),
        }
    }
}

/// Scans from `stop` to the end of its segment, then every later segment of `ids`, counting
/// records from `next_lsn` (the copy's next) on: a frame of a lower LSN past the stop (a
/// segment file that is a copy of an older one) is one the copy holds, or one below the log.
pub(super) fn intact_after<S: Storage>(src: &Source<'_, S>, ids: &[SegmentId], stop: &Stop, next_lsn: Lsn) -> Result<IntactAfter> {
    let mut found = IntactAfter::default();
    if let Some(offset) = stop.offset {
        let mut reader = open(src, stop.segment)?;
        resync(&mut reader, offset, stop.salt, next_lsn, &mut found)?;
    }
    for &id in ids.iter().filter(|&&id| id > stop.segment) {
        let mut reader = open(src, id)?;
        let (from, salt) = match read_head(&mut reader, id) {
            Ok(Some(head)) => (head.body_start, Some(head.header.salt)),
            _ => (0, None),
        };
        resync(&mut reader, from, salt, next_lsn, &mut found)?;
    }
    Ok(found)
}

fn open<S: Storage>(src: &Source<'_, S>, id: SegmentId) -> Result<ChunkReader<S::File>> {
    let path = segment::path(src.dir, id);
    let (file, len) = open_held(src.storage, &path, id, false, false)?;
    let mut reader = ChunkReader::new(file, path, len, 512, DEFAULT_CHUNK);
    reader.read_sequentially();
    Ok(reader)
}

/// Every intact frame from `from` on (of `salt`, where known), a record counted from LSN
/// `next_lsn` on: after one, the scan goes on past it; elsewhere, at the next offset whose
/// bytes could start a frame (its magic where a frame has it).
///
/// What each candidate costs is bounded whatever length it claims: its checksum comes from
/// running ones ([`Running`]), not from reading the frame again. A file of headers each
/// claiming a frame to its end once cost the square of its length.
fn resync<F: StorageFile>(reader: &mut ChunkReader<F>, from: u64, salt: Option<u32>, next_lsn: Lsn, found: &mut IntactAfter) -> Result<()> {
    let len = reader.file_len();
    let running = Running::over(reader, from, len)?;
    let mut at = next_candidate(reader, from, len)?;
    while at + HEADER_LEN as u64 <= len {
        match running.intact_frame(reader, at, salt)? {
            Some(header) => {
                if !header.record_type.is_meta() && header.lsn >= next_lsn {
                    found.add(&header);
                }
                at = next_candidate(reader, at + header.frame_len() as u64, len)?;
            }
            None => at = next_candidate(reader, at + 1, len)?,
        }
    }
    Ok(())
}

/// The first offset from `from` on whose bytes hold a frame's magic where a frame has it
/// (no header decodes at any other), or `len` where none does.
fn next_candidate<F: StorageFile>(reader: &mut ChunkReader<F>, from: u64, len: u64) -> Result<u64> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut at = from + MAGIC_AT as u64;
    while at + magic.len() as u64 <= len {
        let bytes = reader.get(at, SCAN_CHUNK)?;
        if bytes.len() < magic.len() {
            break;
        }
        if let Some(i) = bytes.windows(magic.len()).position(|w| w == magic) {
            return Ok(at + i as u64 - MAGIC_AT as u64);
        }
        // The last byte may be the first half of a magic the next read completes.
        at += bytes.len() as u64 - 1;
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
