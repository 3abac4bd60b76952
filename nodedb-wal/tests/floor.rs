//! The truncation floor (`FLOOR`): a log whose oldest segments were removed by anything but
//! truncation is refused with `MissingSegment`, every file left as found, while a power cut at
//! any step of a truncation leaves a log that opens with every record from the checkpoint on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::Gated;

use nodedb_wal::format::manifest::{FLOOR_FILE, MANIFEST_LEN, ManifestSlot, SLOT_LEN, SLOT_SPACING, SlotKind};
use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{
    FsStorage, IoOp, Lsn, MissingBecause, ReadOnlyWal, Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage,
    WalError, segment,
};

const TY: RecordType = RecordType::optional(0x100);

fn config(dir: &Path, recycle: usize) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.recycle_segments = recycle;
    c.allow_buffered_fallback = true;
    c
}

fn payload(lsn: u64) -> Vec<u8> {
    let mut bytes = format!("lsn {lsn} ").into_bytes();
    bytes.resize(900 + (lsn as usize * 37) % 400, lsn as u8);
    bytes
}

/// Appends durably until the log has `segments` segments; records each payload in `model`.
fn fill<S: Storage>(wal: &SegmentedWal<S>, model: &mut BTreeMap<u64, Vec<u8>>, segments: usize) {
    while wal.segments().len() < segments {
        let lsn = wal.next_lsn().0;
        assert_eq!(wal.append_durable(Record::new(TY, &payload(lsn))).unwrap(), Lsn(lsn));
        model.insert(lsn, payload(lsn));
    }
}

/// Every file of `dir` with its bytes.
fn snapshot<S: Storage>(storage: &S, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let read = OpenMode { create: false, write: false, direct: false, create_new: false };
    let mut files = BTreeMap::new();
    for name in storage.list(dir).unwrap() {
        let file = storage.open(&dir.join(&name), read).unwrap();
        let mut bytes = vec![0u8; file.len().unwrap() as usize];
        let n = file.read_at(&mut bytes, 0).unwrap();
        bytes.truncate(n);
        files.insert(name, bytes);
    }
    files
}

/// Every record the log holds is the one appended at its LSN, the LSNs are dense from
/// `from` or earlier, and they reach `acked`.
fn check_holds<S: Storage>(wal: &SegmentedWal<S>, model: &BTreeMap<u64, Vec<u8>>, from: u64, acked: u64, context: &str) {
    let first = wal.recovery_info().first_lsn.0;
    assert!(first <= from, "{context}: records from {from} on were kept, the log starts at {first}");
    let mut expected = first;
    for record in wal.read_from(Lsn(first)).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: replay failed: {e}"));
        assert_eq!(record.lsn.0, expected, "{context}: LSNs must be dense");
        let appended = model.get(&record.lsn.0).unwrap_or_else(|| panic!("{context}: LSN {} was never appended", record.lsn));
        assert_eq!(&record.payload, appended, "{context}: LSN {}", record.lsn);
        expected += 1;
    }
    assert!(expected > acked, "{context}: acknowledged LSN {acked} lost; recovered up to {}", expected - 1);
}

/// A log of six segments truncated twice (the floor recorded, moved, and segments removed or
/// kept for reuse), then closed. Returns the floor and what was appended.
fn truncated_log<S: Storage + Clone>(storage: &S, dir: &Path, recycle: usize) -> (SegmentId, BTreeMap<u64, Vec<u8>>) {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, recycle)).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 6);
    assert_eq!(wal.truncate_before(wal.segments()[1].first_lsn).unwrap(), 1);
    assert_eq!(wal.truncate_before(wal.segments()[2].first_lsn).unwrap(), 2);
    let floor = wal.segments()[0].id;
    assert_eq!(floor, SegmentId(4));
    fill(&wal, &mut model, 5);
    wal.close().unwrap();
    (floor, model)
}

