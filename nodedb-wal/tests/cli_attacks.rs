//! Adversarial review of the tool's reading of `MANIFEST` and `FLOOR` (`inspect`, and the
//! check that a directory is a log's) and of the writer's new check that its directory takes
//! new entries, through the tool as an operator runs it.
//!
//! A side file replaced by a FIFO (with and without a writer), a directory, an endless device
//! or a huge sparse file must give a status, never a hang, and change nothing. A directory
//! writable only through a capability, a relative path and a symlinked directory must still
//! open a writer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig};
use rustix::fs::{CWD, FileType, Mode};

/// Longer than any command on a small log takes: past it, the command hangs.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the tool with `args` (through `wrapper`, if any) in `cwd`; its status and output, or a
/// failure once the deadline passes (the command is killed).
fn run(wrapper: &[&str], args: &[&str], cwd: &Path) -> (i32, String) {
    let exe = env!("CARGO_BIN_EXE_nodedb-wal");
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command.args(args).current_dir(cwd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{args:?}: still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or_else(|| panic!("{args:?} ended by a signal: {text}")), text)
}

/// Each entry's name, type and (for a regular file) bytes: what a look must leave as it was.
fn snapshot(dir: &Path) -> Vec<(String, String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let kind = std::fs::symlink_metadata(e.path()).unwrap().file_type();
            let bytes = if kind.is_file() && e.metadata().unwrap().len() < 1 << 20 { std::fs::read(e.path()).unwrap() } else { Vec::new() };
            (e.file_name().into_string().unwrap(), format!("{kind:?}"), bytes)
        })
        .collect();
    entries.sort();
    entries
}

fn write_log(dir: &Path) {
    let wal = SegmentedWal::open(SegmentedWalConfig::new(dir)).unwrap();
    for i in 0..10u8 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &[i; 300])).unwrap();
    }
    wal.close().unwrap();
}

/// Puts something odd under `path`; what it returns is held until the look is done (the
/// writer end of a FIFO, so that reads find no data yet no end of file).
fn replace(path: &Path, odd: &str) -> Option<std::fs::File> {
    let _ = std::fs::remove_file(path);
    match odd {
        "fifo" | "fifo with a writer" => {
            rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
            // Read-write: opening a FIFO so never waits for the other end.
            (odd == "fifo with a writer").then(|| std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap())
        }
        "directory" => {
            std::fs::create_dir(path).unwrap();
            None
        }
        "endless device" => {
            std::os::unix::fs::symlink("/dev/zero", path).unwrap();
            None
        }
        "huge sparse file" => {
            std::fs::File::create(path).unwrap().set_len(1 << 40).unwrap();
            None
        }
        _ => unreachable!("{odd}"),
    }
}

fn restore(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

const ODD: [&str; 5] = ["fifo", "fifo with a writer", "directory", "endless device", "huge sparse file"];

// In a log's directory, each command answers with a status and changes nothing; in a
// directory without segments or LOCK, such a file is no intact side file, so the directory is
// not taken for a log (status 5).
#[test]
fn odd_files_under_manifest_or_floor_get_a_status_never_a_hang_or_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for name in ["MANIFEST", "FLOOR"] {
        let saved = std::fs::read(log.join(name)).ok();
        for odd in ODD {
            for (dir, is_log) in [(&log, true), (&bare, false)] {
                let path = dir.join(name);
                let _held = replace(&path, odd);
                let before = snapshot(dir);
                for command in ["inspect", "verify", "dump"] {
                    let (status, text) = run(&[], &[command, dir.to_str().unwrap()], tmp.path());
                    let at = format!("{command} with {name} a {odd} in {}", dir.display());
                    if is_log {
                        assert!((0..=5).contains(&status), "{at}: status {status}: {text}");
                    } else {
                        assert_eq!(status, 5, "{at}: {text}");
                    }
                    assert_eq!(snapshot(dir), before, "{at}: a look changes nothing");
                }
                restore(&path);
            }
        }
        if let Some(bytes) = saved {
            std::fs::write(log.join(name), bytes).unwrap();
        }
    }
    let (status, text) = run(&[], &["verify", log.to_str().unwrap()], tmp.path());
    assert_eq!(status, 0, "the log, its files back, is clean: {text}");
}

