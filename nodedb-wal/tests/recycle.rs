//! Truncated segments kept and reused as new ones (`recycle_segments`): a reused file's old
//! records never read as records of the new segment, whatever moment a crash picks, and the
//! files really are reused.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nodedb_wal::storage::faulty::{EACCES, EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{FsStorage, IoOp, Lsn, Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment};

const TY: RecordType = RecordType::optional(0x100);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.recycle_segments = 2;
    c
}

/// A payload that names its generation: a record of an earlier pass over the same LSNs
/// differs from a record of a later one.
fn payload(generation: u32, lsn: u64) -> Vec<u8> {
    let mut bytes = format!("generation {generation} lsn {lsn} ").into_bytes();
    bytes.resize(900 + (lsn as usize * 37) % 400, (lsn as u8) ^ (generation as u8));
    bytes
}

fn recycled_names<S: Storage>(storage: &S, dir: &Path) -> Vec<String> {
    storage.list(dir).unwrap().into_iter().filter(|n| segment::parse_recycled(n).is_some()).collect()
}

/// Appends durably until the log has `segments` segments; records each payload in `model`.
fn fill<S: Storage>(wal: &SegmentedWal<S>, model: &mut BTreeMap<u64, Vec<u8>>, generation: u32, segments: usize) {
    while wal.segments().len() < segments {
        let lsn = wal.next_lsn().0;
        let bytes = payload(generation, lsn);
        assert_eq!(wal.append_durable(Record::new(TY, &bytes)).unwrap(), Lsn(lsn));
        model.insert(lsn, bytes);
    }
}

/// Every record the reopened log holds is the one appended at its LSN, the LSNs are dense,
/// and every acknowledged one is there.
fn check_recovered<S: Storage>(wal: &SegmentedWal<S>, model: &BTreeMap<u64, Vec<u8>>, acked: u64, context: &str) {
    let info = wal.recovery_info().clone();
    let mut expected = info.first_lsn.0;
    for record in wal.read_from(info.first_lsn).unwrap() {
        let record = record.unwrap_or_else(|e| panic!("{context}: replay failed: {e}"));
        assert_eq!(record.lsn.0, expected, "{context}: LSNs must be dense");
        let appended = model.get(&record.lsn.0).unwrap_or_else(|| panic!("{context}: LSN {} was never appended", record.lsn));
        assert_eq!(&record.payload, appended, "{context}: LSN {} holds another record", record.lsn);
        expected += 1;
    }
    let last = expected - 1;
    assert!(last >= acked, "{context}: acknowledged LSN {acked} lost; recovered up to {last}");
}

/// A log on a simulated disk that faults can be injected into, filled to four segments.
type Faulty = FaultyStorage<SimStorage>;
fn faulty_log(seed: u64) -> (Faulty, SegmentedWal<Faulty>, BTreeMap<u64, Vec<u8>>) {
    let storage = FaultyStorage::new(SimStorage::new(seed, FaultConfig::default()));
    let wal = SegmentedWal::open_with(storage.clone(), config(Path::new("/wal"))).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 0, 4);
    (storage, wal, model)
}

#[test]
fn truncated_segments_are_reused_as_new_ones_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = SegmentedWalConfig { allow_buffered_fallback: true, ..config(dir.path()) };
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 0, 6);
    let checkpoint = wal.durable_lsn();
    assert!(wal.truncate_before(checkpoint).unwrap() >= 4);
    let kept = recycled_names(&FsStorage::new(), dir.path());
    assert_eq!(kept.len(), 2, "two truncated segments kept, the rest removed: {kept:?}");
    let inodes: Vec<u64> = kept.iter().map(|n| std::fs::metadata(dir.path().join(n)).unwrap().ino()).collect();

    let before = wal.segments().len();
    fill(&wal, &mut model, 1, before + 2);
    assert!(recycled_names(&FsStorage::new(), dir.path()).is_empty(), "both kept files were taken");
    let newest: Vec<u64> =
        wal.segments()[before..].iter().map(|s| std::fs::metadata(segment::path(dir.path(), s.id)).unwrap().ino()).collect();
    for ino in &newest {
        assert!(inodes.contains(ino), "segment inode {ino} is not one of the kept files {inodes:?}");
    }
    let acked = wal.durable_lsn().0;
    drop(wal);
    let wal = SegmentedWal::open(config).unwrap();
    check_recovered(&wal, &model, acked, "after reuse");
    assert_eq!(wal.recovery_info().torn_tail, None, "old records after the new ones are no torn tail");
}

