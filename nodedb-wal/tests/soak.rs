//! A log lives for months: opened once, it appends, rolls, rotates keys, truncates and serves
//! readers many thousands of times, and a process may open and close logs as often. What it
//! holds must depend on what is in flight, never on how long it has lived: every file
//! descriptor, thread, locked page and heap byte a cycle takes must be given back by the end of
//! the cycle. Each test runs a warm-up, measures, runs many more cycles and measures again:
//! descriptors (every one of the process, not only those under the log: an io_uring or an
//! eventfd counts too), the threads the crate started, `VmLck` (every `mlock` of a key or a
//! cipher's schedule undone by a `munlock`), and the live bytes of the heap, counted by a global
//! allocator over every thread. Counts, never timings. One test at a time: each counts the
//! whole process.
//!
//! And limits: the work an open does grows with the segments it finds, not their square; and
//! a group or batch larger than the machine's memory, or a record the process has no room to
//! copy, is refused with a typed error, where its buffer's allocation aborted the process; and keys past `RLIMIT_MEMLOCK` (as `nobody`, in a
//! child; root's `CAP_IPC_LOCK` ignores the limit) go on unlocked, with every lock undone.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Gated;
use nodedb_wal::storage::{OpenMode, Storage};
use nodedb_wal::{FsStorage, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, Tail, WalError};

/// Counts the heap's live bytes, on every thread.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

#[expect(unsafe_code, reason = "a global allocator is an unsafe trait; this one forwards to the system's")]
// SAFETY: every call goes to `System` unchanged; the counter is only arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as allocated by `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as allocated by `System` through this allocator, with the caller's new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Every test of this file counts what the whole process holds: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What the process holds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    fds: usize,
    threads: usize,
    locked_kib: u64,
}

/// Every descriptor of the process; the threads the crate started (it names each
/// `nodedb-wal-...`: the test harness's own come and go as tests start and end).
fn held() -> Held {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().filter_map(|e| Some(e.ok()?.path()));
    let named = |task: &std::path::PathBuf| std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.starts_with("nodedb-wal"));
    let threads = tasks.filter(named).count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let locked_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .expect("VmLck in /proc/self/status");
    Held { fds, threads, locked_kib }
}

/// Waits (a few seconds at most) for `held()` to be `want`: a reader's helper thread ends just
/// after its reader lets go. Returns what it last saw.
fn settle_to(want: Held) -> Held {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = held();
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn ty() -> RecordType {
    RecordType::optional(0x100)
}

fn config(dir: &Path, ring: &Arc<KeyRing>) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    config.segment_bytes_target = 64 * 1024;
    config.allow_buffered_fallback = true;
    config.key_ring = Some(Arc::clone(ring));
    config
}

/// The log kept open: on real files, with a gate to hold its flusher (see [`fill_the_pool`]).
type Live = SegmentedWal<Gated<FsStorage>>;

/// Makes every buffer of the log's pool (`batch_buffers`, two here) at once, so that none is
/// first made while the heap is measured. The pool makes a buffer when an append finds none
/// free, which depends on how far the flusher lags: on a busy machine a cycle could need one
/// the warm-up never did. With the flusher held at the gate after writing one batch, the
/// next append needs the other buffer.
fn fill_the_pool(wal: &Live) {
    let gate = &wal.storage().gate;
    gate.shut();
    let held = wal.append(Record::new(ty(), b"held")).unwrap();
    wal.request_sync(held).unwrap();
    gate.wait_held();
    wal.append(Record::new(ty(), b"beside it")).unwrap();
    gate.open();
    wal.sync().unwrap();
}

