//! Fuzz target bodies, one per trust boundary. They live in a library so that `cargo test` runs
//! them over the checked-in seed corpus (`corpus/<target>/`), and so that any fuzzing engine
//! (the `fuzz` binary here, cargo-fuzz or AFL) can drive the same code.
//!
//! Each body states its property with `assert!`: a panic is a finding.

use std::path::{Path, PathBuf};

mod engine;
mod logs;
mod readers;
mod salvage;

pub use engine::{engine_file, key_file};
pub use salvage::salvage;

use nodedb_wal::dwb::scan::scan_ring;
use nodedb_wal::format::crc::crc32c;
use nodedb_wal::format::dwb::{DWB_VERSION, FILE_HEADER_LEN, FileHeader, SLOT_HEADER_LEN, SlotHeader, decode_slot, encode_slot};
use nodedb_wal::format::frame::{HEADER_LEN, RecordHeader, decode_frame, encode_frame};
use nodedb_wal::format::header_index::HeaderIndex;
use nodedb_wal::format::manifest::{
    FLOOR_FILE, FLOOR_TEMP_FILE, MANIFEST_FILE, MANIFEST_LEN, MANIFEST_TEMP_FILE, ManifestSlot, SLOT_LEN, SLOT_SPACING, SlotKind,
};
use nodedb_wal::format::meta::{SegmentEndPayload, SegmentHeaderPayload};
use nodedb_wal::format::payload::{CalvinAppliedPayload, CollectionTombstonePayload, TemporalPurgePayload};
use nodedb_wal::format::preamble::SegmentPreamble;
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{
    DoubleWriteBuffer, DwbConfig, FileId, FsStorage, Lsn, PageCheck, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment,
};

/// A target body: panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("record", record),
    ("preamble", preamble),
    ("segment_meta", segment_meta),
    ("tombstone", tombstone),
    ("temporal_purge", temporal_purge),
    ("calvin_applied", calvin_applied),
    ("recover_image", recover_image),
    ("ops", ops),
    ("dwb_slot", dwb_slot),
    ("header_index", header_index),
    ("manifest", manifest),
    ("side_files", side_files),
    ("readers", readers),
    ("engine_file", engine_file),
    ("key_file", key_file),
    ("names", names),
    ("salvage", salvage),
];

type ParseName = fn(&str) -> Option<nodedb_wal::SegmentId>;
type NameOf = fn(nodedb_wal::SegmentId) -> PathBuf;

/// The parsers of the names in a log directory (segments, header indexes, kept files) take
/// exactly the names the crate makes: a name parses to an id only if it is that id's name, and
/// every id's name parses back to it. Input: a name; its first eight bytes are also an id.
pub fn names(data: &[u8]) {
    let dir = Path::new("/wal");
    let made: [(ParseName, NameOf); 3] = [
        (segment::parse_name, |id| segment::path(Path::new("/wal"), id)),
        (segment::parse_index, |id| segment::index_path(Path::new("/wal"), id)),
        (segment::parse_recycled, |id| segment::recycled_path(Path::new("/wal"), id)),
    ];
    let id = nodedb_wal::SegmentId(u64::from_le_bytes(std::array::from_fn(|i| data.get(i).copied().unwrap_or(0))));
    for (parse, path) in made {
        let own = path(id);
        assert_eq!(own.parent(), Some(dir));
        assert_eq!(parse(own.file_name().and_then(|n| n.to_str()).expect("a UTF-8 name")), Some(id), "{own:?}");
        if let Some(parsed) = std::str::from_utf8(data).ok().and_then(parse) {
            assert_eq!(path(parsed).file_name().and_then(|n| n.to_str()), std::str::from_utf8(data).ok(), "one name per id");
        }
    }
    assert_eq!(segment::file_name(id), segment::path(dir, id).file_name().and_then(|n| n.to_str()).expect("UTF-8"));
}

/// Record frame decoding never panics, and whatever decodes re-encodes to the same bytes.
pub fn record(data: &[u8]) {
    let Ok(header) = decode_frame(data) else { return };
    let len = header.frame_len();
    let mut out = vec![0u8; len];
    encode_frame(&header, &data[HEADER_LEN..len], &mut out);
    assert_eq!(&out[..], &data[..len], "a decoded frame must re-encode to its own bytes");
    assert_eq!(RecordHeader::decode(&out), Ok(header));
}

