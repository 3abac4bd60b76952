//! Encoding a record into its reserved bytes, on the appender's thread: header, payload,
//! encryption when the segment is encrypted, and the checksum over what lands on disk.

use super::plan::Identity;
use crate::format::frame::{FLAG_ENCRYPTED, HEADER_LEN, RecordHeader, encode_frame, seal_frame};
use crate::format::preamble::{CIPHER_AES_256_GCM, SegmentPreamble};
use crate::types::{Lsn, RecordType, Scope};

/// What to encode.
pub struct Encode<'a> {
    pub lsn: Lsn,
    pub durable_lsn: Lsn,
    pub record_type: RecordType,
    pub scope: Scope,
    pub flags: u16,
    pub payload: &'a [u8],
}

/// Writes the whole frame into `out`, which is exactly `identity.frame_len(payload.len())` long.
pub fn encode_record(identity: &Identity, rec: &Encode<'_>, out: &mut [u8]) {
    let len = rec.payload.len();
    debug_assert_eq!(out.len(), identity.frame_len(len));
    let mut header = RecordHeader {
        lsn: rec.lsn,
        durable_lsn: rec.durable_lsn,
        salt: identity.salt,
        record_type: rec.record_type,
        scope: rec.scope,
        payload_len: u32::try_from(out.len() - HEADER_LEN).expect("payload length checked by the caller"),
        flags: rec.flags,
    };
    let Some(crypt) = &identity.crypt else {
        encode_frame(&header, rec.payload, out);
        return;
    };
    header.flags |= FLAG_ENCRYPTED;
    header.encode_into(out);
    let (head, body) = out.split_at_mut(HEADER_LEN);
    body[..len].copy_from_slice(rec.payload);
    let tag = crypt.cipher.seal(rec.lsn, head, &mut body[..len]);
    body[len..].copy_from_slice(&tag);
    seal_frame(out, rec.record_type);
}

/// The preamble of a segment with this identity.
pub fn preamble(identity: &Identity) -> SegmentPreamble {
    match &identity.crypt {
        None => SegmentPreamble::plaintext_wal(),
        Some(c) => encrypted_preamble(c.key_id, c.epoch),
    }
}

/// The preamble of a segment encrypted under `key_id` with nonce epoch `epoch`.
pub fn encrypted_preamble(key_id: u32, epoch: u32) -> SegmentPreamble {
    SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id, nonce_epoch: epoch, ..SegmentPreamble::plaintext_wal() }
}