/// Found by an adversarial review: old batches that span several blocks (here one 9,000-byte
/// record each) leave a block boundary of the new segment inside an old frame, whose tail read
/// as damage: a clean log reported a torn tail, and `verify` exited 1. What follows the new
/// records is only the file's earlier use, and opening reports no torn tail.
fn a_reused_file_after_old_batches_of_several_blocks_reads_clean<S: Storage + Clone>(storage: S, dir: &Path) {
    let mut config = config(dir);
    (config.segment_bytes_target, config.batch_bytes_max, config.zero_fill_bytes) = (32 * 1024, 8 * 1024, 0);
    let wal = SegmentedWal::open_with(storage.clone(), config.clone()).unwrap();
    let mut model = BTreeMap::new();
    while wal.segments().len() < 5 {
        let bytes = vec![0xC3; 9000];
        model.insert(wal.append_durable(Record::new(TY, &bytes)).unwrap().0, bytes);
    }
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 2);
    let segments = wal.segments().len();
    for i in 0.. {
        if wal.segments().len() > segments && i % 3 == 0 {
            break;
        }
        let bytes = payload(1, i);
        model.insert(wal.append_durable(Record::new(TY, &bytes)).unwrap().0, bytes);
    }
    let acked = wal.durable_lsn().0;
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(storage, config).unwrap();
    check_recovered(&wal, &model, acked, "after reuse");
    assert_eq!(wal.recovery_info().last_lsn.0, acked);
    assert_eq!(wal.recovery_info().torn_tail, None, "the old frames' tails are no torn tail");
}

#[test]
fn a_reused_file_after_old_batches_of_several_blocks_reads_clean_sim() {
    a_reused_file_after_old_batches_of_several_blocks_reads_clean(SimStorage::new(3, FaultConfig::default()), Path::new("/reuse"));
}

#[test]
fn a_reused_file_after_old_batches_of_several_blocks_reads_clean_fs() {
    let dir = tempfile::tempdir().unwrap();
    a_reused_file_after_old_batches_of_several_blocks_reads_clean(FsStorage::new(), dir.path());
}

#[test]
fn a_power_cut_at_any_step_of_reusing_a_segment_loses_nothing_and_revives_nothing() {
    let mut reused = 0;
    for cut in 0..24 {
        let sim = SimStorage::new(cut, FaultConfig::default());
        let storage = FaultyStorage::new(sim.clone());
        let dir = Path::new("/wal");
        let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
        let mut model = BTreeMap::new();
        fill(&wal, &mut model, 0, 5);
        wal.truncate_before(wal.durable_lsn()).unwrap();
        assert_eq!(recycled_names(&sim, dir).len(), 2);
        // Fill the active segment to a record or two before it rolls.
        while wal.segments().last().unwrap().bytes < 64 * 1024 - 2 * 4096 {
            let lsn = wal.next_lsn().0;
            let bytes = payload(0, lsn);
            model.insert(lsn, bytes.clone());
            wal.append_durable(Record::new(TY, &bytes)).unwrap();
        }
        let mut acked = wal.durable_lsn().0;

        // Cut the power `cut` operations into the next segments: inside the reuse of a kept
        // file (header write, sync, rename, directory sync) or in the first batches after it.
        storage.cut_power_after(cut);
        let segments = wal.segments().len();
        while wal.segments().len() < segments + 2 {
            let lsn = wal.next_lsn().0;
            let bytes = payload(1, lsn);
            model.insert(lsn, bytes.clone());
            match wal.append_durable(Record::new(TY, &bytes)) {
                Ok(_) => acked = lsn,
                Err(_) => break,
            }
        }
        drop(wal);
        reused += usize::from(recycled_names(&sim, dir).len() < 2);
        let restarted = sim.crash(cut + 100);
        let wal = SegmentedWal::open_with(restarted, config(dir)).unwrap_or_else(|e| panic!("cut {cut}: reopen failed: {e}"));
        check_recovered(&wal, &model, acked, &format!("cut {cut}"));
    }
    assert!(reused >= 10, "the cuts fall during and after the reuse of a kept file ({reused} of 24 after it)");
}

