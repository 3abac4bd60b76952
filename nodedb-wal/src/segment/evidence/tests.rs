//! The look past damage finds exactly what it found when it read and checksummed every
//! candidate frame in full, on damaged segments, crafted headers, frames of other salts, frames
//! across read boundaries and claims past the end, with reads aligned as `O_DIRECT` needs; and
//! a frame a writer puts down after the running checksums were taken is judged as the file
//! reads then. Each candidate costs a bounded number of bytes whatever length it claims: a
//! file of headers each claiming a frame to its end once cost the square of its length.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use super::{Claims, scan_claims};
use crate::format::frame::{HEADER_LEN, RecordHeader, decode_frame, encode_frame};
use crate::format::layout::round_up;
use crate::format::preamble::PREAMBLE_SIZE;
use crate::segment::reader::ChunkReader;
use crate::segment::running::CHECKSUMMED;
use crate::storage::{FaultConfig, SECTOR, SimRng, SimStorage, Storage, StorageFile};
use crate::types::{Lsn, RecordType, Scope};
use crate::{CorruptionKind, ReadOnlyWal, Record, SegmentedWal, SegmentedWalConfig, WalError};

/// A file in memory whose reads must be aligned as with `O_DIRECT`, and whose bytes can be
/// replaced right after the first read of more than `swap_after` bytes (a writer's, between
/// the running checksums' read and the scan's).
struct Image {
    bytes: Mutex<Vec<u8>>,
    align: usize,
    swap: Mutex<Option<(usize, Vec<u8>)>>,
}

impl Image {
    fn new(bytes: &[u8], align: usize) -> Image {
        Image { bytes: Mutex::new(bytes.to_vec()), align, swap: Mutex::new(None) }
    }
}

impl StorageFile for Image {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(self.align)
            && buf.len().is_multiple_of(self.align)
            && offset.is_multiple_of(self.align as u64);
        if !aligned {
            return Err(io::Error::from_raw_os_error(22));
        }
        let mut bytes = self.bytes.lock().unwrap();
        let start = (offset as usize).min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        let mut swap = self.swap.lock().unwrap();
        if swap.as_ref().is_some_and(|(after, _)| buf.len() > *after) {
            *bytes = swap.take().expect("checked").1;
        }
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }
}

/// How a reader sees a file: its unit of alignment, its chunk, and the length it was told.
#[derive(Clone, Copy, Debug)]
struct View {
    align: usize,
    chunk: usize,
    /// The file's length as listed, against its bytes' (shorter or longer: a file cut or grown
    /// since it was listed).
    listed_delta: i64,
}

const VIEWS: [View; 4] = [
    View { align: 512, chunk: 1 << 20, listed_delta: 0 },
    View { align: 4096, chunk: 64 << 10, listed_delta: 0 },
    View { align: 4096, chunk: 1 << 20, listed_delta: -5000 },
    View { align: 512, chunk: 8192, listed_delta: 3000 },
];

fn reader(file: Image, len: usize, view: View) -> ChunkReader<Image> {
    let listed = (len as i64 + view.listed_delta).max(0) as u64;
    ChunkReader::new(file, "image".into(), listed, view.align, view.chunk)
}

/// The look as first written: every candidate frame read and checksummed in full.
fn in_full(reader: &mut ChunkReader<Image>, from: u64, step: u64, salt: Option<u32>) -> Claims {
    let mut claims = Claims::default();
    let mut at = from;
    while at < reader.file_len() {
        let header = RecordHeader::decode(reader.get(at, HEADER_LEN).unwrap()).ok();
        let header = header.filter(|h| at + h.frame_len() as u64 <= reader.file_len());
        if let Some(header) = header.and_then(|h| decode_frame(reader.get(at, h.frame_len()).unwrap()).ok()) {
            if salt.is_none_or(|s| s == header.salt) {
                claims.durable = claims.durable.max(Some(header.durable_lsn));
            } else {
                claims.foreign = true;
            }
            at += header.frame_len() as u64;
            continue;
        }
        let next = round_up(at + 1, step);
        if !claims.debris {
            claims.debris = reader.get(at, (next - at) as usize).unwrap().iter().any(|&b| b != 0);
        }
        at = next;
    }
    claims
}