fn the_oldest_segments_removed_after_truncations_are_refused_with_every_file_left<S: Storage + Clone>(storage: S, base: &Path) {
    for recycle in [0, 2] {
        for gone in 1..=2u64 {
            let dir = base.join(format!("r{recycle}-g{gone}"));
            let (floor, _) = truncated_log(&storage, &dir, recycle);
            for id in floor.0..floor.0 + gone {
                storage.remove(&segment::path(&dir, SegmentId(id))).unwrap();
            }
            let before = snapshot(&storage, &dir);
            let expected = |err: &WalError| matches!(err, WalError::MissingSegment { missing, next_present: Some(next), why: MissingBecause::Floor } if *missing == floor && next.0 == floor.0 + gone);
            let err = SegmentedWal::open_with(storage.clone(), config(&dir, recycle)).unwrap_err();
            assert!(expected(&err), "recycle {recycle}, {gone} removed: the owner's open says {err}");
            let err = ReadOnlyWal::open_with(storage.clone(), &dir, None).err().expect("refused");
            assert!(expected(&err), "recycle {recycle}, {gone} removed: a read-only look says {err}");
            assert_eq!(snapshot(&storage, &dir), before, "recycle {recycle}, {gone} removed: every file as found");
        }
    }
}

#[test]
fn the_oldest_segments_removed_after_truncations_are_refused_with_every_file_left_sim() {
    let sim = SimStorage::new(7, FaultConfig::default());
    the_oldest_segments_removed_after_truncations_are_refused_with_every_file_left(sim, Path::new("/floor"));
}

#[test]
fn the_oldest_segments_removed_after_truncations_are_refused_with_every_file_left_fs() {
    let tmp = tempfile::tempdir().unwrap();
    the_oldest_segments_removed_after_truncations_are_refused_with_every_file_left(FsStorage::new(), tmp.path());
}

#[test]
fn the_tool_reports_the_oldest_segment_removed_as_damage_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (floor, _) = truncated_log(&FsStorage::new(), &dir, 2);
    std::fs::remove_file(segment::path(&dir, floor)).unwrap();
    let before = snapshot(&FsStorage::new(), &dir);
    for command in ["inspect", "verify"] {
        let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args([command, dir.to_str().unwrap()]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{command}: {text}");
        assert!(text.contains(&format!("segment {floor} is missing")), "{command}: {text}");
    }
    assert_eq!(snapshot(&FsStorage::new(), &dir), before);
}

/// The checkpoint is exclusive: a truncation at a segment's last LSN keeps that segment, so the
/// record at the checkpoint is still read, now and after a reopen. Only the segments wholly
/// below it go.
#[test]
fn a_truncation_at_the_last_lsn_of_a_segment_keeps_that_segment_and_its_record() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/last-lsn");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 4);
    let segments = wal.segments();
    let checkpoint = Lsn(segments[1].end_lsn.0 - 1);
    assert!(segments[1].sealed && segments[1].first_lsn <= checkpoint, "segment 1 holds the checkpoint: {segments:?}");
    assert_eq!(wal.truncate_before(checkpoint).unwrap(), 1, "only the segment wholly below the checkpoint goes");
    assert_eq!(wal.segments()[0].id, segments[1].id);
    assert!(wal.oldest_lsn() <= checkpoint);
    assert_eq!(wal.read_from(checkpoint).unwrap().next().unwrap().unwrap().lsn, checkpoint);
    let acked = wal.next_lsn().0 - 1;
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(sim, config(dir, 0)).unwrap();
    check_holds(&wal, &model, checkpoint.0, acked, "reopened after a truncation at a segment's last LSN");
}

#[test]
fn a_power_cut_at_any_step_of_a_truncation_keeps_every_record_from_the_checkpoint() {
    let dir = Path::new("/cut");
    for recycle in [0, 2] {
        let mut cut_inside = 0;
        for cut in 0..16 {
            let sim = SimStorage::new(cut, FaultConfig::default());
            let storage = FaultyStorage::new(sim.clone());
            let wal = SegmentedWal::open_with(storage.clone(), config(dir, recycle)).unwrap();
            let mut model = BTreeMap::new();
            fill(&wal, &mut model, 7);
            // A floor to move: a new log has none before its first truncation.
            assert_eq!(wal.truncate_before(wal.segments()[1].first_lsn).unwrap(), 1);
            let checkpoint = wal.segments()[4].first_lsn;
            let acked = wal.durable_lsn().0;
            storage.cut_power_after(cut);
            cut_inside += usize::from(wal.truncate_before(checkpoint).is_err());
            drop(wal);
            let context = format!("recycle {recycle}, cut {cut}");
            let restarted = sim.crash(cut + 100);
            let look = ReadOnlyWal::open_with(restarted.clone(), dir, None).unwrap_or_else(|e| panic!("{context}: look failed: {e}"));
            assert!(look.recovery_info().first_lsn <= checkpoint, "{context}");
            let wal = SegmentedWal::open_with(restarted.clone(), config(dir, recycle))
                .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
            check_holds(&wal, &model, checkpoint.0, acked, &context);
            // Whatever the cut left below the floor is gone now, and the log goes on.
            let oldest = wal.segments()[0].id;
            assert!(restarted.list(dir).unwrap().iter().filter_map(|n| segment::parse_name(n)).all(|id| id >= oldest), "{context}");
            wal.truncate_before(checkpoint).unwrap();
            assert_eq!(wal.oldest_lsn(), checkpoint, "{context}");
        }
        assert!(cut_inside >= 4, "recycle {recycle}: the cuts fall inside the truncation ({cut_inside} of 16)");
    }
}

