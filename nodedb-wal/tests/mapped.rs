//! Readers on the real file system: the memory-mapped and lending readers return exactly what
//! the `pread` reader returns, plaintext and encrypted; a damaged byte in a mapped segment is a
//! typed error; a live tail that catches up through maps still delivers every record once, in
//! order, across rolls; a cold headers-only scan (which prefetches by guessing) finds every
//! header; a read-only view beside a writer that rolls and truncates opens and reads what the
//! writer holds.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Disk, append, append_synced, assert_records, config, locate, payload, seg};
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage};
use nodedb_wal::{
    CorruptionKind, FsStorage, KeyRing, Lsn, ReadOnlyWal, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, WalRecord,
};

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(4, SecureKey::from_bytes(&mut [9; 32])))
}

fn open(dir: &std::path::Path, ring: Option<Arc<KeyRing>>) -> SegmentedWal {
    let config = SegmentedWalConfig { key_ring: ring, ..config(dir) };
    SegmentedWal::open(config).unwrap()
}

/// Segments large enough that a mapped reader has a helper check frames ahead of it
/// (`segment::ahead`, from 1 MiB on), and the records that fill three of them.
const BIG_SEGMENT: u64 = 2 << 20;
const BIG_RECORDS: u64 = 36_000;

fn open_big(dir: &std::path::Path, ring: Option<Arc<KeyRing>>) -> SegmentedWal {
    let config = SegmentedWalConfig { key_ring: ring, segment_bytes_target: BIG_SEGMENT, batch_bytes_max: 256 << 10, ..config(dir) };
    SegmentedWal::open(config).unwrap()
}

/// As `open_big`, with every frame checked by the reader itself.
fn open_big_unhelped(dir: &std::path::Path, ring: Option<Arc<KeyRing>>) -> SegmentedWal {
    let config = SegmentedWalConfig { check_ahead: false, key_ring: ring, segment_bytes_target: BIG_SEGMENT, ..config(dir) };
    SegmentedWal::open(config).unwrap()
}

fn mapped_reading_matches_pread_reading(ring: Option<Arc<KeyRing>>) {
    mapped_reading_matches_pread_reading_in(ring.clone(), open, 400);
    mapped_reading_matches_pread_reading_in(ring.clone(), open_big, BIG_RECORDS);
    mapped_reading_matches_pread_reading_in(ring, open_big_unhelped, BIG_RECORDS);
}

fn mapped_reading_matches_pread_reading_in(
    ring: Option<Arc<KeyRing>>,
    open: fn(&std::path::Path, Option<Arc<KeyRing>>) -> SegmentedWal,
    records: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), ring.clone());
    append_synced(&wal, 1, records);
    assert!(wal.segments().iter().filter(|s| s.sealed).count() >= 3, "several sealed segments are mapped");

    let read = |from| -> Vec<WalRecord> { wal.read_from(from).unwrap().collect::<Result<_, _>>().unwrap() };
    let expected = read(Lsn(1));
    assert_eq!(expected.len() as u64, records);
    let mapped: Vec<_> = wal.read_mapped(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(mapped, expected);
    let from_middle: Vec<_> = wal.read_mapped(Lsn(123)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(from_middle, read(Lsn(123)));

    // The lending reader hands out the same records, without a copy for plaintext ones.
    let mut lent = Vec::new();
    let mut reader = wal.read_mapped(Lsn(1)).unwrap();
    while let Some(view) = reader.next_view() {
        lent.push(view.unwrap().to_record());
    }
    assert_eq!(lent, expected);
    wal.close().unwrap();

    let view = ReadOnlyWal::open(dir.path(), ring.clone()).unwrap();
    let read_only: Vec<_> = view.read_mapped(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(read_only, expected);
    if ring.is_none() {
        assert_records(&expected, 1, records);
    }
}

#[test]
fn mapped_reading_returns_exactly_what_pread_reading_returns_plaintext() {
    mapped_reading_matches_pread_reading(None);
}

#[test]
fn mapped_reading_returns_exactly_what_pread_reading_returns_encrypted() {
    mapped_reading_matches_pread_reading(Some(ring()));
}

#[test]
fn a_damaged_byte_in_a_mapped_segment_is_a_corruption_error() {
    a_damaged_byte_is_a_corruption_error(open, 200, 50);
}

/// In a segment large enough for a checking helper, the damage is still found at the same
/// record, and nothing at or past it is handed out, whether the helper or the reader reached
/// it first (a matter of timing here; `segment::ahead`'s unit tests pin the helper's side).
#[test]
fn a_damaged_byte_deep_in_a_large_mapped_segment_is_a_corruption_error() {
    a_damaged_byte_is_a_corruption_error(open_big, BIG_RECORDS, 7_001);
}

fn a_damaged_byte_is_a_corruption_error(open: fn(&std::path::Path, Option<Arc<KeyRing>>) -> SegmentedWal, records: u64, damaged: u64) {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), None);
    append_synced(&wal, 1, records);
    wal.close().unwrap();
    // Opened before the damage, so that the reader meets it (opening would report it too).
    let view = ReadOnlyWal::open(dir.path(), None).unwrap();
    let disk = FsStorage::new();
    let (id, frame) = locate(&disk, dir.path(), damaged);
    let path = seg(dir.path(), id);
    let mut bytes = disk.read(&path);
    bytes[frame.offset as usize + frame.frame_len() as usize - 1] ^= 0x40;
    disk.write(&path, &bytes);

    let mut reader = view.read_mapped(Lsn(1)).unwrap();
    let mut delivered = 0;
    let err = loop {
        match reader.next() {
            Some(Ok(record)) => {
                assert!(record.lsn < Lsn(damaged), "nothing at or past the damage is handed out");
                delivered += 1;
            }
            Some(Err(err)) => break err,
            None => panic!("the damaged record was not noticed"),
        }
    };
    assert_eq!(delivered, damaged - 1);
    assert!(matches!(err, WalError::Corruption { kind: CorruptionKind::BadFrame, .. }), "{err:?}");
    assert!(reader.next().is_none(), "a reader stops at its first error");
}

