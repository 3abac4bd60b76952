//! A full disk: the append path fails with a typed error (`WalError::Io` or `Poisoned`, with
//! kind `StorageFull`), the log then accepts nothing more, opening it while the disk is still
//! full either fails with a typed error or recovers intact, a read-only open reads every
//! acknowledged record off the full disk, and once space is freed every
//! record acknowledged before the failure is recovered and appends continue.
//!
//! On real files the disk is a 2 MiB tmpfs, which takes no O_DIRECT (so the log writes through
//! the page cache), and an ext4 file system on a loop device, nearly filled by a preallocated
//! file, where the log writes with O_DIRECT, zero-fills ahead and rolls as in production (each
//! test prints why and skips where it may not mount its file system); on the simulated storage
//! every write starts failing with ENOSPC, after landing a random prefix of its sectors.

mod common;

use std::io::ErrorKind;
use std::path::Path;

use common::{FsKind, LoopFs, Tmpfs, append_synced, assert_records, config, payload, read_all, record_type, scope};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{FsStorage, Lsn, ReadOnlyWal, Record, SegmentedWal, SimStorage, WalError};

#[track_caller]
fn assert_storage_full(err: &WalError) {
    match err {
        WalError::Io { source, .. } if source.kind() == ErrorKind::StorageFull => {}
        WalError::Poisoned { kind: ErrorKind::StorageFull, .. } => {}
        _ => panic!("expected a full-disk error, got {err:?}"),
    }
}

/// Appends batches of `group` records until the disk is full; `before_batch` may fill it.
/// Returns the last acknowledged LSN and the error.
fn fill<S: Storage>(wal: &SegmentedWal<S>, group: u64, mut before_batch: impl FnMut(u64)) -> (u64, WalError) {
    let mut acked = wal.durable_lsn().0;
    for batch in 0.. {
        assert!(batch < 10_000, "the disk never filled up");
        before_batch(batch);
        let next = wal.next_lsn().0;
        for lsn in next..next + group {
            let bytes = payload(lsn);
            // A batch filled earlier may already have hit the full disk.
            if let Err(err) = wal.append(Record::new(record_type(lsn), &bytes).scoped(scope(lsn))) {
                return (acked, err);
            }
        }
        match wal.sync() {
            Ok(lsn) => acked = lsn.0,
            Err(err) => return (acked, err),
        }
    }
    unreachable!()
}

/// Checks what a reopened log holds: every acknowledged record, then possibly some records whose
/// batch landed before the failure, all intact. Returns the last LSN.
fn check_recovered<S: Storage>(wal: &SegmentedWal<S>, acked: u64) -> u64 {
    let last = wal.recovery_info().last_lsn.0;
    assert!(last >= acked, "acknowledged LSN {acked} lost; recovered up to {last}");
    assert_records(&read_all(wal), 1, last);
    assert_eq!(wal.next_lsn(), Lsn(last + 1));
    last
}

fn full_disk_keeps_acknowledged_records<S: Storage + Clone>(storage: S, dir: &Path, before_batch: impl FnMut(u64), free: impl FnOnce()) {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    let (synced, err) = fill(&wal, 25, before_batch);
    assert!(synced > 0, "some batches fit");
    assert_storage_full(&err);
    // A batch that closed a segment may have become durable on its own before the failure.
    let acked = wal.durable_lsn().0;
    assert!(acked >= synced);
    // The failure poisoned the log: nothing more is accepted or acknowledged.
    let bytes = payload(1);
    let again = wal.append(Record::new(record_type(1), &bytes)).unwrap_err();
    assert!(matches!(again, WalError::Poisoned { kind: ErrorKind::StorageFull, .. }), "{again:?}");
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert_eq!(wal.durable_lsn().0, acked, "nothing becomes durable after the failure");
    assert!(matches!(wal.close(), Err(WalError::Poisoned { .. })));

    // Still full: opening either fails with a typed error or recovers everything acknowledged
    // (opening seals the newest segment and starts one, which takes a block or two).
    match SegmentedWal::open_with(storage.clone(), config(dir)) {
        Ok(wal) => {
            check_recovered(&wal, acked);
        }
        Err(err) => assert_storage_full(&err),
    }
    // A read-only open writes nothing, so it reads every acknowledged record off the full disk.
    let read_only = ReadOnlyWal::open_with(storage.clone(), dir, None).unwrap();
    let last = read_only.recovery_info().last_lsn.0;
    assert!(last >= acked, "acknowledged LSN {acked} unread; read-only recovery reached {last}");
    let records = read_only.read_from(Lsn(1)).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert_records(&records, 1, last);
    drop(read_only);

    free();
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    let last = check_recovered(&wal, acked);
    append_synced(&wal, last + 1, last + 10);
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    assert_eq!(wal.recovery_info().torn_tail, None);
    assert_records(&read_all(&wal), 1, last + 10);
}