/// Preamble decoding never panics, and what decodes re-encodes to the same 16 bytes.
pub fn preamble(data: &[u8]) {
    if let Ok(p) = SegmentPreamble::decode(data) {
        assert_eq!(&p.encode()[..], &data[..16]);
    }
}

/// The meta payload codecs never panic and round-trip.
pub fn segment_meta(data: &[u8]) {
    if let Some(h) = SegmentHeaderPayload::decode(data) {
        assert_eq!(&h.encode()[..], data);
    }
    if let Some(e) = SegmentEndPayload::decode(data) {
        assert_eq!(&e.encode()[..], data);
    }
}

/// The header index decoder never panics; what it accepts re-encodes to its input and is what
/// FORMAT.md says a reader may use: headers of the index's salt, dense LSNs from its first
/// (all below `Lsn::LIMIT`, as every record's), at rising offsets whose frames do not overlap.
/// Input: a flag byte (bit 0: recompute the CRC, so that the fields behind it are reached),
/// then the file.
pub fn header_index(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let mut bytes = bytes.to_vec();
    if flags & 1 != 0 {
        reseal(".hdrs", &mut bytes);
    }
    let Some(index) = HeaderIndex::decode(&bytes) else { return };
    assert_eq!(index.encode(), bytes, "a decoded index re-encodes to its own bytes");
    let count = index.entries().len() as u64;
    assert!(index.first_lsn.0.checked_add(count).is_some_and(|end| end <= Lsn::LIMIT.0), "LSNs past the limit");
    assert_eq!(index.end_lsn(), Lsn(index.first_lsn.0 + count));
    let mut next_free = 0;
    for ((offset, header), lsn) in index.entries().iter().zip(index.first_lsn.0..) {
        assert_eq!((header.lsn, header.salt), (Lsn(lsn), index.salt));
        assert!(*offset >= next_free, "overlapping frames");
        next_free = offset + header.frame_len() as u64;
    }
}

/// The manifest's slot decoder never panics and round-trips; a file's current slot is its
/// intact slot with the higher sequence. Input: a flag byte (bit 0: recompute both slots'
/// CRCs), then the file.
pub fn manifest(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let mut bytes = bytes.to_vec();
    if flags & 1 != 0 {
        reseal(MANIFEST_FILE, &mut bytes);
    }
    let slots = [0, SLOT_SPACING].map(|at| bytes.get(at..).and_then(ManifestSlot::decode));
    for (slot, at) in slots.iter().zip([0, SLOT_SPACING]) {
        if let Some(slot) = slot {
            assert_eq!(&slot.encode()[..], &bytes[at..at + SLOT_LEN], "a decoded slot re-encodes to its own bytes");
        }
    }
    let newer = slots.iter().flatten().max_by_key(|slot| slot.sequence).copied();
    assert_eq!(ManifestSlot::current(&bytes).map(|s| s.sequence), newer.map(|s| s.sequence));
    // The same bytes read as a `FLOOR` slot: the same codec, another magic, so no slot is both.
    for at in [0, SLOT_SPACING] {
        let Some(bytes) = bytes.get(at..) else { continue };
        if let Some(floor) = ManifestSlot::decode_as(bytes, SlotKind::Floor) {
            assert_eq!(&floor.encode_as(SlotKind::Floor)[..], &bytes[..SLOT_LEN], "a decoded floor slot re-encodes to its own bytes");
            assert_eq!(ManifestSlot::decode(bytes), None, "a floor slot is no manifest slot");
        }
    }
}

/// The collection tombstone's payload codec never panics, and what decodes re-encodes to
/// exactly its input: the decoder refuses trailing bytes, so a payload has one encoding.
pub fn tombstone(data: &[u8]) {
    if let Ok(t) = CollectionTombstonePayload::decode(data) {
        assert_eq!(t.encode().expect("a decoded tombstone encodes"), data);
    }
}

/// The same for the temporal purge's payload codec.
pub fn temporal_purge(data: &[u8]) {
    if let Ok(p) = TemporalPurgePayload::decode(data) {
        assert_eq!(p.encode().expect("a decoded purge encodes"), data);
    }
}

/// The same for the Calvin-applied payload codec.
pub fn calvin_applied(data: &[u8]) {
    if let Ok(c) = CalvinAppliedPayload::decode(data) {
        assert_eq!(&c.encode()[..], data);
    }
}

