//! The bad-input matrix on the real file system (O_DIRECT where it takes it): each bad input
//! below, made in a closed log of four segments, against the owner's open, a read-only look
//! (and its readers) and the tool's `inspect`, `verify` and `dump`. Each entry point gives the
//! same typed error (or, for inputs the log takes, every record), the error names the file or
//! segment (and offset where there is one), no entry point changes a byte, and once the input is
//! put back the log opens with every record. The tool's status follows the error: 2 for damage
//! and missing segments, 3 for an I/O error.
//!
//! Most cells have a test of their own elsewhere (docs/TESTING.md, "The bad-input matrix");
//! this one runs them side by side, so an entry point that drifts from the others shows.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_records, config, read_all, seg, snapshot, write_log};
use nodedb_wal::{FsStorage, Lsn, ReadOnlyWal, SegmentedWal, WalError, WalRecord};

/// What every entry point must give.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Every record.
    Whole,
    /// `Io` on `Open` of this file (relative to the log directory).
    OpenFails(&'static str),
    /// `Corruption` in this segment at this offset (`None`: any offset).
    Corrupt(u64, Option<u64>),
    /// `MissingSegment` for this segment.
    Missing(u64),
    /// `UnsupportedVersion` of this segment.
    Version(u64),
    /// `UnsupportedCipher` of this segment.
    Cipher(u64),
    /// `ManifestDamaged`.
    Manifest,
    /// `FloorDamaged`.
    Floor,
}

/// A bad input: what it does to the log directory (with a scratch directory beside it), and
/// what every entry point gives.
struct Row {
    name: &'static str,
    make: fn(&Path, &Path),
    expect: Expect,
}

fn take(path: &Path, scratch: &Path) {
    std::fs::rename(path, scratch.join(path.file_name().unwrap())).unwrap();
}

/// Changes segment `id`'s bytes, its original kept in `scratch` to be put back.
fn edit(dir: &Path, scratch: &Path, id: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let path = seg(dir, id);
    std::fs::copy(&path, scratch.join(path.file_name().unwrap())).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    change(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "segment replaced by a directory",
            make: |d, s| {
                take(&seg(d, 3), s);
                std::fs::create_dir(seg(d, 3)).unwrap()
            },
            expect: Expect::OpenFails("00000000000000000003.wal"),
        },
        Row {
            name: "segment linked to a copy elsewhere",
            make: |d, s| {
                take(&seg(d, 3), s);
                symlink(s.join("00000000000000000003.wal"), seg(d, 3)).unwrap()
            },
            expect: Expect::Whole,
        },
        Row {
            name: "segment linked to nothing",
            make: |d, s| {
                take(&seg(d, 3), s);
                symlink(s.join("gone"), seg(d, 3)).unwrap()
            },
            expect: Expect::OpenFails("00000000000000000003.wal"),
        },
        Row {
            name: "segment linked to a device",
            make: |d, s| {
                take(&seg(d, 3), s);
                symlink("/dev/zero", seg(d, 3)).unwrap()
            },
            expect: Expect::OpenFails("00000000000000000003.wal"),
        },
        Row { name: "oldest segment zero-length", make: |d, s| edit(d, s, 1, Vec::clear), expect: Expect::Corrupt(1, Some(0)) },
        Row { name: "newest segment zero-length", make: |d, s| edit(d, s, 4, Vec::clear), expect: Expect::Corrupt(4, Some(0)) },
        Row {
            name: "valid preamble, garbage after",
            make: |d, s| edit(d, s, 3, |b| b.iter_mut().enumerate().skip(16).for_each(|(i, x)| *x = (i * 7 + 3) as u8)),
            expect: Expect::Corrupt(3, Some(0)),
        },
        Row { name: "preamble of an unknown version", make: |d, s| edit(d, s, 3, |b| b[4] = 99), expect: Expect::Version(3) },
        Row { name: "preamble of an unknown cipher", make: |d, s| edit(d, s, 3, |b| b[6] = 7), expect: Expect::Cipher(3) },
        Row {
            name: "sealed segment cut in half",
            make: |d, s| edit(d, s, 3, |b| b.truncate(b.len() / 2)),
            expect: Expect::Corrupt(3, None),
        },
        Row {
            name: "a bit flipped mid-segment",
            make: |d, s| {
                edit(d, s, 3, |b| {
                    let at = b.len() / 3;
                    b[at] ^= 0x10
                })
            },
            expect: Expect::Corrupt(3, None),
        },
        Row { name: "middle segment removed", make: |d, s| take(&seg(d, 3), s), expect: Expect::Missing(3) },
        Row { name: "newest segment removed", make: |d, s| take(&seg(d, 4), s), expect: Expect::Missing(4) },
        Row { name: "oldest segment removed", make: |d, s| take(&seg(d, 1), s), expect: Expect::Missing(1) },
        Row { name: "gap in segment ids", make: |d, _| std::fs::rename(seg(d, 3), seg(d, 13)).unwrap(), expect: Expect::Missing(3) },
        Row {
            name: "overlapping LSNs (segment 2 copied over 3)",
            make: |d, s| {
                take(&seg(d, 3), s);
                std::fs::copy(seg(d, 2), seg(d, 3)).unwrap();
            },
            expect: Expect::Corrupt(3, Some(0)),
        },
        Row {
            name: "unrelated files",
            make: |d, _| {
                std::fs::write(d.join("notes.txt"), b"x").unwrap();
                std::fs::write(d.join("9.wal.bak"), b"x").unwrap();
                std::fs::create_dir(d.join("sub")).unwrap()
            },
            expect: Expect::Whole,
        },
        Row {
            name: "MANIFEST garbage",
            make: |d, s| {
                take(&d.join("MANIFEST"), s);
                std::fs::write(d.join("MANIFEST"), [0x5a; 4096]).unwrap()
            },
            expect: Expect::Manifest,
        },
        Row {
            name: "MANIFEST empty",
            make: |d, s| {
                take(&d.join("MANIFEST"), s);
                std::fs::write(d.join("MANIFEST"), b"").unwrap()
            },
            expect: Expect::Manifest,
        },
        Row {
            name: "MANIFEST a directory",
            make: |d, s| {
                take(&d.join("MANIFEST"), s);
                std::fs::create_dir(d.join("MANIFEST")).unwrap()
            },
            expect: Expect::OpenFails("MANIFEST"),
        },
        Row {
            name: "FLOOR garbage",
            make: |d, s| {
                take(&d.join("FLOOR"), s);
                std::fs::write(d.join("FLOOR"), [0x5a; 4096]).unwrap()
            },
            expect: Expect::Floor,
        },
        Row {
            name: "FLOOR a directory",
            make: |d, s| {
                take(&d.join("FLOOR"), s);
                std::fs::create_dir(d.join("FLOOR")).unwrap()
            },
            expect: Expect::OpenFails("FLOOR"),
        },
    ]
}

