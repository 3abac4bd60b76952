//! Helpers shared by the integration tests: a small configuration, deterministic records, a
//! byte-level view of segment files (what a damaged disk would change), byte-level access to
//! files on either storage, a storage wrapper that holds the flusher between a batch's write and
//! its sync, and a tmpfs mount that unmounts itself.

#![allow(dead_code, reason = "each test binary uses a different subset of these helpers")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nodedb_wal::format::crc::crc32c;
use nodedb_wal::format::frame::{RecordHeader, decode_frame};
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
use nodedb_wal::{
    DoubleWriteBuffer, DwbConfig, FileId, FsStorage, IoOp, Lsn, PageCheck, Record, RecordType, Scope, SegmentId, SegmentedWal,
    SegmentedWalConfig, SimStorage, WalRecord,
};

/// Block size of every test log.
pub const BLOCK: u64 = 4096;

/// A configuration with small segments, so that a few dozen records span several of them.
pub fn config(dir: &Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.alignment = BLOCK as usize;
    c.allow_buffered_fallback = true;
    c
}

/// The record type of LSN `lsn`: a few optional and required application types.
pub fn record_type(lsn: u64) -> RecordType {
    match lsn % 3 {
        0 => RecordType::optional(0x100),
        1 => RecordType::optional(0x2A7),
        _ => RecordType::required(0x150),
    }
}

/// The scope of LSN `lsn`.
pub fn scope(lsn: u64) -> Scope {
    Scope { database: 1 + (lsn % 2) as u32, tenant: 7, vshard: (lsn % 5) as u32 }
}

/// The payload of LSN `lsn`: 20 to 319 bytes that differ from every other LSN's.
pub fn payload(lsn: u64) -> Vec<u8> {
    let len = 20 + (lsn * 37 % 300) as usize;
    let mut bytes: Vec<u8> = (0..len).map(|i| (lsn as u8).wrapping_mul(31) ^ (i as u8)).collect();
    bytes[..8].copy_from_slice(&lsn.to_le_bytes());
    bytes
}

/// Appends the record of LSN `expected` (the log must hand out exactly that LSN).
pub fn append<S: Storage>(wal: &SegmentedWal<S>, expected: u64) {
    let bytes = payload(expected);
    let record = Record::new(record_type(expected), &bytes).scoped(scope(expected));
    assert_eq!(wal.append(record).unwrap(), Lsn(expected), "LSNs are dense");
}

/// Appends LSNs `from..=to` and makes them durable.
pub fn append_synced<S: Storage>(wal: &SegmentedWal<S>, from: u64, to: u64) {
    for lsn in from..=to {
        append(wal, lsn);
    }
    assert_eq!(wal.sync().unwrap(), Lsn(to));
}

/// Writes a log of `groups` batches, each `group` records long and synced, then closes it.
/// Returns the last LSN.
pub fn write_log<S: Storage + Clone>(storage: &S, dir: &Path, groups: &[u64]) -> u64 {
    let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
    let mut next = wal.next_lsn().0;
    for &n in groups {
        append_synced(&wal, next, next + n - 1);
        next += n;
    }
    wal.close().unwrap();
    next - 1
}

/// Every durable record of the log, in order.
pub fn read_all<S: Storage>(wal: &SegmentedWal<S>) -> Vec<WalRecord> {
    let first = wal.recovery_info().first_lsn;
    wal.read_from(first).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Asserts that `records` are exactly the generated records `from..=to`.
pub fn assert_records(records: &[WalRecord], from: u64, to: u64) {
    let lsns: Vec<u64> = records.iter().map(|r| r.lsn.0).collect();
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(lsns, expected, "recovered LSNs");
    for r in records {
        let lsn = r.lsn.0;
        assert_eq!(r.payload, payload(lsn), "payload of LSN {lsn}");
        assert_eq!(r.record_type, record_type(lsn), "type of LSN {lsn}");
        assert_eq!(r.scope, scope(lsn), "scope of LSN {lsn}");
        assert_eq!(r.flags, 0, "flags of LSN {lsn}");
    }
}

/// The path of segment `id` in `dir`.
pub fn seg(dir: &Path, id: u64) -> PathBuf {
    nodedb_wal::segment::path(dir, SegmentId(id))
}

/// One checksummed frame found in a segment file.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Its offset in the file.
    pub offset: u64,
    /// Its header.
    pub header: RecordHeader,
}

