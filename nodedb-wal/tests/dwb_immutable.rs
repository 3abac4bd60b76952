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
use std::path::Path;

use common::Immutable;
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, IoOp, PageCheck, WalError};

const PAGE: usize = 4096;
const PAGES: u64 = 8;
const FILE: FileId = FileId(1);

/// A page of version `v`: every byte is `v`.
fn page(v: u8) -> Vec<u8> {
    vec![v; PAGE]
}

/// Whole when every byte equals the first, which is its version.
fn check(_: FileId, bytes: &[u8]) -> PageCheck {
    if bytes.iter().all(|&b| b == bytes[0]) { PageCheck::Intact { version: u64::from(bytes[0]) } } else { PageCheck::Torn }
}

fn open(config: &DwbConfig, pages: &Path) -> DoubleWriteBuffer {
    let dwb = DoubleWriteBuffer::open(config.clone()).unwrap();
    dwb.register_file(FILE, pages, PAGE).unwrap();
    dwb
}

#[test]
fn an_immutable_buffer_file_refuses_recovery_with_a_typed_error_and_repairs_once_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let pages = tmp.path().join("pages");
    std::fs::write(&pages, vec![0u8; PAGE * PAGES as usize]).unwrap();
    let config = DwbConfig::new(tmp.path().join("dwb"));
    let dwb = open(&config, &pages);
    dwb.recover(check).unwrap();
    dwb.write_pages(&[(FILE, 2, &page(5)), (FILE, 3, &page(5))]).unwrap();
    drop(dwb);
    // A crash tore page 2 in place: its second half is from another write.
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[2 * PAGE + PAGE / 2..3 * PAGE].fill(0xAB);
    std::fs::write(&pages, &bytes).unwrap();
    let buffer_before = std::fs::read(&config.path).unwrap();

    let flag = match Immutable::set(&config.path) {
        Ok(flag) => flag,
        Err(why) => {
            eprintln!("SKIPPED: cannot make the buffer file immutable ({why})");
            return;
        }
    };
    let dwb = open(&config, &pages);
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
    let dwb = open(&config, &pages);
    let report = dwb.recover(check).unwrap();
    assert_eq!(report.pages_restored, [(FILE, 2)], "{report:?}");
    let repaired = std::fs::read(&pages).unwrap();
    assert_eq!(&repaired[2 * PAGE..3 * PAGE], &page(5)[..]);
    assert_eq!(&repaired[3 * PAGE..4 * PAGE], &page(5)[..]);
}