/// An open with every repair to make at once: a segment left below the floor (a truncation cut
/// short), the newest segment to seal after a power cut (unsynced records behind it), and more
/// kept files than `recycle_segments` now allows. A power cut at each of its steps (about 14)
/// leaves a log that the next open opens with every acknowledged record and every record from
/// the checkpoint on, and that goes on. Written by an adversarial review of the segment life
/// cycle; it found nothing.
#[test]
fn a_power_cut_at_any_step_of_an_open_that_repairs_a_truncation_s_leftovers_loses_nothing() {
    let dir = Path::new("/repair");
    let mut cut_inside = 0;
    for cut in 0..24u64 {
        let sim = SimStorage::new(cut, FaultConfig::default());
        let wal = SegmentedWal::open_with(sim.clone(), config(dir, 3)).unwrap();
        let mut model = BTreeMap::new();
        fill(&wal, &mut model, 7);
        // Three of the four segments taken are kept (`recycle_segments` 3), the fourth removed.
        let fourth = segment::path(dir, wal.segments()[3].id);
        let bytes = sim.read_file(&fourth).unwrap();
        let checkpoint = wal.segments()[4].first_lsn;
        assert_eq!(wal.truncate_before(checkpoint).unwrap(), 4);
        fill(&wal, &mut model, wal.segments().len() + 1);
        let acked = wal.durable_lsn().0;
        for _ in 0..5 {
            let lsn = wal.next_lsn().0;
            wal.append(Record::new(TY, &payload(lsn))).unwrap();
            model.insert(lsn, payload(lsn));
        }
        let after = sim.crash(cut);
        drop(wal);
        // As a crash between recording the floor and the removal leaves it.
        let create = OpenMode { create: true, write: true, direct: false, create_new: true };
        let restored = after.open(&fourth, create).unwrap();
        restored.write_at(&bytes, 0).unwrap();
        restored.sync_data().unwrap();
        after.sync_dir(dir).unwrap();

        let faulty = FaultyStorage::new(after.clone());
        faulty.cut_power_after(cut);
        cut_inside += usize::from(SegmentedWal::open_with(faulty, config(dir, 1)).is_err());
        let context = format!("cut {cut}");
        let restarted = after.crash(cut + 100);
        let wal = SegmentedWal::open_with(restarted.clone(), config(dir, 1)).unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
        check_holds(&wal, &model, checkpoint.0, acked, &context);
        assert!(restarted.read_file(&fourth).is_none(), "{context}: the segment below the floor is gone");
        let kept = restarted.list(dir).unwrap().into_iter().filter(|n| segment::parse_recycled(n).is_some()).count();
        assert!(kept <= 1, "{context}: {kept} kept files");
        let next = wal.next_lsn().0;
        wal.append_durable(Record::new(TY, &payload(next))).unwrap();
    }
    assert!((10..24).contains(&cut_inside), "the cuts fall inside the open and past it ({cut_inside} of 24 inside)");
}

#[test]
fn a_segment_left_below_the_floor_is_ignored_by_a_look_and_removed_by_the_owner() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/left");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 4);
    let oldest = segment::path(dir, SegmentId(1));
    let bytes = sim.read_file(&oldest).unwrap();
    let checkpoint = wal.segments()[1].first_lsn;
    assert_eq!(wal.truncate_before(checkpoint).unwrap(), 1);
    wal.close().unwrap();
    // As a crash between recording the floor and the removal leaves it.
    let create = OpenMode { create: true, write: true, direct: false, create_new: true };
    sim.open(&oldest, create).unwrap().write_at(&bytes, 0).unwrap();
    let look = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    assert_eq!(look.recovery_info().first_lsn, checkpoint);
    assert!(sim.read_file(&oldest).is_some(), "a look changes nothing");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
    assert_eq!(wal.recovery_info().first_lsn, checkpoint);
    assert!(sim.read_file(&oldest).is_none(), "removed by the owner's open");
}

