//! Every feature at once, in one seeded crash simulation: bugs live where features meet.
//!
//! Each seed runs one to six lives of a database on one simulated disk. In a life, at random:
//! records of three types (optional and required) over a few scopes, from empty to larger
//! than a batch buffer and up to `payload_bytes_max`, through `append`, `append_durable`,
//! `append` + `wait_durable`, `append_batch`, `append_group` and `append_group_entries`;
//! collection tombstones and temporal purges, alone and inside groups; `sync`; truncation
//! below the durable LSN; key rotation (a new active key at the next roll, or encryption
//! turned on in a log that began in plaintext) and retirement of keys the log no longer needs;
//! page writes through a double-write buffer on the same disk; I/O faults (failed fdatasyncs,
//! EIO, ENOSPC, failed directory fsyncs). One life in four runs all of it from several threads
//! at once and cuts the power while they run; the others cut it after their last operation,
//! and half of those that failed reopen the log under the same kernel first. One restart in
//! four opens the log and the buffer under heavier faults first (recovery's own writes fail),
//! and half the time cuts the power again right after. The database keeps its key ring across
//! restarts as a real one would: every key it has not retired.
//!
//! After every reopen, against the model: every acknowledged record is there with its bytes,
//! type and scope, through `read_from`, `read_mapped` (reads, on the simulation), the lazy
//! reader (payloads of a random third) and `replay_parallel`; LSNs are dense from the first
//! kept one; nothing never appended appears; groups are whole; the tombstones and purges
//! recovery gathers are exactly those of the records kept (they go with their segments), and
//! `TombstoneSet::is_live` drops exactly the rows below a kept drop's purge LSN; a read-only
//! look finds the same; every page holds its acknowledged version, or the whole failed batch.
//! Once the log has reported `Poisoned`, it acknowledges nothing more and takes no append.
//!
//! `NODEDB_WAL_EVERYTHING_SEEDS` sets how many seeds run (2000 in release builds, 200 in debug);
//! `NODEDB_WAL_EVERYTHING_SEED` runs one. A seed's single-threaded lives are deterministic.

mod common;
mod dwb_support;
#[allow(dead_code, reason = "the group model of the group tests, of which this uses the checks")]
mod groups_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::Gated;
use dwb_support::{FILES, PAGES, Pages, borrow, note_acknowledged, random_batch, versions};
use groups_support::{Member, Model};
use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, SimRng};
use nodedb_wal::{
    CollectionTombstonePayload, DoubleWriteBuffer, DwbMode, GroupEntry, KeyRing, Lsn, ReadOnlyWal, Record, RecordType, Scope, SecureKey,
    SegmentedWal, SegmentedWalConfig, SimStorage, TemporalPurgeEngine, TemporalPurgePayload, WalError, WalRecord,
};

const DIR: &str = "/sim/wal";
const BATCH_BYTES: usize = 12 * 1024;
const PAYLOAD_BYTES_MAX: usize = 40 * 1024;
const TYPES: [RecordType; 3] = [RecordType::optional(0x100), RecordType::optional(0x2A7), RecordType::required(0x150)];
/// Few names and scopes, so that drops meet rows and each other.
const COLLECTIONS: [&str; 3] = ["orders", "cpu", "logs"];

/// What a seed fixes for all its lives.
#[derive(Clone, Copy, Debug)]
struct Setup {
    direct_io: bool,
    /// `None`: no key ring at all; `Some(false)`: a ring that starts without an active key
    /// (plaintext until the first rotation); `Some(true)`: encrypted from the first segment.
    keys: Option<bool>,
    dwb: DwbMode,
}

impl Setup {
    fn of(seed: u64) -> Setup {
        let keys = match seed % 4 {
            0 => None,
            2 => Some(false),
            _ => Some(true),
        };
        Setup { direct_io: seed % 3 != 2, keys, dwb: if (seed / 2).is_multiple_of(2) { DwbMode::Direct } else { DwbMode::Buffered } }
    }
}

/// The key a database keeps under `id`.
fn key(id: u32) -> SecureKey {
    SecureKey::from_bytes(&mut [(id as u8).wrapping_mul(37) ^ 0x5A; 32])
}

/// The database's key store, which outlives every crash: the keys it still holds (all but the
/// retired), the active one, and the ids it retired.
#[derive(Debug, Default)]
struct Keys {
    held: BTreeSet<u32>,
    active: Option<u32>,
    retired: Vec<u32>,
    next_id: u32,
}

