//! A log directory reopened with another configuration than it was written with: a database
//! upgraded, an operator's edit, a key ring rotated. Every acknowledged record is still
//! returned by recovery and by every reader, or the open fails with a typed error that changes
//! nothing on disk, and a later open with any configuration still works.
//!
//! Each seed runs rounds against a model of the records: every round opens the log with a
//! random config (block length 512 B to 1 MiB, O_DIRECT or not, segment, batch and payload
//! sizes, zero-fill, kept segment files, commit window, check-ahead, and a key ring that holds
//! every key, lacks one, holds a wrong one, refuses plaintext or is missing), checks every
//! reader and a read-only look, appends (records of up to 3 MiB, tombstones), truncates,
//! sometimes with I/O faults and a reopen under the same kernel, and ends in a close, a drop,
//! a `WalWriter` segment or a power cut. The same for the double-write buffer's geometry and
//! mode. `NODEDB_WAL_DRIFT_SEEDS` sets the number of seeds (40), `NODEDB_WAL_DRIFT_SEED` runs
//! one, `NODEDB_WAL_DRIFT_TRACE` prints each open.

mod common;
mod dwb_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nodedb_wal::storage::{FaultConfig, SimRng, Storage};
use nodedb_wal::{
    CollectionTombstonePayload, FsStorage, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentId, SegmentedWal,
    SegmentedWalConfig, SimStorage, WalError, WalWriter, WalWriterConfig,
};

const TY: RecordType = RecordType::optional(0x100);

/// The records a log holds: by LSN, the payload (`None`: a tombstone, which readers hand out
/// but this test does not compare).
type Model = BTreeMap<u64, Option<Vec<u8>>>;

fn payload(rng: &mut SimRng, lsn: u64, max: usize) -> Vec<u8> {
    let len = match rng.below(50) {
        0..=29 => rng.below(300) as usize,
        30..=44 => rng.below(20_000) as usize,
        45..=48 => rng.below(300_000) as usize,
        _ => 1_000_000 + rng.below(2_000_000) as usize,
    }
    .clamp(8, max.max(8));
    let mut bytes: Vec<u8> = (0..len).map(|i| (lsn as u8).wrapping_mul(13) ^ (i as u8)).collect();
    bytes[..8].copy_from_slice(&lsn.to_le_bytes());
    bytes
}

/// The keys ever used, by id: a ring holding all of them reads every segment.
#[derive(Default)]
struct Keys(Vec<(u32, [u8; 32])>);

impl Keys {
    fn ring_of(keys: &[(u32, [u8; 32])], active: Option<u32>) -> Arc<KeyRing> {
        let ring = KeyRing::new();
        for (id, bytes) in keys {
            ring.insert(*id, SecureKey::from_bytes(&mut bytes.clone())).unwrap();
        }
        if let Some(id) = active {
            ring.set_active(id).unwrap();
        }
        Arc::new(ring)
    }

    fn ring(&self, active: Option<u32>) -> Arc<KeyRing> {
        Keys::ring_of(&self.0, active)
    }

    fn add(&mut self, rng: &mut SimRng) -> u32 {
        let id = self.0.len() as u32 + 1;
        let mut key = [0u8; 32];
        key.iter_mut().for_each(|b| *b = rng.below(256) as u8);
        self.0.push((id, key));
        id
    }
}

/// How a round's key ring relates to the keys the log was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingDrift {
    /// Every key, so every segment reads.
    Whole,
    /// One old key left out.
    MissingKey,
    /// One old key id holding other bytes.
    WrongKey,
    /// No ring at all.
    NoRing,
    /// Every key, and plaintext segments refused.
    RefusePlaintext,
}

