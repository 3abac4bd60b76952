//! The two ends of a crash child: the child appends and acknowledges, the parent starts it,
//! kills it and reads what it acknowledged.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nodedb_wal::{GroupEntry, KeyRing, Lsn, Record, SegmentedWal, WalError};

use super::{KEY_IDS, LARGE_THREAD_BASE, Mode, Origin, System, THREADS, appends_groups, pipeline_depth, role};

/// The `thread` the truncating and key-rotating threads of feature rounds report errors as.
const TRUNCATOR: u32 = 100;
const ROTATOR: u32 = 101;
/// The `thread` an error opening the log is reported as.
const OPENER: u32 = 102;
/// The exit status of a child that could not open its log or buffer.
pub const EXIT_OPEN_FAILED: i32 = 3;
/// Records the truncating thread keeps below the durable LSN at most: it cycles from this
/// down to none (a checkpoint at the durable LSN itself, which removes every sealed segment).
const TRUNCATE_KEEP_RECORDS: u64 = 300;

/// How long the parent waits for a child to open the log before calling it hung.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);

const ENV_DIR: &str = "NODEDB_WAL_CRASH_CHILD";
/// The acknowledgement file of any crash child.
pub const ENV_ACKS: &str = "NODEDB_WAL_CRASH_ACKS";
const ENV_ROUND: &str = "NODEDB_WAL_CRASH_ROUND";
const ENV_MODE: &str = "NODEDB_WAL_CRASH_MODE";

/// What the parent asked the child to do.
#[derive(Debug)]
pub struct ChildSpec {
    pub(super) dir: PathBuf,
    acks: PathBuf,
    pub(super) round: u32,
    pub(super) mode: Mode,
}

impl ChildSpec {
    /// The spec in this process's environment: `None` unless this is a crash child.
    pub fn from_env() -> Option<ChildSpec> {
        let dir = PathBuf::from(std::env::var_os(ENV_DIR)?);
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        Some(ChildSpec {
            dir,
            acks: PathBuf::from(var(ENV_ACKS)),
            round: var(ENV_ROUND).parse().expect("round"),
            mode: Mode::decode(&var(ENV_MODE)),
        })
    }
}

/// The child's work: open the log, say so, then append from every thread and acknowledge what
/// is durable until the process is killed or every thread has met an error.
pub fn run_child(spec: &ChildSpec) {
    let acks = File::options().create(true).append(true).open(&spec.acks).expect("open the acknowledgement file");
    if spec.mode.writer {
        return super::writer::run_writer_child(spec, &acks);
    }
    let (wal, ring) = spec.mode.open_keyed(&spec.dir).unwrap_or_else(|e| exit_open_failed(&acks, &e));
    write_lines(&acks, &format!("OPEN {}\n", wal.next_lsn()));
    std::thread::spawn(exit_with_parent);
    // The appenders still running: the truncating and rotating threads stop with the last.
    let appending = AtomicU32::new(THREADS);
    std::thread::scope(|s| {
        let base = if spec.mode.large_records { LARGE_THREAD_BASE } else { 0 };
        for thread in (0..THREADS).map(|t| t + base) {
            let (wal, acks, appending) = (&wal, &acks, &appending);
            s.spawn(move || {
                append_until_error(wal, acks, spec.round, thread, spec.mode.features);
                appending.fetch_sub(1, Ordering::AcqRel);
            });
        }
        if spec.mode.features {
            let (wal, acks, ring, appending) = (&wal, &acks, &ring, &appending);
            s.spawn(move || truncate_until_error(wal, acks, appending));
            if spec.mode.encrypted {
                s.spawn(move || rotate_keys(ring, appending));
            }
        }
    });
    let _ = wal.close();
    write_lines(&acks, "DONE\n");
}

/// Reports an error opening the log and exits with [`EXIT_OPEN_FAILED`].
pub(super) fn exit_open_failed(acks: &File, e: &WalError) -> ! {
    report_error(acks, OPENER, e);
    // Past the test harness's output capture, which `exit` would drop.
    let _ = writeln!(std::io::stderr(), "child: opening the log failed: {e}");
    std::process::exit(EXIT_OPEN_FAILED);
}

/// Ends the child once its parent is gone (a parent killed mid-test cannot kill it).
pub fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::exit(4);
}

