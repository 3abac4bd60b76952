//! Walking a segment's frames from its header to its end, and saying how it ended.

use super::evidence::{Claims, scan_claims};
use super::reader::ChunkReader;
use crate::error::{CorruptionKind, Result, WalError};
use crate::format::frame::{FrameError, HEADER_LEN, RecordHeader, checksum_matches, decode_frame};
use crate::format::layout::round_up;
use crate::format::meta::{SegmentEndPayload, SegmentHeaderPayload};
use crate::format::preamble::{CIPHER_AES_256_GCM, CIPHER_NONE, PREAMBLE_SIZE, PREAMBLE_VERSION, SegmentPreamble, WAL_PREAMBLE_MAGIC};
use crate::storage::StorageFile;
use crate::types::{Lsn, RecordType, SegmentId};

/// What the first frame position that is not a valid record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailEnd {
    /// A valid end frame: the segment is sealed, nothing after it belongs to it.
    Sealed {
        /// Where the records end (before any debris a recovery skipped).
        records_end: u64,
    },
    /// The file ends at a block boundary.
    Eof,
    /// Zeros at a block boundary: space never written.
    Blank,
    /// A valid frame of an earlier use of the file (another salt), at a block boundary.
    Stale,
    /// Anything else: a partly written frame, bytes that fail their checksum, an LSN out of
    /// order, or an end that falls inside a batch.
    Damaged,
}

/// An end frame found at a block boundary: where it says the records end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecoverySeal {
    records_end: u64,
    next_lsn: Lsn,
}

/// One step of a scan.
#[derive(Debug)]
pub enum Step {
    /// A data record, checked; [`SegmentScan::stepped_payload`] lends its payload.
    Record {
        /// Offset of the frame in the file.
        offset: u64,
        /// Its header.
        header: RecordHeader,
    },
    /// The segment ends here.
    End {
        /// Where the first non-record position is.
        offset: u64,
        /// What is there.
        end: TailEnd,
        /// A durable watermark carried by a checksummed frame of this segment right at the end
        /// position (one whose LSN is out of order), for the recovery decision.
        claim: Option<Lsn>,
    },
}

/// The identity of a segment, read from its first block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHead {
    /// The preamble.
    pub preamble: SegmentPreamble,
    /// The header frame's payload.
    pub header: SegmentHeaderPayload,
    /// The durable watermark the header frame carries.
    pub durable_claim: Lsn,
    /// Offset of the first frame after the header frame.
    pub body_start: u64,
}

/// Reads and checks the preamble and header frame. Version and cipher problems are errors; a
/// first block that is no valid head (too short, zeros, or damaged) is `None`, for recovery to
/// tell an interrupted roll from corruption by what the rest of the file holds.
pub fn read_head<F: StorageFile>(reader: &mut ChunkReader<F>, id: SegmentId) -> Result<Option<SegmentHead>> {
    decode_head(reader.get(0, HEAD_BYTES)?, id)
}

/// The bytes from a segment's start that [`read_head`] reads: the preamble and the header
/// frame, whose 40-byte payload leaves room to spare for a frame that claims a longer one.
pub(crate) const HEAD_BYTES: usize = PREAMBLE_SIZE + HEADER_LEN + 80;

