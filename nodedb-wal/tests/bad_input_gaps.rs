//! The cells of the bad-input matrix (docs/TESTING.md) that had no test:
//!
//! - **Readers under a permission change**: a segment that becomes unreadable (mode 000) under
//!   the readers of an owner and of a look opened before (`read_from`, `read_mapped`, the lazy
//!   reader, a tail, `replay_parallel`) gives each the records before that segment, dense and
//!   right, then `Io` `Open` `PermissionDenied` naming it; once the mode is back, every record.
//!   Root ignores file modes, so this runs in a child re-executed as `nobody` through `setpriv`
//!   (root and `setpriv` needed, `SKIPPED:` otherwise), as `unprivileged.rs` does.
//! - **The tool on a full disk**: `inspect`, `verify` and `dump` of a log on a full file system
//!   (a small tmpfs) work, as they need no room; `salvage` into it fails with status 3 and the
//!   full disk in its message, leaves the source byte for byte as it was and leaves no copy
//!   that opens with part of the log; once there is room, it copies every record. Needs root
//!   to mount (`SKIPPED:` otherwise).
//! - **The double-write buffer's file a symbolic link, its directory missing or a file**: a link
//!   to a buffer elsewhere is used as the file it names (pages recovered through it, batches
//!   written into its target); a link to nothing is refused in every mode (the buffer degrades
//!   naming the path, `recover` is `DwbDegraded`, nothing is made under the link or at its
//!   target) until its target is back, when a reopen recovers the torn page through it; a
//!   missing directory is made with the buffer; a file where the directory should be degrades
//!   the buffer naming the path, and no page is written or lost.

mod common;

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Tmpfs, assert_records, can_change_user, child_test_as_nobody, config, frames, open_dwb, payload, read_all, seg, segment_ids, snapshot,
    torn_page_in, uniform_check as check, uniform_page as page, write_log,
};
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, FileId, FsStorage, IoOp, Lsn, ReadOnlyWal, SegmentedWal, WalError, WalRecord};

// ---------------------------------------------------------------------------------------------
// Readers under a permission change.

/// The variable that makes this binary's child test run, naming a directory `nobody` owns.
const CHILD_HOME: &str = "NODEDB_WAL_GAPS_CHILD_HOME";
/// What the child prints once every check passed, so that a child that ran no test (filtered
/// out, say) cannot pass for one that did.
const CHILD_DONE: &str = "child: every reader checked";

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a reader gave: the records it read (checked dense and right from LSN 1), then its end.
struct Read {
    records: u64,
    end: Result<(), WalError>,
}

fn read_records(records: &[WalRecord], end: Result<(), WalError>) -> Read {
    assert_records(records, 1, records.len() as u64);
    Read { records: records.len() as u64, end }
}

fn drain(it: nodedb_wal::Result<impl Iterator<Item = nodedb_wal::Result<WalRecord>>>) -> Read {
    let mut records = Vec::new();
    let it = match it {
        Ok(it) => it,
        Err(e) => return read_records(&records, Err(e)),
    };
    for r in it {
        match r {
            Ok(r) => records.push(r),
            Err(e) => return read_records(&records, Err(e)),
        }
    }
    read_records(&records, Ok(()))
}

/// A headers-first reader: each header's LSN in order, and each payload read and checked.
fn lazy<S: nodedb_wal::Storage>(reader: nodedb_wal::Result<nodedb_wal::LazyWalReader<S>>) -> Read {
    let step = |reader: &mut nodedb_wal::LazyWalReader<S>| -> nodedb_wal::Result<Option<u64>> {
        let Some(header) = reader.next_header()? else { return Ok(None) };
        let lsn = header.lsn.0;
        assert_eq!(reader.payload()?, payload(lsn), "payload of LSN {lsn}");
        Ok(Some(lsn))
    };
    let mut reader = match reader {
        Ok(reader) => reader,
        Err(e) => return Read { records: 0, end: Err(e) },
    };
    let mut records = 0;
    loop {
        match step(&mut reader) {
            Ok(Some(lsn)) => {
                records += 1;
                assert_eq!(lsn, records, "dense LSNs");
            }
            Ok(None) => return Read { records, end: Ok(()) },
            Err(e) => return Read { records, end: Err(e) },
        }
    }
}