/// Every file of `dir` (links and directories by kind), to compare before and after.
fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let kind = std::fs::symlink_metadata(e.path()).unwrap().file_type();
            (e.file_name().into_string().unwrap(), format!("{kind:?}"))
        })
        .collect();
    out.sort();
    out
}

/// Every regular file of `dir` with its bytes' checksum, plus the other entries by kind.
/// A directory's entries by kind, and its regular files by length and checksum.
type State = (Vec<(String, String)>, Vec<(String, (usize, u32))>);

fn state(dir: &Path) -> State {
    let files = snapshot_files(dir);
    (listing(dir), files)
}

fn snapshot_files(dir: &Path) -> Vec<(String, (usize, u32))> {
    let plain = dir.with_extension("plain");
    let _ = std::fs::remove_dir_all(&plain);
    std::fs::create_dir(&plain).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_file() {
            std::fs::copy(&path, plain.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = snapshot(&plain).into_iter().collect();
    std::fs::remove_dir_all(&plain).unwrap();
    out
}

#[track_caller]
fn check(what: &str, row: &Row, dir: &Path, result: Result<usize, WalError>, last: u64) {
    let bad = |err: &dyn std::fmt::Debug| panic!("{}: {what}: expected {:?}, got {err:?}", row.name, row.expect);
    match (row.expect, result) {
        (Expect::Whole, Ok(n)) => assert_eq!(n as u64, last, "{}: {what}", row.name),
        (Expect::OpenFails(file), Err(WalError::Io { op: nodedb_wal::IoOp::Open, path, .. })) => {
            assert_eq!(path, dir.join(file), "{}: {what}", row.name)
        }
        (Expect::Corrupt(id, offset), Err(WalError::Corruption { segment, offset: at, .. })) => {
            assert_eq!(segment.0, id, "{}: {what}", row.name);
            if let Some(offset) = offset {
                assert_eq!(at, offset, "{}: {what}", row.name);
            }
        }
        (Expect::Missing(id), Err(WalError::MissingSegment { missing, .. })) => assert_eq!(missing.0, id, "{}: {what}", row.name),
        (Expect::Version(id), Err(WalError::UnsupportedVersion { segment, version: 99, .. })) => assert_eq!(segment.0, id),
        (Expect::Cipher(id), Err(WalError::UnsupportedCipher { segment, cipher: 7 })) => assert_eq!(segment.0, id),
        (Expect::Manifest, Err(WalError::ManifestDamaged { path })) => assert_eq!(path, dir.join("MANIFEST")),
        (Expect::Floor, Err(WalError::FloorDamaged { path })) => assert_eq!(path, dir.join("FLOOR")),
        (_, other) => bad(&other),
    }
}

/// A read-only look and every one of its readers: the records read, or the first error.
fn look(dir: &Path) -> Result<usize, WalError> {
    let view = ReadOnlyWal::open(dir, None)?;
    let first = view.recovery_info().first_lsn;
    let plain = view.read_from(first)?.collect::<Result<Vec<_>, _>>()?;
    let mapped = view.read_mapped(first)?.collect::<Result<Vec<_>, _>>()?;
    assert_eq!(plain.len(), mapped.len(), "the mapped reader agrees");
    let mut lazy = view.lazy_reader(first)?;
    let mut headers = 0;
    while lazy.next_header()?.is_some() {
        lazy.payload()?;
        headers += 1;
    }
    assert_eq!(headers, plain.len(), "the lazy reader agrees");
    Ok(plain.len())
}

/// The owner's open and its reads.
fn own(dir: &Path) -> Result<usize, WalError> {
    let wal = SegmentedWal::open(config(dir))?;
    let n = wal.read_from(Lsn::FIRST)?.collect::<Result<Vec<_>, _>>()?.len();
    wal.close()?;
    Ok(n)
}

fn tool(command: &str, dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).arg(command).arg(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The tool's status for an entry point's error, and a word its message must hold.
fn tool_expect(expect: Expect, dir: &Path) -> (i32, String) {
    match expect {
        Expect::Whole => (0, String::new()),
        Expect::OpenFails(file) => (3, dir.join(file).display().to_string()),
        Expect::Corrupt(id, _) => (2, format!("corruption in segment {id} at offset")),
        Expect::Missing(id) => (2, format!("segment {id} is missing")),
        Expect::Version(id) | Expect::Cipher(id) => (2, format!("segment {id}")),
        Expect::Manifest => (2, "MANIFEST is damaged".into()),
        Expect::Floor => (2, "FLOOR is damaged".into()),
    }
}

fn run_row(row: &Row) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let pristine = state(&dir);
    assert_eq!(common::segment_ids(&FsStorage::new(), &dir), [1, 2, 3, 4], "the log's shape");
    (row.make)(&dir, &scratch);
    let before = state(&dir);

    check("read-only look", row, &dir, look(&dir), last);
    let (status, message) = tool_expect(row.expect, &dir);
    for command in ["inspect", "verify", "dump"] {
        let (got, stderr) = tool(command, &dir);
        assert_eq!(got, status, "{}: {command}: {stderr}", row.name);
        assert!(stderr.contains(&message), "{}: {command} says {stderr:?}, without {message:?}", row.name);
    }
    assert_eq!(state(&dir), before, "{}: the look and the tool change nothing", row.name);
    let owned = own(&dir);
    let took_it = owned.is_ok();
    check("owner's open", row, &dir, owned, last);
    if !took_it {
        assert_eq!(state(&dir), before, "{}: a refused open changes nothing", row.name);
    }

    put_back(&dir, &scratch);
    if !took_it {
        assert_eq!(state(&dir), pristine, "{}: put back, the log is as written", row.name);
    }
    let wal = SegmentedWal::open(config(&dir)).unwrap_or_else(|e| panic!("{}: put back: {e}", row.name));
    assert_records(&read_all(&wal), 1, last);
}

/// Undoes a row: what it made in the directory under a taken file's name goes, the taken
/// files come back, a renamed segment gets its name back, and the unrelated files go.
fn put_back(dir: &Path, scratch: &Path) {
    if seg(dir, 13).exists() {
        std::fs::rename(seg(dir, 13), seg(dir, 3)).unwrap();
    }
    for junk in ["notes.txt", "9.wal.bak", "sub"] {
        let path = dir.join(junk);
        let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
    }
    for entry in std::fs::read_dir(scratch).unwrap() {
        let taken: PathBuf = entry.unwrap().path();
        let home = dir.join(taken.file_name().unwrap());
        if let Ok(meta) = std::fs::symlink_metadata(&home) {
            if meta.is_dir() { std::fs::remove_dir(&home).unwrap() } else { std::fs::remove_file(&home).unwrap() }
        }
        std::fs::rename(&taken, &home).unwrap();
    }
}

#[test]
fn every_bad_input_gives_every_entry_point_the_same_typed_error_and_changes_nothing() {
    for row in rows() {
        run_row(&row);
    }
}

/// What a reader of a log opened before the input went bad gives: the side files are read
/// only at open, so a damaged `MANIFEST` or `FLOOR` changes nothing for it; every other input
/// gives the error an open gives.
fn live_expect(expect: Expect) -> Expect {
    match expect {
        Expect::Manifest | Expect::Floor | Expect::OpenFails("MANIFEST" | "FLOOR") => Expect::Whole,
        other => other,
    }
}

/// Records read (checked dense and right from LSN 1), then the reader's end: the count, or
/// the error.
fn drained(records: &[WalRecord], end: Option<WalError>) -> Result<usize, WalError> {
    if let Some(last) = records.last() {
        assert_records(records, 1, last.lsn.0);
    }
    end.map_or(Ok(records.len()), Err)
}

fn drain(it: nodedb_wal::Result<impl Iterator<Item = nodedb_wal::Result<WalRecord>>>) -> Result<usize, WalError> {
    let mut records = Vec::new();
    for r in it? {
        match r {
            Ok(r) => records.push(r),
            Err(e) => return drained(&records, Some(e)),
        }
    }
    drained(&records, None)
}

fn lazy<S: nodedb_wal::Storage>(reader: nodedb_wal::Result<nodedb_wal::LazyWalReader<S>>) -> Result<usize, WalError> {
    let mut reader = reader?;
    let mut n = 0;
    while reader.next_header()?.is_some() {
        reader.payload()?;
        n += 1;
    }
    Ok(n)
}

/// Every reader of the owner and of a look opened before the input went bad.
fn live_reads(wal: &SegmentedWal<FsStorage>, view: &ReadOnlyWal<FsStorage>) -> Vec<(&'static str, Result<usize, WalError>)> {
    let mut tail = wal.tail(Lsn::FIRST);
    let mut tailed = Vec::new();
    let tail_end = loop {
        match tail.next_timeout(Duration::ZERO) {
            Ok(Some(r)) => tailed.push(r),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut replayed = 0;
    let replay = wal.replay_parallel(Lsn::FIRST, 2, |_| {
        replayed += 1;
        Ok(())
    });
    vec![
        ("read_from", drain(wal.read_from(Lsn::FIRST))),
        ("read_mapped", drain(wal.read_mapped(Lsn::FIRST))),
        ("lazy_reader", lazy(wal.lazy_reader(Lsn::FIRST))),
        ("tail", drained(&tailed, tail_end)),
        ("replay_parallel", replay.map(|n| n as usize)),
        ("look read_from", drain(view.read_from(Lsn::FIRST))),
        ("look read_mapped", drain(view.read_mapped(Lsn::FIRST))),
        ("look lazy_reader", lazy(view.lazy_reader(Lsn::FIRST))),
    ]
}

fn run_live_row(row: &Row) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    let view = ReadOnlyWal::open(&dir, None).unwrap();
    (row.make)(&dir, &scratch);
    let before = state(&dir);
    let live = Row { name: row.name, make: row.make, expect: live_expect(row.expect) };
    for (reader, result) in live_reads(&wal, &view) {
        check(reader, &live, &dir, result, last);
    }
    assert_eq!(state(&dir), before, "{}: readers change nothing", row.name);
    put_back(&dir, &scratch);
    for (reader, result) in live_reads(&wal, &view) {
        assert_eq!(result.unwrap_or_else(|e| panic!("{}: {reader} once put back: {e}", row.name)) as u64, last, "{}: {reader}", row.name);
    }
}

#[test]
fn every_bad_input_under_open_readers_gives_each_the_same_typed_error_after_the_records_before_it() {
    for row in rows() {
        run_live_row(&row);
    }
}

/// The log directory a file, or missing: a look and every tool command refuse it with a typed
/// I/O error naming the path (the tool with status 3), and the file is left as it was; the
/// owner refuses a file in its place, and makes a new log where nothing is (its documented
/// open of a new log).
#[test]
fn a_log_directory_that_is_a_file_or_missing_is_a_typed_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("wal");
    std::fs::write(&file, b"not a log").unwrap();
    let missing = tmp.path().join("missing");
    for (path, kind) in [(&file, std::io::ErrorKind::NotADirectory), (&missing, std::io::ErrorKind::NotFound)] {
        match ReadOnlyWal::open(path, None) {
            Err(WalError::Io { path: named, source, .. }) => {
                assert!(named.starts_with(path), "{} names {}", path.display(), named.display());
                assert_eq!(source.kind(), kind, "{source}");
            }
            other => panic!("a look at {}: expected Io, got {:?}", path.display(), other.map(|v| v.recovery_info().clone())),
        }
        for command in ["inspect", "verify", "dump"] {
            let (status, stderr) = tool(command, path);
            assert_eq!(status, 3, "{command} {}: {stderr}", path.display());
            assert!(stderr.contains(path.to_str().unwrap()), "{command}: {stderr}");
        }
    }
    match SegmentedWal::open(config(&file)) {
        Err(WalError::Io { op: nodedb_wal::IoOp::CreateDir, path, source }) => {
            assert_eq!(path, file);
            assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory, "said as the look says it, not \"File exists\": {source}");
        }
        other => panic!("the owner on a file: expected Io CreateDir, got {:?}", other.map(|w| w.next_lsn())),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a log", "the file is left as it was");
    assert!(!missing.exists(), "the look and the tool make nothing");
}
