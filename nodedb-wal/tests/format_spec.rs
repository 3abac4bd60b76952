//! docs/FORMAT.md is enough to read the log's files: the decoder below was written from that
//! document alone (it uses nothing of the crate's `format` module or readers, only `crc32c`,
//! `aes-gcm`, `hkdf` and `sha2`), and it reads back, from files the library wrote through its
//! public API, every record exactly (LSN, type, scope, flags, payload, decrypted payload) and
//! every field of `MANIFEST`, `FLOOR`, the header indexes and the double-write buffer. The
//! logs cover several segments, a truncation (with the files it keeps for reuse), groups, the
//! log's own record types, a key rotation, a clean close, and a crash (a leaked log's files,
//! since a drop closes the log) with a torn last record and the seal recovery writes after it.
//!
//! The decoder doubles as a worked example of the document: it follows its tables in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use nodedb_wal::{
    CalvinAppliedPayload, CollectionTombstonePayload, DoubleWriteBuffer, DwbConfig, FileId, KeyRing, Lsn, PageCheck, Record, RecordType,
    Scope, SecureKey, SegmentedWal, SegmentedWalConfig, TemporalPurgeEngine, TemporalPurgePayload,
};
use sha2::Sha256;

// ---------------------------------------------------------------------------------------------
// The decoder, from docs/FORMAT.md. All integers are little-endian.

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

const HEADER_LEN: usize = 48;
const FRAME_MAGIC: u16 = 0x574E;
const PADDING: u16 = 0x8001;
const SEGMENT_HEADER: u16 = 0x8002;
const SEGMENT_END: u16 = 0x8003;
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_GROUP_CONTINUES: u16 = 2;

/// The 16-byte segment preamble.
#[derive(Debug)]
struct Preamble {
    cipher: u8,
    key_id: u32,
    nonce_epoch: u32,
}

fn preamble(b: &[u8]) -> Preamble {
    assert_eq!(&b[0..4], b"NWAL", "magic");
    assert_eq!((u16_at(b, 4), b[7]), (1, 0), "version, reserved");
    let p = Preamble { cipher: b[6], key_id: u32_at(b, 8), nonce_epoch: u32_at(b, 12) };
    assert!(p.cipher <= 1, "cipher {}", p.cipher);
    if p.cipher == 0 {
        assert_eq!((p.key_id, p.nonce_epoch), (0, 0), "a plaintext preamble has no key id or epoch");
    }
    p
}

/// A record frame's 48-byte header.
#[derive(Clone, Debug)]
struct Header {
    record_type: u16,
    lsn: u64,
    durable_lsn: u64,
    salt: u32,
    payload_len: usize,
    scope: (u32, u32, u32),
    flags: u16,
}

/// The frame at `at` if it is valid in the sense of FORMAT.md ("A frame is valid only if ..."),
/// given the segment's salt and the LSN expected next.
fn frame_at(seg: &[u8], at: usize, salt: u32, expected_lsn: u64) -> Option<(Header, &[u8])> {
    let h = seg.get(at..at + HEADER_LEN)?;
    if u16_at(h, 4) != FRAME_MAGIC || u16_at(h, 46) != 0 || u16_at(h, 44) & !(FLAG_ENCRYPTED | FLAG_GROUP_CONTINUES) != 0 {
        return None;
    }
    let header = Header {
        record_type: u16_at(h, 6),
        lsn: u64_at(h, 8),
        durable_lsn: u64_at(h, 16),
        salt: u32_at(h, 24),
        payload_len: u32_at(h, 28) as usize,
        scope: (u32_at(h, 32), u32_at(h, 36), u32_at(h, 40)),
        flags: u16_at(h, 44),
    };
    let payload = seg.get(at + HEADER_LEN..at + HEADER_LEN + header.payload_len)?;
    let mut crc = crc32c::crc32c(&h[4..]);
    if header.record_type != PADDING {
        crc = crc32c::crc32c_append(crc, payload);
    }
    (crc == u32_at(h, 0) && header.salt == salt && header.lsn == expected_lsn).then_some((header, payload))
}

/// A data record as decoded (payload decrypted where the segment is encrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    lsn: u64,
    record_type: u16,
    scope: (u32, u32, u32),
    flags: u16,
    payload: Vec<u8>,
}

