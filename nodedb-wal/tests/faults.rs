//! Fault injection on the real file system, per log instance (`FaultyStorage`): EIO and ENOSPC
//! on a write, a write that stops half way, EIO on fdatasync, a failing directory fsync, a file
//! system that refuses O_DIRECT. Each ends in a typed error, a poisoned log where a write or
//! sync failed (never retried, never reported durable), and no acknowledged record lost: the
//! directory, reopened on the plain file system, returns every acknowledged record intact.
//! The tests run in parallel, each on its own directory and its own fault plan. The write and
//! sync faults run twice: once with the lone appender writing its own batches, once with a
//! commit window, which leaves all writing to the flusher thread. Where a fault must hit one
//! kind of write (a zero-fill ahead, a batch) or a write must be followed after it fails,
//! `Watched` logs every write and fails (or panics in) the one it is told to.

mod common;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nodedb_wal::format::crc::crc32c;
use nodedb_wal::storage::faulty::{EIO, ENOSPC, FaultOp, FaultyStorage};
use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
use nodedb_wal::{FsStorage, IoOp, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, WalError};

const TY: RecordType = RecordType::optional(0x100);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i as usize * 131) % 2000 + 1;
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// Appends durably until the first error; returns the acknowledged LSNs and that error.
fn append_until_error<S: Storage>(wal: &SegmentedWal<S>, from: u64, max: u64) -> (Vec<Lsn>, Option<WalError>) {
    let mut acked = Vec::new();
    for i in from..from + max {
        match wal.append_durable(Record::new(TY, &payload(i))) {
            Ok(lsn) => acked.push(lsn),
            Err(e) => return (acked, Some(e)),
        }
    }
    (acked, None)
}

/// Reopens `dir` on the plain file system and checks that every acknowledged record is there,
/// in order, with its payload, and that the log takes new appends.
fn assert_acknowledged_records_survive(dir: &Path, acked: &[Lsn]) {
    let wal = SegmentedWal::open_with(FsStorage::new(), config(dir)).expect("reopening after the fault");
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().expect("replay after the fault");
    for lsn in acked {
        let record = records.get((lsn.0 - 1) as usize).unwrap_or_else(|| panic!("acknowledged {lsn} is gone"));
        assert_eq!(record.lsn, *lsn);
        assert_eq!(record.payload, payload(lsn.0), "acknowledged {lsn} changed");
    }
    let next = wal.append_durable(Record::new(TY, b"after")).expect("the reopened log takes appends");
    assert!(next.0 > acked.last().map_or(0, |l| l.0));
}

/// A storage on the real file system whose faults a test arms: the library's `FaultyStorage`,
/// or [`Watched`].
trait Injecting: Storage + Clone {
    fn on_fs() -> Self;
    /// Faults injected so far.
    fn injected(&self) -> u64;
}

impl Injecting for FaultyStorage<FsStorage> {
    fn on_fs() -> Self {
        FaultyStorage::new(FsStorage::new())
    }

    fn injected(&self) -> u64 {
        FaultyStorage::injected(self)
    }
}

/// What a faulty run left: the wrapper, the first error, and how many appends were
/// acknowledged after the fault was armed.
struct Faulted<S> {
    faulty: S,
    err: WalError,
    acked_after_arm: usize,
}

/// Runs [`fault_poisons_and_loses_nothing_with`] twice: with one appender the caller writes
/// its own batches, and with a commit window the flusher thread writes them; the failure must
/// be handled the same on either thread. Returns the second run's result.
fn fault_poisons_and_loses_nothing(arm: impl Fn(&FaultyStorage<FsStorage>), op: IoOp) -> Faulted<FaultyStorage<FsStorage>> {
    let [_, flusher] = fault_poisons_and_loses_nothing_on_both(&arm, op);
    flusher
}

/// [`fault_poisons_and_loses_nothing_with`] on either thread, as above; both runs' results.
fn fault_poisons_and_loses_nothing_on_both<S: Injecting>(arm: &impl Fn(&S), op: IoOp) -> [Faulted<S>; 2] {
    [
        fault_poisons_and_loses_nothing_with(arm, op, None),
        fault_poisons_and_loses_nothing_with(arm, op, Some(std::time::Duration::from_micros(1))),
    ]
}