impl Frame {
    /// Bytes of header and payload.
    pub fn frame_len(&self) -> u64 {
        self.header.frame_len() as u64
    }

    /// Whether it is a data record (not padding, a segment header or an end frame).
    pub fn is_record(&self) -> bool {
        !self.header.record_type.is_meta()
    }
}

/// The frames of a segment file, in order from the header frame, up to the first position that
/// does not hold a valid frame.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut found = Vec::new();
    let mut at = PREAMBLE_SIZE;
    while at < bytes.len() {
        let Ok(header) = decode_frame(&bytes[at..]) else { break };
        found.push(Frame { offset: at as u64, header });
        at += header.frame_len();
    }
    found
}

/// The frame of data record `lsn` in a segment file.
pub fn record_frame(bytes: &[u8], lsn: u64) -> Frame {
    frames(bytes).into_iter().find(|f| f.is_record() && f.header.lsn == Lsn(lsn)).unwrap_or_else(|| panic!("no frame for LSN {lsn}"))
}

/// The segment (id) whose file holds the frame of record `lsn`, and the frame.
pub fn locate<D: Disk>(disk: &D, dir: &Path, lsn: u64) -> (u64, Frame) {
    for id in segment_ids(disk, dir) {
        let bytes = disk.read(&seg(dir, id));
        if let Some(f) = frames(&bytes).into_iter().find(|f| f.is_record() && f.header.lsn == Lsn(lsn)) {
            return (id, f);
        }
    }
    panic!("LSN {lsn} is in no segment of {}", dir.display())
}

/// Ids of the segment files in `dir`, ascending.
pub fn segment_ids<D: Disk>(disk: &D, dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = disk.names(dir).iter().filter_map(|n| nodedb_wal::segment::parse_name(n)).map(|id| id.0).collect();
    ids.sort_unstable();
    ids
}

/// Takes away the block a clean close sealed the newest segment with (and all after it): the
/// segment as a power cut right after its last batch's fdatasync leaves it, for tests of a
/// torn last batch. (A closed log's last batch is vouched for by that seal: damage in it is
/// corruption, not a torn tail.)
pub fn unseal<D: Disk>(disk: &D, dir: &Path) {
    let newest = *segment_ids(disk, dir).last().expect("a segment");
    let path = seg(dir, newest);
    let bytes = disk.read(&path);
    let end = frames(&bytes).into_iter().find(|f| f.header.record_type == RecordType::SEGMENT_END);
    let end = end.expect("a closed log's newest segment is sealed");
    disk.edit(&path, |b| b.truncate(end.offset as usize));
}

/// Byte-level access to files, the way media damage or an operator would change them.
/// Every change is durable at once.
pub trait Disk: Storage + Clone {
    /// A file's bytes.
    fn read(&self, path: &Path) -> Vec<u8>;
    /// Creates or replaces a file.
    fn write(&self, path: &Path, bytes: &[u8]);
    /// Removes a file.
    fn delete(&self, path: &Path);
    /// Names of the files in a directory.
    fn names(&self, dir: &Path) -> Vec<String>;

    /// Renames a file (replacing any file at `to`).
    fn move_file(&self, from: &Path, to: &Path) {
        let bytes = self.read(from);
        self.delete(from);
        self.write(to, &bytes);
    }

    /// Changes a file's bytes in place.
    fn edit(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.read(path);
        change(&mut bytes);
        self.write(path, &bytes);
    }
}