/// Operations against a model on the simulated disk: each input byte is an operation (append
/// a record, sync, truncate below the durable LSN, crash and reopen, crash with a failed
/// fdatasync first). After every reopen the log holds every acknowledged record, in order and
/// unchanged, and nothing that was never appended.
pub fn ops(data: &[u8]) {
    let dir = Path::new("/ops");
    let config = || {
        let mut c = SegmentedWalConfig::new(dir);
        c.direct_io = false;
        c.segment_bytes_target = 16 * 1024;
        c.batch_bytes_max = 8 * 1024;
        c
    };
    let mut sim = SimStorage::new(u64::from(data.first().copied().unwrap_or(0)), FaultConfig::default());
    let mut wal = Some(SegmentedWal::open_with(sim.clone(), config()).expect("a fresh log opens"));
    // Every record ever appended, by LSN, and the highest LSN a sync acknowledged.
    let mut appended: std::collections::BTreeMap<u64, Vec<u8>> = std::collections::BTreeMap::new();
    let mut acked = 0u64;
    for (step, &op) in data.iter().enumerate() {
        let log = wal.as_ref().expect("the log is open between operations");
        match op % 8 {
            0..=3 => {
                let payload = vec![op; usize::from(op) * 13 % 3000];
                if let Ok(lsn) = log.append(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), &payload)) {
                    appended.insert(lsn.0, payload);
                }
            }
            4 | 5 => {
                if let Ok(lsn) = log.sync() {
                    acked = acked.max(lsn.0);
                }
            }
            6 => {
                let _ = log.truncate_before(Lsn(acked / 2));
            }
            _ => {
                if op & 0x80 != 0 {
                    sim.fail_next_sync();
                    let _ = log.sync();
                }
                sim = sim.crash(step as u64 ^ u64::from(op));
                drop(wal.take());
                let reopened = SegmentedWal::open_with(sim.clone(), config()).expect("a crashed log reopens");
                check_against_model(&reopened, &appended, acked);
                wal = Some(reopened);
            }
        }
    }
}

/// Every acknowledged record still held is there unchanged; every record there was appended.
fn check_against_model(wal: &SegmentedWal<SimStorage>, appended: &std::collections::BTreeMap<u64, Vec<u8>>, acked: u64) {
    let info = wal.recovery_info();
    assert!(info.last_lsn.0 >= acked, "acknowledged LSN {acked} lost: the log ends at {}", info.last_lsn);
    let records = wal.read_from(info.first_lsn).expect("replay starts").collect::<Result<Vec<_>, _>>().expect("replay succeeds");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn.0, info.first_lsn.0 + i as u64, "LSNs are dense");
        let expected = appended.get(&r.lsn.0).unwrap_or_else(|| panic!("LSN {} was never appended", r.lsn));
        assert_eq!(&r.payload, expected, "LSN {} changed", r.lsn);
    }
}

/// Recovery of an arbitrary segment image never panics; when it succeeds, replay succeeds, and
/// opening the repaired log again finds exactly the same records (recovery is idempotent).
pub fn recover_image(data: &[u8]) {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/fuzz");
    sim.create_dir_all(dir).expect("sim dir");
    // The first byte picks how many segments the rest is split into.
    let (split, body) = data.split_first().map_or((0, data), |(b, rest)| (*b % 3, rest));
    let parts: Vec<&[u8]> = match split {
        0 => vec![body],
        n => body.chunks(body.len().div_ceil(usize::from(n) + 1).max(1)).collect(),
    };
    for (i, part) in parts.iter().enumerate() {
        let path = dir.join(format!("{:020}.wal", i + 1));
        let file = sim.open(&path, OpenMode { create: true, write: true, direct: false, create_new: false }).expect("sim open");
        file.write_at(part, 0).expect("sim write");
        file.sync_data().expect("sim sync");
    }
    sim.sync_dir(dir).expect("sim dir sync");
    let config = || {
        let mut c = SegmentedWalConfig::new(dir);
        c.direct_io = false;
        c
    };
    let first = match replay_all(&sim, config()) {
        Some(records) => records,
        None => return,
    };
    let second = replay_all(&sim, config()).expect("a log that opened once opens again");
    assert_eq!(first, second, "recovery must be idempotent");
}

fn replay_all(sim: &SimStorage, config: SegmentedWalConfig) -> Option<Vec<(Lsn, Vec<u8>)>> {
    // The config has no key ring, so a segment whose preamble names a cipher is refused at
    // open (`KeyRingMissing`): a log that opens holds only segments its readers can read.
    let wal = SegmentedWal::open_with(sim.clone(), config).ok()?;
    let from = wal.recovery_info().first_lsn;
    let records = wal.read_from(from).expect("replay of a recovered log starts").map(|r| r.map(|r| (r.lsn, r.payload.into_vec())));
    Some(records.collect::<Result<_, WalError>>().unwrap_or_else(|err| panic!("replay of a recovered log succeeds: {err:?}")))
}