/// Opens a faulty log, acknowledges some records, arms `arm`, appends until the first error,
/// checks that the error names `op`, that the log stays poisoned and that no LSN after the
/// acknowledged ones is reported durable, then checks the disk.
fn fault_poisons_and_loses_nothing_with<S: Injecting>(
    arm: &impl Fn(&S),
    op: IoOp,
    commit_window: Option<std::time::Duration>,
) -> Faulted<S> {
    let dir = tempfile::tempdir().unwrap();
    let faulty = S::on_fs();
    let mut c = config(dir.path());
    c.commit_window = commit_window;
    let wal = SegmentedWal::open_with(faulty.clone(), c).unwrap();
    let (mut acked, err) = append_until_error(&wal, 1, 20);
    assert!(err.is_none(), "{err:?}");
    arm(&faulty);
    let (more, err) = append_until_error(&wal, 21, 500);
    let acked_after_arm = more.len();
    acked.extend(more);
    let err = err.expect("the armed fault hit an append");
    assert!(faulty.injected() > 0);
    assert!(matches!(err, WalError::Poisoned { op: o, .. } if o == op), "{err}");
    let again = wal.append(Record::new(TY, b"x")).unwrap_err();
    assert!(matches!(again, WalError::Poisoned { op: o, .. } if o == op), "later calls stay poisoned: {again}");
    let last_acked = *acked.last().unwrap();
    assert!(wal.durable_lsn() <= last_acked, "nothing after the fault is reported durable");
    // The failed append took an LSN (its wait failed): no wait for it, or any after it, succeeds.
    let unacked: Vec<Lsn> = (last_acked.0 + 1..wal.next_lsn().0).map(Lsn).collect();
    assert!(!unacked.is_empty());
    for lsn in unacked {
        let err = wal.wait_durable(lsn).unwrap_err();
        assert!(matches!(err, WalError::Poisoned { op: o, .. } if o == op), "a wait for {lsn}: {err}");
    }
    // A watcher (no sync asked) learns of the poison too, for an LSN never issued as well: it
    // is not left to sleep out its timeout, nor told "not yet" as if more could come.
    for lsn in [last_acked.next(), wal.next_lsn()] {
        let watched = wal.watch_durable(lsn, std::time::Duration::from_secs(10));
        assert!(matches!(watched, Err(WalError::Poisoned { op: o, .. }) if o == op), "a watch for {lsn}: {watched:?}");
    }
    assert!(wal.stats().poisoned, "the metrics show the poisoned state");
    drop(wal);
    assert_acknowledged_records_survive(dir.path(), &acked);
    Faulted { faulty, err, acked_after_arm }
}

#[test]
fn eio_on_a_write_poisons_the_log_and_loses_no_acknowledged_record() {
    fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::Write, 3, EIO), IoOp::Write);
}

#[test]
fn enospc_on_a_write_poisons_the_log_as_storage_full() {
    let Faulted { err, acked_after_arm, .. } = fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::Write, 0, ENOSPC), IoOp::Write);
    assert_eq!(acked_after_arm, 0);
    assert!(matches!(err, WalError::Poisoned { op: IoOp::Write, kind: std::io::ErrorKind::StorageFull, .. }), "{err}");
}

#[test]
fn a_write_that_stops_half_way_poisons_and_its_records_are_never_acknowledged() {
    fault_poisons_and_loses_nothing(|f| f.fail_write_partially(2, EIO), IoOp::Write);
}

#[test]
fn eio_on_fdatasync_poisons_and_the_sync_is_never_retried() {
    // One-shot: a retried fdatasync would succeed and wrongly report the lost data durable.
    let Faulted { faulty, .. } = fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::SyncData, 4, EIO), IoOp::SyncData);
    let syncs = faulty.calls(FaultOp::SyncData);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(faulty.calls(FaultOp::SyncData), syncs, "no sync after the failed one");
}

