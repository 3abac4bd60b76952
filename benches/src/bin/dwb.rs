//! `dwb`: what torn-page protection costs. Writes the same random 16 KiB pages in batches of 32
//! three ways, one after another in one process on the same disk: in place with one fdatasync
//! per batch (the baseline, no protection), through the double-write buffer in `Buffered` mode,
//! and in `Direct` mode. Each variant runs `--rounds` times, interleaved, so drift on a shared
//! disk hits all alike. Prints one JSON line per run and a final line of medians and ratios
//! against the baseline. A benchmark measures; it never asserts.
//!
//! Bytes per page are counted two ways: what the code wrote (`wal_dwb_bytes_written_total`
//! plus the in-place bytes) and what the device wrote (`/proc/diskstats`: file-system journal
//! and metadata included, but device-wide, so other processes' writes disturb it).
//! `write_bytes` of `/proc/self/io` is not used: on the kernel these numbers were taken on, it
//! charged a constant ~50 times the bytes actually written, for every variant alike.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
use nodedb_wal::{DoubleWriteBuffer, DwbConfig, DwbMode, FileId, FsStorage, wal_dwb_bytes_written_total};
use nodedb_wal_benches::os::{Counters, Device, is_tmpfs};

const USAGE: &str = "\
usage: dwb [--dir DIR] [--pages N] [--batch B] [--page-bytes P] [--file-pages F] [--rounds R]

  --dir DIR         where the files go; a temporary directory is made inside it (system temp)
  --pages N         pages written per run (8192)
  --batch B         pages per write_pages call / per baseline fdatasync (32)
  --page-bytes P    bytes per page (16384)
  --file-pages F    pages in the target file; page numbers are drawn from it (4096)
  --rounds R        runs of each variant, interleaved (3)";

#[derive(Clone, Debug)]
struct Args {
    dir: PathBuf,
    pages: usize,
    batch: usize,
    page_bytes: usize,
    file_pages: u64,
    rounds: usize,
}

fn parse(mut raw: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args { dir: std::env::temp_dir(), pages: 8192, batch: 32, page_bytes: 16384, file_pages: 4096, rounds: 3 };
    while let Some(flag) = raw.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let count = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
                .and_then(|n| if n > 0 { Ok(n) } else { Err(format!("{flag} must be positive")) })
        };
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(&value),
            "--pages" => a.pages = count()?,
            "--batch" => a.batch = count()?,
            "--page-bytes" => a.page_bytes = count()?,
            "--file-pages" => a.file_pages = count()? as u64,
            "--rounds" => a.rounds = count()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dwb: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dwb: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The three ways of writing pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    InPlace,
    Dwb(DwbMode),
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::InPlace => "in-place+fdatasync",
            Variant::Dwb(DwbMode::Direct) => "dwb-direct",
            Variant::Dwb(_) => "dwb-buffered",
        }
    }
}

/// One run's measurements.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    variant: Variant,
    seconds: f64,
    pages: usize,
    code_bytes: u64,
    device_bytes: Option<u64>,
    syncs: u64,
    batches: u64,
    batch_us_p50: u64,
    batch_us_p99: u64,
}

impl Outcome {
    fn pages_per_s(&self) -> f64 {
        self.pages as f64 / self.seconds
    }

    fn per_page(&self, bytes: u64) -> f64 {
        bytes as f64 / self.pages as f64
    }

    fn json(&self, args: &Args) -> String {
        format!(
            concat!(
                "{{\"variant\":\"{}\",\"page_bytes\":{},\"batch_pages\":{},\"pages\":{},\"seconds\":{:.3},\"pages_per_s\":{:.1},",
                "\"bytes_per_page\":{:.1},\"device_write_bytes_per_page\":{},",
                "\"fdatasyncs_per_batch\":{:.2},\"batch_us_p50\":{},\"batch_us_p99\":{}}}"
            ),
            self.variant.name(),
            args.page_bytes,
            args.batch,
            self.pages,
            self.seconds,
            self.pages_per_s(),
            self.per_page(self.code_bytes),
            self.device_bytes.map_or("null".into(), |b| format!("{:.1}", self.per_page(b))),
            self.syncs as f64 / self.batches as f64,
            self.batch_us_p50,
            self.batch_us_p99,
        )
    }
}

fn run(args: &Args) -> io::Result<()> {
    let root = tempfile::Builder::new().prefix("nodedb-dwb-bench-").tempdir_in(&args.dir)?;
    if is_tmpfs(root.path())? {
        eprintln!("dwb: warning: {} is on tmpfs; syncs there cost nothing, use --dir on a disk", root.path().display());
    }
    let device = Device::of(root.path())?;
    let variants = [Variant::InPlace, Variant::Dwb(DwbMode::Buffered), Variant::Dwb(DwbMode::Direct)];
    let mut outcomes = Vec::new();
    for round in 0..args.rounds {
        for variant in variants {
            let dir = root.path().join(format!("{}-{round}", variant.name()));
            std::fs::create_dir(&dir)?;
            eprintln!("dwb: round {round}, {} ...", variant.name());
            let outcome = run_variant(args, variant, &dir, device)?;
            println!("{}", outcome.json(args));
            outcomes.push(outcome);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    println!("{}", summary(&outcomes, args));
    Ok(())
}

/// The page numbers and contents every variant writes: the same pseudo-random sequence.
fn workload(args: &Args) -> Vec<(u64, Vec<u8>)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..args.pages)
        .map(|i| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let page_no = (state >> 33) % args.file_pages;
            let bytes = (0..args.page_bytes).map(|j| (i ^ j ^ (j >> 8)) as u8).collect();
            (page_no, bytes)
        })
        .collect()
}

