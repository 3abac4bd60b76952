//! The scan of one segment: its head, every record frame up to the first position that is not
//! the next valid record, and the facts about what follows, which [`decide`](super::decide())
//! turns into an action.
//!
//! In the same pass it gathers the tombstones and temporal purges for the engines, checks the
//! key of an encrypted segment, and builds the header index of the segment the owner will
//! seal.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use super::decide::{Evidence, TailAction, corruption_kind, decide, evidence};
use super::open::{check_identity, key_gone_with_segment, open_held};
use super::{Outcome, PendingSeal, RecoveryInfo, TornTail};
use crate::crypto::{KeyRing, SegmentCipher};
use crate::error::{CorruptionKind, Result, WalError};
use crate::format::frame::{FLAG_GROUP_CONTINUES, HEADER_LEN, RecordHeader, decode_frame};
use crate::format::payload::TemporalPurgePayload;
use crate::format::preamble::{CIPHER_AES_256_GCM, CIPHER_NONE, PREAMBLE_SIZE, WAL_PREAMBLE_MAGIC};
use crate::replay::{TemporalPurge, tombstone_found};
use crate::segment::crypt::{check_plaintext_allowed, cipher_for, open_record};
use crate::segment::evidence::{Claims, scan_claims};
use crate::segment::index::IndexBuilder;
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::{SegmentHead, SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self, SegmentInfo};
use crate::storage::{Advice, SECTOR, Storage, StorageFile};
use crate::types::{Lsn, RecordType, SegmentId};

/// What every segment's scan needs.
pub(super) struct ScanCtx<'a, S> {
    pub(super) storage: &'a S,
    pub(super) dir: &'a Path,
    pub(super) direct: bool,
    pub(super) align: usize,
    pub(super) ring: Option<&'a KeyRing>,
    /// A look beside a live writer (no lock, no repairs): its truncation may take a listed
    /// segment at any moment.
    pub(super) beside_writer: bool,
    /// Whether a segment's header naming a later segment may be the writer's reuse of the file
    /// since it was listed ([`WalError::SegmentTruncated`], look again) rather than damage.
    pub(super) reuse_races: bool,
    /// Key ids under which a record of an earlier segment authenticated: the ring's key under
    /// such an id is the one the log was written with, so a later segment under it whose first
    /// record fails was altered, not written under another key.
    pub(super) proven_keys: &'a RefCell<BTreeSet<u32>>,
}

