//! The double-write buffer's promise: whatever step of a batch a crash interrupts (before the
//! buffer's sync, between it and the in-place writes, in the middle of those, after them), with
//! any subset of the unsynced sectors lost, recovery leaves every page holding either its old
//! or its new image, never a torn one; a batch is all old or all new; recovery never writes a
//! page it has no image for and never replaces an intact page newer than its image; and what
//! it repaired survives a second crash and the ring wrapping over the image it used.
//!
//! Most tests run on the simulated disk, with `Faulty` (`FaultyStorage`) cutting the power after a chosen number
//! of writes and syncs. `NODEDB_WAL_DWB_SEEDS` sets how many crash seeds each step runs (24).
//! The last tests run on real files, in both buffered and O_DIRECT modes.

mod dwb_support;

use std::path::Path;

use dwb_support::*;
use nodedb_wal::dwb::scan::scan_ring;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage as Faulty};
use nodedb_wal::storage::{OpenMode, SimRng, Storage, StorageFile, SyncFailure};
use nodedb_wal::{
    DegradedPolicy, DoubleWriteBuffer, DwbConfig, DwbMode, FileId, IoOp, PageCheck, SimStorage, WalError, wal_dwb_bytes_written_total,
};

const F1: FileId = FILES[0];
const F2: FileId = FILES[1];

fn seeds() -> u64 {
    std::env::var("NODEDB_WAL_DWB_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24)
}

/// Pages at `version` (the same for all).
fn pages_at(list: &[(FileId, u64)], version: u64) -> Pages {
    list.iter().map(|&(f, n)| (f, n, page(f, n, version))).collect()
}

/// Replaces the second half of a page with garbage, durably: a torn in-place write.
fn tear(sim: &SimStorage, file: FileId, page_no: u64) {
    let path = file_path(file);
    let mut bytes = sim.read_file(&path).unwrap();
    let start = page_no as usize * PAGE + PAGE / 2;
    bytes[start..start + 512].fill(0xEE);
    sim.write_file(&path, &bytes);
}

/// Writes one page in place, durably, behind the buffer's back.
fn write_in_place(sim: &SimStorage, file: FileId, page_no: u64, version: u64) {
    let f = sim.open(&file_path(file), OpenMode { create: false, write: true, direct: false, create_new: false }).unwrap();
    f.write_at(&page(file, page_no, version), page_no * PAGE as u64).unwrap();
    f.sync_data().unwrap();
}

/// The batch of the crash matrix: seven pages over both files, page (1, 0) twice (the later
/// image wins), so that its new version is 3 and every other page's is 2.
fn matrix_batch() -> Pages {
    let mut batch = pages_at(&[(F1, 0), (F1, 3), (F2, 1)], 2);
    batch.push((F1, 0, page(F1, 0, 3)));
    batch.extend(pages_at(&[(F2, 5), (F2, 6), (F1, 7)], 2));
    batch
}

fn crash_at_every_step_of_a_batch(mode: DwbMode) {
    let batch = matrix_batch();
    // Buffer write and sync, one write per page, one sync per page file.
    let ops = 2 + batch.len() as u64 + 2;
    let mut old = vec![Some(1); 2 * PAGES as usize];
    old[slot_of(F2, 7)] = Some(2);
    let mut new = old.clone();
    for (f, n, bytes) in &batch {
        new[slot_of(*f, *n)] = match check(*f, bytes) {
            PageCheck::Intact { version } => Some(version),
            PageCheck::Torn => unreachable!(),
        };
    }
    // (runs ending all old, runs ending all new, runs that found a torn page to repair)
    let mut seen = (0, 0, 0);
    for budget in 0..=ops {
        for seed in 0..seeds() {
            let sim = disk(seed);
            let faulty = Faulty::new(sim.clone());
            let (dwb, _) = open(faulty.clone(), config(mode));
            // An earlier batch, so the ring is not empty.
            dwb.write_pages(&borrow(&pages_at(&[(F2, 7)], 2))).unwrap();
            faulty.cut_power_after(budget);
            let result = dwb.write_pages(&borrow(&batch));
            assert_eq!(result.is_ok(), budget == ops, "budget {budget}: {result:?}");
            drop(dwb);
            let after = sim.crash(seed * 7919 + budget);
            seen.2 += usize::from(versions(&after).contains(&None));
            let (dwb, report) = open(after.clone(), config(mode));
            let got = versions(&after);
            seen.0 += usize::from(got == old);
            seen.1 += usize::from(got == new);
            let context = format!("{mode:?}, crash after {budget} of {ops} steps, seed {seed}: {got:?} ({report:?})");
            assert!(got == old || got == new, "every page old, or every page new: {context}");
            if result.is_ok() {
                assert_eq!(got, new, "an acknowledged batch is durable: {context}");
            }
            // What recovery repaired survives another crash, and needs no second repair.
            drop(dwb);
            let again = after.crash(seed + 1);
            let (_, second) = open(again.clone(), config(mode));
            assert_eq!(versions(&again), got, "{context}");
            assert!(second.pages_restored.is_empty(), "{context}: {second:?}");
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "the matrix reaches both outcomes and real tears: {seen:?}");
}

#[test]
fn a_batch_torn_in_the_buffer_is_ignored_whole_even_where_its_first_slots_are_intact() {
    let sim = disk(21);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    // The batch is written to the buffer but its sync never happens.
    faulty.cut_power_after(1);
    let batch = matrix_batch();
    dwb.write_pages(&borrow(&batch)).unwrap_err();
    drop(dwb);
    // Lose the sector holding the end of the last slot: six of seven slots stay intact.
    let mut image = sim.read_file(&dwb_path()).unwrap();
    let last_slot_end = 4096 + 7 * (56 + PAGE);
    image[last_slot_end - 512..last_slot_end].fill(0);
    sim.write_file(&dwb_path(), &image);
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!((report.batches, report.incomplete_batches), (0, 1), "{report:?}");
    assert!(report.pages_restored.is_empty());
    assert!(versions(&sim).iter().all(|v| *v == Some(1)), "no page of a torn batch is applied");
}

#[test]
fn a_crash_at_every_step_of_a_batch_leaves_every_page_old_or_new_buffered() {
    crash_at_every_step_of_a_batch(DwbMode::Buffered);
}

#[test]
fn a_crash_at_every_step_of_a_batch_leaves_every_page_old_or_new_direct() {
    crash_at_every_step_of_a_batch(DwbMode::Direct);
}

#[test]
fn a_crash_at_every_step_of_recovery_is_recovered_again() {
    let batch = matrix_batch();
    for budget in 0..=12 {
        for seed in 0..seeds() {
            let sim = disk(seed);
            let faulty = Faulty::new(sim.clone());
            let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
            // The batch is durable in the buffer and three pages are written in place, unsynced.
            faulty.cut_power_after(2 + 3);
            dwb.write_pages(&borrow(&batch)).unwrap_err();
            drop(dwb);
            let first = sim.crash(seed);
            tear(&first, F1, 0);
            let faulty = Faulty::new(first.clone());
            let dwb = DoubleWriteBuffer::open_with(faulty.clone(), config(DwbMode::Buffered)).unwrap();
            for file in FILES {
                dwb.register_file(file, file_path(file), PAGE).unwrap();
            }
            faulty.cut_power_after(budget);
            let interrupted = dwb.recover(check);
            drop(dwb);
            let second = first.crash(seed + 100);
            let (_, report) = open(second.clone(), config(DwbMode::Buffered));
            let got = versions(&second);
            let context = format!("recovery cut after {budget} steps ({interrupted:?}), seed {seed}: {got:?}, {report:?}");
            for (f, n, _) in &batch {
                let expected = if (*f, *n) == (F1, 0) { 3 } else { 2 };
                assert_eq!(got[slot_of(*f, *n)], Some(expected), "{context}");
            }
        }
    }
}

/// A disk whose power was cut three storage operations into a batch writing `pages` at version
/// 2 (their images durable in the buffer, the in-place writes not), crashed with `crash_seed`,
/// and `torn` then torn in place: recovery must restore what the buffer holds.
fn torn_after_a_power_cut_in_place(sim: SimStorage, pages: &[(FileId, u64)], crash_seed: u64, torn: (FileId, u64)) -> SimStorage {
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    faulty.cut_power_after(2 + 1);
    dwb.write_pages(&borrow(&pages_at(pages, 2))).unwrap_err();
    drop(dwb);
    let after = sim.crash(crash_seed);
    tear(&after, torn.0, torn.1);
    after
}

#[test]
fn a_repaired_page_survives_a_second_crash_and_a_wrap_around_of_the_ring() {
    let after = torn_after_a_power_cut_in_place(disk(11), &[(F1, 2), (F2, 4)], 5, (F1, 2));
    let (dwb, report) = open(after.clone(), config(DwbMode::Buffered));
    assert!(report.pages_restored.contains(&(F1, 2)), "{report:?}");
    assert_eq!(versions(&after)[slot_of(F1, 2)], Some(2));
    // Enough batches of other pages to wrap the 128 KiB ring several times.
    let others: Vec<(FileId, u64)> = (0..PAGES).map(|n| (F2, n)).collect();
    for version in 3..15 {
        dwb.write_pages(&borrow(&pages_at(&others, version))).unwrap();
    }
    drop(dwb);
    let image = after.read_file(&dwb_path()).unwrap();
    let salt = nodedb_wal::format::dwb::FileHeader::decode(&image).unwrap().salt;
    let scan = scan_ring(&image, salt);
    assert!(scan.batches.iter().flat_map(|b| &b.slots).all(|s| s.header.file != F1), "the repair's image was overwritten");
    let last = after.crash(6);
    let (_, report) = open(last.clone(), config(DwbMode::Buffered));
    assert!(report.pages_restored.is_empty());
    assert_eq!(versions(&last)[slot_of(F1, 2)], Some(2), "the repaired page no longer needs its image");
}

/// Seeded simulation over a small, wrapping ring: random batches (some split in two, some
/// naming a page twice), power cut at a random step now and then, against a model of each
/// page's acknowledged version.
#[test]
fn random_batches_and_crashes_over_a_wrapping_ring_keep_every_page_old_or_new() {
    for seed in 0..seeds() * 2 {
        let mut rng = SimRng::new(seed);
        let mode = if seed % 2 == 0 { DwbMode::Buffered } else { DwbMode::Direct };
        let mut sim = disk(seed);
        let mut faulty = Faulty::new(sim.clone());
        let (mut dwb, _) = open(faulty.clone(), config(mode));
        let mut acked = versions(&sim);
        let mut next_version = 2;
        for step in 0..40 {
            let count = 1 + rng.below(22) as usize;
            let batch = random_batch(&mut rng, count, &mut next_version);
            let cut = rng.below(3) == 0;
            if cut {
                faulty.cut_power_after(rng.below(2 * count as u64 + 8));
            }
            let result = dwb.write_pages(&borrow(&batch));
            faulty.restore_power();
            if result.is_ok() {
                note_acknowledged(&mut acked, &batch);
            }
            if !cut {
                result.unwrap();
                continue;
            }
            drop(dwb);
            let after = sim.crash(rng.next_u64());
            faulty = Faulty::new(after.clone());
            (dwb, _) = open(faulty.clone(), config(mode));
            acked = versions_after_crash(&after, &acked, &batch, result.is_err(), &format!("seed {seed} step {step}"));
            sim = after;
        }
    }
}

#[test]
fn the_newest_image_wins_when_a_page_is_buffered_twice() {
    let sim = disk(3);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 4)], 2))).unwrap();
    dwb.write_pages(&borrow(&pages_at(&[(F1, 4)], 3))).unwrap();
    // Twice in one batch, the later image with the lower version: sequence decides, not version.
    dwb.write_pages(&[(F2, 1, &page(F2, 1, 5)), (F2, 1, &page(F2, 1, 4))]).unwrap();
    drop(dwb);
    tear(&sim, F1, 4);
    tear(&sim, F2, 1);
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.pages_restored, vec![(F1, 4), (F2, 1)]);
    assert_eq!(versions(&sim)[slot_of(F1, 4)], Some(3));
    assert_eq!(versions(&sim)[slot_of(F2, 1)], Some(4));
}