/// The double-write buffer's slot and file-header decoders never panic and round-trip; the
/// ring scanner only reports batches of intact, in-sequence slots inside the image; and
/// recovery from the image as a buffer file never panics, only writes images it found, and
/// finds nothing left to restore when run a second time.
pub fn dwb_slot(data: &[u8]) {
    if let Ok(header) = decode_slot(data) {
        let end = SLOT_HEADER_LEN + header.page_len as usize;
        let mut out = vec![0u8; header.slot_len()];
        encode_slot(&header, &data[SLOT_HEADER_LEN..end], &mut out);
        assert_eq!(&out[..end], &data[..end], "a decoded slot must re-encode to its own bytes");
        assert_eq!(decode_slot(&out), Ok(header));
    }
    let header = FileHeader::decode(data);
    // A version this build does not know is returned as found, not re-encodable.
    if let Some(h) = header.ok().filter(|h| h.version <= DWB_VERSION) {
        let len = if h.salt == 0 { FILE_HEADER_LEN - 8 } else { FILE_HEADER_LEN };
        assert_eq!(&h.encode()[..len], &data[..len], "a decoded header must re-encode to its own bytes");
    }
    let salt = header.map_or(0, |h| h.salt);
    let scan = scan_ring(data, salt);
    for batch in &scan.batches {
        assert!(batch.end <= data.len());
        assert_eq!(batch.slots.len() as u64, u64::from(batch.slots[0].header.batch_slots));
        for (index, slot) in (0u64..).zip(&batch.slots) {
            assert_eq!(decode_slot(&data[slot.offset..]), Ok(slot.header));
            assert_eq!(slot.header.salt, salt, "only slots of the file's salt make batches");
            assert_eq!(slot.header.seq, slot.header.batch_seq + index);
            assert!(slot.header.seq <= scan.seq_max && slot.image_range().end <= data.len());
        }
    }
    dwb_recover_image(data);
}

const DWB_PAGE: usize = 512;
const DWB_PAGES: u64 = 4;

/// The page checksum of the DWB target (FNV-1a: the fuzz crate needs no CRC dependency).
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// A page the DWB target's validator accepts: a checksum of the rest, then the version.
fn dwb_page(page_no: u64, version: u64) -> Vec<u8> {
    let mut page = vec![page_no as u8 ^ version as u8; DWB_PAGE];
    page[4..12].copy_from_slice(&version.to_le_bytes());
    let sum = fnv(&page[4..]);
    page[..4].copy_from_slice(&sum.to_le_bytes());
    page
}

fn dwb_check(_file: FileId, page: &[u8]) -> PageCheck {
    let stored = page.get(..4).map(|c| u32::from_le_bytes(c.try_into().expect("four bytes")));
    match stored {
        Some(sum) if page.len() >= 12 && fnv(&page[4..]) == sum => {
            PageCheck::Intact { version: u64::from_le_bytes(page[4..12].try_into().expect("eight bytes")) }
        }
        _ => PageCheck::Torn,
    }
}

fn dwb_config() -> DwbConfig {
    let mut c = DwbConfig::new("/fuzz/dwb");
    c.block_len = 512;
    c.ring_bytes = 8192;
    c.batch_bytes_max = 4096;
    c
}

fn dwb_recover_image(data: &[u8]) {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/fuzz");
    sim.create_dir_all(dir).expect("sim dir");
    let write = |name: &str, bytes: &[u8]| {
        let file = sim.open(&dir.join(name), OpenMode { create: true, write: true, direct: false, create_new: false }).expect("sim open");
        file.write_at(bytes, 0).expect("sim write");
        file.sync_data().expect("sim sync");
    };
    write("dwb", data);
    let before: Vec<u8> = (0..DWB_PAGES).flat_map(|n| dwb_page(n, 1)).collect();
    write("pages", &before);
    sim.sync_dir(dir).expect("sim dir sync");
    let recover = || {
        let dwb = DoubleWriteBuffer::open_with(sim.clone(), dwb_config()).ok()?;
        dwb.register_file(FileId(1), dir.join("pages"), DWB_PAGE).expect("register");
        dwb.recover(dwb_check).ok()
    };
    let Some(first) = recover() else { return };
    let after = sim.read_file(&dir.join("pages")).expect("pages file");
    for (n, page) in after.chunks(DWB_PAGE).enumerate() {
        let unchanged = page == &before[n * DWB_PAGE..(n + 1) * DWB_PAGE];
        assert!(unchanged || first.pages_restored.contains(&(FileId(1), n as u64)), "page {n} changed without a restore");
        assert!(unchanged || data.windows(DWB_PAGE).any(|w| w == page), "page {n} holds bytes that were in no image");
    }
    let second = recover().expect("a buffer that recovered once recovers again");
    assert!(second.pages_restored.is_empty(), "recovery must be idempotent: {second:?}");
}

