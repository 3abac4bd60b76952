//! A double-write buffer whose file the process may not write (`chattr +i`, which stops root
//! too, as a permission does other users) after a crash tore a page: the open degrades, and
//! `recover` is the typed `DwbDegraded` naming the file and the step, never an Ok that leaves
//! the torn page torn; no page file and no byte of the buffer changes, and page writes are
//! refused. Once the file is writable again, a new open recovers the page from its image.
//!
//! Needs root and a file system that takes the immutable flag (ext4, XFS, tmpfs); elsewhere
//! the test prints `SKIPPED:` and why.

mod common;

use std::io::ErrorKind;

use common::{Immutable, open_dwb, torn_page_in, uniform_check as check, uniform_page as page};
use nodedb_wal::{DwbConfig, FileId, IoOp, WalError};

const PAGE: usize = 4096;
const FILE: FileId = FileId(1);

#[test]
fn an_immutable_buffer_file_refuses_recovery_with_a_typed_error_and_repairs_once_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let config = DwbConfig::new(tmp.path().join("dwb"));
    // A crash tore page 2 in place: its second half is from another write.
    let (pages, bytes) = torn_page_in(tmp.path(), &config);
    let buffer_before = std::fs::read(&config.path).unwrap();

    let flag = match Immutable::set(&config.path) {
        Ok(flag) => flag,
        Err(why) => {
            eprintln!("SKIPPED: cannot make the buffer file immutable ({why})");
            return;
        }
    };
    let dwb = open_dwb(&config, &pages);
    assert!(dwb.is_degraded(), "{dwb:?}");
    match dwb.recover(check) {
        Err(WalError::DwbDegraded { path, op, kind }) => {
            assert_eq!(path, config.path);
            assert_eq!(op, IoOp::Open);
            assert_eq!(kind, ErrorKind::PermissionDenied);
        }
        other => panic!("expected DwbDegraded, got {other:?}"),
    }
    assert!(matches!(dwb.write_pages(&[(FILE, 4, &page(6))]), Err(WalError::DwbDegraded { .. })), "writes are refused");
    drop(dwb);
    assert_eq!(std::fs::read(&pages).unwrap(), bytes, "no page changed");
    assert_eq!(std::fs::read(&config.path).unwrap(), buffer_before, "the buffer is as it was");

    drop(flag);
    let dwb = open_dwb(&config, &pages);
    let report = dwb.recover(check).unwrap();
    assert_eq!(report.pages_restored, [(FILE, 2)], "{report:?}");
    let repaired = std::fs::read(&pages).unwrap();
    assert_eq!(&repaired[2 * PAGE..3 * PAGE], &page(5)[..]);
    assert_eq!(&repaired[3 * PAGE..4 * PAGE], &page(5)[..]);
}