#[test]
fn an_intact_in_place_page_newer_than_its_image_is_never_replaced() {
    let sim = disk(4);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 5), (F1, 6)], 2))).unwrap();
    drop(dwb);
    write_in_place(&sim, F1, 5, 9);
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(versions(&sim)[slot_of(F1, 5)], Some(9));
    assert!(!report.pages_restored.contains(&(F1, 5)));
    assert_eq!(report.pages_kept, 2);
}

#[test]
fn a_stale_intact_page_whose_in_place_write_never_landed_is_brought_up_to_its_image() {
    let sim = disk(5);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    // The batch is durable in the buffer; no in-place write happens.
    faulty.cut_power_after(2);
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1), (F2, 2)], 2))).unwrap_err();
    drop(dwb);
    let after = sim.crash(1);
    assert_eq!(versions(&after)[slot_of(F1, 1)], Some(1));
    let (_, report) = open(after.clone(), config(DwbMode::Buffered));
    assert_eq!(report.pages_restored, vec![(F1, 1), (F2, 2)]);
    assert_eq!(versions(&after)[slot_of(F2, 2)], Some(2));
}

#[test]
fn recovery_never_writes_a_page_it_has_no_image_for() {
    let sim = disk(6);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1)], 2))).unwrap();
    drop(dwb);
    tear(&sim, F2, 7);
    let before = sim.read_file(&file_path(F2)).unwrap();
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.pages_checked, 1);
    assert_eq!(versions(&sim)[slot_of(F2, 7)], None, "a torn page without an image stays torn for the engine to see");
    assert_eq!(sim.read_file(&file_path(F2)).unwrap(), before, "not a byte of the other file changed");
}

#[test]
fn a_torn_page_whose_image_the_validator_rejects_is_unrepairable() {
    let sim = disk(7);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    let mut bad = page(F1, 3, 2);
    bad[100] ^= 1;
    dwb.write_pages(&[(F1, 3, &bad)]).unwrap();
    drop(dwb);
    tear(&sim, F1, 3);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(err, WalError::DwbUnrepairable { file: F1, page_no: 3, .. }), "{err}");
    assert!(matches!(dwb.write_pages(&[(F1, 0, &page(F1, 0, 2))]), Err(WalError::DwbNotRecovered { .. })));
}