/// [`read_head`] of bytes already read from the segment's start (at least [`HEAD_BYTES`] of
/// them where the file has them): a pure decoder, for a caller that holds the first block.
pub(crate) fn decode_head(bytes: &[u8], id: SegmentId) -> Result<Option<SegmentHead>> {
    if bytes.len() < PREAMBLE_SIZE || bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let Ok(preamble) = SegmentPreamble::decode(bytes) else { return Ok(None) };
    if preamble.magic != WAL_PREAMBLE_MAGIC {
        return Ok(None);
    }
    if preamble.version > PREAMBLE_VERSION || preamble.version == 0 {
        return Err(WalError::UnsupportedVersion { segment: id, version: preamble.version, supported: PREAMBLE_VERSION });
    }
    match preamble.cipher {
        // No checksum covers the preamble: a plaintext segment's key fields must be zero.
        CIPHER_NONE if preamble.key_id != 0 || preamble.nonce_epoch != 0 => return Ok(None),
        // An encrypted segment's preamble is bound into every record's authentication.
        CIPHER_NONE | CIPHER_AES_256_GCM => {}
        cipher => return Err(WalError::UnsupportedCipher { segment: id, cipher }),
    }
    let frame = &bytes[PREAMBLE_SIZE..];
    let Ok(h) = decode_frame(frame) else { return Ok(None) };
    if h.record_type != RecordType::SEGMENT_HEADER {
        return Ok(None);
    }
    // A whole, checksummed header frame was written completely: no crash leaves one that this
    // build cannot take, so it is damage (or a writer's mistake), never an interrupted roll to
    // remove.
    let payload = &frame[HEADER_LEN..h.frame_len()];
    let header = SegmentHeaderPayload::decode(payload).filter(|p| h.salt == p.salt && h.lsn == p.first_lsn);
    let Some(header) = header else {
        return Err(WalError::Corruption { segment: id, offset: PREAMBLE_SIZE as u64, kind: CorruptionKind::BadSegmentHeader });
    };
    let body_start = (PREAMBLE_SIZE + h.frame_len()) as u64;
    Ok(Some(SegmentHead { preamble, header, durable_claim: h.durable_lsn, body_start }))
}

/// Walks the frames of one segment in order.
#[derive(Debug)]
pub struct SegmentScan<F> {
    reader: ChunkReader<F>,
    id: SegmentId,
    salt: u32,
    /// A power of two (the segment header's decoder refuses any other), so offsets are
    /// masked, not divided.
    block: u64,
    pos: u64,
    next_lsn: Lsn,
    done: bool,
    /// Check headers only: payloads are neither read nor checksummed (the lazy reader checks a
    /// payload when it is asked for). Only for the durable part of a recovered log.
    headers_only: bool,
    /// The last block boundary checked for a recovery seal, and what it holds (see
    /// `cut_by_recovery`).
    seal_checked: Option<(u64, Option<RecoverySeal>)>,
}

/// The outcome of checking one frame position.
enum Probe {
    Valid(RecordHeader),
    Invalid { end: TailEnd, claim: Option<Lsn> },
}

impl<F: StorageFile> SegmentScan<F> {
    /// A scan of the body of a segment whose head is `head`.
    pub fn new(mut reader: ChunkReader<F>, id: SegmentId, head: &SegmentHead) -> SegmentScan<F> {
        reader.serve_scan(u64::from(head.header.block_len));
        SegmentScan {
            reader,
            id,
            salt: head.header.salt,
            block: u64::from(head.header.block_len),
            pos: head.body_start,
            next_lsn: head.header.first_lsn,
            done: false,
            headers_only: false,
            seal_checked: None,
        }
    }

    /// Has a helper thread check the checksums of the frames ahead (a mapped segment read
    /// front to back; see [`crate::segment::ahead`]).
    pub fn check_ahead(&mut self) {
        self.reader.check_ahead(self.pos);
    }

    /// Has a helper thread read the segment ahead and check the frames' checksums (a sealed
    /// segment read front to back through the page cache, after `ChunkReader::read_ahead`;
    /// see `segment/read_ahead.rs`).
    pub fn read_ahead(&mut self) {
        self.reader.start_read_ahead(self.pos);
    }

    /// A scan that checks headers only and hands out empty payloads (see `headers_only`).
    pub fn headers_only(mut self) -> SegmentScan<F> {
        self.headers_only = true;
        self
    }

    /// The LSN the next record must carry.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The segment's id.
    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// The underlying reader.
    #[inline]
    pub fn reader(&self) -> &ChunkReader<F> {
        &self.reader
    }

    /// The underlying reader (to learn of growth of a live segment).
    pub fn reader_mut(&mut self) -> &mut ChunkReader<F> {
        &mut self.reader
    }