pub(super) fn scan_segment<S: Storage>(
    ctx: &ScanCtx<'_, S>,
    id: SegmentId,
    last: bool,
    prev_end: Option<Lsn>,
    info: &mut RecoveryInfo,
) -> Result<Outcome> {
    let path = segment::path(ctx.dir, id);
    // Only the newest segment is read with O_DIRECT (where the log writes with it, or where a
    // log on buffered I/O can still read with it: `direct_reads_work`). The others are read
    // through the page cache with the kernel's read-ahead, which overlaps the disk with the
    // checking (an O_DIRECT read at a time waits for the disk each time: opening a log was ~4x
    // slower, BENCHMARKS.md), and dropped from the cache behind. Nothing
    // writes them while the directory is locked, and the page cache agrees with the disk
    // for files written with O_DIRECT.
    let direct = ctx.direct && last;
    let (file, len) = open_held(ctx.storage, &path, id, direct, ctx.beside_writer)?;
    if last && !direct && !ctx.beside_writer {
        // After a failed fdatasync (this process's, or an earlier one's under the same kernel)
        // Linux keeps the pages it could not write in the page cache, marked clean. Read from
        // there, they would pass for records, and the fdatasync that follows recovery would not
        // write them: records reported durable, then lost with a sealed segment torn at the
        // next power cut. Dropping the clean pages first makes the scan read the disk (dirty
        // pages stay: a killed process's batch, which the sync after recovery writes).
        // O_DIRECT reads the disk anyway, mapped pages included, which this drop leaves: it is
        // the fallback where O_DIRECT is refused. Only the newest segment can hold such pages.
        file.advise(Advice::DontNeed, 0, 0);
    }
    let mut reader = ChunkReader::new(file, path.clone(), len, ctx.align, DEFAULT_CHUNK);
    if !direct {
        reader.read_sequentially();
    }
    // Nothing writes it while the scan runs (sealed, or the owner holds the directory lock),
    // so a helper may read it and check it ahead of the scan: for the newest segment with
    // O_DIRECT, which overlaps the disk's reads with the checking.
    let helped = !(last && ctx.beside_writer);
    if helped {
        reader.read_ahead();
    }
    let Some(head) = read_head(&mut reader, id)? else {
        return head_fault(&mut reader, id, last, prev_end);
    };
    check_identity(&head, id, ctx.reuse_races)?;
    if let Some(expected) = prev_end
        && head.header.first_lsn != expected
    {
        let kind = CorruptionKind::LsnGap { expected, found: head.header.first_lsn };
        return Err(WalError::Corruption { segment: id, offset: 0, kind });
    }
    if head.preamble.cipher == CIPHER_NONE {
        check_plaintext_allowed(ctx.ring, id)?;
    } else if ctx.ring.is_none() && !ctx.beside_writer {
        // The owner of an encrypted log opened without any key ring would append plaintext
        // after the encrypted segments. A ring without an active key says that is meant.
        return Err(WalError::KeyRingMissing { segment: id });
    } else if last && !ctx.beside_writer && ctx.ring.is_some_and(|ring| ring.active().is_none()) {
        // Meant (turning encryption off), or a ring built without `set_active` by mistake:
        // either way the operator should hear of it before plaintext follows ciphertext.
        tracing::warn!(segment = %id, "the newest segment is encrypted but the key ring has no active key: segments created from now on are plaintext");
    }
    let mut scan = SegmentScan::new(reader, id, &head);
    if helped {
        scan.read_ahead();
    }
    // Only the owner seals the newest segment, so only it needs that segment's index.
    let mut index = IndexBuilder::new(len);
    if last && !ctx.beside_writer {
        index.start(id, head.header.salt, head.header.first_lsn);
    }
    let mut pass = RecordPass {
        id,
        head: &head,
        ring: ctx.ring,
        proven_keys: ctx.proven_keys,
        beside_writer: ctx.beside_writer,
        cipher: None,
        check_key: head.preamble.cipher == CIPHER_AES_256_GCM && ctx.ring.is_some_and(|r| r.get(head.preamble.key_id).is_some()),
        suspect: None,
        index,
        group: None,
        group_collected: Vec::new(),
        group_ungathered: 0,
    };
    let (offset, end, claim) = loop {
        match scan.step()? {
            Step::Record { offset, header } => (pass.record(&mut scan, offset, header, info))
                .map_err(|e| key_gone_with_segment(e, ctx.storage, &path, id, ctx.beside_writer))?,
            Step::End { offset, end, claim } => break (offset, end, claim),
        }
    };
    if pass.suspect.is_some() {
        // No record after the one that did not authenticate: the key, unless an earlier
        // segment under its id proved it right.
        return Err(pass.key_check_failed());
    }
    if last && !matches!(end, TailEnd::Sealed { .. }) && offset < scan.block() && len >= scan.block() {
        // The chain ends in the first block, at the padding frame after the header frame:
        // its header lies in the head's sector, which a crash writes whole or not at all
        // (see `head_fault`), and the frame needs no byte past it to be valid once the file
        // reaches the block's end. So the sector was changed after it was written, and a cut
        // here would drop the segment's records without a word when no later frame vouches
        // for them (its only batch). A file that ends inside its first block (a header
        // block a crash cut short) holds no record: that is still cut.
        return Err(scan.corruption(offset, CorruptionKind::BadFrame));
    }
    if pass.group.is_some() && matches!(end, TailEnd::Sealed { .. }) {
        return Err(scan.corruption(offset, CorruptionKind::IncompleteGroup));
    }
    let first_lsn = head.header.first_lsn;
    // A group the tail left open is cut whole: the log ends where it began.
    let (records_end, lost) = pass.group.unwrap_or((offset, scan.next_lsn()));
    let (end, evidence, best_claim) = match (last, end) {
        (true, e) if !matches!(e, TailEnd::Sealed { .. }) => {
            let claims = scan.claims_from(offset)?;
            if earlier_use_only(&mut scan, offset, head.header.salt, claims, claim)? {
                (if e == TailEnd::Damaged { TailEnd::Stale } else { e }, Evidence::None, None)
            } else {
                (e, evidence(claims, claim, lost), claims.durable.max(claim))
            }
        }
        _ => (end, Evidence::None, None),
    };
    let mut seg = SegmentInfo { id, first_lsn, end_lsn: lost, bytes: records_end, sealed: false };
    match decide(last, end, evidence) {
        TailAction::Corrupt => Err(scan.corruption(offset, corruption_kind(last, end, evidence, lost, best_claim))),
        TailAction::Accept if matches!(end, TailEnd::Sealed { .. }) => {
            seg.sealed = true;
            Ok(Outcome::Sealed(seg))
        }
        action => {
            let torn = (action == TailAction::CutTorn || records_end < offset).then_some(TornTail {
                segment: id,
                offset: records_end,
                bytes_discarded: len.saturating_sub(records_end),
                found: end,
            });
            let index = pass.index.finish_before(records_end);
            let pending = PendingSeal { id, records_end, block: scan.block(), salt: head.header.salt, next_lsn: lost, index };
            Ok(Outcome::Open(seg, pending, torn))
        }
    }
}