#[test]
fn a_failed_sync_of_the_floor_poisons_the_log_and_removes_nothing() {
    let storage = FaultyStorage::new(SimStorage::new(5, FaultConfig::default()));
    let dir = Path::new("/poison");
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, 2)).unwrap();
    fill(&wal, &mut BTreeMap::new(), 4);
    let before = storage.list(dir).unwrap();
    storage.fail_once(FaultOp::SyncData, 0, EIO);
    let err = wal.truncate_before(wal.durable_lsn()).unwrap_err();
    // Told as the end of the log it is, naming the step and the file, as an appender would be.
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, path: Some(ref path), .. } if path.ends_with(FLOOR_FILE)), "{err}");
    assert!(wal.stats().poisoned);
    assert_eq!(storage.list(dir).unwrap(), before, "nothing removed");
    let err = wal.truncate_before(wal.durable_lsn()).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "the floor is never written again: {err}");
}

// Found by a 20,000-seed run of tests/everything.rs, which hung: once the log is poisoned the
// flusher takes no batch, so no buffer comes free, and the truncation that poisoned it woke
// nobody. An appender waiting for a buffer slept for good.
#[test]
fn an_appender_waiting_for_a_buffer_learns_of_the_poison_a_failed_sync_of_the_floor_set() {
    let faulty = FaultyStorage::new(SimStorage::new(6, FaultConfig::default()));
    let gated = Gated::new(faulty.clone());
    let mut cfg = config(Path::new("/stall"), 0);
    cfg.batch_buffers = 2;
    let wal = SegmentedWal::open_with(gated.clone(), cfg).unwrap();
    fill(&wal, &mut BTreeMap::new(), 3);
    let checkpoint = wal.durable_lsn();
    gated.gate.shut();
    let held = wal.append(Record::new(TY, b"held")).unwrap();
    wal.request_sync(held).unwrap();
    gated.gate.wait_held();
    // One buffer is held between its write and its sync; the appender fills the other and
    // then waits for one to come free.
    let (tx, appender) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let refused = loop {
                if let Err(err) = wal.append(Record::new(TY, &[1; 1000])) {
                    break err;
                }
            };
            tx.send(refused).unwrap();
        });
        while wal.stats().buffer_waits == 0 {
            std::thread::yield_now();
        }
        faulty.fail_once(FaultOp::SyncData, 0, EIO);
        let truncated = wal.truncate_before(checkpoint);
        // Waits for the appender with the gate still shut: nothing but the poison's wake-up can
        // free it. The bound only turns a hang into a failure.
        let refused = appender.recv_timeout(Duration::from_secs(60));
        gated.gate.open();
        assert!(matches!(truncated, Err(WalError::Poisoned { op: IoOp::SyncData, .. })), "{truncated:?}");
        assert!(matches!(refused, Ok(WalError::Poisoned { .. })), "the waiting appender was not told: {refused:?}");
    });
    assert_eq!(wal.stats().buffer_waits, 1, "one append waited for a buffer, counted once");
    assert!(matches!(wal.wait_durable(held), Err(WalError::Poisoned { .. })), "nothing acknowledged after the poison");
}

#[test]
fn a_damaged_floor_is_refused_and_left_as_found() {
    let sim = SimStorage::new(9, FaultConfig::default());
    let dir = Path::new("/damaged");
    truncated_log(&sim, dir, 2);
    let path = dir.join(FLOOR_FILE);
    let mut bytes = sim.read_file(&path).unwrap();
    for at in [20, 512 + 20] {
        bytes[at] ^= 0x10;
    }
    sim.write_file(&path, &bytes);
    let before = snapshot(&sim, dir);
    let err = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap_err();
    assert!(matches!(err, WalError::FloorDamaged { ref path } if path.ends_with(FLOOR_FILE)), "{err}");
    assert!(err.is_corruption());
    let err = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap_err();
    assert!(matches!(err, WalError::FloorDamaged { .. }), "{err}");
    assert_eq!(snapshot(&sim, dir), before);
}

/// Flips a byte of the slot of `FLOOR` in `dir` that holds sequence `newer` or not (the
/// other); returns the floor the remaining intact slot names.
fn damage_floor_slot(read: impl Fn(&Path) -> Vec<u8>, write: impl Fn(&Path, &[u8]), dir: &Path, newer: bool) -> SegmentId {
    let path = dir.join(FLOOR_FILE);
    let mut bytes = read(&path);
    let slots = [0, SLOT_SPACING].map(|at| ManifestSlot::decode_as(&bytes[at..], SlotKind::Floor).expect("both slots intact"));
    let newest = usize::from(slots[1].sequence > slots[0].sequence);
    let hit = if newer { newest } else { 1 - newest };
    bytes[hit * SLOT_SPACING + 20] ^= 0x10;
    write(&path, &bytes);
    slots[1 - hit].newest
}