#[test]
fn a_page_file_that_cannot_be_opened_fails_recovery_without_poisoning_it() {
    let sim = disk(22);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1), (F2, 1)], 2))).unwrap();
    drop(dwb);
    let saved = sim.read_file(&file_path(F2)).unwrap();
    sim.remove(&file_path(F2)).unwrap();
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(&err, WalError::Io { op: IoOp::Open, .. }), "{err}");
    // The operator puts the file back; recovery runs again on the same buffer.
    let f = sim.open(&file_path(F2), OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
    f.write_at(&saved, 0).unwrap();
    f.sync_data().unwrap();
    tear(&sim, F2, 1);
    let report = dwb.recover(check).unwrap();
    assert_eq!(report.pages_restored, vec![(F2, 1)]);
    dwb.write_pages(&borrow(&pages_at(&[(F2, 2)], 2))).unwrap();
}

#[test]
fn images_of_unregistered_files_are_reported_and_left_alone() {
    let sim = disk(8);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1), (F2, 1)], 2))).unwrap();
    drop(dwb);
    tear(&sim, F2, 1);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    let report = dwb.recover(check).unwrap();
    assert_eq!(report.unregistered_files, vec![F2]);
    assert_eq!(versions(&sim)[slot_of(F2, 1)], None);
}

/// A page file registered with another page length than its images in the buffer (the engine
/// changed the file's page size between opens, or registers it wrongly) cannot have them
/// applied: recovery refuses with `DwbPageLen` and writes none of them into the file, since it
/// cannot tell the two apart. The images stay until the ring wraps over them, so the
/// way on is the old registration, or a new `FileId` for the file with its new pages (the old
/// id's images are then those of an unregistered file).
#[test]
fn a_file_registered_with_another_page_length_than_its_images_is_refused_and_left_as_it_was() {
    let sim = disk(18);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1), (F2, 3)], 2))).unwrap();
    drop(dwb);
    tear(&sim, F2, 3);
    let before = sim.read_file(&file_path(F1)).unwrap();
    let register = |f1: FileId, f1_page: usize| {
        let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
        dwb.register_file(f1, file_path(F1), f1_page).unwrap();
        dwb.register_file(F2, file_path(F2), PAGE).unwrap();
        dwb
    };
    let dwb = register(F1, 2 * PAGE);
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(err, WalError::DwbPageLen { file: F1, page_no: 1, len: PAGE, expected } if expected == 2 * PAGE), "{err}");
    assert!(matches!(dwb.write_pages(&[(F2, 0, &page(F2, 0, 3))]), Err(WalError::DwbNotRecovered { .. })));
    drop(dwb);
    assert!(sim.read_file(&file_path(F1)).unwrap() == before, "no image of the old length is written into the file");
    // Under a new id the file's old images are an unregistered file's; the others apply.
    let dwb = register(FileId(3), 2 * PAGE);
    let report = dwb.recover(check).unwrap();
    assert_eq!((report.unregistered_files, report.pages_restored), (vec![F1], vec![(F2, 3)]));
    dwb.write_pages(&[(FileId(3), 0, &[5u8; 2 * PAGE])]).unwrap();
}

#[test]
fn writes_wait_for_recovery_of_an_existing_buffer() {
    let sim = disk(9);
    drop(open(sim.clone(), config(DwbMode::Buffered)));
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    let err = dwb.write_pages(&[(F1, 0, &page(F1, 0, 2))]).unwrap_err();
    assert!(matches!(err, WalError::DwbNotRecovered { .. }), "{err}");
    dwb.recover(check).unwrap();
    dwb.write_pages(&[(F1, 0, &page(F1, 0, 2))]).unwrap();
}

#[test]
fn every_page_is_checked_before_anything_is_written() {
    let sim = disk(10);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    let good = page(F1, 0, 2);
    let err = dwb.write_pages(&[(F1, 0, &good), (FileId(9), 0, &good)]).unwrap_err();
    assert!(matches!(err, WalError::DwbUnknownFile { file: FileId(9) }), "{err}");
    let err = dwb.write_pages(&[(F1, 0, &good), (F2, 0, &good[..100])]).unwrap_err();
    assert!(matches!(err, WalError::DwbPageLen { len: 100, expected: PAGE, .. }), "{err}");
    // A page past the largest file offset could never be written in place; once its image
    // was durable, every recovery would fail on it (found by an adversarial review).
    let past_off_t = (i64::MAX as u64) / PAGE as u64;
    let err = dwb.write_pages(&[(F1, 0, &good), (F1, past_off_t, &good)]).unwrap_err();
    assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
    assert_eq!(dwb.stats().batches, 0);
    assert_eq!(versions(&sim)[slot_of(F1, 0)], Some(1));
    let err = dwb.register_file(F1, "/elsewhere", PAGE).unwrap_err();
    assert!(matches!(err, WalError::InvalidConfig { .. }), "{err}");
}

#[test]
fn a_buffer_file_that_cannot_be_opened_degrades_and_page_writes_are_refused() {
    let sim = disk(12);
    let faulty = Faulty::new(sim.clone());
    faulty.refuse_open(&dwb_path());
    let dwb = DoubleWriteBuffer::open_with(faulty, config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    assert!(dwb.is_degraded());
    assert_eq!(dwb.degraded_cause(), Some((IoOp::Open, std::io::ErrorKind::PermissionDenied)));
    assert!(matches!(dwb.recover(check), Err(WalError::DwbDegraded { op: IoOp::Open, .. })));
    let err = dwb.write_pages(&[(F1, 0, &page(F1, 0, 2))]).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { .. }), "{err}");
    assert_eq!(versions(&sim)[slot_of(F1, 0)], Some(1), "a refused page is not written");
    assert_eq!(dwb.stats().protected_pages + dwb.stats().unprotected_pages, 0);
}

#[test]
fn a_failed_buffer_sync_degrades_and_leaves_the_pages_untouched() {
    let sim = disk(13);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    sim.fail_next_sync();
    let err = dwb.write_pages(&borrow(&pages_at(&[(F1, 0), (F2, 0)], 2))).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { op: IoOp::SyncData, .. }), "{err}");
    assert!(dwb.is_degraded());
    assert_eq!(&versions(&sim)[..1], &[Some(1)]);
    assert!(dwb.write_pages(&borrow(&pages_at(&[(F1, 1)], 2))).is_err(), "degraded until reopened");
    drop(dwb);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    assert!(!dwb.is_degraded(), "reopening leaves the degraded state");
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1)], 2))).unwrap();
}

#[test]
fn with_write_unprotected_a_degraded_buffer_writes_in_place_and_counts_the_pages() {
    let sim = disk(14);
    let faulty = Faulty::new(sim.clone());
    faulty.refuse_open(&dwb_path());
    let mut cfg = config(DwbMode::Buffered);
    cfg.on_degraded = DegradedPolicy::WriteUnprotected;
    let dwb = DoubleWriteBuffer::open_with(faulty, cfg).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    assert!(dwb.is_degraded());
    dwb.write_pages(&borrow(&pages_at(&[(F1, 0), (F1, 1)], 2))).unwrap();
    assert_eq!(dwb.stats().unprotected_pages, 2);
    assert_eq!(dwb.stats().protected_pages, 0);
    assert_eq!(dwb.stats().batches, 0);
    assert_eq!(versions(&sim)[slot_of(F1, 1)], Some(2));
}