/// A power cut once every record in a reused file is durable: past the new records lie only the
/// file's earlier use (frames of another salt, at block boundaries where its batches began).
/// That is no torn write, and the reopen reports no torn tail; frames of the earlier use are
/// told apart by their salt, not only by their LSNs.
#[test]
fn a_power_cut_in_a_reused_file_after_durable_appends_reports_no_torn_tail() {
    for seed in 0..4 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        let storage = FaultyStorage::new(sim.clone());
        let dir = Path::new("/wal");
        let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
        let mut model = BTreeMap::new();
        fill(&wal, &mut model, 0, 6);
        assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 4);
        let before = wal.segments().len();
        fill(&wal, &mut model, 1, before + 2);
        assert!(recycled_names(&sim, dir).is_empty(), "seed {seed}: both kept files were taken");
        for _ in 0..=seed {
            let lsn = wal.next_lsn().0;
            model.insert(lsn, payload(1, lsn));
            wal.append_durable(Record::new(TY, &payload(1, lsn))).unwrap();
        }
        let acked = wal.durable_lsn().0;
        // The power goes before the drop can seal the newest segment.
        storage.cut_power_after(0);
        drop(wal);
        let wal = SegmentedWal::open_with(sim.crash(seed), config(dir)).unwrap();
        check_recovered(&wal, &model, acked, &format!("seed {seed}"));
        assert_eq!(wal.recovery_info().last_lsn.0, acked, "seed {seed}");
        assert_eq!(wal.recovery_info().torn_tail, None, "seed {seed}: the earlier use is no torn tail");
    }
}

#[test]
fn a_failed_rename_while_truncating_is_reported_and_the_log_goes_on() {
    let (storage, wal, mut model) = faulty_log(3);
    storage.fail_once(FaultOp::Rename, 0, EIO);
    let err = wal.truncate_before(wal.durable_lsn()).unwrap_err();
    assert!(matches!(err, WalError::Io { op: IoOp::Rename, .. }), "{err}");
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() > 0, "a later truncation goes on");
    let segments = wal.segments().len();
    fill(&wal, &mut model, 1, segments + 1);
    assert!(!wal.stats().poisoned);
}

// Found on a full XFS disk: keeping a truncated segment renames it, and the new name may need
// a directory block the full disk does not have (ENOSPC). The truncation failed and freed
// nothing, though removing the file (which a full disk allows) frees its space: the reason to
// truncate there.
#[test]
fn a_truncation_that_cannot_keep_a_segment_on_a_full_disk_removes_it() {
    let (storage, wal, mut model) = faulty_log(6);
    let oldest = wal.segments()[0].id;
    let victims = wal.segments().len() - 1;
    storage.fail_once(FaultOp::Rename, 0, ENOSPC);
    assert_eq!(wal.truncate_before(wal.durable_lsn()).unwrap(), victims, "every sealed segment below the checkpoint goes");
    let names = storage.list(Path::new("/wal")).unwrap();
    assert!(!names.contains(&segment::file_name(oldest)), "removed: {names:?}");
    let kept = recycled_names(&storage, Path::new("/wal"));
    let oldest_kept = segment::recycled_path(Path::new("/wal"), oldest);
    assert!(!kept.iter().any(|n| oldest_kept.ends_with(n)), "not kept: {kept:?}");
    assert_eq!(kept.len(), 2, "the later ones are kept as usual: {kept:?}");
    let acked = wal.durable_lsn().0;
    let segments = wal.segments().len();
    fill(&wal, &mut model, 1, segments + 3);
    assert!(!wal.stats().poisoned);
    drop(wal);
    let wal = SegmentedWal::open_with(storage, config(Path::new("/wal"))).unwrap();
    check_recovered(&wal, &model, acked, "after the truncation");
}