// Found by review: with the slot of `FLOOR` that the last truncation wrote damaged, the log
// read the older slot, whose segments that truncation had removed, and refused the log as
// `MissingSegment`, "acknowledged records" and all, where most likely nothing was lost. It is
// still refused (a log whose segments were removed by other means looks the same), saying
// what is known and what to do; doing that opens the log with every record it held.
#[test]
fn a_floor_whose_newer_slot_is_damaged_is_refused_saying_so_and_opens_once_removed() {
    let sim = SimStorage::new(12, FaultConfig::default());
    let dir = Path::new("/slot");
    let (floor, model) = truncated_log(&sim, dir, 2);
    let first = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap().recovery_info().first_lsn.0;
    let older = damage_floor_slot(|p| sim.read_file(p).unwrap(), |p, b| sim.write_file(p, b), dir, true);
    assert!(older < floor);
    let before = snapshot(&sim, dir);
    let expected = |err: &WalError| matches!(err, WalError::FloorSlotDamaged { floor: f, oldest_present: Some(o), contiguous: true, .. } if *f == older && *o == floor);
    let err = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap_err();
    assert!(expected(&err) && err.is_corruption(), "the owner says {err}");
    let err = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap_err();
    assert!(expected(&err), "a look says {err}");
    assert_eq!(snapshot(&sim, dir), before, "a refusal changes no file");

    // The way out the error names: every segment below the oldest there was truncated on purpose.
    sim.remove(&dir.join(FLOOR_FILE)).unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap();
    check_holds(&wal, &model, first, *model.keys().last().unwrap(), "FLOOR removed");
    wal.close().unwrap();
    let written = sim.read_file(&dir.join(FLOOR_FILE)).expect("the owner wrote a new FLOOR");
    assert_eq!(ManifestSlot::current_as(&written, SlotKind::Floor).map(|s| s.newest), Some(floor));
    assert_eq!(ReadOnlyWal::open_with(sim, dir, None).unwrap().recovery_info().first_lsn.0, first);
}

/// A damaged older slot of `FLOOR` changes nothing: the newer one names a segment that is
/// there, and the open (or else the next truncation) writes over the damaged one.
#[test]
fn a_floor_whose_older_slot_is_damaged_opens_and_is_mended_by_the_next_truncation() {
    let sim = SimStorage::new(13, FaultConfig::default());
    let dir = Path::new("/older");
    let (floor, model) = truncated_log(&sim, dir, 2);
    assert_eq!(damage_floor_slot(|p| sim.read_file(p).unwrap(), |p, b| sim.write_file(p, b), dir, false), floor);
    let look = ReadOnlyWal::open_with(sim.clone(), dir, None).unwrap();
    assert_eq!(look.recovery_info().segments[0].id, floor);
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap();
    check_holds(&wal, &model, look.recovery_info().first_lsn.0, *model.keys().last().unwrap(), "older slot damaged");
    wal.truncate_before(wal.segments()[1].first_lsn).unwrap();
    wal.close().unwrap();
    let bytes = sim.read_file(&dir.join(FLOOR_FILE)).unwrap();
    assert!(
        [0, SLOT_SPACING].iter().all(|&at| ManifestSlot::decode_as(&bytes[at..], SlotKind::Floor).is_some()),
        "both slots intact again"
    );
}

#[test]
fn the_tool_reports_a_floor_with_a_damaged_slot_as_damage_and_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    truncated_log(&FsStorage::new(), &dir, 2);
    damage_floor_slot(|p| std::fs::read(p).unwrap(), |p, b| std::fs::write(p, b).unwrap(), &dir, true);
    let before = snapshot(&FsStorage::new(), &dir);
    for command in ["inspect", "verify"] {
        let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args([command, dir.to_str().unwrap()]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{command}: {text}");
        assert!(text.contains("FLOOR has a damaged slot") && text.contains("remove"), "{command}: {text}");
    }
    assert_eq!(snapshot(&FsStorage::new(), &dir), before);
}