/// A DWB file image written by the format's own encoders: header block, one batch of two
/// slots for file 1 (page 2 at version 5, page 0 at version 3), and page 1 twice in another.
fn dwb_seeds() -> Vec<Vec<u8>> {
    let mut image = vec![0u8; 512 + 8192];
    let header = FileHeader { version: DWB_VERSION, block_len: 512, ring_bytes: 8192, salt: 0x5EED };
    image[..FILE_HEADER_LEN].copy_from_slice(&header.encode());
    let mut put = |at: usize, batch_seq: u64, pages: &[(u64, u64)]| {
        let mut pos = at;
        for (index, &(page_no, version)) in (0u64..).zip(pages) {
            let slot = SlotHeader {
                file: FileId(1),
                seq: batch_seq + index,
                batch_seq,
                batch_slots: pages.len() as u32,
                page_len: DWB_PAGE as u32,
                page_no,
                epoch: 7,
                salt: header.salt,
            };
            pos += encode_slot(&slot, &dwb_page(page_no, version), &mut image[pos..]);
        }
    };
    put(512, 1, &[(2, 5), (0, 3)]);
    put(2048, 3, &[(1, 4), (1, 6)]);
    let single = image[512..512 + SLOT_HEADER_LEN + DWB_PAGE].to_vec();
    vec![image, single, header.encode().to_vec()]
}

/// A header index of two records.
fn header_index_seed() -> Vec<u8> {
    let header = |lsn| RecordHeader {
        lsn: Lsn(lsn),
        durable_lsn: Lsn(lsn - 1),
        salt: 7,
        record_type: nodedb_wal::RecordType::optional(0x100),
        scope: nodedb_wal::Scope { database: 1, tenant: 2, vshard: 3 },
        payload_len: 5000,
        flags: 0,
    };
    let mut index = HeaderIndex::new(nodedb_wal::SegmentId(3), 7, Lsn(10));
    index.push(4096, &header(10));
    index.push(12288, &header(11));
    index.encode()
}

/// Valid inputs for a target, built with the crate's own encoders, from which fuzzing starts.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "record" => record_seeds(),
        "preamble" => vec![SegmentPreamble::plaintext_wal().encode().to_vec()],
        "segment_meta" => vec![
            SegmentHeaderPayload { segment_id: nodedb_wal::SegmentId(3), first_lsn: Lsn(10), salt: 7, block_len: 4096, kdf_salt: [0; 16] }
                .encode()
                .to_vec(),
            SegmentEndPayload { records_end: 8192 }.encode().to_vec(),
        ],
        "header_index" => vec![[&[0][..], &header_index_seed()].concat(), [&[1][..], &header_index_seed()].concat()],
        "manifest" => manifest_seeds(),
        "tombstone" => vec![
            CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(40) }
                .encode()
                .expect("short name"),
        ],
        "temporal_purge" => vec![
            TemporalPurgePayload {
                engine: nodedb_wal::format::payload::TemporalPurgeEngine::Timeseries,
                collection: "cpu".into(),
                cutoff_unix_ms: -5,
                purged_count: 7,
            }
            .encode()
            .expect("short name"),
        ],
        "calvin_applied" => vec![CalvinAppliedPayload { epoch: 9, position: 3, vshard: 2 }.encode().to_vec()],
        "recover_image" => image_seeds(),
        // Appends, syncs, a truncation, crashes (one after a failed sync), more appends.
        "ops" => vec![vec![1, 2, 3, 4, 9, 16, 5, 6, 7, 0x81, 17, 4, 135, 2, 12, 7]],
        "dwb_slot" => dwb_seeds(),
        "side_files" => side_file_seeds(),
        "readers" => reader_seeds(),
        "engine_file" => engine::engine_file_seeds(),
        "salvage" => salvage::seeds(),
        "key_file" => vec![vec![0x42; 32], vec![7; 31], Vec::new()],
        "names" => vec![
            segment::file_name(nodedb_wal::SegmentId(42)).into_bytes(),
            b"00000000000000000007.hdrs".to_vec(),
            b"18446744073709551615.recycled".to_vec(),
            b"18446744073709551616.wal".to_vec(),
            u64::MAX.to_le_bytes().to_vec(),
        ],
        _ => Vec::new(),
    }
}