fn random_config(rng: &mut SimRng, dir: &Path, keys: &mut Keys, sim: bool) -> (SegmentedWalConfig, RingDrift) {
    let mut c = SegmentedWalConfig::new(dir);
    c.alignment = [512, 1024, 4096, 8192, 65536, 1 << 20][rng.below(6) as usize];
    // The simulation takes O_DIRECT in 4096-byte units only, and does not say so.
    c.direct_io = (!sim || c.alignment >= 4096) && rng.below(2) == 0;
    c.allow_buffered_fallback = rng.below(2) == 0;
    c.segment_bytes_target = (4 * c.alignment as u64).max([16 << 10, 64 << 10, 256 << 10, 1 << 20][rng.below(4) as usize]);
    c.batch_bytes_max = c.alignment.max([4096, 16 << 10, 64 << 10, 1 << 20][rng.below(4) as usize]);
    c.batch_buffers = 2 + rng.below(4) as usize;
    c.payload_bytes_max = [64, 1000, 10_000, 200_000, 64 << 20][rng.below(5) as usize];
    c.zero_fill_bytes = c.alignment * [0, 1, 4, 16][rng.below(4) as usize];
    c.recycle_segments = [0, 1, 2, 5][rng.below(4) as usize];
    c.check_ahead = rng.below(2) == 0;
    c.commit_window = (rng.below(4) == 0).then(|| Duration::from_micros(50));
    let active = match rng.below(3) {
        0 => None,
        1 => Some(keys.add(rng)),
        _ if keys.0.is_empty() => None,
        _ => Some(keys.0[rng.below(keys.0.len() as u64) as usize].0),
    };
    let drift = match rng.below(8) {
        0 => RingDrift::NoRing,
        1 if keys.0.len() > 1 => RingDrift::MissingKey,
        2 if keys.0.len() > 1 => RingDrift::WrongKey,
        3 if active.is_some() => RingDrift::RefusePlaintext,
        _ => RingDrift::Whole,
    };
    c.key_ring = match drift {
        RingDrift::Whole => Some(keys.ring(active)),
        RingDrift::NoRing => None,
        RingDrift::RefusePlaintext => {
            let ring = keys.ring(active);
            ring.refuse_plaintext();
            Some(ring)
        }
        RingDrift::MissingKey | RingDrift::WrongKey => {
            let mut changed = keys.0.clone();
            let at = rng.below(changed.len() as u64) as usize;
            if drift == RingDrift::MissingKey {
                changed.remove(at);
            } else {
                changed[at].1[0] ^= 1;
            }
            // Never active: a key the log does not know stays out of it.
            Some(Keys::ring_of(&changed, None))
        }
    };
    (c, drift)
}

/// What a round needs of its storage besides [`Storage`].
trait Disk: Storage + Clone + Send + Sync + 'static {
    /// Every file of `dir` but `LOCK`, with its bytes.
    fn snapshot(&self, dir: &Path) -> BTreeMap<String, Vec<u8>>;
    /// Fails syncs as Linux does, and lets writes land in pieces (the simulated disk).
    fn prepare(&self) {}
    /// Injects faults (the simulated disk; a real one takes none).
    fn set_faults(&self, faults: FaultConfig) {
        assert_eq!(faults, FaultConfig::default(), "a real disk takes no injected faults");
    }
}

impl Disk for SimStorage {
    fn prepare(&self) {
        self.set_sync_failure(nodedb_wal::storage::SyncFailure::KeepsCleanPages);
        self.set_intermediate_writes(true);
    }

    fn set_faults(&self, faults: FaultConfig) {
        SimStorage::set_faults(self, faults);
    }

    /// What the disk holds (and writes not yet synced): pages a failed sync left in the page
    /// cache, which never reached the disk, are dropped first, as a refused open's recovery
    /// drops them before it reads.
    fn snapshot(&self, dir: &Path) -> BTreeMap<String, Vec<u8>> {
        use nodedb_wal::storage::{Advice, OpenMode, StorageFile};
        let names = self.list(dir).unwrap_or_default();
        let mode = OpenMode { create: false, write: false, direct: false, create_new: false };
        for name in &names {
            self.open(&dir.join(name), mode).unwrap().advise(Advice::DontNeed, 0, 0);
        }
        names.into_iter().filter(|n| n != "LOCK").map(|n| (n.clone(), self.read_file(&dir.join(&n)).unwrap())).collect()
    }
}

impl Disk for FsStorage {
    fn snapshot(&self, dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let names = self.list(dir).unwrap_or_default();
        names.into_iter().filter(|n| n != "LOCK").map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap())).collect()
    }
}

fn expected_from(model: &Model, first: Lsn) -> Vec<(u64, Option<&Vec<u8>>)> {
    model.range(first.0..).map(|(l, p)| (*l, p.as_ref())).collect()
}

fn matches(expected: &[(u64, Option<&Vec<u8>>)], n: usize, lsn: u64, payload: &[u8]) -> bool {
    expected.get(n).is_some_and(|(l, p)| *l == lsn && p.is_none_or(|p| p == payload))
}

