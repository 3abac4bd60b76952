//! On a disk whose logical sectors are 4096 bytes (a 4Kn drive; here a loop device made with
//! `losetup --sector-size 4096`), O_DIRECT I/O in finer units fails with `EINVAL`, though the
//! file opens with O_DIRECT all the same. A log, a `WalWriter` or a double-write buffer
//! configured with finer blocks (512, 1024, 2048) used to open and then fail at its first
//! write: the log poisoned itself (`Poisoned { op: Write }`, even with buffered fallback
//! allowed), recovery of an existing log failed with a bare `Io { op: Read }`, the writer left
//! an empty segment file behind, and the buffer came up degraded, refusing every page. Where
//! the kernel reports the alignment (`statx` with `STATX_DIOALIGN`, Linux 6.1 on), each is now
//! refused at open with `DirectIoAlignment`, naming both numbers, before anything is written;
//! the log falls back to buffered I/O instead where its config allows that. A log written in
//! 512-byte blocks still opens and reads at the disk's alignment: readers read in windows of
//! the configured alignment, whatever the segment's blocks are.
//!
//! Each test makes ext4 and XFS on such a device. Needs root, loop devices, mkfs.ext4 and
//! mkfs.xfs, and a kernel that reports the alignment; where any is missing a test prints
//! `SKIPPED:` and why.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::{FsKind, LoopFs, assert_records, config, payload, read_all, record_type, scope};
use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
use nodedb_wal::{
    DoubleWriteBuffer, DwbConfig, DwbMode, FileId, FsStorage, Lsn, PageCheck, ReadOnlyWal, Record, SegmentId, SegmentedWal, WalError,
    WalWriter, WalWriterConfig,
};

/// The logical sector of the test disk.
const SECTOR: usize = 4096;
/// The block lengths finer than it that a config allows.
const FINER: [usize; 3] = [512, 1024, 2048];

/// One loop device at a time: each test makes its own, and `losetup -f` is not atomic.
static LOOP: Mutex<()> = Mutex::new(());

/// Runs `body` on a fresh file system of `kind` on a 4096-byte-sector disk, or prints why not.
fn on_4kn_disk(kind: FsKind, body: impl FnOnce(&Path)) {
    let _one = LOOP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fs = match LoopFs::create_with_sectors(kind, SECTOR as u32) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED: cannot make and mount an {} file system on a 4096-byte-sector loop device ({e})", kind.name());
            return;
        }
    };
    let probe = fs.path().join("probe");
    let file =
        FsStorage::new().open(&probe, OpenMode { create: true, write: false, direct: true, create_new: false }).expect("O_DIRECT open");
    match file.direct_io_alignment().and_then(|a| a.required()) {
        Some(required) => assert_eq!(required, SECTOR, "the kernel's O_DIRECT alignment on a 4Kn {} disk", kind.name()),
        None => {
            eprintln!("SKIPPED: the kernel does not report O_DIRECT alignment on {} (statx STATX_DIOALIGN needs Linux 6.1)", kind.name());
            return;
        }
    }
    drop(file);
    std::fs::remove_file(&probe).unwrap();
    body(&fs.path());
}

/// Names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn assert_alignment_refused(err: &WalError, configured: usize) {
    match err {
        WalError::DirectIoAlignment { configured: c, required, .. } => assert_eq!((*c, *required), (configured, SECTOR), "{err}"),
        other => panic!("blocks of {configured}: expected DirectIoAlignment, got {other:?} ({other})"),
    }
    let text = err.to_string();
    assert!(text.contains(&configured.to_string()) && text.contains(&SECTOR.to_string()), "the message names both numbers: {text}");
}

fn a_log_with_finer_blocks_is_refused_at_open_before_anything_is_written(root: &Path) {
    for block in FINER {
        let dir = root.join(format!("log-{block}"));
        let mut c = config(&dir);
        (c.alignment, c.allow_buffered_fallback) = (block, false);
        let err = SegmentedWal::open(c).expect_err("blocks finer than the disk's sectors");
        assert_alignment_refused(&err, block);
        assert_eq!(names(&dir), ["LOCK"], "no segment, manifest or anything else written");
    }
}

#[test]
fn a_log_with_finer_blocks_is_refused_at_open_before_anything_is_written_ext4() {
    on_4kn_disk(FsKind::Ext4, a_log_with_finer_blocks_is_refused_at_open_before_anything_is_written);
}

#[test]
fn a_log_with_finer_blocks_is_refused_at_open_before_anything_is_written_xfs() {
    on_4kn_disk(FsKind::Xfs, a_log_with_finer_blocks_is_refused_at_open_before_anything_is_written);
}

