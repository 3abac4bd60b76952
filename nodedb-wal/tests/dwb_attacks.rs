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

mod dwb_support;

use std::path::{Path, PathBuf};

use nodedb_wal::storage::faulty::FaultyStorage as Faulty;
use nodedb_wal::storage::{OpenMode, SimRng, Storage, StorageFile};
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
    dwb_support::page_file_in(Path::new(DIR), file)
}

/// A self-checking page of this file's size (see `dwb_support::page`).
fn page(file: FileId, page_no: u64, version: u64) -> Vec<u8> {
    dwb_support::page_of_len(PAGE, file, page_no, version)
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

fn slot_of(file: FileId, page_no: u64) -> usize {
    FILES.iter().position(|&f| f == file).unwrap() * PAGES as usize + page_no as usize
}

fn disk(seed: u64) -> SimStorage {
    dwb_support::disk_with_pages(seed, Path::new(DIR), &FILES, PAGES, page)
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

/// A disk whose ring is full with three batches: pages (1, 0) and (1, 1) at version 2, then
/// (2, 4) and (2, 5) at version 3, then (1, 1) again at version 4. Then page (1, 0) was put
/// back to version 1 (its in-place write never landed) and pages (2, 5) and (1, 1) torn.
/// Returns the disk and the buffer file's bytes.
fn disk_with_work_for_recovery(seed: u64) -> (SimStorage, Vec<u8>) {
    let sim = disk(seed);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    write(&dwb, &pages_at(&[(F1, 0), (F1, 1)], 2)).unwrap();
    write(&dwb, &pages_at(&[(F2, 4), (F2, 5)], 3)).unwrap();
    write(&dwb, &pages_at(&[(F1, 1)], 4)).unwrap();
    drop(dwb);
    put(&sim, F1, 0, &page(F1, 0, 1));
    for (f, n, v) in [(F2, 5, 3), (F1, 1, 4)] {
        let mut torn = page(f, n, v);
        torn[300..].fill(0xEE);
        put(&sim, f, n, &torn);
    }
    let image = sim.read_file(&dwb_path()).unwrap();
    assert_eq!(image.len(), 512 + 4096);
    (sim, image)
}

/// Recovers a buffer file of `image` on a copy of `sim` and checks the outcome: a typed error
/// with every page as it was, or each page at the version it had or one of its buffered images.
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
        // Damage to the newest image of (1, 1) leaves its older one the newest there is.
        let buffered: &[u64] = match i {
            0 => &[2],
            1 => &[2, 4],
            12 | 13 => &[3],
            _ => &[],
        };
        assert!(now == was || now.is_some_and(|v| buffered.contains(&v)), "{context}: page {i} is {now:?}, was {was:?}");
    }
    result
}

