//! Valid logs to damage: a few multi-segment logs written by the crate itself, built once per
//! process and kept as file images, with every record appended to them (the model readers are
//! held to).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use nodedb_wal::recovery::inspect_dir;
use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{
    CalvinAppliedPayload, CollectionTombstonePayload, KeyRing, Lsn, Record, RecordType, Scope, SecureKey, SegmentId, SegmentedWal,
    SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload,
};

/// Where every log of these targets lives on the simulated disk.
pub const DIR: &str = "/log";

/// How the log was left: each a state a reader meets in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Closed: every segment sealed.
    Closed,
    /// A power cut once every append was acknowledged: the newest segment open (no close
    /// sealed it), its last batch whole.
    Open,
    /// A power cut with appends in flight: the newest segment may end in a torn batch.
    Crashed,
    /// Crashed, reopened (recovery sealed the newest segment) and written on, with some
    /// segments truncated and their files reused.
    Reused,
}

/// A log's files and what was appended to it.
#[derive(Debug)]
pub struct BaseLog {
    pub encrypted: bool,
    /// Segments of more than 1 MiB: read with helper threads (read-ahead, checking ahead).
    pub large: bool,
    /// File name and bytes, sorted by name.
    pub files: Vec<(String, Vec<u8>)>,
    /// Every record ever appended, by LSN: more than one where a crash tore records away and
    /// their LSNs were issued again.
    pub written: BTreeMap<u64, Vec<(RecordType, Vec<u8>)>>,
    /// The first and last LSN recovery finds in the undamaged log.
    pub lsns: (Lsn, Lsn),
    /// Its newest segment.
    pub newest: SegmentId,
}

impl BaseLog {
    /// Where a read starts, by a byte of the input: the log's first record (0), LSN 0 (1: "from
    /// the start", which a truncated log no longer holds), or one of its records or the one after
    /// the last.
    pub fn from(&self, pick: u8) -> Lsn {
        let (first, last) = self.lsns;
        match pick {
            0 => first,
            1 => Lsn::ZERO,
            _ => Lsn(first.0 + u64::from(pick) % (last.0 + 2 - first.0)),
        }
    }
}

/// A variant's number (0..16): bit 0 encrypted, bits 1-2 the ending, bit 3 large segments.
pub const VARIANTS: u8 = 16;

/// The log of variant `variant % VARIANTS`, built on first use.
pub fn base(variant: u8) -> Arc<BaseLog> {
    static LOGS: OnceLock<Mutex<BTreeMap<u8, Arc<BaseLog>>>> = OnceLock::new();
    let variant = variant % VARIANTS;
    let mut logs = LOGS.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(logs.entry(variant).or_insert_with(|| Arc::new(build(variant))))
}

/// The fixed test key of encrypted variants.
pub fn key_ring(encrypted: bool) -> Option<Arc<KeyRing>> {
    encrypted.then(|| Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [0x5A; 32]))))
}

/// The config every log here is written and opened with: 512-byte blocks, small segments, so
/// that a few dozen records make several segments, and records large enough (about 2 KiB on
/// average) for sealed segments to keep header indexes. Large segments hold 1.5 MiB, which
/// readers read (or map, on real files) with a helper thread.
pub fn config(encrypted: bool, large: bool) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.direct_io = false;
    c.alignment = 512;
    c.segment_bytes_target = if large { 1536 * 1024 } else { 16 * 1024 };
    c.batch_bytes_max = if large { 256 * 1024 } else { 8 * 1024 };
    c.zero_fill_bytes = 0;
    c.key_ring = key_ring(encrypted);
    c
}

