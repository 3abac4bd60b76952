//! What the bytes after a damaged position say about it: the highest durable watermark that any
//! intact frame there carries, and whether anything but zeros is there at all.

use super::reader::ChunkReader;
use super::running::{AlignedSums, count_checksummed};
use crate::error::Result;
use crate::format::frame::{HEADER_LEN, RecordHeader, checksummed, decode_frame, stored_checksum};
use crate::format::layout::round_up;
use crate::storage::StorageFile;
use crate::types::Lsn;

/// The frames and bytes found after a position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The highest `durable_lsn` of any intact frame found.
    pub durable: Option<Lsn>,
    /// Whether any byte that is not part of an intact frame is non-zero.
    pub debris: bool,
    /// Whether an intact frame of another salt than the one asked for was found: the file had
    /// an earlier use as another segment.
    pub foreign: bool,
}

/// Walks the bytes from `from` to the end of the file. Wherever an intact frame (of `salt`, if
/// given) starts on a multiple of `step`, follows the chain of frames from it, so that the
/// padding and end frames the flusher stamps when it writes a batch are read too: under
/// pipelining, only they vouch for the batch written just before. Intact frames of another
/// salt are an earlier use of a reused segment file: skipped, neither claims nor debris.
/// Elsewhere, moves to the next multiple of `step`, noting non-zero bytes as debris.
///
/// What each candidate frame costs is bounded whatever length it claims (see
/// `intact_frame`): a file of headers each claiming a frame to its end once cost the square
/// of its length (6.4 s to open a crafted 12 MiB segment).
pub fn scan_claims<F: StorageFile>(reader: &mut ChunkReader<F>, from: u64, step: u64, salt: Option<u32>) -> Result<Claims> {
    let mut claims = Claims::default();
    let mut sums = AlignedSums::new(reader, from);
    let mut at = from;
    while at < reader.file_len() {
        if let Some(header) = intact_frame(reader, &mut sums, at, step)? {
            if salt.is_none_or(|s| s == header.salt) {
                claims.durable = claims.durable.max(Some(header.durable_lsn));
            } else {
                claims.foreign = true;
            }
            at += header.frame_len() as u64;
            continue;
        }
        let next = round_up(at + 1, step);
        if !claims.debris {
            let bytes = reader.get(at, (next - at) as usize)?;
            claims.debris = bytes.iter().any(|&b| b != 0);
        }
        at = next;
    }
    Ok(claims)
}

/// The header of the frame at `at`, where one lies there intact. A frame longer than `step`
/// takes its checksum from running ones (`sums`), at the cost of a sector at each end whatever
/// its length; shorter ones, and any whose ends read otherwise than when they were summed (a
/// live writer's), are read and checked in full, as the file reads now.
fn intact_frame<F: StorageFile>(reader: &mut ChunkReader<F>, sums: &mut AlignedSums, at: u64, step: u64) -> Result<Option<RecordHeader>> {
    let Ok(bytes) = <[u8; HEADER_LEN]>::try_from(reader.get(at, HEADER_LEN)?) else { return Ok(None) };
    let Ok(header) = RecordHeader::decode(&bytes) else { return Ok(None) };
    let end = at + header.frame_len() as u64;
    if end > reader.file_len() {
        return Ok(None);
    }
    if end - at > step && sums.reach(reader, end)? {
        let covered = checksummed(header.record_type, header.frame_len());
        if let Some(sum) = sums.of(reader, at + covered.start as u64..at + covered.end as u64)? {
            return Ok((sum == stored_checksum(&bytes)).then_some(header));
        }
    }
    let frame = reader.get(at, header.frame_len())?;
    count_checksummed(frame.len());
    Ok(decode_frame(frame).ok())
}

#[cfg(test)]
mod tests;