#[test]
fn a_live_tail_catching_up_through_maps_delivers_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), Some(ring()));
    const BACKLOG: u64 = 300;
    const LIVE: u64 = 1500;
    append_synced(&wal, 1, BACKLOG);
    std::thread::scope(|s| {
        s.spawn(|| {
            for lsn in BACKLOG + 1..=BACKLOG + LIVE {
                append(&wal, lsn);
                if lsn % 29 == 0 {
                    wal.sync().unwrap();
                }
            }
            wal.sync().unwrap();
        });
        let mut tail = wal.tail(Lsn::FIRST);
        let mut seen = Vec::new();
        while seen.len() < (BACKLOG + LIVE) as usize {
            let record = tail.next_timeout(Duration::from_secs(10)).unwrap().expect("the writer goes on");
            assert!(record.lsn <= wal.durable_lsn(), "{} delivered before it was durable", record.lsn);
            seen.push(record);
        }
        let lsns: Vec<u64> = seen.iter().map(|r| r.lsn.0).collect();
        assert_eq!(lsns, (1..=BACKLOG + LIVE).collect::<Vec<_>>(), "every record once, in order");
        assert!(seen.iter().all(|r| r.payload == payload(r.lsn.0)), "payloads decrypted and intact");
        assert_eq!(tail.cursor(), Lsn(BACKLOG + LIVE + 1));
    });
    assert!(wal.segments().len() > 10, "the tail followed many rolls");
}

#[test]
fn a_cold_headers_only_scan_finds_every_header_and_the_payloads_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = SegmentedWalConfig { key_ring: Some(ring()), segment_bytes_target: 2 << 20, ..config(dir.path()) };
    let wal = SegmentedWal::open(config.clone()).unwrap();
    // Large records of changing sizes: the prefetch's guess of the next header is sometimes wrong.
    let sizes = |lsn: u64| 20_000 + (lsn % 7) as usize * 9_000;
    for lsn in 1..=120u64 {
        let payload = vec![lsn as u8; sizes(lsn)];
        wal.append(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), &payload)).unwrap();
    }
    wal.sync().unwrap();
    wal.close().unwrap();
    let wal = SegmentedWal::open(config).unwrap();
    assert!(wal.segments().len() >= 2, "sealed segments of many records each");
    // First through the header indexes of the segments the flusher sealed, then (indexes
    // removed) by scanning every segment, the prefetching path.
    let index_files = || {
        let names = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
        names.filter(|n| nodedb_wal::segment::parse_index(n).is_some()).count()
    };
    assert!(index_files() >= 1, "the flusher indexed the segments it sealed");
    for indexed in [true, false] {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !indexed && nodedb_wal::segment::parse_index(&name).is_some() {
                std::fs::remove_file(&path).unwrap();
                continue;
            }
            let file = std::fs::File::open(&path).unwrap();
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
        let mut lazy = wal.lazy_reader(Lsn(1)).unwrap();
        let mut seen = 0u64;
        while let Some(handle) = lazy.next_header().unwrap() {
            seen += 1;
            assert_eq!(handle.lsn, Lsn(seen));
            if seen.is_multiple_of(10) {
                assert_eq!(lazy.payload().unwrap(), vec![seen as u8; sizes(seen)], "payload of {seen}, indexed: {indexed}");
            }
        }
        assert_eq!(seen, 120, "indexed: {indexed}");
    }
    assert_eq!(index_files(), 0);
}