#[test]
fn a_failed_page_sync_poisons_and_reopening_repairs() {
    let sim = disk(15);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    let batch = pages_at(&[(F1, 0), (F2, 0)], 2);
    // Buffer write and sync, both page writes, then the first page file's sync fails.
    faulty.cut_power_after(4);
    let err = dwb.write_pages(&borrow(&batch)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: IoOp::SyncData, .. }), "{err}");
    faulty.restore_power();
    let err = dwb.write_pages(&borrow(&batch)).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "{err}");
    drop(dwb);
    let after = sim.crash(2);
    open(after.clone(), config(DwbMode::Buffered));
    assert_eq!(versions(&after)[slot_of(F1, 0)], Some(2));
    assert_eq!(versions(&after)[slot_of(F2, 0)], Some(2));
}

// After a failed fdatasync Linux keeps the pages it could not write in the page cache, marked
// clean: read back they look written, and the next fdatasync writes nothing. A buffer reopened
// without a power cut (the engine reopening it, or a restarted process under the same kernel)
// must repair such pages from their images, not keep what the cache shows.
#[test]
fn a_page_whose_sync_failed_is_repaired_by_a_reopen_without_a_power_cut() {
    for seed in 0..16 {
        let sim = disk(seed);
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        let faulty = Faulty::new(sim.clone());
        let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
        let batch = pages_at(&[(F1, 0), (F1, 1), (F2, 0)], 2);
        // The buffer's sync goes through; the first page file's sync fails.
        faulty.fail_once(FaultOp::SyncData, 1, EIO);
        dwb.write_pages(&borrow(&batch)).unwrap_err();
        drop(dwb);
        let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
        // Enough batches of other pages to wrap the 128 KiB ring over the batch's images.
        let others: Vec<(FileId, u64)> = (1..PAGES).map(|n| (F2, n)).collect();
        for version in 3..15 {
            dwb.write_pages(&borrow(&pages_at(&others, version))).unwrap();
        }
        drop(dwb);
        let after = sim.crash(seed);
        open(after.clone(), config(DwbMode::Buffered));
        let got = versions(&after);
        assert_eq!([got[slot_of(F1, 0)], got[slot_of(F1, 1)], got[slot_of(F2, 0)]], [Some(2); 3], "seed {seed}: {got:?}");
    }
}

// The same with pages of 1 KiB, smaller than a page of the page cache. Linux drops only whole
// pages (whole folios, which can be larger still) of a `POSIX_FADV_DONTNEED` range, so asking
// for one page file page's bytes dropped nothing: recovery read the stranded page as written,
// kept it, and a power cut after the ring wrapped lost it.
#[test]
fn a_page_smaller_than_a_cache_page_whose_sync_failed_is_repaired_by_a_reopen() {
    const KIB_PAGE: usize = 1024;
    let kib = FileId(4);
    let path = Path::new(DIR).join("pages-4");
    let page_of = |page_no: u64, version: u64| {
        let mut bytes: Vec<u8> = (0..KIB_PAGE).map(|i| (i as u64 ^ page_no.wrapping_mul(31) ^ version.wrapping_mul(131)) as u8).collect();
        bytes[4..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    fn open_kib<S: Storage>(storage: S, file: FileId, path: &Path) -> DoubleWriteBuffer<S> {
        let dwb = DoubleWriteBuffer::open_with(storage, config(DwbMode::Buffered)).unwrap();
        dwb.register_file(file, path, KIB_PAGE).unwrap();
        dwb.recover(check).unwrap();
        dwb
    }
    for seed in 0..16 {
        let sim = disk(seed);
        create_file(&sim, &path, &(0..8).flat_map(|n| page_of(n, 1)).collect::<Vec<u8>>());
        let faulty = Faulty::new(sim.clone());
        let dwb = open_kib(faulty.clone(), kib, &path);
        // The buffer's sync goes through; the page file's sync fails.
        faulty.fail_once(FaultOp::SyncData, 1, EIO);
        dwb.write_pages(&[(kib, 3, &page_of(3, 2))]).unwrap_err();
        drop(dwb);
        // Reopened under the same kernel: once recovery returns, the page is durable as its
        // image, whatever happens to the ring after.
        drop(open_kib(sim.clone(), kib, &path));
        let on_disk = sim.crash(seed).read_file(&path).unwrap();
        let got = check(kib, &on_disk[3 * KIB_PAGE..4 * KIB_PAGE]);
        assert_eq!(got, PageCheck::Intact { version: 2 }, "seed {seed}");
    }
}

#[test]
fn a_failed_buffer_write_degrades_and_leaves_the_pages_untouched() {
    let sim = disk(17);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    let (before, writes) = (versions(&sim), faulty.calls(FaultOp::Write));
    faulty.fail_once(FaultOp::Write, 0, EIO);
    let err = dwb.write_pages(&borrow(&pages_at(&[(F1, 0), (F2, 0)], 2))).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { op: IoOp::Write, .. }), "{err}");
    assert_eq!(dwb.degraded_cause().map(|(op, _)| op), Some(IoOp::Write));
    assert_eq!(faulty.calls(FaultOp::Write), writes + 1, "nothing was written after the buffer's write failed");
    assert_eq!(versions(&sim), before);
    drop(dwb);
    // Nor does a crash and recovery change a page: no batch of that write is in the buffer.
    let after = sim.crash(4);
    let (_, report) = open(after.clone(), config(DwbMode::Buffered));
    assert!(report.pages_restored.is_empty(), "{report:?}");
    assert_eq!(versions(&after), before);
}

#[test]
fn a_failed_in_place_write_poisons_and_reopening_repairs_the_page_from_the_buffer() {
    let sim = disk(16);
    let faulty = Faulty::new(sim.clone());
    let (dwb, _) = open(faulty.clone(), config(DwbMode::Buffered));
    let batch = pages_at(&[(F1, 0), (F2, 0)], 2);
    // The buffer's write (and sync) go through; the first in-place write fails.
    faulty.fail_once(FaultOp::Write, 1, EIO);
    let err = dwb.write_pages(&borrow(&batch)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: IoOp::Write, .. }), "{err}");
    assert_eq!(faulty.injected(), 1);
    assert!(!dwb.is_degraded(), "the buffer holds the batch");
    let failed_on = match &err {
        WalError::Io { path, .. } => path.clone(),
        other => panic!("{other}"),
    };
    let err = dwb.write_pages(&borrow(&batch)).unwrap_err();
    assert!(matches!(&err, WalError::Poisoned { op: IoOp::Write, path: Some(p), .. } if *p == failed_on), "names the page file: {err}");
    assert_eq!([versions(&sim)[slot_of(F1, 0)], versions(&sim)[slot_of(F2, 0)]], [Some(1), Some(1)]);
    // The failed write may have landed in part.
    tear(&sim, F1, 0);
    drop(dwb);
    let after = sim.crash(3);
    let (_, report) = open(after.clone(), config(DwbMode::Buffered));
    assert!(report.pages_restored.contains(&(F1, 0)) && report.pages_restored.contains(&(F2, 0)), "{report:?}");
    assert_eq!([versions(&after)[slot_of(F1, 0)], versions(&after)[slot_of(F2, 0)]], [Some(2), Some(2)]);
}

