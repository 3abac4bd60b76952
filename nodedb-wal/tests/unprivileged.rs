//! Permission errors as a real user meets them (root bypasses file modes, so the checks run in
//! a child re-executed as `nobody` through `setpriv`): a segment file its user may not read is
//! a typed `WalError::Io` naming that file with `PermissionDenied`, for the owner's open, a
//! read-only look and every command of the tool (status 3), never corruption, a shorter log or
//! a panic; a log directory the user may not write refuses the owner's open the same way. None
//! of them changes a byte, and once the mode is put back every record is there. A user who may
//! lock no memory (`RLIMIT_MEMLOCK` 0, which root's `CAP_IPC_LOCK` would bypass) still gets
//! keys, ciphers and io_uring: keys say they are not locked, and an encrypted log works.
//!
//! Needs root and `setpriv` (util-linux); elsewhere the test prints `SKIPPED:` and why.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{NOBODY, assert_records, can_change_user, child_test_as_nobody, config, read_all, seg, snapshot, write_log};
use nodedb_wal::{FsStorage, KeyRing, ReadOnlyWal, SecureKey, SegmentedWal, SegmentedWalConfig, WalError};

/// The variable that makes this binary's child test run, naming the log directory.
const CHILD_DIR: &str = "NODEDB_WAL_UNPRIVILEGED_DIR";

/// One line for an open's outcome: `Io <op> <kind> <path>`, or the error's debug form.
fn outcome<T>(result: nodedb_wal::Result<T>) -> String {
    match result {
        Ok(_) => "opened".into(),
        Err(WalError::Io { op, path, source }) => format!("Io {op:?} {:?} {}", source.kind(), path.display()),
        Err(e) => format!("other {e:?}"),
    }
}

/// Runs in the child, as `nobody`: opens the log both ways and prints each outcome.
#[test]
fn child_opens_the_log() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let dir = Path::new(&dir);
    println!("look: {}", outcome(ReadOnlyWal::open(dir, None)));
    println!("owner: {}", outcome(SegmentedWal::open(config(dir))));
}