/// What the record loop of [`scan_segment`] carries from one record to the next: the check of
/// the segment's key, the header index, and the atomic group still open.
struct RecordPass<'a> {
    id: SegmentId,
    head: &'a SegmentHead,
    ring: Option<&'a KeyRing>,
    /// See [`ScanCtx::proven_keys`].
    proven_keys: &'a RefCell<BTreeSet<u32>>,
    /// A look beside a live writer: see [`ScanCtx::beside_writer`].
    beside_writer: bool,
    /// The segment's cipher (`None` inside for plaintext), made at the first record opened.
    cipher: Option<Option<SegmentCipher>>,
    /// A ring holding this segment's key id must hold its key: one record authenticated per
    /// segment catches a wrong key under the right id now, before an owner appends records that
    /// no single ring could read back alongside the old ones. (A ring without the id is
    /// checked when a record of the segment is read.)
    check_key: bool,
    /// The first record opened did not authenticate: the wrong key, or that record altered.
    suspect: Option<WalError>,
    index: IndexBuilder,
    /// An atomic group still open: where its first frame starts, its first LSN, and what it
    /// holds for `collect`, and the records of those types it cannot read (applied, and
    /// counted, only once the group is whole: a tail cut inside the group takes them away).
    group: Option<(u64, Lsn)>,
    group_collected: Vec<(RecordHeader, Vec<u8>)>,
    group_ungathered: u64,
}