fn record_seeds() -> Vec<Vec<u8>> {
    [0usize, 1, 100, 600]
        .iter()
        .map(|&len| {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let header = RecordHeader {
                lsn: Lsn(5),
                durable_lsn: Lsn(4),
                salt: 9,
                record_type: nodedb_wal::RecordType::optional(0x100),
                scope: nodedb_wal::Scope { database: 1, tenant: 2, vshard: 3 },
                payload_len: len as u32,
                flags: 0,
            };
            let mut out = vec![0u8; header.frame_len()];
            encode_frame(&header, &payload, &mut out);
            out
        })
        .collect()
}

/// Manifests as the log writes them: created (one slot), and updated (two), checksums kept or
/// recomputed.
fn manifest_seeds() -> Vec<Vec<u8>> {
    let mut file = vec![0u8; 544];
    let mut seeds = Vec::new();
    for sequence in 1..=2 {
        let at = ManifestSlot::offset_of(sequence) as usize;
        file[at..at + SLOT_LEN].copy_from_slice(&ManifestSlot { sequence, newest: nodedb_wal::SegmentId(sequence + 3) }.encode());
        seeds.extend([[&[0][..], &file].concat(), [&[1][..], &file].concat()]);
    }
    let mut floor = vec![0u8; 544];
    let at = ManifestSlot::offset_of(1) as usize;
    floor[at..at + SLOT_LEN].copy_from_slice(&ManifestSlot { sequence: 1, newest: nodedb_wal::SegmentId(2) }.encode_as(SlotKind::Floor));
    seeds.push([&[0][..], &floor].concat());
    seeds
}

/// Each variant's side files unchanged (a zero difference), resealed and removed.
fn side_file_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for variant in 0..logs::VARIANTS {
        let base = logs::base(variant);
        for which in (0..=u8::try_from(base.newest.0 + 2).expect("a few segments")).chain([254, 255]) {
            let name = side_file_name(&base, which);
            let Some((_, bytes)) = base.files.iter().find(|(n, _)| *n == name) else { continue };
            for flags in [0, 1, 2, 0x14] {
                seeds.push([&[variant, which, flags][..], &vec![0; bytes.len()]].concat());
            }
        }
    }
    seeds
}

/// Each variant undamaged, read from the start and from a record, on the simulated disk and
/// on real files; and a few damaged ones (a flipped payload byte, a cut newest segment, a
/// removed segment).
fn reader_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for variant in 0..logs::VARIANTS {
        seeds.push(vec![variant, 0]);
        seeds.push(vec![variant | 0x80, 7]);
        seeds.push(vec![variant, 3, 0, 2, 0x00, 0x80, 4]);
        seeds.push(vec![variant, 0, 2, 0xFF, 0x00, 0xC0, 0]);
        seeds.push(vec![variant | 0x80, 0, 4, 3, 0, 0, 0]);
        seeds.push(vec![variant | 0x40, 0, 0, 3, 0x00, 0x40, 1]);
        seeds.push(vec![variant | 0xC0, 9, 3, 1, 0x00, 0x80, 9]);
    }
    seeds
}

/// Segment files written by the log itself: one clean, one still open (not sealed).
fn image_seeds() -> Vec<Vec<u8>> {
    let sim = SimStorage::new(2, FaultConfig::default());
    let dir = Path::new("/seed");
    let mut config = SegmentedWalConfig::new(dir);
    config.alignment = 512;
    config.direct_io = false;
    config.batch_bytes_max = 2048;
    config.segment_bytes_target = 8192;
    let wal = SegmentedWal::open_with(sim.clone(), config).expect("seed log opens");
    for i in 0..12u8 {
        let payload = vec![i; usize::from(i) * 40];
        wal.append_durable(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), &payload)).expect("seed append");
    }
    drop(wal);
    let mut images = Vec::new();
    for id in 1..=3 {
        if let Some(bytes) = sim.read_file(&dir.join(format!("{id:020}.wal"))) {
            let mut image = vec![0u8];
            image.extend_from_slice(&bytes);
            images.push(image);
        }
    }
    images
}