/// A 2 MiB tmpfs to fill, or `None` (with the reason printed) where it may not be mounted.
fn small_tmpfs() -> Option<Tmpfs> {
    Tmpfs::mount("2m").map_err(|e| eprintln!("SKIPPED: cannot mount a tmpfs to fill ({e})")).ok()
}

#[test]
fn full_disk_fails_appends_with_a_typed_error_and_keeps_acknowledged_records_fs() {
    let Some(mount) = small_tmpfs() else { return };
    // Room that freeing gives back, so that the log can be opened and written again.
    let ballast = mount.path().join("ballast");
    std::fs::write(&ballast, vec![0xAB; 256 * 1024]).unwrap();
    let dir = mount.path().join("wal");
    full_disk_keeps_acknowledged_records(FsStorage::new(), &dir, |_| {}, || std::fs::remove_file(&ballast).unwrap());
}

#[test]
fn full_disk_fails_appends_with_a_typed_error_and_keeps_acknowledged_records_ext4() {
    let fs = match LoopFs::create(FsKind::Ext4) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED: cannot make and mount an ext4 file system on a loop device ({e})");
            return;
        }
    };
    let mount = fs.path();
    // The disk is filled to the last block with files of 64 KiB (metadata takes blocks too,
    // so no exact size can be computed); then 512 KiB of them are removed to make room for the
    // log, and 256 KiB more are removed once the log has filled that. Free blocks, not
    // available ones: the test runs as root, which may use the blocks ext4 reserves.
    let stat = rustix::fs::statvfs(&mount).unwrap();
    let allocate = |path: &Path, len: u64| {
        let file = std::fs::File::create(path).unwrap();
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
    };
    allocate(&mount.join("filler"), stat.f_bfree * stat.f_frsize - (8 << 20)).unwrap();
    let mut chunks = Vec::new();
    while allocate(&mount.join(format!("chunk-{}", chunks.len())), 64 * 1024).is_ok() {
        chunks.push(mount.join(format!("chunk-{}", chunks.len())));
    }
    rustix::fs::sync();
    assert!(chunks.len() > 12, "the disk filled with {} chunks", chunks.len());
    chunks.drain(..8).for_each(|c| std::fs::remove_file(c).unwrap());
    let ballast: Vec<_> = chunks.drain(..4).collect();
    let dir = mount.join("wal");
    full_disk_keeps_acknowledged_records(FsStorage::new(), &dir, |_| {}, || ballast.iter().for_each(|b| std::fs::remove_file(b).unwrap()));
}

/// The simulated disk fills before batch `batch_full` (every write fails with ENOSPC from
/// then on); the second closure gives its room back.
fn full_at_batch(sim: &SimStorage, batch_full: u64) -> (impl FnMut(u64) + use<>, impl FnOnce() + use<>) {
    let (filling, freeing) = (sim.clone(), sim.clone());
    let full = FaultConfig { write_enospc_ppm: 1_000_000, ..FaultConfig::default() };
    let fill = move |batch| {
        if batch == batch_full {
            filling.set_faults(full);
        }
    };
    (fill, move || freeing.set_faults(FaultConfig::default()))
}