impl RecordPass<'_> {
    /// One record of the chain: indexed, opened where its payload is gathered or the key is
    /// still to be checked, and its group's gatherings applied once the group is whole.
    fn record<F: StorageFile>(
        &mut self,
        scan: &mut SegmentScan<F>,
        offset: u64,
        header: RecordHeader,
        info: &mut RecoveryInfo,
    ) -> Result<()> {
        self.index.add(offset, &header);
        let continues = header.flags & FLAG_GROUP_CONTINUES != 0;
        if continues && self.group.is_none() {
            self.group = Some((offset, header.lsn));
        }
        let mut collected = is_collected(header.record_type);
        if collected && self.beside_writer && !can_decrypt(self.ring, self.head) {
            // A look without this segment's key can still check and list it.
            self.group_ungathered += 1;
            collected = false;
        }
        let key_check = std::mem::take(&mut self.check_key);
        if collected || key_check {
            self.open(scan, offset, header, collected, key_check)?;
        }
        if !continues {
            self.group = None;
            info.ungathered += std::mem::take(&mut self.group_ungathered);
            for (header, plain) in self.group_collected.drain(..) {
                collect(info, &header, &plain)?;
            }
        }
        Ok(())
    }

    /// Decrypts and authenticates a record's payload, to gather it (`collected`) or to check
    /// the segment's key with it (`key_check`).
    fn open<F: StorageFile>(
        &mut self,
        scan: &mut SegmentScan<F>,
        offset: u64,
        header: RecordHeader,
        collected: bool,
        key_check: bool,
    ) -> Result<()> {
        if self.cipher.is_none() {
            self.cipher = Some(cipher_for(self.ring, self.id, self.head)?);
        }
        let payload = scan.stepped_payload(offset, &header)?;
        let cipher = self.cipher.as_ref().and_then(Option::as_ref);
        let opened = open_record(cipher, self.id, &header, payload);
        if opened.is_ok() && cipher.is_some() {
            self.proven_keys.borrow_mut().insert(self.head.preamble.key_id);
        }
        match opened {
            // The key is right after all: the record that did not authenticate was altered.
            Ok(_) if self.suspect.is_some() => return Err(self.suspect.take().expect("checked")),
            Ok(plain) if collected => self.group_collected.push((header, plain)),
            Ok(_) => {}
            // The first record does not authenticate: the wrong key, or that record
            // altered. Whether the next one does tells the two apart.
            Err(err @ WalError::AuthenticationFailed { .. }) if key_check && self.suspect.is_none() => {
                self.suspect = Some(err);
                self.check_key = true;
            }
            Err(WalError::AuthenticationFailed { .. }) if key_check => return Err(self.key_check_failed()),
            Err(err) => return Err(err),
        }
        Ok(())
    }

    /// The error for a segment whose first record, and the one after it if any, do not
    /// authenticate: the ring's key under the segment's key id is not the one its records were
    /// sealed with; or, where a record of an earlier segment under that id authenticated, the
    /// key is right and the segment was altered (its first record, or what derives its key and
    /// nonces: the preamble's epoch, the header's salt), reported at its first record.
    fn key_check_failed(&mut self) -> WalError {
        let key_id = self.head.preamble.key_id;
        match self.suspect.take() {
            Some(altered) if self.proven_keys.borrow().contains(&key_id) => altered,
            _ => WalError::WrongKey { segment: self.id, key_id },
        }
    }
}

/// Whether a record of this segment can be read with `ring`: plaintext, or its key is there.
fn can_decrypt(ring: Option<&KeyRing>, head: &SegmentHead) -> bool {
    head.preamble.cipher != CIPHER_AES_256_GCM || ring.is_some_and(|r| r.get(head.preamble.key_id).is_some())
}

/// Record types whose payloads recovery gathers for the engines in its one pass (drops and
/// purges); salvage names those it leaves out.
pub(crate) fn is_collected(record_type: RecordType) -> bool {
    record_type == RecordType::COLLECTION_TOMBSTONE || record_type == RecordType::TEMPORAL_PURGE
}

fn collect(info: &mut RecoveryInfo, header: &RecordHeader, payload: &[u8]) -> Result<()> {
    let malformed = |problem| WalError::MalformedPayload { lsn: header.lsn, record_type: header.record_type, problem };
    if header.record_type == RecordType::COLLECTION_TOMBSTONE {
        info.tombstones.insert_found(&tombstone_found(payload, header.lsn).map_err(malformed)?, header.lsn);
    } else {
        let purge = TemporalPurgePayload::decode(payload).map_err(malformed)?;
        info.temporal_purges.push(TemporalPurge { lsn: header.lsn, scope: header.scope, purge });
    }
    Ok(())
}