/// A log's side file (`MANIFEST`, `MANIFEST.new`, or a segment's header index) replaced by
/// the input, its checksums recomputed or not, or removed. Side files are hints: the log opens
/// with every record, and every reader returns every record, unless `MANIFEST` says what
/// FORMAT.md makes an error (no intact slot: `ManifestDamaged`; a newest segment that is not
/// there: `MissingSegment`, or corruption where the segment it names lost its first batch).
///
/// Input: the log's variant, which side file, flags (bit 0: recompute its checksums; bit 1:
/// remove it; the rest: where reads start), then the file's new bytes as a difference from its
/// bytes in the log (XOR, and the new length). A log's salts are random, drawn anew in every
/// process; as a difference, an input means the same change to whatever salt the file holds.
pub fn side_files(data: &[u8]) {
    let [variant, which, flags, delta @ ..] = data else { return };
    let base = logs::base(*variant);
    let name = side_file_name(&base, *which);
    let before = base.files.iter().find(|(n, _)| *n == name).map_or(&[][..], |(_, bytes)| bytes);
    let mut content: Vec<u8> = delta.iter().enumerate().map(|(i, d)| d ^ before.get(i).copied().unwrap_or(0)).collect();
    if flags & 1 != 0 {
        reseal(&name, &mut content);
    }
    let mut files: Vec<(String, Vec<u8>)> = base.files.iter().filter(|(n, _)| *n != name).cloned().collect();
    if flags & 2 == 0 {
        files.push((name.clone(), content.clone()));
    }
    let slots = &content[..content.len().min(MANIFEST_LEN)];
    let manifest = (name == MANIFEST_FILE && flags & 2 == 0).then(|| ManifestSlot::current(slots));
    let floor = (name == FLOOR_FILE && flags & 2 == 0).then(|| ManifestSlot::current_as(slots, SlotKind::Floor));
    let rules = readers::Rules { complete: true, unchecked_headers: flags & 1 != 0 && name.ends_with(".hdrs"), damaged_after_open: false };
    let sim = logs::sim_with(&files);
    let opened = readers::open_and_read_all(&sim, Path::new(logs::DIR), &base, base.from(flags >> 2), rules);
    // The owner and a read-only look decide alike.
    for outcome in [opened.look, opened.owner] {
        if let Some(floor) = floor {
            check_floor(&base, floor, ManifestSlot::other_damaged_as(slots, SlotKind::Floor), outcome);
            continue;
        }
        match (manifest, outcome) {
            (Some(None), outcome) => {
                assert!(matches!(outcome, Err(WalError::ManifestDamaged { .. })), "a manifest without an intact slot: {outcome:?}")
            }
            (Some(Some(slot)), Err(err)) if slot.newest > base.newest => {
                assert!(
                    matches!(err, WalError::MissingSegment { .. } | WalError::Corruption { .. }),
                    "a manifest naming a later segment: {err:?}"
                )
            }
            (_, outcome) => {
                let info = outcome.unwrap_or_else(|err| panic!("a log whose side file {name} changed must open: {err:?}"));
                assert_eq!((info.first_lsn, info.last_lsn), base.lsns, "every record, whatever {name} holds");
            }
        }
    }
}

/// What opening a log whose `FLOOR` holds `floor` gives (`None`: no intact slot): all of it
/// where the floor is none yet (0) or its oldest segment; where it names a later one of its
/// segments, the records from there on (those below it are what a truncation cut short left);
/// a floor outside its segments says segments are missing, or, where the file's other slot is
/// damaged (it may have held a later floor), says that.
fn check_floor(
    base: &logs::BaseLog,
    floor: Option<ManifestSlot>,
    other_damaged: bool,
    outcome: Result<nodedb_wal::RecoveryInfo, WalError>,
) {
    let oldest = base.files.iter().filter_map(|(n, _)| segment::parse_name(n)).min().expect("a log has segments");
    match floor.map(|slot| slot.newest) {
        None => assert!(matches!(outcome, Err(WalError::FloorDamaged { .. })), "a floor without an intact slot: {outcome:?}"),
        Some(f) if f.0 == 0 || f == oldest => {
            let info = outcome.unwrap_or_else(|err| panic!("a floor at the log's oldest segment: {err:?}"));
            assert_eq!((info.first_lsn, info.last_lsn), base.lsns, "every record");
        }
        Some(f) if (f < oldest || f > base.newest) && other_damaged => {
            assert!(
                matches!(outcome, Err(WalError::FloorSlotDamaged { floor, .. }) if floor == f),
                "a floor outside the log's segments, the other slot damaged: {outcome:?}"
            )
        }
        Some(f) if f < oldest || f > base.newest => {
            assert!(matches!(outcome, Err(WalError::MissingSegment { .. })), "a floor outside the log's segments: {outcome:?}")
        }
        Some(_) => {
            let info = outcome.unwrap_or_else(|err| panic!("a floor inside the log: {err:?}"));
            assert!(info.first_lsn > base.lsns.0 && info.last_lsn == base.lsns.1, "the records from the floor on: {info:?}");
        }
    }
}