/// What a segment file holds.
#[derive(Debug)]
struct Segment {
    id: u64,
    preamble: Preamble,
    first_lsn: u64,
    salt: u32,
    block_len: usize,
    /// Each data record with its frame's offset and raw header bytes (for the header index).
    records: Vec<(usize, [u8; HEADER_LEN], Rec)>,
    /// `records_end` of the end frame, and the end frame's offset, if sealed.
    seal: Option<(u64, usize)>,
    /// The end frame's `durable_lsn`.
    seal_durable_lsn: u64,
    /// Where the chain of valid frames ends (the end of the end frame where sealed).
    chain_end: usize,
    next_lsn: u64,
}

/// The segment key of FORMAT.md's encryption envelope.
fn segment_cipher(master: &[u8; 32], kdf_salt: &[u8], segment_id: u64) -> Aes256Gcm {
    let mut info = b"nodedb-wal segment key v1".to_vec();
    info.extend_from_slice(&segment_id.to_le_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(kdf_salt), master).expand(&info, &mut key).unwrap();
    Aes256Gcm::new_from_slice(&key).unwrap()
}

fn decrypt(cipher: &Aes256Gcm, pre: &Preamble, raw_preamble: &[u8], header: &[u8], lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&pre.nonce_epoch.to_le_bytes());
    nonce[4..].copy_from_slice(&lsn.to_le_bytes());
    let aad = [raw_preamble, &header[4..HEADER_LEN]].concat();
    let (ciphertext, tag) = payload.split_at(payload.len() - 16);
    let mut plain = ciphertext.to_vec();
    cipher
        .decrypt_inout_detached(&Nonce::from(nonce), &aad, plain.as_mut_slice().into(), &Tag::try_from(tag).unwrap())
        .unwrap_or_else(|_| panic!("record {lsn} does not authenticate"));
    plain
}

/// Where the end frame's batch ends: the frame is followed by its batch's padding, unless it
/// ends on a block boundary itself.
fn past_padding(seg: &[u8], at: usize, end: &Header, block_len: usize) -> usize {
    if at.is_multiple_of(block_len) {
        return at;
    }
    let (h, _) = frame_at(seg, at, end.salt, end.lsn).expect("the end frame's batch is padded");
    assert_eq!(h.record_type, PADDING);
    at + HEADER_LEN + h.payload_len
}

