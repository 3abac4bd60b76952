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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{OpenMode, Storage, StorageFile};

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

/// Fault rates, in parts per million of calls.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::FaultConfig;
/// # use std::path::Path;
/// # use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
///
/// // A disk where every sync fails.
/// let sim = SimStorage::new(1, FaultConfig { sync_fail_ppm: 1_000_000, ..FaultConfig::default() });
/// # sim.create_dir_all(Path::new("/d"))?;
/// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// file.write_at(b"doomed", 0)?;
/// assert!(file.sync_data().is_err());
/// assert_eq!(file.len()?, 0, "a failed sync drops what it did not make durable");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// A write fails with EIO after landing a random prefix of its sectors.
    pub write_eio_ppm: u32,
    /// A write fails with ENOSPC after landing a random prefix of its sectors.
    pub write_enospc_ppm: u32,
    /// An fdatasync fails with EIO and the unsynced data is dropped.
    pub sync_fail_ppm: u32,
    /// A directory fsync fails with EIO (entries stay volatile).
    pub sync_dir_fail_ppm: u32,
}

/// What a failed `sync_data` does to the writes it did not make durable.
///
/// # Examples
///
/// ```
/// use nodedb_wal::SimStorage;
/// use nodedb_wal::storage::{Advice, FaultConfig, SyncFailure};
/// # use std::path::Path;
/// # use nodedb_wal::storage::{OpenMode, Storage, StorageFile};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// sim.set_sync_failure(SyncFailure::KeepsCleanPages);
/// # sim.create_dir_all(Path::new("/d"))?;
/// # sim.sync_dir(Path::new("/"))?;
/// # let file = sim.open(Path::new("/d/f"), OpenMode { create: true, write: true, direct: false, create_new: false })?;
/// # sim.sync_dir(Path::new("/d"))?;
/// file.write_at(&[7u8; 4096], 0)?;
/// sim.fail_next_sync();
/// assert!(file.sync_data().is_err());
/// file.sync_data()?; // succeeds, and writes nothing: the pages are clean
/// let mut buf = [0u8; 4096];
/// file.read_at(&mut buf, 0)?;
/// assert_eq!(buf, [7u8; 4096], "the page cache still holds the failed writes");
/// file.advise(Advice::DontNeed, 0, 0); // evicted: reads now go to the disk
/// file.read_at(&mut buf, 0)?;
/// assert!(buf.chunks(512).all(|s| s == [0u8; 512] || s == [7u8; 512]), "each sector as the failed writeback left it");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncFailure {
    /// The unsynced writes are gone at once: reads see the durable bytes and length again, and
    /// nothing of them survives a crash. The simulation's first model, kept as the default so
    /// that recorded seeds replay as they did.
    #[default]
    DropsUnsynced,
    /// What Linux does after a writeback error: the writeback stopped part way, so each unsynced
    /// sector either reached the disk or did not; those that did not stay in the page cache
    /// marked clean, with their new bytes. Buffered reads keep returning those bytes, no later
    /// sync writes them (it succeeds), and O_DIRECT reads, a crash and an eviction
    /// (`Advice::DontNeed`) all see the disk's older bytes. The file keeps its length.
    KeepsCleanPages,
}

/// A small, fast, seeded PRNG (SplitMix64); good enough to drive simulations.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::SimRng;
///
/// let (mut a, mut b) = (SimRng::new(42), SimRng::new(42));
/// assert_eq!(a.next_u64(), b.next_u64(), "a seed replays the same run");
/// assert!((0..100).all(|_| a.below(6) < 6));
/// assert!(!a.chance_ppm(0));
/// assert!(a.chance_ppm(1_000_000));
/// ```
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed. See [`SimRng`] for an example.
    #[must_use]
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits. See [`SimRng`] for an example.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0). See [`SimRng`] for an example.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `ppm` per million. See [`SimRng`] for an example.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    dirty: BTreeSet<usize>,
    /// Dirty sectors that only `set_len` made (a hole, never written since): a crash never
    /// fills them with stale bytes.
    holes: BTreeSet<usize>,
    /// Sectors a failed sync left in the page cache, clean but never written
    /// ([`SyncFailure::KeepsCleanPages`]): `volatile` holds what buffered reads see, `durable`
    /// what the disk holds.
    unwritten_clean: BTreeSet<usize>,
    /// Earlier contents of dirty sectors that were written again before a sync, oldest first
    /// (only with [`SimStorage::set_intermediate_writes`]): writeback may have taken any of
    /// them to the disk in between.
    earlier: BTreeMap<usize, Vec<Vec<u8>>>,
}