/// Reads a few records through every reader of `wal`, and drops each mid-segment.
fn read_a_little(wal: &Live, from: Lsn) {
    wal.read_from(from).unwrap().take(5).for_each(|r| drop(r.unwrap()));
    wal.read_mapped(from).unwrap().take(5).for_each(|r| drop(r.unwrap()));
    let mut lazy = wal.lazy_reader(from).unwrap();
    for _ in 0..5 {
        if lazy.next_header().unwrap().is_some() {
            drop(lazy.payload().unwrap());
        }
    }
    drop(lazy);
    let mut tail = wal.tail(from);
    drop(tail.next_timeout(Duration::from_secs(5)).unwrap().unwrap());
    drop(tail);
    let mut applied = 0;
    let stop = |_: nodedb_wal::RecordView<'_>| {
        applied += 1;
        if applied < 20 { Ok(()) } else { Err(WalError::EmptyGroup) }
    };
    let _ = wal.replay_parallel(from, 2, stop);
}

/// One cycle of a log kept open: appends that roll, a rotation every fourth cycle, a checkpoint,
/// the keys nothing needs retired, readers made and dropped, and a subscriber's tail that
/// lives as long as the log and follows it. Returns the next key id.
fn live_cycle(wal: &Live, follower: &mut Tail<'_, Gated<FsStorage>>, ring: &KeyRing, cycle: u32, mut next_key: u32) -> u32 {
    let payload = vec![cycle as u8; 700];
    let records: Vec<Record<'_>> = (0..40).map(|_| Record::new(ty(), &payload)).collect();
    wal.append_batch(&records).unwrap();
    let durable = wal.sync().unwrap();
    read_a_little(wal, wal.oldest_lsn());
    while follower.cursor() <= durable {
        drop(follower.next_timeout(Duration::from_secs(5)).unwrap().expect("durable"));
    }
    // Caught up: a look that finds nothing new.
    assert!(follower.next_timeout(Duration::ZERO).unwrap().is_none());
    if cycle.is_multiple_of(4) {
        ring.insert(next_key, SecureKey::generate()).unwrap();
        ring.set_active(next_key).unwrap();
        next_key += 1;
    }
    // A future dropped after it registered its waker, and one waited on: neither may leave its
    // registration behind.
    let lsn = wal.append(Record::new(ty(), b"pending")).unwrap();
    let mut dropped = Box::pin(wal.durable(lsn).unwrap());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(dropped.as_mut().poll(&mut cx).is_pending(), "nobody asked for a sync yet");
    drop(dropped);
    common::block_on(wal.durable(lsn).unwrap()).unwrap();
    wal.truncate_before(durable).unwrap();
    let active = ring.active().map(|(id, _)| id);
    for id in ring.key_ids().into_iter().filter(|&id| Some(id) != active) {
        match wal.retire_key(id) {
            Ok(()) | Err(WalError::KeyStillNeeded { .. }) => {}
            Err(err) => panic!("retiring key {id}: {err}"),
        }
    }
    next_key
}

#[test]
fn a_log_kept_open_through_rolls_rotations_truncations_and_readers_holds_no_more_as_it_ages() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    let mut config = config(dir.path(), &ring);
    config.batch_buffers = 2;
    config.batch_bytes_max = 64 * 1024;
    let wal = SegmentedWal::open_with(Gated::new(FsStorage::new()), config).unwrap();
    fill_the_pool(&wal);
    // The log's flusher; readers' helpers come and go.
    let threads = 1;
    let mut follower = wal.tail(Lsn::FIRST);
    let mut next_key = 2;
    let mut cycles = |range: std::ops::Range<u32>, next_key: &mut u32| {
        for cycle in range {
            *next_key = live_cycle(&wal, &mut follower, &ring, cycle, *next_key);
        }
    };
    cycles(0..30, &mut next_key);
    // Measured once the last reader's helpers have ended, and with them what they held.
    let warm = settle_to(Held { threads, ..held() });
    assert_eq!(warm.threads, threads, "the helpers of dropped readers end");
    let (segments, keys, bytes) = (wal.segments().len(), ring.key_ids().len(), live_bytes());
    cycles(30..270, &mut next_key);
    let aged = settle_to(warm);
    assert_eq!(aged, warm, "descriptors, threads and locked memory after 240 more cycles");
    assert!(wal.segments().len() <= segments + 1, "{} segments listed, {segments} before", wal.segments().len());
    assert!(ring.key_ids().len() <= keys + 1, "{:?} keys held, {keys} before", ring.key_ids());
    // The ring remembers each retired id (4 bytes in a set): 60 more of them take about 1 KiB
    // (the same every run, once the pool is full and the helpers have ended); 64 bytes kept
    // per cycle would pass this.
    let grown = live_bytes() - bytes;
    assert!(grown < 8 * 1024, "the heap grew by {grown} bytes over 240 cycles");
}

