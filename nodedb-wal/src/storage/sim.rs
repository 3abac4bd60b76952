//! A deterministic simulated file system for crash and fault tests.
//!
//! Every file keeps a volatile image (what reads see) and a durable image (what survives a
//! crash). `sync_data` copies the dirty sectors of one into the other. [`SimStorage::crash`]
//! returns the disk a restart would find: the durable bytes plus a seeded random subset of the
//! unsynced 512-byte sectors (a multi-sector write lands torn, in any order); a file grown by
//! unsynced writes may keep its new length, with zeros or stale bytes where they did not land.
//! Of each directory it keeps the entries a `sync_dir` made durable or, as often, the entries
//! of some moment since: file systems write directories back on their own schedule, so a name
//! can outlive a crash before its file's data was synced. Faults come from a seeded PRNG.
//! What a failed fdatasync leaves is [`SyncFailure`]: by default the unsynced writes vanish;
//! [`SyncFailure::KeepsCleanPages`] does what Linux does instead.
//!
//! The disk itself (`Disk`, shared by clones of [`SimStorage`]) and the calls a test makes on
//! it live here; the fault settings and the PRNG in `faults`, a file's images and what a crash
//! keeps of them in `inode`, directories, names and locks in `namespace`, and an open file in
//! `file`.

mod faults;
mod file;
mod inode;
mod namespace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::faults::{FaultConfig, SimRng, SyncFailure};
use self::inode::{Inode, survivor};
use self::namespace::{Dir, dir_survives, lookup};

/// Sector size: the unit a crash keeps or loses as a whole.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::SECTOR;
/// # use std::path::Path;
/// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
/// # let sim = SimStorage::new(1, FaultConfig::default());
/// # sim.create_dir_all(Path::new("/d"))?;
/// # sim.sync_dir(Path::new("/"))?;
/// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// # sim.sync_dir(Path::new("/d"))?;
///
/// file.write_at(&[1u8; 4 * SECTOR], 0)?;
/// file.sync_data()?;
/// file.write_at(&[2u8; 4 * SECTOR], 0)?; // never synced
/// for seed in 0..8 {
///     let after = sim.crash(seed).read_file(Path::new("/d/f")).expect("synced entry");
///     // Each sector is wholly old or wholly new, never a mix.
///     assert!(after.chunks(SECTOR).all(|sector| sector.iter().all(|&b| b == sector[0])));
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub const SECTOR: usize = 512;

#[derive(Debug)]
struct Disk {
    rng: SimRng,
    faults: FaultConfig,
    dead: bool,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    locks: HashSet<PathBuf>,
    /// Segment holds by inode: for each handle that holds one, whether exclusively. Modelled
    /// on `flock`, whose locks belong to an open file and go with it, so that a simulated
    /// reader keeps the writer from reusing a file under it as a real one does.
    holds: HashMap<u64, HashMap<u64, bool>>,
    next_handle: u64,
    fail_next_sync: bool,
    sync_failure: SyncFailure,
    intermediate_writes: bool,
    syncs: u64,
    bytes_read: u64,
}

