//! A cleanly closed log's last batch is protected like every earlier one: `close` seals the
//! newest segment with an end frame that claims the last batch durable, so damage in that
//! batch is corruption at the next open (nothing cut, no file changed), never a torn tail cut
//! without a word. A power cut at any step of a close loses no acknowledged record and revives
//! none; a failed seal poisons the log and `close` says so, and the next open still works.
//! A seal (at close, or at an open after a crash) cuts the file before it writes the end
//! frame, so a look beside the writer never maps a sealed segment whose file then shrinks.
//!
//! Found by a black-box review: the newest segment stayed open at close, and a bit flip in
//! its last batch was cut at the next open as a torn tail, taking acknowledged records along.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{
    BLOCK, Disk, Place, append, append_synced, assert_records, config, locate, read_all, record_frame, seg, segment_ids, write_log,
};
use nodedb_wal::format::frame::HEADER_LEN;
use nodedb_wal::recovery::inspect_dir;
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{
    CorruptionKind, FsStorage, KeyRing, Lsn, ReadOnlyWal, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError,
    WalWriter, WalWriterConfig,
};

/// Every file of `dir` with its bytes, sorted by name.
fn snapshot<D: Disk>(disk: &D, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = disk.names(dir);
    names.sort();
    names.into_iter().map(|n| (n.clone(), disk.read(&dir.join(&n)))).collect()
}

/// A change to a segment file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// The ways media damage can hit the last batch: a bit of a record's header or payload, or a
/// whole 4 KiB block read back as zeros.
fn damages(bytes: &[u8], first: u64, last: u64) -> Vec<(String, Damage)> {
    let mut out: Vec<(String, Damage)> = Vec::new();
    for lsn in [first, (first + last) / 2, last] {
        let at = record_frame(bytes, lsn).offset;
        for (what, byte) in [("header", at + 9), ("payload", at + HEADER_LEN as u64 + 3)] {
            out.push((format!("a bit of LSN {lsn}'s {what}"), Box::new(move |b: &mut Vec<u8>| b[byte as usize] ^= 0x10)));
        }
    }
    let start = record_frame(bytes, first).offset / BLOCK * BLOCK;
    let end = record_frame(bytes, last);
    for block in (start..end.offset + end.frame_len()).step_by(BLOCK as usize) {
        out.push((
            format!("the block at {block} zeroed"),
            Box::new(move |b: &mut Vec<u8>| b[block as usize..(block + BLOCK) as usize].fill(0)),
        ));
    }
    out
}

fn damage_in_the_last_batch_of_a_closed_log_is_corruption_not_a_torn_tail<D: Place>() {
    let (disk, dir, tmp) = D::fresh();
    // The tool reads real files only.
    let real_files = tmp.is_some();
    // Two acknowledged batches, then a last one of 30 records over two blocks.
    let last = write_log(&disk, &dir, &[10, 10, 30]);
    assert_eq!(segment_ids(&disk, &dir), vec![1], "everything in one segment");
    let path = seg(&dir, 1);
    let intact = disk.read(&path);
    for (what, damage) in damages(&intact, 21, last) {
        disk.edit(&path, |b| damage(b));
        let damaged = snapshot(&disk, &dir);
        match SegmentedWal::open_with(disk.clone(), config(&dir)) {
            Err(WalError::Corruption {
                segment: SegmentId(1),
                kind: CorruptionKind::DamageBeforeDurableRecords { lost_from, durable_claimed },
                ..
            }) => {
                assert!(lost_from.0 >= 21 && lost_from.0 <= last, "{what}: lost from {lost_from}");
                assert_eq!(durable_claimed, Lsn(last), "{what}: the seal claims the last batch");
            }
            Err(err) => panic!("{what}: {err:?}"),
            Ok(wal) => panic!("{what}: opened, cut to {:?}", wal.recovery_info().torn_tail),
        }
        assert_eq!(snapshot(&disk, &dir), damaged, "{what}: no file changed");
        if real_files {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).arg("verify").arg(&dir).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{what}: verify reports corruption");
            assert_eq!(snapshot(&disk, &dir), damaged, "{what}: verify changed nothing");
        }
        disk.write(&path, &intact);
    }
    let wal = SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap();
    assert_eq!(wal.recovery_info().torn_tail, None);
    assert_records(&read_all(&wal), 1, last);
}

