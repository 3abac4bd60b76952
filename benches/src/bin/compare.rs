//! `compare`: runs nodedb-wal beside okaywal, SQLite and the raw disk in one process, one
//! system after another on the same disk, and prints one JSON line per system and a final
//! line of ratios. See `--help` and docs/BENCHMARKS.md.

use std::io;
use std::process::ExitCode;

use nodedb_wal_benches::args::USAGE;
use nodedb_wal_benches::os::{Device, is_tmpfs};
use nodedb_wal_benches::{Args, Json, Params, Report, pagecache, systems};

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) if args.help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(args) => args,
        Err(message) => {
            eprintln!("compare: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compare: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<()> {
    let run_dir = tempfile::Builder::new().prefix("nodedb-wal-bench-").tempdir_in(&args.dir)?;
    if is_tmpfs(run_dir.path())? {
        eprintln!("compare: warning: {} is on tmpfs; syncs there cost nothing, use --dir on a disk", run_dir.path().display());
    }
    let params = Params {
        threads: args.threads,
        size: args.size,
        duration: args.duration / args.rounds,
        every: args.every,
        depth: args.depth,
        checkpoint: args.checkpoint,
        commit_window: args.commit_window,
        dir: run_dir.path().to_path_buf(),
        device: Device::of(run_dir.path())?,
    };
    if args.page_cache_check {
        return page_cache_check(&params, args.bytes);
    }
    let mut reports: Vec<Option<Report>> = vec![None; args.systems.len()];
    for round in 0..args.rounds {
        for index in round_order(args.systems.len(), round) {
            let system = &args.systems[index];
            eprintln!("compare: round {} of {}: running {system} ...", round + 1, args.rounds);
            settle(run_dir.path())?;
            let report = systems::run(system, &params, args.pipelined)?;
            match &mut reports[index] {
                Some(earlier) => earlier.absorb(&report),
                slot @ None => *slot = Some(report),
            }
        }
    }
    let reports: Vec<Report> = reports.into_iter().flatten().collect();
    for report in &reports {
        let line = report.to_json();
        let line = if args.pipelined && report.system.starts_with("nodedb-wal-pipelined") {
            line.int("every", args.every).int("depth", args.depth as u64)
        } else {
            line
        };
        println!("{line}");
    }
    if let Some(line) = ratios(&reports, args) {
        println!("{line}");
    }
    Ok(())
}

/// The order of the systems in round `round`: as given in even rounds, reversed in odd ones, so
/// that over two rounds every system has run as early and as late as every other, on average.
fn round_order(systems: usize, round: u32) -> Vec<usize> {
    if round.is_multiple_of(2) { (0..systems).collect() } else { (0..systems).rev().collect() }
}

/// Commits everything pending on the file system before a system starts: the previous
/// system's removed files (their journal commit and, with `-o discard`, their discards) and any
/// dirty pages left behind would otherwise be written by the next system's first syncs or by
/// writeback during its timed run, charging one system's teardown to another.
fn settle(dir: &std::path::Path) -> io::Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::syncfs(&fd)?;
    Ok(())
}

fn page_cache_check(params: &Params, bytes: u64) -> io::Result<()> {
    let (wal, direct) = pagecache::through_wal(params, bytes)?;
    println!("{}", wal.to_json("nodedb-wal-pipelined", direct).int("size_bytes", params.size as u64).int("every", params.every));
    let buffered = pagecache::through_buffered_file(params, bytes)?;
    println!("{}", buffered.to_json("buffered-file", false));
    Ok(())
}

/// The ratios the targets are stated in, for whichever systems ran. Throughput ratios are
/// nodedb-wal over the other system (higher is better for nodedb-wal); latency ratios are
/// nodedb-wal's percentile over raw-floor's (lower is better); the pipelined run compares its
/// payload MB/s, and the bytes it actually wrote per second, with raw-bandwidth's.
fn ratios(reports: &[Report], args: &Args) -> Option<Json> {
    let find = |name: &str| reports.iter().find(|r| r.system == name);
    let wal = find("nodedb-wal").or_else(|| find("nodedb-wal-pipelined")).or_else(|| find("nodedb-wal-pipelined-batch"))?;
    let mut line = Json::default()
        .str("system", "ratios")
        .str("subject", &wal.system)
        .int("threads", wal.threads as u64)
        .int("size_bytes", args.size as u64);
    if wal.system.starts_with("nodedb-wal-pipelined") {
        // One thread waiting every `every` records: only its bandwidth compares meaningfully.
        if let Some(ceiling) = find("raw-bandwidth") {
            let wal_disk_mb = wal.wal_bytes.map(|b| b as f64 / wal.seconds() / 1e6);
            line = line
                .num("mb_vs_raw_bandwidth", wal.mb_per_sec() / ceiling.mb_per_sec())
                .opt_num("wal_disk_mb_vs_raw_bandwidth", wal_disk_mb.map(|mb| mb / ceiling.mb_per_sec()));
            if let Some(batch) = find("nodedb-wal-pipelined-batch").filter(|b| b.system != wal.system) {
                line = line
                    .num("batch_records_per_sec", batch.records_per_sec())
                    .num("batch_mb_vs_raw_bandwidth", batch.mb_per_sec() / ceiling.mb_per_sec());
            }
        }
        return Some(line);
    }
    if let Some(encrypted) = find("nodedb-wal-encrypted") {
        line = line.num("encrypted_vs_plaintext", encrypted.records_per_sec() / wal.records_per_sec());
    }
    for other in ["okaywal", "okaywal-64m", "sqlite", "fsync-per-append"] {
        if let Some(o) = find(other) {
            line = line.num(&format!("vs_{}", other.replace('-', "_")), wal.records_per_sec() / o.records_per_sec());
        }
    }
    if let Some(floor) = find("raw-floor") {
        let ratio = |q| Some(wal.latency_us(q)? / floor.latency_us(q)?);
        line = line.opt_num("p50_vs_raw_floor", ratio(0.50)).opt_num("p99_vs_raw_floor", ratio(0.99));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn over_two_rounds_every_system_runs_both_before_and_after_every_other() {
        let rounds: Vec<Vec<usize>> = (0..2).map(|round| round_order(4, round)).collect();
        assert_eq!(rounds, [vec![0, 1, 2, 3], vec![3, 2, 1, 0]]);
        assert_eq!(round_order(4, 2), rounds[0]);
    }
}
