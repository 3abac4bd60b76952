//! Finding complete batches in an image of the ring. Pure: bytes in, slots out.
//!
//! A batch starts on a [`BATCH_ALIGN`] boundary with the slot whose sequence is the batch's
//! own (`seq == batch_seq`) and is complete when all `batch_slots` slots follow it, packed, each
//! intact, in sequence and of the same epoch. Only complete batches count: a batch is written to the ring and
//! synced before any of its pages is written in place, so a batch a crash tore never had an
//! in-place write that needs repairing, and ignoring it keeps its pages at their old images.
//! The scanner tries every boundary, so it needs neither the file header nor a write position,
//! and a batch torn in its middle costs only the boundaries it spans.

use crate::format::dwb::{BATCH_ALIGN, SLOT_HEADER_LEN, SlotHeader, decode_slot};

/// An intact slot of a complete batch.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::dwb::scan::scan_ring;
/// use nodedb_wal::format::dwb::{SlotHeader, encode_slot};
///
/// let mut ring = vec![0u8; 4096];
/// let header = SlotHeader { file: FileId(3), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 64, page_no: 12, epoch: 1, salt: 0x5EED };
/// encode_slot(&header, &[0u8; 64], &mut ring[512..]);
/// let slot = scan_ring(&ring, 0x5EED).batches[0].slots[0];
/// assert_eq!((slot.header, slot.offset), (header, 512));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoundSlot {
    /// Its header.
    pub header: SlotHeader,
    /// Where the slot starts in the scanned image; the page image follows its header.
    pub offset: usize,
}

impl FoundSlot {
    /// The page image's byte range in the scanned image.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::FileId;
    /// use nodedb_wal::dwb::scan::scan_ring;
    /// use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, SlotHeader, encode_slot};
    ///
    /// let mut ring = vec![0u8; 4096];
    /// let header = SlotHeader { file: FileId(1), seq: 1, batch_seq: 1, batch_slots: 1, page_len: 100, page_no: 0, epoch: 1, salt: 0x5EED };
    /// encode_slot(&header, &[9u8; 100], &mut ring);
    /// let slot = scan_ring(&ring, 0x5EED).batches[0].slots[0];
    /// assert_eq!(slot.image_range(), SLOT_HEADER_LEN..SLOT_HEADER_LEN + 100);
    /// assert_eq!(ring[slot.image_range()], [9u8; 100]);
    /// ```
    #[must_use]
    pub fn image_range(&self) -> std::ops::Range<usize> {
        let start = self.offset + SLOT_HEADER_LEN;
        start..start + self.header.page_len as usize
    }
}

/// A complete batch: every slot it names was found intact.
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::dwb::scan::scan_ring;
/// use nodedb_wal::format::dwb::{SlotHeader, encode_slot, slot_len};
///
/// let mut ring = vec![0u8; 4096];
/// let first = SlotHeader { file: FileId(1), seq: 20, batch_seq: 20, batch_slots: 2, page_len: 100, page_no: 0, epoch: 4, salt: 0x5EED };
/// let at = encode_slot(&first, &[1u8; 100], &mut ring);
/// encode_slot(&SlotHeader { seq: 21, page_no: 1, ..first }, &[2u8; 100], &mut ring[at..]);
/// let batch = &scan_ring(&ring, 0x5EED).batches[0];
/// assert_eq!((batch.offset, batch.end, batch.slots.len()), (0, 2 * slot_len(100), 2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundBatch {
    /// Where it starts in the scanned image.
    pub offset: usize,
    /// Where its last slot ends.
    pub end: usize,
    /// Its slots, in sequence order.
    pub slots: Vec<FoundSlot>,
}

/// What a scan of the ring found.
///
/// # Examples
///
/// ```
/// use nodedb_wal::dwb::scan::{RingScan, scan_ring};
///
/// // A freshly zeroed ring holds no batch, whole or torn.
/// assert_eq!(scan_ring(&[0u8; 8192], 0x5EED), RingScan::default());
/// assert_eq!(RingScan::default().seq_max, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingScan {
    /// Complete batches, in the order they lie in the image (not sequence order).
    pub batches: Vec<FoundBatch>,
    /// Batch starts that were intact but whose batch was not (torn, or partly overwritten).
    pub incomplete_batches: usize,
    /// The highest sequence of any intact slot of the file's salt, complete batch or not (0 if
    /// none): new slots are numbered above it, so a sequence is never reused while a slot that
    /// could count still carries it.
    pub seq_max: u64,
    /// Batch starts that were intact slots of another salt, ignored: slots of version 1 left
    /// from before the file's upgrade, a slot spelled out inside a page image, a slot from
    /// another buffer file.
    pub other_salt: usize,
}

