//! Runs a unit of work from many threads for a fixed time and times every call.

use std::io;
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::hist::Histogram;
use crate::os::{Counters, Device};

/// What every system is run with.
#[derive(Clone, Debug)]
pub struct Params {
    /// Appending threads (the raw baselines always use one).
    pub threads: usize,
    /// Payload bytes per record.
    pub size: usize,
    /// How long the timed loop runs.
    pub duration: Duration,
    /// Records between waits in pipelined mode.
    pub every: u64,
    /// Groups of `every` records not yet durable that the pipelined appender allows.
    pub depth: usize,
    /// nodedb-wal truncates behind its appenders (after a warm-up that leaves it appending into
    /// a reused segment file, with more kept for reuse), as a checkpointing database would.
    pub checkpoint: bool,
    /// The run's temporary directory; each system makes its own directory inside.
    pub dir: PathBuf,
    /// The device under `dir`, for its flush counters.
    pub device: Device,
    /// nodedb-wal's commit window (`SegmentedWalConfig::commit_window`); off by default.
    pub commit_window: Option<Duration>,
}

/// The outcome of a timed loop.
#[derive(Clone, Debug)]
pub struct Timed {
    /// Records completed (a call may complete several).
    pub records: u64,
    /// From releasing the threads until the last one finished its last call.
    pub elapsed: Duration,
    /// Latency of each call.
    pub latency: Histogram,
    /// Counters read just before the threads were released and just after they stopped.
    pub io: Counters,
}

/// Runs `threads` threads for `duration`. Each thread first builds its worker with
/// `make(thread_index)` (so per-thread setup such as opening a connection is not timed), then
/// calls it until told to stop. A call returns how many records it completed.
pub fn run_for<F, W>(threads: usize, duration: Duration, device: Device, make: F) -> io::Result<Timed>
where
    F: Fn(usize) -> io::Result<W> + Sync,
    W: FnMut() -> io::Result<u64>,
{
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (make, stop, ready) = (&make, &stop, &ready);
                scope.spawn(move || {
                    // Build the worker before the barrier, but always reach the barrier, or
                    // the main thread would wait forever.
                    let worker = make(index);
                    ready.wait();
                    call_until_stopped(worker?, stop)
                })
            })
            .collect();
        let before = Counters::read(device);
        ready.wait();
        let start = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut timed = Timed { records: 0, elapsed: Duration::ZERO, latency: Histogram::default(), io: Counters::default() };
        let mut first_error = None;
        for handle in handles {
            match handle.join().expect("a benchmark thread panicked") {
                Ok((records, latency)) => {
                    timed.records += records;
                    timed.latency.merge(&latency);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        timed.elapsed = start.elapsed();
        timed.io = Counters::read(device).since(&before);
        first_error.map_or(Ok(timed), Err)
    })
}

fn call_until_stopped<W>(mut work: W, stop: &AtomicBool) -> io::Result<(u64, Histogram)>
where
    W: FnMut() -> io::Result<u64>,
{
    let mut latency = Histogram::default();
    let mut records = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        records += work()?;
        latency.record(started.elapsed());
    }
    Ok((records, latency))
}