#[test]
fn a_log_without_a_floor_opens_as_before_and_gets_one_naming_its_oldest_segment() {
    let sim = SimStorage::new(11, FaultConfig::default());
    let dir = Path::new("/old");
    let (floor, model) = truncated_log(&sim, dir, 0);
    // As a log written before `FLOOR` existed: nothing tells a truncation from a removal.
    sim.remove(&dir.join(FLOOR_FILE)).unwrap();
    sim.remove(&segment::path(dir, floor)).unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
    let oldest = wal.segments()[0].first_lsn.0;
    check_holds(&wal, &model, oldest, *model.keys().last().unwrap(), "no floor");
    wal.close().unwrap();
    // From this open on, the log knows its low end.
    sim.remove(&segment::path(dir, SegmentId(floor.0 + 1))).unwrap();
    let err = SegmentedWal::open_with(sim, config(dir, 0)).unwrap_err();
    assert!(matches!(err, WalError::MissingSegment { missing, .. } if missing.0 == floor.0 + 1), "{err}");
}

/// Found by the crash simulation (seed 58 of `simulation.rs`): a truncation whose `FLOOR` sync
/// failed left the new floor in the page cache only; the log reopened under the same kernel
/// read it there, took the segments below it for a crash's leftovers and removed them, durably.
/// After the power cut `FLOOR` named the old floor, and the log no longer opened
/// (`MissingSegment`). The open now makes the floor durable again before it removes any.
#[test]
fn a_floor_whose_sync_failed_is_made_durable_before_a_reopen_removes_segments_below_it() {
    let dir = Path::new("/unsynced");
    for seed in 0..8 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_sync_failure(nodedb_wal::storage::SyncFailure::KeepsCleanPages);
        let storage = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(storage.clone(), config(dir, 2)).unwrap();
        let mut model = BTreeMap::new();
        fill(&wal, &mut model, 6);
        assert_eq!(wal.truncate_before(wal.segments()[1].first_lsn).unwrap(), 1);
        let checkpoint = wal.segments()[3].first_lsn;
        let acked = wal.durable_lsn().0;
        storage.fail_once(FaultOp::SyncData, 0, EIO);
        assert!(wal.truncate_before(checkpoint).is_err());
        drop(wal);
        // Reopened under the same kernel, before the power cut.
        let wal = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap();
        check_holds(&wal, &model, checkpoint.0, acked, "reopened");
        drop(wal);
        let restarted = sim.crash(seed + 50);
        let wal = SegmentedWal::open_with(restarted, config(dir, 2)).unwrap_or_else(|e| panic!("seed {seed}: after the cut: {e}"));
        check_holds(&wal, &model, checkpoint.0, acked, "after the cut");
    }
}

/// A log written before `FLOOR` existed, opened where the file system has no room for a new name
/// (XFS may need a directory block for one): the check is new and optional, so having no room to
/// create its file must stop neither the open nor a truncation, which is how a database frees
/// space. The log goes on unchecked at its low end until it has room.
#[test]
fn no_room_to_create_the_floor_stops_neither_the_open_nor_a_truncation_of_a_log_without_one() {
    let storage = FaultyStorage::new(SimStorage::new(13, FaultConfig::default()));
    let dir = Path::new("/full");
    let (_, model) = truncated_log(&storage, dir, 0);
    storage.remove(&dir.join(FLOOR_FILE)).unwrap();
    storage.fail_from(FaultOp::Rename, 0, ENOSPC);
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, 0)).unwrap();
    let last = *model.keys().last().unwrap();
    check_holds(&wal, &model, wal.segments()[0].first_lsn.0, last, "opened on a full disk");
    let checkpoint = wal.segments()[2].first_lsn;
    assert_eq!(wal.truncate_before(checkpoint).unwrap(), 2, "truncation frees space on a full disk");
    assert!(!storage.list(dir).unwrap().iter().any(|n| n == FLOOR_FILE), "no FLOOR could be made");
    let lsns: Vec<u64> = wal.read_from(checkpoint).unwrap().map(|r| r.unwrap().lsn.0).collect();
    assert_eq!(lsns, (checkpoint.0..=last).collect::<Vec<_>>(), "every record from the checkpoint on");
    assert!(!wal.stats().poisoned, "no room for an optional file is no failed sync");
}

