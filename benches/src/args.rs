//! Command-line arguments of `compare`, parsed by hand to keep the dependency list short.

use std::path::PathBuf;
use std::time::Duration;

/// Usage text printed for `--help` and after a bad argument.
pub const USAGE: &str = "\
usage: compare [--threads T] [--size S] [--seconds N] [--systems a,b,c] [--rounds R] [--no-checkpoint]
               [--pipelined [--every K] [--depth D]]
               [--dir DIR] [--page-cache-check [--bytes B]]

  --threads T         appending threads for nodedb-wal, fsync-per-append, okaywal, sqlite (16)
  --size S            payload bytes per record; k, m, g suffixes are binary (128)
  --seconds N         how long each system runs in all (5)
  --systems LIST      comma-separated, run in this order; default
                      raw-floor,raw-bandwidth,okaywal,sqlite,fsync-per-append,nodedb-wal
                      (also: nodedb-wal-encrypted; nodedb-wal-pwrite, nodedb-wal-uring: each
                      I/O backend; okaywal-64m: okaywal with 64 MiB files)
                      (with --pipelined: raw-bandwidth,nodedb-wal,nodedb-wal-batch: the
                      same appender, each group appended with one append_batch call;
                      also nodedb-wal-pwrite, nodedb-wal-uring: the appender on each backend)
  --rounds R          run the systems R times, in the order given and then reversed, turn
                      about, each for N/R seconds, and report each system's rounds added up:
                      no system always runs first or last (1)
  --pipelined         nodedb-wal runs one thread that appends groups of K records without
                      waiting, asks for a sync after each, and keeps at most D groups not yet
                      durable (it waits on the oldest before appending more)
  --every K           records per group in pipelined mode (256)
  --depth D           groups in flight in pipelined mode (4)
  --no-checkpoint     nodedb-wal never truncates its log, which grows into blocks never written
                      before. By default it runs as a database that checkpoints, the state
                      okaywal's defaults keep it in (a checkpoint every 768 KiB, files reused):
                      before timing it writes and truncates three segments and goes on into one
                      that reuses a truncated file, and while timed it truncates below what is
                      durable whenever a segment is sealed (a checkpointer thread beside the
                      appenders; the pipelined appender does it itself)
  --commit-window-us W  nodedb-wal waits W us after a sync is wanted before sealing a batch,
                      so more appenders join it (SegmentedWalConfig::commit_window; off)
  --dir DIR           where the logs go; a temporary directory is made inside it (.)
  --page-cache-check  write --bytes through the WAL (O_DIRECT, pipelined) and report the
                      change in the kernel's Cached: memory, beside a buffered-file baseline
  --bytes B           bytes for --page-cache-check (1g)";

/// Every system `compare` knows, in the default order.
pub const ALL_SYSTEMS: [&str; 6] = ["raw-floor", "raw-bandwidth", "okaywal", "sqlite", "fsync-per-append", "nodedb-wal"];

/// Systems run only when named: nodedb-wal with encryption, and on each I/O backend
/// (`nodedb-wal` uses the default backend); okaywal with files as large as nodedb-wal's
/// segments (for large records, where its 1 MiB default files roll many times a second).
pub const EXTRA_SYSTEMS: [&str; 5] = ["nodedb-wal-encrypted", "nodedb-wal-pwrite", "nodedb-wal-uring", "nodedb-wal-batch", "okaywal-64m"];

