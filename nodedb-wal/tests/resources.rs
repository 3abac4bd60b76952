//! Resources the crate takes are given back: every file descriptor it opens is closed once the
//! value that took it is dropped or the call that needed it returned, and a helper thread
//! sleeps while it has nothing to do. A database keeps its log and its double-write buffer
//! open for months; anything left behind per call adds up. Descriptors are counted through
//! `/proc/self/fd` (only those under the test's own directory), threads and their wake-ups
//! through `/proc/self/task` (by the names the crate gives them).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};

/// The tests of this file count what the whole process holds: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Open descriptors of this process whose file lies under `dir`.
fn fds_under(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

// Found by review: the double-write buffer opened each page file at its first write and kept
// it open for as long as the buffer lived, with no way to let go. An engine that drops or
// replaces files (a dropped collection, a compaction) kept one descriptor per file it ever
// wrote, and the space of every removed file stayed allocated until the buffer was closed.
#[test]
fn the_double_write_buffer_holds_no_page_file_open_between_calls() {
    use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
    let held = fds_under(dir.path());
    for n in 0..20u32 {
        let path = dir.path().join(format!("pages-{n}"));
        std::fs::write(&path, vec![0u8; 2 * 4096]).unwrap();
        dwb.register_file(FileId(n), &path, 4096).unwrap();
        dwb.write_pages(&[(FileId(n), 1, &[n as u8; 4096])]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[4096], n as u8);
        // The engine drops the file.
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(fds_under(dir.path()), held, "descriptors of page files written and removed");
    drop(dwb);
    // The same after a recovery that applied images.
    let path = dir.path().join("pages-kept");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.register_file(FileId(100), &path, 4096).unwrap();
    dwb.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
    dwb.write_pages(&[(FileId(100), 0, &[1u8; 4096])]).unwrap();
    drop(dwb);
    let dwb = DoubleWriteBuffer::open(DwbConfig::new(dir.path().join("dwb"))).unwrap();
    dwb.register_file(FileId(100), &path, 4096).unwrap();
    dwb.recover(|_, page| if page[0] == 1 { PageCheck::Intact { version: 1 } } else { PageCheck::Torn }).unwrap();
    assert_eq!(fds_under(dir.path()), held, "descriptors of page files recovery read");
}

/// The wake-ups so far (voluntary context switches) of each thread of this process whose
/// name starts with `name` (a thread's name is cut to 15 bytes).
fn wake_ups(name: &str) -> Vec<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().filter_map(|e| Some(e.ok()?.path()));
    let named = tasks.filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.starts_with(name)));
    let switches = |status: String| status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse().ok());
    named.filter_map(|task| switches(std::fs::read_to_string(task.join("status")).ok()?)).collect()
}

// Found by review: the helper that checks a mapped segment ahead of its reader, once as far
// ahead as it may go, looked again every 200 µs for as long as the reader lived. A reader kept
// idle (a slow subscriber's tail between refills, a paused replay) cost thousands of wake-ups
// a second.
#[test]
fn a_mapped_readers_helper_sleeps_while_its_reader_is_idle() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) < 2 {
        println!("SKIPPED: one core, so readers start no helper");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = SegmentedWalConfig::new(dir.path());
    config.segment_bytes_target = 16 << 20;
    config.direct_io = false;
    let wal = SegmentedWal::open(config).unwrap();
    let payload = vec![7u8; 4000];
    let records: Vec<Record<'_>> = (0..64).map(|_| Record::new(RecordType::optional(0x100), &payload)).collect();
    while wal.segments().len() < 2 {
        wal.append_batch(&records).unwrap();
        wal.sync().unwrap();
    }
    let mut reader = wal.read_mapped(Lsn::FIRST).unwrap();
    reader.next().unwrap().unwrap();
    // The helper checks as far ahead of the idle reader as it may (8 MiB), then waits.
    std::thread::sleep(Duration::from_millis(100));
    let before = wake_ups("nodedb-wal-chec");
    assert_eq!(before.len(), 1, "one helper for the mapped segment");
    std::thread::sleep(Duration::from_millis(200));
    let after = wake_ups("nodedb-wal-chec");
    assert!(after[0] - before[0] <= 2, "{} wake-ups of the helper of an idle reader", after[0] - before[0]);
    // Read on past where it waits, and let go: it goes on, then ends.
    assert_eq!(reader.by_ref().take(3000).filter(Result::is_ok).count(), 3000);
    drop(reader);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !wake_ups("nodedb-wal-chec").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the helper outlived its reader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads of this process the crate started (by the names it gives them). A thread names
/// itself once it runs, and a helper ends just after its reader lets go: see [`settles`].
fn wal_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().filter_map(|e| Some(e.ok()?.path()));
    tasks.filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.starts_with("nodedb-wal"))).count()
}

