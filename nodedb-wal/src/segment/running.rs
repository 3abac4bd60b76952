//! Running checksums over a file, for scans that check frames at many offsets: the checksum of
//! a candidate frame then costs a bounded number of bytes whatever length it claims, where
//! reading and checksumming each candidate in full costs the square of the file's length on a
//! file of headers each claiming a frame to its end.
//!
//! Two kinds, for two scans. [`Running`] keeps one every 64 bytes, taken in one pass and read
//! at any offset: for the salvage's resync, which tries every offset holding a frame's magic
//! in files it opens without `O_DIRECT`. [`AlignedSums`] keeps one every sector, taken only as
//! far as the frames checked reach and read with aligned reads: for recovery's look past
//! damage, on block boundaries, in a newest segment it reads with `O_DIRECT`.

use std::ops::Range;

use crate::error::{IoOp, Result, WalError};
use crate::format::crc::{crc32c_append, crc32c_of_suffix};
use crate::format::frame::{HEADER_LEN, RecordHeader, checksummed, stored_checksum};
use crate::format::layout::round_up;
use crate::segment::reader::ChunkReader;
use crate::storage::{AlignedBuf, SECTOR, StorageFile};

/// Bytes between two of the running checksums kept.
const STRIDE: u64 = 64;

/// Bytes read at a time for the running checksums (a multiple of [`STRIDE`]).
pub(crate) const SCAN_CHUNK: usize = 64 * 1024;

/// The CRC32C of a file's bytes from `origin` to every [`STRIDE`]th byte after it, taken in
/// one sequential pass: the checksum of any range in it then costs at most two strides of
/// bytes and a shift ([`crc32c_of_suffix`]).
pub(crate) struct Running {
    origin: u64,
    /// `sums[k]`: the CRC32C of the bytes from `origin` to `origin + k * STRIDE`.
    sums: Vec<u32>,
    /// Where the bytes read end: the file's end, or where it read short.
    end: u64,
}

impl Running {
    /// Reads the file of `reader` from `origin` to `len`. Straight from the file, so that the
    /// reader's window stays where its scan has it: the file must be open without `O_DIRECT`
    /// (reads here are not aligned), as the salvage opens a source's segments.
    pub fn over<F: StorageFile>(reader: &ChunkReader<F>, origin: u64, len: u64) -> Result<Running> {
        let (mut sums, mut crc, mut at) = (vec![0], 0, origin);
        let mut buf = vec![0u8; SCAN_CHUNK];
        while at < len {
            let want = usize::try_from(len - at).unwrap_or(usize::MAX).min(SCAN_CHUNK);
            let read = read_at(reader, &mut buf[..want], at)?;
            for piece in buf[..read].chunks(STRIDE as usize) {
                crc = crc32c_append(crc, piece);
                if piece.len() as u64 == STRIDE {
                    sums.push(crc);
                }
            }
            count_checksummed(read);
            at += read as u64;
            // Short of what was asked: the file's end (it may be shorter than listed).
            if read < want || read % STRIDE as usize != 0 {
                break;
            }
        }
        Ok(Running { origin, sums, end: at })
    }

    /// The header of the frame at `at`, where one lies there intact within what was read, and
    /// of `salt` where that is given (checked first: another salt's frame costs no checksum).
    pub fn intact_frame<F: StorageFile>(&self, reader: &mut ChunkReader<F>, at: u64, salt: Option<u32>) -> Result<Option<RecordHeader>> {
        let bytes: &[u8; HEADER_LEN] = match reader.get(at, HEADER_LEN)?.try_into() {
            Ok(bytes) => bytes,
            Err(_) => return Ok(None),
        };
        let Ok(header) = RecordHeader::decode(bytes) else { return Ok(None) };
        let stored = stored_checksum(bytes);
        if salt.is_some_and(|s| s != header.salt) || at + header.frame_len() as u64 > self.end {
            return Ok(None);
        }
        let covered = checksummed(header.record_type, header.frame_len());
        let sum = self.of(reader, at + covered.start as u64..at + covered.end as u64)?;
        Ok((sum == Some(stored)).then_some(header))
    }

