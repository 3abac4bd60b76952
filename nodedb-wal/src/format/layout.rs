//! Where frames go inside a segment: the header block and block-aligned batches.
//!
//! A segment is a sequence of blocks. Block 0 holds the preamble, the segment header frame and
//! padding. Every batch starts on a block boundary and ends on one, its tail filled by a padding
//! frame, so a block that holds acknowledged records is never written again.

use super::frame::{HEADER_LEN, RecordHeader, encode_frame};
use super::meta::{SEGMENT_END_PAYLOAD_LEN, SegmentEndPayload, SegmentHeaderPayload};
use super::preamble::{PREAMBLE_SIZE, SegmentPreamble};
use crate::types::{Lsn, RecordType, Scope};

/// Bytes a sealing frame needs: header plus [`SegmentEndPayload`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::Lsn;
/// use nodedb_wal::format::layout::{END_FRAME_LEN, write_segment_end};
///
/// let mut block = [0u8; 512];
/// assert_eq!(write_segment_end(&mut block, 0, 4096, Lsn(10), Lsn(9), 7), END_FRAME_LEN);
/// ```
pub const END_FRAME_LEN: usize = HEADER_LEN + SEGMENT_END_PAYLOAD_LEN;

/// Rounds `n` up to a multiple of `block` (a power of two).
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::layout::round_up;
///
/// assert_eq!(round_up(5000, 4096), 8192);
/// assert_eq!(round_up(4096, 4096), 4096);
/// assert_eq!(round_up(0, 512), 0);
/// ```
#[must_use]
pub const fn round_up(n: u64, block: u64) -> u64 {
    (n + block - 1) & !(block - 1)
}

/// Length of a batch of `used` bytes once padded to the block boundary. The padding is a frame
/// of at least [`HEADER_LEN`] bytes, so when the gap is smaller it spills into one more block.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::layout::padded_len;
///
/// assert_eq!(padded_len(4096, 4096), 4096, "already on a boundary");
/// assert_eq!(padded_len(100, 4096), 4096);
/// assert_eq!(padded_len(4090, 4096), 8192, "six bytes cannot hold a padding frame");
/// ```
#[must_use]
pub const fn padded_len(used: usize, block: usize) -> usize {
    let gap = (block - used % block) % block;
    if gap == 0 || gap >= HEADER_LEN { used + gap } else { used + gap + block }
}

/// A meta frame header: no scope, no LSN of its own (it carries the next LSN).
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::layout::meta_header;
/// use nodedb_wal::{Lsn, RecordType, Scope};
///
/// let header = meta_header(RecordType::SEGMENT_END, Lsn(10), Lsn(9), 0xBEEF, 16);
/// assert_eq!((header.lsn, header.durable_lsn), (Lsn(10), Lsn(9)));
/// assert_eq!((header.scope, header.flags, header.payload_len), (Scope::default(), 0, 16));
/// ```
#[must_use]
pub fn meta_header(record_type: RecordType, next_lsn: Lsn, durable_lsn: Lsn, salt: u32, payload_len: usize) -> RecordHeader {
    RecordHeader {
        lsn: next_lsn,
        durable_lsn,
        salt,
        record_type,
        scope: Scope::default(),
        payload_len: u32::try_from(payload_len).expect("meta payloads are small"),
        flags: 0,
    }
}

/// Fills `buf[used..]` (whose length is already the padded length) with one padding frame.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::decode_frame;
/// use nodedb_wal::format::layout::{padded_len, write_padding};
/// use nodedb_wal::{Lsn, RecordType};
///
/// let used = 100; // bytes of records already in the batch
/// let mut batch = vec![0u8; padded_len(used, 4096)];
/// write_padding(&mut batch, used, Lsn(5), Lsn(4), 7);
/// let padding = decode_frame(&batch[used..])?;
/// assert_eq!(padding.record_type, RecordType::PADDING);
/// assert_eq!(used + padding.frame_len(), 4096, "the batch ends on the block boundary");
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
pub fn write_padding(buf: &mut [u8], used: usize, next_lsn: Lsn, durable_lsn: Lsn, salt: u32) {
    let gap = buf.len() - used;
    if gap == 0 {
        return;
    }
    assert!(gap >= HEADER_LEN, "padding gap {gap} smaller than a header");
    let header = meta_header(RecordType::PADDING, next_lsn, durable_lsn, salt, gap - HEADER_LEN);
    let tail = &mut buf[used..];
    tail[HEADER_LEN..].fill(0);
    header.encode_into(tail);
    super::frame::seal_frame(tail, RecordType::PADDING);
}