/// The child's two lines, run as `nobody` on `dir`.
fn opens_as_nobody(dir: &Path) -> (String, String) {
    let out = child_test_as_nobody("child_opens_the_log", CHILD_DIR, dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |tag: &str| {
        text.lines().find_map(|l| l.split_once(tag).map(|(_, rest)| rest)).unwrap_or_else(|| panic!("no {tag} line in {text}")).to_string()
    };
    (line("look: "), line("owner: "))
}

/// The tool's status and standard error, run as `nobody`.
fn tool_as_nobody(args: &[&str]) -> (i32, String) {
    let out = Command::new(NOBODY[0]).args(&NOBODY[1..]).arg(env!("CARGO_BIN_EXE_nodedb-wal")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A log in a directory `nobody` may enter and list, in a parent it may not write.
fn log_readable_by_all(tmp: &Path) -> (std::path::PathBuf, u64) {
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.join("wal");
    let last = write_log(&FsStorage::new(), &dir, &[40; 8]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (dir, last)
}

#[test]
fn a_segment_its_user_may_not_read_is_a_typed_error_naming_it_everywhere_and_changes_nothing() {
    if let Err(why) = can_change_user() {
        eprintln!("SKIPPED: cannot run a child as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, last) = log_readable_by_all(tmp.path());
    let victim = seg(&dir, 3);
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o000)).unwrap();
    let before = snapshot(&dir);

    let denied = format!("Io Open PermissionDenied {}", victim.display());
    let (look, owner) = opens_as_nobody(&dir);
    assert_eq!(look, denied, "a read-only look");
    // The owner may not take the lock (the directory is root's, 0755): refused before it reads.
    assert!(owner.starts_with("Io ") && owner.contains("PermissionDenied"), "the owner: {owner}");
    let ds = dir.to_str().unwrap();
    let copy = tmp.path().join("copy");
    for args in [vec!["inspect", ds], vec!["verify", ds], vec!["dump", ds], vec!["salvage", ds, copy.to_str().unwrap()]] {
        let (status, stderr) = tool_as_nobody(&args);
        assert_eq!(status, 3, "{args:?}: {stderr}");
        assert!(stderr.contains(victim.to_str().unwrap()) && stderr.contains("Permission denied"), "{args:?}: {stderr}");
    }
    assert_eq!(snapshot(&dir), before, "nothing changed");
    assert!(!copy.exists(), "salvage made nothing");

    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(opens_as_nobody(&dir).0, "opened", "a look once the mode is back");
    assert_eq!(tool_as_nobody(&["verify", ds]).0, 0);
    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
}

#[test]
fn a_log_directory_its_user_may_not_write_refuses_the_owner_and_changes_nothing() {
    if let Err(why) = can_change_user() {
        eprintln!("SKIPPED: cannot run a child as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, last) = log_readable_by_all(tmp.path());
    // Every file writable by all: only the directory, which takes no new entries from this
    // user, stands in the way of a writer, which must make a segment at its first append.
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let before = snapshot(&dir);

    let (look, owner) = opens_as_nobody(&dir);
    assert_eq!(look, "opened", "a look needs no write access");
    assert!(owner.starts_with("Io ") && owner.contains("PermissionDenied"), "the owner: {owner}");
    assert!(!owner.contains("other"), "{owner}");
    assert_eq!(snapshot(&dir), before, "a refused open writes nothing");

    let wal = SegmentedWal::open(config(&dir)).unwrap();
    assert_records(&read_all(&wal), 1, last);
}

/// The variable that makes the child test below run, naming the directory of its log.
const NO_MEMLOCK_DIR: &str = "NODEDB_WAL_NO_MEMLOCK_DIR";

/// Runs in the child, as `nobody`, with no memory it may lock: makes a key, writes an encrypted
/// log on the io_uring backend with it, reopens the log and prints what it found.
#[test]
fn child_writes_an_encrypted_log_without_locked_memory() {
    let Ok(dir) = std::env::var(NO_MEMLOCK_DIR) else { return };
    let none = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    rustix::process::setrlimit(rustix::process::Resource::Memlock, none).expect("lowering a limit is always allowed");
    let warnings = common::warnings::catch_every_warning();
    let key = SecureKey::generate();
    println!("key locked: {}", key.is_locked());
    let ring = std::sync::Arc::new(KeyRing::with_active(1, key));
    let config = SegmentedWalConfig { key_ring: Some(ring), ..config(Path::new(&dir)) };
    let storage = FsStorage::io_uring();
    let wal = SegmentedWal::open_with(storage.clone(), config.clone()).expect("open");
    common::append_synced(&wal, 1, 60);
    wal.close().expect("close");
    let wal = SegmentedWal::open_with(storage, config).expect("reopen");
    let records = read_all(&wal);
    let intact = records.iter().enumerate().all(|(i, r)| r.lsn.0 == i as u64 + 1 && r.payload == common::payload(r.lsn.0));
    println!("records: {} intact: {intact}", records.len());
    let said = |what: &str| warnings.lock().unwrap().iter().filter(|w| w.contains(what)).count();
    println!("key warnings: {}, cipher warnings: {}", said("could not mlock key memory"), said("a cipher's key schedule"));
}

#[test]
fn without_lockable_memory_keys_and_ciphers_say_so_once_and_an_encrypted_log_still_works() {
    if let Err(why) = can_change_user() {
        eprintln!("SKIPPED: cannot run a child as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = child_test_as_nobody("child_writes_an_encrypted_log_without_locked_memory", NO_MEMLOCK_DIR, &tmp.path().join("wal"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("key locked: false"), "RLIMIT_MEMLOCK 0 locks nothing: {stdout}");
    assert!(stdout.contains("records: 60 intact: true"), "{stdout}");
    // Every segment's cipher went unlocked (the writer's, recovery's, the reader's); the
    // operator is told once, not at every segment.
    assert!(stdout.contains("key warnings: 1, cipher warnings: 1"), "{stdout}");
}