#[test]
fn a_failed_rename_while_reusing_poisons_the_log() {
    let (storage, wal, _) = faulty_log(4);
    wal.truncate_before(wal.durable_lsn()).unwrap();
    storage.fail_once(FaultOp::Rename, 0, EIO);
    let err = loop {
        let lsn = wal.next_lsn().0;
        if let Err(e) = wal.append_durable(Record::new(TY, &payload(1, lsn))) {
            break e;
        }
    };
    assert!(matches!(err, WalError::Poisoned { op: IoOp::Rename, .. }), "{err}");
}

// Found by a review on XFS: the rename that gives a kept file the new segment's name can need
// a directory block, and on a full disk it failed with ENOSPC and poisoned the log, though
// removing the kept file frees a whole segment's space for a fresh one.
#[test]
fn a_reuse_with_no_room_for_the_new_name_removes_the_kept_file_and_the_log_goes_on() {
    let (storage, wal, mut model) = faulty_log(7);
    wal.truncate_before(wal.durable_lsn()).unwrap();
    assert_eq!(recycled_names(&storage, Path::new("/wal")).len(), 2);
    storage.fail_once(FaultOp::Rename, 0, ENOSPC);
    let segments = wal.segments().len();
    fill(&wal, &mut model, 1, segments + 1);
    assert!(!wal.stats().poisoned);
    assert_eq!(recycled_names(&storage, Path::new("/wal")).len(), 1, "the kept file whose rename failed was removed, the other kept");
    let acked = wal.durable_lsn().0;
    drop(wal);
    let wal = SegmentedWal::open_with(storage, config(Path::new("/wal"))).unwrap();
    check_recovered(&wal, &model, acked, "after the failed rename");
}

// Found by an adversarial review of the segment life cycle: a truncation of a log a full disk
// poisoned is how the application frees the room its reopen needs (the open seals the newest
// segment), but it kept what it took, renamed, and left the files kept before: a log of few,
// large segments freed nothing, and every open failed on the full disk (`full_disk.rs`).
#[test]
fn a_truncation_of_a_poisoned_log_keeps_nothing_for_reuse_and_removes_what_was_kept() {
    let (storage, wal, mut model) = faulty_log(8);
    let dir = Path::new("/wal");
    wal.truncate_before(wal.durable_lsn()).unwrap();
    assert_eq!(recycled_names(&storage, dir).len(), 2, "kept while the log is healthy");
    storage.fail_once(FaultOp::SyncData, 0, ENOSPC);
    let segments = wal.segments().len();
    let err = loop {
        let lsn = wal.next_lsn().0;
        let bytes = payload(1, lsn);
        model.insert(lsn, bytes.clone());
        if let Err(err) = wal.append_durable(Record::new(TY, &bytes)) {
            break err;
        }
    };
    assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
    assert_eq!(wal.segments().len(), segments, "the failed sync was the first batch after the truncation");
    assert_eq!(wal.truncate_before(wal.durable_lsn()).unwrap(), 0, "nothing more to take");
    assert_eq!(recycled_names(&storage, dir), Vec::<String>::new(), "the files kept before the failure are removed");

    // Fill more segments on a reopened log, poison it again, and truncate: nothing is kept.
    let acked = wal.durable_lsn().0;
    drop(wal);
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    check_recovered(&wal, &model, acked, "after the first poisoning");
    let segments = wal.segments().len();
    fill(&wal, &mut model, 2, segments + 3);
    storage.fail_once(FaultOp::SyncData, 0, ENOSPC);
    loop {
        let lsn = wal.next_lsn().0;
        let bytes = payload(3, lsn);
        model.insert(lsn, bytes.clone());
        if wal.append_durable(Record::new(TY, &bytes)).is_err() {
            break;
        }
    }
    let victims = wal.segments().len() - 1;
    assert_eq!(wal.truncate_before(wal.durable_lsn().next()).unwrap(), victims);
    assert_eq!(recycled_names(&storage, dir), Vec::<String>::new(), "removed, not kept");
    let acked = wal.durable_lsn().0;
    drop(wal);
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    check_recovered(&wal, &model, acked, "after the second poisoning");
}

