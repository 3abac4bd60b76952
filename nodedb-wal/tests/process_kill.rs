//! A process killed at any moment loses no acknowledged record, and the log it leaves is one
//! that recovery returns intact and that accepts appends again.
//!
//! Each round starts a child process (this test binary, re-executed to run only
//! `crash_child_process`) that opens the log and appends from eight threads with group commit,
//! acknowledging every record whose `wait_durable` returned Ok. After 1 to 50 ms (50 to 500 ms
//! in the rounds with 16 MiB segments, half of every sixteen, so that recovery reads a newest
//! segment past a megabyte with its read-ahead helper) the parent sends SIGKILL: most rounds while the threads append, one in eight counted from the child's
//! start, so that some kills land in start-up or in the child's own recovery. The parent then
//! reopens the log and checks that every acknowledged record is there, intact, at its LSN; that
//! LSNs are dense; that every record the log returned in earlier rounds is still there,
//! unchanged; that every other record is an intact one this round's child really appended; and
//! that the log takes new appends. The next round's child appends to the same, recovered log.
//! The rounds cycle through io_uring and pwrite, O_DIRECT and buffered I/O, plaintext and
//! encrypted segments. One round in three is a feature round (`common/crash.rs`): 32 KiB
//! segments, `append_durable`, `append_batch`, tombstones, temporal purges and Calvin positions,
//! a thread truncating behind the durable LSN so that rolls reuse kept files, and key rotation
//! in encrypted rounds; the parent then also checks that the oldest record moved no further than
//! the child's highest checkpoint, and that recovery's tombstones and purges are exactly those
//! of the records it returns.
//!
//! Two more tests run the same rounds on the rest of the write surface. In the first the child
//! writes with a `WalWriter` instead of the log (one thread, a sync every four records, a new
//! segment after `finish` whenever one passes the round's size); in the second some threads
//! append records of 2 to 9 MiB, larger than a batch of 1 MiB, among small ones, plaintext and
//! encrypted: recovery returns each whole or not at all, and every acknowledged one.
//!
//! `NODEDB_WAL_KILL_ROUNDS` sets the number of rounds (default 200 in release builds, 40 in
//! debug builds), `NODEDB_WAL_WRITER_KILL_ROUNDS` those of the `WalWriter` (12, 4) and
//! `NODEDB_WAL_LARGE_KILL_ROUNDS` those with large records (4, 2); `NODEDB_WAL_CRASH_SEED`
//! repeats a kill schedule.

mod common;

use common::crash::child::{ChildRun, ChildSpec, run_child};
use common::crash::model::{KEEP_LARGE_RECORDS, Model};
use common::crash::{Mode, Rng, preserving_on_failure, read_only_look, rounds_from_env, scratch_dir};

const CHILD_ENTRY: &str = "crash_child_process";

/// Not a test on its own: the entry point of the child process the kill test starts. Without
/// the child's environment it returns at once.
#[test]
fn crash_child_process() {
    if let Some(spec) = ChildSpec::from_env() {
        run_child(&spec);
    }
}

#[test]
fn acknowledged_records_survive_sigkill_at_random_moments() {
    let rounds = rounds_from_env("NODEDB_WAL_KILL_ROUNDS", 200, 40);
    kill_rounds("process_kill", rounds, Model::default(), Mode::of_long_round);
}

#[test]
fn acknowledged_wal_writer_records_survive_sigkill_at_random_moments() {
    let rounds = rounds_from_env("NODEDB_WAL_WRITER_KILL_ROUNDS", 12, 4);
    kill_rounds("process_kill writer", rounds, Model::default(), |round| Mode { writer: true, ..Mode::of_long_round(round) });
}

#[test]
fn records_of_several_mib_survive_sigkill_whole_or_not_at_all() {
    let rounds = rounds_from_env("NODEDB_WAL_LARGE_KILL_ROUNDS", 4, 2);
    let large = |round| Mode { large_records: true, ..Mode::of_long_round(round) };
    kill_rounds("process_kill large", rounds, Model::keeping(KEEP_LARGE_RECORDS), large);
}

/// Runs `rounds` kill rounds named `test`, round `r`'s child in `mode_of(r)`, checking each
/// recovery against `model`.
fn kill_rounds(test: &str, rounds: u32, mut model: Model, mode_of: impl Fn(u32) -> Mode) {
    let mut rng = Rng::from_env(test);
    let scratch = scratch_dir();
    let dir = scratch.path().join("wal");
    let mut killed_before_open = 0;
    let (mut largest_newest, mut newest_past_a_megabyte) = (0, 0);
    for round in 0..rounds {
        let mode = mode_of(round);
        model.note_kept_files(&dir);
        let mut child = ChildRun::spawn(CHILD_ENTRY, &dir, round, mode, scratch.path());
        let from_start = rng.below(8) == 0;
        if !from_start {
            child.wait_open();
        }
        std::thread::sleep(rng.kill_delay_for(mode));
        let acks = child.kill();
        assert!(
            acks.exited_by_itself.is_none() && acks.errors.is_empty(),
            "round {round} ({mode:?}): the child stopped or failed on its own: {:?}, errors {:?}; stderr:\n{}",
            acks.exited_by_itself,
            acks.errors,
            acks.stderr
        );
        killed_before_open += u32::from(acks.opened_at.is_none());
        let look = read_only_look(&dir);
        preserving_on_failure(&dir, &format!("kill-round-{round}"), || {
            // Recovery runs in the next round's mode, never in the one the killed child wrote with.
            let wal = mode_of(round + 1).open(&dir).unwrap_or_else(|e| panic!("round {round} ({mode:?}): reopening failed: {e}"));
            model.check_recovery(&wal, round, &acks);
            model.check_read_only_look(round, look, &acks);
            model.count_reused_files(&dir);
            let newest = wal.recovery_info().segments.last().map_or(0, |s| s.bytes);
            largest_newest = largest_newest.max(newest);
            newest_past_a_megabyte += u32::from(newest > 1 << 20);
            model.append_as_parent(&wal, round);
            model.truncate(&wal);
            wal.close().expect("close");
        });
    }
    eprintln!(
        "{test}: {rounds} rounds ({killed_before_open} killed before opening the log), {}, log ends at LSN {}; the newest segment was past a megabyte \
         at {newest_past_a_megabyte} recoveries (the largest {largest_newest} bytes)",
        model.summary(),
        model.last()
    );
}