/// The simulated file system. Clones share one disk.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
///
/// let sim = SimStorage::new(7, FaultConfig::default());
/// let mode = OpenMode { create: true, write: true, direct: false, create_new: false };
/// sim.create_dir_all(Path::new("/d"))?;
/// sim.sync_dir(Path::new("/"))?;
/// let kept = sim.open(Path::new("/d/kept"), mode)?;
/// kept.write_at(b"durable", 0)?;
/// kept.sync_data()?;
/// sim.sync_dir(Path::new("/d"))?;
/// let maybe = sim.open(Path::new("/d/maybe"), mode)?;
/// maybe.sync_data()?; // its data is durable, but its directory entry is not
///
/// let restarted = sim.crash(1);
/// assert_eq!(restarted.read_file(Path::new("/d/kept")).as_deref(), Some(&b"durable"[..]));
/// // Whether the file system wrote the directory back before the crash depends on the seed.
/// let found = (0..32).filter(|&seed| sim.crash(seed).read_file(Path::new("/d/maybe")).is_some()).count();
/// assert!(found > 0 && found < 32, "kept after some crashes, gone after others: {found} of 32");
/// assert!(kept.write_at(b"x", 0).is_err(), "handles from before the crash are dead");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SimStorage {
    disk: Arc<Mutex<Disk>>,
    direct_align: usize,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl SimStorage {
    /// An empty disk whose faults are drawn from `seed`. See [`SimStorage`] for an example.
    #[must_use]
    pub fn new(seed: u64, faults: FaultConfig) -> SimStorage {
        let disk = Disk {
            rng: SimRng::new(seed),
            faults,
            dead: false,
            inodes: HashMap::new(),
            next_ino: 1,
            dirs: BTreeMap::from([(PathBuf::from("/"), Dir { entry_durable: true, ..Dir::default() })]),
            locks: HashSet::new(),
            holds: HashMap::new(),
            next_handle: 1,
            fail_next_sync: false,
            sync_failure: SyncFailure::default(),
            intermediate_writes: false,
            syncs: 0,
            bytes_read: 0,
        };
        SimStorage { disk: Arc::new(Mutex::new(disk)), direct_align: 4096 }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the fault rates from now on.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::FaultConfig;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/d"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    /// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    /// # sim.sync_dir(Path::new("/d"))?;
    ///
    /// file.write_at(b"fine", 0)?;
    /// sim.set_faults(FaultConfig { write_eio_ppm: 1_000_000, ..FaultConfig::default() });
    /// assert!(file.write_at(b"broken", 4).is_err());
    /// sim.set_faults(FaultConfig::default());
    /// file.write_at(b"fine again", 4)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    /// Makes the next `sync_data` fail (once).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/d"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    /// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    /// # sim.sync_dir(Path::new("/d"))?;
    ///
    /// file.write_at(b"abc", 0)?;
    /// sim.fail_next_sync();
    /// assert!(file.sync_data().is_err());
    /// assert_eq!(file.len()?, 0, "the unsynced bytes are gone, as after a writeback error");
    /// file.sync_data()?;
    /// assert_eq!(sim.sync_count(), 2, "failed syncs count too");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Whether a sector written more than once between syncs may be found after a crash holding
    /// any of those writes, not only the first (durable) or the last: the kernel or the device
    /// may write it back between the writes. Off by default, so that recorded seeds replay; it
    /// carries over to the disks crashes return.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// use nodedb_wal::storage::FaultConfig;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
    /// let found = |intermediate: bool| {
    ///     (0..64).any(|seed| {
    ///         let sim = SimStorage::new(1, FaultConfig::default());
    ///         sim.set_intermediate_writes(intermediate);
    /// #       sim.create_dir_all(Path::new("/d")).unwrap();
    /// #       sim.sync_dir(Path::new("/")).unwrap();
    /// #       let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false }).unwrap();
    /// #       sim.sync_dir(Path::new("/d")).unwrap();
    ///         file.write_at(&[1u8; 512], 0).unwrap();
    ///         file.sync_data().unwrap();
    ///         file.write_at(&[2u8; 512], 0).unwrap();
    ///         file.write_at(&[3u8; 512], 0).unwrap();
    ///         sim.crash(seed).read_file(Path::new("/d/f")).unwrap() == [2u8; 512]
    ///     })
    /// };
    /// assert!(found(true) && !found(false), "the middle write survives some crashes only when modelled");
    /// ```
    pub fn set_intermediate_writes(&self, on: bool) {
        self.lock().intermediate_writes = on;
    }

    /// Chooses what a failed sync leaves, on this disk and the disks its crashes return. See
    /// [`SyncFailure`] for an example.
    pub fn set_sync_failure(&self, policy: SyncFailure) {
        self.lock().sync_failure = policy;
    }

    /// Successful and failed `sync_data` calls so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let before = sim.sync_count();
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"one"))?;
    /// assert!(sim.sync_count() > before, "a durable append costs at least one fdatasync");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    #[must_use]
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Bytes that reads have returned so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/d"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    /// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    /// # sim.sync_dir(Path::new("/d"))?;
    ///
    /// file.write_at(&[1u8; 100], 0)?;
    /// let before = sim.bytes_read();
    /// let mut buf = [0u8; 64];
    /// assert_eq!(file.read_at(&mut buf, 50)?, 50, "a read past the end returns less");
    /// assert_eq!(sim.bytes_read() - before, 50);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.lock().bytes_read
    }

    /// Pulls the plug. This storage and every file opened from it fail all later calls with
    /// EIO; the returned storage is the disk a restart finds.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// let acked = wal.append_durable(Record::new(RecordType::optional(0x100), b"acked"))?;
    /// wal.append(Record::new(RecordType::optional(0x100), b"in flight"))?;
    /// let restarted = sim.crash(99); // no close: the power is cut
    /// # drop(wal);
    /// let wal = SegmentedWal::open_with(restarted, SegmentedWalConfig::new("/wal"))?;
    /// assert!(wal.recovery_info().last_lsn >= acked, "every acknowledged record survives");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    #[must_use]
    pub fn crash(&self, seed: u64) -> SimStorage {
        let mut disk = self.lock();
        disk.dead = true;
        let mut rng = SimRng::new(seed);
        let mut inodes = HashMap::new();
        let mut dirs = BTreeMap::new();
        for (path, dir) in disk.dirs.iter().filter(|(path, _)| dir_survives(&disk.dirs, path)) {
            let entries = dir.after_crash(&mut rng);
            for &ino in entries.values() {
                inodes.entry(ino).or_insert_with(|| survivor(&disk.inodes[&ino], &mut rng));
            }
            dirs.insert(path.clone(), Dir { volatile: entries.clone(), durable: entries, written_back: Vec::new(), entry_durable: true });
        }
        let next = Disk {
            rng: SimRng::new(rng.next_u64()),
            faults: FaultConfig::default(),
            dead: false,
            inodes,
            next_ino: disk.next_ino,
            dirs,
            locks: HashSet::new(),
            holds: HashMap::new(),
            next_handle: disk.next_handle,
            fail_next_sync: false,
            sync_failure: disk.sync_failure,
            intermediate_writes: disk.intermediate_writes,
            syncs: 0,
            bytes_read: 0,
        };
        SimStorage { disk: Arc::new(Mutex::new(next)), direct_align: self.direct_align }
    }

    /// The volatile bytes of a file, for tests that damage or inspect segments. `None` if there
    /// is no such file.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/d"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    /// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    /// # sim.sync_dir(Path::new("/d"))?;
    ///
    /// file.write_at(b"not yet durable", 0)?;
    /// assert_eq!(sim.read_file(Path::new("/d/f")).as_deref(), Some(&b"not yet durable"[..]));
    /// assert!(sim.read_file(Path::new("/d/missing")).is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock();
        let ino = lookup(&disk, path)?;
        Some(disk.inodes[&ino].volatile.clone())
    }

    /// Replaces a file's bytes, durably (a test's stand-in for media damage). Panics if the file
    /// does not exist.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::SimStorage;
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/d"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    /// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
    /// # sim.sync_dir(Path::new("/d"))?;
    ///
    /// file.write_at(b"abcd", 0)?;
    /// file.sync_data()?;
    /// sim.write_file(Path::new("/d/f"), b"abXd"); // a flipped byte on the media
    /// let after = sim.crash(0).read_file(Path::new("/d/f")).expect("file");
    /// assert_eq!(after, b"abXd", "the damage is durable");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut disk = self.lock();
        let ino = lookup(&disk, path).expect("file exists");
        let inode = disk.inodes.get_mut(&ino).expect("inode");
        inode.volatile = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.dirty.clear();
        inode.holes.clear();
        inode.unwritten_clean.clear();
        inode.earlier.clear();
    }
}