/// A log made by this version knows its low end from its first open, not only from its second:
/// the floor of a new log names the segment its first batch will create. (`FLOOR` named segment
/// 0 until the next open or truncation, so the first segments of a log that had never been
/// reopened could be removed and the log opened from the next one, records lost without a word.)
/// Its `FLOOR` holds one slot, of sequence 1, beside the zeros of the slot the next update
/// takes: the same bytes as a first truncation's floor there zeroed by damage, but nothing
/// shows damage, so this is `MissingSegment`, not `FloorSlotDamaged` (whose "most likely
/// nothing is lost, remove `FLOOR`" only a damaged slot backs).
fn the_first_segment_of_a_never_reopened_log_removed_is_refused<S: Storage + Clone>(storage: S, dir: &Path) {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, 0)).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 3);
    let first = wal.segments()[0].id;
    wal.close().unwrap();
    let floor = snapshot(&storage, dir).remove(FLOOR_FILE).expect("a FLOOR");
    assert_eq!(ManifestSlot::current_as(&floor, SlotKind::Floor).map(|s| (s.sequence, s.newest)), Some((1, first)));
    assert!(floor[..SLOT_LEN].iter().all(|&b| b == 0) && !ManifestSlot::other_damaged_as(&floor, SlotKind::Floor));
    storage.remove(&segment::path(dir, first)).unwrap();
    let before = snapshot(&storage, dir);
    let missing = |err: &WalError| matches!(err, WalError::MissingSegment { missing, why: MissingBecause::Floor, .. } if *missing == first);
    let err = ReadOnlyWal::open_with(storage.clone(), dir, None).err().expect("a look refuses it");
    assert!(missing(&err), "a look says {err}");
    let err = SegmentedWal::open_with(storage.clone(), config(dir, 0)).unwrap_err();
    assert!(missing(&err), "the owner says {err}");
    assert_eq!(snapshot(&storage, dir), before, "every file as found");
}

#[test]
fn the_first_segment_of_a_never_reopened_log_removed_is_refused_sim() {
    the_first_segment_of_a_never_reopened_log_removed_is_refused(SimStorage::new(13, FaultConfig::default()), Path::new("/new"));
}

#[test]
fn the_first_segment_of_a_never_reopened_log_removed_is_refused_fs() {
    let tmp = tempfile::tempdir().unwrap();
    the_first_segment_of_a_never_reopened_log_removed_is_refused(FsStorage::new(), &tmp.path().join("new"));
}

/// A new log reopened before anything was appended (no segment, a floor naming the first one
/// to come, a manifest naming none) opens empty; one that is empty because all its segments
/// were removed is refused.
#[test]
fn an_empty_new_log_reopens_and_one_whose_every_segment_was_removed_is_refused() {
    let sim = SimStorage::new(17, FaultConfig::default());
    let dir = Path::new("/empty");
    for _ in 0..2 {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
        assert_eq!(wal.recovery_info().record_count, 0);
        wal.close().unwrap();
    }
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
    fill(&wal, &mut BTreeMap::new(), 2);
    let ids: Vec<SegmentId> = wal.segments().iter().map(|s| s.id).collect();
    wal.close().unwrap();
    for id in ids {
        sim.remove(&segment::path(dir, id)).unwrap();
    }
    let err = SegmentedWal::open_with(sim, config(dir, 0)).unwrap_err();
    assert!(matches!(err, WalError::MissingSegment { .. }), "{err}");
}

/// A new log opened and closed once without a record, then one segment `id` holding `payload`
/// at LSN 1 written into its directory by a `WalWriter` (an import).
fn new_log_with_import(sim: &SimStorage, dir: &Path, id: SegmentId, payload: &[u8]) {
    SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap().close().unwrap();
    let mut writer = nodedb_wal::WalWriter::create_with(sim.clone(), dir, id, Lsn(1), nodedb_wal::WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, payload)).unwrap();
    writer.finish().unwrap();
}

/// Segments a `WalWriter` adds to a new log that was opened once but never written (its floor
/// names the segment its first batch would have created) open as the log, whatever their ids.
#[test]
fn segments_imported_into_a_new_log_never_written_open_whatever_their_ids() {
    let sim = SimStorage::new(19, FaultConfig::default());
    let dir = Path::new("/import");
    new_log_with_import(&sim, dir, SegmentId(5), b"imported");
    let wal = SegmentedWal::open_with(sim, config(dir, 0)).unwrap();
    assert_eq!((wal.recovery_info().record_count, wal.segments()[0].id), (1, SegmentId(5)));
}