/// Every reader returns exactly the records of `model` from the oldest retained on, or (with a
/// key missing from the ring) stops with `UnknownKeyId`.
fn check_readers<S: Disk>(wal: &SegmentedWal<S>, model: &Model, context: &str) {
    let first = wal.oldest_lsn();
    let expected = expected_from(model, first);
    let tolerable = |e: &WalError| matches!(e, WalError::UnknownKeyId { .. } | WalError::KeyRingMissing { .. });
    let mut n = 0;
    for record in wal.read_from(first).unwrap_or_else(|e| panic!("{context}: read_from: {e}")) {
        match record {
            Ok(r) => assert!(matches(&expected, n, r.lsn.0, &r.payload), "{context}: read_from, LSN {}", r.lsn),
            Err(e) if tolerable(&e) => return,
            Err(e) => panic!("{context}: read_from: {e}"),
        }
        n += 1;
    }
    assert_eq!(n, expected.len(), "{context}: read_from returns every record");

    let mut mapped = wal.read_mapped(first).unwrap();
    let mut n = 0;
    while let Some(view) = mapped.next_view() {
        let view = view.unwrap_or_else(|e| panic!("{context}: read_mapped: {e}"));
        assert!(matches(&expected, n, view.lsn.0, view.payload), "{context}: read_mapped, LSN {}", view.lsn);
        n += 1;
    }
    assert_eq!(n, expected.len(), "{context}: read_mapped returns every record");

    let mut lazy = wal.lazy_reader(first).unwrap();
    let mut n = 0;
    while let Some(handle) = lazy.next_header().unwrap_or_else(|e| panic!("{context}: lazy: {e}")) {
        assert_eq!(handle.lsn.0, expected[n].0, "{context}: lazy reader");
        if n % 3 == 0 {
            let payload = lazy.payload().unwrap_or_else(|e| panic!("{context}: lazy payload: {e}"));
            assert!(matches(&expected, n, handle.lsn.0, &payload), "{context}: lazy payload");
        }
        n += 1;
    }
    assert_eq!(n, expected.len(), "{context}: the lazy reader returns every record");

    let mut n = 0;
    wal.replay_parallel(first, 3, |view| {
        assert!(matches(&expected, n, view.lsn.0, view.payload), "{context}: replay_parallel, LSN {}", view.lsn);
        n += 1;
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{context}: replay_parallel: {e}"));
    assert_eq!(n, expected.len(), "{context}: replay_parallel returns every record");
}

/// A read-only look with `ring` returns the records of `model` from `first` on.
fn check_look<S: Disk>(storage: &S, dir: &Path, model: &Model, ring: Option<Arc<KeyRing>>, context: &str) {
    let look = ReadOnlyWal::open_with(storage.clone(), dir, ring).unwrap_or_else(|e| panic!("{context}: read-only look: {e}"));
    let first = look.recovery_info().segments.first().map_or(look.recovery_info().first_lsn, |s| s.first_lsn);
    let expected = expected_from(model, first);
    let mut n = 0;
    for record in look.read_from(first).unwrap() {
        let r = record.unwrap_or_else(|e| panic!("{context}: read-only look: {e}"));
        assert!(matches(&expected, n, r.lsn.0, &r.payload), "{context}: read-only look, LSN {}", r.lsn);
        n += 1;
    }
    assert_eq!(n, expected.len(), "{context}: a read-only look returns every record");
}

/// Whether `err` is what opening with this ring may fail with, changing nothing.
fn refusal_expected(drift: RingDrift, err: &WalError) -> bool {
    match drift {
        RingDrift::Whole => false,
        RingDrift::NoRing => matches!(err, WalError::KeyRingMissing { .. }),
        RingDrift::MissingKey => matches!(err, WalError::UnknownKeyId { .. }),
        RingDrift::WrongKey => matches!(err, WalError::WrongKey { .. }),
        RingDrift::RefusePlaintext => matches!(err, WalError::PlaintextRefused { .. }),
    }
}

/// Writes the next segment with a `WalWriter` (after a clean close of the log): some records,
/// synced, sealed or left open for the next open to seal.
fn write_segment<S: Disk>(storage: &S, dir: &Path, rng: &mut SimRng, model: &mut Model, id: SegmentId, first: Lsn) -> u64 {
    let alignment = [512, 4096, 8192, 65536][rng.below(4) as usize];
    let config = WalWriterConfig { direct_io: false, alignment, batch_bytes: (4 * alignment).max(16 << 10) };
    let mut writer = WalWriter::create_with(storage.clone(), dir, id, first, config).unwrap();
    for _ in 0..1 + rng.below(30) {
        let lsn = writer.next_lsn().0;
        let bytes = payload(rng, lsn, 400_000);
        writer.append(Record::new(TY, &bytes)).unwrap();
        model.insert(lsn, Some(bytes));
    }
    if rng.below(2) == 0 { writer.finish().unwrap().end_lsn.0 - 1 } else { writer.sync().unwrap().0 }
}

struct Round<'a> {
    rng: &'a mut SimRng,
    model: &'a mut Model,
    keys: &'a mut Keys,
    acked: &'a mut u64,
}

/// Opens the log with a drifted config and checks it; `None` where the open was refused as it
/// should be (and nothing changed).
fn open_and_check<S: Disk>(
    storage: &S,
    dir: &Path,
    round: &mut Round<'_>,
    sim: bool,
    context: &str,
) -> Option<(SegmentedWal<S>, SegmentedWalConfig)> {
    let (config, drift) = random_config(round.rng, dir, round.keys, sim);
    let context = format!("{context}: {drift:?} {config:?}");
    let before = storage.snapshot(dir);
    let wal = match SegmentedWal::open_with(storage.clone(), config.clone()) {
        Ok(wal) => wal,
        Err(err)
            if refusal_expected(drift, &err)
                || matches!(err, WalError::DirectIoAlignment { .. }) && config.direct_io && !config.allow_buffered_fallback =>
        {
            if std::env::var_os("NODEDB_WAL_DRIFT_TRACE").is_some() {
                eprintln!("{context}: refused: {err}");
            }
            let after = storage.snapshot(dir);
            let changed: Vec<String> = before
                .keys()
                .chain(after.keys())
                .filter(|n| before.get(*n) != after.get(*n))
                .map(|n| {
                    let (b, a) = (before.get(n).map_or(&[][..], |v| &v[..]), after.get(n).map_or(&[][..], |v| &v[..]));
                    let at = b.iter().zip(a).position(|(x, y)| x != y).unwrap_or(b.len().min(a.len()));
                    format!("{n}: {} -> {} bytes, first difference at {at}", b.len(), a.len())
                })
                .collect();
            assert!(changed.is_empty(), "{context}: the refused open ({err}) changed the directory: {changed:?}");
            return None;
        }
        Err(err) => panic!("{context}: open failed: {err}"),
    };
    let last = wal.recovery_info().last_lsn.0;
    if std::env::var_os("NODEDB_WAL_DRIFT_TRACE").is_some() {
        let info = wal.recovery_info();
        eprintln!("{context}: opened: {} records, {} segments, torn {:?}", info.record_count, info.segments.len(), info.torn_tail);
    }
    assert!(last >= *round.acked, "{context}: acknowledged LSN {} lost, recovered up to {last}", round.acked);
    // Recovery may have cut records a crash left unacknowledged: the model follows.
    round.model.retain(|&lsn, _| lsn <= last);
    check_readers(&wal, round.model, &context);
    check_look(storage, dir, round.model, Some(round.keys.ring(None)), &context);
    Some((wal, config))
}

/// Appends (some larger than a batch, some refused as larger than this config takes, some
/// tombstones), syncs, maybe truncates.
fn append_some<S: Disk>(wal: &SegmentedWal<S>, config: &SegmentedWalConfig, round: &mut Round<'_>, context: &str) -> Result<(), WalError> {
    for _ in 0..round.rng.below(60) {
        let lsn = wal.next_lsn().0;
        if round.rng.below(20) == 0 {
            let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: format!("c{lsn}"), purge_lsn: Lsn(lsn) };
            assert_eq!(wal.append_tombstone(&tombstone)?.0, lsn, "{context}");
            round.model.insert(lsn, None);
            continue;
        }
        let bytes = payload(round.rng, lsn, 4_000_000);
        match wal.append(Record::new(TY, &bytes)) {
            Ok(got) => {
                assert_eq!(got.0, lsn, "{context}");
                round.model.insert(lsn, Some(bytes));
            }
            Err(WalError::PayloadTooLarge { .. }) => assert!(bytes.len() > config.payload_bytes_max, "{context}"),
            Err(e) => return Err(e),
        }
        if round.rng.below(8) == 0 {
            *round.acked = (*round.acked).max(wal.sync()?.0);
        }
    }
    *round.acked = (*round.acked).max(wal.sync()?.0);
    if round.rng.below(3) == 0 && *round.acked > 1 {
        let checkpoint = Lsn(1 + round.rng.below(*round.acked));
        // A truncation that fails may have removed segments whose removal a power cut undoes:
        // the model keeps their records (readers start at the oldest the log still holds).
        wal.truncate_before(checkpoint)?;
        let oldest = wal.oldest_lsn().0;
        round.model.retain(|&lsn, _| lsn >= oldest);
    }
    Ok(())
}