/// Parsed arguments.
#[derive(Clone, Debug)]
pub struct Args {
    /// Appending threads.
    pub threads: usize,
    /// Payload bytes per record.
    pub size: usize,
    /// Run time of each system.
    pub duration: Duration,
    /// Systems to run, in order.
    pub systems: Vec<String>,
    /// Passes over the systems, every other one in reverse order.
    pub rounds: u32,
    /// nodedb-wal runs pipelined.
    pub pipelined: bool,
    /// Records between waits when pipelined.
    pub every: u64,
    /// Groups not yet durable that the pipelined appender allows.
    pub depth: usize,
    /// nodedb-wal truncates behind its appenders, as a checkpointing database would.
    pub checkpoint: bool,
    /// nodedb-wal's commit window, if any.
    pub commit_window: Option<std::time::Duration>,
    /// Parent of the temporary directory.
    pub dir: PathBuf,
    /// Run the page-cache check instead of the comparison.
    pub page_cache_check: bool,
    /// Bytes the page-cache check writes.
    pub bytes: u64,
    /// `--help` was given.
    pub help: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            threads: 16,
            size: 128,
            duration: Duration::from_secs(5),
            systems: Vec::new(),
            rounds: 1,
            pipelined: false,
            every: 256,
            depth: 4,
            checkpoint: true,
            commit_window: None,
            dir: PathBuf::from("."),
            page_cache_check: false,
            bytes: 1 << 30,
            help: false,
        }
    }
}

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args::default();
        while let Some(flag) = raw.next() {
            let mut value = || raw.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--threads" => args.threads = parse_count(&value()?)?,
                "--size" => args.size = parse_count(&value()?)?,
                "--seconds" => args.duration = parse_seconds(&value()?)?,
                "--systems" => args.systems = value()?.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                "--rounds" => args.rounds = u32::try_from(parse_count(&value()?)?).map_err(|_| "--rounds is too large".to_owned())?,
                "--pipelined" => args.pipelined = true,
                "--every" => args.every = parse_count(&value()?)? as u64,
                "--depth" => args.depth = parse_count(&value()?)?,
                "--no-checkpoint" => args.checkpoint = false,
                "--commit-window-us" => args.commit_window = Some(std::time::Duration::from_micros(parse_count(&value()?)? as u64)),
                "--dir" => args.dir = PathBuf::from(value()?),
                "--page-cache-check" => args.page_cache_check = true,
                "--bytes" => args.bytes = parse_count(&value()?)? as u64,
                "--help" | "-h" => args.help = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if args.systems.is_empty() {
            let defaults: &[&str] = if args.pipelined { &["raw-bandwidth", "nodedb-wal", "nodedb-wal-batch"] } else { &ALL_SYSTEMS };
            args.systems = defaults.iter().map(|s| (*s).to_owned()).collect();
        }
        let known = |s: &str| ALL_SYSTEMS.contains(&s) || EXTRA_SYSTEMS.contains(&s);
        if let Some(bad) = args.systems.iter().find(|s| !known(s)) {
            return Err(format!("unknown system {bad:?}; known: {},{}", ALL_SYSTEMS.join(","), EXTRA_SYSTEMS.join(",")));
        }
        Ok(args)
    }
}

/// A positive integer with an optional binary suffix: `128`, `4k`, `4KiB`, `1g`.
fn parse_count(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match trimmed.as_bytes().last() {
        Some(b'k') => (&trimmed[..trimmed.len() - 1], 10),
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 20),
        Some(b'g') => (&trimmed[..trimmed.len() - 1], 30),
        _ => (trimmed, 0),
    };
    let n: usize = digits.parse().map_err(|_| format!("{text:?} is not a count"))?;
    match n.checked_shl(shift).filter(|v| *v > 0 && v >> shift == n) {
        Some(v) => Ok(v),
        None => Err(format!("{text:?} must be positive and fit in memory")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// The `main` of a benchmark binary: parses its arguments (a message and `usage` on stderr and
/// exit status 2 when they are wrong), runs it, and exits 1 with `name: error` if it fails.
pub fn bin_main<A>(
    name: &str,
    usage: &str,
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(&A) -> std::io::Result<()>,
) -> std::process::ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_count("128"), Ok(128));
        assert_eq!(parse_count("4k"), Ok(4096));
        assert_eq!(parse_count("4KiB"), Ok(4096));
        assert_eq!(parse_count("1g"), Ok(1 << 30));
        assert!(parse_count("0").is_err());
        assert!(parse_count("x").is_err());
    }

    #[test]
    fn pipelined_defaults_to_the_wal_beside_raw_bandwidth() {
        let args = parse("--pipelined --size 4k --every 64").unwrap();
        assert_eq!(args.systems, ["raw-bandwidth", "nodedb-wal", "nodedb-wal-batch"]);
        assert_eq!((args.size, args.every), (4096, 64));
    }

    #[test]
    fn rounds_default_to_one_and_must_be_positive() {
        assert_eq!(parse("").unwrap().rounds, 1);
        assert_eq!(parse("--rounds 2").unwrap().rounds, 2);
        assert!(parse("--rounds 0").is_err());
    }

    #[test]
    fn unknown_systems_and_flags_are_refused() {
        assert!(parse("--systems nodedb-wal,rocksdb").is_err());
        assert!(parse("--fast").is_err());
        assert!(parse("--threads").is_err());
    }
}
