//! Payloads of the meta frames that structure a segment.

use super::read_le;
use crate::types::{Lsn, SegmentId};

/// Bytes in a [`SegmentHeaderPayload`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::meta::{SEGMENT_HEADER_PAYLOAD_LEN, SegmentHeaderPayload};
/// use nodedb_wal::{Lsn, SegmentId};
///
/// let header = SegmentHeaderPayload { segment_id: SegmentId(1), first_lsn: Lsn(1), salt: 2, block_len: 4096, kdf_salt: [0; 16] };
/// assert_eq!(header.encode().len(), SEGMENT_HEADER_PAYLOAD_LEN);
/// ```
pub const SEGMENT_HEADER_PAYLOAD_LEN: usize = 40;

/// Whether `len` is a block length the format allows: a power of two from 512 bytes to 1 MiB.
/// Writers are held to it as readers are, so a reader never meets a segment a writer of this
/// crate made and it cannot read.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::meta::is_block_len;
///
/// assert!(is_block_len(512) && is_block_len(4096) && is_block_len(1 << 20));
/// assert!(!is_block_len(256) && !is_block_len(3000) && !is_block_len(2 << 20));
/// ```
#[must_use]
pub const fn is_block_len(len: u64) -> bool {
    len.is_power_of_two() && len >= 512 && len <= 1 << 20
}
/// Bytes in a [`SegmentEndPayload`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::meta::{SEGMENT_END_PAYLOAD_LEN, SegmentEndPayload};
///
/// assert_eq!(SegmentEndPayload { records_end: 8192 }.encode().len(), SEGMENT_END_PAYLOAD_LEN);
/// ```
pub const SEGMENT_END_PAYLOAD_LEN: usize = 16;

/// Payload of the frame right after the preamble: who the segment is.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::meta::SegmentHeaderPayload;
/// use nodedb_wal::{Lsn, SegmentId};
///
/// let header = SegmentHeaderPayload { segment_id: SegmentId(9), first_lsn: Lsn(1000), salt: 77, block_len: 4096, kdf_salt: [3; 16] };
/// let bytes = header.encode();
/// assert_eq!(SegmentHeaderPayload::decode(&bytes), Some(header));
/// assert_eq!(SegmentHeaderPayload::decode(&bytes[..39]), None, "wrong length");
/// let odd_block = SegmentHeaderPayload { block_len: 1000, ..header };
/// assert_eq!(SegmentHeaderPayload::decode(&odd_block.encode()), None, "not a power of two");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeaderPayload {
    /// Must equal the id in the file name: a copied or renamed file is caught.
    pub segment_id: SegmentId,
    /// LSN of the segment's first data record.
    pub first_lsn: Lsn,
    /// The salt every frame of the segment carries.
    pub salt: u32,
    /// The block size the segment was written with: batches start and end on its multiples.
    pub block_len: u32,
    /// Reserved for the encryption envelope's key derivation; zero in version 1 plaintext.
    pub kdf_salt: [u8; 16],
}

impl SegmentHeaderPayload {
    /// Encodes into exactly [`SEGMENT_HEADER_PAYLOAD_LEN`] bytes. See [`SegmentHeaderPayload`]
    /// for an example.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_PAYLOAD_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_PAYLOAD_LEN];
        out[0..8].copy_from_slice(&self.segment_id.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.salt.to_le_bytes());
        out[20..24].copy_from_slice(&self.block_len.to_le_bytes());
        out[24..40].copy_from_slice(&self.kdf_salt);
        out
    }

    /// Decodes; `None` if the length is wrong, the block size is not a power of two in
    /// `512..=1 MiB`, or the first LSN is outside `1..=Lsn::LIMIT`. See
    /// [`SegmentHeaderPayload`] for an example.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<SegmentHeaderPayload> {
        if bytes.len() != SEGMENT_HEADER_PAYLOAD_LEN {
            return None;
        }
        let block_len = read_le!(u32, bytes, 20);
        if !is_block_len(u64::from(block_len)) {
            return None;
        }
        if !(Lsn::FIRST.0..=Lsn::LIMIT.0).contains(&read_le!(u64, bytes, 8)) {
            return None;
        }
        let mut kdf_salt = [0u8; 16];
        kdf_salt.copy_from_slice(&bytes[24..40]);
        Some(SegmentHeaderPayload {
            segment_id: SegmentId(read_le!(u64, bytes, 0)),
            first_lsn: Lsn(read_le!(u64, bytes, 8)),
            salt: read_le!(u32, bytes, 16),
            block_len,
            kdf_salt,
        })
    }
}

/// Payload of the frame that seals a segment.
///
/// # Examples
///
/// ```
/// use nodedb_wal::format::meta::SegmentEndPayload;
///
/// let end = SegmentEndPayload { records_end: 8192 };
/// let mut bytes = end.encode();
/// assert_eq!(SegmentEndPayload::decode(&bytes), Some(end));
/// bytes[15] = 1; // reserved bytes must stay zero
/// assert_eq!(SegmentEndPayload::decode(&bytes), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentEndPayload {
    /// Where the segment's records end. Equal to the end frame's own offset when the writer
    /// sealed the segment; smaller when recovery sealed it after cutting a torn tail, in which
    /// case the bytes between this offset and the end frame are debris that readers skip.
    pub records_end: u64,
}