fn build(variant: u8) -> BaseLog {
    let (encrypted, large) = (variant & 1 != 0, variant & 8 != 0);
    // Records of about 2 KiB, or 16 KiB in large segments.
    let scale = if large { 8 } else { 1 };
    let ending = [Ending::Closed, Ending::Open, Ending::Crashed, Ending::Reused][usize::from(variant >> 1) & 3];
    let mut sim = SimStorage::new(u64::from(variant), FaultConfig::default());
    let mut written = BTreeMap::new();
    let wal = SegmentedWal::open_with(sim.clone(), config(encrypted, large)).expect("a fresh log opens");
    append_some(&wal, &mut written, 0, 40 * scale, scale as usize);
    match ending {
        Ending::Closed => wal.close().expect("a clean close"),
        Ending::Open => {
            let crashed = sim.crash(u64::from(variant));
            drop(wal);
            sim = crashed;
        }
        Ending::Crashed | Ending::Reused => {
            // A batch written whose fdatasync failed, then a power cut: any subset of its
            // sectors may have landed. (One batch, appended at once and written by the sync,
            // so that the images do not depend on the flusher's timing.)
            sim.fail_next_sync();
            let ty = RecordType::optional(0x102);
            let payloads: Vec<Vec<u8>> = (0..3u8).map(|k| vec![0xC0 ^ k; 1500 + usize::from(k) * 200]).collect();
            let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(ty, p)).collect();
            let lsns = wal.append_batch(&records).expect("a batch");
            for (lsn, payload) in (lsns.start().0..).zip(payloads) {
                written.entry(lsn).or_default().push((ty, payload));
            }
            assert!(wal.sync().is_err(), "the sync fails");
            let crashed = sim.crash(u64::from(variant) * 7 + 1);
            drop(wal);
            sim = crashed;
        }
    }
    if ending == Ending::Reused {
        let wal = SegmentedWal::open_with(sim.clone(), config(encrypted, large)).expect("a crashed log reopens");
        let checkpoint = Lsn(wal.durable_lsn().0 / 2);
        wal.truncate_before(checkpoint).expect("truncation");
        append_some(&wal, &mut written, 1000, 30 * scale, scale as usize);
        drop(wal);
    }
    let info = inspect_dir(&sim, Path::new(DIR), key_ring(encrypted).as_deref()).expect("the undamaged log opens");
    let newest = info.segments.last().expect("segments").id;
    BaseLog { encrypted, large, files: files_of(&sim), written, lsns: (info.first_lsn, info.last_lsn), newest }
}

/// Appends `count` records (`seed` varies them): mostly application records of 1-3 KiB (times
/// `scale`) in
/// several scopes, with a tombstone, a temporal purge, a Calvin position and an atomic group
/// among them, synced every few records (so that segments hold several batches) and at the end.
fn append_some(
    wal: &SegmentedWal<SimStorage>,
    written: &mut BTreeMap<u64, Vec<(RecordType, Vec<u8>)>>,
    seed: u32,
    count: u32,
    scale: usize,
) {
    let mut note = |lsn: Lsn, ty: RecordType, payload: Vec<u8>| written.entry(lsn.0).or_default().push((ty, payload));
    for i in seed..seed + count {
        match i % 13 {
            5 => {
                let tombstone = CollectionTombstonePayload {
                    database: 1,
                    tenant: i,
                    collection: format!("c{i}"),
                    purge_lsn: Lsn(wal.next_lsn().0 / 2),
                };
                let lsn = wal.append_tombstone(&tombstone).expect("tombstone");
                note(lsn, RecordType::COLLECTION_TOMBSTONE, tombstone.encode().expect("short name"));
            }
            8 => {
                let purge = TemporalPurgePayload {
                    engine: TemporalPurgeEngine::Timeseries,
                    collection: format!("m{i}"),
                    cutoff_unix_ms: i64::from(i) * 1000,
                    purged_count: u64::from(i),
                };
                let lsn = wal.append_temporal_purge(&purge, Scope::default()).expect("purge");
                note(lsn, RecordType::TEMPORAL_PURGE, purge.encode().expect("short name"));
            }
            10 => {
                let applied = CalvinAppliedPayload { epoch: u64::from(i), position: i, vshard: 2 };
                let lsn = wal.append_calvin_applied(&applied, Scope::default()).expect("calvin");
                note(lsn, RecordType::CALVIN_APPLIED, applied.encode().to_vec());
            }
            11 => {
                let ty = RecordType::optional(0x101);
                let payloads: Vec<Vec<u8>> = (0..3u8).map(|k| vec![i as u8 ^ k; 700 + usize::from(k) * 300]).collect();
                let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(ty, p)).collect();
                let lsns = wal.append_group(&records).expect("group");
                for (lsn, payload) in (lsns.start().0..).zip(payloads) {
                    note(Lsn(lsn), ty, payload);
                }
            }
            _ => {
                let ty = RecordType::optional(0x100 + (i % 3) as u16);
                let payload: Vec<u8> = (0..(1000 + (i as usize * 397) % 2200) * scale).map(|b| (b as u32 ^ i) as u8).collect();
                let scope = Scope { database: i % 2, tenant: i % 5, vshard: i % 7 };
                let lsn = wal.append(Record::new(ty, &payload).scoped(scope)).expect("append");
                note(lsn, ty, payload);
            }
        }
        if i % 4 == 3 {
            wal.sync().expect("sync");
        }
    }
    wal.sync().expect("sync");
}

