//! A file system that stops dead in the middle of writes keeps every acknowledged record: what
//! `wait_durable` reported durable is what an fdatasync really made durable on ext4 and XFS,
//! including the new segment files and their directory entries.
//!
//! Each file system is made in a sparse image on a loop device. Each round a child process
//! (this test binary, re-executed to run only `crash_child_process`) appends from eight threads
//! with group commit and acknowledges what `wait_durable` returned Ok for; after 1 to 50 ms the
//! parent shuts the file system down with `FS_IOC_SHUTDOWN` and `FS_SHUTDOWN_FLAGS_NOLOGFLUSH`:
//! from then on every I/O fails and nothing that was not already on the device (journal or log
//! included) gets there, the state a power cut would leave. The parent kills the child,
//! unmounts, mounts again (the file system replays its journal) and reopens the log, checking
//! that every acknowledged record is there, intact, at its LSN; that LSNs are dense; that every
//! record returned in earlier rounds is still there; that every other record is an intact one
//! this round's child appended; and that the log takes appends again. The child met only I/O
//! errors or poisoning. Rounds cycle through io_uring and pwrite, O_DIRECT and buffered I/O,
//! plaintext and encrypted segments; one in three is a feature round (as in `process_kill.rs`:
//! `append_durable`, `append_batch`, tombstones and purges, truncation and reuse of kept files
//! during the round, key rotation, 32 KiB segments).
//!
//! The double-write buffer gets the same treatment: a child writes batches of pages through it
//! into a page file on the same file system until the shutdown; after the remount, recovery
//! with the engine's validator leaves every page whole, old or new, the batch in flight whole
//! or absent, and every acknowledged page write new.
//!
//! The same rounds run with a `WalWriter` in the child instead of the log, with records of 2 to
//! 9 MiB among small ones (each whole or absent after the remount), and with the double-write
//! buffer written by four threads at once, each on pages of its own (every thread's write in
//! flight whole or absent, every acknowledged one new).
//!
//! Needs root, loop devices, mkfs.ext4 and mkfs.xfs; where any is missing the test prints
//! `SKIPPED:` and why. `NODEDB_WAL_FS_ROUNDS` sets the rounds per file system (default 25 in
//! release builds, 5 in debug builds); `NODEDB_WAL_WRITER_FS_ROUNDS` (10, 3),
//! `NODEDB_WAL_LARGE_FS_ROUNDS` (6, 2) and `NODEDB_WAL_DWB_THREADS_FS_ROUNDS` (25, 5) those of
//! the `WalWriter`, large-record and threaded buffer rounds.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::crash::child::{ChildRun, ChildSpec, EXIT_OPEN_FAILED, run_child};
use common::crash::model::{KEEP_LARGE_RECORDS, Model};
use common::crash::{Mode, Rng, dwb, preserving_on_failure, read_only_look, rounds_from_env, scratch_dir};
use common::{FsKind, LoopFs};
use rustix::fs::{Mode as FileMode, OFlags};
use rustix::ioctl::{Opcode, Setter, opcode};

const CHILD_ENTRY: &str = "crash_child_process";

/// `FS_IOC_SHUTDOWN`, `_IOR('X', 125, __u32)`: the same number as `XFS_IOC_GOINGDOWN` and
/// `EXT4_IOC_SHUTDOWN`.
const FS_IOC_SHUTDOWN: Opcode = opcode::read::<u32>(b'X', 125);
const _: () = assert!(FS_IOC_SHUTDOWN == 0x8004_587D);
/// Shut down without flushing the journal or log: what it holds in memory is lost.
const FS_SHUTDOWN_FLAGS_NOLOGFLUSH: u32 = 2;

/// Shuts down the file system mounted at `mount`: every later I/O on it fails.
#[expect(unsafe_code, reason = "rustix has no safe wrapper for FS_IOC_SHUTDOWN")]
fn shut_down(mount: &Path) -> std::io::Result<()> {
    let fd = rustix::fs::open(mount, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, FileMode::empty())?;
    // SAFETY: FS_IOC_SHUTDOWN takes a pointer to a `__u32` of flags and only reads it; `Setter`
    // passes a pointer to its own `u32`, which lives for the whole call.
    let shutdown = unsafe { Setter::<FS_IOC_SHUTDOWN, u32>::new(FS_SHUTDOWN_FLAGS_NOLOGFLUSH) };
    // SAFETY: as above; the call has no other effect on this process's memory.
    unsafe { rustix::ioctl::ioctl(&fd, shutdown) }?;
    Ok(())
}

/// Not a test on its own: the entry point of the child processes the shutdown tests start (a
/// log's or a double-write buffer's). Without a child's environment it returns at once.
#[test]
fn crash_child_process() {
    if let Some(spec) = ChildSpec::from_env() {
        run_child(&spec);
    }
    dwb::run_child_from_env();
}

