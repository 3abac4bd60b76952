//! The resync past the salvage's stop finds exactly the intact frames a scan that checks every
//! byte offset in full finds, on damaged segments, and checks each candidate frame at a cost
//! that does not grow with the length it claims: a file of headers each claiming a frame to
//! its end once cost the square of its length (3 s for a 1.5 MiB segment).

use std::path::Path;

use super::{IntactAfter, resync};
use crate::format::frame::{HEADER_LEN, RecordHeader, decode_frame, encode_frame};
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::running::CHECKSUMMED;
use crate::storage::{FaultConfig, OpenMode, SimStorage, Storage, StorageFile};
use crate::types::{Lsn, RecordType, Scope};
use crate::{Record, SegmentedWal, SegmentedWalConfig};

fn reader_over(bytes: &[u8]) -> ChunkReader<<SimStorage as Storage>::File> {
    let sim = SimStorage::new(1, FaultConfig::default());
    let path = Path::new("/scan/seg");
    sim.create_dir_all(Path::new("/scan")).expect("dir");
    let file = sim.open(path, OpenMode { create: true, create_new: false, write: true, direct: false }).expect("open");
    file.write_at(bytes, 0).expect("write");
    let len = file.len().expect("len");
    ChunkReader::new(file, path.to_path_buf(), len, 512, DEFAULT_CHUNK)
}

/// The scan as first written: every offset, each candidate frame checked in full.
fn bytewise(bytes: &[u8], from: u64, salt: Option<u32>, next_lsn: Lsn) -> IntactAfter {
    let mut found = IntactAfter::default();
    let mut at = from as usize;
    while at + HEADER_LEN <= bytes.len() {
        match decode_frame(&bytes[at..]) {
            Ok(header) if salt.is_none_or(|s| s == header.salt) => {
                if !header.record_type.is_meta() && header.lsn >= next_lsn {
                    found.add(&header);
                }
                at += header.frame_len();
            }
            _ => at += 1,
        }
    }
    found
}

fn resynced(bytes: &[u8], from: u64, salt: Option<u32>, next_lsn: Lsn) -> IntactAfter {
    let mut found = IntactAfter::default();
    resync(&mut reader_over(bytes), from, salt, next_lsn, &mut found).expect("resync");
    found
}

fn header(lsn: u64, salt: u32, payload_len: usize) -> RecordHeader {
    RecordHeader {
        lsn: Lsn(lsn),
        durable_lsn: Lsn(lsn.saturating_sub(1)),
        salt,
        record_type: RecordType::optional(0x100),
        scope: Scope::default(),
        payload_len: payload_len as u32,
        flags: 0,
    }
}

fn frame(lsn: u64, salt: u32, payload: &[u8]) -> Vec<u8> {
    let h = header(lsn, salt, payload.len());
    let mut out = vec![0; h.frame_len()];
    encode_frame(&h, payload, &mut out);
    out
}

/// Segment files of a log written by the crate, some of whose payloads hold whole frames
/// (of the segment's salt or another), so that a scan finds frames inside frames.
fn written_segments() -> Vec<(Vec<u8>, u32)> {
    let sim = SimStorage::new(5, FaultConfig::default());
    let mut config = SegmentedWalConfig::new("/log");
    config.direct_io = false;
    config.alignment = 512;
    config.segment_bytes_target = 16 * 1024;
    config.batch_bytes_max = 4096;
    let wal = SegmentedWal::open_with(sim.clone(), config).expect("open");
    for i in 0..60u64 {
        let payload = match i % 4 {
            0 => [frame(1000 + i, 7, &[i as u8; 100]), vec![0; 64], frame(2000 + i, 7, b"inner")].concat(),
            1 => vec![0; 300],
            _ => vec![i as u8; (i as usize * 97) % 1500],
        };
        wal.append(Record::new(RecordType::optional(0x100), &payload)).expect("append");
        if i % 3 == 2 {
            wal.sync().expect("sync");
        }
    }
    wal.close().expect("close");
    let mut names = sim.list(Path::new("/log")).expect("list");
    names.retain(|n| crate::segment::parse_name(n).is_some());
    names.sort();
    names
        .iter()
        .map(|n| {
            let bytes = sim.read_file(&Path::new("/log").join(n)).expect("segment");
            let salt = RecordHeader::decode(&bytes[16..]).expect("the header frame").salt;
            (bytes, salt)
        })
        .collect()
}