/// Both looks over `bytes`, seen as `view` sees it: the new one's claims, and the old one's.
fn both(bytes: &[u8], view: View, from: u64, step: u64, salt: Option<u32>) -> (Claims, Claims) {
    let mut fast = reader(Image::new(bytes, view.align), bytes.len(), view);
    let mut full = reader(Image::new(bytes, view.align), bytes.len(), view);
    (scan_claims(&mut fast, from, step, salt).expect("scan"), in_full(&mut full, from, step, salt))
}

fn header(lsn: u64, salt: u32, record_type: RecordType, payload_len: usize) -> RecordHeader {
    RecordHeader {
        lsn: Lsn(lsn),
        durable_lsn: Lsn(lsn - 1),
        salt,
        record_type,
        scope: Scope::default(),
        payload_len: payload_len as u32,
        flags: 0,
    }
}

/// A whole frame of `payload_len` bytes of `fill`.
fn frame(lsn: u64, salt: u32, record_type: RecordType, payload_len: usize, fill: u8) -> Vec<u8> {
    let h = header(lsn, salt, record_type, payload_len);
    let mut out = vec![0; h.frame_len()];
    encode_frame(&h, &vec![fill; payload_len], &mut out);
    out
}

fn put(bytes: &mut [u8], at: usize, what: &[u8]) {
    let end = (at + what.len()).min(bytes.len());
    bytes[at..end].copy_from_slice(&what[..end - at]);
}

/// Segment files of a log written by the crate with blocks of `block` bytes: records short
/// and longer than a block, some of whose payloads hold whole frames (of the segment's salt
/// or another), and batches padded to their block. Each with its salt.
fn written_segments(block: usize) -> Vec<(Vec<u8>, u32)> {
    let sim = SimStorage::new(11, FaultConfig::default());
    let mut config = SegmentedWalConfig::new("/log");
    config.direct_io = false;
    config.alignment = block;
    config.segment_bytes_target = 96 * 1024;
    config.batch_bytes_max = 32 * 1024;
    let wal = SegmentedWal::open_with(sim.clone(), config).expect("open");
    let inner = |lsn, salt| frame(lsn, salt, RecordType::optional(0x100), 5000, 3);
    for i in 0..80u64 {
        let payload = match i % 5 {
            0 => [inner(1000 + i, 7), vec![0; 64], inner(2000 + i, 9)].concat(),
            1 => vec![0; 300],
            2 => vec![i as u8; 9000 + i as usize * 13],
            _ => vec![i as u8; (i as usize * 97) % 1500],
        };
        wal.append(Record::new(RecordType::optional(0x100), &payload)).expect("append");
        if i % 3 == 2 {
            wal.sync().expect("sync");
        }
    }
    drop(wal); // unsealed: the newest segment ends as a crash leaves it
    let mut names = sim.list(Path::new("/log")).expect("list");
    names.retain(|n| crate::segment::parse_name(n).is_some());
    names.sort();
    let segment = |n: &String| sim.read_file(&Path::new("/log").join(n)).expect("segment");
    names.iter().map(segment).map(|b| (b.clone(), RecordHeader::decode(&b[16..]).expect("header frame").salt)).collect()
}

/// `bytes` with a few random changes: bit flips, zeroed runs, a cut, copied runs, and headers
/// claiming frames to the end or past it.
fn damaged(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut rng = SimRng::new(seed);
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(out.len() as u64) as usize;
        let sector = at & !(SECTOR - 1);
        match rng.below(6) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at..].iter_mut().take(1 + rng.below(9000) as usize).for_each(|b| *b = 0),
            2 => out.truncate(at.max(HEADER_LEN)),
            3 => {
                let from = rng.below(out.len() as u64) as usize;
                let run: Vec<u8> = out[from..].iter().take(6000).copied().collect();
                put(&mut out, at, &run);
            }
            4 if out.len() - sector >= HEADER_LEN => {
                // A claim 100 bytes short of the end, to it, or 100 bytes past it.
                let len = (out.len() - sector - HEADER_LEN + rng.below(3) as usize * 100).saturating_sub(100);
                header(5, 7, RecordType::optional(0x100), len).encode_into(&mut out[sector..]);
            }
            _ => out[at] = rng.next_u64() as u8,
        }
    }
    out
}