#[test]
fn opening_with_fewer_kept_segments_removes_the_extra_files() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/wal");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    fill(&wal, &mut BTreeMap::new(), 0, 5);
    wal.truncate_before(wal.durable_lsn()).unwrap();
    drop(wal);
    assert_eq!(recycled_names(&sim, dir).len(), 2);
    let none = SegmentedWalConfig { recycle_segments: 0, ..config(dir) };
    let wal = SegmentedWal::open_with(sim.clone(), none).unwrap();
    assert!(recycled_names(&sim, dir).is_empty());
    fill(&wal, &mut BTreeMap::new(), 1, 3);
    assert_eq!(wal.truncate_before(wal.durable_lsn()).unwrap(), 2);
    assert!(recycled_names(&sim, dir).is_empty(), "removed, not kept");
}

/// A reader that lags behind truncation: the file it is reading must not be rewritten as a new
/// segment under it (with a map, that would change bytes it has lent out). Truncation may
/// still take the segment; the reader finishes it and then learns that the next one is gone.
// Found by an adversarial review: a truncated file was rewritten in place as a new segment
// even where another name shares it (a backup made with hard links, `cp -al`), which changed
// the backup's copy of the segment under it.
#[test]
fn a_segment_file_hard_linked_elsewhere_is_never_rewritten_as_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal");
    let config = SegmentedWalConfig { allow_buffered_fallback: true, ..config(&log) };
    let wal = SegmentedWal::open(config).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 0, 6);
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let mut saved = Vec::new();
    // The sealed ones: the newest is still being written, under both names alike.
    let segments = wal.segments();
    for s in &segments[..segments.len() - 1] {
        let name = segment::path(&log, s.id);
        let link = backup.join(name.file_name().unwrap());
        std::fs::hard_link(&name, &link).unwrap();
        saved.push((link, std::fs::read(&name).unwrap()));
    }

    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 4);
    let before = wal.segments().len();
    fill(&wal, &mut model, 1, before + 2);
    for (link, bytes) in &saved {
        assert!(std::fs::read(link).unwrap() == *bytes, "{} changed under the backup", link.display());
    }
    assert!(recycled_names(&FsStorage::new(), &log).is_empty(), "the shared files were removed, not kept");
}

// Found by a review: a segment moved elsewhere and linked back was renamed (the link) for
// reuse at truncation, and reusing it rewrote the file outside the log as a new live segment.
#[test]
fn a_segment_file_linked_in_from_elsewhere_is_never_rewritten_as_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal");
    let config = SegmentedWalConfig { allow_buffered_fallback: true, ..config(&log) };
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 0, 6);
    drop(wal);
    let archive = dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let mut moved = Vec::new();
    for id in 1..=2u64 {
        let name = segment::path(&log, SegmentId(id));
        let target = archive.join(name.file_name().unwrap());
        std::fs::rename(&name, &target).unwrap();
        std::os::unix::fs::symlink(&target, &name).unwrap();
        moved.push((target.clone(), std::fs::read(&target).unwrap()));
    }
    let wal = SegmentedWal::open(config).unwrap();
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 4);
    let before = wal.segments().len();
    fill(&wal, &mut model, 1, before + 3);
    for (target, bytes) in &moved {
        assert!(std::fs::read(target).unwrap() == *bytes, "{} changed outside the log", target.display());
    }
    let links: Vec<_> = std::fs::read_dir(&log).unwrap().filter_map(Result::ok).filter(|e| e.file_type().unwrap().is_symlink()).collect();
    assert!(links.is_empty(), "no segment lives through a link now: {links:?}");
}