/// How one life of a log ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Close,
    Drop,
    Poisoned,
}

/// One life of an encrypted log: opened, written until it rolls, truncated, looked at and
/// salvaged beside, refused a second open, and ended as `end` says.
fn one_life(dir: &Path, ring: &Arc<KeyRing>, end: End) {
    use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};

    let faulty = FaultyStorage::new(FsStorage::new());
    let wal = SegmentedWal::open_with(faulty.clone(), config(dir, ring)).unwrap();
    assert!(matches!(SegmentedWal::open(config(dir, ring)), Err(WalError::Locked { .. })));
    let payload = vec![9u8; 3000];
    let records: Vec<Record<'_>> = (0..30).map(|_| Record::new(ty(), &payload)).collect();
    wal.append_batch(&records).unwrap();
    let durable = wal.sync().unwrap();
    wal.truncate_before(durable).unwrap();
    let look = ReadOnlyWal::open(dir, Some(Arc::clone(ring))).unwrap();
    look.read_from(look.recovery_info().first_lsn).unwrap().take(3).for_each(|r| drop(r.unwrap()));
    look.read_mapped(look.recovery_info().first_lsn).unwrap().take(3).for_each(|r| drop(r.unwrap()));
    drop(look);
    match end {
        End::Close => wal.close().unwrap(),
        End::Drop => drop(wal),
        End::Poisoned => {
            faulty.fail_from(FaultOp::SyncData, 0, EIO);
            assert!(wal.append_durable(Record::new(ty(), b"lost")).is_err());
            drop(wal);
        }
    }
    let copy = dir.with_extension("copy");
    nodedb_wal::salvage::salvage(dir, &copy, Some(ring)).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    // An open that fails half-way (its seal or the manifest's sync).
    let failing = FaultyStorage::new(FsStorage::new());
    failing.fail_once(FaultOp::SyncData, 0, EIO);
    drop(SegmentedWal::open_with(failing, config(dir, ring)));
}

#[test]
fn logs_opened_and_ended_again_and_again_leave_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("wal");
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    let ends = [End::Close, End::Drop, End::Poisoned];
    let threads = 0;
    for life in 0..9 {
        one_life(&dir, &ring, ends[life % 3]);
    }
    // Measured once every thread of the logs and their readers has ended.
    let warm = settle_to(Held { threads, ..held() });
    assert_eq!(warm.threads, threads, "the threads of ended logs end");
    let bytes = live_bytes();
    for life in 9..90 {
        one_life(&dir, &ring, ends[life % 3]);
    }
    let aged = settle_to(warm);
    assert_eq!(aged, warm, "descriptors, threads and locked memory after 81 more lives");
    let grown = live_bytes() - bytes;
    assert!(grown < 16 * 1024, "the heap grew by {grown} bytes over 81 lives");
}

/// A storage that counts the listings and file opens made through it.
#[derive(Clone, Debug)]
struct Counted<S> {
    inner: S,
    lists: Arc<AtomicU64>,
    opens: Arc<AtomicU64>,
}

impl<S: Storage> Storage for Counted<S> {
    type File = S::File;
    type Lock = S::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<S::File> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        self.inner.open(path, mode)
    }
}