#[test]
fn a_read_from_the_page_cache_only_returns_the_bytes_a_plain_read_does() {
    use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = FsStorage::new().open(&path, OpenMode { create: false, write: false, direct: false, create_new: false }).unwrap();
    let mut plain = vec![0u8; 8192];
    assert_eq!(file.read_at(&mut plain, 4096).unwrap(), 8192);
    let mut cached = vec![0u8; 8192];
    // Just read, so cached. `None` only means "it would wait", or that the file system cannot
    // tell; ext4 and XFS can (RWF_NOWAIT on buffered reads), so there it must be the bytes.
    let got = file.read_cached_at(&mut cached, 4096).unwrap();
    let fs = rustix::fs::statfs(dir.path()).unwrap().f_type as i64;
    if [0xEF53, 0x5846_5342].contains(&fs) {
        assert_eq!(got, Some(8192), "a cached range on ext4 or XFS is read without waiting");
    }
    if let Some(n) = got {
        assert_eq!(n, 8192);
        assert_eq!(cached, plain);
    }
    assert_eq!(&plain[..], &bytes[4096..4096 + 8192]);
}

/// Runs `write(lsn)` for LSNs 1..=`last` on a writer thread while read-only views keep opening
/// beside it, each checked by `check(view, views)` (the number of views so far), until the
/// writer is done and at least one view was checked.
fn views_beside_a_writer(dir: &std::path::Path, last: u64, write: impl Fn(u64) + Send + Sync, mut check: impl FnMut(&ReadOnlyWal, usize)) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            (1..=last).for_each(&write);
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut views = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || views == 0 {
            let view = ReadOnlyWal::open(dir, None).unwrap_or_else(|e| panic!("view {views}: {e}"));
            check(&view, views);
            views += 1;
        }
    });
}

// Found by review of the manifest: a reader that listed the segments before a roll and read the
// manifest after it would have seen a newest segment the listing did not hold.
#[test]
fn a_read_only_view_beside_a_rolling_writer_never_reports_a_missing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), None);
    let write = |lsn| {
        append(&wal, lsn);
        if lsn % 7 == 0 || lsn == 3000 {
            wal.sync().unwrap();
        }
    };
    views_beside_a_writer(dir.path(), 3000, write, |view, views| {
        let last = view.recovery_info().last_lsn;
        let count = view.read_from(Lsn(1)).unwrap().count() as u64;
        assert_eq!(count, last.0, "view {views} reads what it reports");
    });
    assert!(wal.segments().len() > 20, "the writer rolled many times");
}

/// Beside a writer that truncates (and so reuses segment files), a read-only view still opens:
/// a segment taken while it looks is looked at again, never reported as damage. Its readers
/// hand out dense records from where the view starts, or stop with `SegmentTruncated` where
/// truncation overtook them.
#[test]
fn a_read_only_view_beside_a_truncating_writer_opens_and_reads_dense_records() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), None);
    let write = |lsn| {
        append(&wal, lsn);
        if lsn % 50 == 0 {
            let durable = wal.sync().unwrap();
            wal.truncate_before(Lsn(durable.0.saturating_sub(300))).unwrap();
        }
    };
    views_beside_a_writer(dir.path(), 4000, write, |view, views| {
        let info = view.recovery_info().clone();
        let mut expected = info.first_lsn;
        for record in view.read_from(info.first_lsn).unwrap() {
            match record {
                Ok(record) => {
                    assert_eq!(record.lsn, expected, "view {views}: dense records");
                    expected = expected.next();
                }
                Err(WalError::SegmentTruncated { .. }) => break,
                Err(e) => panic!("view {views}: {e}"),
            }
        }
        assert!(expected.0 <= info.last_lsn.0 + 1, "view {views}: nothing past what it reported");
    });
    assert!(wal.segments()[0].first_lsn > Lsn(3000), "the writer truncated as it went");
}

/// What [`AfterListing`] runs once.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// A storage whose next listing of a directory runs `hook` once, after the names are read:
/// the moment a read-only look has listed the segments and not yet read `FLOOR`.
#[derive(Clone)]
struct AfterListing {
    inner: SimStorage,
    hook: Hook,
}

impl Storage for AfterListing {
    type File = <SimStorage as Storage>::File;
    type Lock = <SimStorage as Storage>::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        let names = self.inner.list(dir)?;
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        Ok(names)
    }

    fn open(&self, path: &std::path::Path, mode: OpenMode) -> std::io::Result<Self::File> {
        self.inner.open(path, mode)
    }
}