/// The file systems take turns: a child started for one would hold, until its `exec`, copies of
/// every descriptor the other has open (its log's directory lock, files on its mount).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fresh file system of `kind` on a loop device, mounted; `None`, with the reason printed,
/// where this machine cannot make one.
fn mount_or_skip(kind: FsKind) -> Option<LoopFs> {
    LoopFs::create(kind).map_err(|e| eprintln!("SKIPPED: cannot make and mount an {} file system on a loop device ({e})", kind.name())).ok()
}

/// Shuts `fs` down under the running child. One round in eight counts from the child's start,
/// so that some shutdowns land in its start-up or recovery (cutting torn tails, sealing,
/// removing or reusing files); the others come once it has opened. Returns how many bytes of
/// acknowledgements the child had written when the shutdown began.
fn shut_down_under(child: &mut ChildRun, fs: &LoopFs, rng: &mut Rng, name: &str) -> u64 {
    if rng.below(8) == 0 {
        std::thread::sleep(rng.start_delay());
    } else {
        child.wait_open();
        std::thread::sleep(rng.kill_delay());
    }
    let before = child.acks_written();
    shut_down(&fs.path()).unwrap_or_else(|e| panic!("FS_IOC_SHUTDOWN on {name}: {e}"));
    before
}

/// The rounds of a log's child (`rounds` of them, round `r` in `mode_of(r)`) on a file system of
/// `kind`, each recovery checked against `model`.
fn acknowledged_records_survive_a_shutdown(kind: FsKind, rounds: u32, mut model: Model, mode_of: impl Fn(u32) -> Mode) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut fs) = mount_or_skip(kind) else { return };
    let mode_name = |m: Mode| {
        if m.writer {
            " writer"
        } else if m.large_records {
            " large"
        } else {
            ""
        }
    };
    let name = format!("{}{}", kind.name(), mode_name(mode_of(0)));
    let name = name.as_str();
    let mut rng = Rng::from_env(&format!("fs_shutdown {name}"));
    let scratch = scratch_dir();
    let dir = fs.path().join("wal");
    let mut shut_before_open = 0;
    for round in 0..rounds {
        let mode = mode_of(round);
        model.note_kept_files(&dir);
        let mut child = ChildRun::spawn(CHILD_ENTRY, &dir, round, mode, scratch.path());
        let before = shut_down_under(&mut child, &fs, &mut rng, name);
        let acks = child.kill_after_shutdown(before);
        shut_before_open += u32::from(acks.opened_at.is_none());
        if let Some(status) = acks.exited_by_itself {
            let open_failed = acks.opened_at.is_none() && status.code() == Some(EXIT_OPEN_FAILED);
            assert!(
                status.success() || open_failed,
                "{name} round {round}: the child failed after the shutdown ({status}); stderr:\n{}",
                acks.stderr
            );
        }
        for (kind, message) in &acks.errors {
            assert!(kind == "io" || kind == "poisoned", "{name} round {round}: the shutdown caused a {kind} error: {message}");
        }
        fs.remount().unwrap_or_else(|e| panic!("{name} round {round}: remounting after the shutdown failed: {e}"));
        let look = read_only_look(&dir);
        preserving_on_failure(&dir, &format!("{name}-round-{round}"), || {
            // Recovery runs in the next round's mode, never in the one the child wrote with.
            let wal = mode_of(round + 1).open(&dir).unwrap_or_else(|e| panic!("{name} round {round} ({mode:?}): reopening failed: {e}"));
            model.check_recovery(&wal, round, &acks);
            model.check_read_only_look(round, look, &acks);
            model.count_reused_files(&dir);
            model.append_as_parent(&wal, round);
            model.truncate(&wal);
            wal.close().expect("close");
        });
    }
    eprintln!(
        "fs_shutdown {name}: {rounds} rounds ({shut_before_open} shut down before the log was open), {}; {} more acknowledged after the shutdown began, {} \
         of them lost",
        model.summary(),
        model.acked_late,
        model.acked_late_lost
    );
}

