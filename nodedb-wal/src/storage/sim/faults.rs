//! What can go wrong on the simulated disk and how often ([`FaultConfig`], [`SyncFailure`]),
//! and the seeded generator that draws every fault and every crash ([`SimRng`]).
//!
//! One seed replays a whole run, so a failing seed can be kept as a regression test.

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
