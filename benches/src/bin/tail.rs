//! `tail`: how long a live subscriber ([`nodedb_wal::Tail`]) takes to see a record once it is
//! durable. Writers append `--records` records with `append_durable` from `--writers` threads
//! while one tail follows the log from the start. Per record, three instants are noted against
//! one clock: the append call, the return of `append_durable` (durable, as the writer learns
//! it), and delivery to the tail. Prints, per writer count, the distribution of
//! durable → delivered (clamped at zero: the tail may be woken before the writer) and of
//! append → delivered, and the share of records the tail saw before their writer returned.
//! A benchmark measures; it never asserts.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodedb_wal::{Lsn, Record, SegmentedWal, SegmentedWalConfig};
use nodedb_wal_benches::args::bin_main;
use nodedb_wal_benches::systems::nodedb::{BENCH_TYPE, to_io};
use nodedb_wal_benches::systems::payload;
use nodedb_wal_benches::{Histogram, Json};

const USAGE: &str = "\
usage: tail [--dir DIR] [--size S] [--records N] [--writers W,W,...]

  --dir DIR        where the log goes; a temporary directory is made inside it (.)
  --size S         payload bytes per record (128)
  --records N      records per run (20000)
  --writers LIST   writer threads, one run each (1,4,16)";

struct Args {
    dir: String,
    size: usize,
    records: u64,
    writers: Vec<usize>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { dir: ".".into(), size: 128, records: 20_000, writers: vec![1, 4, 16] };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = value()?,
            "--size" => args.size = number(&value()?)? as usize,
            "--records" => args.records = number(&value()?)?,
            "--writers" => args.writers = value()?.split(',').map(|w| number(w).map(|n| n as usize)).collect::<Result<_, _>>()?,
            "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.size == 0 || args.records == 0 || args.writers.is_empty() || args.writers.contains(&0) {
        return Err("--size, --records and every writer count must be positive".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    bin_main("tail", USAGE, parse, |args| args.writers.iter().try_for_each(|&writers| run(args, writers)))
}

/// Nanoseconds since `start`, never 0 (0 marks "not yet").
fn stamp(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn run(args: &Args, writers: usize) -> io::Result<()> {
    let dir = tempfile::Builder::new().prefix("nodedb-wal-tail-").tempdir_in(&args.dir)?;
    let wal = SegmentedWal::open(SegmentedWalConfig::new(dir.path())).map_err(to_io)?;
    let n = args.records as usize;
    // Indexed by LSN - 1: a fresh log hands out LSNs 1..=n.
    let appended: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let durable: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let mut delivered = vec![0u64; n];
    let next = AtomicU64::new(0);
    let payload = payload(args.size);
    let start = Instant::now();
    std::thread::scope(|s| -> io::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..writers {
            handles.push(s.spawn(|| -> io::Result<()> {
                while next.fetch_add(1, Ordering::Relaxed) < args.records {
                    let t = stamp(start);
                    let lsn = wal.append_durable(Record::new(BENCH_TYPE, &payload)).map_err(to_io)?;
                    let at = (lsn.0 - 1) as usize;
                    appended[at].store(t, Ordering::Relaxed);
                    durable[at].store(stamp(start), Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        let mut tail = wal.tail(Lsn::FIRST);
        for _ in 0..n {
            let record = tail.next_timeout(Duration::from_secs(30)).map_err(to_io)?;
            let record = record.ok_or_else(|| io::Error::other("the tail waited 30 s for a durable record"))?;
            delivered[(record.lsn.0 - 1) as usize] = stamp(start);
        }
        for handle in handles {
            handle.join().map_err(|_| io::Error::other("a writer panicked"))??;
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let (mut after_durable, mut after_append, mut early) = (Histogram::default(), Histogram::default(), 0u64);
    for i in 0..n {
        let (a, d, t) = (appended[i].load(Ordering::Relaxed), durable[i].load(Ordering::Relaxed), delivered[i]);
        if t < d {
            early += 1;
        }
        after_durable.record(Duration::from_nanos(t.saturating_sub(d)));
        after_append.record(Duration::from_nanos(t.saturating_sub(a)));
    }
    let line = Json::default()
        .str("system", "nodedb-wal-tail")
        .int("writers", writers as u64)
        .int("size_bytes", args.size as u64)
        .int("records", args.records)
        .num("seconds", seconds)
        .opt_num("durable_to_delivered_p50_us", after_durable.quantile_us(0.5))
        .opt_num("durable_to_delivered_p99_us", after_durable.quantile_us(0.99))
        .opt_num("durable_to_delivered_p999_us", after_durable.quantile_us(0.999))
        .opt_num("append_to_delivered_p50_us", after_append.quantile_us(0.5))
        .opt_num("append_to_delivered_p99_us", after_append.quantile_us(0.99))
        .num("delivered_before_writer_returned", early as f64 / n as f64);
    println!("{line}");
    wal.close().map_err(to_io)?;
    Ok(())
}
