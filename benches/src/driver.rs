//! Runs a unit of work from many threads for a fixed time and times every call.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, OnceLock};
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
///
/// The rate counts only calls that returned by the deadline and divides by the time up to it,
/// for every system alike. A system whose callers can be starved (SQLite's writers back off
/// for up to 100 ms in its busy handler) otherwise gets the calls that straggle in after the
/// deadline counted over a longer time than the others were given, which understates it.
#[derive(Clone, Debug)]
pub struct Timed {
    /// Records completed by calls that returned by the deadline (a call may complete several).
    pub records: u64,
    /// From releasing the threads until the deadline.
    pub elapsed: Duration,
    /// Records completed by every call, the ones that returned after the deadline too: what
    /// the I/O counters (read once all threads stopped) are divided by.
    pub records_all: u64,
    /// Calls that were running at the deadline and returned after it.
    pub late_calls: u64,
    /// From the deadline until the last thread's last call returned.
    pub overrun: Duration,
    /// Latency of each call, late ones included.
    pub latency: Histogram,
    /// Counters read just before the threads were released and just after they stopped.
    pub io: Counters,
}

/// What one thread did.
#[derive(Default)]
struct Tally {
    records: u64,
    records_all: u64,
    late_calls: u64,
    latency: Histogram,
}

/// How long a system with no warm-up of its own (okaywal, SQLite) runs untimed first, with
/// the timed run's threads and records: long enough for their files to reach the state they
/// run in (okaywal's recycled files, SQLite's WAL restarting after its checkpoints), as
/// nodedb-wal's warm-up brings its log to appending into a reused segment.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// Runs `threads` threads for `duration`. Each thread first builds its worker with
/// `make(thread_index)` (so per-thread setup such as opening a connection is not timed), then
/// calls it until told to stop. A call returns how many records it completed.
pub fn run_for<F, W>(threads: usize, duration: Duration, device: Device, make: F) -> io::Result<Timed>
where
    F: Fn(usize) -> io::Result<W> + Sync,
    W: FnMut() -> io::Result<u64>,
{
    let stop = AtomicBool::new(false);
    let deadline = OnceLock::new();
    let ready = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (make, stop, ready, deadline) = (&make, &stop, &ready, &deadline);
                scope.spawn(move || {
                    // Build the worker before the barrier, but always reach the barrier, or
                    // the main thread would wait forever.
                    let worker = make(index);
                    ready.wait();
                    call_until_stopped(worker?, stop, deadline)
                })
            })
            .collect();
        let before = Counters::read(device);
        ready.wait();
        let start = Instant::now();
        let end = start + duration;
        deadline.set(end).expect("set once");
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        let mut timed = Timed {
            records: 0,
            elapsed: duration,
            records_all: 0,
            late_calls: 0,
            overrun: Duration::ZERO,
            latency: Histogram::default(),
            io: Counters::default(),
        };
        let mut first_error = None;
        for handle in handles {
            match handle.join().expect("a benchmark thread panicked") {
                Ok(tally) => {
                    timed.records += tally.records;
                    timed.records_all += tally.records_all;
                    timed.late_calls += tally.late_calls;
                    timed.latency.merge(&tally.latency);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        timed.overrun = end.elapsed();
        timed.io = Counters::read(device).since(&before);
        first_error.map_or(Ok(timed), Err)
    })
}

fn call_until_stopped<W>(mut work: W, stop: &AtomicBool, deadline: &OnceLock<Instant>) -> io::Result<Tally>
where
    W: FnMut() -> io::Result<u64>,
{
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let records = work()?;
        let done = Instant::now();
        tally.latency.record(done - started);
        tally.records_all += records;
        // Not set yet: the main thread has not even read the clock, so this is early.
        if deadline.get().is_none_or(|end| done <= *end) {
            tally.records += records;
        } else {
            tally.late_calls += 1;
        }
    }
    Ok(tally)
}