fn alive(disk: &Disk) -> io::Result<()> {
    if disk.dead { Err(eio()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{OpenMode, Storage, StorageFile};

    pub(super) fn mode() -> OpenMode {
        OpenMode { create: true, write: true, direct: false, create_new: false }
    }

    /// `storage` (a simulated disk under the Linux sync-failure model, or a wrapper of it) with
    /// a durable directory `/d` and a durable empty file `/d/a` in it, opened for buffered writes.
    pub(super) fn durable_empty_file<S: Storage>(storage: &S) -> S::File {
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        storage.sync_dir(Path::new("/")).unwrap();
        let f = storage.open(&dir.join("a"), mode()).unwrap();
        storage.sync_dir(dir).unwrap();
        f
    }

    pub(super) fn linux_sim(seed: u64) -> SimStorage {
        let sim = SimStorage::new(seed, FaultConfig::default());
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        sim
    }

    #[test]
    fn synced_data_survives_a_crash_and_unsynced_entries_may_or_may_not() {
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let sim = SimStorage::new(1, FaultConfig::default());
            let dir = Path::new("/d");
            sim.create_dir_all(dir).unwrap();
            sim.create_dir_all(Path::new("/e")).unwrap();
            sim.sync_dir(Path::new("/")).unwrap();
            sim.create_dir_all(Path::new("/e/unsynced")).unwrap();
            let f = sim.open(&dir.join("a"), mode()).unwrap();
            f.write_at(b"hello", 0).unwrap();
            f.sync_data().unwrap();
            sim.sync_dir(dir).unwrap();
            let g = sim.open(&dir.join("b"), mode()).unwrap();
            g.write_at(b"kept", 0).unwrap();
            g.sync_data().unwrap();
            sim.remove(&dir.join("a")).unwrap();
            let after = sim.crash(seed);
            // Each of the three states the directory went through since its sync: synced (a),
            // after creating b (a, b), after removing a (b).
            let (a, b) = (after.read_file(&dir.join("a")), after.read_file(&dir.join("b")));
            assert!(a.is_some() || b.is_some(), "seed {seed}: no state of the directory lacked both");
            assert!(
                a.as_ref().is_none_or(|a| a == b"hello") && b.as_ref().is_none_or(|b| b == b"kept"),
                "seed {seed}: synced data is whole"
            );
            if b.is_some() {
                kept += 1
            } else {
                lost += 1
            }
            assert!(after.list(Path::new("/e")).is_ok());
            assert!(after.list(Path::new("/e/unsynced")).is_err(), "a directory whose parent was never synced vanishes");
            assert!(f.write_at(b"x", 0).is_err(), "old handles are dead");
            // A crash leaves a synced state: the next one finds the same entries.
            let names = after.list(dir).unwrap();
            assert_eq!(after.crash(seed + 1).list(dir).unwrap(), names, "seed {seed}");
        }
        assert!(kept > 0 && lost > 0, "an unsynced entry both survived and vanished: {kept} / {lost}");
    }
}
