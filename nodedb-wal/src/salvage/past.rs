//! What lies past the salvage's stop: a resync scan for intact frames in the rest of the
//! stopped segment and in every later one, so an operator knows what the cut costs.

use std::ops::{Range, RangeInclusive};

use super::walk::{Source, Stop};
use crate::error::Result;
use crate::format::crc::{crc32c_append, crc32c_of_suffix};
use crate::format::frame::{HEADER_LEN, MAGIC_AT, RECORD_MAGIC, RecordHeader, checksummed, stored_checksum};
use crate::recovery::open_held;
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::read_head;
use crate::segment::{self};
use crate::storage::{Storage, StorageFile};
use crate::types::{Lsn, SegmentId};

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
}

impl IntactAfter {
    fn add(&mut self, lsn: Lsn) {
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

/// Bytes between two of the running checksums a resync keeps (see [`Running`]).
const STRIDE: u64 = 64;

/// Bytes a resync reads at a time to run its checksums or look for the next magic (a
/// multiple of [`STRIDE`]).
const SCAN_CHUNK: usize = 64 * 1024;

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
        match intact_frame(reader, &running, at, salt)? {
            Some(header) => {
                if !header.record_type.is_meta() && header.lsn >= next_lsn {
                    found.add(header.lsn);
                }
                at = next_candidate(reader, at + header.frame_len() as u64, len)?;
            }
            None => at = next_candidate(reader, at + 1, len)?,
        }
    }
    Ok(())
}

/// The first offset from `from` on whose bytes hold a frame's magic where a frame has it
/// (every other offset fails [`RecordHeader::decode`]), or `len` where none does.
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

/// The header of the frame at `at`, where one lies there intact, within what `running` read,
/// and of `salt` where that is known.
fn intact_frame<F: StorageFile>(
    reader: &mut ChunkReader<F>,
    running: &Running,
    at: u64,
    salt: Option<u32>,
) -> Result<Option<RecordHeader>> {
    let bytes: &[u8; HEADER_LEN] = match reader.get(at, HEADER_LEN)?.try_into() {
        Ok(bytes) => bytes,
        Err(_) => return Ok(None),
    };
    let Ok(header) = RecordHeader::decode(bytes) else { return Ok(None) };
    let stored = stored_checksum(bytes);
    // Another salt's frame is no frame here, whatever its checksum says.
    if salt.is_some_and(|s| s != header.salt) || at + header.frame_len() as u64 > running.end {
        return Ok(None);
    }
    let covered = checksummed(header.record_type, header.frame_len());
    let sum = running.of(reader, at + covered.start as u64..at + covered.end as u64)?;
    Ok((sum == Some(stored)).then_some(header))
}

/// The CRC32C of a file's bytes from `origin` to every [`STRIDE`]th byte after it, taken in
/// one sequential pass: the checksum of any range in it then costs at most two strides of
/// bytes and a shift ([`crc32c_of_suffix`]).
struct Running {
    origin: u64,
    /// `sums[k]`: the CRC32C of the bytes from `origin` to `origin + k * STRIDE`.
    sums: Vec<u32>,
    /// Where the bytes read end: the file's end, or where it read short.
    end: u64,
}

impl Running {
    fn over<F: StorageFile>(reader: &mut ChunkReader<F>, origin: u64, len: u64) -> Result<Running> {
        let (mut sums, mut crc, mut at) = (vec![0], 0, origin);
        while at < len {
            let bytes = reader.get(at, SCAN_CHUNK)?;
            for piece in bytes.chunks(STRIDE as usize) {
                crc = crc32c_append(crc, piece);
                if piece.len() as u64 == STRIDE {
                    sums.push(crc);
                }
            }
            count_checksummed(bytes.len());
            at += bytes.len() as u64 - 1;
            // Short of a whole chunk: the file's end.
            if bytes.len() < SCAN_CHUNK {
                break;
            }
        }
        Ok(Running { origin, sums, end: at })
    }

    /// The CRC32C of the bytes from `origin` to `at`; `None` outside what was read.
    fn to<F: StorageFile>(&self, reader: &mut ChunkReader<F>, at: u64) -> Result<Option<u32>> {
        let Some(k) = at.checked_sub(self.origin).filter(|_| at <= self.end).map(|d| d / STRIDE) else { return Ok(None) };
        let base = self.origin + k * STRIDE;
        let tail = reader.get(base, (at - base) as usize)?;
        count_checksummed(tail.len());
        let sum = self.sums.get(k as usize).filter(|_| tail.len() as u64 == at - base);
        Ok(sum.map(|&sum| crc32c_append(sum, tail)))
    }

    /// The CRC32C of the bytes in `range`; `None` outside what was read.
    fn of<F: StorageFile>(&self, reader: &mut ChunkReader<F>, range: Range<u64>) -> Result<Option<u32>> {
        let (Some(start), Some(end)) = (self.to(reader, range.start)?, self.to(reader, range.end)?) else { return Ok(None) };
        Ok(Some(crc32c_of_suffix(end, start, range.end - range.start)))
    }
}

/// Counts the bytes a resync runs a checksum over, for the test that bounds them.
#[inline]
fn count_checksummed(_bytes: usize) {
    #[cfg(test)]
    tests::CHECKSUMMED.set(tests::CHECKSUMMED.get() + _bytes as u64);
}

#[cfg(test)]
mod tests;
