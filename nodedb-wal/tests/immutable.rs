//! A log file the log may not write (here `chattr +i`, which stops root too; a permission does
//! the same to other users) fails the open with a typed `WalError::Io` naming it, before the
//! open has written anything: the newest segment is not sealed, no header index appears. Once
//! the file is writable again the log opens with every record.
//!
//! Found by an adversarial review: with `MANIFEST` immutable, the open sealed the newest
//! segment and wrote its index, and only then failed to open the manifest for writing.
//!
//! The same holds for the directory: a writer must create a new segment at its first append,
//! so a directory that takes no new entries fails the open. Found by a black-box review: with
//! the directory immutable (or read-only to a user), the open succeeded, sealed the newest
//! segment, and the first append poisoned the log on the rename of a kept segment file.
//!
//! Needs root and a file system that takes the immutable flag (ext4, XFS, tmpfs); elsewhere
//! the test prints `SKIPPED:` and why.

mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use common::{Immutable, assert_records, config, read_all, snapshot, unseal, write_log};
use nodedb_wal::{FsStorage, IoOp, ReadOnlyWal, SegmentedWal, WalError};

/// Makes `target` (a file of the log in `dir`, or `dir` itself) immutable under a log whose
/// newest segment is unsealed (as a power cut leaves it: the next open seals it), and checks
/// that the writer's open fails with `expected_op` on `target`, having changed nothing; that a
/// read-only look still sees every record; and that the log opens whole once `target` is
/// writable again.
fn open_fails_before_anything_is_written(target: impl FnOnce(&Path) -> PathBuf, expected_op: IoOp) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    unseal(&FsStorage::new(), &dir);
    let target = target(&dir);
    let flag = match Immutable::set(&target) {
        Ok(flag) => flag,
        Err(e) => {
            eprintln!("SKIPPED: cannot make {} immutable ({e})", target.display());
            return;
        }
    };
    let before = snapshot(&dir);

    let err = SegmentedWal::open(config(&dir)).unwrap_err();
    match &err {
        WalError::Io { op, path, source } if *op == expected_op => {
            assert_eq!(path, &target, "{err}");
            assert_eq!(source.kind(), ErrorKind::PermissionDenied, "{err}");
        }
        _ => panic!("expected a {expected_op:?} error on {}, got {err:?}", target.display()),
    }
    assert_eq!(snapshot(&dir), before, "a failed open changes nothing");
    // Reading needs no write access.
    let view = ReadOnlyWal::open(&dir, None).unwrap();
    assert_eq!(view.recovery_info().last_lsn.0, last);
    drop(view);

    drop(flag);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
}

#[test]
fn an_immutable_manifest_fails_the_open_before_anything_is_written() {
    open_fails_before_anything_is_written(|dir| dir.join("MANIFEST"), IoOp::Open);
}

#[test]
fn an_immutable_directory_fails_the_open_before_anything_is_written() {
    open_fails_before_anything_is_written(Path::to_path_buf, IoOp::Lock);
}