impl Inode {
    /// Copies one sector of `volatile` to the disk image, extending it as needed.
    fn persist(&mut self, sector: usize) {
        let start = sector * SECTOR;
        let end = (start + SECTOR).min(self.volatile.len());
        if start >= end {
            return;
        }
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(&self.volatile[start..end]);
    }

    /// The disk's bytes of `sector` in `buf`, for the part of it that `buf` covers (`buf`
    /// starts at byte `at` of the file); zeros past the disk image's end.
    fn overlay_disk(&self, sector: usize, buf: &mut [u8], at: usize) {
        let (start, end) = ((sector * SECTOR).max(at), (sector * SECTOR + SECTOR).min(at + buf.len()));
        for i in start..end {
            buf[i - at] = self.durable.get(i).copied().unwrap_or(0);
        }
    }

    /// What a failed sync does under `policy`.
    fn fail_writeback(&mut self, policy: SyncFailure, rng: &mut SimRng) {
        match policy {
            SyncFailure::DropsUnsynced => {
                self.volatile = self.durable.clone();
                self.dirty.clear();
                self.unwritten_clean.clear();
            }
            SyncFailure::KeepsCleanPages => {
                for sector in std::mem::take(&mut self.dirty) {
                    if rng.below(2) == 0 {
                        self.persist(sector);
                    } else {
                        self.unwritten_clean.insert(sector);
                    }
                }
            }
        }
        self.holes.clear();
        self.earlier.clear();
    }

    /// Keeps the contents of dirty sectors that a write of `len` bytes at `start` replaces.
    fn note_overwrites(&mut self, start: usize, len: usize) {
        /// Versions kept per sector: enough to pick from, bounded for long runs.
        const VERSIONS_MAX: usize = 8;
        for sector in start / SECTOR..(start + len).div_ceil(SECTOR) {
            let (from, to) = (sector * SECTOR, (sector * SECTOR + SECTOR).min(self.volatile.len()));
            if !self.dirty.contains(&sector) || from >= to {
                continue;
            }
            let versions = self.earlier.entry(sector).or_default();
            if versions.len() == VERSIONS_MAX {
                versions.remove(0);
            }
            versions.push(self.volatile[from..to].to_vec());
        }
    }

