//! One system's result and its JSON line.

use crate::driver::Timed;
use crate::json::Json;

/// A system's result, printed as one JSON line.
#[derive(Clone, Debug)]
pub struct Report {
    /// The system's name.
    pub system: String,
    /// Threads that ran it.
    pub threads: usize,
    /// Payload bytes per record (for raw-bandwidth: per write).
    pub size_bytes: usize,
    /// The timed loop.
    pub timed: Timed,
    /// fdatasync calls, where the system itself counts them.
    pub fsyncs: Option<u64>,
    /// Bytes the WAL itself says it wrote (records, padding), where it counts them.
    pub wal_bytes: Option<u64>,
    /// What one latency sample covers.
    pub latency_of: &'static str,
    /// How the system was driven, for a reader of the output alone.
    pub note: &'static str,
    /// Rounds added up in this report (`compare --rounds`); 1 for a single run.
    pub rounds: u32,
}

impl Report {
    /// Adds another round of the same system: see [`Timed::absorb`]. A count only one of the
    /// two has is unknown for both together.
    pub fn absorb(&mut self, later: &Report) {
        assert_eq!(self.system, later.system, "only rounds of one system add up");
        self.timed.absorb(&later.timed);
        let sum = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        self.fsyncs = sum(self.fsyncs, later.fsyncs);
        self.wal_bytes = sum(self.wal_bytes, later.wal_bytes);
        self.rounds += later.rounds;
    }

    /// Seconds up to the deadline (summed over rounds): the time the counted records were done in.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.timed.elapsed.as_secs_f64()
    }

    /// Durable records per second.
    #[must_use]
    pub fn records_per_sec(&self) -> f64 {
        self.timed.records as f64 / self.seconds()
    }

    /// Payload megabytes (10^6 bytes) per second.
    #[must_use]
    pub fn mb_per_sec(&self) -> f64 {
        self.records_per_sec() * self.size_bytes as f64 / 1e6
    }

    /// The call latency at quantile `q`, in microseconds.
    #[must_use]
    pub fn latency_us(&self, q: f64) -> Option<f64> {
        self.timed.latency.quantile_us(q)
    }

    /// A counter read over the whole run, late calls included, per record of the whole run.
    fn per_record(&self, total: Option<u64>) -> Option<f64> {
        Some(total? as f64 / self.timed.records_all as f64)
    }

    /// The JSON line.
    #[must_use]
    pub fn to_json(&self) -> Json {
        let io = &self.timed.io;
        let fsyncs = self.fsyncs.or(io.device_flushes);
        Json::default()
            .str("system", &self.system)
            .int("threads", self.threads as u64)
            .int("size_bytes", self.size_bytes as u64)
            .int("records", self.timed.records)
            .num("seconds", self.seconds())
            .num("records_per_sec", self.records_per_sec())
            .num("mb_per_sec", self.mb_per_sec())
            .opt_num("p50_us", self.latency_us(0.50))
            .opt_num("p99_us", self.latency_us(0.99))
            .opt_num("p999_us", self.latency_us(0.999))
            .opt_num("max_us", self.timed.latency.max_us())
            .int("late_calls", self.timed.late_calls)
            .num("overrun_seconds", self.timed.overrun.as_secs_f64())
            .opt_int("fsyncs", self.fsyncs)
            .opt_int("device_flushes", io.device_flushes)
            .opt_num("records_per_fsync", fsyncs.map(|f| self.timed.records_all as f64 / f as f64))
            .opt_num("disk_bytes_per_record", self.per_record(Some(io.process_write_bytes)))
            .opt_num("wal_bytes_per_record", self.per_record(self.wal_bytes))
            .opt_num("device_bytes_per_record", self.per_record(io.device_write_bytes))
            .opt_num("cpu_us_per_record", self.per_record(io.process_cpu_us))
            .opt_num("machine_context_switches_per_record", self.per_record(io.machine_context_switches))
            .str("latency_of", self.latency_of)
            .int("rounds", self.rounds)
            .str("note", self.note)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hist::Histogram;
    use crate::os::Counters;

    fn round(records: u64, seconds: u64, fsyncs: Option<u64>, latency_us: u64) -> Report {
        let mut latency = Histogram::default();
        latency.record(Duration::from_micros(latency_us));
        let io = Counters { process_write_bytes: records * 100, ..Counters::default() };
        let timed = Timed {
            records,
            elapsed: Duration::from_secs(seconds),
            records_all: records,
            late_calls: 0,
            overrun: Duration::ZERO,
            latency,
            io,
        };
        Report { system: "s".into(), threads: 1, size_bytes: 1, timed, fsyncs, wal_bytes: None, latency_of: "", note: "", rounds: 1 }
    }

    #[test]
    fn rounds_add_up_to_one_rate_one_histogram_and_known_counts_only() {
        let mut first = round(100, 1, Some(10), 5);
        first.absorb(&round(300, 1, None, 7));
        assert_eq!(first.records_per_sec(), 200.0);
        assert_eq!(first.timed.latency.count(), 2);
        assert_eq!(first.per_record(Some(first.timed.io.process_write_bytes)), Some(100.0));
        assert_eq!((first.fsyncs, first.rounds), (None, 2));
    }
}