/// Every reader of the owner and of a look, each made now.
fn live_reads(wal: &SegmentedWal<FsStorage>, view: &ReadOnlyWal<FsStorage>) -> Vec<(&'static str, Read)> {
    let mut tail = wal.tail(Lsn::FIRST);
    let mut tailed = Vec::new();
    let tail_end = loop {
        match tail.next_timeout(Duration::ZERO) {
            Ok(Some(r)) => tailed.push(r),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut replayed = Vec::new();
    let replay_end = wal
        .replay_parallel(Lsn::FIRST, 2, |r| {
            replayed.push(r.to_record());
            Ok(())
        })
        .map(|n| assert_eq!(n, replayed.len() as u64, "replay_parallel counts what it applied"));
    vec![
        ("read_from", drain(wal.read_from(Lsn::FIRST))),
        ("read_mapped", drain(wal.read_mapped(Lsn::FIRST))),
        ("lazy_reader", lazy(wal.lazy_reader(Lsn::FIRST))),
        ("tail", read_records(&tailed, tail_end)),
        ("replay_parallel", read_records(&replayed, replay_end)),
        ("look read_from", drain(view.read_from(Lsn::FIRST))),
        ("look read_mapped", drain(view.read_mapped(Lsn::FIRST))),
        ("look lazy_reader", lazy(view.lazy_reader(Lsn::FIRST))),
    ]
}

/// The first record's LSN in segment `id`.
fn first_lsn(dir: &Path, id: u64) -> u64 {
    let bytes = std::fs::read(seg(dir, id)).unwrap();
    frames(&bytes).into_iter().find(|f| f.is_record()).expect("a record").header.lsn.0
}

/// The child's body, as `nobody` in `home` (which it owns): a log, its owner and a look, and
/// segment 3 made unreadable under them.
fn readers_meet_a_segment_made_unreadable(home: &Path) {
    let dir = home.join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    assert_eq!(segment_ids(&FsStorage::new(), &dir)[..4], [1, 2, 3, 4], "the log's shape");
    let before_victim = first_lsn(&dir, 3) - 1;
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    let view = ReadOnlyWal::open(&dir, None).unwrap();
    let files = snapshot(&dir);
    let victim = seg(&dir, 3);
    set_mode(&victim, 0o000);
    assert!(std::fs::File::open(&victim).is_err(), "this user may not read a file of mode 000 (not root)");

    for (reader, read) in live_reads(&wal, &view) {
        match read.end {
            Err(WalError::Io { op: IoOp::Open, path, source }) if source.kind() == ErrorKind::PermissionDenied => {
                assert_eq!(path, victim, "{reader} names the segment");
            }
            other => panic!("{reader}: expected Io Open PermissionDenied naming segment 3, got {other:?} after {} records", read.records),
        }
        assert_eq!(read.records, before_victim, "{reader}: every record before the unreadable segment, then the error");
    }

    set_mode(&victim, 0o644);
    assert_eq!(snapshot(&dir), files, "readers change nothing");
    for (reader, read) in live_reads(&wal, &view) {
        read.end.unwrap_or_else(|e| panic!("{reader} once the mode is back: {e}"));
        assert_eq!(read.records, last, "{reader} once the mode is back");
    }
}

/// Runs only in the child (the variable names its home); a plain run passes at once.
#[test]
fn child_readers_meet_a_segment_made_unreadable() {
    let Ok(home) = std::env::var(CHILD_HOME) else { return };
    readers_meet_a_segment_made_unreadable(Path::new(&home));
    println!("{CHILD_DONE}");
}

#[test]
fn a_segment_made_unreadable_under_open_readers_gives_each_the_records_before_it_then_a_typed_error() {
    if let Err(why) = can_change_user() {
        eprintln!("SKIPPED: cannot run a child as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let out = child_test_as_nobody("child_readers_meet_a_segment_made_unreadable", CHILD_HOME, &home);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains(CHILD_DONE), "the child as nobody:\n{stdout}\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The tool on a full disk.

fn tool<S: AsRef<OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Fills the file system under `mount` to its last byte, with the file `filler`.
fn fill(mount: &Path) {
    use std::io::Write;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut file = std::fs::File::create(mount.join("filler")).unwrap();
    // A short write takes the last room; the write after it fails.
    let err = std::iter::repeat_with(|| file.write(&chunk)).find_map(Result::err).unwrap();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "filling {}: {err}", mount.display());
    assert_eq!(rustix::fs::statvfs(mount).unwrap().f_bfree, 0, "the file system is full");
}

/// Whether the copy a failed salvage left holds no part of the log: missing, refused, or
/// opening as an empty log.
fn holds_no_record(copy: &Path) -> bool {
    if !copy.exists() {
        return true;
    }
    match ReadOnlyWal::open(copy, None) {
        Err(_) => true,
        Ok(look) => look.read_from(look.recovery_info().first_lsn).unwrap().next().is_none(),
    }
}

/// `room` bytes are left free after the log and the filler: none, or enough for part of a copy.
fn tool_on_a_full_disk(room: usize) {
    let mount = match Tmpfs::mount("4m") {
        Ok(mount) => mount,
        Err(e) => return eprintln!("SKIPPED: cannot mount a tmpfs to fill ({e})"),
    };
    let dir = mount.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let room_file = mount.path().join("room");
    std::fs::write(&room_file, vec![0u8; room]).unwrap();
    fill(mount.path());
    std::fs::remove_file(&room_file).unwrap();
    let files = snapshot(&dir);
    let ds = dir.to_str().unwrap();

    for command in ["inspect", "verify"] {
        let (status, stdout, stderr) = tool(&[command, ds]);
        assert_eq!(status, 0, "{command} on a full disk: {stdout}{stderr}");
    }
    let (status, stdout, stderr) = tool(&["dump", ds, "--json"]);
    assert_eq!(status, 0, "dump on a full disk: {stderr}");
    assert_eq!(stdout.lines().filter(|l| l.contains("\"lsn\"")).count() as u64, last, "dump lists every record");

    let copy = mount.path().join("copy");
    let (status, stdout, stderr) = tool(&["salvage", ds, copy.to_str().unwrap()]);
    assert_eq!(status, 3, "salvage into a full disk (room {room}): {stdout}{stderr}");
    assert!(stderr.contains("No space left on device"), "salvage says why: {stderr}");
    eprintln!("salvage with {room} bytes of room: {stdout}{stderr}");
    if room > 0 {
        assert!(stderr.contains(copy.join("").to_str().unwrap()) && stderr.contains(".wal"), "it ran out writing a segment: {stderr}");
    }
    assert_eq!(snapshot(&dir), files, "the source is as it was, byte for byte");
    assert!(holds_no_record(&copy), "a salvage that failed leaves no copy that opens with part of the log");

    std::fs::remove_file(mount.path().join("filler")).unwrap();
    std::fs::remove_dir_all(&copy).ok();
    let (status, stdout, stderr) = tool(&["salvage", ds, copy.to_str().unwrap()]);
    assert_eq!(status, 0, "salvage once there is room: {stdout}{stderr}");
    let copied = SegmentedWal::open(config(&copy)).unwrap();
    assert_records(&read_all(&copied), 1, last);
}

#[test]
fn the_tool_reads_a_log_on_a_full_disk_and_a_salvage_into_it_fails_leaving_the_source_as_it_was() {
    tool_on_a_full_disk(0);
}

#[test]
fn a_salvage_that_runs_out_of_room_half_way_fails_leaving_the_source_as_it_was() {
    tool_on_a_full_disk(96 * 1024);
}

// ---------------------------------------------------------------------------------------------
// The double-write buffer's file a symbolic link, its directory missing or a file.

const PAGE: usize = 4096;
const PAGES: usize = 8;
const FILE: FileId = FileId(1);

fn dwb_config(path: &Path, mode: DwbMode) -> DwbConfig {
    let mut config = DwbConfig::new(path);
    (config.mode, config.ring_bytes, config.batch_bytes_max) = (mode, 256 * 1024, 64 * 1024);
    config
}

#[track_caller]
fn assert_page(pages: &Path, n: usize, v: u8) {
    assert_eq!(&std::fs::read(pages).unwrap()[n * PAGE..(n + 1) * PAGE], &page(v)[..], "page {n}");
}

#[test]
fn a_buffer_file_linked_to_a_buffer_elsewhere_is_used_as_the_file_it_names() {
    for mode in [DwbMode::Buffered, DwbMode::Direct, DwbMode::Off] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let (link, target) = (tmp.path().join("dwb"), elsewhere.join("dwb"));
        let (pages, _) = torn_page_in(tmp.path(), &dwb_config(&link, DwbMode::Buffered));
        std::fs::rename(&link, &target).unwrap();
        symlink(&target, &link).unwrap();

        let config = dwb_config(&link, mode);
        let dwb = match DoubleWriteBuffer::open(config.clone()) {
            Err(WalError::DirectIoUnsupported { .. }) => {
                eprintln!("{mode:?} skipped: {} refuses O_DIRECT", tmp.path().display());
                continue;
            }
            opened => opened.unwrap(),
        };
        dwb.register_file(FILE, &pages, PAGE).unwrap();
        assert!(!dwb.is_degraded(), "{mode:?}: {dwb:?}");
        let report = dwb.recover(check).unwrap();
        assert_eq!(report.pages_restored, [(FILE, 2)], "{mode:?}: the torn page is restored from the image through the link");
        assert_page(&pages, 2, 5);
        assert_page(&pages, 3, 5);
        if mode == DwbMode::Off {
            // Recovered, the buffer goes: the name the buffer was opened by, so no later open
            // of this path finds its images; the file it named is someone else's to remove.
            assert!(std::fs::symlink_metadata(&link).is_err(), "Off: the link is removed");
            continue;
        }
        dwb.write_pages(&[(FILE, 2, &page(6))]).unwrap();
        drop(dwb);
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{mode:?}: the link is left a link");
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file(), "{mode:?}: batches went into its target");

        // A second crash tears the page again: the image written through the link repairs it.
        let mut bytes = std::fs::read(&pages).unwrap();
        bytes[2 * PAGE..2 * PAGE + PAGE / 2].fill(0xCD);
        std::fs::write(&pages, &bytes).unwrap();
        let dwb = open_dwb(&config, &pages);
        assert_eq!(dwb.recover(check).unwrap().pages_restored, [(FILE, 2)], "{mode:?}");
        assert_page(&pages, 2, 6);
    }
}

/// The buffer degraded at open by `op` failing with `kind` on `path`: `recover` says so with a
/// typed error naming it, and a page write is refused, or in mode `Off` (which protects
/// nothing) written in place and counted as unprotected.
#[track_caller]
fn assert_degraded_naming(dwb: &DoubleWriteBuffer, path: &Path, op: IoOp, kind: ErrorKind) {
    assert_eq!(dwb.degraded_cause(), Some((op, kind)), "{dwb:?}");
    match dwb.recover(check) {
        Err(WalError::DwbDegraded { path: named, op: got_op, kind: got_kind }) => {
            assert_eq!((named.as_path(), got_op, got_kind), (path, op, kind));
        }
        other => panic!("recover: expected DwbDegraded naming {}, got {other:?}", path.display()),
    }
    match (dwb.mode(), dwb.write_pages(&[(FILE, 4, &page(9))])) {
        (DwbMode::Off, Ok(())) => assert_eq!(dwb.stats().unprotected_pages, 1),
        (DwbMode::Buffered | DwbMode::Direct, Err(WalError::DwbDegraded { path: named, .. })) => assert_eq!(named, path),
        (mode, other) => panic!("{mode:?}: a page write gave {other:?}"),
    }
}

/// The page file as it was, but for page 4 in mode `Off` (written unprotected).
fn unchanged_but_unprotected(mode: DwbMode, mut bytes: Vec<u8>) -> Vec<u8> {
    if mode == DwbMode::Off {
        bytes[4 * PAGE..5 * PAGE].copy_from_slice(&page(9));
    }
    bytes
}

#[test]
fn a_buffer_file_linked_to_nothing_is_refused_naming_it_until_its_target_is_back() {
    for mode in [DwbMode::Off, DwbMode::Buffered] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (link, target) = (tmp.path().join("dwb"), tmp.path().join("away"));
        let (pages, torn) = torn_page_in(tmp.path(), &dwb_config(&link, DwbMode::Buffered));
        // Where the link leads is gone for now (a volume not mounted): its images with it.
        std::fs::rename(&link, &target).unwrap();
        symlink(&target, &link).unwrap();
        let aside = tmp.path().join("aside");
        std::fs::rename(&target, &aside).unwrap();
        let names = std::fs::read_dir(tmp.path()).unwrap().count();

        let config = dwb_config(&link, mode);
        let dwb = open_dwb(&config, &pages);
        assert_degraded_naming(&dwb, &link, IoOp::Open, ErrorKind::NotFound);
        drop(dwb);
        assert_eq!(std::fs::read(&pages).unwrap(), unchanged_but_unprotected(mode, torn.clone()), "{mode:?}: no page restored");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{mode:?}: the link is left as found");
        assert!(!target.exists(), "{mode:?}: nothing made where it leads");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), names, "{mode:?}: nothing made beside it");

        std::fs::rename(&aside, &target).unwrap();
        let dwb = open_dwb(&config, &pages);
        assert_eq!(dwb.recover(check).unwrap().pages_restored, [(FILE, 2)], "{mode:?}: the target back, its image repairs the page");
        assert_page(&pages, 2, 5);
    }
}

