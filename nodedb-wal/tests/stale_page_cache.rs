//! A look's verdict of damage in the newest segment holds past the page cache. The writer
//! writes with O_DIRECT and a look reads through the page cache. Where the kernel fails to drop
//! cached pages that an O_DIRECT write replaced (it can, for pages someone has mapped), the
//! cache holds the segment's old bytes: zeros where a batch now is, and the records after it
//! claim that batch durable. Every buffered scan then agrees on the same damage, and two
//! agreeing scans were the look's proof of real damage. So the look reads the damaged window
//! once more past the cache before it reports damage, and where those bytes differ it scans
//! past the cache.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{BLOCK, append_synced, config, seg};
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{CorruptionKind, Lsn, ReadOnlyWal, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

/// One segment, zero-filled far ahead of the records.
fn one_segment(dir: &Path) -> SegmentedWalConfig {
    SegmentedWalConfig { segment_bytes_target: 64 << 20, zero_fill_bytes: 16 << 20, ..config(dir) }
}

/// A storage whose page cache is stale over part of one segment: buffered reads of `stale`
/// return the segment's bytes as they were in `old`, reads with O_DIRECT the bytes now.
#[derive(Clone)]
struct StaleCache {
    inner: SimStorage,
    cache: Arc<Cache>,
}

struct Cache {
    segment: PathBuf,
    old: Vec<u8>,
    stale: Range<u64>,
    /// Buffered scans of the segment (reads of it from its start), and reads with O_DIRECT.
    buffered_scans: AtomicUsize,
    direct_reads: AtomicUsize,
}

struct StaleFile {
    inner: <SimStorage as Storage>::File,
    /// Set where this open reads the segment through the (stale) cache.
    cache: Option<Arc<Cache>>,
    direct: Option<Arc<Cache>>,
}

impl Storage for StaleCache {
    type File = StaleFile;
    type Lock = <SimStorage as Storage>::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Self::File> {
        let inner = self.inner.open(path, mode)?;
        let ours = (path == self.cache.segment && !mode.write).then(|| Arc::clone(&self.cache));
        let (cache, direct) = if mode.direct { (None, ours) } else { (ours, None) };
        Ok(StaleFile { inner, cache, direct })
    }
}

impl StorageFile for StaleFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        if let Some(direct) = &self.direct {
            direct.direct_reads.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(cache) = &self.cache {
            if offset == 0 {
                cache.buffered_scans.fetch_add(1, Ordering::SeqCst);
            }
            // The old bytes of every stale position this read covers.
            let (from, to) = (offset.max(cache.stale.start), (offset + n as u64).min(cache.stale.end));
            for at in from..to {
                buf[(at - offset) as usize] = cache.old[at as usize];
            }
        }
        Ok(n)
    }

    pass_through_file_ops_but_reads!();
}

/// A log of one segment in `dir` holding LSNs 1 to 40, each synced on its own, and a storage
/// whose cache of the segment still holds, in the block where LSN 21's batch starts, what was
/// there before that batch: zeros.
fn stale_log(seed: u64, dir: &Path) -> (SimStorage, StaleCache) {
    let sim = SimStorage::new(seed, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), one_segment(dir)).unwrap();
    for lsn in 1..=20 {
        append_synced(&wal, lsn, lsn);
    }
    let segment = seg(dir, wal.segments()[0].id.0);
    let old = sim.read_file(&segment).unwrap();
    // Each synced batch starts a new block.
    let at = wal.segments()[0].bytes.next_multiple_of(BLOCK);
    for lsn in 21..=40 {
        append_synced(&wal, lsn, lsn);
    }
    assert_eq!(wal.segments().len(), 1);
    assert_ne!(sim.read_file(&segment).unwrap()[at as usize..][..BLOCK as usize], old[at as usize..][..BLOCK as usize]);
    wal.close().unwrap();
    let cache = Cache { segment, old, stale: at..at + BLOCK, buffered_scans: AtomicUsize::new(0), direct_reads: AtomicUsize::new(0) };
    (sim.clone(), StaleCache { inner: sim, cache: Arc::new(cache) })
}

// Seen failing before the fix: two buffered scans found the same zeros before records that
// claim them durable, and the look reported `DamageBeforeDurableRecords` about a healthy log.
#[test]
fn damage_that_only_a_stale_page_cache_shows_is_not_reported() {
    let dir = Path::new("/stale");
    let (_sim, stale) = stale_log(11, dir);
    let view = ReadOnlyWal::open_with(stale.clone(), dir, None).unwrap_or_else(|e| panic!("a false alarm: {e}"));
    let info = view.recovery_info().clone();
    assert_eq!((info.first_lsn, info.last_lsn, info.record_count, info.torn_tail), (Lsn(1), Lsn(40), 40, None));
    assert!(stale.cache.buffered_scans.load(Ordering::SeqCst) >= 2, "the cache did show the damage");
    assert!(stale.cache.direct_reads.load(Ordering::SeqCst) > 0, "the look read past the cache");
    // (Its records read through the cache, stale here: a reader's concern, not the verdict's.)
}

/// Damage on the disk reads the same past the cache: the look reports it after two scans and
/// one read past the cache, without waiting for its deadline.
#[test]
fn damage_on_the_disk_is_still_reported_after_two_scans() {
    let dir = Path::new("/damaged");
    let (sim, stale) = stale_log(12, dir);
    // The cache is right about the block (it holds what the disk does), and damaged.
    let mut bytes = sim.read_file(&stale.cache.segment).unwrap();
    let at = stale.cache.stale.start + 100;
    bytes[at as usize] ^= 0x40;
    sim.write_file(&stale.cache.segment, &bytes);
    let stale = StaleCache { inner: sim, cache: Arc::new(Cache { old: bytes, ..cache_copy(&stale.cache) }) };
    match ReadOnlyWal::open_with(stale.clone(), dir, None) {
        Err(WalError::Corruption { offset, kind: CorruptionKind::DamageBeforeDurableRecords { .. }, .. }) => {
            assert_eq!(offset - offset % BLOCK, at - at % BLOCK, "the damaged block");
        }
        other => panic!("real damage: {:?}", other.map(|view| view.recovery_info().clone())),
    }
    assert_eq!(stale.cache.buffered_scans.load(Ordering::SeqCst), 2, "two scans, not as many as a deadline allows");
    assert_eq!(stale.cache.direct_reads.load(Ordering::SeqCst), 1, "one read past the cache");
}

fn cache_copy(cache: &Cache) -> Cache {
    Cache {
        segment: cache.segment.clone(),
        old: cache.old.clone(),
        stale: cache.stale.clone(),
        buffered_scans: AtomicUsize::new(0),
        direct_reads: AtomicUsize::new(0),
    }
}