/// Truncates behind the durable LSN every millisecond or so, while the appenders roll into
/// kept files: a crash can land inside a truncation or a reuse (header write, rename, directory
/// sync). Each checkpoint is written down before the call, so the parent knows how far the
/// oldest record may have moved.
fn truncate_until_error(wal: &SegmentedWal, acks: &File, appending: &AtomicU32) {
    let mut keep = TRUNCATE_KEEP_RECORDS;
    while appending.load(Ordering::Acquire) > 0 {
        std::thread::sleep(Duration::from_millis(1));
        keep = if keep == 0 { TRUNCATE_KEEP_RECORDS } else { keep - 60 };
        let checkpoint = wal.durable_lsn().0.saturating_sub(keep);
        if checkpoint == 0 {
            continue;
        }
        write_lines(acks, &format!("TRUNC {checkpoint}\n"));
        if let Err(e) = wal.truncate_before(Lsn(checkpoint)) {
            return report_error(acks, TRUNCATOR, &e);
        }
    }
}

/// Rotates the active key every few milliseconds: each rotation ends the open segment at the
/// next append. The parent's ring holds every key, so it never needs to know which was active.
fn rotate_keys(ring: &KeyRing, appending: &AtomicU32) {
    for id in KEY_IDS.iter().cycle().skip(1) {
        std::thread::sleep(Duration::from_millis(3));
        if appending.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Err(e) = ring.set_active(*id) {
            let _ = writeln!(std::io::stderr(), "child: thread {ROTATOR} could not rotate to key {id}: {e}");
            std::process::exit(5);
        }
    }
}

/// Appends the system record `system` of a feature round.
fn append_system(wal: &SegmentedWal, system: &System) -> Result<Lsn, WalError> {
    match system {
        System::Tombstone { .. } => {
            let tombstone = system.tombstone(wal.next_lsn()).expect("a tombstone");
            wal.append_tombstone(&tombstone)
        }
        System::Purge { purge, scope } => wal.append_temporal_purge(purge, *scope),
        System::Calvin { applied, scope } => wal.append_calvin_applied(applied, *scope),
    }
}

/// Appends `records` and the tombstone or purge `drop` as one group (`append_group_entries`);
/// a tombstone's purge LSN is the next LSN at the call, as for one appended alone.
fn append_group_ending_with(wal: &SegmentedWal, records: &[Record<'_>], drop: &System) -> Result<RangeInclusive<Lsn>, WalError> {
    let tombstone = drop.tombstone(wal.next_lsn());
    let last = match (drop, &tombstone) {
        (_, Some(tombstone)) => GroupEntry::Tombstone(tombstone),
        (System::Purge { purge, scope }, None) => GroupEntry::TemporalPurge(purge, *scope),
        (System::Calvin { .. } | System::Tombstone { .. }, None) => unreachable!("a group ends with a tombstone or purge only"),
    };
    let entries: Vec<GroupEntry<'_>> = records.iter().map(|r| GroupEntry::Record(*r)).chain([last]).collect();
    wal.append_group_entries(&entries)
}

fn append_until_error(wal: &SegmentedWal, acks: &File, round: u32, thread: u32, features: bool) {
    let depth = pipeline_depth(thread);
    // In feature rounds thread 0 appends with `append_durable` and threads 2 and 3 each
    // pipeline with `append_batch`.
    let (durable_each, batches) = (features && role(thread) == 0, features && (role(thread) == 2 || role(thread) == 3));
    let mut seq = 0;
    loop {
        let mut lines = String::new();
        let mut last = Lsn::ZERO;
        if durable_each {
            let origin = Origin { round, thread, seq };
            let payload = origin.payload();
            match wal.append_durable(Record::new(origin.record_type(), &payload).scoped(origin.scope())) {
                Ok(lsn) => write_lines(acks, &format!("ACK {lsn} {thread} {seq}\n")),
                Err(e) => return report_error(acks, thread, &e),
            }
            seq += 1;
            continue;
        }
        if appends_groups(thread) || batches {
            let origins: Vec<Origin> = (seq..seq + depth).map(|seq| Origin { round, thread, seq }).collect();
            let payloads: Vec<Vec<u8>> = origins.iter().map(|o| o.payload()).collect();
            let records: Vec<Record<'_>> =
                origins.iter().zip(&payloads).map(|(o, p)| Record::new(o.record_type(), p).scoped(o.scope())).collect();
            let appended = if batches {
                wal.append_batch(&records)
            } else if let Some(drop) = origins.last().and_then(|o| o.system()).filter(|_| features) {
                append_group_ending_with(wal, &records[..records.len() - 1], &drop)
            } else {
                wal.append_group(&records)
            };
            match appended {
                Ok(lsns) => {
                    for (lsn, o) in Lsn::range(&lsns).zip(&origins) {
                        writeln!(lines, "ACK {lsn} {thread} {}", o.seq).expect("write to a String");
                    }
                    last = *lsns.end();
                }
                Err(e) => return report_error(acks, thread, &e),
            }
        }
        for seq in (seq..seq + depth).filter(|_| !appends_groups(thread) && !batches) {
            let origin = Origin { round, thread, seq };
            let payload = origin.payload();
            let appended = match origin.system().filter(|_| features) {
                Some(system) => append_system(wal, &system),
                None => wal.append(Record::new(origin.record_type(), &payload).scoped(origin.scope())),
            };
            match appended {
                Ok(lsn) => {
                    writeln!(lines, "ACK {lsn} {thread} {seq}").expect("write to a String");
                    last = lsn;
                }
                Err(e) => return report_error(acks, thread, &e),
            }
        }
        if let Err(e) = wal.wait_durable(last) {
            return report_error(acks, thread, &e);
        }
        write_lines(acks, &lines);
        seq += depth;
    }
}

pub(super) fn report_error(acks: &File, thread: u32, err: &WalError) {
    let kind = match err {
        WalError::Io { .. } => "io",
        WalError::Poisoned { .. } => "poisoned",
        _ => "other",
    };
    write_lines(acks, &format!("ERR {thread} {kind} {}\n", err.to_string().replace('\n', " ")));
}

/// One `write` (the file is in append mode), so lines of different threads never interleave.
pub(super) fn write_lines(mut file: &File, lines: &str) {
    file.write_all(lines.as_bytes()).expect("write the acknowledgement file");
}

/// A running child.
#[derive(Debug)]
pub struct ChildRun {
    child: Child,
    acks: PathBuf,
    stderr: PathBuf,
}

/// One acknowledged record: its LSN and which child thread appended it as which sequence number.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// The LSN `append` returned.
    pub lsn: Lsn,
    /// The appending thread.
    pub thread: u32,
    /// Its sequence number in the thread.
    pub seq: u64,
}

