//! `nodedb-wal`: look at, check and exercise a log from the command line.
//!
//! Built only from the library's public API and the standard library, so it adds nothing to the
//! dependency tree of the library's users. `inspect`, `dump` and `verify` open the log read-only
//! (no lock, no repair), so they are safe beside a running writer and on a copy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodedb_wal::storage::Storage;
use nodedb_wal::{
    KeyRing, Lsn, PREAMBLE_SIZE, ReadOnlyWal, Record, RecordType, SecureKey, SegmentPreamble, SegmentedWal, SegmentedWalConfig, WalError,
};

const USAGE: &str = "\
usage: nodedb-wal <command> [arguments]

  inspect DIR            segments (LSN ranges, sizes, format version, cipher, key id) and health
  dump DIR [--from LSN] [--type T] [--json]
                         records with their segment and offset (T: a record type, hex or decimal)
  verify DIR             read and check every record (checksums, decryption); exit status:
                         0 clean, 1 torn tail (recovery will cut it), 2 corrupt
  bench [DIR] [--threads T] [--seconds S] [--size B]
                         durable appends from T threads (16) for S seconds (3) of B bytes (128);
                         with DIR (new or empty) the log stays there for inspect and verify;
                         with --key-file the new segments are encrypted under that key

  --key-file F [--key-id N]   a key for encrypted segments (key id N, default 1); repeat the
                              pair for a log written under several keys (bench encrypts under
                              the last)

exit status: 0 ok, 1 torn tail, 2 corrupt or unreadable log, 3 bad usage, missing directory or
I/O error, 4 key missing or wrong, 5 not a nodedb-wal directory";

/// `println!` that does not panic when nobody reads standard output any more (a pipe into
/// `head`, a closed descriptor): the rest of the text goes nowhere, and the command still ends
/// with the status that tells what it found.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that does not panic when standard error cannot be written (a closed pipe, a
/// full disk behind a redirection): a diagnostic that nobody can read is dropped, and the exit
/// status still tells what the command found.
macro_rules! diag {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that does not panic, as `diag!`: for progress lines, which the next one overwrites.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// Why the tool stops: an exit status, a message, and whether the usage text follows it.
struct Exit {
    code: u8,
    message: String,
    /// A mistyped command (an unknown option, a missing value), which the usage text helps
    /// with; never a log's own error, whatever its status.
    show_usage: bool,
}

impl Exit {
    fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit { code, message: message.into(), show_usage: false }
    }

    /// Bad usage: status 3, and the usage text after the message.
    fn usage(message: impl Into<String>) -> Exit {
        Exit { code: 3, message: message.into(), show_usage: true }
    }
}

impl From<WalError> for Exit {
    fn from(err: WalError) -> Exit {
        let code = match &err {
            // Damage: `verify` reports an authentication failure at a segment's first record
            // as a wrong key before it gets here.
            WalError::Corruption { .. }
            | WalError::MissingSegment { .. }
            | WalError::ManifestDamaged { .. }
            | WalError::UnsupportedVersion { .. }
            | WalError::UnsupportedCipher { .. }
            | WalError::UnknownRequiredType { .. }
            | WalError::MalformedPayload { .. }
            | WalError::AuthenticationFailed { .. } => 2,
            WalError::KeyRingMissing { .. } | WalError::UnknownKeyId { .. } | WalError::WrongKey { .. } | WalError::KeyFile { .. } => 4,
            _ => 3,
        };
        let hint = match &err {
            WalError::KeyRingMissing { .. } | WalError::UnknownKeyId { .. } | WalError::WrongKey { .. } => KEY_HINT,
            _ => "",
        };
        Exit::new(code, format!("{err}{hint}"))
    }
}

/// What to do about a missing or wrong key, in the tool's terms rather than the library's.
const KEY_HINT: &str =
    "\n(give each segment's key with --key-file F --key-id N; `nodedb-wal inspect DIR` lists the key id of every segment)";

type Outcome = Result<u8, Exit>;

#[derive(Default)]
struct Args {
    /// The options given, as spelled, for the check that the command takes them.
    given: Vec<&'static str>,
    positional: Vec<std::ffi::OsString>,
    /// Key files in the order given, each with the id from the `--key-id` after it (1 by
    /// default).
    keys: Vec<(PathBuf, u32)>,
    from: Option<u64>,
    record_type: Option<u16>,
    json: bool,
    threads: usize,
    seconds: u64,
    size: usize,
}