fn run_variant(args: &Args, variant: Variant, dir: &Path, device: Device) -> io::Result<Outcome> {
    let storage = FsStorage::new();
    let target = dir.join("pages");
    preallocate(&target, args.page_bytes as u64 * args.file_pages)?;
    let work = workload(args);
    let dwb = match variant {
        Variant::InPlace => None,
        Variant::Dwb(mode) => {
            let mut config = DwbConfig::new(dir.join("dwb"));
            config.mode = mode;
            let dwb = DoubleWriteBuffer::open_with(storage.clone(), config).map_err(io::Error::other)?;
            dwb.register_file(FileId(1), &target, args.page_bytes).map_err(io::Error::other)?;
            Some(dwb)
        }
    };
    let file = storage.open(&target, OpenMode { create: false, write: true, direct: false, create_new: false })?;
    let dwb_before = wal_dwb_bytes_written_total();
    let before = Counters::read(device);
    let mut batch_us = Vec::new();
    let start = Instant::now();
    for chunk in work.chunks(args.batch) {
        let t = Instant::now();
        match &dwb {
            None => {
                for (page_no, bytes) in chunk {
                    file.write_at(bytes, page_no * args.page_bytes as u64)?;
                }
                file.sync_data()?;
            }
            Some(dwb) => {
                let pages: Vec<_> = chunk.iter().map(|(n, b)| (FileId(1), *n, &b[..])).collect();
                dwb.write_pages(&pages).map_err(io::Error::other)?;
            }
        }
        batch_us.push(t.elapsed().as_micros() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    let counted = Counters::read(device).since(&before);
    let batches = batch_us.len() as u64;
    let (code_bytes, syncs) = match &dwb {
        None => ((args.pages * args.page_bytes) as u64, batches),
        Some(dwb) => {
            let stats = dwb.stats();
            (wal_dwb_bytes_written_total() - dwb_before + stats.in_place_bytes, stats.batches + stats.target_syncs)
        }
    };
    batch_us.sort_unstable();
    let pct = |p: f64| batch_us[((batch_us.len() - 1) as f64 * p) as usize];
    Ok(Outcome {
        variant,
        seconds,
        pages: args.pages,
        code_bytes,
        device_bytes: counted.device_write_bytes,
        syncs,
        batches,
        batch_us_p50: pct(0.5),
        batch_us_p99: pct(0.99),
    })
}

/// Writes the target file full of zeros and syncs it, so every variant overwrites allocated
/// blocks and no fdatasync pays for block allocation.
fn preallocate(path: &Path, bytes: u64) -> io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let file = FsStorage::pwrite_only().open(path, OpenMode { create: true, write: true, direct: false, create_new: false })?;
    let mut at = 0;
    while at < bytes {
        let len = chunk.len().min((bytes - at) as usize);
        file.write_at(&chunk[..len], at)?;
        at += len as u64;
    }
    file.sync_data()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians per variant, and each protected variant's ratios to the baseline.
fn summary(outcomes: &[Outcome], args: &Args) -> String {
    let of = |v: Variant, f: &dyn Fn(&Outcome) -> f64| median(outcomes.iter().filter(|o| o.variant == v).map(f).collect());
    let base_rate = of(Variant::InPlace, &Outcome::pages_per_s);
    let base_bytes = of(Variant::InPlace, &|o| o.per_page(o.code_bytes));
    let base_device = of(Variant::InPlace, &|o| o.device_bytes.map_or(f64::NAN, |b| o.per_page(b)));
    let mut line = format!("{{\"summary\":\"medians of {} rounds\",\"baseline_pages_per_s\":{base_rate:.1}", args.rounds);
    for mode in [DwbMode::Buffered, DwbMode::Direct] {
        let v = Variant::Dwb(mode);
        let key = v.name().replace('-', "_");
        let rate = of(v, &Outcome::pages_per_s);
        let bytes = of(v, &|o| o.per_page(o.code_bytes));
        let device = of(v, &|o| o.device_bytes.map_or(f64::NAN, |b| o.per_page(b)));
        let syncs = of(v, &|o| o.syncs as f64 / o.batches as f64);
        line += &format!(
            ",\"{key}_pages_per_s\":{rate:.1},\"{key}_speed_ratio\":{:.3},\"{key}_bytes_ratio\":{:.3},\"{key}_device_bytes_ratio\":{:.3},\"{key}_fdatasyncs_per_batch\":{syncs:.2}",
            rate / base_rate,
            bytes / base_bytes,
            device / base_device,
        );
    }
    line + "}"
}
