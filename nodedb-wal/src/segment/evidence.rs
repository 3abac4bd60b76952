//! What the bytes after a damaged position say about it: the highest durable watermark that any
//! intact frame there carries, and whether anything but zeros is there at all.

use super::reader::ChunkReader;
use crate::error::Result;
use crate::format::frame::{HEADER_LEN, RecordHeader, decode_frame};
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
pub fn scan_claims<F: StorageFile>(reader: &mut ChunkReader<F>, from: u64, step: u64, salt: Option<u32>) -> Result<Claims> {
    let mut claims = Claims::default();
    let mut at = from;
    while at < reader.file_len() {
        if let Some(header) = intact_frame(reader, at)? {
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

fn intact_frame<F: StorageFile>(reader: &mut ChunkReader<F>, at: u64) -> Result<Option<RecordHeader>> {
    let Ok(header) = RecordHeader::decode(reader.get(at, HEADER_LEN)?) else { return Ok(None) };
    if at + header.frame_len() as u64 > reader.file_len() {
        return Ok(None);
    }
    Ok(decode_frame(reader.get(at, header.frame_len())?).ok())
}
