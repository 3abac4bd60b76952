//! Does writing through the WAL leave the page cache alone? Writes a given number of bytes
//! with the pipelined appender (O_DIRECT) and reads the kernel's `Cached:` before and after,
//! then does the same with a plain buffered file as the baseline that does fill the cache.
//!
//! `Cached:` is machine-wide: anything else running (a build) moves it too, in either direction.

use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;

use crate::driver::Params;
use crate::json::Json;
use crate::os::page_cache_bytes;
use crate::systems::nodedb::{append_many, open_fresh, to_io};
use crate::systems::payload;

/// One page-cache measurement.
#[derive(Clone, Copy, Debug)]
pub struct CacheGrowth {
    /// Bytes that went to the file (for the WAL: records, padding, segment ends).
    pub written: u64,
    /// `Cached:` before and after, in bytes.
    pub before: u64,
    /// See `before`.
    pub after: u64,
    /// Seconds the writing took.
    pub seconds: f64,
}

impl CacheGrowth {
    /// The JSON line for `system`.
    #[must_use]
    pub fn to_json(&self, system: &str, direct_io: bool) -> Json {
        let growth = i128::from(self.after) - i128::from(self.before);
        Json::default()
            .str("system", system)
            .str("mode", "page-cache-check")
            .bool("direct_io", direct_io)
            .int("bytes_written", self.written)
            .num("seconds", self.seconds)
            .num("mb_per_sec", self.written as f64 / self.seconds / 1e6)
            .int("cached_before_bytes", self.before)
            .int("cached_after_bytes", self.after)
            .int("cached_growth_bytes", growth)
            .num("cached_growth_pct_of_written", growth as f64 * 100.0 / self.written as f64)
    }
}

/// Writes at least `bytes` of payload through a fresh WAL, waiting for durability every
/// `params.every` records. Returns the growth and whether the WAL used O_DIRECT.
pub fn through_wal(params: &Params, bytes: u64) -> io::Result<(CacheGrowth, bool)> {
    let (wal, _dir) = open_fresh(params)?;
    let payload = payload(params.size);
    let records = bytes.div_ceil(params.size as u64);
    let before = page_cache_bytes()?;
    let start = Instant::now();
    let mut done = 0;
    while done < records {
        let count = params.every.min(records - done);
        let last = append_many(&wal, &payload, count)?;
        wal.wait_durable(last).map_err(to_io)?;
        done += count;
    }
    let seconds = start.elapsed().as_secs_f64();
    let written = wal.stats().bytes_written;
    let direct = wal.direct_io();
    wal.close().map_err(to_io)?;
    let after = page_cache_bytes()?;
    Ok((CacheGrowth { written, before, after, seconds }, direct))
}

/// The baseline: the same bytes written to a plain file with buffered I/O in 1 MiB chunks,
/// then fdatasync. The file is removed afterwards, which also drops its cached pages.
pub fn through_buffered_file(params: &Params, bytes: u64) -> io::Result<CacheGrowth> {
    let dir = tempfile::Builder::new().prefix("buffered-").tempdir_in(&params.dir)?;
    let mut file = File::create(dir.path().join("buffered"))?;
    let chunk = payload(1 << 20);
    let before = page_cache_bytes()?;
    let start = Instant::now();
    let mut written = 0;
    while written < bytes {
        let len = chunk.len().min(usize::try_from(bytes - written).unwrap_or(usize::MAX));
        file.write_all(&chunk[..len])?;
        written += len as u64;
    }
    file.sync_data()?;
    let seconds = start.elapsed().as_secs_f64();
    let after = page_cache_bytes()?;
    Ok(CacheGrowth { written, before, after, seconds })
}
