//! A log on buffered I/O (`direct_io: false`) whose fdatasync meets a real writeback error from
//! the kernel, on ext4, while the file system goes on working. Linux then marks the pages it
//! could not write clean and keeps them in the page cache: read back they hold the failed batch,
//! and an fdatasync through a new descriptor succeeds without writing them. A log dropped after
//! that and opened again in the same boot must report only what the disk holds, so that every
//! record it reports durable was covered by a successful fdatasync: after a remount (what a
//! power cut leaves) each of them is there, and the LSNs handed out after the reopen follow them
//! without a hole.
//!
//! The disk: ext4 in an image file on a small tmpfs, on a loop device. The image is fully
//! allocated, so the journal and metadata writes land. To fail writes, the blocks of a segment
//! past its durable records, and the file system's free blocks (`fstrim`), are punched out of
//! the image and the tmpfs is filled: a write there needs a page the tmpfs cannot give, and the
//! loop device fails it (`ENOSPC` up to the file system, then to fdatasync). Freeing the filler
//! heals the disk; the punched blocks read as zeros, as a write that never landed leaves them.
//! (No device-mapper `error`/`flakey` target is needed, which some kernels lack.)
//!
//! Needs root, a loop device, mkfs.ext4, fstrim and filefrag; elsewhere it prints `SKIPPED:`
//! and why.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Tmpfs, append_synced, assert_records, config, payload, read_all, record_type, scope, seg};
use nodedb_wal::{Lsn, ReadOnlyWal, Record, SegmentedWal, SegmentedWalConfig, WalError};