fn a_log_with_finer_blocks_falls_back_to_buffered_io_where_its_config_allows(root: &Path) {
    for block in FINER {
        let dir = root.join(format!("log-{block}"));
        let mut c = config(&dir);
        c.alignment = block;
        assert!(c.allow_buffered_fallback);
        let wal = SegmentedWal::open(c.clone()).expect("opens through the page cache");
        assert!(!wal.direct_io(), "blocks of {block}: buffered, as the config allows");
        common::append_synced(&wal, 1, 40);
        wal.close().unwrap();
        let wal = SegmentedWal::open(c).unwrap();
        assert_records(&read_all(&wal), 1, 40);
    }
}

#[test]
fn a_log_with_finer_blocks_falls_back_to_buffered_io_where_its_config_allows_ext4() {
    on_4kn_disk(FsKind::Ext4, a_log_with_finer_blocks_falls_back_to_buffered_io_where_its_config_allows);
}

#[test]
fn a_log_with_finer_blocks_falls_back_to_buffered_io_where_its_config_allows_xfs() {
    on_4kn_disk(FsKind::Xfs, a_log_with_finer_blocks_falls_back_to_buffered_io_where_its_config_allows);
}

/// Writes LSNs `1..=last` in 512-byte blocks through the page cache, synced and not sealed: a
/// log written on a 512-byte-sector disk and copied here, or written buffered, as a crash left it.
fn write_unsealed_log_of_512_byte_blocks(dir: &Path, last: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let wc = WalWriterConfig { direct_io: false, alignment: 512, batch_bytes: 4096 };
    let mut writer = WalWriter::create_with(FsStorage::new(), dir, SegmentId(1), Lsn(1), wc).unwrap();
    for lsn in 1..=last {
        let bytes = payload(lsn);
        writer.append(Record::new(record_type(lsn), &bytes).scoped(scope(lsn))).unwrap();
    }
    writer.sync().unwrap();
}

fn a_log_of_finer_blocks_recovered_at_its_own_blocks_is_refused_not_an_io_error(root: &Path) {
    let dir = root.join("log");
    write_unsealed_log_of_512_byte_blocks(&dir, 30);
    let before = std::fs::read(common::seg(&dir, 1)).unwrap();
    let mut c = config(&dir);
    (c.alignment, c.allow_buffered_fallback) = (512, false);
    let err = SegmentedWal::open(c).expect_err("recovery would read 512-byte windows with O_DIRECT");
    assert_alignment_refused(&err, 512);
    assert_eq!(std::fs::read(common::seg(&dir, 1)).unwrap(), before, "the segment is untouched");
}

#[test]
fn a_log_of_finer_blocks_recovered_at_its_own_blocks_is_refused_not_an_io_error_ext4() {
    on_4kn_disk(FsKind::Ext4, a_log_of_finer_blocks_recovered_at_its_own_blocks_is_refused_not_an_io_error);
}

#[test]
fn a_log_of_finer_blocks_recovered_at_its_own_blocks_is_refused_not_an_io_error_xfs() {
    on_4kn_disk(FsKind::Xfs, a_log_of_finer_blocks_recovered_at_its_own_blocks_is_refused_not_an_io_error);
}

/// Guards behaviour that held before the alignment check and must go on holding: recovery and
/// every reader read in windows of the configured alignment, and the unsealed segment, whose
/// records end on a 512-byte boundary that O_DIRECT cannot write at, is sealed through the page
/// cache.
fn a_log_of_finer_blocks_opens_and_reads_at_the_disks_alignment(root: &Path) {
    let dir = root.join("log");
    write_unsealed_log_of_512_byte_blocks(&dir, 30);
    let ro = ReadOnlyWal::open(&dir, None).unwrap();
    assert_records(&ro.read_from(Lsn(1)).unwrap().collect::<Result<Vec<_>, _>>().unwrap(), 1, 30);
    drop(ro);
    let mut c = config(&dir);
    c.allow_buffered_fallback = false;
    let wal = SegmentedWal::open(c.clone()).expect("a 4096-byte alignment suits the disk");
    assert!(wal.direct_io());
    assert_records(&read_all(&wal), 1, 30);
    assert_records(&wal.read_mapped(Lsn(1)).unwrap().collect::<Result<Vec<_>, _>>().unwrap(), 1, 30);
    let mut lazy = wal.lazy_reader(Lsn(1)).unwrap();
    for lsn in 1..=30 {
        let handle = lazy.next_header().unwrap().expect("a header");
        assert_eq!(handle.lsn, Lsn(lsn));
        assert_eq!(lazy.payload().unwrap(), payload(lsn));
    }
    assert!(lazy.next_header().unwrap().is_none());
    common::append_synced(&wal, 31, 60);
    wal.close().unwrap();
    let wal = SegmentedWal::open(c).unwrap();
    assert_records(&read_all(&wal), 1, 60);
}