#[test]
fn a_failing_directory_fsync_at_a_segment_roll_poisons_the_log() {
    // Segments of 64 KiB: 500 records of ~1 KiB roll several times; the first segment's
    // creation synced the directory before the fault is armed, so the next sync is a roll's.
    fault_poisons_and_loses_nothing(|f| f.fail_once(FaultOp::SyncDir, 0, EIO), IoOp::SyncDir);
}

#[test]
fn a_failing_directory_fsync_fails_truncation_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    let wal = SegmentedWal::open_with(faulty.clone(), config(dir.path())).unwrap();
    let (acked, err) = append_until_error(&wal, 1, 300);
    assert!(err.is_none(), "{err:?}");
    assert!(wal.segments().len() > 2);
    faulty.fail_once(FaultOp::SyncDir, 0, EIO);
    let err = wal.truncate_before(Lsn(250)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: IoOp::SyncDir, .. }), "{err}");
    // The file removed before the failed directory sync is no longer listed, so a later
    // truncation goes on from the next one instead of failing on a missing file.
    for seg in wal.segments() {
        assert!(dir.path().join(format!("{:020}.wal", seg.id.0)).exists(), "segment {} is listed but gone", seg.id);
    }
    wal.truncate_before(Lsn(250)).expect("a later truncation goes on");
    assert!(!wal.stats().poisoned, "a failed truncation does not poison");
    let after = wal.append_durable(Record::new(RecordType::optional(0x100), b"after the failed truncation")).unwrap();
    assert_eq!(after, acked.last().map_or(Lsn(1), |l| l.next()));
    drop(wal);
    // Records below the checkpoint may be gone (that is what truncation asked for); the rest
    // must all be there.
    let kept: Vec<Lsn> = acked.into_iter().filter(|l| l.0 >= 250).collect();
    let reopened = SegmentedWal::open_with(FsStorage::new(), config(dir.path())).unwrap();
    let first = reopened.recovery_info().first_lsn;
    drop(reopened);
    assert!(first.0 <= 250, "truncation removed records above the checkpoint: first is {first}");
    let records: Vec<_> =
        SegmentedWal::open_with(FsStorage::new(), config(dir.path())).unwrap().read_from(first).unwrap().collect::<Result<_, _>>().unwrap();
    for lsn in kept {
        let record = &records[(lsn.0 - first.0) as usize];
        assert_eq!((record.lsn, &record.payload), (lsn, &payload(lsn.0).into()));
    }
}

#[test]
fn a_file_system_that_refuses_o_direct_is_a_typed_error_unless_buffered_io_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    faulty.refuse_direct_io();
    let mut c = config(dir.path());
    c.direct_io = true;
    c.allow_buffered_fallback = false;
    let err = SegmentedWal::open_with(faulty.clone(), c.clone()).unwrap_err();
    assert!(matches!(err, WalError::DirectIoUnsupported { .. }), "{err}");
    c.allow_buffered_fallback = true;
    let wal = SegmentedWal::open_with(faulty, c).unwrap();
    assert!(!wal.direct_io());
    let lsn = wal.append_durable(Record::new(TY, &payload(1))).unwrap();
    drop(wal);
    assert_acknowledged_records_survive(dir.path(), &[lsn]);
}

#[test]
fn faults_belong_to_one_instance_and_leave_a_log_beside_it_alone() {
    let (healthy_dir, faulty_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let faulty = FaultyStorage::new(FsStorage::new());
    let broken = SegmentedWal::open_with(faulty.clone(), config(faulty_dir.path())).unwrap();
    faulty.fail_from(FaultOp::Write, 0, EIO);
    let healthy = SegmentedWal::open_with(FaultyStorage::new(FsStorage::new()), config(healthy_dir.path())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| assert!(broken.append_durable(Record::new(TY, b"lost")).is_err()));
        s.spawn(|| {
            for i in 1..=50 {
                assert_eq!(healthy.append_durable(Record::new(TY, &payload(i))).unwrap(), Lsn(i));
            }
        });
    });
}

