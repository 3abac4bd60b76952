//! Attacks on the double-write buffer from an adversarial review, on a small buffer (512-byte
//! blocks and pages, a 4 KiB ring) so that sweeps over every byte of its file stay cheap.
//!
//! The properties: damage to the buffer file at any byte, or its truncation at any length,
//! gives a typed error or a recovery that leaves every page at an image it once had, never a
//! panic and never another page; a file that is not a buffer is never written over or removed;
//! a crash at any step of a recovery that rewrites the header (a version 1 file, a new
//! geometry) or removes the file (mode `Off`) is recovered again; writers on several threads
//! get batches that are each all old or all new. `NODEDB_WAL_DWB_SEEDS` sets how many crash
//! seeds each step runs (8 here).

use std::path::{Path, PathBuf};

use nodedb_wal::storage::{FaultConfig, OpenMode, SimRng, Storage, StorageFile, SyncFailure};
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, DwbRecovery, FileId, PageCheck, SimStorage, WalError};

const PAGE: usize = 512;
const PAGES: u64 = 8;
const DIR: &str = "/sim/attack";
const F1: FileId = FileId(1);
const F2: FileId = FileId(2);
const FILES: [FileId; 2] = [F1, F2];

fn seeds() -> u64 {
    std::env::var("NODEDB_WAL_DWB_SEEDS").ok().and_then(|s| s.parse().ok()).map_or(8, |n: u64| n.max(1))
}

fn dwb_path() -> PathBuf {
    Path::new(DIR).join("dwb")
}

fn file_path(file: FileId) -> PathBuf {
    Path::new(DIR).join(format!("pages-{}", file.0))
}

/// A self-checking page: CRC32C of the rest, then version, page number and file.
fn page(file: FileId, page_no: u64, version: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..PAGE).map(|i| (i as u64 ^ page_no.wrapping_mul(37) ^ version.wrapping_mul(101)) as u8).collect();
    bytes[4..12].copy_from_slice(&version.to_le_bytes());
    bytes[12..20].copy_from_slice(&page_no.to_le_bytes());
    bytes[20..24].copy_from_slice(&file.0.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The engine's validator; a page that names another page or file is no valid page there.
fn check(file: FileId, bytes: &[u8]) -> PageCheck {
    if crc32c::crc32c(&bytes[4..]) != u32::from_le_bytes(bytes[..4].try_into().unwrap()) || bytes[20..24] != file.0.to_le_bytes() {
        return PageCheck::Torn;
    }
    PageCheck::Intact { version: u64::from_le_bytes(bytes[4..12].try_into().unwrap()) }
}

/// Every page's version on the disk, in file order, `None` where torn. A page also has to be
/// the one its place holds (its page number), so an image written to the wrong page shows.
fn versions(sim: &SimStorage) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for file in FILES {
        let bytes = sim.read_file(&file_path(file)).expect("page file");
        for n in 0..PAGES {
            let p = &bytes[n as usize * PAGE..][..PAGE];
            out.push(match check(file, p) {
                PageCheck::Intact { version } if p[12..20] == n.to_le_bytes() => Some(version),
                _ => None,
            });
        }
    }
    out
}

fn disk(seed: u64) -> SimStorage {
    let sim = SimStorage::new(seed, FaultConfig::default());
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    sim.create_dir_all(Path::new(DIR)).unwrap();
    for dir in Path::new(DIR).ancestors().skip(1) {
        sim.sync_dir(dir).unwrap();
    }
    for file in FILES {
        let f = sim.open(&file_path(file), OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
        for n in 0..PAGES {
            f.write_at(&page(file, n, 1), n * PAGE as u64).unwrap();
        }
        f.sync_data().unwrap();
    }
    sim.sync_dir(Path::new(DIR)).unwrap();
    sim
}

/// A 4 KiB ring of 2 KiB batches (three 512-byte pages each) in 512-byte blocks.
fn config(mode: DwbMode) -> DwbConfig {
    let mut c = DwbConfig::new(dwb_path());
    c.mode = mode;
    c.block_len = 512;
    c.ring_bytes = 4096;
    c.batch_bytes_max = 2048;
    c
}

fn opened<S: Storage>(storage: S, config: DwbConfig) -> DoubleWriteBuffer<S> {
    let dwb = DoubleWriteBuffer::open_with(storage, config).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    dwb
}

fn open<S: Storage>(storage: S, config: DwbConfig) -> (DoubleWriteBuffer<S>, DwbRecovery) {
    let dwb = opened(storage, config);
    let report = dwb.recover(check).unwrap();
    (dwb, report)
}

type Pages = Vec<(FileId, u64, Vec<u8>)>;

fn pages_at(list: &[(FileId, u64)], version: u64) -> Pages {
    list.iter().map(|&(f, n)| (f, n, page(f, n, version))).collect()
}

fn write(dwb: &DoubleWriteBuffer<impl Storage>, pages: &Pages) -> Result<(), WalError> {
    let borrowed: Vec<_> = pages.iter().map(|(f, n, b)| (*f, *n, &b[..])).collect();
    dwb.write_pages(&borrowed)
}

/// Puts bytes in a page's place durably, behind the buffer's back.
fn put(sim: &SimStorage, file: FileId, page_no: u64, bytes: &[u8]) {
    let f = sim.open(&file_path(file), OpenMode { create: false, write: true, direct: false, create_new: false }).unwrap();
    f.write_at(bytes, page_no * PAGE as u64).unwrap();
    f.sync_data().unwrap();
}

/// A disk whose buffer holds two batches (pages (1, 0..3) at version 2, then (2, 4..6) at
/// version 3), after which page (1, 0) was put back to version 1 (its in-place write never
/// landed) and page (2, 5) torn. Returns the disk and the buffer file's bytes.
fn disk_with_work_for_recovery(seed: u64) -> (SimStorage, Vec<u8>) {
    let sim = disk(seed);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    write(&dwb, &pages_at(&[(F1, 0), (F1, 1), (F1, 2)], 2)).unwrap();
    write(&dwb, &pages_at(&[(F2, 4), (F2, 5), (F2, 6)], 3)).unwrap();
    drop(dwb);
    put(&sim, F1, 0, &page(F1, 0, 1));
    let mut torn = page(F2, 5, 3);
    torn[300..].fill(0xEE);
    put(&sim, F2, 5, &torn);
    let image = sim.read_file(&dwb_path()).unwrap();
    (sim, image)
}

/// Recovers a buffer file of `image` on a copy of `sim` and checks the outcome: a typed error
/// with every page as it was, or each page at the version it had or its buffered one.
fn recover_damaged(sim: &SimStorage, image: &[u8], context: &str) -> Result<DwbRecovery, WalError> {
    let sim = sim.crash(0);
    sim.write_file(&dwb_path(), image);
    let before = versions(&sim);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered));
    let result = dwb.and_then(|dwb| {
        for file in FILES {
            dwb.register_file(file, file_path(file), PAGE)?;
        }
        dwb.recover(check)
    });
    let got = versions(&sim);
    if result.is_err() {
        assert_eq!(got, before, "{context}: a failed recovery wrote a page: {result:?}");
        return result;
    }
    for (i, (now, was)) in got.iter().zip(&before).enumerate() {
        let buffered = match i {
            0..=2 => Some(2),
            12..=14 => Some(3),
            _ => None,
        };
        assert!(now == was || (buffered.is_some() && *now == buffered), "{context}: page {i} is {now:?}, was {was:?}");
    }
    result
}