    /// The segment's block size.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Next data record, or the end. After the end, keeps returning it. Inlined into its few
    /// callers: a replay of small records costs less when the step's header is not written
    /// to memory and read back.
    #[inline]
    pub fn step(&mut self) -> Result<Step> {
        loop {
            let at = self.pos;
            match self.probe(at)? {
                Probe::Invalid { end, claim } => {
                    let end = match self.recovery_seal_after(at)? {
                        Some(sealed) => sealed,
                        None => end,
                    };
                    self.done = true;
                    return Ok(Step::End { offset: at, end, claim });
                }
                Probe::Valid(_) if self.cut_by_recovery(at)? => {
                    self.done = true;
                    return Ok(Step::End { offset: at, end: TailEnd::Sealed { records_end: at }, claim: None });
                }
                Probe::Valid(header) if header.record_type == RecordType::SEGMENT_END => {
                    let payload = self.payload(at, &header)?;
                    let end = match SegmentEndPayload::decode(payload) {
                        Some(p) if p.records_end == at => TailEnd::Sealed { records_end: at },
                        _ => TailEnd::Damaged,
                    };
                    self.done = true;
                    return Ok(Step::End { offset: at, end, claim: None });
                }
                Probe::Valid(header) if header.record_type.is_meta() => {
                    self.pos = at + header.frame_len() as u64;
                }
                Probe::Valid(header) => {
                    // Every data record is handed out, whatever its type: whether an unknown type
                    // may be skipped is the reader's decision (it must authenticate it first).
                    self.pos = at + header.frame_len() as u64;
                    self.next_lsn = self.next_lsn.next();
                    return Ok(Step::Record { offset: at, header });
                }
            }
        }
    }

    #[inline]
    fn payload(&mut self, at: u64, header: &RecordHeader) -> Result<&[u8]> {
        let bytes = self.reader.get(at, header.frame_len())?;
        Ok(&bytes[HEADER_LEN..])
    }

    /// Checks the frame at `at` against checksum, salt and the expected LSN.
    #[inline]
    fn probe(&mut self, at: u64) -> Result<Probe> {
        if self.done {
            return Ok(Probe::Invalid { end: TailEnd::Damaged, claim: None });
        }
        let aligned = at & (self.block - 1) == 0;
        let file_len = self.reader.file_len();
        let boundary = |end: TailEnd| Probe::Invalid { end: if aligned { end } else { TailEnd::Damaged }, claim: None };
        if at >= file_len {
            return Ok(boundary(TailEnd::Eof));
        }
        let head = self.reader.get(at, HEADER_LEN)?;
        let header = match RecordHeader::decode(head) {
            Ok(h) => h,
            Err(FrameError::Blank) => return Ok(boundary(TailEnd::Blank)),
            Err(_) => return Ok(Probe::Invalid { end: TailEnd::Damaged, claim: None }),
        };
        if at + header.frame_len() as u64 > file_len {
            return Ok(Probe::Invalid { end: TailEnd::Damaged, claim: None });
        }
        let meta = header.record_type.is_meta();
        let checked = self.reader.checked_ahead(at, header.frame_len());
        if (meta || !self.headers_only) && !checked && !checksum_matches(self.reader.get(at, header.frame_len())?, &header) {
            return Ok(Probe::Invalid { end: TailEnd::Damaged, claim: None });
        }
        if header.salt != self.salt {
            return Ok(boundary(TailEnd::Stale));
        }
        // Every record's LSN is below the limit (FORMAT.md); a meta frame carries the next LSN,
        // which may be the limit itself. A record there continues no chain this crate writes,
        // and taken for one it would start the log with a watermark of 2^63, which is the
        // durable word's poison bit.
        if header.lsn != self.next_lsn || (!meta && header.lsn >= Lsn::LIMIT) {
            return Ok(Probe::Invalid { end: TailEnd::Damaged, claim: Some(header.durable_lsn) });
        }
        Ok(Probe::Valid(header))
    }

    /// Whether an earlier recovery cut the segment at `at`, although the frame there now reads as
    /// valid. That happens when sealing extended the file: zeros past the old end can complete a
    /// frame that was cut short. Such a frame is debris: the cut stands. Only a frame at an
    /// unaligned offset can be cut this way (the seal sits at the next boundary), so each
    /// boundary is read once.
    fn cut_by_recovery(&mut self, at: u64) -> Result<bool> {
        if at & (self.block - 1) == 0 {
            return Ok(false);
        }
        let boundary = round_up(at, self.block);
        let seal = match self.seal_checked {
            Some((checked, seal)) if checked == boundary => seal,
            _ => {
                let seal = self.seal_at(boundary)?;
                self.seal_checked = Some((boundary, seal));
                seal
            }
        };
        Ok(seal.is_some_and(|s| s.records_end == at && s.next_lsn == self.next_lsn))
    }

