//! Helpers for the double-write buffer tests: self-checking pages and page files on the
//! simulated disk. The tests cut the power with the library's `FaultyStorage`.

#![allow(dead_code, reason = "each test uses a different subset of these helpers")]

use std::path::{Path, PathBuf};

use nodedb_wal::dwb::PageWrite;
use nodedb_wal::storage::{FaultConfig, OpenMode, SimRng, Storage, StorageFile, SyncFailure};
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, DwbRecovery, FileId, PageCheck, SimStorage};

/// Bytes of every test page.
pub const PAGE: usize = 4096;
/// The directory of the buffer and the page files on the simulated disk.
pub const DIR: &str = "/sim/db";
/// The page files the tests use.
pub const FILES: [FileId; 2] = [FileId(1), FileId(2)];
/// Pages per file.
pub const PAGES: u64 = 8;

/// The buffer file.
pub fn dwb_path() -> PathBuf {
    Path::new(DIR).join("dwb")
}

/// A page file.
pub fn file_path(file: FileId) -> PathBuf {
    page_file_in(Path::new(DIR), file)
}

/// Page `page_no` of `file` at `version`: a CRC32C of the rest, the version, the identity and
/// filler that differs for every (file, page, version).
pub fn page(file: FileId, page_no: u64, version: u64) -> Vec<u8> {
    page_of_len(PAGE, file, page_no, version)
}

/// [`page`] for pages of `len` bytes.
pub fn page_of_len(len: usize, file: FileId, page_no: u64, version: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> =
        (0..len).map(|i| (i as u64 ^ page_no.wrapping_mul(31) ^ version.wrapping_mul(131) ^ u64::from(file.0)) as u8).collect();
    bytes[4..12].copy_from_slice(&version.to_le_bytes());
    bytes[12..20].copy_from_slice(&page_no.to_le_bytes());
    bytes[20..24].copy_from_slice(&file.0.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The validator a storage engine would supply: the page's own checksum and version.
pub fn check(_file: FileId, bytes: &[u8]) -> PageCheck {
    if bytes.len() < 24 || crc32c::crc32c(&bytes[4..]) != u32::from_le_bytes(bytes[..4].try_into().unwrap()) {
        return PageCheck::Torn;
    }
    PageCheck::Intact { version: u64::from_le_bytes(bytes[4..12].try_into().unwrap()) }
}

/// The version of every page on the simulated disk, `None` where a page is torn.
pub fn versions(sim: &SimStorage) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for file in FILES {
        let bytes = sim.read_file(&file_path(file)).expect("page file exists");
        for n in 0..PAGES {
            let start = n as usize * PAGE;
            let version = match bytes.get(start..start + PAGE).map(|p| check(file, p)) {
                Some(PageCheck::Intact { version }) => Some(version),
                _ => None,
            };
            out.push(version);
        }
    }
    out
}

/// Index of a page in [`versions`].
pub fn slot_of(file: FileId, page_no: u64) -> usize {
    FILES.iter().position(|&f| f == file).unwrap() * PAGES as usize + page_no as usize
}

/// The page file of `file` in `dir`.
pub fn page_file_in(dir: &Path, file: FileId) -> PathBuf {
    dir.join(format!("pages-{}", file.0))
}

/// A fresh simulated disk with every page file holding version 1 of each page, durably.
pub fn disk(seed: u64) -> SimStorage {
    disk_with_pages(seed, Path::new(DIR), &FILES, PAGES, page)
}

/// A fresh simulated disk with a page file in `dir` ([`page_file_in`]) for each of `files`, each holding
/// version 1 of `pages` pages as `page` makes them, durably: for tests of other page sizes.
pub fn disk_with_pages(seed: u64, dir: &Path, files: &[FileId], pages: u64, page: impl Fn(FileId, u64, u64) -> Vec<u8>) -> SimStorage {
    let sim = SimStorage::new(seed, FaultConfig::default());
    // A failed sync strands its pages in the cache, as on Linux.
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    sim.create_dir_all(dir).unwrap();
    // Make the new directories' own entries durable, as an engine creating them would.
    for level in dir.ancestors().skip(1) {
        sim.sync_dir(level).unwrap();
    }
    for &file in files {
        let f = sim.open(&page_file_in(dir, file), OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
        for n in 0..pages {
            let bytes = page(file, n, 1);
            f.write_at(&bytes, n * bytes.len() as u64).unwrap();
        }
        f.sync_data().unwrap();
    }
    sim.sync_dir(dir).unwrap();
    sim
}

/// A small buffer: a 128 KiB ring of 64 KiB batches (fifteen 4 KiB pages each).
pub fn config(mode: DwbMode) -> DwbConfig {
    let mut c = DwbConfig::new(dwb_path());
    c.mode = mode;
    c.ring_bytes = 128 * 1024;
    c.batch_bytes_max = 64 * 1024;
    c
}

/// Opens the buffer, registers the page files and recovers.
pub fn open<S: Storage>(storage: S, config: DwbConfig) -> (DoubleWriteBuffer<S>, DwbRecovery) {
    let dwb = DoubleWriteBuffer::open_with(storage, config).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    let report = dwb.recover(check).unwrap();
    (dwb, report)
}

/// Owned pages to write: (file, page number, bytes).
pub type Pages = Vec<(FileId, u64, Vec<u8>)>;

/// Borrows owned pages as the argument of `write_pages`.
pub fn borrow(pages: &Pages) -> Vec<PageWrite<'_>> {
    pages.iter().map(|(f, n, b)| (*f, *n, &b[..])).collect()
}

/// The pages' versions after a crash, each checked against what was acknowledged: the
/// acknowledged version, or, where the batch failed, the version the batch wrote.
pub fn versions_after_crash(after: &SimStorage, acked: &[Option<u64>], batch: &Pages, failed: bool, context: &str) -> Vec<Option<u64>> {
    let got = versions(after);
    for (i, version) in got.iter().enumerate() {
        let written =
            batch.iter().any(|(f, n, b)| slot_of(*f, *n) == i && check(*f, b) == PageCheck::Intact { version: version.unwrap_or(0) });
        assert!(*version == acked[i] || (failed && written), "{context}: page {i} is {version:?}, acknowledged {:?}", acked[i]);
    }
    got
}

/// `count` pages at random, each a new version counted from `next_version`.
pub fn random_batch(rng: &mut SimRng, count: usize, next_version: &mut u64) -> Pages {
    (0..count)
        .map(|_| {
            let (f, n) = (FILES[rng.below(2) as usize], rng.below(PAGES));
            *next_version += 1;
            (f, n, page(f, n, *next_version - 1))
        })
        .collect()
}

/// Records the versions of a batch the buffer acknowledged.
pub fn note_acknowledged(acked: &mut [Option<u64>], batch: &Pages) {
    for (f, n, bytes) in batch {
        let PageCheck::Intact { version } = check(*f, bytes) else { unreachable!("a page this test made") };
        acked[slot_of(*f, *n)] = Some(version);
    }
}