/// Decodes a segment file named `{id:020}.wal`; `key` gives the ring key of a key id.
fn decode_segment(id: u64, seg: &[u8], key: &dyn Fn(u32) -> [u8; 32]) -> Segment {
    let pre = preamble(&seg[..16]);
    // The SEGMENT_HEADER frame at offset 16: its lsn is its payload's first_lsn and its salt
    // the payload's salt, so both are read from the payload before the frame is checked.
    let payload_at = 16 + HEADER_LEN;
    assert_eq!((u16_at(seg, 16 + 6), u32_at(seg, 16 + 28)), (SEGMENT_HEADER, 40));
    let p = &seg[payload_at..payload_at + 40];
    let (first_lsn, salt, block_len) = (u64_at(p, 8), u32_at(p, 16), u32_at(p, 20) as usize);
    let (head, hp) = frame_at(seg, 16, salt, first_lsn).expect("a valid SEGMENT_HEADER frame");
    assert_eq!(head.flags, 0, "meta frames are never encrypted");
    assert_eq!(u64_at(hp, 0), id, "segment_id is the file name's");
    assert!((1..=1 << 63).contains(&first_lsn));
    assert!(block_len.is_power_of_two() && (512..=1 << 20).contains(&block_len));
    let kdf_salt = &hp[24..40];
    let cipher = (pre.cipher == 1).then(|| segment_cipher(&key(pre.key_id), kdf_salt, id));
    if cipher.is_none() {
        assert_eq!(kdf_salt, [0; 16], "plaintext segments have a zero kdf_salt");
    }

    let mut s = Segment {
        id,
        preamble: pre,
        first_lsn,
        salt,
        block_len,
        records: Vec::new(),
        seal: None,
        seal_durable_lsn: 0,
        chain_end: 0,
        next_lsn: first_lsn,
    };
    // Block 0 ends with a padding frame: the first batch starts at block 1.
    let (pad, _) = frame_at(seg, 16 + HEADER_LEN + 40, salt, first_lsn).expect("block 0's padding");
    assert_eq!((pad.record_type, 16 + 2 * HEADER_LEN + 40 + pad.payload_len), (PADDING, block_len));
    let mut at = block_len;
    loop {
        // A chain that reaches `at` off a block boundary first looks for recovery's seal
        // naming `at` on the boundary after it.
        let boundary = at.next_multiple_of(block_len);
        let seal = frame_at(seg, boundary, salt, s.next_lsn).filter(|(h, p)| h.record_type == SEGMENT_END && u64_at(p, 0) == at as u64);
        if let Some((h, _)) = seal.filter(|_| boundary != at) {
            (s.seal, s.seal_durable_lsn) = (Some((at as u64, boundary)), h.durable_lsn);
            s.chain_end = past_padding(seg, boundary + HEADER_LEN + h.payload_len, &h, block_len);
            break;
        }
        let Some((h, payload)) = frame_at(seg, at, salt, s.next_lsn) else {
            s.chain_end = at;
            break;
        };
        let frame_end = at + HEADER_LEN + h.payload_len;
        if (0x8001..=0x800F).contains(&h.record_type) {
            assert_eq!((h.scope, h.flags), ((0, 0, 0), 0), "a meta frame at {at} has no scope or flags");
        }
        match h.record_type {
            PADDING => {
                assert!(payload.iter().all(|&b| b == 0), "padding is zeros");
                assert_eq!(frame_end % block_len, 0, "padding at {at} runs to a block boundary");
            }
            SEGMENT_END => {
                assert_eq!((h.payload_len, u64_at(payload, 0), u64_at(payload, 8)), (16, at as u64, 0), "the writer's seal");
                (s.seal, s.seal_durable_lsn) = (Some((at as u64, at)), h.durable_lsn);
                s.chain_end = past_padding(seg, frame_end, &h, block_len);
                break;
            }
            0x8004..=0x800F => {} // a meta type this reader does not know: skipped
            _ => {
                let raw: [u8; HEADER_LEN] = seg[at..at + HEADER_LEN].try_into().unwrap();
                let encrypted = h.flags & FLAG_ENCRYPTED != 0;
                assert_eq!(encrypted, cipher.is_some(), "LSN {}: the flag is set exactly in encrypted segments", h.lsn);
                let plain = match &cipher {
                    Some(c) => decrypt(c, &s.preamble, &seg[..16], &raw, h.lsn, payload),
                    None => payload.to_vec(),
                };
                let rec = Rec { lsn: h.lsn, record_type: h.record_type, scope: h.scope, flags: h.flags, payload: plain };
                assert!(h.durable_lsn < h.lsn, "durable_lsn is a lower bound written before this record is durable");
                s.records.push((at, raw, rec));
                s.next_lsn += 1;
            }
        }
        at = frame_end;
    }
    s
}

/// A `MANIFEST` or `FLOOR` file: (sequence, segment id) of its newest intact slot.
fn decode_slots(b: &[u8], magic: &[u8; 4]) -> (u64, u64) {
    assert_eq!(b.len(), 544, "two 32-byte slots at 0 and 512");
    assert!(b[32..512].iter().all(|&x| x == 0), "zero between the slots");
    let intact = |s: &[u8]| {
        let ok = &s[0..4] == magic
            && u16_at(s, 4) == 1
            && u16_at(s, 6) == 0
            && (1..1 << 63).contains(&u64_at(s, 8))
            && crc32c::crc32c(&s[..24]) == u32_at(s, 24)
            && u32_at(s, 28) == 0;
        ok.then(|| (u64_at(s, 8), u64_at(s, 16)))
    };
    let slots = [intact(&b[0..32]), intact(&b[512..544])];
    for (i, slot) in slots.iter().enumerate() {
        if let Some((seq, _)) = slot {
            assert_eq!((seq % 2) as usize, i, "update n goes to slot n % 2");
        }
    }
    slots.into_iter().flatten().max().expect("an intact slot")
}