impl Keys {
    fn new(setup: Setup) -> Keys {
        let active = (setup.keys == Some(true)).then_some(1);
        Keys { held: active.into_iter().collect(), active, retired: Vec::new(), next_id: 2 }
    }

    /// The ring a restart builds from the store.
    fn ring(&self) -> Arc<KeyRing> {
        let ring = KeyRing::new();
        for &id in &self.held {
            ring.insert(id, key(id)).unwrap();
        }
        if let Some(id) = self.active {
            ring.set_active(id).unwrap();
        }
        for &id in &self.retired {
            ring.retire(id).unwrap();
        }
        Arc::new(ring)
    }
}

/// The pages behind the double-write buffer: acknowledged versions, and the batch whose write
/// failed or was cut (all of it may have landed, or none).
#[derive(Debug)]
struct PageState {
    acked: Vec<Option<u64>>,
    next_version: u64,
    in_doubt: Option<Pages>,
}

/// What the database knows across lives.
struct Db {
    seed: u64,
    setup: Setup,
    model: Mutex<Model>,
    keys: Mutex<Keys>,
    pages: Mutex<PageState>,
    checkpoint: AtomicU64,
    next_group: AtomicU64,
}

/// How often each interaction happened over a run, so that a run that passes can be seen to
/// have reached them.
#[derive(Debug)]
struct Tally {
    retired_keys: AtomicU64,
    poisoned_lives: AtomicU64,
    truncations: AtomicU64,
    pages_in_doubt: AtomicU64,
    drops_gathered: AtomicU64,
    purges_gathered: AtomicU64,
    shared_lives: AtomicU64,
    failed_opens: AtomicU64,
}

static TALLY: Tally = Tally {
    retired_keys: AtomicU64::new(0),
    poisoned_lives: AtomicU64::new(0),
    truncations: AtomicU64::new(0),
    pages_in_doubt: AtomicU64::new(0),
    drops_gathered: AtomicU64::new(0),
    purges_gathered: AtomicU64::new(0),
    shared_lives: AtomicU64::new(0),
    failed_opens: AtomicU64::new(0),
};

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One life: the open log and buffer, the ring they were opened with, and the durable LSN the
/// log had when it first reported `Poisoned`.
struct Life<'a> {
    db: &'a Db,
    wal: SegmentedWal<SimStorage>,
    dwb: DoubleWriteBuffer<SimStorage>,
    ring: Option<Arc<KeyRing>>,
    poisoned: Mutex<Option<Lsn>>,
    /// Whether several threads use the log: an append that returned before another thread
    /// saw the poison may be noted after it.
    shared: AtomicBool,
}

impl Life<'_> {
    /// Notes records the log handed LSNs to; a poisoned log must have refused them.
    fn appended(&self, first: Lsn, members: &[Member], grouped: bool) {
        let unknown = self.shared.load(Ordering::Relaxed) || lock(&self.poisoned).is_none();
        assert!(unknown, "seed {}: a poisoned log took an append at {first}", self.db.seed);
        let mut model = lock(&self.db.model);
        if grouped {
            model.appended(first, self.db.next_group.fetch_add(1, Ordering::Relaxed), members);
        } else {
            for (lsn, m) in (first.0..).zip(members) {
                model.appended(Lsn(lsn), self.db.next_group.fetch_add(1, Ordering::Relaxed), std::slice::from_ref(m));
            }
        }
    }

    /// Notes an acknowledgement; a poisoned log acknowledges nothing past its failure.
    fn acknowledged(&self, lsn: Lsn) {
        if let Some(at) = *lock(&self.poisoned) {
            assert!(lsn <= at, "seed {}: a poisoned log acknowledged {lsn} past {at}", self.db.seed);
        }
        let mut model = lock(&self.db.model);
        model.acked = model.acked.max(lsn.0);
    }

    /// Runs one operation and keeps track of poisoning.
    fn step(&self, rng: &mut SimRng, solo: bool) -> Result<(), WalError> {
        let result = operate(self, rng, solo);
        let mut poisoned = lock(&self.poisoned);
        if let (Err(WalError::Poisoned { .. }), None) = (&result, *poisoned) {
            *poisoned = Some(self.wal.durable_lsn());
            count(&TALLY.poisoned_lives, 1);
        }
        if let Some(at) = *poisoned {
            assert_eq!(self.wal.durable_lsn(), at, "seed {}: the durable LSN moved after the log was poisoned", self.db.seed);
        }
        result
    }
}

