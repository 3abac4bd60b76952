//! A failed write or fdatasync on a real file system, met by a live log (the file system stops
//! under it: `FS_IOC_SHUTDOWN` on ext4, after which every I/O fails with `EIO`): the append is
//! refused with `Poisoned` naming the step, `EIO` and the segment; every later call is
//! `Poisoned` (the sync is never retried); a read-only look and the tool on the stopped file
//! system are typed I/O errors (status 3), never corruption or a shorter log; and once the
//! file system is mounted again every acknowledged record is there, and the log takes appends.
//! The refused record is in doubt: it may be there, whole, or not at all.
//!
//! `faults.rs` injects the same failures into one call on a wrapped storage; this is the kernel's
//! own failure, on the real file system. Needs root, a loop device and mkfs.ext4; elsewhere it
//! prints `SKIPPED:` and why.

mod common;

use std::path::Path;
use std::process::Command;

use common::{FsKind, LoopFs, append_synced, assert_records, config, payload, read_all, record_type, scope};
use nodedb_wal::{IoOp, Lsn, ReadOnlyWal, Record, SegmentedWal, WalError};
use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Opcode, Setter, opcode};

/// `FS_IOC_SHUTDOWN`, `_IOR('X', 125, __u32)`.
const FS_IOC_SHUTDOWN: Opcode = opcode::read::<u32>(b'X', 125);
/// Shut down without flushing the journal: what it holds in memory is lost.
const FS_SHUTDOWN_FLAGS_NOLOGFLUSH: u32 = 2;
const EIO: i32 = 5;

/// Shuts down the file system mounted at `mount`: every later I/O on it fails.
#[expect(unsafe_code, reason = "rustix has no safe wrapper for FS_IOC_SHUTDOWN")]
fn shut_down(mount: &Path) -> std::io::Result<()> {
    let fd = rustix::fs::open(mount, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    // SAFETY: FS_IOC_SHUTDOWN takes a pointer to a `__u32` of flags and only reads it; `Setter`
    // passes a pointer to its own `u32`, which lives for the whole call.
    let shutdown = unsafe { Setter::<FS_IOC_SHUTDOWN, u32>::new(FS_SHUTDOWN_FLAGS_NOLOGFLUSH) };
    // SAFETY: as above; the call has no other effect on this process's memory.
    unsafe { rustix::ioctl::ioctl(&fd, shutdown) }?;
    Ok(())
}

fn record(lsn: u64, bytes: &[u8]) -> Record<'_> {
    Record::new(record_type(lsn), bytes).scoped(scope(lsn))
}

#[track_caller]
fn assert_poisoned_by_eio(err: &WalError) {
    match err {
        WalError::Poisoned { op, os_error, path, .. } => {
            assert!(matches!(op, IoOp::Write | IoOp::SyncData), "{err}");
            assert_eq!(*os_error, Some(EIO), "{err}");
            assert!(path.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "wal")), "names the segment: {err}");
        }
        _ => panic!("expected Poisoned by EIO, got {err:?}"),
    }
}

#[test]
fn a_failed_fsync_on_ext4_poisons_the_log_and_a_remount_keeps_every_acknowledged_record() {
    let mut fs = match LoopFs::create(FsKind::Ext4) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED: cannot make and mount an ext4 file system on a loop device ({e})");
            return;
        }
    };
    let dir = fs.path().join("wal");
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    append_synced(&wal, 1, 100);
    shut_down(&fs.path()).unwrap();

    let refused = payload(101);
    let err = wal.append_durable(record(101, &refused)).unwrap_err();
    assert_poisoned_by_eio(&err);
    let later = payload(102);
    assert_poisoned_by_eio(&wal.append(record(102, &later)).unwrap_err());
    assert_poisoned_by_eio(&wal.sync().unwrap_err());
    assert_poisoned_by_eio(&wal.wait_durable(Lsn(101)).unwrap_err());

    match ReadOnlyWal::open(&dir, None) {
        Err(WalError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(EIO), "{source}"),
        Err(other) => panic!("a look at a stopped file system: expected Io, got {other:?}"),
        Ok(look) => panic!("a look at a stopped file system opened: {:?}", look.recovery_info()),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_nodedb-wal")).arg("verify").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "verify: {}", String::from_utf8_lossy(&out.stderr));
    drop(wal);

    fs.remount().unwrap();
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    let records = read_all(&wal);
    assert!(records.len() == 100 || records.len() == 101, "{} records", records.len());
    assert_records(&records, 1, records.len() as u64);
    let next = wal.next_lsn().0;
    append_synced(&wal, next, next + 9);
    assert_records(&read_all(&wal), 1, next + 9);
}
