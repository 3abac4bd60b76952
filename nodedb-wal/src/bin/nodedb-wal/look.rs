//! `inspect` and `verify`: a log opened read-only (no lock, no repair), safe beside a
//! running writer and on a copy.

use std::io::Write;
use std::path::Path;

use nodedb_wal::format::manifest::SlotKind;
use nodedb_wal::{Lsn, PREAMBLE_SIZE, RecoveryInfo, SegmentId, SegmentPreamble, WalError};

use super::pass::Pass;
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
    match lsn_range(info.record_count, info.first_lsn, info.last_lsn) {
        Some(range) => out!("records {} ({range})", info.record_count),
        None => out!("records 0"),
    }
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

/// "LSN first to last", or `None` for a log without records, whose first LSN (the next one
/// it will hand out) is past its last.
fn lsn_range(records: u64, first: Lsn, last: Lsn) -> Option<String> {
    (records > 0).then(|| format!("LSN {first} to {last}"))
}

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

pub(super) fn verify(args: &Args) -> Outcome {
    let (dir, wal) = open(args)?;
    let start = wal.recovery_info().first_lsn;
    let pass = Pass::run(wal, || open_at(&dir, args))?;
    let (records, bytes) = (pass.records, pass.bytes);
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
            match lsn_range(records, start, info.last_lsn) {
                Some(range) => out!("clean: {records} records, {range}"),
                None => out!("clean: 0 records"),
            }
            0
        }
    })
}