fn payload(rng: &mut SimRng) -> Vec<u8> {
    let len = match rng.below(24) {
        0 => 0,
        1 => BATCH_BYTES + rng.below((PAYLOAD_BYTES_MAX - BATCH_BYTES) as u64) as usize,
        2 => PAYLOAD_BYTES_MAX - rng.below(64) as usize,
        3..=6 => rng.below(4000) as usize,
        _ => rng.below(300) as usize,
    };
    let tag = rng.next_u64();
    (0..len).map(|i| (tag >> (i % 8 * 8)) as u8 ^ i as u8).collect()
}

fn scope(rng: &mut SimRng) -> Scope {
    Scope { database: rng.below(2) as u32, tenant: rng.below(2) as u32, vshard: rng.below(4) as u32 }
}

fn collection(rng: &mut SimRng) -> String {
    COLLECTIONS[rng.below(COLLECTIONS.len() as u64) as usize].to_owned()
}

/// The collection a row belongs to, as only its engine can tell: from its bytes.
fn collection_of(payload: &[u8]) -> &'static str {
    COLLECTIONS[payload.first().map_or(0, |&b| b as usize % COLLECTIONS.len())]
}

fn plain(rng: &mut SimRng) -> Member {
    let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
    Member::Plain(Record::new(ty, &[]).scoped(scope(rng)), payload(rng))
}

/// A drop whose purge LSN is at most `next` (the log's next LSN), mostly close to it.
fn tombstone(rng: &mut SimRng, next: Lsn) -> CollectionTombstonePayload {
    let back = if rng.below(4) == 0 { rng.below(next.0) } else { rng.below(next.0.min(16)) };
    CollectionTombstonePayload {
        database: rng.below(2) as u32,
        tenant: rng.below(2) as u32,
        collection: collection(rng),
        purge_lsn: Lsn(next.0 - back),
    }
}

fn purge(rng: &mut SimRng) -> Member {
    let engine = if rng.below(2) == 0 { TemporalPurgeEngine::Timeseries } else { TemporalPurgeEngine::Columnar };
    let purge = TemporalPurgePayload {
        engine,
        collection: collection(rng),
        cutoff_unix_ms: rng.below(1 << 40) as i64,
        purged_count: rng.below(99),
    };
    Member::Purge(purge, scope(rng))
}

fn record_of(member: &Member) -> Record<'_> {
    match member.entry() {
        GroupEntry::Record(record) => record,
        _ => panic!("not a plain record: {member:?}"),
    }
}