impl Disk for FsStorage {
    fn read(&self, path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn write(&self, path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn delete(&self, path: &Path) {
        std::fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        Storage::list(self, dir).unwrap()
    }

    fn move_file(&self, from: &Path, to: &Path) {
        std::fs::rename(from, to).unwrap();
    }
}

impl Disk for SimStorage {
    fn read(&self, path: &Path) -> Vec<u8> {
        self.read_file(path).unwrap_or_else(|| panic!("no file {}", path.display()))
    }

    fn write(&self, path: &Path, bytes: &[u8]) {
        drop(Storage::open(self, path, OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap());
        self.write_file(path, bytes);
        self.sync_dir(path.parent().unwrap()).unwrap();
    }

    fn delete(&self, path: &Path) {
        Storage::remove(self, path).unwrap();
        self.sync_dir(path.parent().unwrap()).unwrap();
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        Storage::list(self, dir).unwrap()
    }
}

/// Copies every file of `from` into `to` (created), on the same storage.
pub fn copy_dir<D: Disk>(disk: &D, from: &Path, to: &Path) {
    disk.create_dir_all(to).unwrap();
    for name in disk.names(from) {
        disk.write(&to.join(&name), &disk.read(&from.join(&name)));
    }
}

/// A place for a log on either storage: a fresh temporary directory on the real file system,
/// a path on a fresh simulated disk.
pub trait Place: Disk {
    /// A new, empty storage and a directory on it (the guard keeps a real directory alive).
    fn fresh() -> (Self, PathBuf, Option<tempfile::TempDir>);
}

impl Place for FsStorage {
    fn fresh() -> (FsStorage, PathBuf, Option<tempfile::TempDir>) {
        let tmp = tempfile::tempdir().unwrap();
        (FsStorage::new(), tmp.path().join("wal"), Some(tmp))
    }
}

impl Place for SimStorage {
    fn fresh() -> (SimStorage, PathBuf, Option<tempfile::TempDir>) {
        (SimStorage::new(7, nodedb_wal::storage::FaultConfig::default()), PathBuf::from("/sim/wal"), None)
    }
}

/// A gate the flusher passes between writing a batch and syncing it. While it is shut, the
/// batch's bytes are written but not durable, and its records not acknowledged.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    shut: bool,
    held: usize,
    /// Counts [`Gate::release_held`] calls: a batch held since before the last one goes on.
    releases: u64,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds every later batch after its write, before its sync.
    pub fn shut(&self) {
        self.lock().shut = true;
    }

    /// Lets held and later batches through.
    pub fn open(&self) {
        self.lock().shut = false;
        self.changed.notify_all();
    }

    /// Lets the batches held now go on to their syncs and keeps the gate shut for later ones.
    pub fn release_held(&self) {
        self.lock().releases += 1;
        self.changed.notify_all();
    }

    /// Waits until a batch is held at the gate.
    pub fn wait_held(&self) {
        let mut s = self.lock();
        while s.held == 0 {
            s = self.changed.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Holds the calling thread here while the gate is shut (counted as held).
    pub fn pass(&self) {
        let mut s = self.lock();
        let arrived = s.releases;
        s.held += 1;
        self.changed.notify_all();
        while s.shut && s.releases == arrived {
            s = self.changed.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.held -= 1;
    }
}

/// A storage whose batch writes (`write_and_sync`) stop at a [`Gate`] between write and sync.
#[derive(Clone, Debug)]
pub struct Gated<S> {
    /// The storage underneath.
    pub inner: S,
    /// The gate.
    pub gate: Arc<Gate>,
}

impl<S> Gated<S> {
    /// Wraps a storage, with the gate open.
    pub fn new(inner: S) -> Gated<S> {
        Gated { inner, gate: Arc::default() }
    }
}

/// A file of [`Gated`].
#[derive(Debug)]
pub struct GatedFile<F> {
    inner: F,
    gate: Arc<Gate>,
}

/// Runs a generic test body on real files (`_fs`) and on the simulated storage (`_sim`), with
/// the arguments given after it; the test file imports `FsStorage` and `SimStorage`.
#[macro_export]
macro_rules! both {
    ($fs:ident, $sim:ident, $body:ident $(, $arg:expr)*) => {
        #[test]
        fn $fs() {
            $body::<FsStorage>($($arg),*);
        }

        #[test]
        fn $sim() {
            $body::<SimStorage>($($arg),*);
        }
    };
}

/// The directory operations of a storage that wraps another in `self.inner` and changes only
/// its files or its listing: they go straight through.
#[macro_export]
macro_rules! pass_through_dir_ops {
    () => {
        fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
            self.inner.create_dir_all(dir)
        }

        fn lock_dir(&self, dir: &std::path::Path) -> std::io::Result<Self::Lock> {
            self.inner.lock_dir(dir)
        }

        fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
            self.inner.remove(path)
        }

        fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            self.inner.rename(from, to)
        }

        fn rename_no_replace(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            self.inner.rename_no_replace(from, to)
        }

        fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
            self.inner.sync_dir(dir)
        }
    };
}

/// The `StorageFile` methods that neither read nor write a wrapped file's bytes (advice, holds,
/// links, sync failures), passed to `self.inner`: shared by the two pass-through macros below.
#[macro_export]
macro_rules! pass_through_file_hints_and_holds {
    () => {
        fn advise(&self, advice: nodedb_wal::storage::Advice, offset: u64, len: u64) {
            self.inner.advise(advice, offset, len);
        }

        fn hold_shared(&self) -> std::io::Result<()> {
            self.inner.hold_shared()
        }

        fn try_hold_exclusive(&self) -> std::io::Result<bool> {
            self.inner.try_hold_exclusive()
        }

        fn release_hold(&self) {
            self.inner.release_hold();
        }

        fn sync_failed(&self) {
            self.inner.sync_failed();
        }

        fn has_other_links(&self) -> std::io::Result<bool> {
            self.inner.has_other_links()
        }
    };
}

/// The `StorageFile` methods of a file that wraps another in `self.inner` and changes how it
/// reads (`read_at`, its own): the rest go straight through, except the reads that would pass
/// by `read_at` (`read_cached_at`, `map_sealed`), left at the trait's defaults (no cache, no
/// map), so that every byte read comes through the wrapper.
#[macro_export]
macro_rules! pass_through_file_ops_but_reads {
    () => {
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.inner.write_at(buf, offset)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.inner.sync_data()
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }

        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }

        pass_through_file_hints_and_holds!();

        fn direct_io_alignment(&self) -> Option<nodedb_wal::storage::DioAlign> {
            self.inner.direct_io_alignment()
        }
    };
}

/// Every `StorageFile` method of a file that wraps another in `self.inner` and changes only
/// how it writes (`write_at`, `sync_data`, `write_and_sync`): the rest go straight through,
/// the trait's optional methods included, so that a wrapper of the real file system keeps its
/// page-cache reads, advice, holds, links, maps and O_DIRECT alignment (a method added to the
/// trait later is added here once, not forgotten in each wrapper).
#[macro_export]
macro_rules! pass_through_file_ops_but_writes {
    () => {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.inner.read_at(buf, offset)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }

        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }

        fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<Option<usize>> {
            self.inner.read_cached_at(buf, offset)
        }

        pass_through_file_hints_and_holds!();

        fn map_sealed(&self, len: u64, token: nodedb_wal::storage::CrateOnly) -> std::io::Result<Option<nodedb_wal::storage::Mapping>> {
            self.inner.map_sealed(len, token)
        }

        fn direct_io_alignment(&self) -> Option<nodedb_wal::storage::DioAlign> {
            self.inner.direct_io_alignment()
        }
    };
}

impl<S: Storage> Storage for Gated<S> {
    type File = GatedFile<S::File>;
    type Lock = S::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Self::File> {
        Ok(GatedFile { inner: self.inner.open(path, mode)?, gate: Arc::clone(&self.gate) })
    }
}

impl<F: StorageFile> StorageFile for GatedFile<F> {
    pass_through_file_ops_but_writes!();

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }

    fn write_and_sync(&self, buf: &[u8], offset: u64) -> Result<(), (IoOp, std::io::Error)> {
        self.inner.write_at(buf, offset).map_err(|e| (IoOp::Write, e))?;
        self.gate.pass();
        self.inner.sync_data().map_err(|e| (IoOp::SyncData, e))
    }
}

impl<S: Disk> Disk for Gated<S> {
    fn read(&self, path: &Path) -> Vec<u8> {
        self.inner.read(path)
    }

    fn write(&self, path: &Path, bytes: &[u8]) {
        self.inner.write(path, bytes);
    }

    fn delete(&self, path: &Path) {
        self.inner.delete(path);
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        self.inner.names(dir)
    }
}

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or explains why it cannot.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", path_str(dir.path())])?;
        Ok(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run("umount", &[path_str(self.path())]) {
            // Busy (a file still open): detach it so the directory can go.
            eprintln!("umount {} failed ({e}); detaching lazily", self.path().display());
            let _ = run("umount", &["-l", path_str(self.path())]);
        }
    }
}

/// A read-only bind mount of a directory, unmounted when dropped.
#[derive(Debug)]
pub struct ReadOnlyBind {
    dir: tempfile::TempDir,
}