/// Whether this process may change to another user (root, and `setpriv` is there).
fn can_change_user() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    Command::new("setpriv").arg("--version").output().map(|_| ()).map_err(|e| format!("setpriv: {e}"))
}

// The writer's open asks whether its directory takes new entries with the effective ids and
// capabilities, as the kernel judges the creation: a user without write permission on the
// directory but with CAP_DAC_OVERRIDE writes a log there; without the capability, the open is
// refused and leaves the directory empty.
#[test]
fn a_directory_writable_only_through_a_capability_takes_a_writer() {
    if let Err(why) = can_change_user() {
        eprintln!("SKIPPED: cannot run the tool as another user ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let with_cap = [&nobody[..], &["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]].concat();
    let bench = |dir: &PathBuf| {
        ["bench".to_string(), dir.to_str().unwrap().to_string(), "--threads".into(), "1".into(), "--seconds".into(), "1".into()]
    };

    let refused = tmp.path().join("refused");
    std::fs::create_dir(&refused).unwrap();
    let args = bench(&refused);
    let (status, text) = run(&nobody, &args.iter().map(String::as_str).collect::<Vec<_>>(), tmp.path());
    assert_ne!(status, 0, "no write permission, no capability: {text}");
    assert!(snapshot(&refused).is_empty(), "a refused open creates nothing");

    let allowed = tmp.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let args = bench(&allowed);
    let (status, text) = run(&with_cap, &args.iter().map(String::as_str).collect::<Vec<_>>(), tmp.path());
    assert_eq!(status, 0, "CAP_DAC_OVERRIDE lets the user create entries: {text}");
    let (status, text) = run(&[], &["verify", allowed.to_str().unwrap()], tmp.path());
    assert_eq!(status, 0, "{text}");
}

// The check resolves the directory as every other call of the writer does: relative to the
// working directory, and through a symlink.
#[test]
fn a_relative_path_and_a_symlinked_directory_take_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
    for dir in ["relative", "link"] {
        let (status, text) = run(&[], &["bench", dir, "--threads", "1", "--seconds", "1"], tmp.path());
        assert_eq!(status, 0, "{dir}: {text}");
        let (status, text) = run(&[], &["verify", dir], tmp.path());
        assert_eq!(status, 0, "{dir}: {text}");
    }
    assert!(real.join("LOCK").exists(), "the log went through the link");
}

// Found by review: on a log it refuses, `inspect` listed a segment file that is a symbolic
// link (a segment moved to another disk) with the length of the link, not of the segment it
// names, beside the version and key read from that segment. Odd files under segment names
// must neither hang the listing nor stop it, and a link to nothing has no length to show.
#[test]
fn inspect_of_a_refused_log_lists_linked_segments_by_their_target_and_odd_ones_without_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&log);
    let name = |id: u64| format!("{id:020}.wal");
    let segment = log.join(name(1));
    // A sealed segment's length stays; damage a byte of its first record's payload.
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let moved = tmp.path().join("elsewhere");
    std::fs::write(&moved, &bytes).unwrap();
    std::fs::remove_file(&segment).unwrap();
    std::os::unix::fs::symlink(&moved, &segment).unwrap();
    let mut held = Vec::new();
    for (id, odd) in (2..).zip(ODD) {
        held.push(replace(&log.join(name(id)), odd));
    }
    let dangling = log.join(name(2 + ODD.len() as u64));
    std::os::unix::fs::symlink(tmp.path().join("gone"), &dangling).unwrap();
    let before = snapshot(&log);
    let (status, text) = run(&[], &["inspect", log.to_str().unwrap()], tmp.path());
    assert_eq!(status, 2, "{text}");
    assert!(text.contains(&format!("{}  {:>12}", name(1), bytes.len())), "the linked segment's own length:\n{text}");
    for (id, odd) in (2..).zip(ODD) {
        assert!(text.contains(&name(id)), "the {odd} is listed:\n{text}");
    }
    assert!(text.contains(&format!("{}  {:>12}", dangling.file_name().unwrap().to_str().unwrap(), "?")), "{text}");
    assert_eq!(snapshot(&log), before, "a refused look changes no file");
}
