//! Segment files: names, identity, and scanning their frames.

pub mod ahead;
pub mod crypt;
pub mod evidence;
pub(crate) mod index;
pub(crate) mod read_ahead;
pub mod reader;
pub(crate) mod running;
pub mod scan;
pub(crate) mod spare;

use std::path::{Path, PathBuf};

use crate::types::{Lsn, SegmentId};

const SUFFIX: &str = ".wal";

/// The file name of a segment: its id, zero-padded so that names sort in id order.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{SegmentId, segment};
///
/// let name = segment::file_name(SegmentId(42));
/// assert_eq!(name, "00000000000000000042.wal");
/// assert_eq!(segment::parse_name(&name), Some(SegmentId(42)));
/// assert_eq!(segment::parse_name("LOCK"), None);
/// assert!(segment::path(std::path::Path::new("/wal"), SegmentId(42)).ends_with(&name));
/// ```
#[must_use]
pub fn file_name(id: SegmentId) -> String {
    format!("{:020}{SUFFIX}", id.0)
}

/// The path of a segment in a log directory.
#[must_use]
pub fn path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(file_name(id))
}

/// The id in a segment file name, or `None` for any other file.
#[must_use]
pub fn parse_name(name: &str) -> Option<SegmentId> {
    parse_id(name, SUFFIX)
}

fn parse_id(name: &str, suffix: &str) -> Option<SegmentId> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(SegmentId)
}

const RECYCLED_SUFFIX: &str = ".recycled";
const INDEX_SUFFIX: &str = ".hdrs";

/// Where a sealed segment's header index lives (see [`crate::format::header_index`]).
///
/// # Examples
///
/// ```
/// use nodedb_wal::{SegmentId, segment};
///
/// let path = segment::index_path("/wal".as_ref(), SegmentId(7));
/// assert!(path.ends_with("00000000000000000007.hdrs"));
/// assert_eq!(segment::parse_index(path.file_name().unwrap().to_str().unwrap()), Some(SegmentId(7)));
/// ```
#[must_use]
pub fn index_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}{INDEX_SUFFIX}", id.0))
}

/// The segment id in the name of a header index file, or `None` for any other file.
#[must_use]
pub fn parse_index(name: &str) -> Option<SegmentId> {
    parse_id(name, INDEX_SUFFIX)
}

/// Where a truncated segment waits to be reused as a later one: its old id with another
/// suffix, which recovery and readers ignore.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{SegmentId, segment};
///
/// let path = segment::recycled_path("/wal".as_ref(), SegmentId(7));
/// assert!(path.ends_with("00000000000000000007.recycled"));
/// let name = path.file_name().unwrap().to_str().unwrap();
/// assert_eq!(segment::parse_name(name), None, "not a segment");
/// assert_eq!(segment::parse_recycled(name), Some(SegmentId(7)));
/// ```
#[must_use]
pub fn recycled_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}{RECYCLED_SUFFIX}", id.0))
}

/// The old id in the name of a segment file kept for reuse, or `None` for any other file.
#[must_use]
pub fn parse_recycled(name: &str) -> Option<SegmentId> {
    parse_id(name, RECYCLED_SUFFIX)
}

/// What the log knows about one segment on disk.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"x"))?;
/// let info = wal.segments()[0];
/// assert_eq!((info.first_lsn, info.end_lsn, info.record_count()), (Lsn(1), Lsn(2), 1));
/// assert!(!info.sealed, "the segment appends go to");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's id (its file name).
    pub id: SegmentId,
    /// LSN of its first record (if it has any).
    pub first_lsn: Lsn,
    /// The LSN after its last record: the next segment's first LSN.
    pub end_lsn: Lsn,
    /// Bytes of the file that hold its frames.
    pub bytes: u64,
    /// Whether an end frame seals it (every segment but the active one is sealed).
    pub sealed: bool,
}

impl SegmentInfo {
    /// Records in the segment.
    #[must_use]
    pub fn record_count(&self) -> u64 {
        self.end_lsn.0 - self.first_lsn.0
    }
}

/// Chains of frames for the helpers' tests.
#[cfg(test)]
pub(crate) mod test_frames {
    use crate::format::frame::{HEADER_LEN, RecordHeader, encode_frame};
    use crate::types::{Lsn, RecordType, Scope};

    /// Frames carrying `payloads` one after another (LSNs from 1), and where each starts.
    pub fn chain(payloads: impl IntoIterator<Item = Vec<u8>>) -> (Vec<u8>, Vec<u64>) {
        let (mut bytes, mut starts) = (Vec::new(), Vec::new());
        for (i, payload) in payloads.into_iter().enumerate() {
            starts.push(bytes.len() as u64);
            let header = RecordHeader {
                lsn: Lsn(i as u64 + 1),
                durable_lsn: Lsn(0),
                salt: 7,
                record_type: RecordType::optional(0x100),
                scope: Scope::default(),
                payload_len: payload.len() as u32,
                flags: 0,
            };
            let mut frame = vec![0; HEADER_LEN + payload.len()];
            let n = encode_frame(&header, &payload, &mut frame);
            bytes.extend_from_slice(&frame[..n]);
        }
        (bytes, starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_id() {
        assert_eq!(parse_name(&file_name(SegmentId(42))), Some(SegmentId(42)));
        assert!(file_name(SegmentId(9)) < file_name(SegmentId(10)));
        assert_eq!(parse_name("LOCK"), None);
        assert_eq!(parse_name("0000000000000000001.wal"), None);
        assert_eq!(parse_name("0000000000000000000x.wal"), None);
    }
}