#[test]
fn off_mode_writes_in_place_unprotected_without_a_buffer_file() {
    let sim = disk(16);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Off));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 0), (F2, 3)], 2))).unwrap();
    assert_eq!(dwb.mode(), DwbMode::Off);
    assert_eq!(dwb.stats().unprotected_pages, 2);
    assert_eq!(dwb.stats().buffer_bytes, 0);
    assert!(sim.read_file(&dwb_path()).is_none());
    assert_eq!(versions(&sim)[slot_of(F2, 3)], Some(2));
}

#[test]
fn switching_to_off_applies_the_old_buffer_then_removes_it() {
    let after = torn_after_a_power_cut_in_place(disk(17), &[(F1, 6), (F2, 6)], 3, (F1, 6));
    let (dwb, report) = open(after.clone(), config(DwbMode::Off));
    assert_eq!(report.pages_restored, vec![(F1, 6), (F2, 6)]);
    assert!(after.read_file(&dwb_path()).is_none(), "the buffer file is gone");
    dwb.write_pages(&borrow(&pages_at(&[(F1, 6)], 3))).unwrap();
    assert_eq!(versions(&after)[slot_of(F1, 6)], Some(3));
}

/// Found by a review: in mode `Off`, a failed directory fsync after recovery removed the buffer
/// file was followed, at the next `recover`, by a second fsync of the directory, whose success
/// was taken for the removal being durable. After a failed fsync that is unknown: the buffer is
/// poisoned, syncs nothing more and refuses every call; a reopen finds no file and goes on
/// unprotected, as mode `Off` does.
#[test]
fn a_failed_directory_sync_after_removing_the_buffer_in_off_mode_poisons_and_is_never_retried() {
    let after = torn_after_a_power_cut_in_place(disk(18), &[(F1, 6), (F2, 6)], 3, (F1, 6));

    let faulty = Faulty::new(after.clone());
    let dwb = DoubleWriteBuffer::open_with(faulty.clone(), config(DwbMode::Off)).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    faulty.fail_once(FaultOp::SyncDir, 0, EIO);
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(&err, WalError::Io { op: IoOp::SyncDir, path, .. } if path == Path::new(DIR)), "{err}");
    let dir_syncs = faulty.calls(FaultOp::SyncDir);
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(&err, WalError::Poisoned { op: IoOp::SyncDir, path: Some(p), .. } if p == Path::new(DIR)), "{err}");
    let err = dwb.write_pages(&borrow(&pages_at(&[(F1, 6)], 3))).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncDir, .. }), "{err}");
    assert_eq!(faulty.calls(FaultOp::SyncDir), dir_syncs, "the failed directory sync is never retried");
    assert_eq!(versions(&after)[slot_of(F1, 6)], Some(2), "the pages were restored and synced before the removal");
    drop(dwb);

    let (dwb, report) = open(after.clone(), config(DwbMode::Off));
    assert_eq!(report.batches, 0, "the reopened buffer finds no file");
    dwb.write_pages(&borrow(&pages_at(&[(F1, 6)], 3))).unwrap();
    assert_eq!(versions(&after)[slot_of(F1, 6)], Some(3));
}

#[test]
fn a_crash_while_the_buffer_file_is_created_leaves_a_usable_buffer() {
    // Creation: the directory's two levels synced in their parents, then zero-fill writes (the
    // ring is 128 KiB, one chunk), header, length, sync under a name of its own, the rename to
    // the buffer's path, dir sync.
    for budget in 0..=9 {
        for seed in 0..seeds() {
            let sim = disk(seed);
            let faulty = Faulty::new(sim.clone());
            faulty.cut_power_after(budget);
            let dwb = DoubleWriteBuffer::open_with(faulty, config(DwbMode::Buffered)).unwrap();
            assert_eq!(dwb.is_degraded(), budget < 8, "budget {budget}");
            drop(dwb);
            let after = sim.crash(seed);
            let (dwb, report) = open(after.clone(), config(DwbMode::Buffered));
            assert_eq!(report.batches, 0);
            dwb.write_pages(&borrow(&pages_at(&[(F1, 0)], 2))).unwrap();
            drop(dwb);
            let (_, report) = open(after.clone(), config(DwbMode::Buffered));
            assert_eq!(report.batches, 1, "budget {budget}, seed {seed}: the reformatted file holds new batches");
        }
    }
}

/// Found by a review: a `<path>.creating` left by a crash while the buffer file was made was
/// formatted again by the other modes, but in mode `Off`, which never makes one, it stayed for
/// good, holding up to a ring's space. Mode `Off` now removes it, durably.
#[test]
fn off_mode_removes_a_buffer_file_a_crash_left_half_made() {
    let creating = Path::new(DIR).join("dwb.creating");
    for budget in [4, 6] {
        let after = disk(budget);
        let faulty = Faulty::new(after.clone());
        // The process dies in the middle of the creation: after the zeros, or the header.
        faulty.cut_power_after(budget);
        drop(DoubleWriteBuffer::open_with(faulty, config(DwbMode::Buffered)).unwrap());
        assert!(after.read_file(&creating).is_some(), "budget {budget}: the creation left it");
        let (dwb, report) = open(after.clone(), config(DwbMode::Off));
        assert_eq!(report.batches, 0);
        dwb.write_pages(&borrow(&pages_at(&[(F1, 0)], 2))).unwrap();
        assert!(after.read_file(&creating).is_none(), "budget {budget}: removed");
        assert!(after.crash(budget).read_file(&creating).is_none(), "budget {budget}: durably");
        assert!(after.read_file(&dwb_path()).is_none());
    }
}

#[test]
fn a_damaged_header_over_salted_batches_refuses_recovery_and_writes_nothing() {
    let sim = disk(20);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 2)], 2))).unwrap();
    drop(dwb);
    let intact = sim.read_file(&dwb_path()).unwrap();
    let mut image = intact.clone();
    image[..32].fill(0x5A);
    sim.write_file(&dwb_path(), &image);
    tear(&sim, F1, 2);
    let before = versions(&sim);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, file_path(F1), PAGE).unwrap();
    let err = dwb.recover(check).unwrap_err();
    assert!(matches!(err, WalError::DwbHeaderDamaged { salted_batches: 1, .. }) && err.is_corruption(), "{err}");
    assert!(matches!(dwb.write_pages(&borrow(&pages_at(&[(F1, 3)], 2))), Err(WalError::DwbNotRecovered { .. })));
    drop(dwb);
    assert_eq!(versions(&sim), before, "nothing was written");
    assert_eq!(sim.read_file(&dwb_path()).unwrap(), image, "the buffer file was left as found");
    // The header block put back from a copy: the batch is checked and applied again.
    sim.write_file(&dwb_path(), &intact);
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.pages_restored, vec![(F1, 2)]);
}