/// The listings, opens and bytes read by an open (and a read of every record) of a closed log
/// of `segments` small segments on the simulated disk.
fn open_work(segments: usize) -> [u64; 3] {
    use nodedb_wal::SimStorage;
    use nodedb_wal::storage::FaultConfig;
    let sim = SimStorage::new(5, FaultConfig::default());
    let mut config = SegmentedWalConfig::new("/wal");
    config.alignment = 512;
    config.segment_bytes_target = 2048;
    config.zero_fill_bytes = 0;
    config.direct_io = false;
    let wal = SegmentedWal::open_with(sim.clone(), config.clone()).unwrap();
    let payload = [3u8; 600];
    while wal.segments().len() < segments {
        wal.append_durable(Record::new(ty(), &payload)).unwrap();
    }
    wal.close().unwrap();
    let counted = Counted { inner: sim.clone(), lists: Arc::default(), opens: Arc::default() };
    let read_before = sim.bytes_read();
    let wal = SegmentedWal::open_with(counted.clone(), config).unwrap();
    assert_eq!(wal.segments().len(), segments);
    let records = wal.read_from(wal.oldest_lsn()).unwrap().count() as u64;
    assert_eq!(records, wal.next_lsn().0 - wal.oldest_lsn().0);
    drop(wal);
    [counted.lists.load(Ordering::Relaxed), counted.opens.load(Ordering::Relaxed), sim.bytes_read() - read_before]
}

#[test]
fn opening_a_log_of_thousands_of_segments_does_work_in_proportion_to_them() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let few = open_work(500);
    let many = open_work(5000);
    let [lists, opens, bytes] = [0, 1, 2].map(|i| (few[i], many[i]));
    assert_eq!(lists.0, lists.1, "listings of the directory: {lists:?}");
    assert!(opens.1 <= 11 * opens.0, "file opens for 500 and 5000 segments: {opens:?}");
    assert!(bytes.1 <= 11 * bytes.0, "bytes read for 500 and 5000 segments: {bytes:?}");
}

/// The variable that makes the child test below run, naming the log directory.
const HUGE_GROUP_DIR: &str = "NODEDB_WAL_SOAK_HUGE_GROUP_DIR";

/// Runs in a child: appends a group, then a batch, of 1 TiB (16,384 records of 64 MiB, all one
/// buffer of the caller's) and prints what each append returned, then whether the log goes on.
#[test]
fn child_appends_a_group_larger_than_memory() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Ok(dir) = std::env::var(HUGE_GROUP_DIR) else { return };
    let mut config = SegmentedWalConfig::new(&dir);
    config.allow_buffered_fallback = true;
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let first = wal.append_durable(Record::new(ty(), b"before")).unwrap();
    let payload = vec![5u8; config.payload_bytes_max];
    let records: Vec<Record<'_>> = (0..16_384).map(|_| Record::new(ty(), &payload)).collect();
    for (what, appended) in [("group", wal.append_group(&records)), ("batch", wal.append_batch(&records))] {
        match appended {
            Err(err) => println!("{what} refused: {err:?}"),
            Ok(lsns) => println!("{what} not refused: {lsns:?}"),
        }
    }
    println!("next lsn: {}", wal.next_lsn().0 - first.0);
    let after = wal.append_durable(Record::new(ty(), b"after")).unwrap();
    drop(wal);
    let wal = SegmentedWal::open(config).unwrap();
    let payloads: Vec<Vec<u8>> = wal.read_from(first).unwrap().map(|r| r.unwrap().payload.to_vec()).collect();
    println!("after the refusal: {} {:?}", after.0 - first.0, payloads);
}