impl ReadOnlyBind {
    /// Makes `source` visible read-only at a fresh directory, or explains why it cannot.
    pub fn of(source: &Path) -> Result<ReadOnlyBind, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run("mount", &["--bind", path_str(source), path_str(dir.path())])?;
        let bind = ReadOnlyBind { dir };
        run("mount", &["-o", "remount,bind,ro", path_str(bind.path())])?;
        Ok(bind)
    }

    /// Where the read-only view is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        if run("umount", &[path_str(self.path())]).is_err() {
            let _ = run("umount", &["-l", path_str(self.path())]);
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{program} {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
}

pub mod crash;
pub mod warnings;

/// A file system type that [`LoopFs`] can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext4 with 4 KiB blocks and its journal.
    Ext4,
    /// XFS.
    Xfs,
}

impl FsKind {
    /// The name `mount -t` takes.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }

    /// The mkfs program and its arguments before the device path.
    fn mkfs(self) -> (&'static str, &'static [&'static str]) {
        match self {
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F", "-b", "4096"]),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f"]),
        }
    }

    /// Size of the sparse image. mkfs.xfs refuses file systems under 300 MB (xfsprogs 5.19 on).
    fn image_bytes(self) -> u64 {
        match self {
            FsKind::Ext4 => 128 << 20,
            FsKind::Xfs => 320 << 20,
        }
    }
}

/// A fresh file system in a sparse image file (under the target directory, on a real disk),
/// attached to a loop device and mounted on a fresh directory. Dropping it, even while a test
/// panics, unmounts it, detaches the loop device and removes the image.
#[derive(Debug)]
pub struct LoopFs {
    kind: FsKind,
    device: String,
    mounted: bool,
    dir: tempfile::TempDir,
}

impl LoopFs {
    /// Makes, attaches and mounts a file system of `kind`, or explains why it cannot (not root,
    /// no mkfs, no loop device, mount refused).
    pub fn create(kind: FsKind) -> Result<LoopFs, String> {
        LoopFs::create_with_sectors(kind, 512)
    }

    /// Like [`LoopFs::create`] on a loop device whose logical sectors are `sector` bytes
    /// (`losetup --sector-size`): 4096 makes a disk like a 4Kn drive, which refuses O_DIRECT
    /// I/O in finer units. The file system is made on the device, so that mkfs sees its sectors.
    pub fn create_with_sectors(kind: FsKind, sector: u32) -> Result<LoopFs, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        let (mkfs, args) = kind.mkfs();
        if Command::new(mkfs).arg("-V").output().is_err() {
            return Err(format!("{mkfs} is not installed"));
        }
        let dir = tempfile::Builder::new()
            .prefix("nodedb-wal-loopfs-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("temporary directory: {e}"))?;
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(kind.image_bytes())).map_err(|e| format!("image file: {e}"))?;
        let sector = sector.to_string();
        let device = run_stdout("losetup", &["-f", "--show", "--sector-size", &sector, path_str(&image)])?;
        // From here on, dropping the guard detaches the device.
        let mut fs = LoopFs { kind, device, mounted: false, dir };
        let mut mkfs_args = args.to_vec();
        mkfs_args.push(&fs.device);
        run(mkfs, &mkfs_args)?;
        std::fs::create_dir(fs.path()).map_err(|e| format!("mount point: {e}"))?;
        fs.mount()?;
        Ok(fs)
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The file system type.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// Mounts the file system (running its journal or log recovery).
    pub fn mount(&mut self) -> Result<(), String> {
        assert!(!self.mounted, "{} is mounted already", self.device);
        run("mount", &["-t", self.kind.name(), &self.device, path_str(&self.path())])?;
        self.mounted = true;
        Ok(())
    }

    /// Unmounts the file system; every file on it must be closed. While it is busy, tries
    /// again for a while: the kernel may release the files of a killed process's io_uring a
    /// moment after the process has been reaped.
    pub fn unmount(&mut self) -> Result<(), String> {
        assert!(self.mounted, "{} is not mounted", self.device);
        let start = std::time::Instant::now();
        loop {
            match run("umount", &[path_str(&self.path())]) {
                Ok(()) => break,
                Err(e) if e.contains("busy") && start.elapsed() < std::time::Duration::from_secs(30) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
        self.mounted = false;
        Ok(())
    }

    /// Unmounts and mounts again: what the file system kept is what a reboot would find.
    pub fn remount(&mut self) -> Result<(), String> {
        self.unmount()?;
        self.mount()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            // Busy (a file still open): detach it so the device and the directory can go.
            eprintln!("umount {} failed; detaching lazily", self.path().display());
            let _ = run("umount", &["-l", path_str(&self.path())]);
        }
        if let Err(e) = run("losetup", &["-d", &self.device]) {
            eprintln!("detaching {} failed: {e}", self.device);
        }
    }
}

/// Whether the effective user is root (from `/proc/self/status`).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
}

