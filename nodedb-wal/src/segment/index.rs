//! Header index files beside sealed segments (see [`crate::format::header_index`]): the
//! flusher collects the headers of every batch it writes to the open segment and writes them
//! beside it once its last batch is durable; headers-only scans read them.

use std::path::Path;

use crate::format::frame::RecordHeader;
use crate::format::header_index::{ENTRY_LEN, HeaderIndex};
use crate::format::layout::round_up;
use crate::segment;
use crate::storage::{AlignedBuf, OpenMode, Storage, StorageFile};
use crate::types::{Lsn, SegmentId};

/// The headers of the open segment so far, while an index still pays: an index is worth a
/// thirty-second of the segment at most (records averaging ~1.8 KiB or more), since for
/// smaller records reading the segment itself costs little more. One is dropped as soon as
/// its first [`JUDGED_AFTER`] records average less, so that a log of small records does not
/// decode headers on the flusher for nothing, and at the latest when it passes that size (or
/// [`INDEX_BYTES_MAX`]).
#[derive(Debug, Default)]
pub struct IndexBuilder {
    index: Option<HeaderIndex>,
    /// A finished or dropped index whose memory the next segment's index reuses.
    spare: Option<HeaderIndex>,
    max_entries: usize,
}

/// Records after which an index's average record size decides whether it is kept.
const JUDGED_AFTER: usize = 64;
/// Segment bytes per index byte below which an index is not worth keeping.
const BYTES_PER_INDEX_BYTE: usize = 32;

/// The largest index kept, whatever the segment target: the flusher holds it in memory until
/// its segment is sealed (and a segment that never rolls, a target of `u64::MAX`, never is),
/// and a reader reads it whole. A thirty-second of a 1 GiB segment.
const INDEX_BYTES_MAX: usize = 32 << 20;

impl IndexBuilder {
    pub fn new(segment_bytes_target: u64) -> IndexBuilder {
        let budget = (usize::try_from(segment_bytes_target).unwrap_or(usize::MAX) / BYTES_PER_INDEX_BYTE).min(INDEX_BYTES_MAX);
        IndexBuilder { index: None, spare: None, max_entries: budget / ENTRY_LEN }
    }

    /// Starts the index of a new segment.
    pub fn start(&mut self, segment: SegmentId, salt: u32, first_lsn: Lsn) {
        let mut index = self.index.take().or_else(|| self.spare.take()).unwrap_or_else(|| HeaderIndex::new(segment, salt, first_lsn));
        index.reset(segment, salt, first_lsn);
        self.index = Some(index);
    }

    /// Hands back an index [`Self::finish`] returned, once written, for the next segment's
    /// index to reuse its memory.
    pub fn reuse(&mut self, index: HeaderIndex) {
        self.spare = Some(index);
    }

    /// Adds the records of a batch written at `offset`: `records` holds its frames, back to back.
    pub fn add_batch(&mut self, records: &[u8], offset: u64) {
        let Some(index) = self.index.as_mut() else { return };
        let mut at = 0;
        while at < records.len() {
            let Ok(header) = RecordHeader::decode(&records[at..]) else {
                // The flusher encoded these frames itself; a frame it cannot read back means
                // an index would be wrong. Readers scan instead.
                debug_assert!(false, "unreadable frame in a batch at {at}");
                self.index = None;
                return;
            };
            // Only data records carry LSNs a reader hands out (a batch's records region holds
            // nothing else today; its padding and end frames follow it).
            if !header.record_type.is_meta() {
                index.push(offset + at as u64, &header);
            }
            at += header.frame_len();
        }
        self.judge(offset + records.len() as u64);
    }

    /// Adds one data record whose frame starts at `offset` (recovery, which meets the records
    /// of the segment it will seal one by one).
    pub fn add(&mut self, offset: u64, header: &RecordHeader) {
        let Some(index) = self.index.as_mut() else { return };
        index.push(offset, header);
        self.judge(offset + header.frame_len() as u64);
    }

    /// Drops the index if it no longer pays, its records ending at `end`.
    fn judge(&mut self, end: u64) {
        let Some(entries) = self.index.as_ref().map(HeaderIndex::entries) else { return };
        let spanned = end - entries.first().map_or(end, |e| e.0);
        let small = entries.len() >= JUDGED_AFTER && spanned < (entries.len() * ENTRY_LEN * BYTES_PER_INDEX_BYTE) as u64;
        if small || entries.len() > self.max_entries {
            self.spare = self.index.take();
        }
    }

