//! `replay`: how fast a log reads back, against a plain sequential read of the same files in
//! the same run. Writes `--bytes` of `--size`-byte records into two fresh logs (plaintext, and
//! encrypted under an active key) and reads each, `--rounds` times, with every reader:
//!
//! - `plain-read`: `read(2)` of each segment file's data, 1 MiB at a time (the baseline);
//! - `read_from`: the owned iterator (pread, O_DIRECT as the log was opened);
//! - `read_from-view`: the same reader lending records through `next_view` (no copy per
//!   plaintext record);
//! - `read_mapped-view`: `read_mapped` lent through `next_view` (no copy of plaintext payloads);
//! - `read_mapped-view-alone`: the same with `check_ahead` off (no helper thread checking
//!   checksums ahead of the reader);
//! - `replay_parallel-2`: `replay_parallel` with two threads;
//! - `open`: `SegmentedWal::open`, that is recovery, which checks every segment (its rate is of
//!   the files' bytes, as the plain read's is; for the others it is of payload bytes);
//!
//! each cold (files dropped from the page cache first) and warm (a plain read first pulled them
//! in, untimed). Then two logs (plaintext, encrypted) of `--lazy-size`-byte records (64 KiB)
//! are scanned headers-only with `lazy_reader` against full replays of them, cold and warm.
//! Except for `open`, opening the log is not timed. One JSON line per read, then median
//! ratios. A benchmark measures; it never asserts.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use nodedb_wal::{KeyRing, Lsn, Record, SecureKey, SegmentedWal, SegmentedWalConfig};
use nodedb_wal_benches::Json;
use nodedb_wal_benches::args::bin_main;
use nodedb_wal_benches::systems::nodedb::{BENCH_TYPE, to_io};
use nodedb_wal_benches::systems::payload;

const USAGE: &str = "\
usage: replay [--dir DIR] [--size S] [--bytes B] [--rounds R] [--lazy-size S] [--lazy-bytes B]
              [--readers a,b,..] [--logs a,b]

  --dir DIR         where the logs go; a temporary directory is made inside it (.)
  --size S          payload bytes per record (1024)
  --bytes B         payload bytes per log (268435456)
  --rounds R        reads of each log by each reader, cold and warm (3)
  --lazy-size S     payload bytes per record of the lazy-scan log (65536)
  --lazy-bytes B    payload bytes of each lazy-scan log; 0 skips the lazy scans (268435456)
  --readers LIST    readers besides plain-read: read_from, read_from-view,
                    read_mapped-view, read_mapped-view-alone, replay_parallel-2, open (all)
  --logs LIST       plaintext, encrypted (both)";

struct Args {
    dir: String,
    size: usize,
    bytes: u64,
    rounds: usize,
    lazy_size: usize,
    lazy_bytes: u64,
    readers: Vec<Reader>,
    logs: Vec<&'static str>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        dir: ".".into(),
        size: 1024,
        bytes: 256 << 20,
        rounds: 3,
        lazy_size: 64 << 10,
        lazy_bytes: 256 << 20,
        readers: REPLAY_READERS.to_vec(),
        logs: LOGS.iter().map(|l| l.0).collect(),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |s: String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = value()?,
            "--size" => args.size = number(value()?)? as usize,
            "--bytes" => args.bytes = number(value()?)?,
            "--rounds" => args.rounds = number(value()?)? as usize,
            "--lazy-size" => args.lazy_size = number(value()?)? as usize,
            "--lazy-bytes" => args.lazy_bytes = number(value()?)?,
            "--readers" => args.readers = pick(&value()?, &REPLAY_READERS.map(|r| (r.name(), r)))?,
            "--logs" => args.logs = pick(&value()?, &LOGS.map(|l| (l.0, l.0)))?,
            "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.size == 0 || args.rounds == 0 || args.lazy_size == 0 {
        return Err("--size, --lazy-size and --rounds must be positive".into());
    }
    Ok(args)
}

/// The named items of a comma-separated `list`, in its order.
fn pick<T: Copy>(list: &str, known: &[(&str, T)]) -> Result<Vec<T>, String> {
    list.split(',').map(|name| known.iter().find(|k| k.0 == name).map(|k| k.1).ok_or_else(|| format!("unknown: {name}"))).collect()
}

fn main() -> ExitCode {
    bin_main("replay", USAGE, parse, run)
}

fn config(dir: &Path, encrypted: bool) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    if encrypted {
        config.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    }
    config
}