#[test]
fn the_look_finds_what_checking_every_frame_in_full_finds_on_damaged_segments() {
    let mut compared = [0usize; 3];
    for block in [512, 4096] {
        let segments = written_segments(block);
        assert!(segments.len() >= 3, "a log of several segments");
        for (k, (bytes, salt)) in segments.iter().enumerate() {
            for seed in 0..30u64 {
                let bytes = if seed == 0 { bytes.clone() } else { damaged(bytes, seed * 31 + k as u64 + block as u64) };
                let view = VIEWS[(seed as usize + k) % VIEWS.len()];
                for from in [512, 777, 4096, bytes.len() as u64 / 3] {
                    for salt in [Some(*salt), None, Some(salt ^ 1)] {
                        let step = block as u64;
                        let (fast, full) = both(&bytes, view, from, step, salt);
                        assert_eq!(fast, full, "block {block} segment {k} seed {seed} from {from} salt {salt:?} {view:?}");
                        compared[0] += usize::from(full.durable.is_some());
                        compared[1] += usize::from(full.foreign);
                        compared[2] += usize::from(full.debris);
                    }
                }
            }
        }
    }
    assert!(compared.iter().all(|&n| n > 100), "claims, foreign frames and debris all found ({compared:?})");
}

/// A file of `len` bytes with a header at every `step` from `first` on, each claiming a frame
/// to the end of the file (`past` bytes beyond it), with a checksum that does not hold; the
/// last one, where `intact_last`, is a whole frame to the end.
fn claiming_to_the_end(len: usize, first: usize, step: usize, past: usize, intact_last: bool) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let starts: Vec<usize> = (first..len - HEADER_LEN).step_by(step).collect();
    for &at in &starts {
        header(9, 7, RecordType::optional(0x100), len - at - HEADER_LEN + past).encode_into(&mut bytes[at..]);
        bytes[at] = 1; // the checksum: nothing sums to it here
    }
    if intact_last && let Some(&at) = starts.last() {
        let whole = frame(40, 7, RecordType::optional(0x100), len - at - HEADER_LEN, 0);
        put(&mut bytes, at, &whole);
    }
    bytes
}

#[test]
fn the_look_finds_what_checking_every_frame_in_full_finds_on_crafted_files() {
    let mut files = Vec::new();
    for (len, past, intact_last) in [(300_000, 0, false), (300_000, 0, true), (299_999, 0, true), (300_000, 1, false)] {
        files.push(claiming_to_the_end(len, 4096, 4096, past, intact_last));
        files.push(claiming_to_the_end(len, 4096 + 512, 512, past, intact_last));
    }
    // Intact frames longer than a block, across the running checksums' reads (1 MiB) and the
    // reader's chunks, of this salt and another, padding frames of any length, and claims
    // reaching past the end.
    let mut bytes = vec![0u8; (3 << 20) + 777];
    let mut at = 8192;
    for (i, len) in [70_000, 1 << 20, 5000, 300_000, 4097, 900_000].into_iter().enumerate() {
        let record_type = if i == 3 { RecordType::PADDING } else { RecordType::optional(0x100) };
        let f = frame(100 + i as u64, if i == 2 { 9 } else { 7 }, record_type, len, i as u8 + 1);
        put(&mut bytes, at, &f);
        at = round_up((at + f.len()) as u64, if i % 2 == 0 { 512 } else { 4096 }) as usize;
    }
    let tail = bytes.len() - 4096;
    header(200, 7, RecordType::optional(0x100), 10_000).encode_into(&mut bytes[tail..]);
    files.push(bytes.clone());
    let mut cut = bytes.clone();
    cut[8192 + 70_000] ^= 0x10; // the first long frame is not intact: its inside is looked at
    files.push(cut);
    let mut checked = 0;
    for bytes in &files {
        for view in VIEWS {
            for (from, step) in [(4096, 4096), (512, 512), (8192 + 33, 4096)] {
                for salt in [Some(7), None, Some(9)] {
                    let (fast, full) = both(bytes, view, from, step, salt);
                    assert_eq!(fast, full, "file of {} from {from} step {step} salt {salt:?} {view:?}", bytes.len());
                    checked += usize::from(full.durable.is_some());
                }
            }
        }
    }
    assert!(checked > 50, "intact frames found ({checked})");
}