    /// Evicts clean pages: sectors a failed sync left unwritten read as the disk has them.
    fn evict_clean(&mut self, from: usize, to: usize) {
        let evicted: Vec<usize> = self.unwritten_clean.iter().copied().filter(|&s| s * SECTOR < to && s * SECTOR + SECTOR > from).collect();
        for sector in evicted {
            self.unwritten_clean.remove(&sector);
            let start = sector * SECTOR;
            let end = (start + SECTOR).min(self.volatile.len());
            if start < end {
                let mut disk = vec![0u8; end - start];
                self.overlay_disk(sector, &mut disk, start);
                self.volatile[start..end].copy_from_slice(&disk);
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Dir {
    volatile: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    /// The entries after each change since the last sync (the latest [`WRITTEN_BACK_STATES`]):
    /// the file system may have written the directory back in any of them before a crash.
    written_back: Vec<BTreeMap<String, u64>>,
    /// Whether the directory's own entry in its parent survives a crash (after a `sync_dir` of
    /// the parent; the root always does).
    entry_durable: bool,
}

/// How many states since its last sync a directory may be found in after a crash.
const WRITTEN_BACK_STATES: usize = 64;

impl Dir {
    /// Notes a change of the entries (see `written_back`).
    fn changed(&mut self) {
        if self.written_back.len() == WRITTEN_BACK_STATES {
            self.written_back.remove(0);
        }
        self.written_back.push(self.volatile.clone());
    }

    /// The entries a crash leaves: the synced ones half the time, otherwise those of a moment
    /// since the last sync, when the file system may have written the directory back.
    fn after_crash(&self, rng: &mut SimRng) -> BTreeMap<String, u64> {
        let states = self.written_back.len() as u64;
        if states == 0 || rng.below(2) == 0 {
            return self.durable.clone();
        }
        self.written_back[rng.below(states) as usize].clone()
    }
}

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

impl SimStorage {
    /// A rename within one directory; over an existing name only where `replace` says so.
    fn rename_in_dir(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let ((dir, old), (to_dir, new)) = (split(from), split(to));
        if dir != to_dir {
            return Err(io::Error::other("the simulation renames within one directory only"));
        }
        let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
        if !entries.volatile.contains_key(&old) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if !replace && entries.volatile.contains_key(&new) {
            return Err(errno(rustix::io::Errno::EXIST));
        }
        let ino = entries.volatile.remove(&old).expect("looked up above");
        entries.volatile.insert(new, ino);
        entries.changed();
        Ok(())
    }
}

/// Whether a directory and every ancestor have durable entries.
fn dir_survives(dirs: &BTreeMap<PathBuf, Dir>, path: &Path) -> bool {
    path.ancestors().all(|p| dirs.get(p).is_none_or(|d| d.entry_durable))
}

/// What a crash leaves of one file: the durable image plus a random subset of dirty sectors.
/// Where unsynced writes had made the file longer, the new length may have been written back
/// without all the data (half the time): written sectors that did not land then read as zeros,
/// or as whatever an earlier file left in those blocks (stale bytes, modelled as random ones).
/// Space the file never wrote stays a hole of zeros.
fn survivor(inode: &Inode, rng: &mut SimRng) -> Inode {
    let durable_len = inode.durable.len();
    let mut bytes = inode.durable.clone();
    let grown = inode.volatile.len() > durable_len && rng.below(2) == 0;
    if grown {
        bytes.resize(inode.volatile.len(), 0);
    }
    let stale = grown && rng.below(2) == 0;
    for &sector in &inode.dirty {
        let start = sector * SECTOR;
        let end = (start + SECTOR).min(inode.volatile.len());
        if start >= end {
            continue;
        }
        if rng.below(2) == 0 {
            if stale && start >= durable_len && !inode.holes.contains(&sector) {
                bytes[start..end].iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            }
            continue;
        }
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(&inode.volatile[start..end]);
        // Written back in between: an earlier write of the sector may be the one on disk.
        if let Some(versions) = inode.earlier.get(&sector) {
            let pick = rng.below(versions.len() as u64 + 1) as usize;
            if let Some(version) = versions.get(pick) {
                let n = version.len().min(end - start);
                bytes[start..start + n].copy_from_slice(&version[..n]);
            }
        }
    }
    Inode { volatile: bytes.clone(), durable: bytes, ..Inode::default() }
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, name)
}

fn lookup(disk: &Disk, path: &Path) -> Option<u64> {
    let (dir, name) = split(path);
    disk.dirs.get(&dir)?.volatile.get(&name).copied()
}

fn alive(disk: &Disk) -> io::Result<()> {
    if disk.dead { Err(eio()) } else { Ok(()) }
}

/// A held directory lock of [`SimStorage`].
#[derive(Debug)]
pub struct SimLock {
    disk: Arc<Mutex<Disk>>,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        disk.locks.remove(&self.dir);
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type Lock = SimLock;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        // A new directory's entry is volatile until its parent is synced.
        for level in dir.ancestors().filter(|p| !p.as_os_str().is_empty()) {
            disk.dirs.entry(level.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<SimLock> {
        let mut disk = self.lock();
        alive(&disk)?;
        if !disk.locks.insert(dir.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(SimLock { disk: Arc::clone(&self.disk), dir: dir.to_path_buf() })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.lock();
        alive(&disk)?;
        let dir = disk.dirs.get(dir).ok_or(io::ErrorKind::NotFound)?;
        Ok(dir.volatile.keys().cloned().collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let mut disk = self.lock();
        alive(&disk)?;
        let ino = match lookup(&disk, path) {
            Some(_) if mode.create_new => return Err(errno(rustix::io::Errno::EXIST)),
            Some(ino) => ino,
            None if mode.create || mode.create_new => {
                let (dir, name) = split(path);
                let ino = disk.next_ino;
                let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
                entries.volatile.insert(name, ino);
                entries.changed();
                disk.next_ino += 1;
                disk.inodes.insert(ino, Inode::default());
                ino
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        let align = if mode.direct { self.direct_align } else { 1 };
        let handle = disk.next_handle;
        disk.next_handle += 1;
        Ok(SimFile { disk: Arc::clone(&self.disk), ino, handle, align, writable: mode.write })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let (dir, name) = split(path);
        let entries = disk.dirs.get_mut(&dir).ok_or(io::ErrorKind::NotFound)?;
        entries.volatile.remove(&name).ok_or(io::ErrorKind::NotFound)?;
        entries.changed();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_in_dir(from, to, true)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_in_dir(from, to, false)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        alive(&disk)?;
        let rate = disk.faults.sync_dir_fail_ppm;
        if disk.rng.chance_ppm(rate) {
            return Err(eio());
        }
        let entries = disk.dirs.get_mut(dir).ok_or(io::ErrorKind::NotFound)?;
        entries.durable = entries.volatile.clone();
        entries.written_back.clear();
        for (path, child) in disk.dirs.iter_mut() {
            if path.parent() == Some(dir) {
                child.entry_durable = true;
            }
        }
        Ok(())
    }
}

/// A file of [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    disk: Arc<Mutex<Disk>>,
    ino: u64,
    /// This open's own number: the owner of its hold (see `Disk::holds`).
    handle: u64,
    /// Required alignment of offsets, lengths and addresses (1 unless opened O_DIRECT).
    align: usize,
    writable: bool,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        self.release_hold();
    }
}

impl SimFile {
    /// Takes this handle's hold on its inode, shared or exclusive, if no other handle's hold
    /// conflicts; whether it did.
    fn try_hold(&self, exclusive: bool) -> bool {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let holders = disk.holds.entry(self.ino).or_default();
        let conflicts = holders.iter().any(|(&handle, &other_exclusive)| handle != self.handle && (exclusive || other_exclusive));
        if !conflicts {
            holders.insert(self.handle, exclusive);
        }
        !conflicts
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        alive(&disk)?;
        Ok(disk)
    }

    fn fail_writeback(&self, disk: &mut Disk) {
        let policy = disk.sync_failure;
        let Disk { inodes, rng, .. } = disk;
        inodes.get_mut(&self.ino).expect("open inode exists").fail_writeback(policy, rng);
    }

    fn check_alignment(&self, addr: usize, len: usize, offset: u64) -> io::Result<()> {
        let a = self.align;
        if !addr.is_multiple_of(a) || !len.is_multiple_of(a) || !offset.is_multiple_of(a as u64) {
            return Err(errno(rustix::io::Errno::INVAL));
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check_alignment(buf.as_ptr() as usize, buf.len(), offset)?;
        let mut disk = self.lock()?;
        let inode = &disk.inodes[&self.ino];
        let data = &inode.volatile;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        if self.align > 1 {
            // O_DIRECT reads the disk, not the clean pages a failed sync left in the cache.
            let sectors = start / SECTOR..(start + n).div_ceil(SECTOR);
            for &sector in inode.unwritten_clean.range(sectors) {
                inode.overlay_disk(sector, &mut buf[..n], start);
            }
        }
        disk.bytes_read += n as u64;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_alignment(buf.as_ptr() as usize, buf.len(), offset)?;
        if !self.writable {
            return Err(errno(rustix::io::Errno::BADF));
        }
        let mut disk = self.lock()?;
        let faults = disk.faults;
        let failure = if disk.rng.chance_ppm(faults.write_eio_ppm) {
            Some(eio())
        } else if disk.rng.chance_ppm(faults.write_enospc_ppm) {
            Some(errno(rustix::io::Errno::NOSPC))
        } else {
            None
        };
        // A failing write may still have landed some of its sectors.
        let landed = match failure {
            Some(_) => usize::try_from(disk.rng.below(buf.len() as u64 + 1)).unwrap_or(0) / SECTOR * SECTOR,
            None => buf.len(),
        };
        let start = usize::try_from(offset).expect("offset fits in memory");
        let intermediate = disk.intermediate_writes;
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        if intermediate {
            inode.note_overwrites(start, landed);
        }
        if inode.volatile.len() < start + landed {
            inode.volatile.resize(start + landed, 0);
        }
        inode.volatile[start..start + landed].copy_from_slice(&buf[..landed]);
        let sectors = start / SECTOR..(start + landed).div_ceil(SECTOR);
        inode.holes.retain(|s| !sectors.contains(s));
        inode.unwritten_clean.retain(|s| !sectors.contains(s));
        inode.dirty.extend(sectors);
        failure.map_or(Ok(()), Err)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.lock()?;
        disk.syncs += 1;
        let rate = disk.faults.sync_fail_ppm;
        let fail = std::mem::take(&mut disk.fail_next_sync) || disk.rng.chance_ppm(rate);
        if fail {
            // Never retried by the kernel: the unsynced data is gone or stranded (SyncFailure).
            self.fail_writeback(&mut disk);
            return Err(eio());
        }
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.earlier.clear();
        let len = inode.volatile.len();
        inode.durable.resize(len, 0);
        inode.holes.clear();
        for sector in std::mem::take(&mut inode.dirty) {
            let start = sector * SECTOR;
            let end = (start + SECTOR).min(len);
            if start < end {
                inode.durable[start..end].copy_from_slice(&inode.volatile[start..end]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.lock()?;
        let len = usize::try_from(len).expect("length fits in memory");
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        let old = inode.volatile.len();
        inode.volatile.resize(len, 0);
        if len > old {
            // The sector the old end falls in holds data already; the ones after are a hole.
            inode.holes.extend(old.div_ceil(SECTOR)..len.div_ceil(SECTOR));
            inode.dirty.extend(old / SECTOR..len.div_ceil(SECTOR));
        } else {
            inode.dirty.retain(|&s| s * SECTOR < len);
            inode.holes.retain(|&s| s * SECTOR < len);
            inode.unwritten_clean.retain(|&s| s * SECTOR < len);
            inode.earlier.retain(|&s, _| s * SECTOR < len);
            // A shrink is metadata: it becomes durable with the next sync of this file.
            inode.dirty.insert(len / SECTOR);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let disk = self.lock()?;
        Ok(disk.inodes[&self.ino].volatile.len() as u64)
    }

    fn advise(&self, advice: super::Advice, offset: u64, len: u64) {
        if advice != super::Advice::DontNeed {
            return;
        }
        let Ok(mut disk) = self.lock() else { return };
        let inode = disk.inodes.get_mut(&self.ino).expect("open inode exists");
        let (from, to) = whole_cache_pages(offset, len, inode.volatile.len());
        inode.evict_clean(from, to);
    }

    fn hold_shared(&self) -> io::Result<()> {
        // As `flock`: waits while another handle holds the file exclusively (the writer, only
        // while it turns a truncated file into a new segment).
        while !self.try_hold(false) {
            std::thread::yield_now();
        }
        Ok(())
    }

    fn try_hold_exclusive(&self) -> io::Result<bool> {
        Ok(self.try_hold(true))
    }

    fn release_hold(&self) {
        let mut disk = self.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(holders) = disk.holds.get_mut(&self.ino) {
            holders.remove(&self.handle);
            if holders.is_empty() {
                disk.holds.remove(&self.ino);
            }
        }
    }

    fn sync_failed(&self) {
        let Ok(mut disk) = self.lock() else { return };
        // Only the Linux model changes what an injected failure leaves: under the first one
        // a wrapper's failed sync left the writes pending, and old tests rely on that.
        if disk.sync_failure == SyncFailure::KeepsCleanPages {
            self.fail_writeback(&mut disk);
        }
    }
}

/// Bytes of a page of the simulated page cache: what `Advice::DontNeed` drops whole or not at all.
const CACHE_PAGE: usize = 4096;

/// The part of `len` bytes at `offset` (to the end of the file where `len` is 0) that Linux's
/// `POSIX_FADV_DONTNEED` drops from a file of `file_len` bytes: whole pages only. A page the
/// range covers in part is kept, at either end, unless the range ends exactly at the end of
/// the file (`generic_fadvise`: "first and last FULL page"). Large folios make real pages
/// larger still; the simulation keeps to 4 KiB.
fn whole_cache_pages(offset: u64, len: u64, file_len: usize) -> (usize, usize) {
    let from = usize::try_from(offset).unwrap_or(usize::MAX).checked_next_multiple_of(CACHE_PAGE).unwrap_or(usize::MAX);
    if len == 0 {
        return (from, usize::MAX);
    }
    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
    let to = if end == file_len || end == usize::MAX { end } else { end - end % CACHE_PAGE };
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode() -> OpenMode {
        OpenMode { create: true, write: true, direct: false, create_new: false }
    }

    /// `storage` (a simulated disk under the Linux sync-failure model, or a wrapper of it) with
    /// a durable directory `/d` and a durable empty file `/d/a` in it, opened for buffered writes.
    fn durable_empty_file<S: Storage>(storage: &S) -> S::File {
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        storage.sync_dir(Path::new("/")).unwrap();
        let f = storage.open(&dir.join("a"), mode()).unwrap();
        storage.sync_dir(dir).unwrap();
        f
    }

    fn linux_sim(seed: u64) -> SimStorage {
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

    #[test]
    fn a_crash_may_keep_a_grown_length_with_zeros_or_stale_bytes_where_writes_did_not_land() {
        let (mut short, mut zeros, mut stale) = (0, 0, 0);
        for seed in 0..200 {
            let sim = SimStorage::new(1, FaultConfig::default());
            let dir = Path::new("/d");
            sim.create_dir_all(dir).unwrap();
            sim.sync_dir(Path::new("/")).unwrap();
            let f = sim.open(&dir.join("a"), mode()).unwrap();
            f.write_at(&[7u8; SECTOR], 0).unwrap();
            f.sync_data().unwrap();
            sim.sync_dir(dir).unwrap();
            f.set_len(4 * SECTOR as u64).unwrap(); // a hole, never written
            f.write_at(&[9u8; 2 * SECTOR], 4 * SECTOR as u64).unwrap();
            let after = sim.crash(seed).read_file(&dir.join("a")).unwrap();
            assert_eq!(&after[..SECTOR], &[7u8; SECTOR][..], "seed {seed}: synced bytes are kept");
            if after.len() == SECTOR {
                short += 1;
                continue;
            }
            assert!(after[SECTOR..(4 * SECTOR).min(after.len())].iter().all(|&b| b == 0), "seed {seed}: a hole reads as zeros");
            for sector in after.get(4 * SECTOR..).unwrap_or_default().chunks(SECTOR) {
                if sector.iter().all(|&b| b == 0) {
                    zeros += 1;
                } else if sector.iter().any(|&b| b != 9) {
                    stale += 1;
                }
            }
        }
        assert!(short > 0 && zeros > 0 && stale > 0, "old length {short}, lost sectors as zeros {zeros}, as stale bytes {stale}");
    }

    #[test]
    fn a_failed_sync_drops_unsynced_data() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.open(&dir.join("a"), mode()).unwrap();
        f.write_at(b"abc", 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 0);
    }

    #[test]
    fn a_failed_sync_under_the_linux_model_strands_clean_pages_no_later_sync_writes() {
        let (mut landed, mut stranded) = (0, 0);
        for seed in 0..32 {
            let sim = linux_sim(seed);
            let dir = Path::new("/d");
            let f = durable_empty_file(&sim);
            f.write_at(&[1u8; 8 * SECTOR], 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(&[2u8; 8 * SECTOR], 0).unwrap();
            sim.fail_next_sync();
            assert!(f.sync_data().is_err());
            f.sync_data().expect("a second sync succeeds: nothing is dirty");
            let mut cached = vec![0u8; 8 * SECTOR];
            f.read_at(&mut cached, 0).unwrap();
            assert_eq!(cached, [2u8; 8 * SECTOR], "seed {seed}: buffered reads see the stranded bytes");
            let direct = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
            let mut disk = crate::storage::AlignedBuf::zeroed(8 * SECTOR, 4096);
            direct.read_at(&mut disk, 0).unwrap();
            let after = sim.crash(seed).read_file(&dir.join("a")).unwrap();
            assert_eq!(after, &disk[..], "seed {seed}: O_DIRECT reads what a crash keeps");
            for sector in after.chunks(SECTOR) {
                assert!(sector == [1u8; SECTOR] || sector == [2u8; SECTOR], "seed {seed}: whole sectors, old or new");
                if sector[0] == 2 { landed += 1 } else { stranded += 1 }
            }
        }
        assert!(landed > 0 && stranded > 0, "some sectors reached the disk before the error, some not: {landed} / {stranded}");
    }

    #[test]
    fn evicting_stranded_pages_shows_the_disk_and_a_new_write_makes_them_durable() {
        let sim = linux_sim(5);
        let dir = Path::new("/d");
        let f = durable_empty_file(&sim);
        f.write_at(&[2u8; 16 * SECTOR], 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 16 * SECTOR as u64, "the file keeps its length");
        // Rewritten, the first half is dirty again and the next sync writes it.
        f.write_at(&[3u8; 8 * SECTOR], 0).unwrap();
        f.sync_data().unwrap();
        f.advise(crate::storage::Advice::DontNeed, 0, 0);
        let mut now = vec![0u8; 16 * SECTOR];
        f.read_at(&mut now, 0).unwrap();
        let after = sim.crash(1).read_file(&dir.join("a")).unwrap();
        assert_eq!(&after[..8 * SECTOR], &[3u8; 8 * SECTOR][..]);
        assert_eq!(&now[..after.len()], &after[..], "after eviction a buffered read sees the disk");
        assert!(now[after.len()..].iter().all(|&b| b == 0), "past the disk's end: zeros");
        assert!(now[8 * SECTOR..].chunks(SECTOR).any(|s| s == [0u8; SECTOR]), "some stranded sector never reached the disk");
    }

    #[test]
    fn dont_need_drops_only_whole_cache_pages_like_linux() {
        const LEN: usize = 2 * CACHE_PAGE + 1024;
        let sim = SimStorage::new(5, FaultConfig::default());
        sim.set_sync_failure(SyncFailure::KeepsCleanPages);
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        let f = sim.open(&dir.join("a"), mode()).unwrap();
        sim.sync_dir(dir).unwrap();
        f.write_at(&[2u8; LEN], 0).unwrap();
        sim.fail_next_sync();
        assert!(f.sync_data().is_err());
        // O_DIRECT reads the disk.
        let direct = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
        let mut disk = crate::storage::AlignedBuf::zeroed(3 * CACHE_PAGE, 4096);
        direct.read_at(&mut disk, 0).unwrap();
        assert!(disk[..LEN].chunks(CACHE_PAGE).all(|page| page.contains(&0)), "some sector of each page stranded");
        let read = |f: &SimFile| {
            let mut buf = vec![0u8; LEN];
            f.read_at(&mut buf, 0).unwrap();
            buf
        };
        // Part of a page at either end is kept; a page wholly inside goes.
        f.advise(crate::storage::Advice::DontNeed, 1024, (2 * CACHE_PAGE - 512) as u64);
        let now = read(&f);
        assert!(now[..CACHE_PAGE].iter().all(|&b| b == 2), "the first page, in part in the range, stays");
        assert!(now[CACHE_PAGE..2 * CACHE_PAGE] == disk[CACHE_PAGE..2 * CACHE_PAGE], "the second page went");
        assert!(now[2 * CACHE_PAGE..].iter().all(|&b| b == 2), "the last page, in part in the range, stays");
        // A range ending past the end of the file, inside its last page, keeps that page; one
        // ending at the end of the file takes it.
        f.advise(crate::storage::Advice::DontNeed, (2 * CACHE_PAGE) as u64, 2048);
        assert!(read(&f)[2 * CACHE_PAGE..].iter().all(|&b| b == 2), "kept");
        f.advise(crate::storage::Advice::DontNeed, (2 * CACHE_PAGE) as u64, 1024);
        assert!(read(&f)[2 * CACHE_PAGE..] == disk[2 * CACHE_PAGE..LEN], "dropped");
    }

    #[test]
    fn an_injected_sync_failure_strands_the_writes_under_the_linux_model() {
        let sim = linux_sim(9);
        let faulty = crate::storage::faulty::FaultyStorage::new(sim.clone());
        let dir = Path::new("/d");
        let f = durable_empty_file(&faulty);
        f.write_at(&[2u8; 16 * SECTOR], 0).unwrap();
        faulty.fail_once(crate::storage::faulty::FaultOp::SyncData, 0, crate::storage::faulty::EIO);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        let after = sim.crash(1).read_file(&dir.join("a")).unwrap();
        assert!(after.len() < 16 * SECTOR || after.chunks(SECTOR).any(|s| s == [0u8; SECTOR]), "the later sync did not write them all");
    }

    #[test]
    fn a_new_file_and_a_rename_without_replacing_never_take_a_name_in_use() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        let taken = durable_empty_file(&sim);
        taken.write_at(b"someone else's", 0).unwrap();
        let new = OpenMode { create_new: true, ..mode() };
        let err = sim.open(&dir.join("a"), new).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let fresh = sim.open(&dir.join("b"), new).unwrap();
        fresh.write_at(b"mine", 0).unwrap();
        let err = sim.rename_no_replace(&dir.join("b"), &dir.join("a")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(sim.read_file(&dir.join("a")).unwrap(), b"someone else's");
        assert_eq!(sim.read_file(&dir.join("b")).unwrap(), b"mine");
        let err = sim.rename_no_replace(&dir.join("gone"), &dir.join("c")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        sim.rename_no_replace(&dir.join("b"), &dir.join("c")).unwrap();
        assert_eq!(sim.list(dir).unwrap(), ["a", "c"]);
        sim.rename(&dir.join("c"), &dir.join("a")).unwrap();
        assert_eq!(sim.read_file(&dir.join("a")).unwrap(), b"mine", "a plain rename still replaces");
    }

    #[test]
    fn direct_io_rejects_misaligned_writes() {
        let sim = SimStorage::new(1, FaultConfig::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.open(&dir.join("a"), OpenMode { direct: true, ..mode() }).unwrap();
        let err = f.write_at(&[0u8; 100], 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::INVAL.raw_os_error()));
    }
}