/// One write a log made, as [`Watched`] saw it.
#[derive(Clone, Debug)]
struct WriteCall {
    file: String,
    offset: u64,
    len: usize,
    crc: u32,
    zeros: bool,
    /// Made with `write_and_sync` (a batch, or a reused segment's header block), not `write_at`.
    with_sync: bool,
    failed: bool,
}

impl WriteCall {
    fn overlaps(&self, other: &WriteCall) -> bool {
        self.file == other.file && self.offset < other.offset + other.len as u64 && other.offset < self.offset + self.len as u64
    }
}

/// A zero-fill ahead of the writer: zeros put with `write_at` past a segment's header block.
fn is_zero_fill(call: &WriteCall) -> bool {
    call.file.ends_with(".wal") && !call.with_sync && call.offset > 0 && call.zeros
}

/// A batch: written and synced in one step, past a segment's header block.
fn is_batch(call: &WriteCall) -> bool {
    call.file.ends_with(".wal") && call.with_sync && call.offset > 0
}

/// What an armed write does instead of writing.
#[derive(Clone, Copy, Debug)]
enum Act {
    Fail(i32),
    Panic,
}

/// Which writes a fault may hit.
type Pick = fn(&WriteCall) -> bool;

#[derive(Debug, Default)]
struct WatchState {
    log: Vec<WriteCall>,
    armed: Option<(Pick, Act)>,
    injected: u64,
}

/// A storage that logs every write of its files, and makes the first write that the armed
/// predicate picks fail or panic (a bug in a storage implementation), once. Clones share the
/// log and the plan.
#[derive(Clone, Debug)]
struct Watched<S> {
    inner: S,
    state: Arc<Mutex<WatchState>>,
}

impl<S> Watched<S> {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn arm(&self, pick: Pick, act: Act) {
        self.lock().armed = Some((pick, act));
    }

    fn log(&self) -> Vec<WriteCall> {
        self.lock().log.clone()
    }
}

impl Injecting for Watched<FsStorage> {
    fn on_fs() -> Self {
        Watched { inner: FsStorage::new(), state: Arc::default() }
    }

    fn injected(&self) -> u64 {
        self.lock().injected
    }
}

/// A file of [`Watched`].
#[derive(Debug)]
struct WatchedFile<F> {
    inner: F,
    file: String,
    state: Arc<Mutex<WatchState>>,
}

impl<F> WatchedFile<F> {
    /// Logs the write; the errno to fail it with if the armed fault picks it.
    fn watch(&self, buf: &[u8], offset: u64, with_sync: bool) -> Option<i32> {
        let mut call = WriteCall {
            file: self.file.clone(),
            offset,
            len: buf.len(),
            crc: crc32c(buf),
            zeros: buf.iter().all(|&b| b == 0),
            with_sync,
            failed: false,
        };
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let act = match state.armed {
            Some((pick, act)) if pick(&call) => {
                state.armed = None;
                state.injected += 1;
                call.failed = true;
                Some(act)
            }
            _ => None,
        };
        state.log.push(call);
        drop(state);
        match act {
            None => None,
            Some(Act::Fail(errno)) => Some(errno),
            Some(Act::Panic) => panic!("a storage implementation's bug, injected by the test"),
        }
    }
}

impl<S: Storage> Storage for Watched<S> {
    type File = WatchedFile<S::File>;
    type Lock = S::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File> {
        let file = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(WatchedFile { inner: self.inner.open(path, mode)?, file, state: Arc::clone(&self.state) })
    }
}

impl<F: StorageFile> StorageFile for WatchedFile<F> {
    pass_through_file_ops_but_writes!();

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.watch(buf, offset, false) {
            None => self.inner.write_at(buf, offset),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, io::Error)> {
        match self.watch(buf, offset, true) {
            None => self.inner.write_and_sync(buf, offset),
            Some(errno) => Err((IoOp::Write, io::Error::from_raw_os_error(errno))),
        }
    }
}

/// The one write the armed fault hit, and every write after it.
fn failed_and_after(watched: &Watched<FsStorage>) -> (WriteCall, Vec<WriteCall>) {
    let log = watched.log();
    let at = log.iter().position(|c| c.failed).expect("the armed fault hit a write");
    assert!(!log[at + 1..].iter().any(|c| c.failed), "one fault was armed");
    (log[at].clone(), log[at + 1..].to_vec())
}