fn number<T: TryFrom<u64>>(flag: &str, value: Option<String>) -> Result<T, Exit> {
    let value = value.ok_or_else(|| Exit::usage(format!("{flag} needs a value")))?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.ok().and_then(|n| T::try_from(n).ok()).ok_or_else(|| Exit::usage(format!("{flag}: {value:?} is not a valid number")))
}

/// An option's value as text; one that is not UTF-8 becomes text that `number` refuses.
fn text(value: Option<std::ffi::OsString>) -> Option<String> {
    value.map(|v| v.to_string_lossy().into_owned())
}

/// Parses the arguments after the command. Paths may be any bytes (`OsString`); options and
/// numbers must be UTF-8.
fn parse(raw: impl Iterator<Item = std::ffi::OsString>) -> Result<Args, Exit> {
    let mut args = Args { threads: 16, seconds: 3, size: 128, ..Args::default() };
    let mut raw = raw.peekable();
    while let Some(arg) = raw.next() {
        if let Some(&flag) = OPTIONS.iter().find(|&&o| arg.to_str() == Some(o)) {
            args.given.push(flag);
        }
        match arg.to_str().unwrap_or("") {
            "--key-file" => args.keys.push((raw.next().ok_or_else(|| Exit::usage("--key-file needs a path"))?.into(), 1)),
            "--key-id" => {
                let id = number("--key-id", text(raw.next()))?;
                args.keys.last_mut().ok_or_else(|| Exit::usage("--key-id goes after the --key-file it names"))?.1 = id;
            }
            "--from" => args.from = Some(number("--from", text(raw.next()))?),
            "--type" => args.record_type = Some(number("--type", text(raw.next()))?),
            "--threads" => args.threads = number("--threads", text(raw.next()))?,
            "--seconds" => args.seconds = number("--seconds", text(raw.next()))?,
            "--size" => args.size = number("--size", text(raw.next()))?,
            "--json" => args.json = true,
            flag if flag.starts_with("--") => return Err(Exit::usage(format!("unknown option {flag}"))),
            _ => args.positional.push(arg),
        }
    }
    Ok(args)
}

/// Every option, and the ones each command takes: an option a command would ignore is refused
/// (a key given to a command that writes nothing encrypted would otherwise mislead).
const OPTIONS: [&str; 8] = ["--key-file", "--key-id", "--from", "--type", "--threads", "--seconds", "--size", "--json"];

fn takes(command: &str) -> &'static [&'static str] {
    match command {
        "inspect" | "verify" => &["--key-file", "--key-id"],
        "dump" => &["--key-file", "--key-id", "--from", "--type", "--json"],
        "bench" => &["--key-file", "--key-id", "--threads", "--seconds", "--size"],
        _ => &[],
    }
}

fn check_options(command: &str, args: Args) -> Result<Args, Exit> {
    match args.given.iter().find(|o| !takes(command).contains(o)) {
        Some(o) if !takes(command).is_empty() => Err(Exit::usage(format!("{command} does not take {o}"))),
        // A second directory would be ignored, and `verify A B` exiting 0 would read as B checked.
        _ if !takes(command).is_empty() && args.positional.len() > 1 => {
            let extra = PathBuf::from(&args.positional[1]);
            Err(Exit::usage(format!("{command} takes one directory; {} is one too many", extra.display())))
        }
        _ => Ok(args),
    }
}

fn main() -> ExitCode {
    let mut raw = std::env::args_os().skip(1);
    let command = raw.next().unwrap_or_default().to_string_lossy().into_owned();
    let result = parse(raw).and_then(|args| check_options(&command, args)).and_then(|args| match command.as_str() {
        "inspect" => inspect(&args),
        "dump" => dump(&args),
        "verify" => verify(&args),
        "bench" => bench(&args),
        "help" | "--help" | "-h" => {
            out!("{USAGE}");
            Ok(0)
        }
        "" => Err(Exit::usage("no command")),
        other => Err(Exit::usage(format!("unknown command {other:?}"))),
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Exit { code, message, show_usage }) => {
            diag!("nodedb-wal: {message}");
            if show_usage {
                diag!("\n{USAGE}");
            }
            ExitCode::from(code)
        }
    }
}

/// The log directory argument, which must exist and look like a log.
fn log_dir(args: &Args) -> Result<PathBuf, Exit> {
    let dir = PathBuf::from(args.positional.first().ok_or_else(|| Exit::usage("which directory?"))?);
    let entries = std::fs::read_dir(&dir).map_err(|e| Exit::new(3, format!("{}: {e}", dir.display())))?;
    let names: Vec<String> = entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
    if !names.iter().any(|n| n.ends_with(".wal") || n == "LOCK") {
        return Err(Exit::new(5, format!("{} is not a nodedb-wal directory (no segment files, no LOCK)", dir.display())));
    }
    Ok(dir)
}