/// A segment imported below a new log's floor (id 0, under a floor naming segment 1) is the
/// log's oldest: the open brings the floor down to it, so no later open (once the log has
/// written segments of its own) takes it for a truncation's leftovers and removes it.
#[test]
fn a_segment_imported_below_a_new_logs_floor_is_kept_by_every_later_open() {
    let sim = SimStorage::new(23, FaultConfig::default());
    let dir = Path::new("/import0");
    new_log_with_import(&sim, dir, SegmentId(0), &payload(1));
    let mut model = BTreeMap::from([(1, payload(1))]);
    for round in 0..3 {
        let wal = SegmentedWal::open_with(sim.clone(), config(dir, 0)).unwrap();
        check_holds(&wal, &model, 1, *model.keys().last().unwrap(), &format!("round {round}"));
        fill(&wal, &mut model, wal.segments().len() + 1);
        wal.close().unwrap();
    }
}

/// Which states of `FLOOR`'s two slots count as "the other slot is damaged" (then a floor that
/// does not match the segments is `FloorSlotDamaged`, not `MissingSegment`): a slot that is
/// neither intact nor the zeros of a slot never used (beside a current slot of sequence 1). A
/// zeroed slot beside a later sequence once held an update; a slot of the other kind or a file
/// cut short is no intact `FLOOR` slot either; without any intact slot the file is damaged as
/// a whole (`FloorDamaged`), not one slot of it.
#[test]
fn only_a_slot_neither_intact_nor_never_used_counts_as_the_other_slot_damaged() {
    let slot = |sequence, kind| ManifestSlot { sequence, newest: SegmentId(7) }.encode_as(kind);
    let file = |slots: [Option<[u8; SLOT_LEN]>; 2]| {
        let mut bytes = vec![0u8; MANIFEST_LEN];
        for (at, s) in [0, SLOT_SPACING].into_iter().zip(slots) {
            if let Some(s) = s {
                bytes[at..at + SLOT_LEN].copy_from_slice(&s);
            }
        }
        bytes
    };
    let floor = SlotKind::Floor;
    let cases: [(&str, Vec<u8>, bool); 7] = [
        ("first update, other unused", file([None, Some(slot(1, floor))]), false),
        ("two intact", file([Some(slot(2, floor)), Some(slot(1, floor))]), false),
        ("two intact, later in slot 1", file([Some(slot(2, floor)), Some(slot(3, floor))]), false),
        ("a used slot zeroed", file([Some(slot(2, floor)), None]), true),
        ("the other slot a MANIFEST's", file([Some(slot(2, floor)), Some(slot(3, SlotKind::Manifest))]), true),
        ("cut short after slot 0", file([Some(slot(2, floor)), None])[..SLOT_SPACING].to_vec(), true),
        ("no intact slot", file([None, None]), false),
    ];
    for (what, bytes, damaged) in cases {
        assert_eq!(ManifestSlot::other_damaged_as(&bytes, floor), damaged, "{what}");
    }
}

// Found by an adversarial review: with the older slot of `FLOOR` damaged (a power cut tore a
// truncation's update of it, before it removed anything), the owner opened and left the slot
// so until its next truncation. A reader cannot tell a segment truncation took from one
// removed by hand while a slot is damaged (it may have held a later floor), so meanwhile a
// segment removed by hand was `SegmentTruncated` for every reader, whose advice (read again
// from the oldest LSN) met the same missing file for ever. The open now writes the slot over.
#[test]
fn a_floor_slot_a_power_cut_tore_is_mended_at_open_so_a_segment_removed_by_hand_is_missing_for_readers() {
    let sim = SimStorage::new(14, FaultConfig::default());
    let dir = Path::new("/torn");
    let (floor, _) = truncated_log(&sim, dir, 2);
    assert_eq!(damage_floor_slot(|p| sim.read_file(p).unwrap(), |p, b| sim.write_file(p, b), dir, false), floor);
    let wal = SegmentedWal::open_with(sim.clone(), config(dir, 2)).unwrap();
    let bytes = sim.read_file(&dir.join(FLOOR_FILE)).unwrap();
    let slots = [0, SLOT_SPACING].map(|at| ManifestSlot::decode_as(&bytes[at..], SlotKind::Floor).map(|s| s.newest));
    assert_eq!(slots, [Some(floor); 2], "both slots intact, naming the floor");

    sim.remove(&segment::path(dir, floor)).unwrap();
    let err = wal.read_from(wal.oldest_lsn()).unwrap().find_map(Result::err).expect("the oldest segment is gone");
    assert!(matches!(err, WalError::MissingSegment { missing, why: MissingBecause::Floor, .. } if missing == floor), "{err}");
}