#[test]
fn full_disk_fails_appends_with_a_typed_error_and_keeps_acknowledged_records_sim() {
    for seed in 0..16 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        let (fill, free) = full_at_batch(&sim, 3 + seed % 7);
        full_disk_keeps_acknowledged_records(sim, Path::new("/sim/wal"), fill, free);
    }
}

/// Fills the disk under a log (`before_batch` may fill it), truncates the poisoned log below
/// the last acknowledged record's successor (a checkpoint covering everything acknowledged)
/// once `before_truncation` ran, drops it and opens it on `reopen_on`. Returns the last
/// acknowledged LSN, the segments removed and the open's result.
fn truncate_poisoned_and_reopen<S: Storage>(
    storage: S,
    dir: &Path,
    before_batch: impl FnMut(u64),
    before_truncation: impl FnOnce(),
    reopen_on: impl FnOnce() -> S,
) -> (u64, usize, nodedb_wal::Result<SegmentedWal<S>>) {
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    let (_, err) = fill(&wal, 25, before_batch);
    assert_storage_full(&err);
    let acked = wal.durable_lsn().0;
    before_truncation();
    // The truncation still runs on the poisoned log: it writes only `FLOOR`, in place, and
    // removes (or renames) files.
    let removed = wal.truncate_before(Lsn(acked + 1)).unwrap();
    drop(wal);
    (acked, removed, SegmentedWal::open_with(reopen_on(), config(dir)))
}

/// What the reopened log holds: every acknowledged record from the checkpoint on, intact.
fn assert_kept_from_checkpoint<S: Storage>(wal: &SegmentedWal<S>, acked: u64) {
    assert!(wal.recovery_info().last_lsn.0 >= acked, "acknowledged LSN {acked} lost");
    assert!(wal.oldest_lsn().0 <= acked + 1, "a record from the checkpoint on was truncated");
    let kept = read_all(wal);
    assert_records(&kept, wal.oldest_lsn().0, wal.recovery_info().last_lsn.0);
}

#[test]
fn truncating_a_log_poisoned_by_a_full_disk_frees_the_room_its_reopen_needs_fs() {
    let Some(mount) = small_tmpfs() else { return };
    let dir = mount.path().join("wal");
    let free_blocks = || rustix::fs::statvfs(mount.path()).unwrap().f_bfree;
    let full = std::cell::Cell::new(0);
    let (acked, removed, reopened) =
        truncate_poisoned_and_reopen(FsStorage::new(), &dir, |_| {}, || full.set(free_blocks()), FsStorage::new);
    assert!(removed > 0, "the segments below the checkpoint go");
    assert!(free_blocks() > full.get(), "their room is given back");
    // Nothing else was freed: the room the open takes came from the truncation.
    let wal = reopened.unwrap_or_else(|e| panic!("the open after the truncation: {e}"));
    assert_kept_from_checkpoint(&wal, acked);
    let next = wal.next_lsn().0;
    append_synced(&wal, next, next + 10);
}

#[test]
fn truncating_a_log_poisoned_by_a_full_disk_keeps_every_record_from_the_checkpoint_across_a_crash_sim() {
    for seed in 0..16 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        // Full past a few segments, so that some are sealed.
        let (fill, free) = full_at_batch(&sim, 14 + seed % 7);
        let crashed = sim.clone();
        // The simulated disk fails every write once full, even a rewrite in place (of `FLOOR`),
        // which a real one has room for (the `_fs` test): here the room comes back before the
        // truncation, and the open runs on what a crash right after it leaves.
        let (acked, removed, reopened) = truncate_poisoned_and_reopen(sim, Path::new("/sim/wal"), fill, free, move || crashed.crash(seed));
        assert!(removed > 0, "seed {seed}: the segments below the checkpoint go");
        assert_kept_from_checkpoint(&reopened.unwrap_or_else(|e| panic!("seed {seed}: {e}")), acked);
    }
}