/// A ring holding the keys given with `--key-file` under their `--key-id`s, if any were
/// given: to read with, and (`active`) the last one to encrypt new segments under.
fn key_ring(args: &Args, active: bool) -> Result<Option<Arc<KeyRing>>, Exit> {
    let Some(&(_, last)) = args.keys.last() else { return Ok(None) };
    let ring = KeyRing::new();
    for (path, id) in &args.keys {
        let key = SecureKey::load(path).map_err(|e| Exit::new(4, e.to_string()))?;
        ring.insert(*id, key).map_err(|e| Exit::usage(format!("--key-id {id}: {e}")))?;
    }
    if active {
        ring.set_active(last).map_err(Exit::from)?;
    }
    Ok(Some(Arc::new(ring)))
}

fn open(args: &Args) -> Result<(PathBuf, ReadOnlyWal), Exit> {
    let dir = log_dir(args)?;
    let wal = ReadOnlyWal::open(&dir, key_ring(args, false)?)?;
    Ok((dir, wal))
}

fn preamble_of(path: &Path) -> Option<SegmentPreamble> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; PREAMBLE_SIZE];
    // Non-blocking, as the log's own opens: a segment swapped for a FIFO since the log opened
    // must not hang the listing (a FIFO then reads nothing, and no preamble is shown).
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut bytes).ok()?;
    SegmentPreamble::decode(&bytes).ok()
}

fn inspect(args: &Args) -> Outcome {
    let (dir, wal) = open(args)?;
    let info = wal.recovery_info();
    out!(
        "{:>20}  {:>12}  {:>12}  {:>10}  {:>12}  {:>6}  {:>7}  {:>6}",
        "segment",
        "first lsn",
        "end lsn",
        "records",
        "bytes",
        "sealed",
        "version",
        "key"
    );
    for seg in &info.segments {
        let preamble = preamble_of(&dir.join(format!("{:020}.wal", seg.id.0)));
        let (version, key) = match preamble {
            Some(p) if p.cipher != 0 => (p.version.to_string(), p.key_id.to_string()),
            Some(p) => (p.version.to_string(), "-".into()),
            None => ("?".into(), "?".into()),
        };
        out!(
            "{:>20}  {:>12}  {:>12}  {:>10}  {:>12}  {:>6}  {:>7}  {:>6}",
            seg.id.0,
            seg.first_lsn.0,
            seg.end_lsn.0,
            seg.record_count(),
            seg.bytes,
            if seg.sealed { "yes" } else { "no" },
            version,
            key
        );
    }
    out!("records {} (LSN {} to {})", info.record_count, info.first_lsn, info.last_lsn);
    if let Some(id) = info.removed_interrupted_roll {
        out!("segment {id} is left by an interrupted roll; opening the log removes it");
    }
    if info.ungathered > 0 {
        out!("{} tombstone or purge record(s) in encrypted segments not read (no key given for them)", info.ungathered);
    }
    Ok(match &info.torn_tail {
        Some(torn) => {
            out!(
                "health: torn tail in segment {} at offset {} ({} bytes); opening the log cuts it",
                torn.segment,
                torn.offset,
                torn.bytes_discarded
            );
            1
        }
        None => {
            out!("health: clean");
            0
        }
    })
}

fn dump(args: &Args) -> Outcome {
    let (_, wal) = open(args)?;
    let from = args.from.map_or(wal.recovery_info().first_lsn, Lsn);
    // Headers are stored in the clear, so without a key the listing reads the log as stored;
    // with keys given it reads through them, as the other commands do.
    let mut reader = if args.keys.is_empty() { wal.lazy_reader_raw(from)? } else { wal.lazy_reader(from)? };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(h) = reader.next_header()? {
        if args.record_type.is_some_and(|t| t != h.record_type.0) {
            continue;
        }
        let line = if args.json {
            format!(
                "{{\"lsn\":{},\"segment\":{},\"offset\":{},\"type\":{},\"required\":{},\"database\":{},\"tenant\":{},\"vshard\":{},\"flags\":{},\"stored_len\":{}}}",
                h.lsn.0,
                h.segment().0,
                h.offset(),
                h.record_type.0,
                h.record_type.is_required(),
                h.scope.database,
                h.scope.tenant,
                h.scope.vshard,
                h.flags,
                h.stored_len
            )
        } else {
            format!(
                "lsn {:>10}  segment {:>6}  offset {:>10}  type {:#06x}  db {} tenant {} vshard {}  {} bytes",
                h.lsn.0,
                h.segment().0,
                h.offset(),
                h.record_type.0,
                h.scope.database,
                h.scope.tenant,
                h.scope.vshard,
                h.stored_len
            )
        };
        if writeln!(out, "{line}").is_err() {
            return Ok(0); // the reader went away (a pipe into head)
        }
    }
    Ok(0)
}