/// Whether everything after the records, which end at `offset`, is the earlier use of a reused
/// segment file: the records end cleanly at a block boundary, no frame of this segment (`salt`)
/// starts there or anywhere after, and intact frames of another salt follow. An earlier use's
/// batches span blocks, so a block boundary of the new segment can fall inside one of its
/// frames, whose tail reads as neither zeros nor a frame: that is no torn write of this
/// segment, whose next batch would start at the boundary with a header of this segment. (A
/// write torn some other way is cut at the same place either way; only the report differs.)
fn earlier_use_only<F: StorageFile>(scan: &mut SegmentScan<F>, offset: u64, salt: u32, claims: Claims, claim: Option<Lsn>) -> Result<bool> {
    if !claims.foreign || claims.durable.is_some() || claim.is_some() || !offset.is_multiple_of(scan.block()) {
        return Ok(false);
    }
    let head = scan.reader_mut().get(offset, HEADER_LEN)?;
    Ok(!RecordHeader::decode(head).is_ok_and(|h| h.salt == salt))
}

/// A segment whose first block is not a valid head: the remains of an interrupted roll, unless
/// some intact frame in it claims that one of its records was durable, or its first sector
/// was written as a head and more follows it.
fn head_fault<F: StorageFile>(reader: &mut ChunkReader<F>, id: SegmentId, last: bool, prev_end: Option<Lsn>) -> Result<Outcome> {
    let corrupt = WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::BadSegmentHeader };
    if !last {
        return Err(corrupt);
    }
    let threshold = prev_end.unwrap_or(Lsn::FIRST);
    reader.read_alone();
    // Without a valid head the salt and block size are unknown: look at every sector after
    // the first (no frame starts in it but the head's own).
    // Zeros and damage alike: the segment's first batch and its head are made durable by one
    // fdatasync, so an intact frame claiming one of its records durable means the head was
    // durable once, and is now lost (a zeroed head included).
    let claims = scan_claims(reader, SECTOR as u64, SECTOR as u64, None)?;
    if claims.durable.is_some_and(|d| d >= threshold) {
        return Err(corrupt);
    }
    // The claims cannot vouch for a segment whose only batch was acknowledged: its frames
    // claim no more than the segments before it. What tells such a segment from a roll is
    // the head's sector (see `head_sector_written`). A head that was written and no longer
    // reads, with anything after it, was changed on the medium (the preamble, which no
    // checksum covers, or the header frame): removing the file could lose acknowledged
    // records. A file with nothing but zeros after its first sector holds no record, and
    // removing it loses nothing.
    let holds_more = claims.durable.is_some() || claims.debris;
    if holds_more && head_sector_written(reader.get(0, SECTOR)?) {
        return Err(corrupt);
    }
    Ok(Outcome::InterruptedRoll)
}

/// Whether the first sector of a segment whose head does not read was written as a head: it
/// opens with the WAL magic, or holds an intact header frame after the preamble. The
/// preamble, the header frame and the padding frame's header all lie in that sector, which a
/// crash writes whole or not at all (FORMAT.md, "Assumptions about the media"), and a reused
/// file has its new head durable before it takes the segment's name. So a roll a crash cut
/// short leaves there zeros or stale bytes the file system never overwrote (which match
/// neither test but by a 1 in 2^32 chance), or a prefix of a head in a file that ends inside
/// the sector; never a whole head with a byte changed, which leaves either the magic or the
/// header frame's checksum intact.
fn head_sector_written(sector: &[u8]) -> bool {
    let header_frame = sector.get(PREAMBLE_SIZE..).map(decode_frame);
    sector.starts_with(&WAL_PREAMBLE_MAGIC) || header_frame.is_some_and(|h| h.is_ok_and(|h| h.record_type == RecordType::SEGMENT_HEADER))
}