/// Every file of the log directory, sorted by name.
fn files_of(sim: &SimStorage) -> Vec<(String, Vec<u8>)> {
    let mut names = sim.list(Path::new(DIR)).expect("the log directory");
    names.sort();
    names.into_iter().filter_map(|name| Some((name.clone(), sim.read_file(&Path::new(DIR).join(&name))?))).collect()
}

/// A simulated disk holding exactly `files` in [`DIR`], durably.
pub fn sim_with(files: &[(String, Vec<u8>)]) -> SimStorage {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new(DIR);
    sim.create_dir_all(dir).expect("sim dir");
    for (name, bytes) in files {
        let file = sim.open(&dir.join(name), OpenMode { create: true, create_new: false, write: true, direct: false }).expect("sim open");
        file.write_at(bytes, 0).expect("sim write");
        file.sync_data().expect("sim sync");
    }
    sim.sync_dir(dir).expect("sim dir sync");
    sim
}

/// Damages the files of the log in `dir` of `storage` as `ops` say (see [`damage`]), in place.
pub fn damage_in_place<S: Storage>(storage: &S, dir: &Path, ops: &[u8]) {
    let mut names = storage.list(dir).expect("the log directory");
    names.sort();
    let before: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|name| {
            let file = storage
                .open(&dir.join(&name), OpenMode { create: false, create_new: false, write: false, direct: false })
                .expect("a log file");
            let mut bytes = vec![0; usize::try_from(file.len().expect("its length")).expect("fits")];
            let read = file.read_at(&mut bytes, 0).expect("its bytes");
            bytes.truncate(read);
            (name, bytes)
        })
        .collect();
    let mut after = before.clone();
    damage(&mut after, ops);
    for (name, bytes) in &before {
        let path = dir.join(name);
        match after.iter().find(|(n, _)| n == name) {
            None => storage.remove(&path).expect("remove"),
            Some((_, new)) if new != bytes => {
                let file =
                    storage.open(&path, OpenMode { create: false, create_new: false, write: true, direct: false }).expect("a log file");
                file.set_len(0).and_then(|()| file.write_at(new, 0)).and_then(|()| file.sync_data()).expect("rewritten");
            }
            Some(_) => {}
        }
    }
}

/// Damages a log's files as `ops` say, five bytes an operation (at most eight): what, which
/// file, where (a fraction of its length, 16 bits) and an argument. Flipped bits, overwritten
/// bytes, zeroed ranges, truncation (anywhere, or to a sector), a sector copied from another
/// file, zeros appended, a file removed.
pub fn damage(files: &mut Vec<(String, Vec<u8>)>, ops: &[u8]) {
    for op in ops.chunks_exact(5).take(8) {
        if files.is_empty() {
            return;
        }
        let (which, arg) = (usize::from(op[1]) % files.len(), op[4]);
        let len = files[which].1.len();
        let at = (usize::from(u16::from_le_bytes([op[2], op[3]])) * len) >> 16;
        let other = files[usize::from(arg) % files.len()].1.get(at & !511..).map(|b| b[..b.len().min(512)].to_vec());
        let bytes = &mut files[which].1;
        match op[0] % 8 {
            0 => bytes.get_mut(at).into_iter().for_each(|b| *b ^= 1 << (arg % 8)),
            1 => bytes.get_mut(at).into_iter().for_each(|b| *b = arg),
            2 => bytes.truncate(at),
            3 => bytes.iter_mut().skip(at).take(1 + usize::from(arg) * 8).for_each(|b| *b = 0),
            4 => drop(files.remove(which)),
            5 => {
                let sector = other.unwrap_or_default();
                let end = (at & !511) + sector.len();
                if end <= len {
                    bytes[at & !511..end].copy_from_slice(&sector);
                }
            }
            6 => bytes.resize(len + usize::from(arg) * 64, 0),
            _ => bytes.truncate(at & !511),
        }
    }
}