/// The double-write buffer on a real file system: its file and the page file on one mount, a
/// child writing batches of pages, the file system shut down under it. After the remount,
/// recovery leaves every page whole, at the version its last acknowledged write left or at the
/// one of the write in flight (the whole batch or none of it), and takes writes again. Rounds
/// alternate buffered and O_DIRECT buffers (recovery in the other mode).
/// `threads` write at once, each its own pages, and each has a write in flight at the shutdown.
fn acknowledged_pages_survive_a_shutdown(kind: FsKind, threads: u32, rounds: u32) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut fs) = mount_or_skip(kind) else { return };
    let name = format!("{} x{threads}", kind.name());
    let name = name.as_str();
    let mut rng = Rng::from_env(&format!("fs_shutdown dwb {name}"));
    let scratch = scratch_dir();
    let dir = fs.path().join("db");
    dwb::create_pages(&dir).unwrap_or_else(|e| panic!("{name}: making the page file: {e}"));
    let mut model = dwb::PageModel::default();
    let mut shut_before_open = 0;
    for round in 0..rounds {
        let direct = round % 2 == 0;
        let env = dwb::child_env(&dir, direct, threads, rng.below(u64::MAX));
        let mut child = ChildRun::spawn_with_env(CHILD_ENTRY, round, scratch.path(), &env);
        shut_down_under(&mut child, &fs, &mut rng, name);
        let (exited, acks, stderr) = child.kill_raw();
        let opened = acks.starts_with("OPEN ");
        shut_before_open += u32::from(!opened);
        if let Some(status) = exited {
            let open_failed = !opened && status.code() == Some(EXIT_OPEN_FAILED);
            assert!(
                status.success() || open_failed,
                "{name} round {round}: the child failed after the shutdown ({status}); stderr:\n{stderr}"
            );
        }
        fs.remount().unwrap_or_else(|e| panic!("{name} round {round}: remounting after the shutdown failed: {e}"));
        preserving_on_failure(&dir, &format!("dwb-{name}-round-{round}"), || model.check_recovery(&dir, !direct, round, &acks));
    }
    eprintln!(
        "fs_shutdown dwb {name}: {rounds} rounds ({shut_before_open} shut down before the buffer was open), {} page writes acknowledged, writes in flight landed whole {} times and not at \
         all {} times, {} pages restored from the buffer",
        model.acked_pages, model.in_flight_landed, model.in_flight_lost, model.restored
    );
}

fn fs_rounds() -> u32 {
    rounds_from_env("NODEDB_WAL_FS_ROUNDS", 25, 5)
}

fn writer_mode(round: u32) -> Mode {
    Mode { writer: true, ..Mode::of_round(round) }
}

fn large_mode(round: u32) -> Mode {
    Mode { large_records: true, ..Mode::of_round(round) }
}

fn writer_rounds() -> u32 {
    rounds_from_env("NODEDB_WAL_WRITER_FS_ROUNDS", 10, 3)
}

fn large_rounds() -> u32 {
    rounds_from_env("NODEDB_WAL_LARGE_FS_ROUNDS", 6, 2)
}

fn dwb_threads_rounds() -> u32 {
    rounds_from_env("NODEDB_WAL_DWB_THREADS_FS_ROUNDS", 25, 5)
}

#[test]
fn acknowledged_pages_survive_a_file_system_shutdown_ext4() {
    acknowledged_pages_survive_a_shutdown(FsKind::Ext4, 1, fs_rounds());
}

#[test]
fn acknowledged_pages_survive_a_file_system_shutdown_xfs() {
    acknowledged_pages_survive_a_shutdown(FsKind::Xfs, 1, fs_rounds());
}

#[test]
fn pages_of_four_writing_threads_survive_a_file_system_shutdown_ext4() {
    acknowledged_pages_survive_a_shutdown(FsKind::Ext4, 4, dwb_threads_rounds());
}

#[test]
fn pages_of_four_writing_threads_survive_a_file_system_shutdown_xfs() {
    acknowledged_pages_survive_a_shutdown(FsKind::Xfs, 4, dwb_threads_rounds());
}

#[test]
fn acknowledged_records_survive_a_file_system_shutdown_ext4() {
    acknowledged_records_survive_a_shutdown(FsKind::Ext4, fs_rounds(), Model::default(), Mode::of_round);
}

#[test]
fn acknowledged_records_survive_a_file_system_shutdown_xfs() {
    acknowledged_records_survive_a_shutdown(FsKind::Xfs, fs_rounds(), Model::default(), Mode::of_round);
}

#[test]
fn acknowledged_wal_writer_records_survive_a_file_system_shutdown_ext4() {
    acknowledged_records_survive_a_shutdown(FsKind::Ext4, writer_rounds(), Model::default(), writer_mode);
}

#[test]
fn acknowledged_wal_writer_records_survive_a_file_system_shutdown_xfs() {
    acknowledged_records_survive_a_shutdown(FsKind::Xfs, writer_rounds(), Model::default(), writer_mode);
}

#[test]
fn records_of_several_mib_survive_a_file_system_shutdown_whole_or_not_at_all_ext4() {
    acknowledged_records_survive_a_shutdown(FsKind::Ext4, large_rounds(), Model::keeping(KEEP_LARGE_RECORDS), large_mode);
}

#[test]
fn records_of_several_mib_survive_a_file_system_shutdown_whole_or_not_at_all_xfs() {
    acknowledged_records_survive_a_shutdown(FsKind::Xfs, large_rounds(), Model::keeping(KEEP_LARGE_RECORDS), large_mode);
}