    /// The CRC32C of the bytes from `origin` to `at`; `None` outside what was read.
    ///
    /// The bytes after the last stride before `at` are read from the file itself, not through
    /// the reader: a frame's end lies anywhere ahead, and moving the reader's window there and
    /// back for every candidate would read the file once a candidate.
    fn to<F: StorageFile>(&self, reader: &ChunkReader<F>, at: u64) -> Result<Option<u32>> {
        let Some(k) = at.checked_sub(self.origin).filter(|_| at <= self.end).map(|d| d / STRIDE) else { return Ok(None) };
        let base = self.origin + k * STRIDE;
        let mut tail = [0u8; STRIDE as usize];
        let tail = &mut tail[..(at - base) as usize];
        let read = read_at(reader, tail, base)?;
        count_checksummed(read);
        let sum = self.sums.get(k as usize).filter(|_| read == tail.len());
        Ok(sum.map(|&sum| crc32c_append(sum, tail)))
    }

    /// The CRC32C of the bytes in `range`; `None` outside what was read.
    fn of<F: StorageFile>(&self, reader: &ChunkReader<F>, range: Range<u64>) -> Result<Option<u32>> {
        let (Some(start), Some(end)) = (self.to(reader, range.start)?, self.to(reader, range.end)?) else { return Ok(None) };
        Ok(Some(crc32c_of_suffix(end, start, range.end - range.start)))
    }
}

/// Bytes [`AlignedSums`] reads at a time.
const SUMS_CHUNK: usize = 1 << 20;

/// The CRC32C of a file's bytes from `origin` to every sector after it, taken with aligned
/// reads only, so that a file open with `O_DIRECT` can be scanned this way (recovery reads the
/// newest segment so; [`Running`] reads at any offset). The sums are taken as far as the
/// frames checked reach, no further: a look past damage that finds only zeros, or short
/// frames, reads nothing more for them.
///
/// The file may change while it is read (a read-only look beside a live writer). So a range's
/// checksum comes from the sums and the sectors holding its two ends read again, and each of
/// those must read as when it was summed: where one does not, or the range reaches past what
/// could be read, [`Self::of`] has no answer, and the caller checks the frame in full, as the
/// file reads now.
pub(crate) struct AlignedSums {
    origin: u64,
    /// What a read's offset and length are aligned to: the reader's alignment, a sector at
    /// least.
    unit: u64,
    /// `sums[k]`: the CRC32C of the bytes from `origin` to `origin + k * SECTOR`, or to `end`
    /// for the last one.
    sums: Vec<u32>,
    /// Where the bytes summed end.
    end: u64,
    /// Whether the file is summed to its end (or read short): nothing more to read.
    done: bool,
    chunk: Option<AlignedBuf>,
    /// The unit last read for a range's end, and the bytes read of it: the ranges a crafted
    /// file claims end in one place, more often than not.
    end_unit: Option<(u64, usize, AlignedBuf)>,
}

/// Bytes between two of the sums [`AlignedSums`] keeps.
const SUM_STRIDE: u64 = SECTOR as u64;

impl AlignedSums {
    /// Sums from the unit holding `from` on, none taken yet.
    pub fn new<F: StorageFile>(reader: &ChunkReader<F>, from: u64) -> AlignedSums {
        let unit = (reader.align() as u64).max(SUM_STRIDE);
        let origin = from & !(unit - 1);
        AlignedSums { origin, unit, sums: vec![0], end: origin, done: false, chunk: None, end_unit: None }
    }

    /// Takes the sums up to `upto` at least, where the file (as long as the reader has it)
    /// holds that much; returns whether it did.
    pub fn reach<F: StorageFile>(&mut self, reader: &ChunkReader<F>, upto: u64) -> Result<bool> {
        let (unit, file_len) = (self.unit, reader.file_len());
        let chunk = self.chunk.get_or_insert_with(|| AlignedBuf::zeroed(SUMS_CHUNK, unit as usize));
        while !self.done && self.end < upto {
            let want = round_up(file_len.saturating_sub(self.end), unit).min(chunk.len() as u64) as usize;
            let read = read_at(reader, &mut chunk[..want], self.end)?;
            // Bytes past the length the reader has are not the file's to it (a live writer's).
            let got = read.min(usize::try_from(file_len - self.end).unwrap_or(usize::MAX));
            let mut crc = *self.sums.last().expect("the sum at the origin");
            for piece in chunk[..got].chunks(SUM_STRIDE as usize) {
                crc = crc32c_append(crc, piece);
                self.sums.push(crc);
            }
            count_checksummed(got);
            self.end += got as u64;
            // Short of what was asked: the file's end (it may be shorter than listed).
            self.done = got < want || self.end >= file_len;
        }
        Ok(self.end >= upto)
    }