/// Whether `f` holds within a few seconds.
fn settles(f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

#[test]
fn readers_tails_replays_and_failed_or_poisoned_opens_give_back_descriptors_and_threads() {
    use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    use nodedb_wal::{FsStorage, ReadOnlyWal, WalError, segment};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let mut config = SegmentedWalConfig::new(dir.path());
    config.segment_bytes_target = 4 << 20;
    config.allow_buffered_fallback = true;
    // Sealed segments of 4 MiB: large enough for every helper thread a reader may start.
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let payload = vec![7u8; 4000];
    let records: Vec<Record<'_>> = (0..64).map(|_| Record::new(RecordType::optional(0x100), &payload)).collect();
    while wal.segments().len() < 4 {
        wal.append_batch(&records).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let (fds, threads) = (fds_under(dir.path()), 1);
    let given_back = |what: &str| {
        let holds = || fds_under(dir.path()) == fds && wal_threads() == threads;
        assert!(settles(holds), "{what}: {} descriptors, {} threads", fds_under(dir.path()), wal_threads());
    };
    given_back("the open log");
    for from in [Lsn(1), Lsn(1500)] {
        let mut reader = wal.read_from(from).unwrap();
        reader.by_ref().take(10).for_each(|r| drop(r.unwrap()));
        drop(reader);
        given_back("read_from");
        let mut reader = wal.read_mapped(from).unwrap();
        reader.by_ref().take(10).for_each(|r| drop(r.unwrap()));
        drop(reader);
        given_back("read_mapped");
        let mut lazy = wal.lazy_reader(from).unwrap();
        (0..10).for_each(|_| assert!(lazy.next_header().unwrap().is_some()));
        drop(lazy);
        given_back("lazy_reader");
        let mut tail = wal.tail(from);
        (0..10).for_each(|_| drop(tail.next_timeout(Duration::from_secs(5)).unwrap().unwrap()));
        drop(tail);
        given_back("tail");
        let mut applied = 0;
        let stop = |_: nodedb_wal::RecordView<'_>| {
            applied += 1;
            if applied < 500 { Ok(()) } else { Err(WalError::EmptyGroup) }
        };
        assert!(wal.replay_parallel(from, 4, stop).is_err());
        given_back("replay_parallel stopped by apply");
        let look = ReadOnlyWal::open(dir.path(), None).unwrap();
        look.read_mapped(from).unwrap().take(10).for_each(|r| drop(r.unwrap()));
        drop(look);
        given_back("a read-only look");
    }
    // A second open beside the first, then the log poisoned by a failed sync and dropped.
    assert!(matches!(SegmentedWal::open(config.clone()), Err(WalError::Locked { .. })));
    given_back("a refused open");
    let newest = wal.segments().last().unwrap().id;
    drop(wal);
    let (fds, threads) = (0, 0);
    let given_back = |what: &str| {
        let holds = || fds_under(dir.path()) == fds && wal_threads() == threads;
        assert!(settles(holds), "{what}: {} descriptors, {} threads", fds_under(dir.path()), wal_threads());
    };
    given_back("the closed log");
    let faulty = FaultyStorage::new(FsStorage::new());
    let wal = SegmentedWal::open_with(faulty.clone(), config.clone()).unwrap();
    faulty.fail_from(FaultOp::SyncData, 0, EIO);
    assert!(wal.append_durable(Record::new(RecordType::optional(0x100), b"x")).is_err());
    drop(wal);
    given_back("a poisoned log");
    // Opens that fail half-way: at the seal, the manifest, the directory syncs.
    for op in [FaultOp::Write, FaultOp::SyncData, FaultOp::SetLen, FaultOp::SyncDir] {
        for after in 0..3 {
            let faulty = FaultyStorage::new(FsStorage::new());
            faulty.fail_once(op, after, EIO);
            drop(SegmentedWal::open_with(faulty, config.clone()));
            given_back(&format!("an open whose {op:?} failed after {after}"));
        }
    }
    // Damage in a sealed segment: the open and a look refuse it.
    let path = segment::path(dir.path(), newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(SegmentedWal::open(config).is_err());
    given_back("an open that found damage");
    assert!(ReadOnlyWal::open(dir.path(), None).is_err());
    given_back("a look that found damage");
}

/// The mappings of this process (lines of `/proc/self/maps`).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

// Found by review: a secret's pages (a key, a cipher's key schedule: one per segment a reader
// or the flusher opens) were left out of core dumps and stayed so once freed, so each freed
// secret left its page a mapping of its own amid the heap. A process making secrets for months
// runs towards `vm.max_map_count` (65530 by default), past which no memory can be mapped: 500
// secrets made and dropped between other allocations left ~950 more mappings each time.
#[test]
fn secrets_made_and_dropped_leave_no_mappings_behind() {
    use nodedb_wal::storage::memlock::SecretPage;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = mappings();
    let mut others = Vec::new();
    for round in 0..5 {
        // Secrets between allocations that outlive them, as a reader's ciphers lie among the
        // records it hands out.
        let secrets: Vec<SecretPage> = (0..500)
            .map(|i| {
                others.push(vec![i as u8; 3000 + round * 8]);
                SecretPage::new(32)
            })
            .collect();
        drop(secrets);
    }
    let after = mappings();
    assert!(after < before + 50, "{before} mappings before, {after} after 2500 secrets came and went");
}