both!(
    damage_in_the_last_batch_of_a_closed_log_is_corruption_not_a_torn_tail_fs,
    damage_in_the_last_batch_of_a_closed_log_is_corruption_not_a_torn_tail_sim,
    damage_in_the_last_batch_of_a_closed_log_is_corruption_not_a_torn_tail
);

#[test]
fn damage_in_the_last_batch_of_a_closed_encrypted_log_is_corruption() {
    let (sim, dir, _) = SimStorage::fresh();
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [9; 32])));
    let keyed = SegmentedWalConfig { key_ring: Some(ring), ..config(&dir) };
    let wal = SegmentedWal::open_with(sim.clone(), keyed.clone()).unwrap();
    append_synced(&wal, 1, 10);
    append_synced(&wal, 11, 40);
    wal.close().unwrap();
    let (id, frame) = locate(&sim, &dir, 30);
    sim.edit(&seg(&dir, id), |b| b[(frame.offset + HEADER_LEN as u64 + 5) as usize] ^= 1);
    let damaged = snapshot(&sim, &dir);
    let err = SegmentedWal::open_with(sim.clone(), keyed).unwrap_err();
    let kind = CorruptionKind::DamageBeforeDurableRecords { lost_from: Lsn(30), durable_claimed: Lsn(40) };
    assert!(matches!(err, WalError::Corruption { kind: k, .. } if k == kind), "{err:?}");
    assert_eq!(snapshot(&sim, &dir), damaged, "no file changed");
}

/// The records a restarted log holds: dense from 1, and the same at the open after.
fn recovered_after(sim: &SimStorage, dir: &Path) -> u64 {
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).expect("the log opens after a power cut");
    let last = wal.recovery_info().last_lsn.0;
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
    let again = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    assert_eq!(again.recovery_info().last_lsn.0, last, "nothing revived or lost at the next open");
    assert_eq!(again.recovery_info().torn_tail, None);
    last
}

#[test]
fn a_power_cut_at_any_step_of_a_close_loses_no_acknowledged_record_and_revives_none() {
    let dir = Path::new("/wal");
    for budget in 0.. {
        let sim = SimStorage::new(budget, FaultConfig::default());
        let faulty = FaultyStorage::new(sim.clone());
        let wal = SegmentedWal::open_with(faulty.clone(), config(dir)).unwrap();
        append_synced(&wal, 1, 20);
        // Appended, not acknowledged: the close writes them in its last batch.
        (21..=25).for_each(|lsn| append(&wal, lsn));
        faulty.cut_power_after(budget);
        let closed = wal.close();
        let finished = faulty.injected() == 0;
        let last = recovered_after(&sim.crash(budget * 13 + 5), dir);
        assert!(last >= 20, "budget {budget}: acknowledged records lost, only {last} left");
        if closed.is_ok() {
            assert_eq!(last, 25, "budget {budget}: close returned Ok");
        }
        if finished {
            assert!(closed.is_ok(), "budget {budget}: {closed:?}");
            assert!(budget > 2, "the close took several steps");
            return;
        }
    }
}

