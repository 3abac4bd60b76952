//! A log on a read-only file system: opening it fails with a typed `WalError::Io` (not a panic,
//! not corruption), changes nothing on disk, and the log opens intact once it is writable again.
//!
//! Root ignores directory permissions, so the read-only view is a read-only bind mount; a test
//! that may not mount prints why and skips.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use common::{ReadOnlyBind, assert_records, config, read_all, write_log};
use nodedb_wal::{FsStorage, IoOp, Lsn, SegmentedWal, WalError};

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn read_only_view(dir: &Path) -> Option<ReadOnlyBind> {
    match ReadOnlyBind::of(dir) {
        Ok(view) => Some(view),
        Err(e) => {
            eprintln!("SKIPPED: cannot make a read-only bind mount ({e})");
            None
        }
    }
}

#[track_caller]
fn assert_read_only_error(err: &WalError, expected_op: IoOp) {
    match err {
        WalError::Io { op, source, .. } => {
            assert_eq!(*op, expected_op, "{err}");
            assert_eq!(source.kind(), ErrorKind::ReadOnlyFilesystem, "{err}");
        }
        _ => panic!("expected an I/O error, got {err:?}"),
    }
}

#[test]
fn opening_a_log_on_a_read_only_file_system_is_an_io_error_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[10, 10, 10]);
    let before = snapshot(&dir);
    let Some(view) = read_only_view(&dir) else { return };

    let err = SegmentedWal::open(config(view.path())).unwrap_err();
    assert_read_only_error(&err, IoOp::Lock);
    assert!(!err.is_corruption());
    assert_eq!(snapshot(&dir), before, "a failed open changes nothing");
    drop(view);

    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
    assert_eq!(wal.next_lsn(), Lsn(last + 1));
    wal.close().unwrap();
}

#[test]
fn creating_a_log_on_a_read_only_file_system_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(view) = read_only_view(tmp.path()) else { return };
    let err = SegmentedWal::open(config(&view.path().join("wal"))).unwrap_err();
    assert_read_only_error(&err, IoOp::CreateDir);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing was created");
}