    /// After recovery cut a torn tail at `at`, it sealed the segment with an end frame at the
    /// next block boundary that names `at`: the bytes in between are debris to skip.
    fn recovery_seal_after(&mut self, at: u64) -> Result<Option<TailEnd>> {
        let seal_at = round_up(at, self.block);
        if seal_at == at {
            return Ok(None);
        }
        let found = self.seal_at(seal_at)?;
        Ok(found.filter(|s| s.records_end == at && s.next_lsn == self.next_lsn).map(|_| TailEnd::Sealed { records_end: at }))
    }

    /// The end frame of this segment at `offset`, if there is a valid one.
    fn seal_at(&mut self, offset: u64) -> Result<Option<RecoverySeal>> {
        if offset >= self.reader.file_len() {
            return Ok(None);
        }
        let head = self.reader.get(offset, HEADER_LEN)?;
        let Ok(header) = RecordHeader::decode(head) else { return Ok(None) };
        if header.record_type != RecordType::SEGMENT_END || header.salt != self.salt {
            return Ok(None);
        }
        let frame = self.reader.get(offset, header.frame_len())?;
        if decode_frame(frame).is_err() {
            return Ok(None);
        }
        Ok(SegmentEndPayload::decode(&frame[HEADER_LEN..]).map(|p| RecoverySeal { records_end: p.records_end, next_lsn: header.lsn }))
    }

    /// The payload of the record [`Self::step`] handed out last, at `offset`: `step` checked its
    /// checksum already, so it is not checked twice.
    #[inline]
    pub fn stepped_payload(&mut self, offset: u64, header: &RecordHeader) -> Result<&[u8]> {
        debug_assert!(!self.headers_only, "a headers-only scan checked no payload");
        debug_assert_eq!(offset + header.frame_len() as u64, self.pos, "not the record step handed out last");
        self.payload(offset, header)
    }

    /// Moves the scan to a frame boundary it reached before (a reader resuming from a position it
    /// was handed): the frame there must carry `lsn`, or the scan reports damage there.
    pub fn seek(&mut self, offset: u64, lsn: Lsn) {
        // A helper follows the chain from where it started; a jump leaves it.
        self.reader.stop_checking_ahead();
        self.pos = offset;
        self.next_lsn = lsn;
        self.done = false;
        self.seal_checked = None;
    }

    /// After the end of what was written (a live segment), looks again from the same place:
    /// the file has grown.
    pub fn resume(&mut self) {
        self.seek(self.pos, self.next_lsn);
    }

    /// The checked frame at `offset` (a record handed out earlier) and its payload. Where a
    /// valid frame of the same LSN and length lies there with another header (the record was
    /// handed out from a header index, and its frame's header was changed since), `altered`
    /// may name the error: a reader of an encrypted segment authenticates it.
    pub fn frame_at(
        &mut self,
        offset: u64,
        expected: &RecordHeader,
        altered: impl FnOnce(&RecordHeader, &[u8]) -> Option<WalError>,
    ) -> Result<&[u8]> {
        let damaged = WalError::Corruption { segment: self.id, offset, kind: CorruptionKind::BadFrame };
        let frame = self.reader.get(offset, expected.frame_len())?;
        match decode_frame(frame) {
            Ok(h) if h == *expected => Ok(&frame[HEADER_LEN..]),
            Ok(h) if h.lsn == expected.lsn => Err(altered(&h, &frame[HEADER_LEN..]).unwrap_or(damaged)),
            _ => Err(damaged),
        }
    }

    /// What the frames and bytes from `from` on say (see [`scan_claims`]).
    pub fn claims_from(&mut self, from: u64) -> Result<Claims> {
        scan_claims(&mut self.reader, from, self.block, Some(self.salt))
    }

    /// Corruption at `offset` of this segment.
    pub fn corruption(&self, offset: u64, kind: CorruptionKind) -> WalError {
        WalError::Corruption { segment: self.id, offset, kind }
    }
}
