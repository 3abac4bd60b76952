//! `replay`: how fast a log reads back, plaintext beside encrypted. Writes `--bytes` of
//! `--size`-byte records into two fresh logs (one with an active key), then reads each whole
//! log with `read_from`, `--rounds` times, alternating: first with the segment files dropped
//! from the page cache (`posix_fadvise(DONTNEED)`: the disk is read), then again warm (the
//! cost is decoding, checksums and decryption). Opening the log (recovery) is not timed. Prints one JSON line per log and read, and a
//! final line of median ratios. A benchmark measures; it never asserts.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use nodedb_wal::{KeyRing, Lsn, Record, SecureKey, SegmentedWal, SegmentedWalConfig};
use nodedb_wal_benches::Json;
use nodedb_wal_benches::systems::nodedb::{BENCH_TYPE, to_io};
use nodedb_wal_benches::systems::payload;

const USAGE: &str = "\
usage: replay [--dir DIR] [--size S] [--bytes B] [--rounds R]

  --dir DIR     where the logs go; a temporary directory is made inside it (.)
  --size S      payload bytes per record (1024)
  --bytes B     payload bytes per log (268435456)
  --rounds R    cold and warm reads of each log, interleaved (3)";

struct Args {
    dir: String,
    size: usize,
    bytes: u64,
    rounds: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { dir: ".".into(), size: 1024, bytes: 256 << 20, rounds: 3 };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |s: String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = value()?,
            "--size" => args.size = number(value()?)? as usize,
            "--bytes" => args.bytes = number(value()?)?,
            "--rounds" => args.rounds = number(value()?)? as usize,
            "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.size == 0 || args.rounds == 0 {
        return Err("--size and --rounds must be positive".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("replay: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config(dir: &Path, encrypted: bool) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    if encrypted {
        config.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    }
    config
}

/// Fills a fresh log with `bytes` of payload; returns its config (the key ring with it).
fn fill(dir: &Path, args: &Args, encrypted: bool) -> io::Result<SegmentedWalConfig> {
    let config = config(dir, encrypted);
    let wal = SegmentedWal::open(config.clone()).map_err(to_io)?;
    let payload = payload(args.size);
    let records = args.bytes.div_ceil(args.size as u64);
    for i in 0..records {
        let lsn = wal.append(Record::new(BENCH_TYPE, &payload)).map_err(to_io)?;
        if i % 4096 == 4095 {
            wal.wait_durable(lsn).map_err(to_io)?;
        }
    }
    wal.close().map_err(to_io)?;
    Ok(config)
}

/// Drops the log's files from the page cache so that the next read comes from the disk.
fn drop_cache(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let file = std::fs::File::open(entry?.path())?;
        file.sync_all()?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(())
}

/// Opens the log (recovery is not timed), drops its files from the page cache if `cold`, and
/// reads every record once; returns (records, payload bytes, seconds of the read).
fn read_all(config: &SegmentedWalConfig, cold: bool) -> io::Result<(u64, u64, f64)> {
    let wal = SegmentedWal::open(config.clone()).map_err(to_io)?;
    if cold {
        drop_cache(&config.dir)?;
    }
    let start = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    for record in wal.read_from(Lsn(1)).map_err(to_io)? {
        let record = record.map_err(to_io)?;
        records += 1;
        bytes += record.payload.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(wal);
    Ok((records, bytes, seconds))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(args: &Args) -> io::Result<()> {
    let root = tempfile::Builder::new().prefix("nodedb-wal-replay-").tempdir_in(&args.dir)?;
    let logs = [("replay-plaintext", false), ("replay-encrypted", true)];
    let mut configs = Vec::new();
    for (name, encrypted) in logs {
        let dir = root.path().join(name);
        configs.push((name, fill(&dir, args, encrypted)?));
    }
    let mut gbps: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for _ in 0..args.rounds {
        for (i, (name, config)) in configs.iter().enumerate() {
            for (j, cold) in [true, false].into_iter().enumerate() {
                let (records, bytes, seconds) = read_all(config, cold)?;
                let rate = bytes as f64 / seconds / 1e9;
                gbps[i][j].push(rate);
                let line = Json::default()
                    .str("system", name)
                    .str("cache", if cold { "cold" } else { "warm" })
                    .int("size_bytes", args.size as u64)
                    .int("records", records)
                    .int("payload_bytes", bytes)
                    .num("seconds", seconds)
                    .num("payload_gb_per_sec", rate)
                    .num("records_per_sec", records as f64 / seconds);
                println!("{line}");
            }
        }
    }
    // Parallel replay of the warm logs, two threads (this machine has two cores).
    let mut parallel = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        for (i, (name, config)) in configs.iter().enumerate() {
            let wal = SegmentedWal::open(config.clone()).map_err(to_io)?;
            let start = Instant::now();
            let mut bytes = 0u64;
            let records = wal
                .replay_parallel(Lsn(1), 2, |r| {
                    bytes += r.payload.len() as u64;
                    Ok(())
                })
                .map_err(to_io)?;
            let seconds = start.elapsed().as_secs_f64();
            parallel[i].push(bytes as f64 / seconds / 1e9);
            let line = Json::default()
                .str("system", name)
                .str("cache", "warm-parallel-2")
                .int("records", records)
                .num("seconds", seconds)
                .num("payload_gb_per_sec", bytes as f64 / seconds / 1e9);
            println!("{line}");
        }
    }
    let [plain, encrypted] = [&gbps[0], &gbps[1]];
    let line = Json::default()
        .str("system", "ratios")
        .int("size_bytes", args.size as u64)
        .num("cold_plaintext_gb_per_sec", median(plain[0].clone()))
        .num("cold_encrypted_gb_per_sec", median(encrypted[0].clone()))
        .num("warm_plaintext_gb_per_sec", median(plain[1].clone()))
        .num("warm_encrypted_gb_per_sec", median(encrypted[1].clone()))
        .num("warm_encrypted_vs_plaintext", median(encrypted[1].clone()) / median(plain[1].clone()))
        .num("parallel2_plaintext_gb_per_sec", median(parallel[0].clone()))
        .num("parallel2_encrypted_gb_per_sec", median(parallel[1].clone()));
    println!("{line}");
    Ok(())
}