/// A log a crash left open: 4 acknowledged records in batches of their own, so that zeros were
/// written ahead of them to the segment's target size, and 2 more appended that the crash may
/// keep or not.
fn crashed_open_log(dir: &Path) -> SimStorage {
    let sim = SimStorage::new(7, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    (1..=4).for_each(|lsn| append_synced(&wal, lsn, lsn));
    (5..=6).for_each(|lsn| append(&wal, lsn));
    // The power fails under the live log: dropped, it would close and seal the segment.
    let image = sim.crash(11);
    drop(wal);
    image
}

/// The open of a log a crash left open seals its newest segment, cutting the file first: a
/// power cut at any step of that open (between the cut and the seal, too) leaves a log whose
/// next open recovers exactly what an uninterrupted open does, and stays so.
#[test]
fn a_power_cut_at_any_step_of_the_seal_at_open_changes_nothing_recovery_returns() {
    let dir = Path::new("/wal");
    let reference = SegmentedWal::open_with(crashed_open_log(dir), config(dir)).unwrap().recovery_info().last_lsn.0;
    assert!(reference >= 4, "acknowledged records kept: {reference}");
    for budget in 0.. {
        let sim = crashed_open_log(dir);
        let crashed_len = sim.read(&seg(dir, 1)).len();
        let faulty = FaultyStorage::new(sim.clone());
        faulty.cut_power_after(budget);
        let opened = SegmentedWal::open_with(faulty.clone(), config(dir));
        let finished = faulty.injected() == 0;
        drop(opened);
        let sealed_len = sim.read(&seg(dir, 1)).len();
        assert_eq!(recovered_after(&sim.crash(budget * 13 + 5), dir), reference, "budget {budget}");
        if finished {
            assert!(budget > 2, "the open took several steps");
            assert!(sealed_len < crashed_len, "the open cut the segment's file: {crashed_len} -> {sealed_len}");
            return;
        }
    }
}

/// A log of 20 acknowledged records on `faulty`, whose close then fails at the seal's `op`.
fn close_failing_at_the_seal(op: FaultOp) -> (SimStorage, WalError) {
    let sim = SimStorage::new(3, FaultConfig::default());
    let faulty = FaultyStorage::new(sim.clone());
    let wal = SegmentedWal::open_with(faulty.clone(), config(Path::new("/wal"))).unwrap();
    append_synced(&wal, 1, 20);
    faulty.fail_once(op, 0, EIO);
    let err = wal.close().expect_err("the seal failed");
    assert_eq!(faulty.injected(), 1, "{op:?}");
    (sim, err)
}

#[test]
fn a_failed_seal_at_close_poisons_the_log_and_the_next_open_keeps_every_record() {
    for op in [FaultOp::Write, FaultOp::SyncData] {
        let (sim, err) = close_failing_at_the_seal(op);
        assert!(matches!(err, WalError::Poisoned { .. }), "{op:?}: {err:?}");
        assert_eq!(recovered_after(&sim, Path::new("/wal")), 20, "{op:?}");
        let (sim, _) = close_failing_at_the_seal(op);
        assert_eq!(recovered_after(&sim.crash(9), Path::new("/wal")), 20, "{op:?}, then a power cut");
    }
}

#[test]
fn a_closed_log_ends_with_a_sealed_segment_that_a_writer_may_follow() {
    let (sim, dir, _) = SimStorage::fresh();
    let last = write_log(&sim, &dir, &[5, 5]);
    let info = inspect_dir(&sim, &dir, None).unwrap();
    assert!(info.segments.iter().all(|s| s.sealed), "{:?}", info.segments);
    let next = Lsn(last + 1);
    let mut writer = WalWriter::create_with(sim.clone(), &dir, SegmentId(2), next, WalWriterConfig::default()).unwrap();
    writer.append(nodedb_wal::Record::new(common::record_type(next.0), &common::payload(next.0)).scoped(common::scope(next.0))).unwrap();
    writer.finish().unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last + 1);
    // Opened and closed without appends: nothing to seal, and nothing changes.
    wal.close().unwrap();
    let before = snapshot(&sim, &dir);
    SegmentedWal::open_with(sim.clone(), config(&dir)).unwrap().close().unwrap();
    assert_eq!(segment_ids(&sim, &dir), vec![1, 2]);
    let after = snapshot(&sim, &dir);
    let segments = |s: &[(String, Vec<u8>)]| s.iter().filter(|(n, _)| n.ends_with(".wal")).cloned().collect::<Vec<_>>();
    assert_eq!(segments(&after), segments(&before), "an empty open and close leaves the segments alone");
}

/// Segment files whose cuts a look beside the writer watched: for each cut, the segment, and
/// whether the look listed it as sealed before the cut, with the file's length then and after.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WatchedCut {
    segment: u64,
    sealed_before: bool,
    len_before: u64,
    len_after: u64,
}