// Found by the every-reader race in tests/concurrency_attacks.rs: a look listed the segments,
// the writer rolled and truncated every segment the listing held, and the floor the look read
// next named a segment newer than all of them. The look reported that segment missing, with
// "acknowledged records were in it", about a log that had lost nothing.
#[test]
fn a_read_only_view_whose_listing_a_roll_and_a_truncation_overtake_looks_again() {
    let sim = SimStorage::new(21, FaultConfig::default());
    let dir = std::path::Path::new("/overtaken");
    let wal = Arc::new(SegmentedWal::open_with(sim.clone(), config(dir)).unwrap());
    append_synced(&*wal, 1, 1000);
    let listed = wal.segments();
    assert!(listed.len() > 3);
    let writer = Arc::clone(&wal);
    let roll_and_truncate = move || {
        let mut lsn = 1000;
        while writer.segments().last().unwrap().id <= listed.last().unwrap().id {
            lsn += 1;
            append_synced(&*writer, lsn, lsn);
        }
        writer.truncate_before(writer.durable_lsn()).unwrap();
        assert!(writer.segments()[0].id > listed.last().unwrap().id, "every listed segment truncated");
    };
    let storage = AfterListing { inner: sim, hook: Arc::new(Mutex::new(Some(Box::new(roll_and_truncate)))) };
    let view = ReadOnlyWal::open_with(storage, dir, None).unwrap_or_else(|e| panic!("a look overtaken by the writer: {e}"));
    let info = view.recovery_info().clone();
    assert_eq!((info.first_lsn, info.last_lsn), (wal.oldest_lsn(), wal.durable_lsn()), "what the writer holds now");
    let records = view.read_from(info.first_lsn).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert_records(&records, info.first_lsn.0, info.last_lsn.0);
}

/// Reads `reader` on from `next`: records in order, each the one appended, until its end or a
/// `SegmentTruncated`; returns the LSN after the last record.
fn read_on(what: &str, reader: impl Iterator<Item = Result<WalRecord, WalError>>, mut next: u64) -> u64 {
    for record in reader {
        match record {
            Ok(record) => {
                assert_eq!(record.lsn, Lsn(next), "{what}: in order, no gap");
                assert_eq!(record.payload, payload(next), "{what}: the record appended at {next}");
                next += 1;
            }
            Err(WalError::SegmentTruncated { .. }) => break,
            Err(err) => panic!("{what} at {next}: {err}"),
        }
    }
    next
}

/// Readers that outlive their log handle, across a reopen (whose recovery seals the segment
/// the old handle was writing and cuts its file to the seal), a truncation of every old
/// segment and the reuse of their files: a mapped reader inside a sealed segment, and readers
/// inside the segment that was open, read on without a fault (a map of a file cut short would
/// be a `SIGBUS`): whole records to where they were bounded, or `SegmentTruncated`.
#[test]
fn readers_outliving_their_log_across_a_reopen_truncation_and_reuse_read_on_without_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SegmentedWalConfig { recycle_segments: 2, ..config(dir.path()) };
    let wal = SegmentedWal::open(config()).unwrap();
    append_synced(&wal, 1, 1490);
    // Small synced batches, until the open segment holds three (a batch takes a block): the
    // writer zero-fills ahead of them, so that the open segment's file reaches its target
    // size, past its records, and recovery's seal cuts it.
    let mut last = 1490;
    while last < 1500 || last + 1 - wal.segments().last().unwrap().first_lsn.0 != 3 {
        last += 1;
        append_synced(&wal, last, last);
    }
    let segments = wal.segments();
    assert!(segments.len() > 4);
    let (sealed, open) = (segments[segments.len() - 2], segments[segments.len() - 1]);
    assert!(sealed.sealed && !open.sealed);
    let mut readers = Vec::new();
    for (what, segment, mapped) in [("mapped, sealed", sealed, true), ("mapped, open", open, true), ("pread, open", open, false)] {
        let from = segment.first_lsn.0;
        let mut reader = if mapped { wal.read_mapped(Lsn(from)) } else { wal.read_from(Lsn(from)) }.unwrap();
        assert_eq!(read_on(what, reader.by_ref().take(2), from), from + 2);
        readers.push((what, reader, from + 2));
    }
    let open_path = nodedb_wal::segment::path(dir.path(), open.id);
    let open_len = std::fs::metadata(&open_path).unwrap().len();
    drop(wal);

    let wal = SegmentedWal::open(config()).unwrap();
    assert!(wal.segments().iter().any(|s| s.id == open.id && s.sealed), "recovery sealed the segment that was open");
    assert!(std::fs::metadata(&open_path).unwrap().len() < open_len, "and cut its file short");
    assert!(wal.truncate_before(wal.durable_lsn()).unwrap() >= segments.len() - 1);
    let before = wal.segments().len();
    let mut lsn = last;
    while wal.segments().len() < before + 4 {
        lsn += 1;
        append_synced(&wal, lsn, lsn);
    }
    for (what, reader, next) in readers {
        // Each holds the segment that was open, or reaches it before the truncation took it.
        assert_eq!(read_on(what, reader, next), last + 1, "{what}: to its bound, nothing of the reopened log");
    }
}