// Found by review: the buffer of a group (or batch) is one allocation of its whole size,
// and one the system cannot give aborted the process (`handle_alloc_error`), taking every
// other thread of the database down with it, for a call the log could simply refuse: nothing
// of the group had been written or given an LSN yet.
#[test]
fn a_group_larger_than_memory_is_refused_with_a_typed_error_and_the_log_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // With overcommit always on (1), the kernel would hand out the terabyte and the encoding
    // would then exhaust the machine; the heuristic (0) and strict (2) modes refuse it.
    let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    if overcommit.trim() == "1" {
        println!("SKIPPED: vm.overcommit_memory is 1, which would grant a terabyte");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = child_test("child_appends_a_group_larger_than_memory", HUGE_GROUP_DIR, &tmp.path().join("wal"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child ended with {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("group refused: OutOfMemory {"), "{stdout}");
    assert!(stdout.contains("batch refused: OutOfMemory {"), "{stdout}");
    assert!(stdout.contains("next lsn: 1\n"), "the refused group and batch took no LSN: {stdout}");
    assert!(stdout.contains(r#"after the refusal: 1 [[98, 101, 102, 111, 114, 101], [97, 102, 116, 101, 114]]"#), "{stdout}");
}

/// The variable that makes the child test below run, naming the log directory.
const MEMLOCK_DIR: &str = "NODEDB_WAL_SOAK_MEMLOCK_DIR";

/// Locked memory of this process, in KiB.
fn locked_kib() -> u64 {
    held().locked_kib
}

/// Runs in a child, as `nobody`, with 16 pages it may lock: an encrypted log rotates through
/// 48 keys, all kept in its ring, with readers (a cipher each per segment) beside it; then the
/// old keys retire and everything is dropped. Prints how many keys were locked, the most
/// memory locked, and what stays locked at the end.
#[test]
fn child_rotates_through_more_keys_than_it_may_lock() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Ok(dir) = std::env::var(MEMLOCK_DIR) else { return };
    let page = rustix::param::page_size() as u64;
    let limit = rustix::process::Rlimit { current: Some(16 * page), maximum: Some(16 * page) };
    rustix::process::setrlimit(rustix::process::Resource::Memlock, limit).expect("lowering a limit is always allowed");
    let ring = Arc::new(KeyRing::new());
    let wal_config = config(Path::new(&dir), &ring);
    let (mut locked, mut most_kib) = (0, 0);
    let payload = vec![4u8; 2000];
    let records: Vec<Record<'_>> = (0..8).map(|_| Record::new(ty(), &payload)).collect();
    let wal = {
        let key = SecureKey::generate();
        locked += usize::from(key.is_locked());
        ring.insert(1, key).unwrap();
        ring.set_active(1).unwrap();
        SegmentedWal::open(wal_config.clone()).unwrap()
    };
    for id in 2..=48 {
        let key = SecureKey::generate();
        locked += usize::from(key.is_locked());
        ring.insert(id, key).unwrap();
        ring.set_active(id).unwrap();
        wal.append_batch(&records).unwrap();
        wal.sync().unwrap();
        let readers = (wal.read_mapped(Lsn::FIRST).unwrap(), wal.read_from(Lsn::FIRST).unwrap());
        let counted = readers.0.count() + readers.1.count();
        assert_eq!(counted as u64, 2 * (wal.next_lsn().0 - 1), "every record, under every key");
        most_kib = most_kib.max(locked_kib());
    }
    wal.truncate_before(wal.sync().unwrap()).unwrap();
    for id in 1..48 {
        wal.retire_key(id).unwrap();
    }
    wal.close().unwrap();
    let reopened = SegmentedWal::open(wal_config).unwrap();
    let kept = reopened.read_from(reopened.oldest_lsn()).unwrap().map(|r| r.unwrap().payload.len()).sum::<usize>();
    assert_eq!(kept, 8 * payload.len(), "the newest segment's batch, under the last key");
    drop((reopened, ring));
    println!("keys locked: {locked} of 48; most locked: {most_kib} KiB; locked at the end: {} KiB", locked_kib());
}

// Keys and ciphers lock their pages where `RLIMIT_MEMLOCK` allows and go on unlocked past it
// (the documented fallback: `SecureKey::is_locked`); a process that rotates keys for months
// runs into its limit. Every key and cipher still works past it, locking never exceeds the
// limit nor fails a call, and once they are gone nothing stays locked: each `mlock` was
// matched by a `munlock`, and none was made for a page left unlocked.
#[test]
fn keys_past_the_memlock_limit_go_on_unlocked_and_every_lock_is_undone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(why) = common::can_change_user() {
        println!("SKIPPED: cannot run a child as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = common::child_test_as_nobody("child_rotates_through_more_keys_than_it_may_lock", MEMLOCK_DIR, &tmp.path().join("wal"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| Some(&l[l.find("keys locked: ")?..])).unwrap_or_else(|| panic!("{stdout}"));
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    let [locked, 48, most_kib, end_kib] = numbers[..] else { panic!("{line}") };
    let page_kib = rustix::param::page_size() as u64 / 1024;
    assert!(locked > 0 && locked < 48, "some keys locked, then the limit was reached: {line}");
    assert!(most_kib <= 16 * page_kib, "never more than the limit: {line}");
    assert_eq!(end_kib, 0, "every lock undone: {line}");
}

/// The variable that makes the child test below run, naming the directory of its logs.
const ADDRESS_SPACE_DIR: &str = "NODEDB_WAL_SOAK_ADDRESS_SPACE_DIR";

/// Runs in a child whose address space may grow by 768 MiB: holds a payload of 512 MiB, and
/// appends it once to a `WalWriter` and once to a log, neither of which has room for a copy
/// of it; prints what each append returned and what each log holds after.
#[test]
fn child_appends_a_record_it_has_no_room_to_copy() {
    use nodedb_wal::{WalWriter, WalWriterConfig};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Ok(dir) = std::env::var(ADDRESS_SPACE_DIR) else { return };
    let dir = Path::new(&dir);
    let mut config = SegmentedWalConfig::new(dir.join("log"));
    config.allow_buffered_fallback = true;
    config.payload_bytes_max = 1 << 30;
    let wal = SegmentedWal::open(config.clone()).unwrap();
    std::fs::create_dir(dir.join("writer")).unwrap();
    let writer_config = WalWriterConfig { direct_io: false, ..WalWriterConfig::default() };
    let storage = FsStorage::new();
    let mut writer = WalWriter::create_with(storage, &dir.join("writer"), nodedb_wal::SegmentId(1), Lsn::FIRST, writer_config).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let size_kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmSize:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap();
    let room = rustix::process::Rlimit { current: Some(size_kib * 1024 + (768 << 20)), maximum: None };
    rustix::process::setrlimit(rustix::process::Resource::As, room).expect("lowering a limit is always allowed");
    let payload = vec![0u8; 512 << 20];
    let huge = Record::new(ty(), &payload);
    writer.append(Record::new(ty(), b"before")).unwrap();
    println!("writer: {:?}", writer.append(huge).map_err(|e| format!("{e:?}")));
    writer.append(Record::new(ty(), b"after")).unwrap();
    writer.finish().unwrap();
    wal.append(Record::new(ty(), b"before")).unwrap();
    println!("log: {:?}", wal.append(huge).map_err(|e| format!("{e:?}")));
    wal.append_durable(Record::new(ty(), b"after")).unwrap();
    drop((wal, payload));
    for name in ["writer", "log"] {
        let mut config = config.clone();
        config.dir = dir.join(name);
        let wal = SegmentedWal::open(config).unwrap();
        let records: Vec<(u64, Vec<u8>)> =
            wal.read_from(Lsn::FIRST).unwrap().map(|r| r.map(|r| (r.lsn.0, r.payload.to_vec())).unwrap()).collect();
        println!("{name} holds: {records:?}");
    }
}

// Found by review, as for groups above: one record larger than the writer's buffer (a
// `WalWriter`'s, or a log's with `payload_bytes_max` raised) gets a buffer of its own size,
// whose failed allocation aborted the process.
#[test]
fn a_record_the_process_has_no_room_to_copy_is_refused_and_the_log_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let out = child_test("child_appends_a_record_it_has_no_room_to_copy", ADDRESS_SPACE_DIR, tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child ended with {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("writer: Err(\"OutOfMemory {"), "{stdout}");
    assert!(stdout.contains("log: Err(\"OutOfMemory {"), "{stdout}");
    let both = r#"[(1, [98, 101, 102, 111, 114, 101]), (2, [97, 102, 116, 101, 114])]"#;
    assert!(stdout.contains(&format!("writer holds: {both}")), "the refused record took no LSN: {stdout}");
    assert!(stdout.contains(&format!("log holds: {both}")), "the refused record took no LSN: {stdout}");
}

/// Runs the test `name` of this file in a child process of its own, with `var` set to `dir`.
fn child_test(name: &str, var: &str, dir: &Path) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, dir)
        .output()
        .unwrap()
}