/// What a child left behind.
#[derive(Debug, Default)]
pub struct Acks {
    /// The next LSN the child's log would hand out when it had opened, if it got that far.
    pub opened_at: Option<Lsn>,
    /// Acknowledged records.
    pub acked: Vec<Ack>,
    /// Records acknowledged after a file-system shutdown began (see
    /// [`ChildRun::kill_after_shutdown`]): each may be lost, but where it is there it is the
    /// record acknowledged.
    pub acked_late: Vec<Ack>,
    /// The highest checkpoint the child passed to `truncate_before`, if any.
    pub truncated_to: Option<Lsn>,
    /// Errors the child's threads met: (kind, message).
    pub errors: Vec<(String, String)>,
    /// How the child ended, if it exited before it was killed.
    pub exited_by_itself: Option<ExitStatus>,
    /// What the child wrote to stderr.
    pub stderr: String,
}

impl ChildRun {
    /// Starts a child that runs `entry` (a test of the current test binary) for `round` on the
    /// log in `dir`, with its acknowledgement and stderr files in `scratch`.
    pub fn spawn(entry: &str, dir: &Path, round: u32, mode: Mode, scratch: &Path) -> ChildRun {
        let dir = dir.to_str().expect("test paths are UTF-8").to_owned();
        ChildRun::spawn_with_env(entry, round, scratch, &[(ENV_DIR, dir), (ENV_ROUND, round.to_string()), (ENV_MODE, mode.encode())])
    }