/// The side file an input byte names: `MANIFEST`, `MANIFEST.new`, `FLOOR` (254), `FLOOR.new`
/// (255), or the header index of a segment (one of the log's, or the one after its newest).
fn side_file_name(base: &logs::BaseLog, which: u8) -> String {
    match which {
        0 => MANIFEST_FILE.into(),
        1 => MANIFEST_TEMP_FILE.into(),
        254 => FLOOR_FILE.into(),
        255 => FLOOR_TEMP_FILE.into(),
        n => {
            let id = 1 + u64::from(n - 2) % (base.newest.0 + 1);
            segment::index_path(Path::new(""), nodedb_wal::SegmentId(id)).to_string_lossy().into_owned()
        }
    }
}

/// Recomputes the checksums a side file carries, so that the readers see what its fields say.
fn reseal(name: &str, bytes: &mut [u8]) {
    if name.ends_with(".hdrs") {
        if let Some(at) = bytes.len().checked_sub(4) {
            let crc = crc32c(&bytes[..at]);
            bytes[at..].copy_from_slice(&crc.to_le_bytes());
        }
        return;
    }
    for at in [0, SLOT_SPACING] {
        if let Some(slot) = bytes.get_mut(at..at + SLOT_LEN) {
            let crc = crc32c(&slot[..24]);
            slot[24..28].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// A valid multi-segment log (see `logs`: plaintext or encrypted; closed, left open, crashed
/// with appends in flight, or reopened and truncated with files reused; small segments or
/// large ones that readers read with helper threads), damaged as the input says, before it is
/// opened or after, then opened every way the crate offers and read with every reader: none
/// panics, each returns records or a typed error, every record returned is one that was
/// written, they agree as far as each went, and one that ends without an error has every
/// record recovery found.
///
/// Input: the log's variant (bit 6: damage after opening; bit 7: on real files, where mapped
/// readers really map), where reads start, then the damage (see `logs::damage`).
pub fn readers(data: &[u8]) {
    let [variant, from, ops @ ..] = data else { return };
    let base = logs::base(*variant);
    let from = base.from(*from);
    let (after_open, real) = (variant & 0x40 != 0, variant & 0x80 != 0);
    let mut files = base.files.clone();
    if !after_open {
        logs::damage(&mut files, ops);
    }
    let rules = readers::Rules { complete: false, unchecked_headers: false, damaged_after_open: false };
    match (real, after_open) {
        (false, false) => drop(readers::open_and_read_all(&logs::sim_with(&files), Path::new(logs::DIR), &base, from, rules)),
        (false, true) => readers::damage_after_open(&logs::sim_with(&files), Path::new(logs::DIR), &base, from, ops),
        (true, false) => drop(readers::open_and_read_all(&FsStorage::new(), &RealDir::with(&files).0, &base, from, rules)),
        (true, true) => readers::damage_after_open(&FsStorage::new(), &RealDir::with(&files).0, &base, from, ops),
    }
}

/// A temporary directory holding a log's files, removed when dropped.
struct RealDir(pub(crate) PathBuf);

impl RealDir {
    fn with(files: &[(String, Vec<u8>)]) -> RealDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodedb-wal-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("a log file");
        }
        RealDir(dir)
    }
}

impl Drop for RealDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic mutator for seeds: flips, overwrites, truncation, duplication.
pub fn mutate(input: &[u8], mut state: u64) -> Vec<u8> {
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = input.to_vec();
    for _ in 0..1 + next() % 4 {
        if out.is_empty() {
            out.push(next() as u8);
            continue;
        }
        let at = (next() % out.len() as u64) as usize;
        match next() % 6 {
            0 => out[at] ^= 1 << (next() % 8),
            1 => out[at] = next() as u8,
            2 => out.truncate(at),
            3 => {
                let end = (at + 1 + (next() % 64) as usize).min(out.len());
                let chunk = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
            4 => out[at..].iter_mut().take(16).for_each(|b| *b = 0),
            _ => out.insert(at, next() as u8),
        }
    }
    out
}