    /// The CRC32C of the bytes in `range`, which [`Self::reach`] must have summed; `None`
    /// where a sector holding one of its ends reads otherwise than when it was summed.
    pub fn of<F: StorageFile>(&mut self, reader: &mut ChunkReader<F>, range: Range<u64>) -> Result<Option<u32>> {
        debug_assert!(self.origin <= range.start && range.end <= self.end, "{range:?} is not summed");
        // The start's sector is where the scan is: the reader holds it.
        let start = match self.sector_before(range.start) {
            Some((k, base, len)) => within(&self.sums[k..], reader.get(base, len)?, len, range.start - base),
            None => Some(0),
        };
        let end = match self.sector_before(range.end) {
            Some((k, base, len)) => {
                let unit_base = base & !(self.unit - 1);
                let bytes = read_unit(&mut self.end_unit, self.unit, reader, unit_base)?;
                let bytes = bytes.get((base - unit_base) as usize..).unwrap_or_default();
                within(&self.sums[k..], bytes, len, range.end - base)
            }
            None => Some(0),
        };
        Ok(start.zip(end).map(|(start, end)| crc32c_of_suffix(end, start, range.end - range.start)))
    }

    /// The sector holding the byte before `at`: its index, where it starts, and how many of
    /// its bytes are summed. `None` at the origin.
    fn sector_before(&self, at: u64) -> Option<(usize, u64, usize)> {
        let k = at.checked_sub(self.origin + 1)? / SUM_STRIDE;
        let base = self.origin + k * SUM_STRIDE;
        Some((k as usize, base, SUM_STRIDE.min(self.end - base) as usize))
    }
}

/// The bytes of the unit of `unit` bytes at `base`, read from the file into `slot` unless it
/// holds them already: a range's end lies anywhere ahead of the scan, and moving the reader's
/// window there and back would read a chunk each time.
fn read_unit<'a, F: StorageFile>(
    slot: &'a mut Option<(u64, usize, AlignedBuf)>,
    unit: u64,
    reader: &ChunkReader<F>,
    base: u64,
) -> Result<&'a [u8]> {
    if !matches!(slot, Some((at, ..)) if *at == base) {
        let mut buf = match slot.take() {
            Some((.., buf)) => buf,
            None => AlignedBuf::zeroed(unit as usize, unit as usize),
        };
        let read = read_at(reader, &mut buf, base)?;
        *slot = Some((base, read, buf));
    }
    let (_, read, buf) = slot.as_ref().expect("read above");
    Ok(&buf[..*read])
}

/// The CRC32C from the sums' origin to `upto` bytes into a sector, given `sums` from the one
/// before the sector on and `bytes` of the sector as read now, whose first `len` were summed:
/// `None` where they are not the bytes summed.
fn within(sums: &[u32], bytes: &[u8], len: usize, upto: u64) -> Option<u32> {
    let bytes = bytes.get(..len)?;
    count_checksummed(len);
    let (head, tail) = bytes.split_at(upto as usize);
    let sum = crc32c_append(sums[0], head);
    (crc32c_append(sum, tail) == sums[1]).then_some(sum)
}

fn read_at<F: StorageFile>(reader: &ChunkReader<F>, buf: &mut [u8], at: u64) -> Result<usize> {
    reader.file().read_at(buf, at).map_err(|e| WalError::io(IoOp::Read, reader.path(), e))
}

