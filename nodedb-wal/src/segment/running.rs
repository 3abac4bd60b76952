//! Running checksums over a file, for scans that check frames at many offsets: the checksum of
//! a candidate frame then costs a bounded number of bytes whatever length it claims, where
//! reading and checksumming each candidate in full costs the square of the file's length on a
//! file of headers each claiming a frame to its end.

use std::ops::Range;

use crate::error::{IoOp, Result, WalError};
use crate::format::crc::{crc32c_append, crc32c_of_suffix};
use crate::format::frame::{HEADER_LEN, RecordHeader, checksummed, stored_checksum};
use crate::segment::reader::ChunkReader;
use crate::storage::StorageFile;

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
