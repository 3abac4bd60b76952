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
pub const END_FRAME_LEN: usize = HEADER_LEN + SEGMENT_END_PAYLOAD_LEN;

/// Rounds `n` up to a multiple of `block` (a power of two).
#[must_use]
pub const fn round_up(n: u64, block: u64) -> u64 {
    (n + block - 1) & !(block - 1)
}

/// Length of a batch of `used` bytes once padded to the block boundary. The padding is a frame
/// of at least [`HEADER_LEN`] bytes, so when the gap is smaller it spills into one more block.
#[must_use]
pub const fn padded_len(used: usize, block: usize) -> usize {
    let gap = (block - used % block) % block;
    if gap == 0 || gap >= HEADER_LEN { used + gap } else { used + gap + block }
}

/// A meta frame header: no scope, no LSN of its own (it carries the next LSN).
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
pub fn write_segment_end(buf: &mut [u8], at: usize, records_end: u64, next_lsn: Lsn, durable_lsn: Lsn, salt: u32) -> usize {
    let payload = SegmentEndPayload { records_end }.encode();
    let header = meta_header(RecordType::SEGMENT_END, next_lsn, durable_lsn, salt, payload.len());
    encode_frame(&header, &payload, &mut buf[at..])
}

/// Encodes block 0 of a segment (preamble, header frame, padding) into `block` bytes.
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

    #[test]
    fn padded_len_always_leaves_room_for_a_padding_frame() {
        for used in 0..3 * 4096 {
            let p = padded_len(used, 4096);
            assert_eq!(p % 4096, 0);
            assert!(p == used || p - used >= HEADER_LEN, "used {used} padded {p}");
            assert!(p - used < 4096 + HEADER_LEN);
        }
    }
}