#[test]
fn a_damaged_header_over_a_ring_without_batches_is_rewritten() {
    let sim = disk(21);
    drop(open(sim.clone(), config(DwbMode::Buffered)));
    let mut image = sim.read_file(&dwb_path()).unwrap();
    // Checksum and fields damaged, the magic left: a buffer's header (a file without even the
    // magic, and not zeros, is someone else's and left alone: `dwb_attacks.rs`).
    image[..4].fill(0x5A);
    image[8..32].fill(0x5A);
    sim.write_file(&dwb_path(), &image);
    let (dwb, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.batches, 0);
    dwb.write_pages(&borrow(&pages_at(&[(F2, 2)], 2))).unwrap();
    drop(dwb);
    assert_eq!(&sim.read_file(&dwb_path()).unwrap()[4..8], b"NDWB", "the header was rewritten");
    let (_, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.batches, 1);
    // An empty file, as a crash right after its creation leaves it.
    sim.write_file(&dwb_path(), &[]);
    let (dwb, report) = open(sim.clone(), config(DwbMode::Buffered));
    assert_eq!(report.batches, 0);
    dwb.write_pages(&borrow(&pages_at(&[(F2, 3)], 2))).unwrap();
    assert_eq!(sim.read_file(&dwb_path()).unwrap().len(), 4096 + 128 * 1024);
}

/// Creates a file holding `bytes`, durably.
fn create_file(sim: &SimStorage, path: &Path, bytes: &[u8]) {
    let f = sim.open(path, OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
    f.write_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(Path::new(DIR)).unwrap();
}

/// A page file of 512-byte pages, the target of a slot spelled out inside a 4 KiB page image.
const SMALL: FileId = FileId(3);

/// Writes a page of `F1` whose image spells out, 512 bytes into the ring after the batch's
/// start, a whole slot of `salt` that names page 0 of `SMALL` at version 99; then overwrites
/// the first 512 bytes of the batch, as a later batch that wraps the ring would. Returns what
/// recovery then reports and page 0 of `SMALL` afterwards.
fn recover_over_a_spelled_out_slot(salt_of: impl Fn(&[u8]) -> u32) -> (nodedb_wal::DwbRecovery, Vec<u8>) {
    use nodedb_wal::format::dwb::{SLOT_HEADER_LEN, SlotHeader, encode_slot};
    let sim = disk(22);
    let small_path = Path::new(DIR).join("pages-3");
    let small_page = |version: u64| {
        let mut bytes = vec![0x11u8; 512];
        bytes[4..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    create_file(&sim, &small_path, &small_page(1));
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    let salt = salt_of(&sim.read_file(&dwb_path()).unwrap());
    let forged = SlotHeader { file: SMALL, seq: 1 << 40, batch_seq: 1 << 40, batch_slots: 1, page_len: 512, page_no: 0, epoch: 1, salt };
    let mut vehicle = page(F1, 5, 2);
    encode_slot(&forged, &small_page(99), &mut vehicle[512 - SLOT_HEADER_LEN..]);
    dwb.write_pages(&[(F1, 5, &vehicle)]).unwrap();
    drop(dwb);
    let mut image = sim.read_file(&dwb_path()).unwrap();
    image[4096..4096 + 512].fill(0);
    sim.write_file(&dwb_path(), &image);
    let dwb = DoubleWriteBuffer::open_with(sim.clone(), config(DwbMode::Buffered)).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    dwb.register_file(SMALL, &small_path, 512).unwrap();
    let report = dwb.recover(check).unwrap();
    (report, sim.read_file(&small_path).unwrap())
}

#[test]
fn a_slot_spelled_out_inside_a_page_image_is_never_applied() {
    let (report, page) = recover_over_a_spelled_out_slot(|_| 1);
    assert_eq!((report.batches, report.pages_restored.len()), (0, 0), "{report:?}");
    assert_eq!(u64::from_le_bytes(page[4..12].try_into().unwrap()), 1, "the page was left alone");
    // Without a salt (a version 1 slot) it is no batch of this file either.
    let (report, _) = recover_over_a_spelled_out_slot(|_| 0);
    assert_eq!(report.batches, 0, "{report:?}");
    // What the salt guards against: the same slot with the file's own salt is taken for a batch.
    let (report, page) = recover_over_a_spelled_out_slot(|file| nodedb_wal::format::dwb::FileHeader::decode(file).unwrap().salt);
    assert_eq!(report.pages_restored, vec![(SMALL, 0)], "{report:?}");
    assert_eq!(u64::from_le_bytes(page[4..12].try_into().unwrap()), 99);
}

#[test]
fn a_buffer_of_a_newer_version_is_refused_whatever_its_geometry() {
    use nodedb_wal::format::dwb::FileHeader;
    for (block_len, ring_bytes) in [(4096, 128 * 1024), (2 << 20, 4 << 20), (3, 5)] {
        let sim = disk(24);
        let cfg = config(DwbMode::Buffered);
        let mut image = vec![0u8; cfg.block_len + cfg.ring_bytes as usize];
        image[..40].copy_from_slice(&FileHeader { version: 3, block_len, ring_bytes, salt: 77 }.encode());
        create_file(&sim, &dwb_path(), &image);
        let err = DoubleWriteBuffer::open_with(sim.clone(), cfg).unwrap_err();
        assert!(matches!(err, WalError::DwbUnsupportedVersion { version: 3, supported: 2, .. }), "{err}");
        assert_eq!(sim.read_file(&dwb_path()).unwrap(), image, "left as found");
    }
}

/// Creates the buffer file as a build of version 1 left it: its header and one slot, at the
/// ring's start, holding `image`.
fn create_version_1_file(sim: &SimStorage, cfg: &nodedb_wal::DwbConfig, slot: &nodedb_wal::format::dwb::SlotHeader, image: &[u8]) {
    use nodedb_wal::format::dwb::{FileHeader, encode_slot};
    let mut file = vec![0u8; cfg.block_len + cfg.ring_bytes as usize];
    let header = FileHeader { version: 1, block_len: cfg.block_len as u32, ring_bytes: cfg.ring_bytes, salt: 0 };
    file[..32].copy_from_slice(&header.encode()[..32]);
    encode_slot(slot, image, &mut file[cfg.block_len..]);
    create_file(sim, &dwb_path(), &file);
}

#[test]
fn a_version_1_slot_numbered_near_the_end_of_sequences_is_no_batch() {
    use nodedb_wal::format::dwb::SlotHeader;
    let sim = disk(25);
    let cfg = config(DwbMode::Buffered);
    let slot =
        SlotHeader { file: F1, seq: u64::MAX, batch_seq: u64::MAX, batch_slots: 1, page_len: PAGE as u32, page_no: 0, epoch: 1, salt: 0 };
    create_version_1_file(&sim, &cfg, &slot, &page(F1, 0, 9));
    let (dwb, report) = open(sim.clone(), cfg);
    assert_eq!(report.batches, 0);
    dwb.write_pages(&borrow(&pages_at(&[(F1, 1)], 2))).unwrap();
    assert_eq!(versions(&sim)[slot_of(F1, 0)], Some(1));
}

#[test]
fn a_version_1_buffer_is_recovered_then_rewritten_with_a_salt() {
    use nodedb_wal::format::dwb::{FileHeader, SlotHeader};
    let sim = disk(23);
    // A version 1 file as an earlier build left it: one applied batch of page (1, 4) at version 2.
    let cfg = config(DwbMode::Buffered);
    let slot = SlotHeader { file: F1, seq: 7, batch_seq: 7, batch_slots: 1, page_len: PAGE as u32, page_no: 4, epoch: 3, salt: 0 };
    create_version_1_file(&sim, &cfg, &slot, &page(F1, 4, 2));
    tear(&sim, F1, 4);
    let (dwb, report) = open(sim.clone(), cfg.clone());
    assert_eq!(report.pages_restored, vec![(F1, 4)]);
    let rewritten = FileHeader::decode(&sim.read_file(&dwb_path()).unwrap()).unwrap();
    assert_eq!(rewritten.version, 2);
    assert_ne!(rewritten.salt, 0);
    // New batches carry the salt; the version 1 batch no longer counts as one of this file's.
    dwb.write_pages(&borrow(&pages_at(&[(F2, 1)], 2))).unwrap();
    drop(dwb);
    let scan = scan_ring(&sim.read_file(&dwb_path()).unwrap(), rewritten.salt);
    // Numbered afresh: no slot of version 1 counts under the salt (one spelled out in a page
    // image could carry any number, up to the end of sequences: `dwb_attacks.rs`).
    assert_eq!((scan.batches.len(), scan.other_salt, scan.seq_max), (1, 1, 1), "numbered from 1 under the new salt");
    tear(&sim, F2, 1);
    let (_, report) = open(sim.clone(), cfg);
    assert_eq!((report.batches, report.pages_restored.clone()), (1, vec![(F2, 1)]), "{report:?}");
}

/// Found by a review: recovery rewrites a version 1 header under a salt; when that fdatasync
/// failed, Linux kept the new header in the page cache, clean, and a reopen under the same
/// kernel read it, took the file for formatted and wrote batches under a salt the header on
/// disk never had. After a power cut the old header came back, the batches did not count, and
/// a page torn in place stayed torn. The buffer file's clean cached pages are now dropped
/// before its header is read, so the reopen sees the disk's header and rewrites it again.
#[test]
fn a_header_rewrite_whose_sync_failed_is_read_from_the_disk_by_a_reopen_and_written_again() {
    use nodedb_wal::format::dwb::FileHeader;
    let cfg = config(DwbMode::Buffered);
    for seed in 0..seeds() {
        let sim = disk(seed);
        // A version 1 file as an earlier build left it, without a batch.
        let mut file = vec![0u8; cfg.block_len + cfg.ring_bytes as usize];
        let header = FileHeader { version: 1, block_len: cfg.block_len as u32, ring_bytes: cfg.ring_bytes, salt: 0 };
        file[..32].copy_from_slice(&header.encode()[..32]);
        create_file(&sim, &dwb_path(), &file);
        let dwb = DoubleWriteBuffer::open_with(sim.clone(), cfg.clone()).unwrap();
        sim.fail_next_sync(); // the header rewrite's, the only sync of a recovery with no image
        dwb.recover(check).unwrap();
        assert!(matches!(dwb.degraded_cause(), Some((IoOp::SyncData, _))), "seed {seed}");
        drop(dwb);
        a_batch_after_a_reopen_protects_its_page(&sim, &cfg, seed);
    }
}

/// Reopens the buffer on `sim` without a power cut and writes a batch; a power cut then tears
/// the batch's in-place write, and recovery must restore the page from the batch.
fn a_batch_after_a_reopen_protects_its_page(sim: &SimStorage, cfg: &DwbConfig, seed: u64) {
    let (dwb, _) = open(sim.clone(), cfg.clone());
    dwb.write_pages(&borrow(&pages_at(&[(F1, 5)], 2))).unwrap();
    drop(dwb);
    tear(sim, F1, 5);
    let after = sim.crash(seed);
    let (_, report) = open(after.clone(), cfg.clone());
    assert_eq!(versions(&after)[slot_of(F1, 5)], Some(2), "seed {seed}: the torn page is restored from its batch: {report:?}");
}

/// Found by a review: when the directory fsync after a new buffer file's rename failed, the
/// buffer degraded, but a reopen found the file under its name and wrote batches into it
/// without the name ever having been made durable. A power cut could undo the rename: the
/// batches were then in `<path>.creating`, which the next open formats again, and a page torn
/// in place stayed torn. Recovery of an existing file now syncs its directory before any batch
/// is written into it, as the log's open does for its segments.
#[test]
fn a_buffer_whose_creation_failed_to_sync_its_directory_has_its_name_made_durable_by_a_reopen() {
    let cfg = config(DwbMode::Buffered);
    for seed in 0..seeds() {
        let sim = disk(seed);
        let faulty = Faulty::new(sim.clone());
        // The directory's two levels are synced in their parents first; the third is the
        // directory itself, after the rename.
        faulty.fail_once(FaultOp::SyncDir, 2, EIO);
        let dwb = DoubleWriteBuffer::open_with(faulty, cfg.clone()).unwrap();
        assert!(matches!(dwb.degraded_cause(), Some((IoOp::SyncDir, _))), "seed {seed}");
        drop(dwb);
        a_batch_after_a_reopen_protects_its_page(&sim, &cfg, seed);
    }
}

/// Found by a review: registrations were kept for the buffer's life, so an engine creating and
/// dropping files grew the table without bound. `forget_file` drops one, after unmaking every
/// batch holding an image of the file: a new file registered under the same id then never gets
/// an image of the old one, neither now nor from a recovery after a power cut.
#[test]
fn a_forgotten_files_images_are_never_written_into_a_new_file_registered_under_its_id() {
    let sim = disk(30);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 3), (F2, 3)], 2))).unwrap();
    dwb.write_pages(&borrow(&pages_at(&[(F1, 4)], 3))).unwrap();
    // The engine drops file 1 and makes a new one under its id, its pages at version 1.
    dwb.forget_file(F1).unwrap();
    let new_path = Path::new(DIR).join("pages-new");
    let new_pages: Vec<u8> = (0..PAGES).flat_map(|n| page(F1, n, 1)).collect();
    create_file(&sim, &new_path, &new_pages);
    dwb.register_file(F1, &new_path, PAGE).unwrap();
    drop(dwb);
    let after = sim.crash(30);
    let dwb = DoubleWriteBuffer::open_with(after.clone(), config(DwbMode::Buffered)).unwrap();
    dwb.register_file(F1, &new_path, PAGE).unwrap();
    dwb.register_file(F2, file_path(F2), PAGE).unwrap();
    let report = dwb.recover(check).unwrap();
    assert!(report.pages_restored.is_empty(), "{report:?}");
    assert_eq!(after.read_file(&new_path).unwrap(), new_pages, "no image of the forgotten file landed in the new one");
    assert_eq!(versions(&after)[slot_of(F2, 3)], Some(2), "the other file's page was durable in place");
}