#[test]
fn a_frame_written_after_the_running_checksums_were_taken_is_judged_as_the_file_reads_then() {
    // First a frame longer than a step: checking it has the running checksums read the first
    // MiB of the file, zeros at 512 KiB. Then a writer puts a long frame there, before the
    // scan's reader (64 KiB chunks) gets to it.
    let mut before = vec![0u8; 2 << 20];
    put(&mut before, 4096, &frame(10, 7, RecordType::optional(0x100), 20_000, 1));
    let mut after = before.clone();
    put(&mut after, 512 << 10, &frame(11, 7, RecordType::optional(0x100), 30_000, 2));
    for align in [512, 4096] {
        let view = View { align, chunk: 64 << 10, listed_delta: 0 };
        let image = Image::new(&before, align);
        *image.swap.lock().unwrap() = Some((view.chunk, after.clone()));
        let mut fast = reader(image, before.len(), view);
        let claims = scan_claims(&mut fast, 4096, 4096, Some(7)).expect("scan");
        assert!(image_swapped(&fast), "the writer wrote after the first read of the checksums");
        let (_, full) = both(&after, view, 4096, 4096, Some(7));
        assert_eq!(claims, full, "align {align}");
        assert_eq!(claims.durable, Some(Lsn(10)), "the frame written since is intact");
        assert!(!claims.debris);
    }
}

fn image_swapped(reader: &ChunkReader<Image>) -> bool {
    reader.file().swap.lock().unwrap().is_none()
}

#[test]
fn a_look_checks_headers_each_claiming_a_frame_to_the_end_at_a_cost_linear_in_the_file() {
    // A length off the sector too: the claims then end in a last sector summed only in part.
    let cases = [(1 << 20, 4096, 4096, 4096), (1 << 20, 512, 512, 4096), (1 << 20, 512, 512, 512), ((1 << 20) - 100, 512, 512, 512)];
    for (len, first, step, align) in cases {
        let bytes = claiming_to_the_end(len, first, step, 0, false);
        let mut reader = reader(Image::new(&bytes, align), len, View { align, chunk: 1 << 20, listed_delta: 0 });
        CHECKSUMMED.set(0);
        let claims = scan_claims(&mut reader, first as u64, step as u64, Some(7)).expect("scan");
        assert_eq!(claims, Claims { durable: None, debris: true, foreign: false });
        let checksummed = CHECKSUMMED.get();
        // The file once, and a sector at each end of each candidate's claim.
        let bound = (len + 2 * (len / step) * SECTOR) as u64;
        assert!(checksummed <= bound, "{checksummed} bytes checksummed for a file of {len} (step {step}, align {align})");
    }
}

/// Frames no longer than a step cost what their bytes do: each is checked in full, once, and
/// no running checksums are taken for them (those would read and sum up to a chunk more).
#[test]
fn frames_no_longer_than_a_step_are_checked_in_full_without_running_checksums() {
    let step = 4096;
    let mut bytes = Vec::new();
    for lsn in 10..74 {
        let len = if lsn % 2 == 0 { step - HEADER_LEN } else { 100 };
        let f = frame(lsn, 7, RecordType::optional(0x100), len, lsn as u8);
        bytes.extend_from_slice(&f);
        bytes.resize(round_up(bytes.len() as u64, step as u64) as usize, 0);
    }
    let frames: u64 = (10..74).map(|lsn| if lsn % 2 == 0 { step } else { HEADER_LEN + 100 } as u64).sum();
    for view in VIEWS.into_iter().filter(|v| v.listed_delta == 0) {
        let mut reader = reader(Image::new(&bytes, view.align), bytes.len(), view);
        CHECKSUMMED.set(0);
        let claims = scan_claims(&mut reader, 0, step as u64, Some(7)).expect("scan");
        assert_eq!(claims, Claims { durable: Some(Lsn(72)), debris: false, foreign: false }, "{view:?}");
        assert_eq!(CHECKSUMMED.get(), frames, "each frame once, in full ({view:?})");
    }
}