fn verify(args: &Args) -> Outcome {
    let (_, wal) = open(args)?;
    let info = wal.recovery_info().clone();
    let total = info.record_count.max(1);
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last_report = Instant::now();
    // A segment whose very first record fails authentication was most likely written under
    // another key; a failure further in is damage.
    let first_of = |seg| info.segments.iter().find(|s| s.id == seg).map(|s| s.first_lsn);
    for record in wal.read_from(info.first_lsn)? {
        let record = match record {
            Err(WalError::AuthenticationFailed { lsn, segment }) if first_of(segment) == Some(lsn) => {
                return Err(Exit::new(
                    4,
                    format!(
                        "record {lsn} in segment {segment} failed authentication, the first of its segment: most likely the wrong key{KEY_HINT}"
                    ),
                ));
            }
            other => other?,
        };
        records += 1;
        bytes += record.payload.len() as u64;
        if last_report.elapsed() >= Duration::from_millis(500) {
            note!("\rverify: {:>5.1}%  {records} records", records as f64 * 100.0 / total as f64);
            last_report = Instant::now();
        }
    }
    diag!("\rverify: 100.0%  {records} records, {bytes} payload bytes, every checksum and tag checked");
    Ok(match info.torn_tail {
        Some(torn) => {
            out!(
                "torn tail: segment {} offset {} ({} bytes never acknowledged); opening the log cuts it",
                torn.segment,
                torn.offset,
                torn.bytes_discarded
            );
            1
        }
        None => {
            out!("clean: {records} records, LSN {} to {}", info.first_lsn, info.last_lsn);
            0
        }
    })
}

/// More appending threads than this is a typo, not a benchmark (and spawning them could fail).
const BENCH_THREADS_MAX: usize = 4096;

fn bench(args: &Args) -> Outcome {
    if !(1..=BENCH_THREADS_MAX).contains(&args.threads) {
        return Err(Exit::usage(format!("--threads must be from 1 to {BENCH_THREADS_MAX}")));
    }
    // Refused before the payload is allocated: the log would refuse it anyway.
    let payload_max = SegmentedWalConfig::new("").payload_bytes_max;
    if args.size > payload_max {
        return Err(Exit::usage(format!("--size must be at most {payload_max} bytes, the log's largest record")));
    }
    let (dir, _tmp) = match args.positional.first() {
        Some(d) => (new_log_dir(PathBuf::from(d))?, None),
        None => {
            let tmp = tempfile_dir().map_err(|e| Exit::new(3, format!("temporary directory: {e}")))?;
            (tmp.0.clone(), Some(tmp))
        }
    };
    let mut config = SegmentedWalConfig::new(&dir);
    // A temporary directory may sit on a file system that refuses O_DIRECT (older tmpfs).
    config.allow_buffered_fallback = true;
    config.key_ring = key_ring(args, true)?;
    let wal = SegmentedWal::open(config)?;
    if !wal.direct_io() {
        diag!("bench: {} refuses O_DIRECT; writing through the page cache", dir.display());
    }
    let start_lsn = wal.next_lsn();
    let payload = vec![0x5Au8; args.size];
    let before = wal.stats();
    let started = Instant::now();
    let encrypted = args.keys.last().map_or(String::new(), |(_, id)| format!(", encrypted under key {id}"));
    diag!("bench: {} threads, {} s, {}-byte records into {}{encrypted}", args.threads, args.seconds, args.size, dir.display());
    let latencies = drive(&wal, args.threads, args.seconds, &payload, |second, stop, done| {
        // Wakes early once an append failed, so that the error ends the run at once.
        let until = Instant::now() + Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let bar = "#".repeat((second * 30 / args.seconds.max(1)) as usize);
        note!("\r[{bar:<30}] {second:>3}/{} s  {} durable records", args.seconds, done.load(Ordering::Relaxed));
    });
    diag!();
    let mut latencies = latencies?;
    let elapsed = started.elapsed().as_secs_f64();
    let m = wal.stats().since(&before);
    wal.close()?;
    latencies.sort_unstable();
    let q = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
    let n = latencies.len() as f64;
    out!("{:<28} {:>14}", "durable records", latencies.len());
    out!("{:<28} {:>14.0}", "records/s", n / elapsed);
    out!("{:<28} {:>14.2}", "payload MB/s", n * args.size as f64 / elapsed / 1e6);
    out!("{:<28} {:>14}", "append_durable p50 us", q(0.50));
    out!("{:<28} {:>14}", "append_durable p99 us", q(0.99));
    out!("{:<28} {:>14}", "append_durable p99.9 us", q(0.999));
    out!("{:<28} {:>14}", "fdatasyncs", m.fsyncs);
    out!("{:<28} {:>14.1}", "records per batch", m.records_per_batch());
    out!("{:<28} {:>14.1}", "write+sync mean us", m.sync_nanos as f64 / m.fsyncs.max(1) as f64 / 1e3);
    out!("{:<28} {:>14.1}", "write+sync max us", m.sync_nanos_max as f64 / 1e3);
    out!("{:<28} {:>14}", "first LSN written", start_lsn.0);
    if _tmp.is_none() {
        out!("the log stays in {}: try `nodedb-wal inspect {0}` and `nodedb-wal verify {0}`", dir.display());
    }
    Ok(0)
}