/// Fills a fresh log with `bytes` of `size`-byte payloads; returns its config (the key ring
/// with it) and its segment files with the bytes of each that hold frames.
fn fill(dir: &Path, size: usize, bytes: u64, encrypted: bool) -> io::Result<(SegmentedWalConfig, Vec<(PathBuf, u64)>)> {
    let config = config(dir, encrypted);
    let wal = SegmentedWal::open(config.clone()).map_err(to_io)?;
    let payload = payload(size);
    let records = bytes.div_ceil(size as u64);
    for i in 0..records {
        let lsn = wal.append(Record::new(BENCH_TYPE, &payload)).map_err(to_io)?;
        if i % 4096 == 4095 {
            wal.wait_durable(lsn).map_err(to_io)?;
        }
    }
    wal.sync().map_err(to_io)?;
    let files = wal.segments().iter().map(|s| (nodedb_wal::segment::path(dir, s.id), s.bytes)).collect();
    wal.close().map_err(to_io)?;
    Ok((config, files))
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

/// Reads the frames of every segment file with plain `read(2)`; returns the bytes read.
///
/// Into a page-aligned buffer: on this CPU (AMD EPYC, Zen 3) the kernel's copy out of the page
/// cache ran ~4x slower into a buffer 16 bytes past a page boundary, which is where glibc puts
/// a fresh 1 MiB allocation (its own mapping, after a 16-byte chunk header), while the heap's
/// offsets ran at full speed (BENCHMARKS.md). So an unaligned baseline was fast or slow by the
/// luck of the allocator; an aligned one is always the fastest plain read, as the log's own
/// reads are (its buffers are aligned).
fn plain_read(files: &[(PathBuf, u64)]) -> io::Result<u64> {
    const BUF: usize = 1 << 20;
    let mut room = vec![0u8; BUF + PAGE];
    let skip = room.as_ptr().align_offset(PAGE);
    let buf = &mut room[skip..skip + BUF];
    let mut total = 0;
    for (path, bytes) in files {
        let mut file = std::fs::File::open(path)?.take(*bytes);
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// A page of memory, for aligning the plain read's buffer.
const PAGE: usize = 4096;

/// The logs written: name and whether it is encrypted.
const LOGS: [(&str, bool); 2] = [("plaintext", false), ("encrypted", true)];

/// The replay readers compared with a plain read.
const REPLAY_READERS: [Reader; 6] =
    [Reader::ReadFrom, Reader::ReadFromView, Reader::MappedView, Reader::MappedAlone, Reader::Parallel, Reader::Open];

/// The readers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Plain,
    ReadFrom,
    /// `read_from` lent through `next_view`.
    ReadFromView,
    MappedView,
    /// `read_mapped` with `check_ahead` off.
    MappedAlone,
    LazyHeaders,
    /// `replay_parallel` with two threads (this machine's cores).
    Parallel,
    /// `SegmentedWal::open`: recovery, which checks every segment; its rate is of the files'
    /// bytes, like the plain read's.
    Open,
}

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Reader::Plain => "plain-read",
            Reader::ReadFrom => "read_from",
            Reader::ReadFromView => "read_from-view",
            Reader::MappedView => "read_mapped-view",
            Reader::MappedAlone => "read_mapped-view-alone",
            Reader::LazyHeaders => "lazy-headers",
            Reader::Parallel => "replay_parallel-2",
            Reader::Open => "open",
        }
    }
}

/// Reads the whole log once with `reader`; returns (records, bytes read or handed out).
fn read_once(reader: Reader, wal: &SegmentedWal, files: &[(PathBuf, u64)]) -> io::Result<(u64, u64)> {
    let (mut records, mut bytes) = (0u64, 0u64);
    match reader {
        Reader::Plain => bytes = plain_read(files)?,
        Reader::ReadFrom => {
            for record in wal.read_from(Lsn(1)).map_err(to_io)? {
                records += 1;
                bytes += record.map_err(to_io)?.payload.len() as u64;
            }
        }
        Reader::ReadFromView | Reader::MappedView | Reader::MappedAlone => {
            let mut iter = if reader == Reader::ReadFromView { wal.read_from(Lsn(1)) } else { wal.read_mapped(Lsn(1)) }.map_err(to_io)?;
            while let Some(view) = iter.next_view() {
                let view = view.map_err(to_io)?;
                records += 1;
                bytes += std::hint::black_box(view.payload).len() as u64;
            }
        }
        Reader::Parallel => {
            records = wal
                .replay_parallel(Lsn(1), 2, |record| {
                    bytes += std::hint::black_box(record.payload).len() as u64;
                    Ok(())
                })
                .map_err(to_io)?;
        }
        Reader::Open => unreachable!("timed() times the open itself"),
        Reader::LazyHeaders => {
            let mut lazy = wal.lazy_reader(Lsn(1)).map_err(to_io)?;
            while let Some(handle) = lazy.next_header().map_err(to_io)? {
                records += 1;
                bytes += u64::from(handle.stored_len);
            }
        }
    }
    Ok((records, bytes))
}