#[test]
fn eio_on_a_zero_fill_ahead_poisons_the_log_and_loses_no_acknowledged_record() {
    // Every batch here is small, so the first batch of each new segment zero-fills the segment
    // ahead of it; the fault hits the next segment's.
    let arm = |w: &Watched<FsStorage>| w.arm(is_zero_fill, Act::Fail(EIO));
    for run in fault_poisons_and_loses_nothing_on_both(&arm, IoOp::Write) {
        let (failed, after) = failed_and_after(&run.faulty);
        assert!(is_zero_fill(&failed), "{failed:?}");
        // The batch the zeros went ahead of was never written.
        assert!(!after.iter().any(|c| c.file == failed.file), "{failed:?} then {after:?}");
    }
}

#[test]
fn a_failed_batch_write_poisons_and_the_same_bytes_are_never_written_again() {
    let arm = |w: &Watched<FsStorage>| w.arm(is_batch, Act::Fail(EIO));
    for run in fault_poisons_and_loses_nothing_on_both(&arm, IoOp::Write) {
        let (failed, after) = failed_and_after(&run.faulty);
        assert!(is_batch(&failed), "{failed:?}");
        // Not to the same place, and not anywhere else either (the log wrote nothing more to
        // its segments after the failure).
        for later in &after {
            assert!(!later.overlaps(&failed), "{failed:?} was written over again: {later:?}");
            assert!(!(later.crc == failed.crc && later.len == failed.len), "{failed:?} was written again: {later:?}");
        }
        assert!(!after.iter().any(|c| c.file.ends_with(".wal")), "a poisoned log wrote to a segment: {after:?}");
    }
}

/// What a panic while writing a batch poisons the log with.
fn poisoned<T>(result: &Result<T, WalError>) -> bool {
    matches!(result, Err(WalError::Poisoned { op: IoOp::Write, kind: io::ErrorKind::Other, .. }))
}

/// Runs `call` on the log from another thread and gives back what it returned, `Err` if it
/// panicked, or `None` if it had not returned after 20 s: a caller left waiting for good.
fn on_another_thread<S: Storage, T: Send + 'static>(
    wal: &Arc<SegmentedWal<S>>,
    call: impl FnOnce(&SegmentedWal<S>) -> T + Send + 'static,
) -> Option<std::thread::Result<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let wal = Arc::clone(wal);
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&wal)));
        // Let go of the log first: the caller may be about to close it and reopen the directory.
        drop(wal);
        let _ = tx.send(outcome);
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).ok()
}

// A panic while a batch is written is reachable through the public `Storage` trait: an
// implementation with a bug (here, `Watched` panicking) or a broken invariant in the writer.
#[test]
fn a_panic_while_a_batch_is_written_poisons_the_log_and_loses_no_acknowledged_record() {
    for commit_window in [None, Some(std::time::Duration::from_micros(1))] {
        let dir = tempfile::tempdir().unwrap();
        let watched = Watched::on_fs();
        let mut c = config(dir.path());
        c.commit_window = commit_window;
        let wal = Arc::new(SegmentedWal::open_with(watched.clone(), c).unwrap());
        let (acked, err) = append_until_error(&wal, 1, 20);
        assert!(err.is_none(), "{err:?}");
        watched.arm(is_batch, Act::Panic);
        let outcome = on_another_thread(&wal, |wal| wal.append_durable(Record::new(TY, &payload(21))));
        match outcome.expect("the append whose batch panicked returned") {
            // A lone caller writes its own batch: the storage's panic unwinds through it.
            Err(_) => assert!(commit_window.is_none(), "the flusher thread's panic reached a caller"),
            Ok(result) => assert!(poisoned(&result), "{commit_window:?}: {result:?}"),
        }
        assert_eq!(watched.injected(), 1);
        let (failed, _) = failed_and_after(&watched);
        assert!(is_batch(&failed));
        let waited = on_another_thread(&wal, |wal| wal.wait_durable(Lsn(21))).expect("a wait for the lost record returned");
        assert!(poisoned(&waited.unwrap()), "the record of the batch is never reported durable");
        assert!(poisoned(&wal.append(Record::new(TY, b"x"))), "later calls stay poisoned");
        assert_eq!(wal.durable_lsn(), *acked.last().unwrap());
        assert!(wal.stats().poisoned);
        drop(wal);
        assert_acknowledged_records_survive(dir.path(), &acked);
    }
}