#[cfg(test)]
thread_local! {
    /// Bytes a scan has run a checksum over on this thread, for the tests that bound them.
    pub(crate) static CHECKSUMMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts the bytes a scan runs a checksum over (in tests).
#[inline]
pub(crate) fn count_checksummed(_bytes: usize) {
    #[cfg(test)]
    CHECKSUMMED.set(CHECKSUMMED.get() + _bytes as u64);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::format::frame::encode_frame;
    use crate::segment::reader::DEFAULT_CHUNK;
    use crate::storage::{FaultConfig, OpenMode, SimStorage, Storage};
    use crate::types::{Lsn, RecordType, Scope};

    /// A reader over a file of `len` zero bytes but for a frame of 100 payload bytes at `at`.
    fn file_with_frame(len: usize, at: usize) -> (ChunkReader<<SimStorage as Storage>::File>, RecordHeader) {
        let header = RecordHeader {
            lsn: Lsn(5),
            durable_lsn: Lsn(4),
            salt: 7,
            record_type: RecordType::optional(0x100),
            scope: Scope::default(),
            payload_len: 100,
            flags: 0,
        };
        let mut bytes = vec![0u8; len];
        encode_frame(&header, &[9; 100], &mut bytes[at..]);
        let (sim, path) = (SimStorage::new(1, FaultConfig::default()), Path::new("/running/seg"));
        sim.create_dir_all(Path::new("/running")).expect("dir");
        let file = sim.open(path, OpenMode { create: true, create_new: false, write: true, direct: false }).expect("open");
        file.write_at(&bytes, 0).expect("write");
        (ChunkReader::new(file, path.to_path_buf(), len as u64, 512, DEFAULT_CHUNK), header)
    }

    #[test]
    fn a_frame_ending_exactly_where_the_bytes_read_end_is_intact() {
        let (mut reader, header) = file_with_frame(512 + 148, 512);
        let running = Running::over(&reader, 0, 512 + 148).expect("read");
        assert_eq!(running.intact_frame(&mut reader, 512, Some(7)).expect("read"), Some(header));
    }

    /// From an origin past 0, the pass still stops at the length it was given, not past it.
    #[test]
    fn nothing_past_the_length_asked_for_is_read_or_found() {
        let (mut reader, _) = file_with_frame(8192, 4096);
        let running = Running::over(&reader, 512, 4096).expect("read");
        assert_eq!(running.end, 4096);
        assert_eq!(running.intact_frame(&mut reader, 4096, None).expect("read"), None);
    }

    /// A file may be shorter than listed; the pass ends where its bytes do (a multiple of the
    /// stride here, so only the short read itself says the file ended).
    #[test]
    fn a_file_shorter_than_listed_ends_the_pass_where_its_bytes_end() {
        let (reader, _) = file_with_frame(4096, 512);
        let before = CHECKSUMMED.get();
        let running = Running::over(&reader, 0, 1 << 20).expect("read");
        assert_eq!(CHECKSUMMED.get() - before, 4096, "every byte read is counted, once");
        assert_eq!(running.end, 4096);
        assert_eq!(running.sums.len(), 4096 / STRIDE as usize + 1);
    }

    /// A reader over `bytes` that has the file as `listed` bytes long.
    fn reader_over(bytes: &[u8], listed: u64) -> ChunkReader<<SimStorage as Storage>::File> {
        let (sim, path) = (SimStorage::new(1, FaultConfig::default()), Path::new("/running/seg"));
        sim.create_dir_all(Path::new("/running")).expect("dir");
        let file = sim.open(path, OpenMode { create: true, create_new: false, write: true, direct: false }).expect("open");
        file.write_at(bytes, 0).expect("write");
        ChunkReader::new(file, path.to_path_buf(), listed, 512, DEFAULT_CHUNK)
    }

    /// A look past damage that checks only frames near its start reads no further for them:
    /// the sums are taken a chunk at a time, up to the first chunk reaching the point asked for.
    #[test]
    fn the_sums_stop_at_the_first_chunk_reaching_the_point_asked_for() {
        let len = 3 * SUMS_CHUNK as u64;
        let reader = reader_over(&vec![0; len as usize], len);
        let mut sums = AlignedSums::new(&reader, 0);
        let before = CHECKSUMMED.get();
        assert!(sums.reach(&reader, SUMS_CHUNK as u64).expect("read"));
        assert_eq!(sums.end, SUMS_CHUNK as u64, "one chunk reaches the point asked for");
        assert_eq!(CHECKSUMMED.get() - before, SUMS_CHUNK as u64);
        assert!(sums.reach(&reader, SUMS_CHUNK as u64 + 1).expect("read"));
        assert_eq!(sums.end, 2 * SUMS_CHUNK as u64);
        assert!(!sums.done);
    }

    /// Bytes past the length the reader has (a live writer's, in a read-only look) are not
    /// summed, from any origin: a frame may not reach into them.
    #[test]
    fn the_sums_stop_at_the_length_the_reader_has_not_at_the_bytes_past_it() {
        let reader = reader_over(&[1; 8192], 1000);
        for from in [0, 512, 777] {
            let mut sums = AlignedSums::new(&reader, from);
            let before = CHECKSUMMED.get();
            assert!(sums.reach(&reader, 1000).expect("read"));
            assert_eq!((sums.end, sums.done), (1000, true), "from {from}");
            assert_eq!(CHECKSUMMED.get() - before, 1000 - sums.origin, "from {from}");
            assert!(!sums.reach(&reader, 1001).expect("read"), "from {from}");
        }
    }
}