const FS_BLOCK: u64 = 4096;
const IMAGE_BYTES: u64 = 64 << 20;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(format!("{program} {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// ext4 on a loop device over a fully allocated image on a tmpfs that writes can be made to
/// fail on (see the module's comment). Dropping it unmounts and detaches everything.
struct FailingDisk {
    device: String,
    mounted: bool,
    mount: tempfile::TempDir,
    filler: PathBuf,
    // Dropped last: the image lives on it.
    tmpfs: Tmpfs,
}

impl FailingDisk {
    fn create() -> Result<FailingDisk, String> {
        for tool in ["mkfs.ext4", "fstrim", "filefrag", "losetup", "fallocate"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(format!("{tool} is not installed"));
            }
        }
        let tmpfs = Tmpfs::mount("80m")?;
        let image = tmpfs.path().join("fs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(IMAGE_BYTES)).map_err(|e| format!("image: {e}"))?;
        run("mkfs.ext4", &["-q", "-F", "-b", "4096", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", path_str(&image)])?;
        // mkfs leaves ranges it zeroes as holes; allocate them, so that only what `fail_writes`
        // punches out needs new pages.
        run("fallocate", &["-l", &IMAGE_BYTES.to_string(), path_str(&image)])?;
        let device = run("losetup", &["-f", "--show", path_str(&image)])?.trim().to_owned();
        let mount = tempfile::tempdir().map_err(|e| e.to_string())?;
        let filler = tmpfs.path().join("filler");
        let mut disk = FailingDisk { device, mounted: false, mount, filler, tmpfs };
        disk.mount()?;
        Ok(disk)
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    fn image(&self) -> PathBuf {
        self.tmpfs.path().join("fs.img")
    }

    fn mount(&mut self) -> Result<(), String> {
        run("mount", &["-t", "ext4", &self.device, path_str(self.mount.path())])?;
        self.mounted = true;
        Ok(())
    }

    /// Unmounts and mounts again: the page cache is gone, and what the file system reads is
    /// what a reboot would find.
    fn remount(&mut self) {
        // Busy for a moment after the log closes: io_uring lets go of its files a little later.
        let start = std::time::Instant::now();
        while let Err(e) = run("umount", &[path_str(self.mount.path())]) {
            assert!(e.contains("busy") && start.elapsed() < std::time::Duration::from_secs(30), "{e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.mounted = false;
        self.mount().unwrap();
    }

    /// From now on every write to `file` at or past `from`, and to any block the file system
    /// allocates, fails in writeback. What `file` holds before `from` is left as it is.
    fn fail_writes(&self, file: &Path, from: u64) {
        run("fstrim", &[path_str(self.path())]).unwrap();
        for (logical, physical, blocks) in extents(file) {
            let skip = (from / FS_BLOCK).saturating_sub(logical).min(blocks);
            if skip == blocks {
                continue;
            }
            let offset = ((physical + skip) * FS_BLOCK).to_string();
            let len = ((blocks - skip) * FS_BLOCK).to_string();
            run("fallocate", &["-p", "-o", &offset, "-l", &len, path_str(&self.image())]).unwrap();
        }
        fill(&self.filler);
    }

    /// Writes reach the disk again.
    fn heal(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.filler);
        if self.mounted && run("umount", &[path_str(self.mount.path())]).is_err() {
            let _ = run("umount", &["-l", path_str(self.mount.path())]);
        }
        if let Err(e) = run("losetup", &["-d", &self.device]) {
            eprintln!("detaching {} failed: {e}", self.device);
        }
    }
}

/// The extents of `file` on its file system, as (first logical block, first physical block,
/// blocks), from `filefrag`.
fn extents(file: &Path) -> Vec<(u64, u64, u64)> {
    let out = run("filefrag", &["-v", "-b4096", path_str(file)]).unwrap();
    let mut found = Vec::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let start = |range: &str| range.split("..").next().unwrap().trim().parse::<u64>().unwrap();
        found.push((start(fields[1]), start(fields[2]), fields[3].parse::<u64>().unwrap()));
    }
    assert!(!found.is_empty(), "no extents for {}:\n{out}", file.display());
    found
}

/// Fills the file system of `path` to the last byte.
fn fill(path: &Path) {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path).unwrap();
    for chunk in [1 << 20, FS_BLOCK as usize] {
        let zeros = vec![0u8; chunk];
        while file.write_all(&zeros).is_ok() {}
    }
}

/// Where the next batch of the segment at `path` goes at the earliest: the block after its
/// last byte that is not zero (its records, then zeros written ahead).
fn written_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).expect("a segment has a header");
    (last as u64 + 1).div_ceil(FS_BLOCK) * FS_BLOCK
}

fn buffered(dir: &Path) -> SegmentedWalConfig {
    SegmentedWalConfig { direct_io: false, segment_bytes_target: 4 << 20, ..config(dir) }
}

fn record(lsn: u64, bytes: &[u8]) -> Record<'_> {
    Record::new(record_type(lsn), bytes).scoped(scope(lsn))
}

fn newest_segment(dir: &Path) -> PathBuf {
    let wal = std::fs::read_dir(dir).unwrap().filter_map(|e| nodedb_wal::segment::parse_name(e.unwrap().file_name().to_str()?));
    seg(dir, wal.max().unwrap().0)
}

/// Opens `disk`'s log, or says why the test cannot run.
fn disk() -> Option<FailingDisk> {
    match FailingDisk::create() {
        Ok(disk) => Some(disk),
        Err(e) => {
            eprintln!("SKIPPED: cannot make an ext4 file system on a loop device over a tmpfs ({e})");
            None
        }
    }
}

/// A log with records 1..=`last` durable, then a batch whose fdatasync fails in writeback:
/// returns the error it got.
fn poison_after(disk: &FailingDisk, config: &SegmentedWalConfig, last: u64) -> WalError {
    let wal = SegmentedWal::open(config.clone()).unwrap();
    assert!(!wal.direct_io());
    append_synced(&wal, 1, last);
    let segment = newest_segment(&config.dir);
    disk.fail_writes(&segment, written_end(&segment));
    let bytes = payload(last + 1);
    let err = wal.append_durable(record(last + 1, &bytes)).unwrap_err();
    assert!(matches!(err, WalError::Poisoned { .. }), "{err:?}");
    // The kernel kept the failed batch, clean, where a buffered read finds it.
    let cached = std::fs::read(&segment).unwrap();
    assert!(cached.windows(bytes.len()).any(|w| w == bytes), "the failed batch is in the page cache");
    drop(wal);
    err
}

/// Reopens after the failure, appends `more` records, checks them, remounts and checks that
/// everything the reopened log reported is on disk.
fn reopen_append_and_check_after_remount(disk: &mut FailingDisk, config: &SegmentedWalConfig, last: u64, more: u64) {
    let wal = SegmentedWal::open(config.clone()).unwrap();
    let recovered = read_all(&wal);
    assert_records(&recovered, 1, last);
    assert_eq!(wal.next_lsn(), Lsn(last + 1), "the failed batch's LSN is handed out again");
    append_synced(&wal, last + 1, last + more);
    wal.close().unwrap();
    disk.remount();
    let wal = SegmentedWal::open(config.clone()).unwrap();
    assert_records(&read_all(&wal), 1, last + more);
    wal.close().unwrap();
}

#[test]
fn a_buffered_log_reopened_after_a_real_failed_fdatasync_reports_only_what_the_disk_holds() {
    let Some(mut disk) = disk() else { return };
    let config = buffered(&disk.path().join("wal"));
    poison_after(&disk, &config, 100);
    disk.heal();
    reopen_append_and_check_after_remount(&mut disk, &config, 100, 20);
}

#[test]
fn an_open_whose_seal_fails_in_writeback_is_refused_and_the_next_open_reads_the_disk() {
    let Some(mut disk) = disk() else { return };
    let config = buffered(&disk.path().join("wal"));
    poison_after(&disk, &config, 100);
    // Still failing: the open cuts the failed batch and seals the segment after record 100;
    // that seal's fdatasync fails, and its block stays in the page cache, clean.
    let err = SegmentedWal::open(config.clone()).map(|_| ()).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err:?}");
    disk.heal();
    reopen_append_and_check_after_remount(&mut disk, &config, 100, 20);
}