#[test]
fn a_segment_being_read_is_never_reused_under_its_reader() {
    for mapped in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = SegmentedWalConfig { allow_buffered_fallback: true, ..config(dir.path()) };
        let wal = SegmentedWal::open(config).unwrap();
        let mut model = BTreeMap::new();
        fill(&wal, &mut model, 0, 6);
        let first = wal.segments()[0];
        let inode = std::fs::metadata(segment::path(dir.path(), first.id)).unwrap().ino();
        let mut reader = if mapped { wal.read_mapped(Lsn::FIRST) } else { wal.read_from(Lsn::FIRST) }.unwrap();
        let view = reader.next_view().unwrap().unwrap();
        assert_eq!(view.payload, model[&1].as_slice());

        assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 4);
        let before = wal.segments().len();
        fill(&wal, &mut model, 1, before + 2);
        for s in &wal.segments()[before..] {
            let reused = std::fs::metadata(segment::path(dir.path(), s.id)).unwrap().ino();
            assert_ne!(reused, inode, "segment {} reuses the file a reader holds", s.id);
        }

        for lsn in 2..first.end_lsn.0 {
            let view = reader.next_view().unwrap().unwrap_or_else(|e| panic!("mapped {mapped}: LSN {lsn}: {e}"));
            assert_eq!((view.lsn, view.payload), (Lsn(lsn), model[&lsn].as_slice()), "mapped {mapped}");
        }
        match reader.next_view() {
            Some(Err(WalError::SegmentTruncated { segment })) => assert_eq!(segment, SegmentId(first.id.0 + 1), "mapped {mapped}"),
            other => panic!("mapped {mapped}: expected the next segment to be reported truncated, got {other:?}"),
        }
        assert!(reader.next_view().is_none(), "nothing after the error");
    }
}

/// Every kind of reader, the read-only look's too, made before a truncation (files kept for
/// reuse, then reused) that it then reaches: its first answer is `SegmentTruncated` naming the
/// oldest listed segment, never a record of a reused file's new life nor a short, clean end.
/// (It was `read_from` alone, without the reuse.)
#[test]
fn a_reader_that_reaches_a_truncated_segment_gets_a_typed_error_not_a_short_answer() {
    let dir = tempfile::tempdir().unwrap();
    let wal = SegmentedWal::open(SegmentedWalConfig { allow_buffered_fallback: true, ..config(dir.path()) }).unwrap();
    let mut model = BTreeMap::new();
    fill(&wal, &mut model, 0, 5);
    let first = wal.segments()[0].id;
    let look = nodedb_wal::ReadOnlyWal::open(dir.path(), None).unwrap();
    let lost = |what: &str, answer: Option<Result<Lsn, WalError>>| match answer {
        Some(Err(WalError::SegmentTruncated { segment })) => assert_eq!(segment, first, "{what}"),
        other => panic!("{what}: expected segment {first} reported truncated, got {other:?}"),
    };
    // Listed now, opened only at the first read.
    let mut read_from = wal.read_from(Lsn::FIRST).unwrap();
    let mut mapped = wal.read_mapped(Lsn::FIRST).unwrap();
    let mut lazy = wal.lazy_reader(Lsn::FIRST).unwrap();
    let mut look_mapped = look.read_mapped(Lsn::FIRST).unwrap();
    let mut look_lazy = look.lazy_reader(Lsn::FIRST).unwrap();
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= 4);
    // The kept files become new segments, with records of a new generation at new LSNs.
    let before = wal.segments().len();
    fill(&wal, &mut model, 1, before + 3);

    lost("read_from", read_from.next().map(|r| r.map(|r| r.lsn)));
    lost("read_mapped", mapped.next().map(|r| r.map(|r| r.lsn)));
    lost("lazy_reader", lazy.next_header().transpose().map(|r| r.map(|h| h.lsn)));
    lost("look read_mapped", look_mapped.next().map(|r| r.map(|r| r.lsn)));
    lost("look lazy_reader", look_lazy.next_header().transpose().map(|r| r.map(|h| h.lsn)));
    lost("look read_from", look.read_from(Lsn::FIRST).unwrap().next().map(|r| r.map(|r| r.lsn)));
}

// Found by a usability review: a checkpoint past every LSN the log handed out (another log's
// LSN, a byte offset) removed every segment but the newest without a word.
#[test]
fn a_checkpoint_past_the_next_lsn_is_refused_and_removes_nothing() {
    let (_storage, wal, model) = faulty_log(31);
    let segments = wal.segments().len();
    let next = wal.next_lsn();
    let err = wal.truncate_before(next.next()).unwrap_err();
    assert!(matches!(err, WalError::LsnNotIssued { lsn, next: n } if lsn == next.next() && n == next), "{err}");
    assert_eq!(wal.segments().len(), segments);
    assert_eq!(wal.oldest_lsn(), Lsn::FIRST);
    assert!(wal.truncate_before(next).unwrap() > 0, "up to the next LSN is a checkpoint");
    assert_eq!(wal.read_from(wal.oldest_lsn()).unwrap().count() as u64, next.0 - wal.oldest_lsn().0);
    assert!(model.len() as u64 >= next.0 - 1);
}