#[test]
fn a_log_of_finer_blocks_opens_and_reads_at_the_disks_alignment_ext4() {
    on_4kn_disk(FsKind::Ext4, a_log_of_finer_blocks_opens_and_reads_at_the_disks_alignment);
}

#[test]
fn a_log_of_finer_blocks_opens_and_reads_at_the_disks_alignment_xfs() {
    on_4kn_disk(FsKind::Xfs, a_log_of_finer_blocks_opens_and_reads_at_the_disks_alignment);
}

fn a_wal_writer_with_finer_blocks_is_refused_and_leaves_no_file(root: &Path) {
    for block in FINER {
        let dir = root.join(format!("writer-{block}"));
        std::fs::create_dir(&dir).unwrap();
        let wc = WalWriterConfig { direct_io: true, alignment: block, batch_bytes: 64 << 10 };
        let err = WalWriter::create_with(FsStorage::new(), &dir, SegmentId(1), Lsn(1), wc).expect_err("finer blocks");
        assert_alignment_refused(&err, block);
        // The directory's lock file stays, as after a log's open; no segment file does.
        assert_eq!(names(&dir), ["LOCK"], "blocks of {block}: no empty segment file left");
    }
}

#[test]
fn a_wal_writer_with_finer_blocks_is_refused_and_leaves_no_file_ext4() {
    on_4kn_disk(FsKind::Ext4, a_wal_writer_with_finer_blocks_is_refused_and_leaves_no_file);
}

#[test]
fn a_wal_writer_with_finer_blocks_is_refused_and_leaves_no_file_xfs() {
    on_4kn_disk(FsKind::Xfs, a_wal_writer_with_finer_blocks_is_refused_and_leaves_no_file);
}

fn dwb_config(path: &Path, mode: DwbMode, block_len: usize) -> DwbConfig {
    let mut c = DwbConfig::new(path);
    (c.mode, c.block_len, c.ring_bytes, c.batch_bytes_max) = (mode, block_len, 256 << 10, 64 << 10);
    c
}

/// A new buffer file and one that a buffered buffer of 512-byte blocks left, holding a batch.
fn a_direct_double_write_buffer_with_finer_blocks_is_refused_at_open(root: &Path) {
    let pages = root.join("pages");
    std::fs::write(&pages, vec![0u8; 8192]).unwrap();
    for block in FINER {
        let path = root.join(format!("dwb-{block}"));
        let err = DoubleWriteBuffer::open(dwb_config(&path, DwbMode::Direct, block)).expect_err("a new buffer of finer blocks");
        assert_alignment_refused(&err, block);
        assert!(!path.exists(), "blocks of {block}: no buffer file left");
    }
    let path = root.join("dwb");
    let buffered = DoubleWriteBuffer::open(dwb_config(&path, DwbMode::Buffered, 512)).unwrap();
    buffered.register_file(FileId(1), &pages, 1024).unwrap();
    buffered.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
    buffered.write_pages(&[(FileId(1), 0, &[7u8; 1024])]).unwrap();
    drop(buffered);
    let before = std::fs::read(&path).unwrap();
    let err = DoubleWriteBuffer::open(dwb_config(&path, DwbMode::Direct, 512)).expect_err("an existing buffer of finer blocks");
    assert_alignment_refused(&err, 512);
    assert_eq!(std::fs::read(&path).unwrap(), before, "the buffer file is untouched");
    let again = DoubleWriteBuffer::open(dwb_config(&path, DwbMode::Buffered, 512)).expect("buffered, it opens as before");
    again.register_file(FileId(1), &pages, 1024).unwrap();
    again.recover(|_, _| PageCheck::Intact { version: 0 }).unwrap();
}

#[test]
fn a_direct_double_write_buffer_with_finer_blocks_is_refused_at_open_ext4() {
    on_4kn_disk(FsKind::Ext4, a_direct_double_write_buffer_with_finer_blocks_is_refused_at_open);
}

#[test]
fn a_direct_double_write_buffer_with_finer_blocks_is_refused_at_open_xfs() {
    on_4kn_disk(FsKind::Xfs, a_direct_double_write_buffer_with_finer_blocks_is_refused_at_open);
}
