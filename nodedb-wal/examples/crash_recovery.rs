//! The promise under a real crash: a child process (this program, started again) appends from
//! four threads and reports each record once `append_durable` has returned it; the parent kills
//! the child with SIGKILL in the middle of that stream, reopens the log and checks that every
//! reported record came back at its LSN, and that every record recovery returned is one the
//! child appended. The log is then used again.
//!
//! A database acknowledges a write to its client only after `append_durable` (or
//! `wait_durable`) returned: those writes are what must survive. A record appended but not yet
//! acknowledged may come back or not; either is right.
//!
//! A killed process leaves what it wrote in the page cache, so recovery here seldom finds a
//! torn tail; a power cut leaves those, which the crash simulation covers, and
//! `tests/process_kill.rs` repeats this kill for hundreds of rounds (docs/TESTING.md).
//! `nodedb-wal verify DIR` checks a log from the shell: run this example with
//! `KEEP_DIR=/a/new/dir` to keep the log there and look at it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};

const ROW: RecordType = RecordType::optional(0x100);
/// The environment variable that makes this program the child, naming the log directory.
const CHILD_DIR: &str = "CRASH_RECOVERY_CHILD_DIR";
const THREADS: u32 = 4;
/// Acknowledgements the parent reads before it kills the child.
const ACKS_BEFORE_KILL: usize = 2_000;

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    config.segment_bytes_target = 256 * 1024; // small segments: the kill may land in a roll
    config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
    config
}

/// The child: appends until it is killed, printing `LSN payload` for each acknowledged record.
/// A line is written with one `write` once the record is durable, so the parent never reads an
/// acknowledgement the log did not give.
fn child(dir: &Path) -> nodedb_wal::Result<()> {
    let wal = Arc::new(SegmentedWal::open(config(dir))?);
    let writers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || -> nodedb_wal::Result<()> {
                for i in 0u64.. {
                    let payload = format!("thread {thread} row {i}");
                    let lsn = wal.append_durable(Record::new(ROW, payload.as_bytes()))?;
                    println!("{lsn} {payload}");
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread panicked")?;
    }
    Ok(())
}

/// The parent: starts the child, kills it mid-stream, returns what it acknowledged.
fn crash_a_child(dir: &Path) -> Result<BTreeMap<Lsn, String>, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?).env(CHILD_DIR, dir).stdout(Stdio::piped()).spawn()?;
    let mut acknowledged = BTreeMap::new();
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    while acknowledged.len() < ACKS_BEFORE_KILL {
        let Some(line) = lines.next() else {
            // The child stopped by itself: it met an error, which it printed.
            let status = child.wait()?;
            return Err(format!("the child stopped ({status}) after {} acknowledgements", acknowledged.len()).into());
        };
        let line = line?;
        let (lsn, payload) = line.split_once(' ').ok_or("an acknowledgement without a payload")?;
        acknowledged.insert(Lsn(lsn.parse()?), payload.to_string());
    }
    child.kill()?; // SIGKILL: no destructor, no close, no flush
    child.wait()?;
    // Acknowledgements already in the pipe when the kill landed count too.
    for line in lines {
        let line = line?;
        if let Some((lsn, payload)) = line.split_once(' ') {
            acknowledged.insert(Lsn(lsn.parse()?), payload.to_string());
        }
    }
    Ok(acknowledged)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        return Ok(child(Path::new(&dir))?);
    }
    let temp = tempfile::tempdir()?;
    let dir = std::env::var_os("KEEP_DIR").map_or_else(|| temp.path().join("wal"), PathBuf::from);

    let acknowledged = crash_a_child(&dir)?;
    println!("the child was killed after {} acknowledged appends", acknowledged.len());

    let wal = SegmentedWal::open(config(&dir))?;
    let info = wal.recovery_info();
    match &info.torn_tail {
        Some(torn) => println!("recovery cut a torn tail: {torn:?}"),
        None => println!("recovery found no torn tail"),
    }
    println!("recovered {} records, LSN {} to {}", info.record_count, info.first_lsn, info.last_lsn);

    // Every acknowledged record is back at its LSN; every other record is one the child
    // appended (its payload has the child's form) but never reported, cut short by the kill.
    let mut extra = 0;
    let mut found = 0;
    for record in wal.read_from(Lsn::FIRST)? {
        let record = record?;
        let payload = std::str::from_utf8(&record.payload)?;
        match acknowledged.get(&record.lsn) {
            Some(expected) => {
                assert_eq!(payload, expected, "LSN {} came back with another payload", record.lsn);
                found += 1;
            }
            None => {
                assert!(payload.starts_with("thread "), "LSN {} holds {payload:?}, never appended", record.lsn);
                extra += 1;
            }
        }
    }
    assert_eq!(found, acknowledged.len(), "an acknowledged record is missing");
    println!("all {found} acknowledged records are back, and {extra} appended but not yet acknowledged when the kill landed");

    // The log goes on from where recovery left it.
    let next = wal.append_durable(Record::new(ROW, b"after the crash"))?;
    assert_eq!(next, info.last_lsn.next());
    wal.close()?;
    println!("appended LSN {next} after the crash");
    Ok(())
}