// Found by a review: a failed write or fdatasync of a batch poisoned the log with `path: None`
// (only the steps of making a new segment named a file), so the error left the operator to
// guess which file the disk refused; a failed directory sync at a roll named the new segment
// rather than the directory. Deterministic: the simulated storage, one fault armed.
#[test]
fn a_failed_write_fsync_or_directory_sync_names_its_file_in_the_poisoned_error() {
    use nodedb_wal::SimStorage;
    use nodedb_wal::storage::FaultConfig;
    let dir = Path::new("/wal");
    for (fault, op) in [(FaultOp::Write, IoOp::Write), (FaultOp::SyncData, IoOp::SyncData), (FaultOp::SyncDir, IoOp::SyncDir)] {
        for commit_window in [None, Some(std::time::Duration::from_micros(1))] {
            let faulty = FaultyStorage::new(SimStorage::new(7, FaultConfig::default()));
            let mut c = config(dir);
            c.commit_window = commit_window;
            let wal = SegmentedWal::open_with(faulty.clone(), c).unwrap();
            let (_, err) = append_until_error(&wal, 1, 5);
            assert!(err.is_none(), "{err:?}");
            let segment = wal.segments().last().unwrap().id;
            faulty.fail_once(fault, 0, EIO);
            // A write or fsync fails with the next batch; the directory is synced at the next
            // roll only (segments of 64 KiB).
            let (_, err) = append_until_error(&wal, 6, 500);
            let err = err.expect("the armed fault hit an append");
            let expected = match op {
                IoOp::SyncDir => dir.to_path_buf(),
                _ => dir.join(format!("{:020}.wal", segment.0)),
            };
            let what = format!("{op:?}, commit window {commit_window:?}: {err:?}");
            assert!(matches!(&err, WalError::Poisoned { op: o, path: Some(p), .. } if *o == op && *p == expected), "{what}");
            assert!(err.to_string().contains(&format!(" of {}", expected.display())), "{err}");
        }
    }
}

// A disk that comes back (`heal`) does not make an open log's failed fdatasync good: the log
// stays poisoned and syncs nothing more, and once dropped it opens again through the same
// storage with every acknowledged record.
#[test]
fn a_healed_disk_leaves_the_open_log_poisoned_and_reopens_through_the_same_storage() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyStorage::new(FsStorage::new());
    let wal = SegmentedWal::open_with(faulty.clone(), config(dir.path())).unwrap();
    let (acked, err) = append_until_error(&wal, 1, 20);
    assert!(err.is_none(), "{err:?}");
    faulty.fail_from(FaultOp::SyncData, 0, EIO);
    let err = wal.append_durable(Record::new(TY, &payload(21))).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "{err}");

    faulty.heal();
    let syncs = faulty.calls(FaultOp::SyncData);
    let err = wal.append_durable(Record::new(TY, b"after the heal")).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "a healed disk does not unpoison: {err}");
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { op: IoOp::SyncData, .. })));
    drop(wal);
    assert_eq!(faulty.calls(FaultOp::SyncData), syncs, "no fdatasync was tried again, not even at the drop");

    let wal = SegmentedWal::open_with(faulty.clone(), config(dir.path())).expect("the healed storage opens the log");
    let records: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().collect::<Result<_, _>>().unwrap();
    for lsn in &acked {
        assert_eq!(records[(lsn.0 - 1) as usize].payload, payload(lsn.0), "acknowledged {lsn}");
    }
    wal.append_durable(Record::new(TY, b"after the reopen")).expect("the reopened log takes appends");
    assert_eq!(faulty.injected(), 1, "one fault, before the heal");
}
