//! The log never writes over a file it did not make. A file found under the name of the next
//! segment while the log is open (someone else's, or a copy put there by hand) used to be
//! opened with `O_CREAT` alone and given the new segment's header, or replaced by the rename
//! of a kept truncated segment. Now the roll fails, the log is poisoned with an error naming
//! the file, the file is left as it was, and every acknowledged record is still there once the
//! file is moved away and the log reopened.

mod common;

use std::io;
use std::path::Path;

use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{FsStorage, IoOp, Lsn, Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment};

const TY: RecordType = RecordType::optional(0x100);
const FOREIGN: &[u8] = b"a file this log did not make, under the name of its next segment\n";

fn config(dir: &Path, recycle_segments: usize) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.recycle_segments = recycle_segments;
    c.allow_buffered_fallback = true;
    c
}

fn payload(lsn: u64) -> Vec<u8> {
    vec![lsn as u8; 1500]
}

/// Appends durably until the log has `segments` segments; returns the last LSN acknowledged.
fn fill<S: Storage>(wal: &SegmentedWal<S>, segments: usize) -> Lsn {
    let mut last = Lsn::ZERO;
    while wal.segments().len() < segments {
        last = wal.append_durable(Record::new(TY, &payload(wal.next_lsn().0))).unwrap();
    }
    last
}

/// Puts `FOREIGN` at `path`, durably, as another program would.
fn put_foreign_file<S: Storage>(storage: &S, path: &Path) {
    let file = storage.open(path, OpenMode { create: true, write: true, direct: false, create_new: true }).unwrap();
    file.write_at(FOREIGN, 0).unwrap();
    file.sync_data().unwrap();
    storage.sync_dir(path.parent().unwrap()).unwrap();
}

fn read<S: Storage>(storage: &S, path: &Path) -> Vec<u8> {
    let file = storage.open(path, OpenMode { create: false, write: false, direct: false, create_new: false }).unwrap();
    let mut bytes = vec![0u8; file.len().unwrap() as usize];
    assert_eq!(file.read_at(&mut bytes, 0).unwrap(), bytes.len());
    bytes
}

/// A log at `dir` with a foreign file at its next segment's name: a new segment would be made
/// fresh (`reuse: false`) or from a kept truncated one (`reuse: true`).
fn a_foreign_file_at_the_next_segments_name_is_left_as_it_was<S: Storage + Clone>(storage: &S, dir: &Path, reuse: bool) {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, if reuse { 2 } else { 0 })).unwrap();
    let mut acked = fill(&wal, 3);
    if reuse {
        assert_eq!(wal.truncate_before(acked).unwrap(), 2);
        assert_eq!(storage.list(dir).unwrap().iter().filter(|n| segment::parse_recycled(n).is_some()).count(), 2, "kept for reuse");
    }
    let next = SegmentId(wal.segments().last().unwrap().id.0 + 1);
    let foreign = segment::path(dir, next);
    put_foreign_file(storage, &foreign);
    let err = loop {
        assert!(wal.segments().iter().all(|s| s.id < next), "the log made segment {next} over the foreign file");
        match wal.append_durable(Record::new(TY, &payload(wal.next_lsn().0))) {
            Ok(lsn) => acked = lsn,
            Err(err) => break err,
        }
    };
    let op = if reuse { IoOp::Rename } else { IoOp::Open };
    match &err {
        WalError::Poisoned { op: o, kind: io::ErrorKind::AlreadyExists, path: Some(path), .. } if *o == op && *path == foreign => {}
        other => panic!("expected the log poisoned by {op:?} of {}, got {other:?}", foreign.display()),
    }
    let message = err.to_string();
    assert!(message.contains(&foreign.display().to_string()) && message.contains("move it away"), "{message}");
    assert_eq!(read(storage, &foreign), FOREIGN, "the foreign file is left as it was");
    let again = wal.append(Record::new(TY, b"refused")).unwrap_err();
    assert!(matches!(again, WalError::Poisoned { kind: io::ErrorKind::AlreadyExists, .. }), "{again}");
    drop(wal);

    // The way on, as the message says: move the file away and reopen.
    let moved = dir.join("moved-away");
    storage.rename(&foreign, &moved).unwrap();
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, if reuse { 2 } else { 0 })).unwrap();
    assert!(wal.recovery_info().last_lsn >= acked, "acknowledged records up to {acked} kept");
    let first = wal.recovery_info().first_lsn;
    for (record, lsn) in wal.read_from(first).unwrap().zip(first.0..) {
        let record = record.unwrap();
        assert_eq!((record.lsn, record.payload.to_vec()), (Lsn(lsn), payload(lsn)));
    }
    let lsn = wal.append_durable(Record::new(TY, b"on again")).unwrap();
    assert_eq!(wal.segments().last().unwrap().id, next, "the next segment is made where the file was");
    assert!(lsn > acked);
    assert_eq!(read(storage, &moved), FOREIGN);
}