    /// The finished index of the segment just sealed, if one was kept.
    pub fn finish(&mut self) -> Option<HeaderIndex> {
        self.index.take()
    }

    /// The finished index of records whose frames start before `end`: recovery keeps a
    /// segment's records up to where it cuts it (a torn tail, an atomic group left open).
    pub fn finish_before(&mut self, end: u64) -> Option<HeaderIndex> {
        let index = self.index.take()?;
        if index.entries().last().is_none_or(|e| e.0 < end) {
            return Some(index);
        }
        let mut kept = HeaderIndex::new(index.segment, index.salt, index.first_lsn);
        for (offset, header) in index.into_entries().into_iter().take_while(|e| e.0 < end) {
            kept.push(offset, &header);
        }
        Some(kept)
    }
}

/// The buffer one writer encodes its index files into, kept from one to the next: an index
/// of a full segment is about a megabyte, which a fresh buffer pays for in page faults every
/// time (measured: ~0.5-0.8 ms of a ~1.5 ms index write on the flusher, once per segment).
#[derive(Debug, Default)]
pub struct IndexScratch(Option<AlignedBuf>);

impl IndexScratch {
    /// At least `len` bytes in whole `block`s, aligned to `block`; their contents are stale.
    fn at_least(&mut self, len: usize, block: usize) -> &mut AlignedBuf {
        let fits = |buf: &AlignedBuf| buf.len() >= len && buf.align() == block;
        if !self.0.as_ref().is_some_and(fits) {
            self.0 = Some(AlignedBuf::zeroed(len, block));
        }
        self.0.as_mut().expect("just made")
    }
}

/// Writes `index` beside its segment. Best effort and unsynced: the index is advisory, a reader
/// takes it only whole and matching its segment, so a failure is logged and nothing more.
///
/// With `direct` (a log written with O_DIRECT) the index is written the same way, padded with
/// zeros to `block` and then cut to its length, so that it stays out of the page cache like the
/// segments: at 4 KiB records an index is ~1.2% of the bytes logged, which written through the
/// cache broke the promise that O_DIRECT logging leaves cached memory flat (BENCHMARKS.md).
pub fn write_index<S: Storage>(storage: &S, dir: &Path, index: &HeaderIndex, direct: bool, block: usize, scratch: &mut IndexScratch) {
    let path = segment::index_path(dir, index.segment);
    let len = HeaderIndex::encoded_len(index.entries().len());
    let padded = if direct { usize::try_from(round_up(len as u64, block as u64)).expect("fits memory") } else { len };
    let buf = scratch.at_least(padded, block);
    index.encode_into(&mut buf[..len]);
    buf[len..padded].fill(0);
    let written = storage.open(&path, OpenMode { create: true, write: true, direct, create_new: false }).and_then(|file| {
        file.set_len(0)?;
        file.write_at(&buf[..padded], 0)?;
        if direct { file.set_len(len as u64) } else { Ok(()) }
    });
    if let Err(err) = written {
        tracing::warn!(%err, path = %path.display(), "header index not written; headers-only scans will read the segment");
    }
}

