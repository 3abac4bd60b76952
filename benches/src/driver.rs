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

impl Timed {
    /// Adds a later timed loop of the same system (another round) to this one: counts, times
    /// and counters add up and the latency histograms merge, so rates and percentiles are those
    /// of all rounds together.
    pub fn absorb(&mut self, later: &Timed) {
        self.records += later.records;
        self.elapsed += later.elapsed;
        self.records_all += later.records_all;
        self.late_calls += later.late_calls;
        self.overrun += later.overrun;
        self.latency.merge(&later.latency);
        self.io = self.io.plus(&later.io);
    }
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
///
/// The I/O counters cover exactly the calls: they are read once every worker is built, and
/// again once every thread's last call returned, before any worker is dropped (a worker's drop,
/// such as SQLite's last connection checkpointing its WAL on close, is teardown, not a call).
/// The deadline is set before the threads are released, so no call that counts ran outside
/// `duration`.
pub fn run_for<F, W>(threads: usize, duration: Duration, device: Device, make: F) -> io::Result<Timed>
where
    F: Fn(usize) -> io::Result<W> + Sync,
    W: FnMut() -> io::Result<u64> + Send,
{
    let stop = AtomicBool::new(false);
    let deadline = OnceLock::new();
    let built = Barrier::new(threads + 1);
    let ready = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (make, stop, built, ready, deadline) = (&make, &stop, &built, &ready, &deadline);
                scope.spawn(move || {
                    // Build the worker before the barriers, but always reach them, or the main
                    // thread would wait forever.
                    let worker = make(index);
                    built.wait();
                    ready.wait();
                    let mut worker = worker?;
                    let tally = call_until_stopped(&mut worker, stop, deadline)?;
                    Ok((tally, worker))
                })
            })
            .collect();
        built.wait();
        let before = Counters::read(device);
        let start = Instant::now();
        let end = start + duration;
        deadline.set(end).expect("set once");
        ready.wait();
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
        let mut workers = Vec::with_capacity(threads);
        for handle in handles {
            match handle.join().expect("a benchmark thread panicked") {
                Ok((tally, worker)) => {
                    timed.records += tally.records;
                    timed.records_all += tally.records_all;
                    timed.late_calls += tally.late_calls;
                    timed.latency.merge(&tally.latency);
                    workers.push(worker);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        timed.overrun = end.elapsed();
        timed.io = Counters::read(device).since(&before);
        drop(workers);
        first_error.map_or(Ok(timed), Err)
    })
}

fn call_until_stopped<W>(work: &mut W, stop: &AtomicBool, deadline: &OnceLock<Instant>) -> io::Result<Tally>
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
        // Set before any thread was released.
        let end = deadline.get().expect("the deadline is set before the threads start");
        if done <= *end {
            tally.records += records;
        } else {
            tally.late_calls += 1;
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use super::*;

    const MIB: usize = 1 << 20;

    /// A worker's resource that writes a MiB (buffered, so `write_bytes` counts it at once) when
    /// built or dropped: the setup and teardown a timed loop must not charge to its calls.
    struct Writes(File);

    impl Writes {
        fn mib(&mut self) {
            self.0.write_all(&[0x5A; MIB]).expect("write a MiB");
        }
    }

    impl Drop for Writes {
        fn drop(&mut self) {
            self.mib();
        }
    }

    /// On the disk the crate lives on: tmpfs would not count the bytes at all.
    fn disk_dir() -> tempfile::TempDir {
        tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("a directory beside the crate")
    }

    fn calls_only(dir: &tempfile::TempDir, slow_setup: bool) -> Timed {
        let device = Device::of(dir.path()).expect("the directory's device");
        run_for(2, Duration::from_millis(50), device, |index| {
            if slow_setup {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut resource = Writes(File::create(dir.path().join(index.to_string()))?);
            resource.mib();
            Ok(move || {
                let _kept = &resource;
                Ok(1)
            })
        })
        .expect("the loop runs")
    }

    #[test]
    fn a_workers_setup_and_teardown_are_outside_the_io_counted_for_its_calls() {
        let dir = disk_dir();
        for slow_setup in [false, true] {
            let timed = calls_only(&dir, slow_setup);
            assert!(timed.records > 0);
            // Two workers wrote a MiB each when built and when dropped; their calls wrote nothing.
            let written = timed.io.process_write_bytes;
            assert!(written < MIB as u64, "{written} bytes counted for calls that wrote none (slow setup: {slow_setup})");
        }
    }
}
