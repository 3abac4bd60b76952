//! The two ends of a crash child: the child appends and acknowledges, the parent starts it,
//! kills it and reads what it acknowledged.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nodedb_wal::{Lsn, Record, SegmentedWal, WalError};

use super::{Mode, Origin, THREADS, appends_groups, pipeline_depth};

/// How long the parent waits for a child to open the log before calling it hung.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);

const ENV_DIR: &str = "NODEDB_WAL_CRASH_CHILD";
const ENV_ACKS: &str = "NODEDB_WAL_CRASH_ACKS";
const ENV_ROUND: &str = "NODEDB_WAL_CRASH_ROUND";
const ENV_MODE: &str = "NODEDB_WAL_CRASH_MODE";

/// What the parent asked the child to do.
#[derive(Debug)]
pub struct ChildSpec {
    dir: PathBuf,
    acks: PathBuf,
    round: u32,
    mode: Mode,
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
    let wal = match spec.mode.open(&spec.dir) {
        Ok(wal) => wal,
        Err(e) => {
            // Past the test harness's output capture, which `exit` would drop.
            let _ = writeln!(std::io::stderr(), "child: opening the log failed: {e}");
            std::process::exit(3);
        }
    };
    write_lines(&acks, &format!("OPEN {}\n", wal.next_lsn()));
    std::thread::spawn(exit_with_parent);
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let (wal, acks) = (&wal, &acks);
            s.spawn(move || append_until_error(wal, acks, spec.round, thread));
        }
    });
    let _ = wal.close();
    write_lines(&acks, "DONE\n");
}

/// Ends the child once its parent is gone (a parent killed mid-test cannot kill it).
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::exit(4);
}

fn append_until_error(wal: &SegmentedWal, acks: &File, round: u32, thread: u32) {
    let depth = pipeline_depth(thread);
    let mut seq = 0;
    loop {
        let mut lines = String::new();
        let mut last = Lsn::ZERO;
        if appends_groups(thread) {
            let origins: Vec<Origin> = (seq..seq + depth).map(|seq| Origin { round, thread, seq }).collect();
            let payloads: Vec<Vec<u8>> = origins.iter().map(|o| o.payload()).collect();
            let records: Vec<Record<'_>> =
                origins.iter().zip(&payloads).map(|(o, p)| Record::new(o.record_type(), p).scoped(o.scope())).collect();
            match wal.append_group(&records) {
                Ok(lsns) => {
                    for (lsn, o) in (lsns.start().0..).zip(&origins) {
                        writeln!(lines, "ACK {lsn} {thread} {}", o.seq).expect("write to a String");
                    }
                    last = *lsns.end();
                }
                Err(e) => return report_error(acks, thread, &e),
            }
        }
        for seq in (seq..seq + depth).filter(|_| !appends_groups(thread)) {
            let origin = Origin { round, thread, seq };
            let payload = origin.payload();
            match wal.append(Record::new(origin.record_type(), &payload).scoped(origin.scope())) {
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

fn report_error(acks: &File, thread: u32, err: &WalError) {
    let kind = match err {
        WalError::Io { .. } => "io",
        WalError::Poisoned { .. } => "poisoned",
        _ => "other",
    };
    write_lines(acks, &format!("ERR {thread} {kind} {}\n", err.to_string().replace('\n', " ")));
}

/// One `write` (the file is in append mode), so lines of different threads never interleave.
fn write_lines(mut file: &File, lines: &str) {
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
        let acks = scratch.join(format!("acks-{round}"));
        let stderr = scratch.join(format!("stderr-{round}"));
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args([entry, "--exact", "--test-threads=1", "-q"])
            .env(ENV_DIR, dir)
            .env(ENV_ACKS, &acks)
            .env(ENV_ROUND, round.to_string())
            .env(ENV_MODE, mode.encode())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create the child's stderr file"))
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

    /// Sends SIGKILL (unless the child has exited), reaps it and reads what it acknowledged.
    pub fn kill(&mut self) -> Acks {
        let exited_by_itself = self.child.try_wait().expect("poll the child");
        if exited_by_itself.is_none() {
            self.child.kill().expect("SIGKILL the child");
        }
        self.child.wait().expect("reap the child");
        let text = std::fs::read(&self.acks).unwrap_or_default();
        let mut acks = parse_acks(&text);
        acks.exited_by_itself = exited_by_itself;
        acks.stderr = self.stderr_text();
        let _ = std::fs::remove_file(&self.acks);
        let _ = std::fs::remove_file(&self.stderr);
        acks
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
