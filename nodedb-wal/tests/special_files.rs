//! A FIFO where the log expects one of its files (a `MANIFEST` replaced by one, a segment name
//! linked to one) is a typed `WalError::Io` at open, for the writer and for a read-only look
//! alike, never a hang: opening a FIFO for reading waits until some process opens it for
//! writing, which may be never. So is a FIFO or a directory under the oldest segment's name,
//! never a log that silently starts at the next segment.
//!
//! Found by an adversarial review: `SegmentedWal::open` and `ReadOnlyWal::open` (and so the
//! `nodedb-wal` tool) blocked forever in `open(2)` on such a file. Each open here runs on a
//! thread of its own and must answer within a deadline, so that the test fails instead of
//! hanging when the bug comes back.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::{assert_records, config, read_all, write_log};
use nodedb_wal::{FsStorage, IoOp, ReadOnlyWal, SegmentedWal, WalError};
use rustix::fs::{CWD, FileType, Mode};

/// Longer than any open of a small log takes, short enough for a failing run.
const DEADLINE: Duration = Duration::from_secs(20);

fn make_fifo(path: &Path) {
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
}

/// Runs `open` on a thread of its own and gives back its error, or fails once the deadline
/// passes (the thread is left blocked).
#[track_caller]
fn open_error<T: Send + 'static>(what: &str, open: impl FnOnce() -> nodedb_wal::Result<T> + Send + 'static) -> WalError {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(open().err());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Some(err)) => err,
        Ok(None) => panic!("{what}: opened a log with a FIFO or a directory in place of one of its files"),
        Err(_) => panic!("{what}: still blocked after {DEADLINE:?}"),
    }
}

#[track_caller]
fn assert_open_error_on(err: &WalError, file: &Path) {
    match err {
        WalError::Io { op: IoOp::Open, path, .. } => assert_eq!(path, file, "{err}"),
        _ => panic!("expected an Open error on {}, got {err:?}", file.display()),
    }
}

fn both_opens_fail_on(dir: &Path, file: &Path) {
    let d = dir.to_path_buf();
    let err = open_error("SegmentedWal::open", move || SegmentedWal::open(config(&d)));
    assert_open_error_on(&err, file);
    assert!(!err.is_corruption(), "{err}");
    let d = dir.to_path_buf();
    let err = open_error("ReadOnlyWal::open", move || ReadOnlyWal::open(d, None));
    assert_open_error_on(&err, file);
}

fn put_back(taken: &Path, to: &Path) {
    std::fs::remove_file(to).unwrap();
    std::fs::rename(taken, to).unwrap();
}

#[test]
fn a_fifo_in_place_of_the_manifest_is_an_open_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[10, 10, 10]);
    let manifest = dir.join("MANIFEST");
    let taken = tmp.path().join("MANIFEST.taken");
    std::fs::rename(&manifest, &taken).unwrap();
    make_fifo(&manifest);

    both_opens_fail_on(&dir, &manifest);

    put_back(&taken, &manifest);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
}

#[test]
fn a_segment_name_linked_to_a_fifo_is_an_open_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[10, 10, 10]);
    let newest: PathBuf = {
        let mut segments: Vec<PathBuf> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
        segments.sort();
        segments.pop().expect("a segment")
    };
    let taken = tmp.path().join("segment.taken");
    std::fs::rename(&newest, &taken).unwrap();
    let fifo = tmp.path().join("fifo");
    make_fifo(&fifo);
    std::os::unix::fs::symlink(&fifo, &newest).unwrap();

    both_opens_fail_on(&dir, &newest);

    put_back(&taken, &newest);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
}

/// Name and bytes of every regular file in `dir`.
fn regular_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (std::fs::read(&p).unwrap(), p)).map(|(b, p)| (p, b)).collect()
}

/// The oldest segment's file replaced by `replace`: both opens must fail on that name. Left out
/// of the listing, the log would start at the next segment and the oldest acknowledged records
/// would be gone without a word (a missing oldest segment looks like a truncated one).
fn oldest_segment_replaced_is_an_open_error(replace: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    assert!(common::seg(&dir, 2).exists(), "the log spans several segments");
    let oldest = common::seg(&dir, 1);
    let taken = tmp.path().join("segment.taken");
    std::fs::rename(&oldest, &taken).unwrap();
    replace(&oldest);

    let before = regular_files(&dir);
    both_opens_fail_on(&dir, &oldest);
    assert_eq!(regular_files(&dir), before, "a failed open changes nothing");

    if oldest.is_dir() {
        std::fs::remove_dir(&oldest).unwrap();
    } else {
        std::fs::remove_file(&oldest).unwrap();
    }
    std::fs::rename(&taken, &oldest).unwrap();
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
}

#[test]
fn a_directory_in_place_of_the_oldest_segment_is_an_open_error_not_a_shorter_log() {
    oldest_segment_replaced_is_an_open_error(|path| std::fs::create_dir(path).unwrap());
}

#[test]
fn a_fifo_in_place_of_the_oldest_segment_is_an_open_error_not_a_shorter_log() {
    oldest_segment_replaced_is_an_open_error(make_fifo);
}

/// The newest segment is opened with O_DIRECT, which the kernel refuses on a directory with
/// EINVAL: the error must say a directory is there, not read as a file system refusing
/// O_DIRECT.
#[test]
fn a_directory_in_place_of_the_newest_segment_is_named_as_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    write_log(&FsStorage::new(), &dir, &[40; 8]);
    let newest = (1..).map(|id| common::seg(&dir, id)).take_while(|p| p.exists()).last().expect("a segment");
    std::fs::remove_file(&newest).unwrap();
    std::fs::create_dir(&newest).unwrap();
    let before = regular_files(&dir);
    let err = SegmentedWal::open(config(&dir)).unwrap_err();
    assert_open_error_on(&err, &newest);
    let WalError::Io { source, .. } = &err else { unreachable!() };
    assert_eq!(source.raw_os_error(), None, "{err}");
    assert!(source.to_string().contains("directory"), "{err}");
    assert_eq!(regular_files(&dir), before, "a failed open changes nothing");
}