#[test]
fn a_foreign_file_at_the_next_segments_name_is_never_written_over_and_poisons_the_log_fs() {
    let dir = tempfile::tempdir().unwrap();
    a_foreign_file_at_the_next_segments_name_is_left_as_it_was(&FsStorage::new(), dir.path(), false);
}

#[test]
fn a_foreign_file_at_the_next_segments_name_is_never_written_over_and_poisons_the_log_sim() {
    let sim = SimStorage::new(3, FaultConfig::default());
    a_foreign_file_at_the_next_segments_name_is_left_as_it_was(&sim, Path::new("/wal"), false);
}

/// A symbolic link to nothing at the next segment's name: `O_CREAT` alone would follow it and
/// make the segment at the link's target, outside the log. The roll refuses it as it refuses
/// any file there, and makes nothing where it leads.
#[test]
fn a_dangling_symlink_at_the_next_segments_name_is_never_followed_and_poisons_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal = SegmentedWal::open(config(&dir, 0)).unwrap();
    let mut acked = fill(&wal, 2);
    let next = SegmentId(wal.segments().last().unwrap().id.0 + 1);
    let link = segment::path(&dir, next);
    let target = tmp.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = loop {
        assert!(wal.segments().iter().all(|s| s.id < next) && !target.exists(), "the log made segment {next} through the link");
        match wal.append_durable(Record::new(TY, &payload(wal.next_lsn().0))) {
            Ok(lsn) => acked = lsn,
            Err(err) => break err,
        }
    };
    match &err {
        WalError::Poisoned { op: IoOp::Open, kind: io::ErrorKind::AlreadyExists, path: Some(path), .. } if *path == link => {}
        other => panic!("expected the log poisoned by the open of {}, got {other:?}", link.display()),
    }
    assert!(!target.exists(), "the segment was made where the link leads");
    drop(wal);
    std::fs::remove_file(&link).unwrap();
    let wal = SegmentedWal::open(config(&dir, 0)).unwrap();
    assert!(wal.recovery_info().last_lsn >= acked, "acknowledged records up to {acked} kept");
}

#[test]
fn a_kept_segment_file_is_never_renamed_over_a_foreign_file_at_the_next_segments_name_fs() {
    let dir = tempfile::tempdir().unwrap();
    a_foreign_file_at_the_next_segments_name_is_left_as_it_was(&FsStorage::new(), dir.path(), true);
}

#[test]
fn a_kept_segment_file_is_never_renamed_over_a_foreign_file_at_the_next_segments_name_sim() {
    let sim = SimStorage::new(4, FaultConfig::default());
    a_foreign_file_at_the_next_segments_name_is_left_as_it_was(&sim, Path::new("/wal"), true);
}

/// A file system without `RENAME_NOREPLACE` (NFS, say): `rename_no_replace` is `Unsupported`.
#[derive(Clone, Debug)]
struct NoRenameNoReplace<S> {
    inner: S,
}