fn faults(rng: &mut SimRng) -> FaultConfig {
    match rng.below(3) {
        0 => FaultConfig { sync_fail_ppm: 20_000, write_eio_ppm: 5_000, write_enospc_ppm: 5_000, sync_dir_fail_ppm: 20_000 },
        _ => FaultConfig::default(),
    }
}

fn run_seed<S: Disk>(mut storage: S, dir: &Path, seed: u64, rounds: u32, crash: impl Fn(&S, u64) -> Option<S>) {
    let sim = std::any::TypeId::of::<S>() == std::any::TypeId::of::<SimStorage>();
    storage.prepare();
    let mut rng = SimRng::new(seed);
    let mut model = Model::new();
    let mut keys = Keys::default();
    let mut acked = 0;
    for index in 0..rounds {
        let context = format!("seed {seed} round {index}");
        let mut round = Round { rng: &mut rng, model: &mut model, keys: &mut keys, acked: &mut acked };
        let Some((wal, config)) = open_and_check(&storage, dir, &mut round, sim, &context) else { continue };
        let f = if sim { faults(round.rng) } else { FaultConfig::default() };
        storage.set_faults(f);
        let result = append_some(&wal, &config, &mut round, &context);
        storage.set_faults(FaultConfig::default());
        if let Err(err) = result {
            assert!(f != FaultConfig::default(), "{context}: {err}");
            // The application reopens the failed log under the same kernel with another config,
            // or the power is cut first.
            drop(wal);
            if round.rng.below(2) == 0
                && let Some((wal, config)) = open_and_check(&storage, dir, &mut round, sim, &format!("{context} (reopened after {err})"))
            {
                storage.set_faults(f);
                let _ = append_some(&wal, &config, &mut round, &context);
                storage.set_faults(FaultConfig::default());
                drop(wal);
            }
            storage = crash(&storage, round.rng.next_u64()).expect("faults only on the simulated disk");
            continue;
        }
        check_readers(&wal, round.model, &format!("{context} (before closing)"));
        match round.rng.below(4) {
            0 => wal.close().unwrap(),
            1 => drop(wal),
            2 => {
                // A segment may follow only a sealed one; a close seals the newest. An open and
                // close without appends (harmless after a clean close) learns where the next
                // segment starts.
                wal.close().unwrap();
                let wal = SegmentedWal::open_with(storage.clone(), config.clone()).unwrap();
                let (next_id, next_lsn) = (wal.segments().last().map_or(1, |s| s.id.0 + 1), wal.next_lsn());
                wal.close().unwrap();
                *round.acked = write_segment(&storage, dir, round.rng, round.model, SegmentId(next_id), next_lsn);
            }
            _ => {
                // Unacknowledged records after the last sync, then a power cut.
                for _ in 0..round.rng.below(5) {
                    let lsn = wal.next_lsn().0;
                    let bytes = payload(round.rng, lsn, config.payload_bytes_max);
                    wal.append(Record::new(TY, &bytes)).unwrap();
                    round.model.insert(lsn, Some(bytes));
                }
                match crash(&storage, round.rng.next_u64()) {
                    Some(after) => {
                        storage = after;
                        drop(wal);
                    }
                    None => wal.close().unwrap(),
                }
            }
        }
    }
}

