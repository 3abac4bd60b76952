//! `inspect` and `verify`: a log opened read-only (no lock, no repair), safe beside a
//! running writer and on a copy.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nodedb_wal::format::manifest::SlotKind;
use nodedb_wal::{Lsn, PREAMBLE_SIZE, ReadOnlyWal, RecoveryInfo, SegmentId, SegmentPreamble, WalError};

use super::side::SideFile;
use super::{Args, Exit, KEY_HINT, Outcome, log_dir, open, open_at};

fn preamble_of(path: &Path) -> Option<SegmentPreamble> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; PREAMBLE_SIZE];
    // Non-blocking, as the log's own opens: a segment swapped for a FIFO since the log opened
    // must not hang the listing (a FIFO then reads nothing, and no preamble is shown).
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut bytes).ok()?;
    SegmentPreamble::decode(&bytes).ok()
}

/// The format version and key id a segment file's preamble names, as `inspect` shows them.
fn version_and_key(path: &Path) -> (String, String) {
    match preamble_of(path) {
        Some(p) if p.cipher != 0 => (p.version.to_string(), p.key_id.to_string()),
        Some(p) => (p.version.to_string(), "-".into()),
        None => ("?".into(), "?".into()),
    }
}

/// The segment files of a log `inspect` could not open, as found: without recovery their LSN
/// ranges are unknown, but which files are there, their lengths and keys are what an operator
/// locating damage or a lost file looks at first. Nothing where the directory holds none.
fn segment_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut found: Vec<(SegmentId, std::path::PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            Some((nodedb_wal::segment::parse_name(entry.file_name().to_str()?)?, entry.path()))
        })
        .collect();
    if found.is_empty() {
        return;
    }
    found.sort_unstable();
    out!("{:>24}  {:>12}  {:>7}  {:>6}", "segment file", "file bytes", "version", "key");
    for (id, path) in found {
        // Through a symbolic link, as the log opens it: the segment's length, not the link's
        // (a link to nothing has none).
        let len = std::fs::metadata(&path).map_or_else(|_| "?".into(), |meta| meta.len().to_string());
        let (version, key) = version_and_key(&path);
        out!("{:>24}  {len:>12}  {version:>7}  {key:>6}", nodedb_wal::segment::file_name(id));
    }
}

/// The lines of `MANIFEST` and `FLOOR`, for `inspect`.
fn side_files(dir: &Path) {
    for kind in [SlotKind::Manifest, SlotKind::Floor] {
        out!("{}", SideFile::read(dir, kind).line());
    }
}

pub(super) fn inspect(args: &Args) -> Outcome {
    let dir = log_dir(args)?;
    // Shown when the log is refused too: those files are behind most refusals of a whole log,
    // and the segment files as found locate what it refused.
    let wal = open_at(&dir, args).inspect_err(|_| {
        segment_files(&dir);
        side_files(&dir);
    })?;
    let info = wal.recovery_info();
    out!(
        "{:>20}  {:>12}  {:>12}  {:>10}  {:>12}  {:>6}  {:>7}  {:>6}",
        "segment",
        "first lsn",
        "end lsn",
        "records",
        "bytes",
        "sealed",
        "version",
        "key"
    );
    for seg in &info.segments {
        let (version, key) = version_and_key(&nodedb_wal::segment::path(&dir, seg.id));
        out!(
            "{:>20}  {:>12}  {:>12}  {:>10}  {:>12}  {:>6}  {:>7}  {:>6}",
            seg.id.0,
            seg.first_lsn.0,
            seg.end_lsn.0,
            seg.record_count(),
            seg.bytes,
            if seg.sealed { "yes" } else { "no" },
            version,
            key
        );
    }
    side_files(&dir);
    out!("records {} (LSN {} to {})", info.record_count, info.first_lsn, info.last_lsn);
    if let Some(id) = info.removed_interrupted_roll {
        out!("segment {id} is left by an interrupted roll; opening the log removes it");
    }
    if info.ungathered > 0 {
        out!("{} tombstone or purge record(s) in encrypted segments not read (no key given for them)", info.ungathered);
    }
    Ok(match &info.torn_tail {
        Some(torn) => {
            out!(
                "health: torn tail in segment {} at offset {} ({}); opening the log cuts it",
                torn.segment,
                torn.offset,
                super::torn::describe(&dir, torn)
            );
            1
        }
        None => {
            out!("health: clean");
            0
        }
    })
}