/// The real file system, where every shortening of a segment file first has a read-only look
/// open the log beside the writer and note whether it lists that segment as sealed.
#[derive(Clone)]
struct CutWatch {
    inner: FsStorage,
    dir: std::path::PathBuf,
    cuts: Arc<Mutex<Vec<WatchedCut>>>,
}

struct CutWatchFile {
    inner: <FsStorage as Storage>::File,
    segment: Option<u64>,
    watch: CutWatch,
}

impl Storage for CutWatch {
    type File = CutWatchFile;
    type Lock = <FsStorage as Storage>::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Self::File> {
        let segment = path.file_name().and_then(|n| n.to_str()).and_then(nodedb_wal::segment::parse_name).map(|id| id.0);
        Ok(CutWatchFile { inner: self.inner.open(path, mode)?, segment, watch: self.clone() })
    }
}

impl StorageFile for CutWatchFile {
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let len_before = self.inner.len()?;
        if let Some(segment) = self.segment.filter(|_| len < len_before) {
            let look = ReadOnlyWal::open(&self.watch.dir, None).expect("a look beside the writer opens");
            let sealed_before = look.recovery_info().segments.iter().any(|s| s.id.0 == segment && s.sealed);
            let cut = WatchedCut { segment, sealed_before, len_before, len_after: len };
            self.watch.cuts.lock().unwrap().push(cut);
        }
        self.inner.set_len(len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }

    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<Option<usize>> {
        self.inner.read_cached_at(buf, offset)
    }

    pass_through_file_hints_and_holds!();

    fn direct_io_alignment(&self) -> Option<nodedb_wal::storage::DioAlign> {
        self.inner.direct_io_alignment()
    }
}

// Seen failing before the fix: the close and the open wrote and synced the seal, then cut the
// file, so a look between the two listed the segment as sealed while the file still held the
// zeros written ahead of its records. A mapped reader of that look maps a sealed segment to the
// file's length then; the cut took those pages away under the map, and the checking helper,
// which walks on past the end frame, touched them: a `SIGBUS` that kills the reader's process.
/// A segment file is cut to its seal before the seal is written, at close and at an open that
/// seals the segment a crash left open: no look beside the writer ever lists a segment as
/// sealed whose file is still to shrink, so a map of a sealed segment never outlives its bytes.
#[test]
fn a_look_never_sees_a_segment_sealed_whose_file_is_still_to_be_cut() {
    let watch = |dir: &Path| CutWatch { inner: FsStorage::new(), dir: dir.to_path_buf(), cuts: Arc::default() };
    // Single small synced batches: the writer zero-fills ahead of them, so that the file runs
    // past the block the seal will take, and the seal cuts it. First the close's seal.
    let closed = tempfile::tempdir().unwrap();
    let at_close = watch(closed.path());
    let wal = SegmentedWal::open_with(at_close.clone(), config(closed.path())).unwrap();
    (1..=3).for_each(|lsn| append_synced(&wal, lsn, lsn));
    wal.close().unwrap();
    // Then the open's, of a copy of a live log's files: what a crash leaves (a dropped log
    // closes, and seals).
    let (live, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wal = SegmentedWal::open(config(live.path())).unwrap();
    (1..=3).for_each(|lsn| append_synced(&wal, lsn, lsn));
    for entry in std::fs::read_dir(live.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), crashed.path().join(entry.file_name())).unwrap();
    }
    drop(wal);
    let at_open = watch(crashed.path());
    let wal = SegmentedWal::open_with(at_open.clone(), config(crashed.path())).unwrap();
    assert_records(&read_all(&wal), 1, 3);
    drop(wal);
    for (what, watch) in [("close", at_close), ("open", at_open)] {
        let cuts = watch.cuts.lock().unwrap().clone();
        assert_eq!(cuts.iter().map(|c| c.segment).collect::<Vec<_>>(), [1], "{what}: one cut: {cuts:?}");
        let cut = &cuts[0];
        assert!(!cut.sealed_before, "{what}: a look saw the segment sealed before its file was cut: {cut:?}");
        assert!(cut.len_after < cut.len_before, "{what}: {cut:?}");
    }
}