#[test]
fn a_missing_buffer_directory_is_made_with_the_buffer() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pages = tmp.path().join("pages");
    std::fs::write(&pages, vec![0u8; PAGE * PAGES]).unwrap();
    let path = tmp.path().join("not").join("yet").join("dwb");
    let dwb = open_dwb(&dwb_config(&path, DwbMode::Buffered), &pages);
    assert!(!dwb.is_degraded(), "{dwb:?}");
    dwb.recover(check).unwrap();
    dwb.write_pages(&[(FILE, 1, &page(3))]).unwrap();
    assert_page(&pages, 1, 3);
    assert!(std::fs::metadata(&path).unwrap().is_file());
}

#[test]
fn a_file_where_the_buffer_directory_should_be_degrades_the_buffer_naming_it() {
    for mode in [DwbMode::Buffered, DwbMode::Direct, DwbMode::Off] {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let pages = tmp.path().join("pages");
        std::fs::write(&pages, vec![0u8; PAGE * PAGES]).unwrap();
        let not_a_dir = tmp.path().join("dir");
        std::fs::write(&not_a_dir, b"a file").unwrap();
        let path = not_a_dir.join("dwb");
        let dwb = open_dwb(&dwb_config(&path, mode), &pages);
        assert_degraded_naming(&dwb, &path, IoOp::Open, ErrorKind::NotADirectory);
        assert_eq!(
            std::fs::read(&pages).unwrap(),
            unchanged_but_unprotected(mode, vec![0u8; PAGE * PAGES]),
            "{mode:?}: no other page written"
        );
        assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"a file", "{mode:?}: the file is left as it was");
    }
}