#[test]
fn damage_at_any_byte_of_the_buffer_file_gives_an_error_or_a_recovery_to_images_the_pages_had() {
    let (sim, intact) = disk_with_work_for_recovery(1);
    let report = recover_damaged(&sim, &intact, "undamaged").unwrap();
    assert_eq!(report.pages_restored, vec![(F1, 0), (F2, 5)]);
    let mut outcomes = (0, 0, 0);
    for at in 0..intact.len() {
        for mask in [0x01u8, 0xFF] {
            let mut image = intact.clone();
            image[at] ^= mask;
            match recover_damaged(&sim, &image, &format!("byte {at} ^ {mask:#x}")) {
                Ok(r) if r.pages_restored.len() == 2 => outcomes.0 += 1,
                Ok(_) => outcomes.1 += 1,
                Err(_) => outcomes.2 += 1,
            }
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0 && outcomes.2 > 0, "the sweep reaches every outcome: {outcomes:?}");
}

#[test]
fn a_buffer_file_cut_at_any_length_gives_an_error_or_a_recovery_to_images_the_pages_had() {
    let (sim, intact) = disk_with_work_for_recovery(2);
    for len in 0..=intact.len() {
        let result = recover_damaged(&sim, &intact[..len], &format!("cut at {len}"));
        if len == intact.len() {
            assert_eq!(result.unwrap().pages_restored.len(), 2);
        }
    }
}

#[test]
fn random_sector_damage_to_the_buffer_file_gives_an_error_or_a_recovery_to_images_the_pages_had() {
    let (sim, intact) = disk_with_work_for_recovery(3);
    for seed in 0..seeds() * 32 {
        let mut rng = SimRng::new(seed);
        let mut image = intact.clone();
        for _ in 0..1 + rng.below(3) {
            let sector = rng.below((image.len() / 512) as u64) as usize * 512;
            match rng.below(3) {
                0 => image[sector..sector + 512].fill(0),
                1 => image[sector..sector + 512].iter_mut().for_each(|b| *b = rng.next_u64() as u8),
                _ => image[sector + rng.below(512) as usize] ^= 1 << rng.below(8),
            }
        }
        let _ = recover_damaged(&sim, &image, &format!("seed {seed}"));
    }
}

/// Creates a file holding `bytes`, durably.
fn create_file(sim: &SimStorage, path: &Path, bytes: &[u8]) {
    let f = sim.open(path, OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
    f.write_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(Path::new(DIR)).unwrap();
}

/// Bytes of a file the buffer did not make.
fn foreign_bytes(len: usize) -> Vec<u8> {
    b"a file of someone else's, under the buffer's name\n".iter().copied().cycle().take(len).collect()
}

#[test]
fn a_file_that_is_not_a_buffer_is_neither_written_over_nor_removed() {
    for mode in [DwbMode::Buffered, DwbMode::Off] {
        for len in [100, 512, 4608, 20_000] {
            let sim = disk(4);
            let foreign = foreign_bytes(len);
            create_file(&sim, &dwb_path(), &foreign);
            let dwb = opened(sim.clone(), config(mode));
            let err = dwb.recover(check).unwrap_err();
            assert!(matches!(err, WalError::DwbForeignFile { .. }), "{mode:?}, {len} bytes: {err}");
            assert!(matches!(write(&dwb, &pages_at(&[(F1, 1)], 2)), Err(WalError::DwbNotRecovered { .. })));
            drop(dwb);
            assert_eq!(sim.read_file(&dwb_path()).as_deref(), Some(&foreign[..]), "{mode:?}, {len} bytes: left as found");
        }
    }
    // Zeros are what a crash while the file is made leaves: that file is made again.
    let sim = disk(4);
    create_file(&sim, &dwb_path(), &[0u8; 1000]);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    write(&dwb, &pages_at(&[(F1, 1)], 2)).unwrap();
}