/// Writes a sealing frame at `buf[at..]`; returns the bytes written.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, decode_frame};
/// use nodedb_wal::format::layout::write_segment_end;
/// use nodedb_wal::format::meta::SegmentEndPayload;
/// use nodedb_wal::{Lsn, RecordType};
///
/// let mut buf = [0u8; 512];
/// let len = write_segment_end(&mut buf, 64, 8192, Lsn(10), Lsn(9), 7);
/// let end = decode_frame(&buf[64..])?;
/// assert_eq!((end.record_type, end.frame_len()), (RecordType::SEGMENT_END, len));
/// let payload = SegmentEndPayload::decode(&buf[64 + HEADER_LEN..64 + len]).expect("valid payload");
/// assert_eq!(payload.records_end, 8192);
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
pub fn write_segment_end(buf: &mut [u8], at: usize, records_end: u64, next_lsn: Lsn, durable_lsn: Lsn, salt: u32) -> usize {
    let payload = SegmentEndPayload { records_end }.encode();
    let header = meta_header(RecordType::SEGMENT_END, next_lsn, durable_lsn, salt, payload.len());
    encode_frame(&header, &payload, &mut buf[at..])
}

/// Encodes block 0 of a segment (preamble, header frame, padding) into `block` bytes.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::frame::{HEADER_LEN, decode_frame};
/// use nodedb_wal::format::layout::write_header_block;
/// use nodedb_wal::format::meta::SegmentHeaderPayload;
/// use nodedb_wal::{Lsn, PREAMBLE_SIZE, RecordType, SegmentId, SegmentPreamble};
///
/// let header = SegmentHeaderPayload { segment_id: SegmentId(3), first_lsn: Lsn(100), salt: 9, block_len: 4096, kdf_salt: [0; 16] };
/// let mut block = vec![0xFFu8; 4096];
/// write_header_block(&mut block, &SegmentPreamble::plaintext_wal(), &header, Lsn(99));
/// assert_eq!(SegmentPreamble::decode(&block), Ok(SegmentPreamble::plaintext_wal()));
/// let frame = decode_frame(&block[PREAMBLE_SIZE..])?;
/// assert_eq!((frame.record_type, frame.lsn), (RecordType::SEGMENT_HEADER, Lsn(100)));
/// let payload = &block[PREAMBLE_SIZE + HEADER_LEN..PREAMBLE_SIZE + frame.frame_len()];
/// assert_eq!(SegmentHeaderPayload::decode(payload), Some(header));
/// # Ok::<(), nodedb_wal::format::frame::FrameError>(())
/// ```
pub fn write_header_block(buf: &mut [u8], preamble: &SegmentPreamble, header: &SegmentHeaderPayload, durable_lsn: Lsn) {
    buf.fill(0);
    buf[..PREAMBLE_SIZE].copy_from_slice(&preamble.encode());
    let payload = header.encode();
    let frame = meta_header(RecordType::SEGMENT_HEADER, header.first_lsn, durable_lsn, header.salt, payload.len());
    let used = PREAMBLE_SIZE + encode_frame(&frame, &payload, &mut buf[PREAMBLE_SIZE..]);
    write_padding(buf, used, header.first_lsn, durable_lsn, header.salt);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::frame::decode_frame;

    #[test]
    fn padded_len_always_leaves_room_for_a_padding_frame() {
        for used in 0..3 * 4096 {
            let p = padded_len(used, 4096);
            assert_eq!(p % 4096, 0);
            assert!(p == used || p - used >= HEADER_LEN, "used {used} padded {p}");
            assert!(p - used < 4096 + HEADER_LEN);
        }
    }

    #[test]
    fn round_up_gives_the_first_multiple_of_the_block_at_or_after_n() {
        for block in [512u64, 4096, 1 << 20] {
            for n in [0, 1, block - 1, block, block + 1, 3 * block - 1, 3 * block] {
                let up = round_up(n, block);
                assert!(up.is_multiple_of(block) && up >= n && up - n < block, "round_up({n}, {block}) = {up}");
            }
        }
        assert_eq!((round_up(1, 4096), round_up(4097, 4096), round_up(8192, 4096)), (4096, 8192, 8192));
    }

    /// The padding frame takes the batch exactly to its padded length, and zeroes what it covers.
    #[test]
    fn padding_is_one_frame_from_the_last_record_to_the_batch_end() {
        for used in [0, 100, 4096 - HEADER_LEN, 4090, 4096 + 1] {
            let mut batch = vec![0xEEu8; padded_len(used, 4096)];
            write_padding(&mut batch, used, Lsn(5), Lsn(4), 7);
            if batch.len() == used {
                continue;
            }
            assert!(batch[..used].iter().all(|&b| b == 0xEE), "used {used}: the records stay as they were");
            let padding = decode_frame(&batch[used..]).expect("a padding frame");
            assert_eq!(padding, meta_header(RecordType::PADDING, Lsn(5), Lsn(4), 7, batch.len() - used - HEADER_LEN));
            assert!(batch[used + HEADER_LEN..].iter().all(|&b| b == 0), "used {used}: the padding is zeros");
        }
    }

    #[test]
    fn a_batch_already_on_its_boundary_gets_no_padding() {
        let mut batch = vec![0xEEu8; 4096];
        write_padding(&mut batch, 4096, Lsn(5), Lsn(4), 7);
        assert!(batch.iter().all(|&b| b == 0xEE));
    }

    #[test]
    fn a_segment_end_frame_is_as_long_as_its_header_and_payload() {
        assert_eq!(END_FRAME_LEN, HEADER_LEN + 16);
        let mut buf = [0u8; 512];
        assert_eq!(write_segment_end(&mut buf, 64, 8192, Lsn(10), Lsn(9), 7), END_FRAME_LEN);
        let end = decode_frame(&buf[64..]).expect("an end frame");
        assert_eq!(end, meta_header(RecordType::SEGMENT_END, Lsn(10), Lsn(9), 7, 16));
        assert_eq!(SegmentEndPayload::decode(&buf[64 + HEADER_LEN..64 + END_FRAME_LEN]), Some(SegmentEndPayload { records_end: 8192 }));
    }

    /// Block 0 is the preamble, the header frame right after it, then padding to the block's end.
    #[test]
    fn the_header_block_is_preamble_header_frame_and_padding_to_its_end() {
        let header = SegmentHeaderPayload {
            segment_id: crate::types::SegmentId(3),
            first_lsn: Lsn(100),
            salt: 9,
            block_len: 512,
            kdf_salt: [0; 16],
        };
        let mut block = vec![0xFFu8; 512];
        write_header_block(&mut block, &SegmentPreamble::plaintext_wal(), &header, Lsn(99));
        assert_eq!(SegmentPreamble::decode(&block), Ok(SegmentPreamble::plaintext_wal()));
        let frame = decode_frame(&block[PREAMBLE_SIZE..]).expect("the header frame");
        assert_eq!(frame, meta_header(RecordType::SEGMENT_HEADER, Lsn(100), Lsn(99), 9, 40));
        let used = PREAMBLE_SIZE + frame.frame_len();
        assert_eq!(SegmentHeaderPayload::decode(&block[PREAMBLE_SIZE + HEADER_LEN..used]), Some(header));
        let padding = decode_frame(&block[used..]).expect("padding after the header frame");
        assert_eq!((padding.record_type, used + padding.frame_len()), (RecordType::PADDING, 512));
    }
}