#[test]
fn a_look_mapping_a_segment_that_a_failed_batch_sealed_in_the_page_cache_neither_misleads_the_reopen_nor_is_cut_under() {
    let Some(mut disk) = disk() else { return };
    // 32 KiB segments and batches of up to 64 KiB: the failed batch fills the segment and seals
    // it with an end frame.
    let config = SegmentedWalConfig { direct_io: false, batch_bytes_max: 64 << 10, ..config(&disk.path().join("wal")) };
    let wal = SegmentedWal::open(config.clone()).unwrap();
    append_synced(&wal, 1, 20);
    let segment = newest_segment(&config.dir);
    disk.fail_writes(&segment, written_end(&segment));
    // Appended one by one, nobody waiting: the batch goes out once full, at the segment's end.
    // (The flusher may meet the failure before the last of these is appended.)
    let bytes: Vec<Vec<u8>> = (21..=200).map(payload).collect();
    let appended = (21..=200).zip(&bytes).take_while(|(lsn, b)| wal.append(record(*lsn, b)).is_ok()).count();
    assert!(appended > 0);
    assert!(matches!(wal.sync().unwrap_err(), WalError::Poisoned { .. }));
    drop(wal);
    disk.heal();
    // Another reader of the same boot (a backup, a replica's tailer) sees the failed batch,
    // sealed, in the page cache, and maps the segment while it reads it.
    let look = ReadOnlyWal::open(&config.dir, None).unwrap();
    let sealed_in_cache = look.recovery_info().segments[0];
    assert!(sealed_in_cache.sealed && sealed_in_cache.end_lsn > Lsn(21), "{sealed_in_cache:?}");
    let mut reader = look.read_mapped(Lsn(1)).unwrap();
    let seen = reader.by_ref().take(sealed_in_cache.end_lsn.0 as usize - 5).count();
    assert!(seen > 20, "the look read into the failed batch");

    let wal = SegmentedWal::open(config.clone()).unwrap();
    assert_records(&read_all(&wal), 1, 20);
    append_synced(&wal, 21, 30);
    wal.close().unwrap();
    // The reopen sealed the segment after record 20 under the look's map; the look reads on
    // (what it reads past record 20 was never durable) without its process being stopped by
    // a `SIGBUS`: the file was not cut shorter under the map.
    let read_on = reader.by_ref().count() as u64;
    assert!(read_on <= sealed_in_cache.end_lsn.0 - 1 - seen as u64, "{read_on} more");
    drop(reader);
    drop(look);
    disk.remount();
    let wal = SegmentedWal::open(config).unwrap();
    assert_records(&read_all(&wal), 1, 30);
}