/// Length of the crafted segments opened below.
const SEGMENT_LEN: usize = 2 << 20;

/// A log of five synced records as a power cut leaves it, whose newest segment continues after
/// its records with headers each claiming a frame to the end of a file of [`SEGMENT_LEN`]
/// bytes, none intact: at every block from the first after the records, or, where
/// `lose_head`, at every sector after a zeroed first one.
fn crafted_log(dir: &Path, lose_head: bool) -> SimStorage {
    let sim = SimStorage::new(3, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).expect("open");
    for _ in 0..5 {
        wal.append_durable(Record::new(RecordType::optional(0x100), b"acknowledged")).expect("append");
    }
    let sim = sim.crash(1);
    drop(wal);
    let path = crate::segment::path(dir, crate::types::SegmentId(1));
    let old = sim.read_file(&path).expect("the segment");
    let mut records_end = PREAMBLE_SIZE;
    while let Ok(h) = decode_frame(&old[records_end..]) {
        records_end += h.frame_len();
    }
    let (first, step) = if lose_head { (SECTOR, SECTOR) } else { (round_up(records_end as u64, 4096) as usize, 4096) };
    let mut bytes = claiming_to_the_end(SEGMENT_LEN, first, step, 0, false);
    if !lose_head {
        bytes[..records_end].copy_from_slice(&old[..records_end]);
    }
    sim.write_file(&path, &bytes);
    sim
}

/// Bytes checksummed on this thread (by the looks past damage) while `open` runs.
fn checksummed<T>(open: impl FnOnce() -> T) -> (u64, T) {
    CHECKSUMMED.set(0);
    let opened = open();
    (CHECKSUMMED.get(), opened)
}

/// At most this many times the segment's length checksummed: the running checksums once,
/// and a sector at each end of each candidate's claim (a candidate a sector).
const CHECKSUMMED_MAX: u64 = 4 * SEGMENT_LEN as u64;

#[test]
fn opening_a_torn_segment_of_headers_each_claiming_a_frame_to_its_end_checksums_it_a_few_times() {
    let dir = Path::new("/wal");
    let sim = crafted_log(dir, false);
    let (sum, look) = checksummed(|| ReadOnlyWal::open_with(sim.clone(), dir, None).expect("a torn tail"));
    assert!(sum <= CHECKSUMMED_MAX, "a look checksummed {sum} bytes of a {SEGMENT_LEN}-byte segment");
    let (sum, wal) = checksummed(|| SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).expect("a torn tail"));
    assert!(sum <= CHECKSUMMED_MAX, "the open checksummed {sum} bytes of a {SEGMENT_LEN}-byte segment");
    for info in [look.recovery_info(), wal.recovery_info()] {
        assert_eq!(info.last_lsn, Lsn(5), "no header after the records is intact");
        assert!(info.torn_tail.is_some());
    }
}

#[test]
fn opening_a_segment_with_a_lost_head_and_headers_each_claiming_a_frame_to_its_end_checksums_it_a_few_times() {
    let dir = Path::new("/wal");
    let sim = crafted_log(dir, true);
    let (sum, look) = checksummed(|| ReadOnlyWal::open_with(sim.clone(), dir, None));
    assert!(sum <= CHECKSUMMED_MAX, "a look checksummed {sum} bytes of a {SEGMENT_LEN}-byte segment");
    let (sum, wal) = checksummed(|| SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)));
    assert!(sum <= CHECKSUMMED_MAX, "the open checksummed {sum} bytes of a {SEGMENT_LEN}-byte segment");
    // Nothing intact after the lost head, but the manifest names the segment: its first batch
    // was durable.
    for outcome in [look.map(|_| ()), wal.map(|_| ())] {
        let err = outcome.expect_err("a lost head the manifest vouches for");
        assert!(matches!(err, WalError::Corruption { kind: CorruptionKind::BadSegmentHeader, .. }), "{err}");
    }
}

mod attacks;