fn seeds() -> std::ops::Range<u64> {
    if let Some(seed) = std::env::var("NODEDB_WAL_DRIFT_SEED").ok().and_then(|s| s.parse().ok()) {
        return seed..seed + 1;
    }
    0..std::env::var("NODEDB_WAL_DRIFT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40)
}

#[test]
fn a_log_reopened_under_drifting_configs_returns_every_acknowledged_record_sim() {
    for seed in seeds() {
        let sim = SimStorage::new(seed, FaultConfig::default());
        run_seed(sim, Path::new("/drift"), seed, 12, |s, seed| Some(s.crash(seed)));
    }
}

#[test]
fn a_log_reopened_under_drifting_configs_returns_every_acknowledged_record_fs() {
    for seed in seeds().take(8) {
        let tmp = tempfile::tempdir().unwrap();
        run_seed(FsStorage::new(), tmp.path(), seed, 8, |_, _| None);
    }
}

/// A double-write buffer config of random geometry and mode; the simulation takes O_DIRECT in
/// 4096-byte units only.
fn random_dwb_config(rng: &mut SimRng) -> nodedb_wal::DwbConfig {
    use nodedb_wal::DwbMode;
    let mut c = dwb_support::config(DwbMode::Buffered);
    c.block_len = [512, 4096, 8192][rng.below(3) as usize];
    c.batch_bytes_max = ([16 << 10, 32 << 10, 64 << 10][rng.below(3) as usize] as usize).next_multiple_of(c.block_len);
    c.ring_bytes = (c.batch_bytes_max as u64) * (1 + rng.below(6));
    c.mode = match rng.below(8) {
        0 => DwbMode::Off,
        1..=3 if c.block_len >= 4096 => DwbMode::Direct,
        _ => DwbMode::Buffered,
    };
    c
}

/// Random batches and power cuts, the buffer reopened after each with another geometry (block
/// length, ring size, batch size) and mode: after every recovery each page holds its
/// acknowledged version, or the version of the batch the cut interrupted.
#[test]
fn a_double_write_buffer_reopened_with_another_geometry_or_mode_keeps_every_page_old_or_new() {
    use dwb_support::{borrow, disk, note_acknowledged, open, random_batch, versions, versions_after_crash};
    use nodedb_wal::DwbMode;
    use nodedb_wal::storage::faulty::FaultyStorage;
    for seed in seeds() {
        let mut rng = SimRng::new(seed);
        let mut sim = disk(seed);
        let mut faulty = FaultyStorage::new(sim.clone());
        let mut config = random_dwb_config(&mut rng);
        let (mut dwb, _) = open(faulty.clone(), config.clone());
        let mut acked = versions(&sim);
        let mut next_version = 2;
        for step in 0..30 {
            let count = 1 + rng.below(12) as usize;
            let batch = random_batch(&mut rng, count, &mut next_version);
            // Off writes pages in place unprotected: a cut there may tear them, as promised.
            let cut = config.mode != DwbMode::Off && rng.below(3) == 0;
            if cut {
                faulty.cut_power_after(rng.below(2 * count as u64 + 8));
            }
            let result = dwb.write_pages(&borrow(&batch));
            faulty.restore_power();
            if result.is_ok() {
                note_acknowledged(&mut acked, &batch);
            }
            if !cut {
                result.as_ref().unwrap();
                if rng.below(4) != 0 {
                    continue;
                }
            }
            drop(dwb);
            let after = if cut { sim.crash(rng.next_u64()) } else { sim.clone() };
            config = random_dwb_config(&mut rng);
            faulty = FaultyStorage::new(after.clone());
            (dwb, _) = open(faulty.clone(), config.clone());
            acked = versions_after_crash(&after, &acked, &batch, result.is_err(), &format!("seed {seed} step {step} ({config:?})"));
            sim = after;
        }
    }
}

/// On a disk of 4096-byte sectors (root, loop devices): a config with finer blocks is refused
/// at open and changes nothing, or falls back to buffered I/O where it allows that.
#[test]
fn a_log_reopened_under_drifting_configs_returns_every_acknowledged_record_4kn() {
    for kind in [common::FsKind::Ext4, common::FsKind::Xfs] {
        let fs = match common::LoopFs::create_with_sectors(kind, 4096) {
            Ok(fs) => fs,
            Err(e) => {
                eprintln!("SKIPPED: cannot make and mount an {} file system on a 4096-byte-sector loop device ({e})", kind.name());
                return;
            }
        };
        // Blocks finer than the disk's are refused at open only where the kernel says what
        // O_DIRECT needs; elsewhere they would fail at the first write, as documented.
        let probe = fs.path().join("probe");
        let mode = nodedb_wal::storage::OpenMode { create: true, write: false, direct: true, create_new: false };
        let file = FsStorage::new().open(&probe, mode).expect("O_DIRECT open");
        if nodedb_wal::storage::StorageFile::direct_io_alignment(&file).and_then(|a| a.required()).is_none() {
            eprintln!("SKIPPED: the kernel does not report O_DIRECT alignment on {} (statx STATX_DIOALIGN needs Linux 6.1)", kind.name());
            return;
        }
        for seed in seeds().take(4) {
            let dir = fs.path().join(format!("log-{seed}"));
            run_seed(FsStorage::new(), &dir, seed, 8, |_, _| None);
        }
    }
}
