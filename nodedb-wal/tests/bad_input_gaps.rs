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

mod common;

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Tmpfs, assert_records, config, frames, payload, read_all, seg, segment_ids, snapshot, write_log};
use nodedb_wal::{FsStorage, IoOp, Lsn, ReadOnlyWal, SegmentedWal, WalError, WalRecord};

// ---------------------------------------------------------------------------------------------
// Readers under a permission change.

/// The variable that makes this binary's child test run, naming a directory `nobody` owns.
const CHILD_HOME: &str = "NODEDB_WAL_GAPS_CHILD_HOME";
const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
/// What the child prints once every check passed, so that a child that ran no test (filtered
/// out, say) cannot pass for one that did.
const CHILD_DONE: &str = "child: every reader checked";

fn can_change_user() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    Command::new("setpriv").arg("--version").output().map(|_| ()).map_err(|e| format!("setpriv: {e}"))
}

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
    let out = Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child_readers_meet_a_segment_made_unreadable", "--nocapture", "--test-threads=1"])
        .env(CHILD_HOME, &home)
        .output()
        .unwrap();
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