// Found by an adversarial review (on ext4, a `chattr +i` spare): a kept truncated segment that
// cannot be removed, when the open keeps fewer than there are, failed `open` itself, although
// such a file holds no record of the log. It stays now, unused, and the log opens.
#[test]
fn a_spare_segment_file_that_cannot_be_removed_does_not_keep_the_log_from_opening() {
    let (storage, wal, model) = faulty_log(41);
    let acked = wal.durable_lsn().0;
    assert_eq!(wal.truncate_before(wal.durable_lsn()).unwrap(), 3);
    wal.close().unwrap();
    let dir = Path::new("/wal");
    assert_eq!(recycled_names(&storage, dir).len(), 2);

    storage.fail_once(FaultOp::Remove, 0, EACCES);
    let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig { recycle_segments: 0, ..config(dir) }).unwrap();
    check_recovered(&wal, &model, acked, "spare not removable");
    assert_eq!(recycled_names(&storage, dir).len(), 1, "the spare that could be removed is gone, the other stays");
    let lsn = wal.append_durable(Record::new(TY, &payload(1, acked + 1))).unwrap();
    assert_eq!(lsn, Lsn(acked + 1));
    wal.close().unwrap();
}

/// Found by an adversarial review: a truncation whose directory fsync failed after it renamed
/// a segment for reuse returned the error and left the renamed file out of the pool (rightly:
/// its new name may not be durable, so its new header could land under the old one) but on
/// the disk, where nothing reused or removed it until the next open. A long-running log whose
/// directory fsyncs kept failing kept a whole segment per failed truncation, far past
/// `recycle_segments`. Such a file is removed instead, as without reuse.
#[test]
fn truncations_whose_directory_sync_fails_keep_no_more_files_than_recycle_segments() {
    let (storage, wal, mut model) = faulty_log(6);
    for round in 0..20 {
        fill(&wal, &mut model, 0, 4);
        storage.fail_once(FaultOp::SyncDir, 0, EIO);
        let err = wal.truncate_before(wal.durable_lsn()).unwrap_err();
        assert!(matches!(err, WalError::Io { op: IoOp::SyncDir, .. }), "round {round}: {err}");
        let kept = recycled_names(&storage, Path::new("/wal"));
        assert!(kept.len() <= 2, "round {round}: {} truncated files kept: {kept:?}", kept.len());
    }
    assert!(!wal.stats().poisoned, "a failed truncation does not poison");
    // Truncation goes on, and reuse still works once directory fsyncs do.
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() > 0);
    assert_eq!(recycled_names(&storage, Path::new("/wal")).len(), 2);
}

// Found by simulation, seed = 1360 (with reopens after a failure): a truncation whose
// directory fsync failed (and whose removal of the file then failed too) left `{id}.recycled`
// named only in the cache. The next open (same
// kernel) handed the file out for reuse; the new segment's header was written and synced into
// it, and a power cut before the rename to the new name was synced brought back the old
// name, `{id}.wal`, on a file whose header named the new segment: IdentityMismatch, and a
// log that no longer opened.
#[test]
fn a_kept_file_whose_rename_was_never_synced_is_not_rewritten_under_its_old_name() {
    let dir = Path::new("/unsynced-keep");
    for seed in 0..16 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        let mut model = BTreeMap::new();
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
        fill(&wal, &mut model, 0, 3);
        let checkpoint = wal.segments()[1].first_lsn;
        // The rename's directory fsync fails, and so does the removal that then gives the
        // file up (`truncations_whose_directory_sync_fails_keep_no_more_files_than_recycle_segments`).
        faulty.fail_once(FaultOp::SyncDir, 0, EIO);
        faulty.fail_from(FaultOp::Remove, 0, EIO);
        assert!(wal.truncate_before(checkpoint).is_err(), "the rename's directory fsync failed");
        drop(wal);
        assert!(!recycled_names(&sim, dir).is_empty(), "seed {seed}: the kept file is still listed");
        // Reopened under the same kernel: the listing shows the kept file.
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
        let acked = wal.durable_lsn().0;
        // The roll that reuses the kept file: its header is written and synced, and the
        // directory fsync after its rename fails (the power is about to go).
        faulty.fail_from(FaultOp::SyncDir, 0, EIO);
        while wal.append_durable(Record::new(TY, &payload(1, wal.next_lsn().0))).is_ok() {}
        drop(wal);
        let after = sim.crash(seed);
        let wal = SegmentedWal::open_with(after, config(dir)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        check_recovered(&wal, &model, acked, &format!("seed {seed}"));
    }
}