/// One random operation. `solo`: this thread is the log's only user, so the LSN an
/// `append_durable` takes is known before it returns (and the record is in the model should
/// its sync fail).
fn operate(life: &Life, rng: &mut SimRng, solo: bool) -> Result<(), WalError> {
    let wal = &life.wal;
    match rng.below(100) {
        0..=19 => {
            let m = plain(rng);
            let lsn = wal.append(record_of(&m))?;
            life.appended(lsn, &[m], false);
        }
        20..=27 if solo => {
            let m = plain(rng);
            let lsn = wal.next_lsn();
            lock(&life.db.model).appended(lsn, u64::MAX - lsn.0, std::slice::from_ref(&m));
            let got = wal.append_durable(record_of(&m))?;
            assert_eq!(got, lsn, "seed {}: append_durable took another LSN", life.db.seed);
            life.appended(lsn, &[m], false);
            life.acknowledged(lsn);
        }
        20..=32 => {
            let m = plain(rng);
            let lsn = wal.append(record_of(&m))?;
            life.appended(lsn, &[m], false);
            wal.wait_durable(lsn)?;
            life.acknowledged(lsn);
        }
        33..=42 => {
            let members: Vec<Member> = (0..1 + rng.below(6)).map(|_| plain(rng)).collect();
            let records: Vec<Record<'_>> = members.iter().map(record_of).collect();
            let grouped = rng.below(2) == 0;
            let lsns = if grouped { wal.append_group(&records)? } else { wal.append_batch(&records)? };
            life.appended(*lsns.start(), &members, grouped);
            wait_sometimes(life, rng, *lsns.end())?;
        }
        43..=52 => {
            let next = wal.next_lsn();
            let members: Vec<Member> = (0..1 + rng.below(6))
                .map(|_| match rng.below(4) {
                    0 => Member::Tombstone(tombstone(rng, next)),
                    1 => purge(rng),
                    _ => plain(rng),
                })
                .collect();
            let entries: Vec<GroupEntry<'_>> = members.iter().map(Member::entry).collect();
            let lsns = wal.append_group_entries(&entries)?;
            life.appended(*lsns.start(), &members, true);
            wait_sometimes(life, rng, *lsns.end())?;
        }
        53..=57 => {
            let t = tombstone(rng, wal.next_lsn());
            let lsn = wal.append_tombstone(&t)?;
            life.appended(lsn, &[Member::Tombstone(t)], false);
        }
        58..=62 => {
            let m = purge(rng);
            let Member::Purge(p, scope) = &m else { unreachable!() };
            let lsn = wal.append_temporal_purge(p, *scope)?;
            life.appended(lsn, &[m], false);
        }
        63..=72 => {
            let lsn = wal.sync()?;
            life.acknowledged(lsn);
        }
        73..=79 => {
            let durable = wal.durable_lsn().0;
            if durable > 0 {
                // Mostly close to the durable LSN, so that segments under old keys go.
                let checkpoint = if rng.below(2) == 0 { durable - rng.below(durable.min(8)) } else { 1 + rng.below(durable) };
                // A truncation that fails may still have removed segments below it.
                life.db.checkpoint.fetch_max(checkpoint, Ordering::Relaxed);
                count(&TALLY.truncations, wal.truncate_before(Lsn(checkpoint))? as u64);
            }
        }
        80..=84 => rotate(life),
        85..=90 => retire(life, rng)?,
        _ => write_pages(life, rng)?,
    }
    Ok(())
}

/// A group or batch is acknowledged by a wait on its last LSN, half the time.
fn wait_sometimes(life: &Life, rng: &mut SimRng, last: Lsn) -> Result<(), WalError> {
    if rng.below(2) == 0 {
        life.wal.wait_durable(last)?;
        life.acknowledged(last);
    }
    Ok(())
}

/// A new active key (stored by the database first), used from the log's next roll on.
fn rotate(life: &Life) {
    let Some(ring) = &life.ring else { return };
    let mut keys = lock(&life.db.keys);
    let id = keys.next_id;
    keys.next_id += 1;
    keys.held.insert(id);
    keys.active = Some(id);
    ring.insert(id, key(id)).unwrap();
    ring.set_active(id).unwrap();
}