/// A header index `{id:020}.hdrs`: (segment id, salt, first LSN, [(frame offset, header)]).
fn decode_header_index(b: &[u8]) -> (u64, u32, u64, Vec<(u64, [u8; HEADER_LEN])>) {
    assert_eq!((&b[0..4], u16_at(b, 4), u16_at(b, 6)), (&b"NWHX"[..], 1, 0));
    let n = u32_at(b, 20) as usize;
    assert_eq!(b.len(), 32 + 56 * n + 4);
    assert_eq!(crc32c::crc32c(&b[..32 + 56 * n]), u32_at(b, 32 + 56 * n));
    let entries = (0..n).map(|i| (u64_at(b, 32 + 56 * i), b[40 + 56 * i..88 + 56 * i].try_into().unwrap())).collect();
    (u64_at(b, 8), u32_at(b, 16), u64_at(b, 24), entries)
}

/// A double-write buffer slot's fields.
#[derive(Debug)]
struct Slot {
    file_id: u32,
    seq: u64,
    batch_seq: u64,
    batch_slots: u32,
    page_no: u64,
    epoch: u32,
    image: Vec<u8>,
}

/// The slot at `at` if valid and of `salt`, with its length (to the next multiple of 8).
fn dwb_slot(b: &[u8], at: usize, salt: u32) -> Option<(Slot, usize)> {
    let h = b.get(at..at + 56)?;
    let page_len = u32_at(h, 36) as usize;
    let ok = &h[4..8] == b"NDWS" && u16_at(h, 8) == 2 && u16_at(h, 10) == 0 && u32_at(h, 52) == salt && (1..=1 << 20).contains(&page_len);
    let image = b.get(at + 56..at + 56 + page_len).filter(|_| ok)?;
    let (seq, batch_seq, batch_slots) = (u64_at(h, 16), u64_at(h, 24), u32_at(h, 32));
    let in_batch = batch_seq <= seq && seq < batch_seq + u64::from(batch_slots) && batch_seq + u64::from(batch_slots) <= 1 << 62;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), image);
    let slot =
        Slot { file_id: u32_at(h, 12), seq, batch_seq, batch_slots, page_no: u64_at(h, 40), epoch: u32_at(h, 48), image: image.to_vec() };
    (in_batch && crc == u32_at(h, 0)).then_some((slot, (56 + page_len).next_multiple_of(8)))
}

/// The double-write buffer file: (block_len, ring_bytes, salt, slots of complete batches).
fn decode_dwb(b: &[u8]) -> (usize, u64, u32, Vec<Slot>) {
    assert_eq!(crc32c::crc32c(&b[4..32]), u32_at(b, 0));
    assert_eq!((&b[4..8], u16_at(b, 8), u16_at(b, 10), u64_at(b, 24)), (&b"NDWB"[..], 2, 0, 0));
    let (block_len, ring_bytes, salt) = (u32_at(b, 12) as usize, u64_at(b, 16), u32_at(b, 32));
    assert_eq!(crc32c::crc32c(&b[..36]), u32_at(b, 36));
    assert!(salt != 0 && block_len.is_power_of_two() && ring_bytes % block_len as u64 == 0);
    assert_eq!(b.len() as u64, block_len as u64 + ring_bytes);
    assert!(b[40..block_len].iter().all(|&x| x == 0), "the rest of block 0 is zero");
    // A complete batch: a first slot on a 512-byte boundary, then its other slots packed.
    let mut slots = Vec::new();
    for start in (block_len..b.len()).step_by(512) {
        let Some((first, mut len)) = dwb_slot(b, start, salt).filter(|(s, _)| s.seq == s.batch_seq) else { continue };
        let mut batch = vec![first];
        while batch.len() < batch[0].batch_slots as usize {
            let Some((next, next_len)) = dwb_slot(b, start + len, salt) else { break };
            let (f, last) = (&batch[0], batch.last().unwrap());
            if (next.epoch, next.batch_seq, next.batch_slots, next.seq) != (f.epoch, f.batch_seq, f.batch_slots, last.seq + 1) {
                break;
            }
            len += next_len;
            batch.push(next);
        }
        if batch.len() == batch[0].batch_slots as usize {
            assert_eq!(start % block_len, 0, "a batch starts on a block");
            let end = (start + len).next_multiple_of(block_len);
            assert!(b[start + len..end].iter().all(|&x| x == 0), "and is padded with zeros to one");
            slots.extend(batch);
        }
    }
    (block_len, ring_bytes, salt, slots)
}

