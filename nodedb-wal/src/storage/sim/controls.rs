//! The calls a test makes on a simulated disk besides the `Storage` trait: the fault dials
//! (rates, a failing next sync, intermediate writes, what a failed sync leaves), the counters
//! (syncs, bytes read), and a file's bytes read or replaced directly.
//!
//! They are apart from the disk's own state because they are the test's side of the seam:
//! production code never calls them, and each reaches into the disk's state under its lock.

use std::path::Path;

use super::namespace::lookup;
use super::{FaultConfig, SimStorage, SyncFailure};

impl SimStorage {
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