/// Found by an adversarial review of the segment life cycle: truncation keeps up to
/// `recycle_segments` (2 by default) of the segments it takes, renamed for reuse, and a rename
/// frees nothing. On a log with few, large segments every segment a truncation of the poisoned
/// log took was kept: the disk stayed as full as before, and the open that was to use their
/// room failed with `StorageFull` again, for good (nothing but removing the kept files by hand
/// freed it). A truncation of a poisoned log removes what it takes, and the files kept before.
#[test]
fn truncating_a_poisoned_log_frees_room_even_where_it_would_keep_segments_for_reuse() {
    let Some(mount) = small_tmpfs() else { return };
    let dir = mount.path().join("wal");
    let free_blocks = || rustix::fs::statvfs(mount.path()).unwrap().f_bfree;
    let mut c = config(&dir);
    // Three segments or so fill the disk: a truncation takes one or two, fewer than it keeps.
    c.segment_bytes_target = 640 * 1024;
    c.recycle_segments = 2;
    let wal = SegmentedWal::open_with(FsStorage::new(), c.clone()).unwrap();
    let (_, err) = fill(&wal, 25, |_| {});
    assert_storage_full(&err);
    let acked = wal.durable_lsn().0;
    let full = free_blocks();
    let removed = wal.truncate_before(Lsn(acked + 1)).unwrap();
    assert!(removed > 0, "the segments below the checkpoint go");
    assert!(free_blocks() > full, "their room is given back ({removed} segments taken, {} free blocks before and after)", full);
    drop(wal);
    let wal = SegmentedWal::open_with(FsStorage::new(), c).unwrap_or_else(|e| panic!("the open after the truncation: {e}"));
    assert_kept_from_checkpoint(&wal, acked);
    let next = wal.next_lsn().0;
    append_synced(&wal, next, next + 10);
}

/// Found by an adversarial review of the segment life cycle: files a truncation kept for reuse
/// hold a segment's room each, and a log that filled the disk with them kept (the process died
/// before it could truncate) could not be opened: the open's seal of the newest segment found no
/// room, and nothing but removing the kept files by hand freed it. They hold no record: the
/// open removes them when it finds no room, and opens.
#[test]
fn a_log_that_filled_the_disk_opens_by_removing_the_files_it_kept_for_reuse() {
    let Some(mount) = small_tmpfs() else { return };
    let dir = mount.path().join("wal");
    let mut c = config(&dir);
    c.segment_bytes_target = 320 * 1024;
    c.recycle_segments = 2;
    let wal = SegmentedWal::open_with(FsStorage::new(), c.clone()).unwrap();
    let mut next = 1;
    while wal.segments().len() < 4 {
        append_synced(&wal, next, next + 24);
        next += 25;
    }
    assert_eq!(wal.truncate_before(wal.segments()[2].first_lsn).unwrap(), 2);
    let kept =
        || std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".recycled")).count();
    assert_eq!(kept(), 2);
    // The rest of the disk is taken by another program's file.
    let ballast = mount.path().join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    while std::io::Write::write_all(&mut file, &[0xAB; 4096]).is_ok() {}
    drop(file);
    let (_, err) = fill(&wal, 25, |_| {});
    assert_storage_full(&err);
    assert_eq!(kept(), 2, "the segment being written filled the disk before a roll took a kept file");
    let acked = wal.durable_lsn().0;
    drop(wal);
    let wal = SegmentedWal::open_with(FsStorage::new(), c).unwrap_or_else(|e| panic!("the open of a log holding kept files: {e}"));
    assert!(wal.recovery_info().last_lsn.0 >= acked);
    assert_records(&read_all(&wal), wal.oldest_lsn().0, wal.recovery_info().last_lsn.0);
    assert_eq!(kept(), 0, "their room went to the open");
    // And to the segment the next append makes.
    let next = wal.next_lsn().0;
    append_synced(&wal, next, next + 10);
}