/// Opens the log (not timed), sets up the page cache, and times one read with `reader`.
fn timed(reader: Reader, config: &SegmentedWalConfig, files: &[(PathBuf, u64)], warm: bool) -> io::Result<(u64, u64, f64)> {
    let config = &SegmentedWalConfig { check_ahead: reader != Reader::MappedAlone, ..config.clone() };
    let opened = (reader != Reader::Open).then(|| SegmentedWal::open(config.clone()).map_err(to_io)).transpose()?;
    drop_cache(&config.dir)?;
    if warm {
        plain_read(files)?;
    }
    let start = Instant::now();
    let Some(wal) = opened else {
        let wal = SegmentedWal::open(config.clone()).map_err(to_io)?;
        let seconds = start.elapsed().as_secs_f64();
        let records = wal.recovery_info().record_count;
        return Ok((records, files.iter().map(|f| f.1).sum(), seconds));
    };
    let (records, bytes) = read_once(reader, &wal, files)?;
    let seconds = start.elapsed().as_secs_f64();
    drop(wal);
    Ok((records, bytes, seconds))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// GB/s per (log, reader, cache), in the order measured.
type Rates = Vec<((&'static str, Reader, bool), Vec<f64>)>;

fn note(rates: &mut Rates, key: (&'static str, Reader, bool), rate: f64) {
    match rates.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => v.push(rate),
        None => rates.push((key, vec![rate])),
    }
}

fn rate_of(rates: &Rates, key: (&'static str, Reader, bool)) -> f64 {
    rates.iter().find(|(k, _)| *k == key).map_or(f64::NAN, |(_, v)| median(v))
}

/// A log written for the benchmark: its name, config, and segment files with their data bytes.
type Log = (&'static str, SegmentedWalConfig, Vec<(PathBuf, u64)>);

fn measure(logs: &[Log], readers: &[Reader], args: &Args, size: usize) -> io::Result<Rates> {
    let mut rates = Rates::new();
    for _ in 0..args.rounds {
        for (name, config, files) in logs {
            for &reader in readers {
                for warm in [false, true] {
                    let (records, bytes, seconds) = timed(reader, config, files, warm)?;
                    let rate = bytes as f64 / seconds / 1e9;
                    note(&mut rates, (name, reader, warm), rate);
                    let line = Json::default()
                        .str("system", reader.name())
                        .str("log", name)
                        .str("cache", if warm { "warm" } else { "cold" })
                        .int("size_bytes", size as u64)
                        .int("records", records)
                        .int("bytes", bytes)
                        .num("seconds", seconds)
                        .num("gb_per_sec", rate);
                    println!("{line}");
                }
            }
        }
    }
    Ok(rates)
}

fn run(args: &Args) -> io::Result<()> {
    let root = tempfile::Builder::new().prefix("nodedb-wal-replay-").tempdir_in(&args.dir)?;
    let mut logs = Vec::new();
    for (name, encrypted) in LOGS.into_iter().filter(|l| args.logs.contains(&l.0)) {
        let (config, files) = fill(&root.path().join(name), args.size, args.bytes, encrypted)?;
        logs.push((name, config, files));
    }
    let readers: Vec<Reader> = std::iter::once(Reader::Plain).chain(args.readers.iter().copied()).collect();
    let rates = measure(&logs, &readers, args, args.size)?;
    let mut summary = Json::default().str("system", "replay-ratios").int("size_bytes", args.size as u64);
    for (name, _, _) in &logs {
        for warm in [false, true] {
            let cache = if warm { "warm" } else { "cold" };
            let plain = rate_of(&rates, (name, Reader::Plain, warm));
            for &reader in &args.readers {
                let rate = rate_of(&rates, (name, reader, warm));
                summary = summary.num(&format!("{name}_{cache}_{}_gb_per_sec", reader.name()), rate);
                summary = summary.num(&format!("{name}_{cache}_{}_vs_plain_read", reader.name()), rate / plain);
            }
            summary = summary.num(&format!("{name}_{cache}_plain_read_gb_per_sec"), rate_of(&rates, (name, Reader::Plain, warm)));
        }
    }
    println!("{summary}");
    drop(logs);

    // Headers only against a full replay, on logs of large records.
    if args.lazy_bytes == 0 {
        return Ok(());
    }
    let mut lazy_logs = Vec::new();
    for (name, encrypted) in [("plaintext-lazy", false), ("encrypted-lazy", true)] {
        let (config, files) = fill(&root.path().join(name), args.lazy_size, args.lazy_bytes, encrypted)?;
        lazy_logs.push((name, config, files));
    }
    let rates = measure(&lazy_logs, &[Reader::LazyHeaders, Reader::ReadFrom, Reader::MappedView], args, args.lazy_size)?;
    let mut summary = Json::default().str("system", "lazy-ratios").int("size_bytes", args.lazy_size as u64);
    for (name, _, _) in &lazy_logs {
        // Rates are of the payload bytes each reader covered, the same log: ratios of times.
        let seconds_per_gb = |reader, warm| 1.0 / rate_of(&rates, (name, reader, warm));
        for warm in [false, true] {
            let cache = if warm { "warm" } else { "cold" };
            let lazy = seconds_per_gb(Reader::LazyHeaders, warm);
            summary = summary
                .num(&format!("{name}_{cache}_speedup_vs_read_from"), seconds_per_gb(Reader::ReadFrom, warm) / lazy)
                .num(&format!("{name}_{cache}_speedup_vs_read_mapped"), seconds_per_gb(Reader::MappedView, warm) / lazy);
        }
    }
    println!("{summary}");
    Ok(())
}