// ---------------------------------------------------------------------------------------------
// The logs, written through the public API.

/// A record as appended: what the decoder must find at its LSN.
fn expect(lsn: Lsn, record_type: RecordType, scope: Scope, flags: u16, payload: &[u8]) -> Rec {
    Rec { lsn: lsn.0, record_type: record_type.0, scope: (scope.database, scope.tenant, scope.vshard), flags, payload: payload.to_vec() }
}

/// Payload `i`: ~1.8 to 6 KiB (so sealed segments get header indexes), or a few bytes.
fn payload(i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(7) { (i % 13) as usize } else { 1800 + (i * 977 % 4200) as usize };
    (0..len).map(|j| (i as u8).wrapping_mul(17) ^ (j as u8)).collect()
}

fn scope(i: u64) -> Scope {
    Scope { database: i as u32 % 3, tenant: 100 + (i as u32 % 5), vshard: (i as u32).wrapping_mul(2_654_435_761) }
}

fn ty(i: u64) -> RecordType {
    if i.is_multiple_of(4) { RecordType::required(0x8100 + (i % 50) as u16) } else { RecordType::optional(0x100 + (i % 300) as u16) }
}

/// Appends every kind of record the log writes and returns them in LSN order.
fn append_mix(wal: &SegmentedWal, from: u64, count: u64, model: &mut BTreeMap<u64, Rec>, encrypted: bool) {
    let enc = u16::from(encrypted);
    for i in from..from + count {
        let p = payload(i);
        let r = Record::new(ty(i), &p).scoped(scope(i));
        match i % 10 {
            0 => {
                let (q, s) = (payload(i + 1), scope(i + 1));
                let group = [r, Record::new(ty(i + 1), &q).scoped(s), Record::new(RecordType::optional(0x101), b"group end")];
                let lsns = wal.append_group(&group).unwrap();
                for (lsn, g) in Lsn::range(&lsns).zip(&group) {
                    let flags = if lsn == *lsns.end() { enc } else { enc | FLAG_GROUP_CONTINUES };
                    model.insert(lsn.0, expect(lsn, g.record_type, g.scope, flags, g.payload));
                }
            }
            1 => {
                let lsn = wal.append_durable(r).unwrap();
                model.insert(lsn.0, expect(lsn, r.record_type, r.scope, enc, &p));
            }
            _ => {
                let lsn = wal.append(r).unwrap();
                model.insert(lsn.0, expect(lsn, r.record_type, r.scope, enc, &p));
            }
        }
    }
    // The log's own types, decoded below from their tables.
    let t = CollectionTombstonePayload { database: 7, tenant: 8, collection: "orders".into(), purge_lsn: wal.next_lsn() };
    let lsn = wal.append_tombstone(&t).unwrap();
    let mut p = [7u32.to_le_bytes(), 8u32.to_le_bytes()].concat();
    p.extend_from_slice(&lsn.0.to_le_bytes());
    p.extend_from_slice(&6u16.to_le_bytes());
    p.extend_from_slice(b"orders");
    model.insert(lsn.0, expect(lsn, RecordType(0x8010), Scope { database: 7, tenant: 8, vshard: 0 }, enc, &p));
    let purge =
        TemporalPurgePayload {
            engine: TemporalPurgeEngine::Graph, collection: "événements".into(), cutoff_unix_ms: -5, purged_count: 99
        };
    let s = scope(from);
    let lsn = wal.append_temporal_purge(&purge, s).unwrap();
    let mut p = vec![3, 0];
    p.extend_from_slice(&(-5i64).to_le_bytes());
    p.extend_from_slice(&99u64.to_le_bytes());
    p.extend_from_slice(&("événements".len() as u16).to_le_bytes());
    p.extend_from_slice("événements".as_bytes());
    model.insert(lsn.0, expect(lsn, RecordType(0x8011), s, enc, &p));
    let lsn = wal.append_calvin_applied(&CalvinAppliedPayload { epoch: 1 << 40, position: 9, vshard: 77 }, s).unwrap();
    let p = [(1u64 << 40).to_le_bytes().as_slice(), &9u32.to_le_bytes(), &77u32.to_le_bytes()].concat();
    model.insert(lsn.0, expect(lsn, RecordType(0x0010), s, enc, &p));
    wal.sync().unwrap();
}

