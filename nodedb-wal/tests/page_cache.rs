//! A replay leaves the page cache as it found it: the segment bytes it had to read from the disk
//! are dropped behind it (a long replay must not evict the database's working set), and the
//! bytes that were cached already stay cached (it must not evict what someone else, a backup
//! or another reader, pulled in). Checked on the real file system with `fincore`.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};

const SEGMENT: u64 = 32 << 20;

/// Bytes of `path` in the page cache, or `None` where `fincore` cannot tell.
fn cached_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(path).output().ok()?;
    out.status.success().then_some(())?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn drop_from_cache(path: &Path) {
    let file = File::open(path).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

#[test]
fn a_replay_drops_what_it_read_from_disk_and_keeps_what_was_cached() {
    // The pread reader drops synchronously: at most the read-ahead past the frames stays.
    check_replay(SEGMENT / 8, |wal| wal.read_from(Lsn::FIRST).unwrap().map(Result::unwrap).fold(0, |n, _| n + 1));
}

/// Writes three segments, leaves the first cached and the second not, replays with `replay`
/// and checks what the page cache holds afterwards: the first whole, at most `may_stay` bytes
/// of the second.
fn check_replay(may_stay: u64, replay: impl Fn(&SegmentedWal) -> usize) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut config = SegmentedWalConfig::new(tmp.path());
    config.segment_bytes_target = SEGMENT;
    config.allow_buffered_fallback = true;
    let wal = SegmentedWal::open(config).unwrap();
    let payload = vec![0x5A; 4096];
    while wal.segments().len() < 3 {
        let lsn = wal.append(Record::new(RecordType::optional(0x100), &payload)).unwrap();
        if lsn.0.is_multiple_of(256) {
            wal.wait_durable(lsn).unwrap();
        }
    }
    wal.sync().unwrap();
    let paths: Vec<_> = wal.segments().iter().map(|s| nodedb_wal::segment::path(tmp.path(), s.id)).collect();
    for path in &paths {
        drop_from_cache(path);
    }
    let (warm, cold) = (&paths[0], &paths[1]);
    let Some(0) = cached_bytes(cold) else {
        eprintln!("skipped: no fincore here, or this file system keeps pages it was told to drop");
        return;
    };
    std::fs::read(warm).unwrap();
    let warm_len = std::fs::metadata(warm).unwrap().len();
    let warmed = cached_bytes(warm).unwrap();
    if warmed < warm_len * 9 / 10 {
        eprintln!("skipped: a plain read left only {warmed} of {warm_len} bytes cached here");
        return;
    }

    let read = replay(&wal);
    assert!(read > 2 * (SEGMENT as usize / 4096) * 9 / 10, "the replay read every sealed segment: {read} records");

    // The reader drops none of it. (The margin is for the kernel, which may reclaim a few
    // pages meanwhile: dropping behind would leave only the last steps, a third of it.)
    let kept = cached_bytes(warm).unwrap();
    assert!(kept >= warm_len * 9 / 10, "pages cached before the replay stay cached: {kept} of {warm_len} bytes");
    // Dropped a release step (4 MiB) behind the reads, and the rest at the segment's end.
    let left = cached_bytes(cold).unwrap();
    assert!(left <= may_stay, "the replay dropped what it read from the disk: {left} of {SEGMENT} bytes still cached");
}

#[test]
fn a_mapped_replay_also_keeps_what_was_cached_and_drops_what_it_read() {
    // The map's last steps go when its checking helper lets go of it, which may be a moment after
    // the replay returns.
    check_replay(SEGMENT * 3 / 4, |wal| wal.read_mapped(Lsn::FIRST).unwrap().map(Result::unwrap).fold(0, |n, _| n + 1));
}

// Found by the page-cache benchmark: with header indexes written through the page cache, a log
// of 4 KiB records written with O_DIRECT grew cached memory by ~1.3% of the bytes logged.
#[test]
fn header_indexes_of_an_o_direct_log_stay_out_of_the_page_cache_and_read_back_whole() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut config = SegmentedWalConfig::new(tmp.path());
    config.segment_bytes_target = 1 << 20;
    config.allow_buffered_fallback = true;
    let wal = SegmentedWal::open(config).unwrap();
    if !wal.direct_io() {
        eprintln!("skipped: this file system refuses O_DIRECT");
        return;
    }
    let payload = vec![0x3C; 4096];
    while wal.segments().len() < 5 {
        wal.append_durable(Record::new(RecordType::optional(0x100), &payload)).unwrap();
    }
    wal.close().unwrap();
    let mut indexes = 0;
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(nodedb_wal::segment::parse_index) else { continue };
        let Some(cached) = cached_bytes(&path) else {
            eprintln!("skipped: no fincore here");
            return;
        };
        assert_eq!(cached, 0, "{} is in the page cache", path.display());
        let bytes = std::fs::read(&path).unwrap();
        let index = nodedb_wal::format::header_index::HeaderIndex::decode(&bytes).expect("a whole index, not padded");
        assert_eq!(index.segment, id);
        indexes += 1;
    }
    assert!(indexes >= 3, "every sealed segment of 4 KiB records has an index: {indexes}");
}
