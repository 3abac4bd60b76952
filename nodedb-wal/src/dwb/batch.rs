//! Packing pages into batches: which pages go together, and their bytes in the ring.
//!
//! Slots are packed one after another (each rounded up to 8 bytes), and only the batch as a
//! whole is padded to the block length: a small page costs its own bytes and a 56-byte header,
//! never a fixed oversized slot.

use super::targets::PageWrite;
use crate::format::dwb::{SlotHeader, encode_slot, slot_len};

/// How many of `pages`, from the front, fit in one batch of at most `batch_bytes_max` bytes.
/// At least one: registration guarantees that every page fits a batch on its own.
#[must_use]
pub(super) fn batch_prefix(pages: &[PageWrite<'_>], batch_bytes_max: usize) -> usize {
    let mut used = 0;
    for (count, &(_, _, bytes)) in pages.iter().enumerate() {
        used += slot_len(bytes.len());
        if used > batch_bytes_max {
            return count.max(1);
        }
    }
    pages.len()
}

/// Encodes `pages` as one batch whose first slot has sequence `batch_seq`, its slots stamped
/// with this life's `epoch` and the file's `salt`, padded with zeros to a multiple of
/// `block_len`. Returns the padded length. `out` must be large enough.
pub(super) fn encode_batch(pages: &[PageWrite<'_>], batch_seq: u64, (epoch, salt): (u32, u32), block_len: usize, out: &mut [u8]) -> usize {
    let batch_slots = u32::try_from(pages.len()).expect("a batch holds fewer than 2^32 pages");
    let mut at = 0;
    for (index, &(file, page_no, bytes)) in (0u64..).zip(pages) {
        let page_len = u32::try_from(bytes.len()).expect("registration bounds page lengths");
        let header = SlotHeader { file, seq: batch_seq + index, batch_seq, batch_slots, page_len, page_no, epoch, salt };
        at += encode_slot(&header, bytes, &mut out[at..]);
    }
    let padded = at.next_multiple_of(block_len);
    out[at..padded].fill(0);
    padded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dwb::scan::scan_ring;
    use crate::format::dwb::FileId;

    #[test]
    fn batches_hold_as_many_pages_as_fit_and_at_least_one() {
        let page = [7u8; 1000];
        let pages: Vec<PageWrite<'_>> = (0..10).map(|i| (FileId(1), i, &page[..])).collect();
        assert_eq!(batch_prefix(&pages, 4096), 3, "1056-byte slots, three in 4 KiB");
        assert_eq!(batch_prefix(&pages, 100), 1);
        assert_eq!(batch_prefix(&pages, 1 << 20), 10);
    }

    #[test]
    fn an_encoded_batch_scans_back_as_one_complete_batch() {
        let a = [1u8; 4096];
        let b = [2u8; 100];
        let pages: Vec<PageWrite<'_>> = vec![(FileId(1), 5, &a), (FileId(2), 9, &b), (FileId(1), 5, &a)];
        let mut out = vec![0xEEu8; 16384];
        let len = encode_batch(&pages, 40, (3, 0x5EED), 4096, &mut out);
        assert_eq!(len, 12288, "8464 bytes of slots, padded to three blocks");
        let scan = scan_ring(&out[..len], 0x5EED);
        assert_eq!(scan.batches.len(), 1);
        let seqs: Vec<u64> = scan.batches[0].slots.iter().map(|s| s.header.seq).collect();
        assert_eq!(seqs, [40, 41, 42]);
        assert_eq!(&out[scan.batches[0].slots[1].image_range()], &b[..]);
    }
}