impl SegmentEndPayload {
    /// Encodes into exactly [`SEGMENT_END_PAYLOAD_LEN`] bytes. See [`SegmentEndPayload`] for an
    /// example.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_END_PAYLOAD_LEN] {
        let mut out = [0u8; SEGMENT_END_PAYLOAD_LEN];
        out[0..8].copy_from_slice(&self.records_end.to_le_bytes());
        out
    }

    /// Decodes; `None` if the length is wrong or reserved bytes are set. See
    /// [`SegmentEndPayload`] for an example.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<SegmentEndPayload> {
        if bytes.len() != SEGMENT_END_PAYLOAD_LEN || read_le!(u64, bytes, 8) != 0 {
            return None;
        }
        Some(SegmentEndPayload { records_end: read_le!(u64, bytes, 0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips() {
        let h = SegmentHeaderPayload { segment_id: SegmentId(9), first_lsn: Lsn(1000), salt: 77, block_len: 4096, kdf_salt: [3; 16] };
        assert_eq!(SegmentHeaderPayload::decode(&h.encode()), Some(h));
        assert_eq!(SegmentHeaderPayload::decode(&h.encode()[..39]), None);
    }

    #[test]
    fn a_segment_header_whose_first_lsn_is_zero_or_past_the_limit_is_refused() {
        let at =
            |lsn: u64| SegmentHeaderPayload { segment_id: SegmentId(9), first_lsn: Lsn(lsn), salt: 77, block_len: 4096, kdf_salt: [0; 16] };
        for lsn in [1, 1000, Lsn::LIMIT.0 - 1, Lsn::LIMIT.0] {
            assert_eq!(SegmentHeaderPayload::decode(&at(lsn).encode()), Some(at(lsn)), "first LSN {lsn}");
        }
        // A checksummed header past the limit would let LSN arithmetic wrap; zero is no LSN.
        for lsn in [0, Lsn::LIMIT.0 + 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(SegmentHeaderPayload::decode(&at(lsn).encode()), None, "first LSN {lsn}");
        }
    }

    #[test]
    fn segment_end_round_trips() {
        let e = SegmentEndPayload { records_end: 8192 };
        assert_eq!(SegmentEndPayload::decode(&e.encode()), Some(e));
        let mut bad = e.encode();
        bad[15] = 1;
        assert_eq!(SegmentEndPayload::decode(&bad), None);
    }

    #[test]
    fn block_lengths_are_exactly_the_powers_of_two_from_512_bytes_to_1_mib() {
        for shift in 0..64 {
            assert_eq!(is_block_len(1 << shift), (9..=20).contains(&shift), "2^{shift}");
        }
        for len in [0, 3, 513, 3000, 4095, 4097, (1 << 20) - 1, (1 << 20) + 512, u64::MAX] {
            assert!(!is_block_len(len), "{len}");
        }
    }

    #[test]
    fn a_segment_header_with_a_block_length_off_the_format_is_refused() {
        let with = |block_len| SegmentHeaderPayload { segment_id: SegmentId(9), first_lsn: Lsn(1), salt: 77, block_len, kdf_salt: [0; 16] };
        for block_len in [512, 4096, 1 << 20] {
            assert_eq!(SegmentHeaderPayload::decode(&with(block_len).encode()), Some(with(block_len)), "{block_len}");
        }
        for block_len in [0, 256, 1000, 2 << 20] {
            assert_eq!(SegmentHeaderPayload::decode(&with(block_len).encode()), None, "{block_len}");
        }
    }

    #[test]
    fn segment_header_fields_lie_where_the_format_table_puts_them() {
        let h = SegmentHeaderPayload {
            segment_id: SegmentId(0x0102_0304_0506_0708),
            first_lsn: Lsn(0x1112_1314),
            salt: 0x2122_2324,
            block_len: 4096,
            kdf_salt: [0x31; 16],
        };
        let bytes = h.encode();
        assert_eq!(bytes[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[8..16], 0x1112_1314u64.to_le_bytes());
        assert_eq!(bytes[16..20], 0x2122_2324u32.to_le_bytes());
        assert_eq!(bytes[20..24], 4096u32.to_le_bytes());
        assert_eq!(bytes[24..40], [0x31; 16]);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(SegmentHeaderPayload::decode(&longer), None);
    }

    /// Any other length is refused, not read past its end.
    #[test]
    fn a_segment_end_of_any_other_length_is_refused() {
        let bytes = SegmentEndPayload { records_end: 8192 }.encode();
        assert_eq!(bytes[0..8], 8192u64.to_le_bytes());
        for len in [0, 8, 15] {
            assert_eq!(SegmentEndPayload::decode(&bytes[..len]), None, "{len} bytes");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(SegmentEndPayload::decode(&longer), None, "17 bytes");
    }
}
