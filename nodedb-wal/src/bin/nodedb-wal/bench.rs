//! `bench`: durable appends from many threads into a new log, and the latencies they took.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodedb_wal::storage::Storage;
use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, WalError};

use super::{Args, Exit, Outcome, key_ring};

/// More appending threads than this is a typo, not a benchmark (and spawning them could fail).
const BENCH_THREADS_MAX: usize = 4096;

pub(super) fn bench(args: &Args) -> Outcome {
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
    out!("{:<28} {:>14}", "appends that waited for room", m.buffer_waits);
    out!("{:<28} {:>14.1}", "write+sync mean us", m.sync_nanos as f64 / m.fsyncs.max(1) as f64 / 1e3);
    out!("{:<28} {:>14.1}", "write+sync max us", m.sync_nanos_max as f64 / 1e3);
    out!("{:<28} {:>14}", "first LSN written", start_lsn.0);
    if _tmp.is_none() {
        // The new log holds only segments under the last key: verify needs that one.
        let key = args.keys.last().map_or(String::new(), |(path, id)| format!(" --key-file {} --key-id {id}", path.display()));
        out!("the log stays in {}: try `nodedb-wal inspect {0}` and `nodedb-wal verify {0}{key}`", dir.display());
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