impl RingScan {
    /// The complete batch with the highest sequence, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::FileId;
    /// use nodedb_wal::dwb::scan::scan_ring;
    /// use nodedb_wal::format::dwb::{SlotHeader, encode_slot};
    ///
    /// let mut ring = vec![0u8; 8192];
    /// let slot = |seq| SlotHeader { file: FileId(1), seq, batch_seq: seq, batch_slots: 1, page_len: 64, page_no: 0, epoch: 1, salt: 0x5EED };
    /// // The ring wrapped: the newer batch lies before the older one.
    /// encode_slot(&slot(8), &[8u8; 64], &mut ring[..]);
    /// encode_slot(&slot(5), &[5u8; 64], &mut ring[4096..]);
    /// let scan = scan_ring(&ring, 0x5EED);
    /// assert_eq!(scan.batches.len(), 2);
    /// assert_eq!(scan.newest().map(|b| b.offset), Some(0));
    /// assert!(scan_ring(&[0u8; 4096], 0x5EED).newest().is_none());
    /// ```
    #[must_use]
    pub fn newest(&self) -> Option<&FoundBatch> {
        self.batches.iter().max_by_key(|b| b.slots[0].header.batch_seq)
    }
}

/// Scans a ring image for complete batches of slots that carry `salt` (the file header's; 0
/// for a version 1 file).
///
/// # Examples
///
/// ```
/// use nodedb_wal::FileId;
/// use nodedb_wal::dwb::scan::scan_ring;
/// use nodedb_wal::format::dwb::{SlotHeader, encode_slot};
///
/// // A batch of two pages, sequences 10 and 11, packed one after the other.
/// let mut ring = vec![0u8; 4096];
/// let first = SlotHeader { file: FileId(1), seq: 10, batch_seq: 10, batch_slots: 2, page_len: 512, page_no: 3, epoch: 7, salt: 0x5EED };
/// let at = encode_slot(&first, &[1u8; 512], &mut ring);
/// let second = SlotHeader { seq: 11, page_no: 4, ..first };
/// let end = at + encode_slot(&second, &[2u8; 512], &mut ring[at..]);
///
/// let scan = scan_ring(&ring, 0x5EED);
/// assert_eq!((scan.batches.len(), scan.seq_max), (1, 11));
/// let batch = &scan.batches[0];
/// assert_eq!((batch.offset, batch.end), (0, end));
/// assert_eq!(batch.slots.iter().map(|s| s.header.page_no).collect::<Vec<_>>(), [3, 4]);
///
/// // Another file's salt: not this file's batch.
/// let scan = scan_ring(&ring, 0xD1FF);
/// assert_eq!((scan.batches.len(), scan.other_salt), (0, 1));
///
/// // Without its second slot the batch is incomplete, and ignored.
/// ring[at..end].fill(0);
/// let scan = scan_ring(&ring, 0x5EED);
/// assert_eq!((scan.batches.len(), scan.incomplete_batches), (0, 1));
/// ```
#[must_use]
pub fn scan_ring(image: &[u8], salt: u32) -> RingScan {
    let mut scan = RingScan::default();
    let mut at = 0;
    while at + SLOT_HEADER_LEN <= image.len() {
        match try_batch(image, at, salt, &mut scan.seq_max) {
            Walk::Complete(batch) => {
                at = batch.end.next_multiple_of(BATCH_ALIGN);
                scan.batches.push(batch);
            }
            Walk::Incomplete => {
                scan.incomplete_batches += 1;
                at += BATCH_ALIGN;
            }
            Walk::OtherSalt => {
                scan.other_salt += 1;
                at += BATCH_ALIGN;
            }
            Walk::NoBatch => at += BATCH_ALIGN,
        }
    }
    scan
}

enum Walk {
    Complete(FoundBatch),
    Incomplete,
    OtherSalt,
    NoBatch,
}