fn config(dir: &Path, ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 256 * 1024;
    c.allow_buffered_fallback = true;
    c.key_ring = ring;
    c
}

/// Every segment file of `dir`, decoded in id order, and the header indexes beside them.
fn decode_dir(dir: &Path, key: &dyn Fn(u32) -> [u8; 32]) -> (Vec<Segment>, BTreeMap<u64, Vec<u8>>) {
    let (mut segments, mut indexes) = (Vec::new(), BTreeMap::new());
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for name in names {
        let Some((id, ext)) = name.split_once('.') else { continue };
        let Ok(id) = id.parse::<u64>() else { continue };
        assert_eq!(name.len(), 20 + 1 + ext.len(), "{name}: ids are zero-padded to 20 digits");
        match ext {
            "wal" => segments.push(decode_segment(id, &std::fs::read(dir.join(&name)).unwrap(), key)),
            "hdrs" => drop(indexes.insert(id, std::fs::read(dir.join(&name)).unwrap())),
            _ => {}
        }
    }
    (segments, indexes)
}

/// Checks the decoded directory against the model: dense LSNs over contiguous segments, every
/// record exact, `MANIFEST` and `FLOOR` naming the newest and the oldest segment, and every
/// header index matching its segment. Returns the decoded segments.
fn check_dir(dir: &Path, key: &dyn Fn(u32) -> [u8; 32], model: &BTreeMap<u64, Rec>, sealed_newest: bool) -> Vec<Segment> {
    let (segments, indexes) = decode_dir(dir, key);
    let mut next = segments[0].first_lsn;
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.id, segments[0].id + i as u64, "segment ids are contiguous");
        assert_eq!(s.first_lsn, next, "segment {} begins where the previous one ends", s.id);
        assert!(s.seal.is_none() || s.chain_end % s.block_len == 0, "segment {}: a sealed chain ends on a block boundary", s.id);
        let last = i + 1 == segments.len();
        assert_eq!(s.seal.is_some(), !last || sealed_newest, "segment {} sealed: {:?}", s.id, s.seal);
        for (_, _, rec) in &s.records {
            assert_eq!(Some(rec), model.get(&rec.lsn), "segment {} LSN {}", s.id, rec.lsn);
        }
        next = s.next_lsn;
    }
    let decoded: Vec<u64> = segments.iter().flat_map(|s| s.records.iter().map(|r| r.2.lsn)).collect();
    let kept: Vec<u64> = model.range(segments[0].first_lsn..).map(|(l, _)| *l).collect();
    assert_eq!(decoded, kept, "every record from the oldest segment on, in order, and nothing else");
    assert_eq!(decode_slots(&std::fs::read(dir.join("MANIFEST")).unwrap(), b"NWMF").1, segments.last().unwrap().id);
    assert_eq!(decode_slots(&std::fs::read(dir.join("FLOOR")).unwrap(), b"NWFL").1, segments[0].id);
    for (id, bytes) in &indexes {
        let Some(s) = segments.iter().find(|s| s.id == *id) else { continue };
        let (seg_id, salt, first, entries) = decode_header_index(bytes);
        assert_eq!((seg_id, salt, first), (s.id, s.salt, s.first_lsn), "header index {id}");
        let expected: Vec<(u64, [u8; HEADER_LEN])> = s
            .records
            .iter()
            .map(|(at, raw, _)| {
                let mut h = *raw;
                h[..4].fill(0);
                (*at as u64, h)
            })
            .collect();
        assert_eq!(entries, expected, "header index {id}: every data record's header, checksum zero");
    }
    if sealed_newest {
        let newest = segments.last().unwrap();
        assert_eq!(newest.seal_durable_lsn, newest.next_lsn - 1, "a close's or recovery's seal vouches for every record");
        assert!(segments.iter().all(|s| indexes.contains_key(&s.id)), "every segment of a closed log is indexed");
    }
    segments
}

