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
//! The disk itself (`Disk`, shared by clones of [`SimStorage`]) lives here; the calls a test
//! makes on it (fault dials, counters, reading and damaging a file) in `controls`, the crash
//! that returns the disk a restart finds in `crash`, the fault settings and the PRNG in
//! `faults`, a file's images and what a crash keeps of them in `inode`, directories, names and
//! locks in `namespace`, and an open file in `file`.

mod controls;
mod crash;
mod faults;
mod file;
mod inode;
mod namespace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::faults::{FaultConfig, SimRng, SyncFailure};
use self::inode::Inode;
use self::namespace::Dir;

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
}

fn alive(disk: &Disk) -> io::Result<()> {
    if disk.dead { Err(eio()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::{OpenMode, Storage};

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
}