/// Looks `verify` takes at most: the first, and one more each time a writer's truncation
/// overtakes its pass. A pass starts in the oldest segment, the next one a truncation takes,
/// so beside a writer that truncates every few records several looks are usual (up to 5 in
/// 100 passes of `live_look.rs`' test, measured once while another build shared the CPU). A writer that truncates faster than
/// the pass reads, 64 times over, ends it with the truncation error (status 3).
const VERIFY_LOOKS_MAX: u32 = 64;

/// The first LSN of segment `id` in the look `info`.
fn first_of(info: &RecoveryInfo, id: SegmentId) -> Option<Lsn> {
    info.segments.iter().find(|s| s.id == id).map(|s| s.first_lsn)
}

/// The exit for `err`, reading the look `info`: a segment whose very first record fails
/// authentication was most likely written under another key (status 4); a failure further in
/// is damage, as is any other error.
pub(super) fn wrong_key_at_first_record(info: &RecoveryInfo, err: WalError) -> Exit {
    match err {
        WalError::AuthenticationFailed { lsn, segment } if first_of(info, segment) == Some(lsn) => Exit::new(
            4,
            format!(
                "record {lsn} in segment {segment} failed authentication, the first of its segment: most likely the wrong key{KEY_HINT}"
            ),
        ),
        err => err.into(),
    }
}

/// Where `verify`'s pass stands: the look it reads, the next LSN to check, and the records a
/// writer's truncation took before the pass reached them (below the writer's checkpoint, so
/// nothing anyone will read again).
struct Pass {
    wal: ReadOnlyWal,
    info: RecoveryInfo,
    next: Lsn,
    skipped: Option<(Lsn, Lsn)>,
    looks: u32,
}

impl Pass {
    /// After `err` from the pass: where it is a truncation that overtook the pass (and looks
    /// are left), looks again and goes on from where the log now starts if that is further on.
    /// Any other error ends the pass.
    fn look_again(&mut self, dir: &Path, args: &Args, err: WalError) -> Result<(), Exit> {
        if !matches!(err, WalError::SegmentTruncated { .. }) || self.looks >= VERIFY_LOOKS_MAX {
            return Err(err.into());
        }
        self.wal = open_at(dir, args)?;
        self.info = self.wal.recovery_info().clone();
        self.looks += 1;
        if self.info.first_lsn > self.next {
            let first = self.skipped.map_or(self.next, |(first, _)| first);
            self.skipped = Some((first, Lsn(self.info.first_lsn.0 - 1)));
            self.next = self.info.first_lsn;
        }
        Ok(())
    }
}

pub(super) fn verify(args: &Args) -> Outcome {
    let (dir, wal) = open(args)?;
    let info = wal.recovery_info().clone();
    let (start, total) = (info.first_lsn, info.record_count.max(1));
    let mut pass = Pass { wal, next: info.first_lsn, info, skipped: None, looks: 1 };
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last_report = Instant::now();
    'pass: loop {
        let reader = match pass.wal.read_from(pass.next) {
            Ok(reader) => reader,
            Err(err) => {
                pass.look_again(&dir, args, err)?;
                continue 'pass;
            }
        };
        for record in reader {
            let record = match record {
                Ok(record) => record,
                Err(err @ WalError::AuthenticationFailed { .. }) => return Err(wrong_key_at_first_record(&pass.info, err)),
                Err(err) => {
                    pass.look_again(&dir, args, err)?;
                    continue 'pass;
                }
            };
            pass.next = record.lsn.next();
            records += 1;
            bytes += record.payload.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(500) {
                note!("\rverify: {:>5.1}%  {records} records", records as f64 * 100.0 / total as f64);
                last_report = Instant::now();
            }
        }
        break;
    }
    diag!("\rverify: 100.0%  {records} records, {bytes} payload bytes, every checksum and tag checked");
    if let Some((first, last)) = pass.skipped {
        out!("LSN {first} to {last} were truncated by the log's writer before verify reached them; they were not checked");
    }
    let info = pass.info;
    Ok(match info.torn_tail {
        Some(torn) => {
            out!(
                "torn tail: segment {} offset {} ({}); opening the log cuts it",
                torn.segment,
                torn.offset,
                super::torn::describe(&dir, &torn)
            );
            1
        }
        None => {
            out!("clean: {records} records, LSN {start} to {}", info.last_lsn);
            0
        }
    })
}