#[test]
fn damage_at_any_byte_of_the_buffer_file_gives_an_error_or_a_recovery_to_images_the_pages_had() {
    let (sim, intact) = disk_with_work_for_recovery(1);
    let report = recover_damaged(&sim, &intact, "undamaged").unwrap();
    assert_eq!(report.pages_restored, vec![(F1, 0), (F1, 1), (F2, 5)]);
    let mut outcomes = (0, 0, 0);
    for at in 0..intact.len() {
        for mask in [0x01u8, 0xFF] {
            let mut image = intact.clone();
            image[at] ^= mask;
            match recover_damaged(&sim, &image, &format!("byte {at} ^ {mask:#x}")) {
                Ok(r) if r.pages_restored.len() == 3 => outcomes.0 += 1,
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
            assert_eq!(result.unwrap().pages_restored.len(), 3);
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

/// How the buffer is reopened for a recovery that does more than apply images.
#[derive(Clone, Copy, Debug)]
enum Reopen {
    /// The file is of version 1: recovery rewrites its header with a salt.
    FromVersion1,
    /// Larger blocks and ring: recovery rewrites the header over the old ring's first bytes.
    LargerGeometry,
    /// A smaller ring: recovery rewrites the header and cuts the file.
    SmallerRing,
    /// Mode `Off`: recovery removes the file.
    Off,
}

impl Reopen {
    fn config(self) -> DwbConfig {
        let mut c = config(DwbMode::Buffered);
        match self {
            Reopen::FromVersion1 => {}
            Reopen::LargerGeometry => (c.block_len, c.ring_bytes, c.batch_bytes_max) = (4096, 16384, 8192),
            Reopen::SmallerRing => (c.ring_bytes, c.batch_bytes_max) = (2048, 1024),
            Reopen::Off => c.mode = DwbMode::Off,
        }
        c
    }
}

/// The pages of the batch the recovery crash tests leave for recovery, at version 2.
const PENDING: [(FileId, u64); 3] = [(F1, 0), (F1, 1), (F2, 7)];

/// A disk whose buffer (of version 1, or made with [`config`]) holds one batch of [`PENDING`]
/// whose in-place writes did not land: (1, 0) torn, the others still at version 1.
fn disk_for_reopen(seed: u64, reopen: Reopen) -> SimStorage {
    use nodedb_wal::format::dwb::{FileHeader, SlotHeader, encode_slot};
    let sim = disk(seed);
    let pending = pages_at(&PENDING, 2);
    if let Reopen::FromVersion1 = reopen {
        let c = config(DwbMode::Buffered);
        let mut file = vec![0u8; c.block_len + c.ring_bytes as usize];
        let header = FileHeader { version: 1, block_len: c.block_len as u32, ring_bytes: c.ring_bytes, salt: 0 };
        file[..32].copy_from_slice(&header.encode()[..32]);
        let mut at = c.block_len + 1024;
        for (index, (f, n, bytes)) in (0u64..).zip(&pending) {
            let slot = SlotHeader {
                file: *f,
                seq: 40 + index,
                batch_seq: 40,
                batch_slots: 3,
                page_len: PAGE as u32,
                page_no: *n,
                epoch: 9,
                salt: 0,
            };
            at += encode_slot(&slot, bytes, &mut file[at..]);
        }
        create_file(&sim, &dwb_path(), &file);
    } else {
        let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
        write(&dwb, &pages_at(&[(F2, 0)], 2)).unwrap();
        write(&dwb, &pending).unwrap();
        drop(dwb);
        for (f, n) in [(F1, 1), (F2, 7)] {
            put(&sim, f, n, &page(f, n, 1));
        }
    }
    let mut torn = page(F1, 0, 2);
    torn[200..].fill(0xEE);
    put(&sim, F1, 0, &torn);
    sim
}

fn recovery_that_rewrites_the_buffer_is_recovered_again_after_a_crash_at_any_step(reopen: Reopen) {
    let mut expected = versions(&disk_for_reopen(0, reopen));
    for (f, n) in PENDING {
        expected[slot_of(f, n)] = Some(2);
    }
    let mut interrupted = 0;
    for budget in 0..=10 {
        for seed in 0..seeds() {
            let first = disk_for_reopen(seed, reopen);
            let faulty = Faulty::new(first.clone());
            let dwb = opened(faulty.clone(), reopen.config());
            faulty.cut_power_after(budget);
            let result = dwb.recover(check);
            interrupted += usize::from(result.is_err());
            drop(dwb);
            let second = first.crash(seed * 31 + budget);
            let context = format!("{reopen:?}, recovery cut after {budget} steps ({result:?}), seed {seed}");
            let (dwb, report) = open(second.clone(), reopen.config());
            assert_eq!(versions(&second), expected, "{context}: {report:?}");
            // The buffer works on: a new batch is applied after another crash tears it in place.
            write(&dwb, &pages_at(&[(F2, 3)], 5)).unwrap();
            drop(dwb);
            let mut torn = page(F2, 3, 5);
            torn[100..].fill(0);
            put(&second, F2, 3, &torn);
            let (_, report) = open(second.clone(), reopen.config());
            let mut then = expected.clone();
            then[slot_of(F2, 3)] = Some(5);
            let restored = if matches!(reopen, Reopen::Off) { None } else { Some(5) };
            then[slot_of(F2, 3)] = restored;
            assert_eq!(versions(&second), then, "{context}, then a torn page: {report:?}");
        }
    }
    assert!(interrupted > 0, "some budgets cut the recovery");
}

#[test]
fn a_crash_at_any_step_of_recovery_that_upgrades_a_version_1_buffer_is_recovered_again() {
    recovery_that_rewrites_the_buffer_is_recovered_again_after_a_crash_at_any_step(Reopen::FromVersion1);
}

#[test]
fn a_crash_at_any_step_of_recovery_into_larger_blocks_and_ring_is_recovered_again() {
    recovery_that_rewrites_the_buffer_is_recovered_again_after_a_crash_at_any_step(Reopen::LargerGeometry);
}

#[test]
fn a_crash_at_any_step_of_recovery_into_a_smaller_ring_is_recovered_again() {
    recovery_that_rewrites_the_buffer_is_recovered_again_after_a_crash_at_any_step(Reopen::SmallerRing);
}

#[test]
fn a_crash_at_any_step_of_recovery_that_removes_the_buffer_in_mode_off_is_recovered_again() {
    recovery_that_rewrites_the_buffer_is_recovered_again_after_a_crash_at_any_step(Reopen::Off);
}

/// Seeded: four threads write batches of their own pages (each batch one new version) into one
/// buffer while the power is cut at a random step; after the crash every page holds its last
/// acknowledged version or that of a failed batch, and each failed batch is all old or all new.
#[test]
fn writers_on_several_threads_get_batches_that_are_each_all_old_or_all_new() {
    const THREADS: u64 = 4;
    for seed in 0..seeds() * 4 {
        let mut rng = SimRng::new(seed);
        let sim = disk(seed);
        let faulty = Faulty::new(sim.clone());
        let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
        faulty.cut_power_after(rng.below(160));
        let plans: Vec<u64> = (0..THREADS).map(|_| rng.next_u64()).collect();
        // Per thread: (acknowledged batches, failed batches), each as (version, pages).
        type Outcome = (Vec<(u64, Pages)>, Vec<(u64, Pages)>);
        let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .zip(&plans)
                .map(|(t, &plan)| {
                    let dwb = &dwb;
                    scope.spawn(move || {
                        let mut rng = SimRng::new(plan);
                        // Thread t owns pages 2t and 2t + 1 of both files.
                        let own: Vec<(FileId, u64)> = FILES.iter().flat_map(|&f| [(f, 2 * t), (f, 2 * t + 1)]).collect();
                        let mut outcome: Outcome = (Vec::new(), Vec::new());
                        for i in 0..12u64 {
                            let version = 2 + i;
                            // At most three pages: one batch, so the call is all or nothing.
                            let chosen: Vec<(FileId, u64)> = own.iter().copied().filter(|_| rng.below(2) == 0).take(3).collect();
                            let batch = pages_at(if chosen.is_empty() { &own[..1] } else { &chosen }, version);
                            match write(dwb, &batch) {
                                Ok(()) => outcome.0.push((version, batch)),
                                Err(_) => outcome.1.push((version, batch)),
                            }
                        }
                        outcome
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(dwb);
        let after = sim.crash(seed);
        let (_, report) = open(after.clone(), config(DwbMode::Buffered));
        let got = versions(&after);
        let context = format!("seed {seed}: {got:?}, {report:?}");
        let mut acked = vec![Some(1); got.len()];
        for (ok, _) in &outcomes {
            for (version, batch) in ok {
                batch.iter().for_each(|(f, n, _)| acked[slot_of(*f, *n)] = Some(*version));
            }
        }
        for (_, failed) in &outcomes {
            for (version, batch) in failed {
                let landed = batch.iter().filter(|(f, n, _)| got[slot_of(*f, *n)] == Some(*version)).count();
                assert!(landed == 0 || landed == batch.len(), "{context}: failed batch {version} is in part new");
            }
        }
        for (i, now) in got.iter().enumerate() {
            let failed_here =
                outcomes.iter().flat_map(|o| &o.1).any(|(v, b)| *now == Some(*v) && b.iter().any(|(f, n, _)| slot_of(*f, *n) == i));
            assert!(*now == acked[i] || failed_here, "{context}: page {i} is {now:?}, acknowledged {:?}", acked[i]);
        }
    }
}

/// A call split into three batches whose second batch's page sync fails: the call fails, the
/// buffer is poisoned (no retried sync reports the pages durable), only the first batch
/// counts as written, and a reopen brings the second batch's pages to their new images.
#[test]
fn a_failed_page_sync_in_the_middle_of_a_split_call_fails_it_and_every_call_after() {
    use nodedb_wal::storage::faulty::{EIO, FaultOp};
    let sim = disk(9);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    let list: Vec<(FileId, u64)> = (0..PAGES).map(|n| (F1, n)).chain([(F2, 0)]).collect();
    // Per batch: the buffer's write and sync, three page writes, one page sync (file 1 only).
    let syncs_per_batch = 2;
    faulty.fail_once(FaultOp::SyncData, syncs_per_batch + 1, EIO);
    let err = write(&dwb, &pages_at(&list, 2)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: nodedb_wal::IoOp::SyncData, .. }), "{err}");
    assert_eq!(dwb.stats().protected_pages, 3, "only the first batch was acknowledged");
    let syncs = faulty.calls(FaultOp::SyncData);
    for _ in 0..2 {
        assert!(matches!(write(&dwb, &pages_at(&[(F2, 1)], 3)), Err(WalError::Poisoned { .. })));
        assert!(matches!(dwb.recover(check), Err(WalError::Poisoned { .. })));
    }
    assert_eq!(faulty.calls(FaultOp::SyncData), syncs, "nothing is synced again after the failure");
    drop(dwb);
    // Reopened under the same kernel: recovery reads the disk, not the pages the failed sync left.
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    let got = versions(&sim);
    let context = format!("{got:?}, {report:?}");
    for (i, &(f, n)) in list.iter().enumerate() {
        assert_eq!(got[slot_of(f, n)], Some(if i < 6 { 2 } else { 1 }), "{context}: page {f}/{n}");
    }
}

/// Seeded simulation over a ring that wraps every few batches and leaves gaps at its end
/// (batches of one to three 512-byte pages take 1, 1.5 or 2 KiB of a 4 KiB ring), so old
/// images of pages written again since linger in the ring: power cuts at random steps, clean
/// reopens (pages of one sector are never torn here; `dwb.rs` tears 4 KiB ones). After every recovery each page holds its acknowledged
/// version, or the version of the one batch that failed, and that batch is all old or all new;
/// a lingering older image never replaces a newer page.
#[test]
fn random_batches_over_a_ring_that_wraps_with_gaps_never_bring_back_an_older_image() {
    // Recoveries that brought a page whose in-place write never landed up to its image.
    let mut restored = 0;
    for seed in 0..seeds() * 8 {
        let mut rng = SimRng::new(seed);
        let mut sim = disk(seed);
        let mut faulty = Faulty::new(sim.clone());
        let (mut dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
        let mut acked = versions(&sim);
        let mut next_version = 2;
        for step in 0..60 {
            let count = 1 + rng.below(3) as usize;
            let mut batch: Pages = Vec::new();
            for _ in 0..count {
                // Mostly a few hot pages, so images of them linger at several ages.
                let (f, n) = if rng.below(4) == 0 { (FILES[rng.below(2) as usize], rng.below(PAGES)) } else { (F1, rng.below(2)) };
                batch.push((f, n, page(f, n, next_version)));
                next_version += 1;
            }
            let event = rng.below(8);
            if event == 0 {
                faulty.cut_power_after(rng.below(2 * count as u64 + 4));
            }
            let result = write(&dwb, &batch);
            faulty.restore_power();
            if result.is_ok() {
                for (f, n, b) in &batch {
                    let PageCheck::Intact { version } = check(*f, b) else { unreachable!() };
                    acked[slot_of(*f, *n)] = Some(version);
                }
            }
            let context = format!("seed {seed} step {step} ({result:?})");
            match event {
                0 => {
                    drop(dwb);
                    let after = sim.crash(rng.next_u64());
                    faulty = Faulty::new(after.clone());
                    let report;
                    (dwb, report) = open(faulty.clone(), config(DwbMode::Buffered));
                    restored += usize::from(!report.pages_restored.is_empty());
                    let got = versions(&after);
                    let landed = batch.iter().filter(|(f, n, b)| got[slot_of(*f, *n)] == Some(version_of(*f, b))).count();
                    // A page written twice in the batch holds the later image only.
                    let distinct = batch.iter().map(|(f, n, _)| (*f, *n)).collect::<std::collections::BTreeSet<_>>().len();
                    assert!(result.is_ok() || landed == 0 || landed == distinct, "{context}: the failed batch is in part new: {got:?}");
                    for (i, now) in got.iter().enumerate() {
                        let from_batch =
                            result.is_err() && batch.iter().any(|(f, n, b)| slot_of(*f, *n) == i && *now == Some(version_of(*f, b)));
                        assert!(*now == acked[i] || from_batch, "{context}: page {i} is {now:?}, acknowledged {:?}", acked[i]);
                    }
                    acked = got;
                    sim = after;
                }
                1 => {
                    result.unwrap();
                    drop(dwb);
                    (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
                    assert_eq!(versions(&sim), acked, "{context}: a clean reopen changes nothing");
                }
                _ => result.unwrap(),
            }
        }
    }
    assert!(restored > 0, "recovery restores pages");
}

fn version_of(file: FileId, bytes: &[u8]) -> u64 {
    match check(file, bytes) {
        PageCheck::Intact { version } => version,
        PageCheck::Torn => unreachable!("a page this test made"),
    }
}

/// A file registered with another page length than its images in the buffer: recovery
/// refuses it before anything is written (not after restoring other files' pages) and before
/// the caller's validator is handed a page of a length it never registered.
#[test]
fn a_wrong_page_length_is_refused_before_any_page_is_written_or_validated() {
    let sim = disk(12);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    dwb.register_file(F2, file_path(F2), 2 * PAGE).unwrap();
    dwb.recover(check).unwrap();
    let double = [page(F2, 0, 2), page(F2, 0, 2)].concat();
    dwb.write_pages(&[(F1, 3, &page(F1, 3, 2)), (F2, 0, &double)]).unwrap();
    drop(dwb);
    // Page (1, 3)'s in-place write never landed: recovery would restore it.
    put(&sim, F1, 3, &page(F1, 3, 1));
    let before = versions(&sim);
    let dwb = opened(sim.clone(), config(DwbMode::Buffered));
    let strict = |file: FileId, bytes: &[u8]| {
        assert_eq!(bytes.len(), PAGE, "the validator is handed only pages of the registered length");
        check(file, bytes)
    };
    let err = dwb.recover(strict).unwrap_err();
    assert!(matches!(err, WalError::DwbPageLen { file: F2, page_no: 0, len: 1024, expected: PAGE }), "{err}");
    drop(dwb);
    assert_eq!(versions(&sim), before, "nothing was written");
}

/// A full disk under the in-place writes, then under the recovery that repairs them: each
/// step fails with a typed error and poisons, nothing acknowledged is lost, and a recovery
/// once there is room brings the batch's pages to their new images.
#[test]
fn a_full_disk_under_in_place_writes_and_under_their_repair_loses_nothing() {
    use nodedb_wal::storage::faulty::{ENOSPC, FaultOp};
    let sim = disk(13);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    write(&dwb, &pages_at(&[(F2, 2)], 2)).unwrap();
    // The batch's buffer write passes; its second page's in-place write finds no room.
    faulty.fail_once(FaultOp::Write, 2, ENOSPC);
    let err = write(&dwb, &pages_at(&[(F1, 4), (F1, 5), (F2, 6)], 3)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: nodedb_wal::IoOp::Write, ref source, .. } if source.raw_os_error() == Some(ENOSPC)), "{err}");
    assert!(matches!(write(&dwb, &pages_at(&[(F2, 2)], 4)), Err(WalError::Poisoned { .. })));
    drop(dwb);
    // Reopened while the disk is still full: the repair fails the same way and poisons.
    let after = sim.crash(13);
    let faulty = Faulty::new(after.clone());
    faulty.fail_from(FaultOp::Write, 0, ENOSPC);
    let dwb = opened(faulty.clone(), config(DwbMode::Buffered));
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(err, WalError::Io { op: nodedb_wal::IoOp::Write, .. }), "{err}");
    assert!(matches!(dwb.recover(check), Err(WalError::Poisoned { .. })));
    drop(dwb);
    // Room again, after another crash.
    let last = after.crash(14);
    let (_, report) = open(last.clone(), config(DwbMode::Buffered));
    let got = versions(&last);
    assert_eq!(got[slot_of(F2, 2)], Some(2), "{report:?}");
    for (f, n) in [(F1, 4), (F1, 5), (F2, 6)] {
        assert_eq!(got[slot_of(f, n)], Some(3), "page {f}/{n}: {report:?}");
    }
}

/// A version 1 file holding a slot numbered just below the end of sequences (as a page image
/// of a version 1 file can spell out): new batches are numbered on from it, and a batch whose
/// sequences would pass the end could never be read back. The buffer must refuse to write
/// such a batch rather than acknowledge pages it cannot repair.
#[test]
fn a_batch_is_never_numbered_past_the_end_of_sequences() {
    use nodedb_wal::format::dwb::{FileHeader, SEQ_END, SlotHeader, encode_slot};
    let sim = disk(16);
    let c = config(DwbMode::Buffered);
    let mut file = vec![0u8; c.block_len + c.ring_bytes as usize];
    let header = FileHeader { version: 1, block_len: c.block_len as u32, ring_bytes: c.ring_bytes, salt: 0 };
    file[..32].copy_from_slice(&header.encode()[..32]);
    let seq = SEQ_END - 2;
    let slot = SlotHeader { file: F1, seq, batch_seq: seq, batch_slots: 1, page_len: PAGE as u32, page_no: 6, epoch: 1, salt: 0 };
    encode_slot(&slot, &page(F1, 6, 1), &mut file[c.block_len..]);
    create_file(&sim, &dwb_path(), &file);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), c.clone());
    // The batch is durable in the buffer, one page lands in place, then the power goes.
    faulty.cut_power_after(2 + 1);
    let batch = pages_at(&[(F1, 0), (F1, 1), (F1, 2)], 2);
    let result = write(&dwb, &batch);
    drop(dwb);
    let after = sim.crash(16);
    let (_, report) = open(after.clone(), c);
    let got: Vec<Option<u64>> = batch.iter().map(|(f, n, _)| versions(&after)[slot_of(*f, *n)]).collect();
    assert!(got == [Some(1); 3] || got == [Some(2); 3], "a batch is all old or all new: {got:?} ({result:?}, {report:?})");
}

/// Wherever a batch's sequences would pass the end (here a slot forged with the file's own
/// salt, which the buffer never hands out), the batch is refused, the buffer degrades, and no
/// page is written: its slots would not decode, so its pages could not be repaired.
#[test]
fn a_batch_whose_sequences_would_pass_the_end_is_refused_and_writes_no_page() {
    use nodedb_wal::format::dwb::{FileHeader, SEQ_END, SlotHeader, encode_slot};
    let sim = disk(17);
    drop(open(sim.clone(), config(DwbMode::Buffered)));
    let mut file = sim.read_file(&dwb_path()).unwrap();
    let salt = FileHeader::decode(&file).unwrap().salt;
    let seq = SEQ_END - 2;
    let slot = SlotHeader { file: F1, seq, batch_seq: seq, batch_slots: 1, page_len: PAGE as u32, page_no: 6, epoch: 1, salt };
    encode_slot(&slot, &page(F1, 6, 1), &mut file[512..]);
    sim.write_file(&dwb_path(), &file);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    let before = versions(&sim);
    let err = write(&dwb, &pages_at(&[(F1, 0), (F1, 1)], 2)).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { op: nodedb_wal::IoOp::Write, .. }), "{err}");
    assert_eq!(versions(&sim), before, "no page was written");
}