// Found by review: a kept file that could not be opened for reuse was taken off the list of
// kept files but left on the disk, a whole segment's space per roll that met one, until the
// next open.
#[test]
fn a_kept_file_that_cannot_be_opened_for_reuse_is_removed_not_left_behind() {
    let (storage, wal, mut model) = faulty_log(7);
    let dir = Path::new("/wal");
    for round in 0..5 {
        wal.truncate_before(wal.durable_lsn()).unwrap();
        // The next roll takes the newest kept file, which cannot be opened.
        let newest = recycled_names(&storage, dir).iter().filter_map(|n| segment::parse_recycled(n)).max().expect("a kept file");
        storage.refuse_open(&segment::recycled_path(dir, newest));
        fill(&wal, &mut model, 0, 4);
        let kept = recycled_names(&storage, dir);
        assert!(kept.len() <= 2, "round {round}: {} truncated files on the disk: {kept:?}", kept.len());
    }
    assert!(!wal.stats().poisoned);
}

// Found by review: a segment holding a record or group larger than a segment is a file that
// large, and once truncated it was kept whole and reused as a later segment, again and again
// where each checkpoint truncates what a roll sealed: its space outlived every checkpoint.
#[test]
fn truncation_frees_the_space_of_a_segment_larger_than_the_target_even_when_its_file_is_reused() {
    let sim = SimStorage::new(8, FaultConfig::default());
    let dir = Path::new("/wal");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    // A group of 2 MiB, 32 times the segment target.
    let big = vec![3u8; 64 * 1024];
    let group: Vec<Record<'_>> = (0..32).map(|_| Record::new(TY, &big)).collect();
    wal.wait_durable(*wal.append_group(&group).unwrap().end()).unwrap();
    let bytes_on_disk =
        || -> u64 { sim.list(dir).unwrap().iter().map(|n| sim.read_file(&dir.join(n)).map_or(0, |f| f.len() as u64)).sum() };
    let mut model = BTreeMap::new();
    for round in 0..8 {
        // Each roll's sealed segment is below the next checkpoint.
        fill(&wal, &mut model, round, 2);
        wal.truncate_before(wal.durable_lsn()).unwrap();
        let on_disk = bytes_on_disk();
        assert!(on_disk < 1 << 20, "round {round}: {} KiB on the disk for one 64 KiB segment and two kept", on_disk >> 10);
    }
    // Files kept while the target was larger are not reused at a smaller one.
    let dir = Path::new("/wal-large");
    let large = SegmentedWalConfig { segment_bytes_target: 1 << 20, ..config(dir) };
    let wal = SegmentedWal::open_with(sim.clone(), large).unwrap();
    fill(&wal, &mut model, 8, 3);
    wal.truncate_before(wal.durable_lsn()).unwrap();
    drop(wal);
    let bytes_on_disk =
        || -> u64 { sim.list(dir).unwrap().iter().map(|n| sim.read_file(&dir.join(n)).map_or(0, |f| f.len() as u64)).sum() };
    assert!(bytes_on_disk() > 2 << 20, "two 1 MiB segments kept");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    fill(&wal, &mut model, 9, 3);
    assert!(bytes_on_disk() < 1 << 20, "{} KiB on the disk after two rolls at a smaller target", bytes_on_disk() >> 10);
}