/// The benchmark's appends: `threads` threads append `payload` durably, one record after the
/// other, while `wait_a_second` is called `seconds` times (the tool sleeps a second in it and
/// shows the progress; it gets the flag that stops the threads, set once an append fails, and
/// the count of durable records). Returns every append's latency in microseconds, or the first
/// error: a failed append ends the run at once, as does a poisoned log (a write or fsync
/// failed, and no append can succeed any more) before its appender has returned.
fn drive<S: Storage>(
    wal: &SegmentedWal<S>,
    threads: usize,
    seconds: u64,
    payload: &[u8],
    mut wait_a_second: impl FnMut(u64, &AtomicBool, &AtomicU64),
) -> Result<Vec<u32>, WalError> {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if let Err(err) = wal.append_durable(Record::new(RecordType::optional(0x100), payload)) {
                            stop.store(true, Ordering::Relaxed);
                            return Err(err);
                        }
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(lat)
                })
            })
            .collect();
        for second in 1..=seconds {
            if stop.load(Ordering::Relaxed) || wal.stats().poisoned {
                break;
            }
            wait_a_second(second, &stop, &done);
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().expect("bench thread")).collect::<Result<Vec<_>, _>>().map(|v| v.concat())
    })
}

/// The directory `bench` writes its log in: one that does not exist yet (the log makes it) or
/// is empty. Anything in it is refused before the log is opened: the benchmark's records
/// appended to an existing log would be there for good, and opening one seals its newest
/// segment.
fn new_log_dir(dir: PathBuf) -> Result<PathBuf, Exit> {
    let first = std::fs::read_dir(&dir).map(|mut entries| entries.next());
    match first {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir),
        Err(e) => Err(Exit::new(3, format!("{}: {e}", dir.display()))),
        Ok(None) => Ok(dir),
        Ok(Some(_)) => Err(Exit::new(
            3,
            format!(
                "{} is not empty: bench writes its records into a new log, never into files already there; give a directory that does not exist yet or is empty",
                dir.display()
            ),
        )),
    }
}

/// A temporary directory removed on drop (the library's tests use `tempfile`; the tool does
/// without, to add no dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> std::io::Result<TempDir> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("nodedb-wal-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(TempDir(dir))
}

#[cfg(test)]
mod tests {
    use nodedb_wal::storage::FaultConfig;
    use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
    use nodedb_wal::{IoOp, SimStorage};

    use super::*;

    // Found by a review: once a write or fsync failed, bench's appenders ended, yet the run
    // went on sleeping through every second asked for and only then reported the error.
    #[test]
    fn bench_stops_at_the_first_failed_fsync_and_returns_its_error() {
        let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
        let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal")).unwrap();
        storage.fail_once(FaultOp::SyncData, 0, EIO);
        let (mut seconds, mut seconds_after_poison) = (0, 0);
        let result = drive(&wal, 4, 1000, &[0x5A; 64], |_, _, _| {
            seconds += 1;
            if wal.stats().poisoned {
                seconds_after_poison += 1;
            }
            // Stands for a second in which the first fsync fails.
            while !wal.stats().poisoned {
                std::thread::yield_now();
            }
        });
        assert!(matches!(result, Err(WalError::Poisoned { op: IoOp::SyncData, .. })), "{result:?}");
        assert_eq!(seconds_after_poison, 0, "a second waited out after the log was poisoned (of {seconds})");
        assert!(seconds <= 1);
    }
}