impl<S: Storage> Storage for NoRenameNoReplace<S> {
    type File = S::File;
    type Lock = S::Lock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<S::Lock> {
        self.inner.lock_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<S::File> {
        self.inner.open(path, mode)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn rename_no_replace(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

/// Where kept files cannot be renamed into place without the risk of replacing a file, they
/// are removed and new segments made fresh: the log goes on, and loses nothing.
#[test]
fn kept_segment_files_are_removed_not_reused_where_the_file_system_cannot_rename_without_replacing() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let storage = NoRenameNoReplace { inner: sim.clone() };
    let dir = Path::new("/wal");
    let wal = SegmentedWal::open_with(storage.clone(), config(dir, 2)).unwrap();
    let acked = fill(&wal, 3);
    assert_eq!(wal.truncate_before(acked).unwrap(), 2);
    let kept = |s: &SimStorage| s.list(dir).unwrap().into_iter().filter(|n| segment::parse_recycled(n).is_some()).collect::<Vec<_>>();
    assert_eq!(kept(&sim).len(), 2);
    let last = fill(&wal, 3);
    assert!(kept(&sim).is_empty(), "removed, not left behind: {:?}", kept(&sim));
    drop(wal);
    let wal = SegmentedWal::open_with(storage, config(dir, 2)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, last);
    assert_eq!(wal.read_from(wal.recovery_info().first_lsn).unwrap().count() as u64, last.0 - wal.recovery_info().first_lsn.0 + 1);
}

/// Arms a fault for the first `step` after the flusher opens the file it makes the next
/// segment from: the new segment's own name (opened `create_new`), or a kept file.
#[derive(Clone, Debug)]
struct FailTheRoll<S: Storage> {
    inner: nodedb_wal::storage::faulty::FaultyStorage<S>,
    step: std::sync::Arc<std::sync::Mutex<Option<nodedb_wal::storage::faulty::FaultOp>>>,
}

impl<S: Storage> Storage for FailTheRoll<S> {
    type File = <nodedb_wal::storage::faulty::FaultyStorage<S> as Storage>::File;
    type Lock = S::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let making = (mode.create_new && segment::parse_name(name).is_some()) || segment::parse_recycled(name).is_some();
        let file = self.inner.open(path, mode)?;
        if let Some(step) = making.then(|| self.step.lock().unwrap().take()).flatten() {
            self.inner.fail_once(step, 0, nodedb_wal::storage::faulty::EIO);
        }
        Ok(file)
    }
}

/// The one file a log may find at its next segment's name is its own: what a roll that failed
/// part way left (the file made, then its header write, directory fsync or first sync failed;
/// or a kept file's header write, sync or rename failed). The log was poisoned there and made
/// nothing more; the next open, under the same kernel, recovers that file as a segment (where
/// its header was written) or removes it as an interrupted roll, and so never meets it as a
/// file in the way.
fn a_roll_that_failed_at_any_step_leaves_nothing_in_the_way_of_the_reopened_log<S: Storage + Clone>(storage: S, dir: &Path) {
    use nodedb_wal::storage::faulty::{FaultOp, FaultyStorage};
    let steps = [
        (FaultOp::Write, false),
        (FaultOp::SyncDir, false),
        (FaultOp::SyncData, false),
        (FaultOp::Write, true),
        (FaultOp::SyncData, true),
        (FaultOp::Rename, true),
        (FaultOp::SyncDir, true),
    ];
    for (round, (step, reuse)) in steps.into_iter().enumerate() {
        let dir = dir.join(format!("round-{round}"));
        let storage = FailTheRoll { inner: FaultyStorage::new(storage.clone()), step: Default::default() };
        let config = config(&dir, if reuse { 2 } else { 0 });
        let wal = SegmentedWal::open_with(storage.clone(), config.clone()).unwrap();
        let mut acked = fill(&wal, 3);
        if reuse {
            assert_eq!(wal.truncate_before(acked).unwrap(), 2);
        }
        let next = SegmentId(wal.segments().last().unwrap().id.0 + 1);
        *storage.step.lock().unwrap() = Some(step);
        let err = loop {
            match wal.append_durable(Record::new(TY, &payload(wal.next_lsn().0))) {
                Ok(lsn) => acked = lsn,
                Err(err) => break err,
            }
        };
        let context = format!("round {round} ({step:?}, reuse {reuse})");
        match &err {
            // A directory sync names the directory; every other step (the first batch's sync
            // included) names the segment.
            WalError::Poisoned { op: IoOp::SyncDir, path: Some(path), .. } if step == FaultOp::SyncDir && *path == dir => {}
            WalError::Poisoned { path: Some(path), .. } if step != FaultOp::SyncDir && *path == segment::path(&dir, next) => {}
            other => panic!("{context}: not the roll's failure: {other:?}"),
        }
        assert!(wal.segments().iter().all(|s| s.id < next), "{context}: segment {next} listed although its roll failed");
        drop(wal);
        let wal = SegmentedWal::open_with(storage.clone(), config.clone()).unwrap_or_else(|e| panic!("{context}: the reopen failed: {e}"));
        assert!(wal.recovery_info().last_lsn >= acked, "{context}: acknowledged records lost");
        fill(&wal, wal.segments().len() + 2);
        assert!(wal.segments().last().unwrap().id > next, "{context}: the log rolled on past {next}");
        drop(wal);
        let wal = SegmentedWal::open_with(storage, config).unwrap();
        let first = wal.recovery_info().first_lsn;
        for (record, lsn) in wal.read_from(first).unwrap().zip(first.0..) {
            assert_eq!(record.unwrap().lsn, Lsn(lsn), "{context}");
        }
    }
}

#[test]
fn a_roll_that_failed_at_any_step_leaves_nothing_in_the_way_of_the_reopened_log_fs() {
    let dir = tempfile::tempdir().unwrap();
    a_roll_that_failed_at_any_step_leaves_nothing_in_the_way_of_the_reopened_log(FsStorage::new(), dir.path());
}

#[test]
fn a_roll_that_failed_at_any_step_leaves_nothing_in_the_way_of_the_reopened_log_sim() {
    for policy in [nodedb_wal::storage::SyncFailure::DropsUnsynced, nodedb_wal::storage::SyncFailure::KeepsCleanPages] {
        let sim = SimStorage::new(6, FaultConfig::default());
        sim.set_sync_failure(policy);
        a_roll_that_failed_at_any_step_leaves_nothing_in_the_way_of_the_reopened_log(sim, Path::new("/wal"));
    }
}