/// Retires a key that is not active; the database forgets it once the log lets it go.
fn retire(life: &Life, rng: &mut SimRng) -> Result<(), WalError> {
    let candidates: Vec<u32> = {
        let keys = lock(&life.db.keys);
        keys.held.iter().copied().filter(|&id| Some(id) != keys.active).collect()
    };
    if life.ring.is_none() || candidates.is_empty() {
        return Ok(());
    }
    let id = candidates[rng.below(candidates.len() as u64) as usize];
    match life.wal.retire_key(id) {
        Ok(()) => {
            let mut keys = lock(&life.db.keys);
            keys.held.remove(&id);
            keys.retired.push(id);
            count(&TALLY.retired_keys, 1);
            Ok(())
        }
        Err(WalError::KeyStillNeeded { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A batch of page writes through the buffer. After a failure the buffer refuses writes
/// (degraded or poisoned) for the rest of the life, so this stops writing then.
fn write_pages(life: &Life, rng: &mut SimRng) -> Result<(), WalError> {
    let mut pages = lock(&life.db.pages);
    if pages.in_doubt.is_some() {
        return Ok(());
    }
    let PageState { next_version, .. } = &mut *pages;
    let count = 1 + rng.below(6) as usize;
    let batch = random_batch(rng, count, next_version);
    match life.dwb.write_pages(&borrow(&batch)) {
        Ok(()) => note_acknowledged(&mut pages.acked, &batch),
        Err(e) => {
            pages.in_doubt = Some(batch);
            assert!(
                matches!(e, WalError::Io { .. } | WalError::Poisoned { .. } | WalError::DwbDegraded { .. }),
                "seed {}: a page write failed with {e}",
                life.db.seed
            );
        }
    }
    Ok(())
}

fn config(setup: Setup, ring: Option<Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.direct_io = setup.direct_io;
    c.key_ring = ring;
    c.segment_bytes_target = 48 * 1024;
    c.batch_bytes_max = BATCH_BYTES;
    c.batch_buffers = 3;
    c.payload_bytes_max = PAYLOAD_BYTES_MAX;
    c
}

/// Opens the log and the buffer (after a power cut, a read-only look first) and checks both
/// against the model; the model then takes what recovery returned as durable.
fn reopen<'a>(sim: &SimStorage, db: &'a Db, rng: &mut SimRng, after_cut: bool, at: &str) -> Life<'a> {
    sim.set_faults(FaultConfig::default());
    let ring = db.setup.keys.map(|_| lock(&db.keys).ring());
    let look = after_cut.then(|| ReadOnlyWal::open_with(sim.clone(), DIR, ring.clone()).unwrap_or_else(|e| panic!("{at}: look: {e}")));
    let wal = SegmentedWal::open_with(sim.clone(), config(db.setup, ring.clone())).unwrap_or_else(|e| panic!("{at}: reopen: {e}"));
    let records = check_log(&wal, db, rng, at);
    let info = wal.recovery_info();
    if let Some(look) = look {
        let seen = look.recovery_info();
        assert_eq!(
            (seen.last_lsn, &seen.tombstones, &seen.temporal_purges),
            (info.last_lsn, &info.tombstones, &info.temporal_purges),
            "{at}: a read-only look disagrees with the owner's recovery"
        );
        let looked: Vec<Lsn> = look.read_from(info.first_lsn).unwrap().map(|r| r.unwrap().lsn).collect();
        assert_eq!(looked, records.iter().map(|r| r.lsn).collect::<Vec<_>>(), "{at}: a look reads other records");
    }
    if std::env::var("NODEDB_WAL_EVERYTHING_TRACE").is_ok() {
        let keys = lock(&db.keys);
        eprintln!(
            "{at}: LSNs {}..={} in {} segments, {} drops, {} purges, keys held {:?} retired {:?}, torn {:?}",
            info.first_lsn,
            info.last_lsn,
            info.segments.len(),
            info.tombstones.len(),
            info.temporal_purges.len(),
            keys.held,
            keys.retired,
            info.torn_tail.map(|t| t.offset)
        );
    }
    note_recovered(db, info.last_lsn);
    let (dwb, _) = dwb_support::open(sim.clone(), dwb_support::config(db.setup.dwb));
    check_pages(sim, &mut lock(&db.pages), at);
    Life { db, wal, dwb, ring, poisoned: Mutex::new(None), shared: AtomicBool::new(false) }
}

/// What recovery returned it reports durable: the model forgets the rest (their LSNs are
/// issued again) and holds the next power cut to all of it.
fn note_recovered(db: &Db, last: Lsn) {
    let mut model = lock(&db.model);
    model.keep_up_to(last);
    model.acked = last.0;
}

/// A restart that meets faults too: recovery's own writes (a torn tail's seal, `FLOOR`,
/// `MANIFEST`, the buffer's repairs) fail at random, and half the time the power is cut right
/// after. An open may fail only with an I/O error; what one that succeeded returned must
/// match the model, and it is durable from then on.
fn open_under_faults(sim: SimStorage, db: &Db, rng: &mut SimRng, at: &str) -> SimStorage {
    let ring = db.setup.keys.map(|_| lock(&db.keys).ring());
    sim.set_faults(FaultConfig { sync_fail_ppm: 100_000, write_eio_ppm: 30_000, write_enospc_ppm: 30_000, sync_dir_fail_ppm: 100_000 });
    let opened = SegmentedWal::open_with(sim.clone(), config(db.setup, ring));
    let buffer = DoubleWriteBuffer::open_with(sim.clone(), dwb_support::config(db.setup.dwb)).and_then(|dwb| {
        for file in FILES {
            dwb.register_file(file, dwb_support::file_path(file), dwb_support::PAGE)?;
        }
        dwb.recover(dwb_support::check).map(|_| dwb)
    });
    let io = |e: &WalError| matches!(e, WalError::Io { .. } | WalError::Poisoned { .. } | WalError::DwbDegraded { .. });
    match &opened {
        Ok(wal) => {
            check_log(wal, db, rng, &format!("{at}, opened under faults"));
            note_recovered(db, wal.recovery_info().last_lsn);
        }
        Err(e) => {
            assert!(io(e), "{at}: an open under faults failed with {e:?}");
            count(&TALLY.failed_opens, 1);
        }
    }
    if let Err(e) = &buffer {
        assert!(io(e), "{at}: the buffer's recovery under faults failed with {e:?}");
    }
    let after = if rng.below(2) == 0 { sim.crash(rng.next_u64()) } else { sim };
    drop((opened, buffer));
    after
}

/// Checks the recovered log against the model with every reader; returns its records.
fn check_log(wal: &SegmentedWal<SimStorage>, db: &Db, rng: &mut SimRng, at: &str) -> Vec<WalRecord> {
    let info = wal.recovery_info();
    let checkpoint = db.checkpoint.load(Ordering::Relaxed);
    assert!(info.first_lsn.0 <= checkpoint.max(1), "{at}: records at or above the checkpoint {checkpoint} were removed: {info:?}");
    let records: Vec<WalRecord> =
        wal.read_from(info.first_lsn).unwrap().collect::<Result<_, _>>().unwrap_or_else(|e| panic!("{at}: read: {e}"));
    for (r, lsn) in records.iter().zip(info.first_lsn.0..) {
        assert_eq!(r.lsn.0, lsn, "{at}: LSNs must be dense from {}", info.first_lsn);
    }
    assert_eq!(info.first_lsn.0 + records.len() as u64, info.last_lsn.0 + 1, "{at}: replay and recovery disagree: {info:?}");
    assert_eq!(wal.next_lsn(), info.last_lsn.next(), "{at}");
    lock(&db.model).check(info, &records, at);
    count(&TALLY.drops_gathered, info.tombstones.len() as u64);
    count(&TALLY.purges_gathered, info.temporal_purges.len() as u64);
    check_replay_filter(info, &records, at);
    let mapped: Vec<WalRecord> = wal.read_mapped(info.first_lsn).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(mapped, records, "{at}: read_mapped returns other records");
    let mut parallel = Vec::new();
    wal.replay_parallel(info.first_lsn, 2, |r| {
        parallel.push((r.lsn, r.payload.len()));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{at}: replay_parallel: {e}"));
    assert_eq!(parallel, records.iter().map(|r| (r.lsn, r.payload.len())).collect::<Vec<_>>(), "{at}: replay_parallel");
    check_lazy(wal, &records, rng, at);
    records
}

/// The lazy reader's headers are the records', and the payloads asked for (a random third)
/// are theirs.
fn check_lazy(wal: &SegmentedWal<SimStorage>, records: &[WalRecord], rng: &mut SimRng, at: &str) {
    let first = wal.recovery_info().first_lsn;
    let mut lazy = wal.lazy_reader(first).unwrap();
    let mut count = 0;
    while let Some(h) = lazy.next_header().unwrap_or_else(|e| panic!("{at}: lazy header: {e}")) {
        let r = records.get(count).unwrap_or_else(|| panic!("{at}: the lazy reader goes past {}", h.lsn));
        assert_eq!((h.lsn, h.record_type, h.scope), (r.lsn, r.record_type, r.scope), "{at}: lazy header");
        if rng.below(3) == 0 {
            assert_eq!(
                lazy.payload().unwrap_or_else(|e| panic!("{at}: lazy payload: {e}")),
                &r.payload[..],
                "{at}: lazy payload of {}",
                r.lsn
            );
        }
        count += 1;
    }
    assert_eq!(count, records.len(), "{at}: the lazy reader stops early");
}

/// A row is dropped exactly where a kept tombstone of its collection, database and tenant
/// names a purge LSN past it (the highest of them); a drop truncated away drops nothing.
fn check_replay_filter(info: &nodedb_wal::RecoveryInfo, records: &[WalRecord], at: &str) {
    let mut purge: BTreeMap<(u32, u32, String), Lsn> = BTreeMap::new();
    for r in records {
        if let Some(t) = r.tombstone().unwrap() {
            let e = purge.entry((t.database, t.tenant, t.collection.clone())).or_insert(t.purge_lsn);
            *e = (*e).max(t.purge_lsn);
        }
    }
    for r in records.iter().filter(|r| !r.record_type.is_reserved()) {
        let name = collection_of(&r.payload);
        let dropped = purge.get(&(r.scope.database, r.scope.tenant, name.to_owned())).is_some_and(|&p| r.lsn < p);
        assert_eq!(info.tombstones.is_live(r, name), !dropped, "{at}: LSN {} of {name} in {:?}", r.lsn, r.scope);
    }
}

/// After the buffer's recovery every page holds its acknowledged version, or the batch in
/// doubt landed whole.
fn check_pages(sim: &SimStorage, pages: &mut PageState, at: &str) {
    let got = versions(sim);
    match pages.in_doubt.take() {
        None => assert_eq!(got, pages.acked, "{at}: pages"),
        Some(batch) => {
            count(&TALLY.pages_in_doubt, 1);
            let mut landed = pages.acked.clone();
            note_acknowledged(&mut landed, &batch);
            assert!(got == pages.acked || got == landed, "{at}: pages {got:?}, acknowledged {:?}, in doubt {landed:?}", pages.acked);
        }
    }
    pages.acked = got;
}

fn faults(rng: &mut SimRng) -> FaultConfig {
    match rng.below(4) {
        0 => FaultConfig { sync_fail_ppm: 20_000, write_eio_ppm: 5_000, write_enospc_ppm: 5_000, sync_dir_fail_ppm: 20_000 },
        _ => FaultConfig::default(),
    }
}

/// A few threads run operations until one fails, while the power is cut at a random moment.
fn concurrent_life(life: &Life, sim: &SimStorage, rng: &mut SimRng) -> SimStorage {
    let seeds: Vec<u64> = (0..2 + rng.below(3)).map(|_| rng.next_u64()).collect();
    life.shared.store(true, Ordering::Relaxed);
    count(&TALLY.shared_lives, 1);
    std::thread::scope(|s| {
        for seed in seeds {
            s.spawn(move || {
                let mut rng = SimRng::new(seed);
                for _ in 0..rng.below(40) {
                    if life.step(&mut rng, false).is_err() {
                        return;
                    }
                }
            });
        }
        for _ in 0..rng.below(300) {
            std::thread::yield_now();
        }
        sim.crash(rng.next_u64())
    })
}

fn solo_life(life: &Life, rng: &mut SimRng) -> bool {
    let mut failed = false;
    for _ in 0..rng.below(60) {
        failed |= life.step(rng, true).is_err();
    }
    failed
}

fn run_seed(seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut sim = dwb_support::disk(rng.next_u64());
    let setup = Setup::of(seed);
    let mut restarts = SimRng::new(seed ^ 0x7265_7374_6172_7473);
    let pages = PageState { acked: vec![Some(1); FILES.len() * PAGES as usize], next_version: 2, in_doubt: None };
    let db = Db {
        seed,
        setup,
        model: Mutex::new(Model::default()),
        keys: Mutex::new(Keys::new(setup)),
        pages: Mutex::new(pages),
        checkpoint: AtomicU64::new(0),
        next_group: AtomicU64::new(0),
    };
    let mut life = reopen(&sim, &db, &mut rng, false, &format!("seed {seed}, first open"));
    for round in 0..1 + rng.below(6) {
        let at = format!("seed {seed} ({setup:?}), round {round}");
        let f = faults(&mut rng);
        sim.set_faults(f);
        let after = if rng.below(4) == 0 {
            concurrent_life(&life, &sim, &mut rng)
        } else {
            if solo_life(&life, &mut rng) && restarts.below(2) == 0 {
                // Reopened under the same kernel before the power cut: what this recovery
                // returns it reports durable, and the cut must keep it.
                drop(life);
                life = reopen(&sim, &db, &mut rng, false, &format!("{at}, reopened after a failure"));
                sim.set_faults(f);
                solo_life(&life, &mut restarts);
            }
            sim.crash(rng.next_u64())
        };
        drop(life);
        sim = after;
        if restarts.below(4) == 0 {
            sim = open_under_faults(sim, &db, &mut restarts, &at);
        }
        life = reopen(&sim, &db, &mut rng, true, &at);
        let m = plain(&mut rng);
        let lsn = life.wal.append_durable(record_of(&m)).unwrap_or_else(|e| panic!("{at}: append after recovery: {e}"));
        life.appended(lsn, &[m], false);
        life.acknowledged(lsn);
    }
}

/// Ends the process if one seed runs for minutes (they take milliseconds): a hung life would
/// otherwise stall the run with no word of which seed hung. Not a timing check: the bound only
/// turns a hang into a failure that names its seed.
struct Watchdog {
    seed: Arc<Mutex<(u64, std::time::Instant)>>,
}

impl Watchdog {
    const HUNG: std::time::Duration = std::time::Duration::from_secs(300);

    fn start() -> Watchdog {
        let seed = Arc::new(Mutex::new((0, std::time::Instant::now())));
        let watched = Arc::downgrade(&seed);
        std::thread::spawn(move || {
            while let Some(seed) = watched.upgrade() {
                let (at, since) = *seed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                drop(seed);
                if since.elapsed() > Self::HUNG {
                    eprintln!("seed {at} hung; reproduce with NODEDB_WAL_EVERYTHING_SEED={at} (threads may not replay it)");
                    std::process::exit(101);
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
        Watchdog { seed }
    }

    fn enter(&self, seed: u64) {
        *self.seed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (seed, std::time::Instant::now());
    }
}

#[test]
fn every_feature_at_once_survives_random_crashes() {
    if let Ok(one) = std::env::var("NODEDB_WAL_EVERYTHING_SEED") {
        return run_seed(one.parse().expect("a seed number"));
    }
    let default = if cfg!(debug_assertions) { 200 } else { 2000 };
    let seeds: u64 = std::env::var("NODEDB_WAL_EVERYTHING_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let watchdog = Watchdog::start();
    for seed in 0..seeds {
        watchdog.enter(seed);
        if std::panic::catch_unwind(|| run_seed(seed)).is_err() {
            panic!("the simulation failed; reproduce with NODEDB_WAL_EVERYTHING_SEED={seed}");
        }
    }
    eprintln!("{seeds} seeds: {TALLY:?}");
    if seeds >= 40 {
        let reached = [
            &TALLY.retired_keys,
            &TALLY.poisoned_lives,
            &TALLY.truncations,
            &TALLY.pages_in_doubt,
            &TALLY.drops_gathered,
            &TALLY.purges_gathered,
            &TALLY.shared_lives,
            &TALLY.failed_opens,
        ];
        assert!(reached.iter().all(|c| c.load(Ordering::Relaxed) > 0), "the run missed an interaction: {TALLY:?}");
    }
}

// Found by this simulation, seed = 11712 (a round with threads, so the seed does not replay
// it): a truncation's failed sync of `FLOOR` poisoned the log on the caller's thread while the
// flusher's fdatasync of a batch was in flight. That sync then succeeded and raised the durable
// LSN, so a waiter was acknowledged, and `durable_lsn` moved, after the log had said Poisoned.
#[test]
fn a_sync_in_flight_when_a_truncation_poisons_the_log_acknowledges_nothing() {
    let faulty = FaultyStorage::new(SimStorage::new(9, FaultConfig::default()));
    let gated = Gated::new(faulty.clone());
    let wal = SegmentedWal::open_with(gated.clone(), config(Setup::of(0), None)).unwrap();
    let record = [7u8; 9000];
    for _ in 0..12 {
        wal.append_durable(Record::new(TYPES[0], &record)).unwrap();
    }
    let checkpoint = wal.durable_lsn();
    gated.gate.shut();
    let in_flight = wal.append(Record::new(TYPES[0], b"in flight")).unwrap();
    wal.request_sync(in_flight).unwrap();
    gated.gate.wait_held();
    // The batch is written, its fdatasync not started: the next one is the floor's.
    faulty.fail_once(FaultOp::SyncData, 0, EIO);
    let truncated = wal.truncate_before(checkpoint);
    let refused = wal.append(Record::new(TYPES[0], b"after the poison"));
    let durable = wal.durable_lsn();
    // Opened before any assertion: a panic with the gate shut would hang the log's drop.
    gated.gate.open();
    assert!(truncated.is_err(), "the floor's sync failed");
    assert!(matches!(refused, Err(WalError::Poisoned { .. })), "the failed sync of the floor poisons the log: {refused:?}");
    let waited = wal.wait_durable(in_flight);
    assert!(matches!(waited, Err(WalError::Poisoned { .. })), "acknowledged after the poison: {waited:?}");
    assert_eq!(wal.durable_lsn(), durable, "the durable LSN moved after the poison");
}