/// A small deterministic generator for damage.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

fn damaged(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut state = seed;
    for _ in 0..1 + next(&mut state) % 6 {
        let at = next(&mut state) as usize % out.len();
        match next(&mut state) % 5 {
            0 => out[at] ^= 1 << (next(&mut state) % 8),
            1 => out[at..].iter_mut().take(1 + next(&mut state) as usize % 700).for_each(|b| *b = 0),
            2 => out.truncate(at.max(HEADER_LEN)),
            3 => {
                let from = next(&mut state) as usize % out.len();
                let chunk: Vec<u8> = out[from..].iter().take(600).copied().collect();
                let end = (at + chunk.len()).min(out.len());
                out[at..end].copy_from_slice(&chunk[..end - at]);
            }
            _ => out[at] = next(&mut state) as u8,
        }
    }
    out
}

#[test]
fn the_resync_finds_what_checking_every_offset_in_full_finds_on_damaged_segments() {
    let segments = written_segments();
    assert!(segments.len() >= 3, "a log of several segments");
    let mut compared = 0;
    for (k, (bytes, salt)) in segments.iter().enumerate() {
        for seed in 0..40u64 {
            let bytes = if seed == 0 { bytes.clone() } else { damaged(bytes, seed * 31 + k as u64) };
            for from in [0, 16, 512, 777, bytes.len() as u64 / 2] {
                for (salt, next_lsn) in [(Some(*salt), Lsn(0)), (None, Lsn(0)), (Some(*salt), Lsn(20)), (Some(salt ^ 1), Lsn(0))] {
                    let expected = bytewise(&bytes, from, salt, next_lsn);
                    assert_eq!(resynced(&bytes, from, salt, next_lsn), expected, "segment {k} seed {seed} from {from} salt {salt:?}");
                    compared += usize::from(expected.records > 0);
                }
            }
        }
    }
    assert!(compared > 1000, "most scans find records ({compared})");
}

#[test]
fn a_resync_checks_headers_each_claiming_a_frame_to_the_end_at_a_cost_linear_in_the_file() {
    // A header every 48 bytes, each with a payload length reaching the file's end and a
    // checksum that does not hold: every one is a candidate as long as the rest of the file.
    let len = 256 * 1024;
    let mut bytes = vec![0u8; len];
    for at in (0..len - HEADER_LEN).step_by(HEADER_LEN) {
        header(1, 7, len - at - HEADER_LEN).encode_into(&mut bytes[at..]);
        bytes[at] = 1; // no checksum
    }
    CHECKSUMMED.set(0);
    assert_eq!(resynced(&bytes, 0, Some(7), Lsn(0)), IntactAfter::default());
    let checksummed = CHECKSUMMED.get();
    assert!(checksummed <= 8 * len as u64, "{checksummed} bytes checksummed for a file of {len}");
}

#[test]
fn a_frame_whose_magic_straddles_two_reads_of_the_scan_is_found() {
    let chunk = super::SCAN_CHUNK;
    let mut bytes = vec![0u8; 3 * chunk];
    // The first read looks at `4..4 + chunk`: this frame's magic begins on its last byte.
    for (at, lsn) in [(chunk - 1, 5), (2 * chunk + 3, 6)] {
        let f = frame(lsn, 7, b"straddling");
        bytes[at..at + f.len()].copy_from_slice(&f);
    }
    let found = resynced(&bytes, 0, Some(7), Lsn(0));
    assert_eq!(found, bytewise(&bytes, 0, Some(7), Lsn(0)));
    assert_eq!(found.lsn_ranges, vec![Lsn(5)..=Lsn(6)]);
}