#[test]
fn forgetting_a_file_is_refused_before_recovery_and_a_failed_sync_degrades_and_keeps_it() {
    let sim = disk(31);
    drop(open(sim.clone(), config(DwbMode::Buffered)));
    let faulty = Faulty::new(sim.clone());
    let dwb = DoubleWriteBuffer::open_with(faulty.clone(), config(DwbMode::Buffered)).unwrap();
    for file in FILES {
        dwb.register_file(file, file_path(file), PAGE).unwrap();
    }
    assert!(matches!(dwb.forget_file(F1), Err(WalError::DwbNotRecovered { .. })));
    dwb.recover(check).unwrap();
    assert!(matches!(dwb.forget_file(FileId(9)), Err(WalError::DwbUnknownFile { file: FileId(9) })));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 3)], 2))).unwrap();
    faulty.fail_once(FaultOp::SyncData, 0, EIO);
    let err = dwb.forget_file(F1).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { op: IoOp::SyncData, .. }), "{err}");
    let syncs = faulty.calls(FaultOp::SyncData);
    // Still registered: a page write names the degraded buffer, not an unknown file.
    let err = dwb.write_pages(&borrow(&pages_at(&[(F1, 3)], 3))).unwrap_err();
    assert!(matches!(err, WalError::DwbDegraded { op: IoOp::SyncData, .. }), "{err}");
    assert!(matches!(dwb.forget_file(F1), Err(WalError::DwbDegraded { .. })));
    assert_eq!(faulty.calls(FaultOp::SyncData), syncs, "the failed sync is never retried");
    // Without a buffer file (mode `Off`) there is nothing to unmake.
    let (off, _) = open(sim.clone(), config(DwbMode::Off));
    off.forget_file(F2).unwrap();
    assert!(matches!(off.forget_file(F2), Err(WalError::DwbUnknownFile { .. })));
}

