//! The keys and plaintext of a segment's records, for readers and recovery alike, and which key
//! each listed segment is under.

use std::io::ErrorKind;
use std::path::Path;

use super::SegmentInfo;
use super::scan::{self, SegmentHead};
use crate::crypto::{KeyRing, SegmentCipher, TAG_LEN};
use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::format::frame::{FLAG_ENCRYPTED, HEADER_LEN, RecordHeader};
use crate::format::preamble::CIPHER_AES_256_GCM;
use crate::storage::{OpenMode, Storage, StorageFile};
use crate::types::SegmentId;

/// The key id each of `segments` is encrypted under (`None` for plaintext), from its preamble,
/// in their order. A segment gone since it was listed (truncated, or kept and already reused as
/// a later one) is left out.
pub(crate) fn key_ids<S: Storage>(storage: &S, dir: &Path, segments: &[SegmentInfo]) -> Result<Vec<(SegmentId, Option<u32>)>> {
    let mut keys = Vec::new();
    for info in segments {
        if let Some(key) = key_id(storage, dir, info.id)? {
            keys.push((info.id, key));
        }
    }
    Ok(keys)
}

/// The key id a segment's preamble names (`Some(None)` for plaintext), or `None` where the
/// segment is gone: removed by a truncation, or kept and already reused as a later one.
fn key_id<S: Storage>(storage: &S, dir: &Path, id: SegmentId) -> Result<Option<Option<u32>>> {
    let path = super::path(dir, id);
    let mode = OpenMode { create: false, write: false, direct: false, create_new: false };
    let file = match storage.open(&path, mode) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(IoOp::Open, &path, e)),
    };
    // Held as every reader holds a segment: the writer then cannot turn this file into a new
    // segment (rewriting its head) while it is read, which could read as a damaged head.
    file.hold_shared().map_err(|e| WalError::io(IoOp::Lock, &path, e))?;
    let mut first = vec![0u8; scan::HEAD_BYTES];
    let len = file.read_at(&mut first, 0).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
    // The log wrote (or recovery checked) this head: one that no longer decodes was damaged
    // since, and one naming another segment is a kept file reused after it was truncated.
    let head = scan::decode_head(&first[..len], id)?.ok_or(WalError::Corruption {
        segment: id,
        offset: 0,
        kind: CorruptionKind::BadSegmentHeader,
    })?;
    if head.header.segment_id != id {
        return Ok(None);
    }
    Ok(Some((head.preamble.cipher == CIPHER_AES_256_GCM).then_some(head.preamble.key_id)))
}

/// The cipher of an encrypted segment (its key named by the preamble); `None` for plaintext.
pub fn cipher_for(ring: Option<&KeyRing>, id: SegmentId, head: &SegmentHead) -> Result<Option<SegmentCipher>> {
    if head.preamble.cipher != CIPHER_AES_256_GCM {
        check_plaintext_allowed(ring, id)?;
        return Ok(None);
    }
    let ring = ring.ok_or(WalError::KeyRingMissing { segment: id })?;
    let key_id = head.preamble.key_id;
    let key = ring.get(key_id).ok_or(WalError::UnknownKeyId { segment: Some(id), key_id })?;
    Ok(Some(SegmentCipher::derive(&key, &head.header.kdf_salt, id, &head.preamble)))
}

/// Refuses a plaintext segment where the ring says so (see `KeyRing::refuse_plaintext`).
pub fn check_plaintext_allowed(ring: Option<&KeyRing>, id: SegmentId) -> Result<()> {
    match ring {
        Some(ring) if ring.refuses_plaintext() => Err(WalError::PlaintextRefused { segment: id }),
        _ => Ok(()),
    }
}

/// The plaintext of a stored payload. A record's encryption must match its segment's: a flag
/// stripped or added (checksum recomputed) would otherwise hand out ciphertext as data.
pub fn open_record(cipher: Option<&SegmentCipher>, segment: SegmentId, header: &RecordHeader, stored: &[u8]) -> Result<Vec<u8>> {
    let mut scratch = Vec::new();
    open_record_in(cipher, segment, header, stored, &mut scratch).map(<[u8]>::to_vec)
}

/// Like [`open_record`] without allocating: a plaintext payload is `stored` itself, an
/// encrypted one is decrypted into `scratch` (reused from record to record).
#[inline]
pub fn open_record_in<'a>(
    cipher: Option<&SegmentCipher>,
    segment: SegmentId,
    header: &RecordHeader,
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let encrypted = header.flags & FLAG_ENCRYPTED != 0;
    match cipher {
        // The plaintext case, once per record of a plaintext replay: kept small to inline.
        None if !encrypted => Ok(stored),
        None => Err(WalError::AuthenticationFailed { segment, lsn: header.lsn }),
        Some(cipher) => decrypt_record_in(cipher, segment, header, stored, scratch),
    }
}

/// [`open_record_in`] for a segment with a cipher: every record must be encrypted, and
/// authenticates or is an error. Out of line: AES-GCM dwarfs a call.
#[inline(never)]
fn decrypt_record_in<'a>(
    cipher: &SegmentCipher,
    segment: SegmentId,
    header: &RecordHeader,
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let failed = || WalError::AuthenticationFailed { segment, lsn: header.lsn };
    let encrypted = header.flags & FLAG_ENCRYPTED != 0;
    if !encrypted || stored.len() < TAG_LEN {
        return Err(failed());
    }
    let (ciphertext, tag) = stored.split_at(stored.len() - TAG_LEN);
    let mut head = [0u8; HEADER_LEN];
    header.encode_into(&mut head);
    scratch.clear();
    scratch.extend_from_slice(ciphertext);
    cipher.open(header.lsn, &head, scratch, tag).map_err(|_| failed())?;
    Ok(scratch)
}