fn run_stdout(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    Err(format!("{program} {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
}

/// A tiny executor: runs `future` on this thread, parking it until the waker unparks it.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Every file of `dir` with its length and checksum: what an open that fails, or a group that
/// is refused, must leave as it was.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (usize, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .map(|(name, bytes)| (name, (bytes.len(), crc32c(&bytes))))
        .collect()
}

/// The immutable flag on a file (`chattr +i`, root only), taken off again when dropped (else
/// the temporary directory could not be removed).
pub struct Immutable(PathBuf);

impl Immutable {
    /// Sets the flag, or says why it could not (not root, no `chattr`, a file system without it).
    pub fn set(path: &Path) -> Result<Immutable, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        let out = Command::new("chattr").arg("+i").arg(path).output().map_err(|e| format!("chattr: {e}"))?;
        if !out.status.success() {
            return Err(format!("chattr +i: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A 4096-byte double-write-buffer test page of version `v`: every byte is `v`.
pub fn uniform_page(v: u8) -> Vec<u8> {
    vec![v; 4096]
}

/// The page validator for [`uniform_page`]s: whole when every byte equals the first, which is
/// its version.
pub fn uniform_check(_: FileId, bytes: &[u8]) -> PageCheck {
    if bytes.iter().all(|&b| b == bytes[0]) { PageCheck::Intact { version: u64::from(bytes[0]) } } else { PageCheck::Torn }
}

/// A double-write buffer on real files with `config`, page file 1 (of [`uniform_page`]s)
/// registered at `pages`.
pub fn open_dwb(config: &DwbConfig, pages: &Path) -> DoubleWriteBuffer {
    let dwb = DoubleWriteBuffer::open(config.clone()).unwrap();
    dwb.register_file(FileId(1), pages, 4096).unwrap();
    dwb
}

/// A page file of eight pages in `tmp` and a buffer with `config` that holds page 2 at
/// version 5, torn in place as a crash in its in-place write leaves it. Returns the page
/// file's path and its torn bytes.
pub fn torn_page_in(tmp: &Path, config: &DwbConfig) -> (PathBuf, Vec<u8>) {
    const PAGE: usize = 4096;
    let pages = tmp.join("pages");
    std::fs::write(&pages, vec![0u8; PAGE * 8]).unwrap();
    let dwb = open_dwb(config, &pages);
    dwb.recover(uniform_check).unwrap();
    dwb.write_pages(&[(FileId(1), 2, &uniform_page(5)), (FileId(1), 3, &uniform_page(5))]).unwrap();
    drop(dwb);
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[2 * PAGE + PAGE / 2..3 * PAGE].fill(0xAB);
    std::fs::write(&pages, &bytes).unwrap();
    (pages, bytes)
}

/// The command prefix that runs a program as `nobody` (uid and gid 65534, no groups).
pub const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// Why a test cannot run a child as `nobody` ([`NOBODY`]), if it cannot: it needs root and
/// `setpriv` (util-linux).
pub fn can_change_user() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    Command::new("setpriv").arg("--version").output().map(|_| ()).map_err(|e| format!("setpriv: {e}"))
}

/// Runs the test `name` of this test binary alone, as `nobody`, with `var` set to `value`
/// (the child test does its work only where `var` is set).
pub fn child_test_as_nobody(name: &str, var: &str, value: &Path) -> std::process::Output {
    Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, value)
        .output()
        .unwrap()
}

/// A fresh simulated disk (seeded with `seed`) holding exactly these files in `dir`, durably:
/// a log's files as saved, altered or restored.
pub fn disk_with(seed: u64, dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> SimStorage {
    let sim = SimStorage::new(seed, nodedb_wal::storage::FaultConfig::default());
    sim.create_dir_all(dir).unwrap();
    for (path, bytes) in files {
        let f = sim.open(path, OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
        f.write_at(bytes, 0).unwrap();
        f.sync_data().unwrap();
    }
    sim.sync_dir(dir).unwrap();
    sim
}