#[test]
fn a_closed_log_with_a_truncation_and_kept_files_reused_reads_back_by_the_spec_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    // A ring with no active key: plaintext until a key is made active.
    let ring = Arc::new(KeyRing::new());
    let wal = SegmentedWal::open(config(dir.path(), Some(Arc::clone(&ring)))).unwrap();
    append_mix(&wal, 1, 300, &mut model, false);
    // Truncate: the floor moves up; segments below it go, two kept for reuse.
    let floor = wal.segments()[3].first_lsn;
    wal.truncate_before(floor).unwrap();
    // Roll into a kept file, and roll out of it early (a key made active seals it): past its
    // seal lie the frames, under another salt, of the segment the file held before.
    let reused = wal.segments().last().unwrap().id.0 + 1;
    for i in 2000.. {
        let (p, lsn) = (payload(i), wal.next_lsn());
        wal.append_durable(Record::new(ty(i), &p).scoped(scope(i))).unwrap();
        model.insert(lsn.0, expect(lsn, ty(i), scope(i), 0, &p));
        if wal.segments().last().unwrap().id.0 == reused {
            break;
        }
    }
    ring.insert(5, SecureKey::from_bytes(&mut [0x55; 32])).unwrap();
    ring.set_active(5).unwrap();
    append_mix(&wal, 3000, 20, &mut model, true);
    wal.close().unwrap();

    let segments = check_dir(dir.path(), &|id| [id as u8 * 0x11; 32], &model, true);
    let ids: Vec<u64> = segments.iter().map(|s| s.id).collect();
    assert!(segments.len() >= 3 && ids[0] > 1 && segments[0].first_lsn <= floor.0, "several segments, truncated: {ids:?}");
    let newest = segments.last().unwrap();
    assert_eq!((newest.preamble.cipher, newest.preamble.key_id), (1, 5));
    let len = std::fs::metadata(dir.path().join(format!("{:020}.wal", newest.id))).unwrap().len();
    assert_eq!(len, newest.chain_end as u64, "a close's seal ends the file");
    assert!(segments[..segments.len() - 1].iter().all(|s| s.preamble.cipher == 0));
    let s = segments.iter().find(|s| s.id == reused).unwrap();
    let bytes = std::fs::read(dir.path().join(format!("{:020}.wal", s.id))).unwrap();
    assert!(bytes[s.chain_end..].iter().any(|&b| b != 0), "segment {reused} lies in a reused file, before its old frames");
}

#[test]
fn a_crashed_encrypted_log_with_a_rotation_reads_back_by_the_spec_alone_before_and_after_its_seal() {
    let dir = tempfile::tempdir().unwrap();
    let keys = |id: u32| [id as u8 * 0x11; 32];
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut keys(1))));
    let mut model = BTreeMap::new();
    let wal = SegmentedWal::open(config(dir.path(), Some(Arc::clone(&ring)))).unwrap();
    append_mix(&wal, 1, 150, &mut model, true);
    ring.insert(2, SecureKey::from_bytes(&mut keys(2))).unwrap();
    ring.set_active(2).unwrap();
    append_mix(&wal, 500, 150, &mut model, true);
    // A crash: dropping the log would seal it as `close` does, so the log is leaked instead
    // and its files, all written and synced, are copied as a power cut would leave them.
    std::mem::forget(wal);
    let crashed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), crashed.path().join(entry.file_name())).unwrap();
    }
    let dir = crashed;
    let segments = check_dir(dir.path(), &keys, &model, false);
    let key_ids: Vec<u32> = segments.iter().map(|s| s.preamble.key_id).collect();
    assert!(key_ids.contains(&1) && key_ids.last() == Some(&2), "{key_ids:?}");
    assert!(segments.iter().all(|s| s.preamble.cipher == 1));

    // Tear the newest segment's last record that starts off a block boundary (one byte of
    // its tag): recovery cuts it and everything after it as a torn tail, and seals the
    // segment on the boundary after the cut, naming the cut.
    let newest = segments.last().unwrap();
    let (cut, _, torn) = newest.records.iter().rev().find(|(at, _, _)| at % newest.block_len != 0).unwrap();
    let path = dir.path().join(format!("{:020}.wal", newest.id));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[cut + HEADER_LEN + torn.payload.len() + 15] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    model.retain(|lsn, _| *lsn < torn.lsn);
    let segments = check_dir(dir.path(), &keys, &model, false);
    assert_eq!(segments.last().unwrap().chain_end, *cut, "the decoder's chain stops at the torn record too");

    let wal = SegmentedWal::open(config(dir.path(), Some(Arc::clone(&ring)))).unwrap();
    let library: Vec<Rec> = wal
        .read_from(Lsn::FIRST)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| expect(r.lsn, r.record_type, r.scope, r.flags, &r.payload))
        .collect();
    assert_eq!(library, model.values().cloned().collect::<Vec<_>>(), "the library and the model agree");
    let before = segments.last().unwrap();
    let after = check_dir(dir.path(), &keys, &model, true);
    let sealed = &after[segments.len() - 1];
    let (records_end, seal_at) = sealed.seal.unwrap();
    assert_eq!((sealed.id, records_end), (before.id, before.chain_end as u64), "recovery's seal names where the records end");
    assert_eq!(seal_at, before.chain_end.next_multiple_of(before.block_len));
    assert_ne!(seal_at, *cut, "the seal lies past debris, on the boundary after the cut");
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, sealed.chain_end as u64, "recovery's seal ends the file");
    wal.close().unwrap();
}