#[test]
fn each_page_is_written_once_into_the_buffer_with_one_extra_sync_per_batch() {
    let sim = disk(18);
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    let list: Vec<(FileId, u64)> = (0..PAGES).map(|n| (F1, n)).collect();
    let syncs = sim.sync_count();
    dwb.write_pages(&borrow(&pages_at(&list, 2))).unwrap();
    let stats = dwb.stats();
    assert_eq!(sim.sync_count() - syncs, 2, "one sync of the buffer, one of the page file");
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.in_place_bytes, PAGES * PAGE as u64);
    // Eight 4 KiB pages with 56-byte headers: 33,216 bytes, padded to 36,864.
    assert_eq!(stats.buffer_bytes, 36_864);
    assert!(stats.buffer_bytes as f64 <= 1.13 * stats.in_place_bytes as f64);
    assert_eq!(stats.protected_pages, PAGES);
}

#[test]
fn every_buffer_write_is_counted_in_the_process_wide_counter() {
    let sim = disk(19);
    let before = wal_dwb_bytes_written_total();
    let (dwb, _) = open(sim.clone(), config(DwbMode::Buffered));
    dwb.write_pages(&borrow(&pages_at(&[(F1, 0)], 2))).unwrap();
    // Creation (header block and 128 KiB of zeros) and the one-block batch; other tests in this
    // process may add more at the same time.
    assert!(wal_dwb_bytes_written_total() - before >= 4096 + 128 * 1024 + 8192);
    assert_eq!(dwb.stats().buffer_bytes, 8192);
}

/// Real files: write through the buffer, tear a page by hand, reopen and recover.
fn real_files(mode: DwbMode) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = |f: FileId| tmp.path().join(format!("pages-{}", f.0));
    const BIG: usize = 16 * 1024;
    let big_page = |f: FileId, n: u64, v: u64| {
        let mut p = page(f, n, v);
        p.resize(BIG, v as u8);
        let crc = crc32c::crc32c(&p[4..]);
        p[..4].copy_from_slice(&crc.to_le_bytes());
        p
    };
    for f in FILES {
        std::fs::write(path(f), vec![0u8; BIG * 32]).unwrap();
    }
    let mut cfg = nodedb_wal::DwbConfig::new(tmp.path().join("dwb"));
    cfg.mode = mode;
    let open_real = |cfg: nodedb_wal::DwbConfig| {
        let dwb = match DoubleWriteBuffer::open(cfg) {
            Err(WalError::DirectIoUnsupported { .. }) => return None,
            other => other.unwrap(),
        };
        for f in FILES {
            dwb.register_file(f, path(f), BIG).unwrap();
        }
        Some(dwb)
    };
    let Some(dwb) = open_real(cfg.clone()) else {
        eprintln!("skipped: {} refuses O_DIRECT", tmp.path().display());
        return;
    };
    assert!(!dwb.is_degraded());
    let pages: Pages = (0..40).map(|i| (FILES[i % 2], i as u64 % 32, big_page(FILES[i % 2], i as u64 % 32, 2))).collect();
    dwb.write_pages(&borrow(&pages)).unwrap();
    assert_eq!(dwb.stats().protected_pages, 40);
    drop(dwb);
    // Tear page 4 of the first file: its second half from another write.
    let mut bytes = std::fs::read(path(F1)).unwrap();
    bytes[4 * BIG + BIG / 2..5 * BIG].fill(0xAB);
    std::fs::write(path(F1), &bytes).unwrap();
    let dwb = open_real(cfg.clone()).unwrap();
    let report = dwb.recover(check).unwrap();
    assert_eq!(report.pages_restored, vec![(F1, 4)], "{report:?}");
    let bytes = std::fs::read(path(F1)).unwrap();
    assert_eq!(&bytes[4 * BIG..5 * BIG], &big_page(F1, 4, 2)[..]);
    dwb.write_pages(&borrow(&pages)).unwrap();
}

#[test]
fn buffered_mode_protects_pages_on_real_files() {
    real_files(DwbMode::Buffered);
}

#[test]
fn direct_mode_protects_pages_on_real_files() {
    real_files(DwbMode::Direct);
}

#[test]
fn a_buffer_path_that_is_a_directory_degrades_on_real_files() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir(tmp.path().join("dwb")).unwrap();
    std::fs::write(tmp.path().join("pages"), vec![0u8; PAGE * 4]).unwrap();
    let dwb = DoubleWriteBuffer::open(nodedb_wal::DwbConfig::new(tmp.path().join("dwb"))).unwrap();
    dwb.register_file(F1, tmp.path().join("pages"), PAGE).unwrap();
    assert!(dwb.is_degraded(), "{dwb:?}");
    assert!(matches!(dwb.write_pages(&[(F1, 0, &page(F1, 0, 2))]), Err(WalError::DwbDegraded { .. })));
    assert_eq!(std::fs::read(tmp.path().join("pages")).unwrap(), vec![0u8; PAGE * 4]);
    assert!(Path::new(&tmp.path().join("dwb")).is_dir());
}

/// Found by a review: a ring grown between opens (a larger `ring_bytes`, or a file a crash left
/// short) was only claimed by `set_len`, leaving a hole that the first batch to reach it had to
/// allocate: on a full disk that batch failed, degrading the buffer in the middle of page
/// writes rather than at the recovery that grew it. Now recovery writes the new space, so a
/// full disk fails it there, and no hole is left (allocated blocks cover the whole file).
#[test]
fn growing_the_ring_allocates_its_new_space_at_recovery_on_real_files() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cfg = nodedb_wal::DwbConfig::new(tmp.path().join("dwb"));
    (cfg.ring_bytes, cfg.batch_bytes_max) = (64 * 1024, 64 * 1024);
    drop(DoubleWriteBuffer::open(cfg.clone()).unwrap());
    cfg.ring_bytes = 1 << 20;
    let dwb = DoubleWriteBuffer::open(cfg.clone()).unwrap();
    dwb.recover(check).unwrap();
    assert!(!dwb.is_degraded());
    let meta = std::fs::metadata(&cfg.path).unwrap();
    assert_eq!(meta.len(), cfg.block_len as u64 + cfg.ring_bytes);
    assert!(meta.blocks() * 512 >= meta.len(), "{} of {} bytes allocated: the grown ring is a hole", meta.blocks() * 512, meta.len());
}