    /// Starts a child that runs `entry` with `env` set, and [`ENV_ACKS`] naming its
    /// acknowledgement file in `scratch`; it must write a line starting `OPEN ` once ready.
    pub fn spawn_with_env(entry: &str, round: u32, scratch: &Path, env: &[(&str, String)]) -> ChildRun {
        let acks = scratch.join(format!("acks-{round}"));
        let stderr = scratch.join(format!("stderr-{round}"));
        let exe = std::env::current_exe().expect("the test binary's path");
        let output = File::create(&stderr).expect("create the child's stderr file");
        // The test harness reports a panic in the child, with its message, on stdout: keep it
        // beside stderr.
        let stdout = output.try_clone().expect("share the child's stderr file");
        let child = Command::new(exe)
            .args([entry, "--exact", "--test-threads=1", "-q"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(ENV_ACKS, &acks)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(output)
            .spawn()
            .expect("start the child");
        ChildRun { child, acks, stderr }
    }

    /// Waits until the child has opened the log. Panics if it exits first.
    pub fn wait_open(&mut self) {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.acks).unwrap_or_default();
            if text.starts_with("OPEN ") && text.contains('\n') {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!("the child exited ({status}) before opening the log; stderr:\n{}", self.stderr_text());
            }
            if start.elapsed() > OPEN_DEADLINE {
                let _ = self.child.kill();
                panic!("the child did not open the log within {OPEN_DEADLINE:?}; stderr:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many bytes of acknowledgements the child has written so far.
    pub fn acks_written(&self) -> u64 {
        std::fs::metadata(&self.acks).map_or(0, |m| m.len())
    }

    /// [`Self::kill`] after a file-system shutdown that began when the child had written
    /// `before` bytes of acknowledgements: only the records acknowledged in those bytes must
    /// survive. A power cut is instantaneous and no sync in flight at it ever returns, but
    /// `FS_IOC_SHUTDOWN` takes time, and an fdatasync racing it on ext4 can return success
    /// while the journal commit it waited for is aborted (seen: a file's growth lost behind an
    /// acknowledgement written after the shutdown began). Everything else (truncations, errors,
    /// the open) is read whole: it may have taken effect before the shutdown did.
    pub fn kill_after_shutdown(&mut self, before: u64) -> Acks {
        let (exited_by_itself, text, stderr) = self.kill_raw();
        let mut acks = parse_acks(text.as_bytes());
        let prefix = &text.as_bytes()[..text.len().min(before as usize)];
        let in_time = parse_acks(prefix).acked.len();
        acks.acked_late = acks.acked.split_off(in_time);
        acks.exited_by_itself = exited_by_itself;
        acks.stderr = stderr;
        acks
    }

    /// Sends SIGKILL (unless the child has exited), reaps it and reads what it acknowledged.
    pub fn kill(&mut self) -> Acks {
        let (exited_by_itself, text, stderr) = self.kill_raw();
        let mut acks = parse_acks(text.as_bytes());
        acks.exited_by_itself = exited_by_itself;
        acks.stderr = stderr;
        acks
    }

    /// Sends SIGKILL (unless the child has exited) and reaps it; returns how it ended if it
    /// exited by itself, its acknowledgement file's complete lines, and its stderr.
    pub fn kill_raw(&mut self) -> (Option<ExitStatus>, String, String) {
        let exited_by_itself = self.child.try_wait().expect("poll the child");
        if exited_by_itself.is_none() {
            self.child.kill().expect("SIGKILL the child");
        }
        self.child.wait().expect("reap the child");
        let text = String::from_utf8_lossy(&std::fs::read(&self.acks).unwrap_or_default()).into_owned();
        // A last line without its newline was cut by the kill.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]).to_owned();
        let stderr = self.stderr_text();
        let _ = std::fs::remove_file(&self.acks);
        let _ = std::fs::remove_file(&self.stderr);
        (exited_by_itself, complete, stderr)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for ChildRun {
    /// A parent that panics mid-round still kills and reaps its child.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the acknowledgement file; a last line without its newline was cut by the kill.
fn parse_acks(text: &[u8]) -> Acks {
    let text = String::from_utf8_lossy(text);
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut acks = Acks::default();
    for line in complete.lines() {
        let mut words = line.split(' ');
        let number = |w: Option<&str>| -> u64 { w.and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}")) };
        match words.next() {
            Some("OPEN") => acks.opened_at = Some(Lsn(number(words.next()))),
            Some("ACK") => {
                let lsn = Lsn(number(words.next()));
                let thread = u32::try_from(number(words.next())).expect("thread");
                let seq = number(words.next());
                acks.acked.push(Ack { lsn, thread, seq });
            }
            Some("TRUNC") => {
                let checkpoint = Lsn(number(words.next()));
                acks.truncated_to = Some(acks.truncated_to.map_or(checkpoint, |t| t.max(checkpoint)));
            }
            Some("ERR") => {
                let _thread = words.next();
                let kind = words.next().unwrap_or_default().to_owned();
                acks.errors.push((kind, words.collect::<Vec<_>>().join(" ")));
            }
            Some("DONE") => {}
            _ => panic!("bad line {line:?} in the acknowledgement file"),
        }
    }
    acks
}