/// Walks the batch of `salt` that may start at `start`, raising `seq_max` for every intact
/// slot of that salt seen.
fn try_batch(image: &[u8], start: usize, salt: u32, seq_max: &mut u64) -> Walk {
    let Ok(first) = decode_slot(&image[start..]) else { return Walk::NoBatch };
    if first.salt != salt {
        return Walk::OtherSalt;
    }
    *seq_max = (*seq_max).max(first.seq);
    if first.seq != first.batch_seq {
        return Walk::NoBatch;
    }
    let mut slots = vec![FoundSlot { header: first, offset: start }];
    let mut at = start + first.slot_len();
    for index in 1..u64::from(first.batch_slots) {
        let Some(rest) = image.get(at..) else { return Walk::Incomplete };
        let Ok(header) = decode_slot(rest) else { return Walk::Incomplete };
        if header.salt != salt {
            return Walk::Incomplete;
        }
        *seq_max = (*seq_max).max(header.seq);
        let same_batch = header.epoch == first.epoch && header.batch_seq == first.batch_seq && header.batch_slots == first.batch_slots;
        if !same_batch || header.index() != index {
            return Walk::Incomplete;
        }
        slots.push(FoundSlot { header, offset: at });
        at += header.slot_len();
    }
    Walk::Complete(FoundBatch { offset: start, end: at, slots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dwb::{FileId, encode_slot};

    const SALT: u32 = 0x5EED;

    /// Encodes a batch of `pages` slots (page `i` of `len` bytes filled with `i`) at `at`.
    fn put_batch(image: &mut [u8], at: usize, batch_seq: u64, pages: u32, len: u32) -> usize {
        let mut pos = at;
        for i in 0..pages {
            let seq = batch_seq + u64::from(i);
            let header = SlotHeader {
                file: FileId(1),
                seq,
                batch_seq,
                batch_slots: pages,
                page_len: len,
                page_no: u64::from(i),
                epoch: 5,
                salt: SALT,
            };
            pos += encode_slot(&header, &vec![i as u8; len as usize], &mut image[pos..]);
        }
        pos
    }

    #[test]
    fn complete_batches_are_found_wherever_they_start() {
        let mut image = vec![0u8; 16 * 1024];
        let end = put_batch(&mut image, 0, 1, 3, 1000);
        put_batch(&mut image, 8192, 4, 2, 700);
        let scan = scan_ring(&image, SALT);
        assert_eq!(scan.batches.len(), 2);
        assert_eq!(scan.batches[0].end, end);
        assert_eq!(scan.batches[1].offset, 8192);
        assert_eq!(scan.newest().unwrap().slots[0].header.batch_seq, 4);
        assert_eq!(scan.seq_max, 5);
        assert_eq!(&image[scan.batches[1].slots[1].image_range()], &[1u8; 700][..]);
    }

    #[test]
    fn a_batch_with_one_torn_slot_is_ignored_but_its_sequences_are_counted() {
        let mut image = vec![0u8; 16 * 1024];
        put_batch(&mut image, 0, 10, 4, 1500);
        // Tear the third slot's image.
        image[2 * 1560 + 100] ^= 0xFF;
        let scan = scan_ring(&image, SALT);
        assert!(scan.batches.is_empty());
        assert_eq!(scan.incomplete_batches, 1);
        assert_eq!(scan.seq_max, 11, "the intact slots before the tear still count");
    }

    #[test]
    fn slots_of_another_epoch_never_complete_a_batch() {
        let mut image = vec![0u8; 16 * 1024];
        let second = put_batch(&mut image, 0, 10, 2, 1000);
        // The same batch numbers from another life, written over the first slot only.
        let header =
            SlotHeader { file: FileId(1), seq: 10, batch_seq: 10, batch_slots: 2, page_len: 1000, page_no: 9, epoch: 6, salt: 0x5EED };
        encode_slot(&header, &[9; 1000], &mut image);
        assert!(second > 1064);
        let scan = scan_ring(&image, SALT);
        assert!(scan.batches.is_empty(), "a torn new batch must not borrow an old batch's slots");
    }

    #[test]
    fn a_slot_of_another_salt_is_no_batch_and_does_not_count_its_sequence() {
        let mut image = vec![0u8; 16 * 1024];
        put_batch(&mut image, 0, 10, 2, 1000);
        // A slot spelled out inside a page image: right in every field but the salt.
        let forged = SlotHeader {
            file: FileId(1),
            seq: 1 << 40,
            batch_seq: 1 << 40,
            batch_slots: 1,
            page_len: 100,
            page_no: 3,
            epoch: 5,
            salt: SALT ^ 1,
        };
        encode_slot(&forged, &[0xAB; 100], &mut image[8192..]);
        let scan = scan_ring(&image, SALT);
        assert_eq!(scan.batches.len(), 1);
        assert_eq!((scan.other_salt, scan.seq_max), (1, 11));
    }

    #[test]
    fn a_batch_is_incomplete_where_a_slot_of_another_salt_follows() {
        let mut image = vec![0u8; 16 * 1024];
        put_batch(&mut image, 0, 10, 2, 1000);
        let second = SlotHeader { file: FileId(1), seq: 11, batch_seq: 10, batch_slots: 2, page_len: 1000, page_no: 1, epoch: 5, salt: 0 };
        encode_slot(&second, &[1; 1000], &mut image[1056..]);
        let scan = scan_ring(&image, SALT);
        assert_eq!((scan.batches.len(), scan.incomplete_batches, scan.seq_max), (0, 1, 10));
    }

    #[test]
    fn zeros_and_noise_hold_no_batch() {
        assert_eq!(scan_ring(&[0u8; 8192], SALT), RingScan::default());
        let noise: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(scan_ring(&noise, SALT).batches.is_empty());
    }
}
