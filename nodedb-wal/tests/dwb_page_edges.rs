//! Page lengths at the edges of the double-write buffer's slot packing (1 byte, lengths around
//! the 8-byte slot rounding, a slot that exactly fills a block or spills one byte over it,
//! unaligned pages that straddle sectors in place, and the largest page the buffer takes): a
//! power cut at every step of a batch leaves its pages all old or all new after recovery, an
//! acknowledged batch is durable, and what recovery settled survives another crash without a
//! second repair.

mod dwb_support;

use std::path::Path;

use dwb_support::{DIR, page_file_in, page_of_len};
use nodedb_wal::format::dwb::PAGE_BYTES_MAX;
use nodedb_wal::storage::faulty::FaultyStorage;
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile, SyncFailure};
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, DwbRecovery, FileId, PageCheck, SimStorage};

const FILE: FileId = FileId(1);
/// Pages in the file; a batch rewrites the first [`BATCH`] of them.
const PAGES: u64 = 4;
const BATCH: u64 = 3;
/// The slot header before each image.
const SLOT_HEADER: usize = 56;

/// A page of `len` bytes at `version`: self-checking where it has room for a checksum, else
/// every byte the version (never zero), so that a page torn between two versions, or a hole
/// of zeros, is told from either.
fn page(len: usize, page_no: u64, version: u64) -> Vec<u8> {
    if len >= 24 { page_of_len(len, FILE, page_no, version) } else { vec![version as u8; len] }
}

fn check(_: FileId, bytes: &[u8]) -> PageCheck {
    if bytes.len() >= 24 {
        return dwb_support::check(FILE, bytes);
    }
    match bytes.first() {
        Some(&v) if v != 0 && bytes.iter().all(|&b| b == v) => PageCheck::Intact { version: u64::from(v) },
        _ => PageCheck::Torn,
    }
}

fn path() -> std::path::PathBuf {
    page_file_in(Path::new(DIR), FILE)
}

fn disk(len: usize, seed: u64) -> SimStorage {
    let sim = SimStorage::new(seed, FaultConfig::default());
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    sim.create_dir_all(Path::new(DIR)).unwrap();
    for level in Path::new(DIR).ancestors().skip(1) {
        sim.sync_dir(level).unwrap();
    }
    let f = sim.open(&path(), OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
    for n in 0..PAGES {
        f.write_at(&page(len, n, 1), n * len as u64).unwrap();
    }
    f.sync_data().unwrap();
    sim.sync_dir(Path::new(DIR)).unwrap();
    sim
}

fn config(len: usize) -> DwbConfig {
    let mut c = DwbConfig::new(Path::new(DIR).join("dwb"));
    c.mode = DwbMode::Buffered;
    // Room for a whole batch of the largest pages, and a ring that wraps after a few batches.
    c.batch_bytes_max = ((len + SLOT_HEADER).next_multiple_of(8) * BATCH as usize).next_multiple_of(4096).max(64 * 1024);
    c.ring_bytes = 3 * c.batch_bytes_max as u64;
    c
}

fn open<S: Storage>(storage: S, len: usize) -> (DoubleWriteBuffer<S>, DwbRecovery) {
    let dwb = DoubleWriteBuffer::open_with(storage, config(len)).unwrap();
    dwb.register_file(FILE, path(), len).unwrap();
    let report = dwb.recover(check).unwrap();
    (dwb, report)
}

/// Each page's version in place, `None` where torn.
fn versions(sim: &SimStorage, len: usize) -> Vec<Option<u64>> {
    let bytes = sim.read_file(&path()).unwrap();
    (0..PAGES as usize)
        .map(|n| match bytes.get(n * len..(n + 1) * len).map(|p| check(FILE, p)) {
            Some(PageCheck::Intact { version }) => Some(version),
            _ => None,
        })
        .collect()
}

fn batch(len: usize, version: u64) -> Vec<(FileId, u64, Vec<u8>)> {
    (0..BATCH).map(|n| (FILE, n, page(len, n, version))).collect()
}

fn crash_at_every_step_with_pages_of(len: usize) {
    // Buffer write and sync, one write per page, one sync of the page file.
    let ops = 2 + BATCH + 1;
    let old: Vec<Option<u64>> = vec![Some(2), Some(2), Some(2), Some(1)];
    let new: Vec<Option<u64>> = vec![Some(3), Some(3), Some(3), Some(1)];
    let mut outcomes = (0, 0);
    for budget in 0..=ops {
        for seed in 0..6 {
            let sim = disk(len, seed);
            let faulty = FaultyStorage::new(sim.clone());
            let (dwb, _) = open(faulty.clone(), len);
            // A batch before, so that the ring holds an older image of every page written.
            let earlier = batch(len, 2);
            dwb.write_pages(&earlier.iter().map(|(f, n, b)| (*f, *n, &b[..])).collect::<Vec<_>>()).unwrap();
            faulty.cut_power_after(budget);
            let pages = batch(len, 3);
            let result = dwb.write_pages(&pages.iter().map(|(f, n, b)| (*f, *n, &b[..])).collect::<Vec<_>>());
            drop(dwb);
            let after = sim.crash(seed * 7919 + budget);
            let (dwb, report) = open(after.clone(), len);
            let got = versions(&after, len);
            let context = format!("pages of {len} bytes, power cut after {budget} of {ops} steps, seed {seed}: {got:?} ({report:?})");
            assert!(got == old || got == new, "every page old or every page new: {context}");
            if result.is_ok() {
                assert_eq!(got, new, "an acknowledged batch is durable: {context}");
            }
            outcomes.0 += usize::from(got == old);
            outcomes.1 += usize::from(got == new);
            drop(dwb);
            let again = after.crash(seed + 1);
            let (_, second) = open(again.clone(), len);
            assert_eq!(versions(&again, len), got, "{context}");
            assert!(second.pages_restored.is_empty(), "{context}: {second:?}");
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "pages of {len} bytes: the cuts reach both outcomes {outcomes:?}");
}

#[test]
fn pages_of_one_to_twenty_four_bytes_are_all_old_or_all_new_after_a_power_cut_at_any_step() {
    for len in [1, 2, 7, 8, 9, 23, 24] {
        crash_at_every_step_with_pages_of(len);
    }
}

#[test]
fn pages_whose_slots_fill_a_block_exactly_or_spill_one_byte_are_all_old_or_all_new_after_a_power_cut_at_any_step() {
    // A slot is its 56-byte header and the image, rounded up to 8 bytes.
    for len in [512 - SLOT_HEADER, 512 - SLOT_HEADER + 1, 4096 - SLOT_HEADER, 4096 - SLOT_HEADER + 1, 4095, 4096, 4097] {
        crash_at_every_step_with_pages_of(len);
    }
}

#[test]
fn the_largest_pages_are_all_old_or_all_new_after_a_power_cut_at_any_step() {
    for len in [64 * 1024 + 3, PAGE_BYTES_MAX - 1, PAGE_BYTES_MAX] {
        crash_at_every_step_with_pages_of(len);
    }
}