/// Page `page_no` of file `file`, version `v`: its bytes say all three.
fn page(file: u32, page_no: u64, v: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u8) ^ (v as u8).wrapping_mul(29) ^ file as u8).collect();
    p[..20].copy_from_slice(&[file.to_le_bytes().as_slice(), &page_no.to_le_bytes(), &v.to_le_bytes()].concat());
    p
}

#[test]
fn a_double_write_buffer_reads_back_by_the_spec_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DwbConfig::new(dir.path().join("dwb"));
    config.ring_bytes = 64 * 1024;
    config.batch_bytes_max = 24 * 1024;
    // Two page files; 1000-byte pages leave their slots' images padded to 8 bytes.
    let files = [(1u32, 4096usize), (2, 1000)];
    let dwb = DoubleWriteBuffer::open(config.clone()).unwrap();
    for (f, len) in files {
        std::fs::write(dir.path().join(f.to_string()), vec![0; 8 * len]).unwrap();
        dwb.register_file(FileId(f), dir.path().join(f.to_string()), len).unwrap();
    }
    dwb.recover(|_, _| PageCheck::Torn).unwrap();
    let mut newest = BTreeMap::new();
    for v in 1..=40u64 {
        let pages: Vec<(u32, u64, Vec<u8>)> =
            files.iter().flat_map(|&(f, len)| (0..(v % 5 + 1)).map(move |n| (f, (n + v) % 8, page(f, (n + v) % 8, v, len)))).collect();
        let writes: Vec<_> = pages.iter().map(|(f, n, p)| (FileId(*f), *n, p.as_slice())).collect();
        dwb.write_pages(&writes).unwrap();
        for (f, n, _) in &pages {
            newest.insert((*f, *n), v);
        }
    }
    drop(dwb);
    let (block_len, ring_bytes, _, slots) = decode_dwb(&std::fs::read(&config.path).unwrap());
    assert_eq!((block_len, ring_bytes), (config.block_len, config.ring_bytes));
    assert!(!slots.is_empty());
    // Every image is one that was written, and a page's higher sequence holds a later version.
    let mut seen: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for s in &slots {
        let len = files.iter().find(|f| f.0 == s.file_id).unwrap().1;
        let v = u64_at(&s.image, 12);
        assert_eq!(s.image, page(s.file_id, s.page_no, v, len), "slot {}", s.seq);
        let e = seen.entry((s.file_id, s.page_no)).or_insert((s.seq, v));
        assert_eq!(s.seq.cmp(&e.0), v.cmp(&e.1), "sequences order versions");
        *e = (*e).max((s.seq, v));
    }
    // The newest batch (version 40) is whole in the ring.
    let last_batch = slots.iter().map(|s| s.batch_seq).max().unwrap();
    for s in slots.iter().filter(|s| s.batch_seq == last_batch) {
        assert_eq!(newest[&(s.file_id, s.page_no)], 40);
        assert_eq!(seen[&(s.file_id, s.page_no)].1, 40);
    }
}