/// Reads the header index of segment `id`, if it exists, is whole and describes the segment
/// with this `salt` and LSN range. Anything else, an I/O error included, means no index.
pub fn read_index<S: Storage>(storage: &S, dir: &Path, id: SegmentId, salt: u32, lsns: (Lsn, Lsn)) -> Option<HeaderIndex> {
    let path = segment::index_path(dir, id);
    let file = storage.open(&path, OpenMode { create: false, write: false, direct: false, create_new: false }).ok()?;
    let len = usize::try_from(file.len().ok()?).ok()?;
    // The segment's LSN range fixes the one length its index can have: a file of any other is
    // refused before it is read, so that a long one (a sparse terabyte costs the disk nothing)
    // is not read into memory whole only for its checksum to refuse it.
    let records = usize::try_from(lsns.1.0.checked_sub(lsns.0.0)?).ok().filter(|&n| u32::try_from(n).is_ok())?;
    if len != HeaderIndex::encoded_len(records) {
        return None;
    }
    // Page-aligned: a large `Vec` starts 16 bytes past a page, and on some CPUs (AMD Zen 3)
    // the kernel's copy into such a buffer runs ~4x slower (BENCHMARKS.md).
    let mut buf = AlignedBuf::zeroed(len.max(1), PAGE);
    let bytes = &mut buf[..len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut bytes[filled..], filled as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
    let index = HeaderIndex::decode(bytes)?;
    (index.segment == id && index.salt == salt && index.first_lsn == lsns.0 && index.end_lsn() == lsns.1).then_some(index)
}

/// A page of memory: the alignment of the buffer an index is read into.
const PAGE: usize = 4096;

/// Removes the header index of segment `id`, if there is one (after its segment went).
pub fn remove_index<S: Storage>(storage: &S, dir: &Path, id: SegmentId) {
    let path = segment::index_path(dir, id);
    match storage.remove(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(%err, path = %path.display(), "could not remove a header index"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::frame::encode_frame;
    use crate::types::{RecordType, Scope};

    /// `count` frames of `payload` bytes each, LSNs from `first`, back to back.
    fn frames(first: u64, count: u64, payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for lsn in first..first + count {
            let header = RecordHeader {
                lsn: Lsn(lsn),
                durable_lsn: Lsn(0),
                salt: 5,
                record_type: RecordType::optional(0x100),
                scope: Scope::default(),
                payload_len: payload as u32,
                flags: 0,
            };
            let mut frame = vec![0u8; header.frame_len()];
            encode_frame(&header, &vec![1; payload], &mut frame);
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn an_index_of_small_records_is_dropped_once_judged_and_one_of_large_records_is_kept() {
        let mut small = IndexBuilder::new(64 << 20);
        small.start(SegmentId(1), 5, Lsn(1));
        let first = frames(1, JUDGED_AFTER as u64 - 1, 100);
        small.add_batch(&first, 4096);
        assert!(small.index.is_some(), "not judged before {JUDGED_AFTER} records");
        small.add_batch(&frames(JUDGED_AFTER as u64, 1, 100), 4096 + first.len() as u64);
        assert!(small.finish().is_none(), "148-byte frames: dropped");

        let mut large = IndexBuilder::new(64 << 20);
        large.start(SegmentId(2), 5, Lsn(1));
        let batch = frames(1, 100, 4000);
        large.add_batch(&batch, 4096);
        let index = large.finish().expect("4 KiB records keep their index");
        assert_eq!(index.entries().len(), 100);
        assert_eq!(index.entries()[1].0, 4096 + 4048, "each frame's offset");
    }

    // Found by review: the budget was a thirty-second of the segment target alone, and a log
    // that never rolls (a target of `u64::MAX`, which the flusher's zero-fill allows for) kept
    // every header of records of ~2 KiB or more in the flusher's memory, growing without end:
    // its index is only written when the segment is sealed.
    #[test]
    fn the_index_of_a_segment_that_never_rolls_stays_within_a_fixed_budget() {
        let mut builder = IndexBuilder::new(u64::MAX);
        builder.start(SegmentId(1), 5, Lsn(1));
        let batch = frames(1, 256, 4000);
        let mut offset = 4096;
        for _ in 0..=INDEX_BYTES_MAX / ENTRY_LEN / 256 {
            builder.add_batch(&batch, offset);
            offset += batch.len() as u64;
        }
        assert!(builder.finish().is_none(), "an index past {} MiB is dropped", INDEX_BYTES_MAX >> 20);
    }

    /// A large segment's index, then a small one, through one builder and one scratch buffer,
    /// as the flusher writes them.
    fn index_of(builder: &mut IndexBuilder, id: u64, records: u64) -> HeaderIndex {
        builder.start(SegmentId(id), 5, Lsn(1));
        builder.add_batch(&frames(1, records, 4000), 4096);
        builder.finish().expect("4 KiB records keep their index")
    }

    #[test]
    fn indexes_written_one_after_another_through_reused_memory_read_back_exactly() {
        let storage = crate::storage::SimStorage::new(3, crate::storage::FaultConfig::default());
        let dir = Path::new("/wal");
        storage.create_dir_all(dir).unwrap();
        let (mut builder, mut scratch) = (IndexBuilder::new(64 << 20), IndexScratch::default());
        for (id, records, direct) in [(1, 300, true), (2, 7, true), (3, 120, false), (4, 2, false)] {
            let index = index_of(&mut builder, id, records);
            assert_eq!((index.segment, index.entries().len()), (SegmentId(id), records as usize), "nothing left from the last index");
            write_index(&storage, dir, &index, direct, 4096, &mut scratch);
            let read = read_index(&storage, dir, SegmentId(id), 5, (Lsn(1), Lsn(1 + records)));
            assert_eq!(read.as_ref(), Some(&index), "segment {id}: the file is the index, cut to its length");
            builder.reuse(index);
        }
    }
}
