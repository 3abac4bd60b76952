//! The log's first real user: a tiny multi-collection key-value store built on the public API
//! only, tortured with crashes on the simulated disk.
//!
//! The store appends puts and deletes (one at a time with `append_durable`, or `append` and the
//! `durable(lsn)` future, or `append_batch`, or all-or-nothing `append_group`), drops whole
//! collections with tombstones (half of them in one group with the catalog's record of the drop,
//! `append_group_entries`), purges old rows with temporal purges, rotates the encryption
//! key, and checkpoints: it rolls its last snapshot forward over the durable log, writes the
//! result to a file with the LSN it covers (written, synced, renamed, directory synced), and
//! only then truncates the log below that LSN. At open it loads the snapshot and replays the log
//! from the snapshot's LSN, applying tombstones and purges in LSN order.
//!
//! Tombstones across truncation: the log forgets a tombstone once its segment is truncated, so
//! the store keeps drops in its snapshot (rows carry the LSN that wrote them, since a
//! tombstone drops by LSN, not by "everything before the checkpoint") and replays from the
//! snapshot's LSN, never from the log's oldest record.
//!
//! After every crash (anywhere: mid-checkpoint, mid-truncation, mid-append) the state the store
//! recovers must equal a model that applies, in LSN order, exactly the records recovery returned;
//! those must include every acknowledged one and every one a live follower (`tail`) delivered,
//! and never part of a group. The follower must see dense LSNs, each record as appended, or stop
//! at a typed error when truncation overtakes it. An "event plane" consumer reading headers first
//! (`lazy_reader`) must see the same records of its types as a full read.
//!
//! `NODEDB_WAL_SIM_SEEDS` sets how many seeds run (default 300 in debug builds, 3000 in release);
//! `NODEDB_WAL_SIM_SEED` runs one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::block_on;

use nodedb_wal::storage::{FaultConfig, OpenMode, SimRng, Storage, StorageFile, SyncFailure};
use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, KeyRing, Lsn, Record, RecordType, Scope, SecureKey, SegmentedWal, SegmentedWalConfig,
    SimStorage, TemporalPurgeEngine, TemporalPurgePayload, WalError, extract_temporal_purges, extract_tombstones,
};

const DIR: &str = "/db/wal";
const DB_DIR: &str = "/db";
const SNAPSHOT: &str = "/db/snapshot";
const SNAPSHOT_NEW: &str = "/db/snapshot.new";
const PUT: RecordType = RecordType::optional(0x100);
const DEL: RecordType = RecordType::optional(0x101);
/// The catalog's record of a dropped collection, logged in one group with the drop's tombstone.
const CATALOG: RecordType = RecordType::required(0x102);
const COLLECTIONS: u8 = 4;
const SCOPE: Scope = Scope { database: 1, tenant: 2, vshard: 0 };

fn name(collection: u8) -> String {
    format!("c{collection}")
}

/// A row: the LSN that wrote it (a tombstone drops by LSN), its timestamp (a purge drops by
/// time) and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    lsn: u64,
    ts: u64,
    value: Vec<u8>,
}

type State = BTreeMap<(u8, u16), Row>;

/// What a follower delivered: LSN, type, payload.
type Seen = Vec<(u64, RecordType, Vec<u8>)>;

/// A put or delete payload: collection, key, timestamp, value.
fn encode_op(collection: u8, key: u16, ts: u64, value: &[u8]) -> Vec<u8> {
    let mut out = vec![collection];
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Applies one record, in LSN order.
fn apply(state: &mut State, lsn: u64, record_type: RecordType, payload: &[u8]) {
    if record_type == PUT || record_type == DEL {
        let collection = payload[0];
        let key = u16::from_le_bytes([payload[1], payload[2]]);
        let ts = u64::from_le_bytes(payload[3..11].try_into().unwrap());
        if record_type == PUT {
            state.insert((collection, key), Row { lsn, ts, value: payload[11..].to_vec() });
        } else {
            state.remove(&(collection, key));
        }
    } else if record_type == CATALOG {
        // The catalog's own entry, as a row the drop that comes with it cannot reach.
        state.insert((payload[0], u16::MAX), Row { lsn, ts: 0, value: b"dropped".to_vec() });
    } else if record_type == RecordType::COLLECTION_TOMBSTONE {
        let t = CollectionTombstonePayload::decode(payload).unwrap();
        state.retain(|&(c, _), row| !(name(c) == t.collection && row.lsn < t.purge_lsn.0));
    } else if record_type == RecordType::TEMPORAL_PURGE {
        let p = TemporalPurgePayload::decode(payload).unwrap();
        state.retain(|&(c, _), row| !(name(c) == p.collection && (row.ts as i64) < p.cutoff_unix_ms));
    }
}

fn encode_snapshot(next: u64, state: &State) -> Vec<u8> {
    let mut out = next.to_le_bytes().to_vec();
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    for (&(c, k), row) in state {
        out.push(c);
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&row.lsn.to_le_bytes());
        out.extend_from_slice(&row.ts.to_le_bytes());
        out.extend_from_slice(&(row.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&row.value);
    }
    out
}

fn decode_snapshot(bytes: &[u8]) -> (u64, State) {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (next, count) = (u64_at(0), u64_at(8));
    let (mut at, mut state) = (16, State::new());
    for _ in 0..count {
        let (c, k) = (bytes[at], u16::from_le_bytes([bytes[at + 1], bytes[at + 2]]));
        let (lsn, ts) = (u64_at(at + 3), u64_at(at + 11));
        let len = u32::from_le_bytes(bytes[at + 19..at + 23].try_into().unwrap()) as usize;
        state.insert((c, k), Row { lsn, ts, value: bytes[at + 23..at + 23 + len].to_vec() });
        at += 23 + len;
    }
    assert_eq!(at, bytes.len(), "a snapshot is installed whole, by rename after its sync");
    (next, state)
}

/// Where a checkpoint stops when a single-threaded round cuts the power inside it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Written,
    Synced,
    Renamed,
    DirSynced,
    Truncated,
}

/// The store: the log, and the snapshot rolled forward by checkpoints.
struct TinyDb {
    wal: SegmentedWal<SimStorage>,
    /// The last snapshot and the LSN it covers up to (exclusive), rolled forward by checkpoints.
    snapshot: Mutex<(u64, State)>,
}

impl TinyDb {
    /// Opens the store: snapshot, then the log from the snapshot's LSN.
    fn open(sim: &SimStorage, config: SegmentedWalConfig, parallel: bool) -> Result<(TinyDb, State), WalError> {
        let wal = SegmentedWal::open_with(sim.clone(), config)?;
        let (next, snapshot) = match sim.read_file(Path::new(SNAPSHOT)) {
            Some(bytes) => decode_snapshot(&bytes),
            None => (1, State::new()),
        };
        let mut state = snapshot.clone();
        let mut expected = next;
        let mut replay = |lsn: Lsn, record_type, payload: &[u8]| {
            assert_eq!(lsn.0, expected, "replay is dense from the snapshot's LSN");
            apply(&mut state, lsn.0, record_type, payload);
            expected += 1;
        };
        // Half the stores replay with parallel decoders, half with a plain streaming read.
        if parallel {
            wal.replay_parallel(Lsn(next), 2, |r| {
                replay(r.lsn, r.record_type, r.payload);
                Ok(())
            })?;
        } else {
            for r in wal.read_from(Lsn(next))? {
                let r = r?;
                replay(r.lsn, r.record_type, &r.payload);
            }
        }
        // The snapshot stays at its LSN until the next checkpoint rolls it forward.
        Ok((TinyDb { wal, snapshot: Mutex::new((next, snapshot)) }, state))
    }

    /// Rolls the snapshot over the durable log, installs it, truncates below it. `stop` cuts
    /// the work short after a stage (the power cut of a single-threaded round).
    /// `observe` sees every record rolled into the snapshot (the test's model learns LSNs there).
    fn checkpoint(&self, sim: &SimStorage, stop: Option<Stage>, observe: &dyn Fn(u64, RecordType, &[u8])) -> Result<(), WalError> {
        let mut guard = self.snapshot.lock().unwrap();
        let (mut next, mut state) = guard.clone();
        // Checkpoints catch up through memory maps of sealed segments.
        for r in self.wal.read_mapped(Lsn(next))? {
            let r = r?;
            observe(r.lsn.0, r.record_type, &r.payload);
            apply(&mut state, r.lsn.0, r.record_type, &r.payload);
            next = r.lsn.0 + 1;
        }
        let io = |op, source| WalError::Io { op, path: SNAPSHOT.into(), source };
        let file = sim
            .open(Path::new(SNAPSHOT_NEW), OpenMode { create: true, write: true, direct: false, create_new: false })
            .map_err(|e| io(nodedb_wal::IoOp::Open, e))?;
        file.set_len(0).map_err(|e| io(nodedb_wal::IoOp::Write, e))?;
        file.write_at(&encode_snapshot(next, &state), 0).map_err(|e| io(nodedb_wal::IoOp::Write, e))?;
        if stop == Some(Stage::Written) {
            return Ok(());
        }
        file.sync_data().map_err(|e| io(nodedb_wal::IoOp::SyncData, e))?;
        if stop == Some(Stage::Synced) {
            return Ok(());
        }
        sim.rename(Path::new(SNAPSHOT_NEW), Path::new(SNAPSHOT)).map_err(|e| io(nodedb_wal::IoOp::Rename, e))?;
        if stop == Some(Stage::Renamed) {
            return Ok(());
        }
        sim.sync_dir(Path::new(DB_DIR)).map_err(|e| io(nodedb_wal::IoOp::SyncDir, e))?;
        *guard = (next, state);
        if stop == Some(Stage::DirSynced) {
            return Ok(());
        }
        self.wal.truncate_before(Lsn(next))?;
        Ok(())
    }
}

/// What the test knows: every record appended, the highest acknowledged LSN, the LSNs a
/// follower delivered (durable by contract), and the groups.
#[derive(Default)]
struct Model {
    appended: BTreeMap<u64, (RecordType, Vec<u8>)>,
    acked: u64,
    delivered: u64,
    groups: Vec<(u64, u64)>,
    /// Records handed to `append_durable`, whose LSN the model learns only when it returns.
    pending: Vec<(RecordType, Vec<u8>)>,
}

impl Model {
    /// Learns the LSN of a record read from the log that an `append_durable` had not
    /// returned yet.
    fn resolve(&mut self, lsn: u64, record_type: RecordType, payload: &[u8]) {
        if self.appended.contains_key(&lsn) {
            return;
        }
        let at = self.pending.iter().position(|(ty, p)| *ty == record_type && p == payload);
        let at = at.unwrap_or_else(|| panic!("LSN {lsn} was never appended"));
        let record = self.pending.swap_remove(at);
        self.appended.insert(lsn, record);
    }
}

fn put(rng: &mut SimRng) -> (RecordType, Vec<u8>) {
    let (c, k) = (rng.below(COLLECTIONS as u64) as u8, rng.below(24) as u16);
    if rng.below(5) == 0 {
        return (DEL, encode_op(c, k, 0, &[]));
    }
    let max = if rng.below(30) == 0 { 9000 } else { 200 };
    let value: Vec<u8> = (0..rng.below(max)).map(|_| rng.next_u64() as u8).collect();
    (PUT, encode_op(c, k, rng.below(1000), &value))
}

/// One writer step; returns Err once the log (or the disk) fails. The model learns of a record
/// as soon as it has an LSN, and of its acknowledgement only once the wait returned Ok.
fn write_step(db: &TinyDb, keys: &KeyRing, model: &Mutex<Model>, rng: &mut SimRng) -> Result<(), WalError> {
    let wal = &db.wal;
    // Another thread's sync may make a record durable, and a checkpoint read it, before its
    // append returns: the model holds it as pending until then, and a reader resolves it.
    let pend = |records: &[(RecordType, Vec<u8>)]| model.lock().unwrap().pending.extend_from_slice(records);
    let note = |first: Lsn, records: Vec<(RecordType, Vec<u8>)>| {
        let mut m = model.lock().unwrap();
        for (i, record) in records.into_iter().enumerate() {
            let lsn = first.0 + i as u64;
            if !m.appended.contains_key(&lsn) {
                let at = m.pending.iter().position(|r| *r == record).expect("pending");
                m.pending.swap_remove(at);
                m.appended.insert(lsn, record);
            }
        }
    };
    let ack = |lsn: Lsn| {
        let mut m = model.lock().unwrap();
        m.acked = m.acked.max(lsn.0);
    };
    match rng.below(20) {
        0..=7 => {
            let (ty, p) = put(rng);
            pend(&[(ty, p.clone())]);
            let lsn = wal.append(Record::new(ty, &p).scoped(SCOPE))?;
            note(lsn, vec![(ty, p)]);
            if rng.below(2) == 0 {
                block_on(wal.durable(lsn)?)?;
            } else {
                wal.wait_durable(lsn)?;
            }
            ack(lsn);
        }
        8..=11 => {
            let (ty, p) = put(rng);
            pend(&[(ty, p.clone())]);
            let lsn = wal.append_durable(Record::new(ty, &p).scoped(SCOPE))?;
            note(lsn, vec![(ty, p)]);
            ack(lsn);
        }
        12..=15 => {
            let ops: Vec<_> = (0..1 + rng.below(6)).map(|_| put(rng)).collect();
            let records: Vec<_> = ops.iter().map(|(ty, p)| Record::new(*ty, p).scoped(SCOPE)).collect();
            let grouped = rng.below(2) == 0;
            pend(&ops);
            let lsns = if grouped { wal.append_group(&records)? } else { wal.append_batch(&records)? };
            note(*lsns.start(), ops.clone());
            if grouped {
                model.lock().unwrap().groups.push((lsns.start().0, lsns.end().0));
            }
            wal.wait_durable(*lsns.end())?;
            ack(*lsns.end());
        }
        16 => {
            let c = rng.below(COLLECTIONS as u64) as u8;
            let t = CollectionTombstonePayload {
                database: SCOPE.database,
                tenant: SCOPE.tenant,
                collection: name(c),
                purge_lsn: wal.next_lsn(),
            };
            let tombstone = (RecordType::COLLECTION_TOMBSTONE, t.encode().unwrap());
            if rng.below(2) == 0 {
                pend(std::slice::from_ref(&tombstone));
                let lsn = wal.append_tombstone(&t)?;
                note(lsn, vec![tombstone]);
                wal.wait_durable(lsn)?;
                ack(lsn);
                return Ok(());
            }
            // The catalog forgets the collection (and the schema it held, which makes the group
            // span sectors a crash may tear) in the same group as the drop, in either order.
            let mut schema = vec![c];
            schema.extend((0..rng.below(6000)).map(|_| rng.next_u64() as u8));
            let catalog = (CATALOG, schema);
            let mut ops = vec![catalog.clone(), tombstone];
            let mut entries = [Record::new(CATALOG, &catalog.1).scoped(SCOPE).into(), GroupEntry::Tombstone(&t)];
            if rng.below(2) == 0 {
                ops.reverse();
                entries.reverse();
            }
            pend(&ops);
            let lsns = wal.append_group_entries(&entries)?;
            note(*lsns.start(), ops);
            model.lock().unwrap().groups.push((lsns.start().0, lsns.end().0));
            wal.wait_durable(*lsns.end())?;
            ack(*lsns.end());
        }
        17 => {
            let c = rng.below(COLLECTIONS as u64) as u8;
            let p = TemporalPurgePayload {
                engine: TemporalPurgeEngine::Timeseries,
                collection: name(c),
                cutoff_unix_ms: rng.below(500) as i64,
                purged_count: 0,
            };
            let record = (RecordType::TEMPORAL_PURGE, p.encode().unwrap());
            pend(std::slice::from_ref(&record));
            let lsn = wal.append_temporal_purge(&p, SCOPE)?;
            note(lsn, vec![record]);
            wal.wait_durable(lsn)?;
            ack(lsn);
        }
        18 => {
            if keys.active().is_some() {
                keys.set_active(1 + rng.below(3) as u32)?;
            }
        }
        _ => {
            let lsn = wal.sync()?;
            ack(lsn);
        }
    }
    Ok(())
}

/// Follows the log from `from` until `stop` is set and it has caught up with the durable LSN;
/// returns what it delivered. A typed error (truncation overtook it, or the disk died) ends it.
fn follow(wal: &SegmentedWal<SimStorage>, from: Lsn, stop: &AtomicBool) -> (Seen, Option<WalError>) {
    let mut tail = wal.tail(from);
    let mut seen = Vec::new();
    loop {
        match tail.next_timeout(Duration::from_millis(2)) {
            Ok(Some(r)) => seen.push((r.lsn.0, r.record_type, r.payload.into_vec())),
            Ok(None) if stop.load(Ordering::SeqCst) && tail.cursor() > wal.durable_lsn() => return (seen, None),
            Ok(None) => {}
            Err(e) => return (seen, Some(e)),
        }
    }
}

fn check_follower(seed: u64, from: Lsn, seen: &Seen, err: &Option<WalError>, model: &Mutex<Model>) {
    let mut m = model.lock().unwrap();
    for (expected, (lsn, ty, payload)) in (from.0..).zip(seen) {
        assert_eq!(*lsn, expected, "seed {seed}: the follower skipped or repeated an LSN");
        // A writer may not have noted its LSN yet (append_durable): only check what it knows.
        if let Some((mty, mp)) = m.appended.get(lsn) {
            assert_eq!((mty, mp), (ty, payload), "seed {seed}: the follower got other bytes at LSN {lsn}");
        }
        m.delivered = m.delivered.max(*lsn);
    }
    match err {
        None
        | Some(WalError::LsnNotRetained { .. } | WalError::SegmentTruncated { .. } | WalError::Io { .. } | WalError::Poisoned { .. }) => {}
        Some(e) => panic!("seed {seed}: the follower stopped with {e}"),
    }
}

fn key_ring(seed: u64) -> Arc<KeyRing> {
    let ring = KeyRing::new();
    for id in 1..=3u32 {
        ring.insert(id, SecureKey::from_bytes(&mut [id as u8 ^ seed as u8; 32])).unwrap();
    }
    if seed % 2 == 1 {
        ring.set_active(1).unwrap();
    }
    Arc::new(ring)
}

/// The store's log settings; `variant` (from the seed) varies how it writes: through the page
/// cache or not, with kept segment files or none, with a commit window, with segments large
/// enough for header indexes.
fn config(ring: &Arc<KeyRing>, variant: u64) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = if variant % 7 == 3 { 96 * 1024 } else { 24 * 1024 };
    c.batch_bytes_max = 8 * 1024;
    c.key_ring = Some(Arc::clone(ring));
    c.direct_io = variant % 3 != 2;
    c.recycle_segments = (variant / 3 % 3) as usize;
    if variant % 5 == 4 {
        c.commit_window = Some(Duration::from_micros(200));
    }
    c
}

/// Reopens the store and checks it against the model; trims the model to what survived.
fn reopen_and_check(seed: u64, sim: &SimStorage, ring: &Arc<KeyRing>, model: &mut Model) -> TinyDb {
    let (db, state) = TinyDb::open(sim, config(ring, seed), seed % 4 < 2).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
    let info = db.wal.recovery_info().clone();
    let last = info.last_lsn.0.max(db.wal.next_lsn().0 - 1);
    for r in db.wal.read_from(info.first_lsn).unwrap() {
        let r = r.unwrap();
        model.resolve(r.lsn.0, r.record_type, &r.payload);
    }
    model.pending.clear();
    assert!(last >= model.acked, "seed {seed}: acknowledged LSN {} lost; recovered up to {last}", model.acked);
    assert!(last >= model.delivered, "seed {seed}: LSN {} a follower saw as durable was lost; recovered up to {last}", model.delivered);
    for &(start, end) in &model.groups {
        assert!(!(start <= last && last < end), "seed {seed}: group {start}..={end} recovered in part (up to {last})");
    }
    model.appended.retain(|&lsn, _| lsn <= last);
    model.groups.retain(|&(_, end)| end <= last);
    let mut expected = State::new();
    for (&lsn, (ty, p)) in &model.appended {
        apply(&mut expected, lsn, *ty, p);
    }
    assert_eq!(state, expected, "seed {seed}: the recovered store differs from the model (recovered up to {last})");
    // The records the log still holds, as appended; what recovery gathered from them.
    let records: Vec<_> = db.wal.read_from(info.first_lsn).unwrap().map(Result::unwrap).collect();
    for r in &records {
        let (ty, p) = &model.appended[&r.lsn.0];
        assert_eq!((ty, &p[..]), (&r.record_type, &r.payload[..]), "seed {seed}: LSN {}", r.lsn);
    }
    assert_eq!(info.tombstones, extract_tombstones(&records).unwrap(), "seed {seed}");
    assert_eq!(info.temporal_purges, extract_temporal_purges(&records).unwrap(), "seed {seed}");
    // The event plane: only tombstones, purges and deletes, headers first.
    let wanted = |ty: RecordType| ty == RecordType::COLLECTION_TOMBSTONE || ty == RecordType::TEMPORAL_PURGE || ty == DEL;
    let mut lazy = db.wal.lazy_reader(info.first_lsn).unwrap();
    let mut events = Vec::new();
    while let Some(h) = lazy.next_header().unwrap() {
        if wanted(h.record_type) {
            events.push((h.lsn, lazy.payload().unwrap()));
        }
    }
    let full: Vec<_> = records.iter().filter(|r| wanted(r.record_type)).map(|r| (r.lsn, r.payload.to_vec())).collect();
    assert_eq!(events, full, "seed {seed}: the lazy reader's events differ from a full read");
    if std::env::var("NODEDB_WAL_SIM_TRACE").is_ok() {
        let snapshot = db.snapshot.lock().unwrap().0;
        eprintln!(
            "seed {seed}: lsns {}..={last}, snapshot at {snapshot}, {} segments, {} rows, {} drops, {} purges, delivered {}",
            info.first_lsn,
            info.segments.len(),
            state.len(),
            info.tombstones.len(),
            info.temporal_purges.len(),
            model.delivered
        );
    }
    model.acked = last;
    model.delivered = 0;
    db
}

/// A single-threaded round: its schedule, and where the power is cut, depend on the seed only.
/// Returns whether a step failed (an injected fault, or a cut inside a checkpoint).
fn single_round(db: &TinyDb, sim: &SimStorage, ring: &Arc<KeyRing>, model: &mut Model, rng: &mut SimRng) -> bool {
    let mut failed = false;
    let shared = Mutex::new(std::mem::take(model));
    let stages = [Stage::Written, Stage::Synced, Stage::Renamed, Stage::DirSynced, Stage::Truncated];
    for _ in 0..rng.below(80) {
        let outcome = if rng.below(10) == 0 {
            let stop = rng.below(3).eq(&0).then(|| stages[rng.below(5) as usize]);
            let out = db.checkpoint(sim, stop, &|lsn, ty, p| shared.lock().unwrap().resolve(lsn, ty, p));
            if stop.is_some() {
                break;
            }
            out
        } else {
            write_step(db, ring, &shared, rng)
        };
        if outcome.is_err() {
            failed = true;
            break;
        }
    }
    *model = shared.into_inner().unwrap();
    failed
}

/// Writers, a checkpointer and a follower run while the power is cut at a random moment.
fn concurrent_round(seed: u64, db: Arc<TinyDb>, sim: &SimStorage, ring: &Arc<KeyRing>, model: &mut Model, rng: &mut SimRng) -> SimStorage {
    let shared = Arc::new(Mutex::new(std::mem::take(model)));
    let stop = Arc::new(AtomicBool::new(false));
    let from = db.wal.next_lsn();
    let follower = {
        let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
        std::thread::spawn(move || follow(&db.wal, from, &stop))
    };
    let mut workers: Vec<_> = (0..3)
        .map(|t| {
            let (db, shared, ring, sim) = (Arc::clone(&db), Arc::clone(&shared), Arc::clone(ring), sim.clone());
            let mut rng = SimRng::new(rng.next_u64() ^ t);
            std::thread::spawn(move || {
                for _ in 0..rng.below(60) {
                    let out = if t == 0 && rng.below(8) == 0 {
                        db.checkpoint(&sim, None, &|lsn, ty, p| shared.lock().unwrap().resolve(lsn, ty, p))
                    } else {
                        write_step(&db, &ring, &shared, &mut rng)
                    };
                    if out.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for _ in 0..rng.below(3000) {
        std::thread::yield_now();
    }
    let after = sim.crash(rng.next_u64());
    stop.store(true, Ordering::SeqCst);
    for w in workers.drain(..) {
        w.join().unwrap();
    }
    let (seen, err) = follower.join().unwrap();
    if std::env::var("NODEDB_WAL_SIM_TRACE").is_ok() {
        eprintln!("seed {seed}: the follower delivered {} records from {from}, then {err:?}", seen.len());
    }
    check_follower(seed, from, &seen, &err, &shared);
    drop(db);
    *model = std::mem::take(&mut *shared.lock().unwrap());
    after
}

/// A follower that caught up, then was overtaken by truncation while away, must get a typed
/// error, never a silent skip; resumed in time, it goes on exactly where it was.
fn resume_follower(seed: u64, db: &TinyDb) {
    let oldest = db.wal.oldest_lsn();
    let cursor = Lsn(oldest.0.saturating_sub(1).max(1));
    let mut tail = db.wal.tail(cursor);
    match tail.next_timeout(Duration::ZERO) {
        Err(WalError::LsnNotRetained { requested, .. }) => assert!(requested < oldest, "seed {seed}"),
        Ok(Some(r)) => assert_eq!(r.lsn, cursor, "seed {seed}: a resumed follower starts at its cursor"),
        Ok(None) => assert!(cursor > db.wal.durable_lsn(), "seed {seed}"),
        Err(e) => panic!("seed {seed}: a resumed follower failed with {e}"),
    }
}

fn run_seed(seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut sim = SimStorage::new(rng.next_u64(), FaultConfig::default());
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    sim.create_dir_all(Path::new(DB_DIR)).unwrap();
    sim.sync_dir(Path::new("/")).unwrap();
    let ring = key_ring(seed);
    let mut model = Model::default();
    let mut db = reopen_and_check(seed, &sim, &ring, &mut model);
    for _round in 0..2 + rng.below(5) {
        let faults = match rng.below(5) {
            0 => FaultConfig { sync_fail_ppm: 10_000, write_eio_ppm: 3_000, write_enospc_ppm: 3_000, sync_dir_fail_ppm: 20_000 },
            _ => FaultConfig::default(),
        };
        sim.set_faults(faults);
        if rng.below(3) == 0 {
            sim = concurrent_round(seed, Arc::new(db), &sim, &ring, &mut model, &mut rng);
        } else {
            if single_round(&db, &sim, &ring, &mut model, &mut rng) && rng.below(2) == 0 {
                // The store reopens after a failure under the same kernel, before the power
                // cut: what that recovery returns, the cut must keep.
                drop(db);
                sim.set_faults(FaultConfig::default());
                db = reopen_and_check(seed, &sim, &ring, &mut model);
                sim.set_faults(faults);
                single_round(&db, &sim, &ring, &mut model, &mut rng);
            }
            let after = sim.crash(rng.next_u64());
            drop(db);
            sim = after;
        }
        db = reopen_and_check(seed, &sim, &ring, &mut model);
        resume_follower(seed, &db);
    }
}

#[test]
fn a_tiny_database_recovers_exactly_its_durable_history_after_any_crash() {
    if let Ok(one) = std::env::var("NODEDB_WAL_SIM_SEED") {
        return run_seed(one.parse().expect("a seed number"));
    }
    let default = if cfg!(debug_assertions) { 300 } else { 3000 };
    let seeds: u64 = std::env::var("NODEDB_WAL_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    for seed in 0..seeds {
        if std::panic::catch_unwind(|| run_seed(seed)).is_err() {
            panic!("tiny db simulation failed; reproduce with NODEDB_WAL_SIM_SEED={seed}");
        }
    }
}

/// A follower stopped at every position, then overtaken by writes and a truncation at every
/// checkpoint: it delivers on densely from its cursor, or, only where truncation removed its
/// cursor's record, stops at a typed error. Never a skip, never an error while its record is
/// still in the log.
#[test]
fn a_follower_overtaken_by_truncation_delivers_densely_or_stops_at_a_typed_error() {
    for encrypted in [false, true] {
        for stop_at in [0u64, 1, 7, 30, 61, 90] {
            for checkpoint in [1u64, 20, 45, 70, 100, 140] {
                let ring = key_ring(encrypted as u64);
                let wal = SegmentedWal::open_with(SimStorage::new(stop_at ^ checkpoint, FaultConfig::default()), config(&ring, 0)).unwrap();
                let mut next = 1u64;
                let mut append = |wal: &SegmentedWal<SimStorage>, n: u64| {
                    for _ in 0..n {
                        let p = encode_op(0, next as u16, next, &[next as u8; 700]);
                        assert_eq!(wal.append(Record::new(PUT, &p)).unwrap(), Lsn(next));
                        next += 1;
                    }
                    wal.sync().unwrap();
                };
                append(&wal, 100);
                let mut tail = wal.tail(Lsn::FIRST);
                for lsn in 1..=stop_at {
                    assert_eq!(tail.next_timeout(Duration::ZERO).unwrap().unwrap().lsn, Lsn(lsn));
                }
                append(&wal, 50);
                wal.truncate_before(Lsn(checkpoint)).unwrap();
                let oldest = wal.oldest_lsn();
                let mut expected = stop_at + 1;
                let what = format!("encrypted {encrypted}, stopped after {stop_at}, checkpoint {checkpoint}, oldest {oldest}");
                loop {
                    match tail.next_timeout(Duration::ZERO) {
                        Ok(Some(r)) => {
                            assert_eq!(r.lsn, Lsn(expected), "{what}: skipped");
                            assert_eq!(u64::from_le_bytes(r.payload[3..11].try_into().unwrap()), expected, "{what}");
                            expected += 1;
                        }
                        Ok(None) => {
                            assert_eq!(expected, 151, "{what}: stopped early");
                            break;
                        }
                        Err(WalError::LsnNotRetained { .. } | WalError::SegmentTruncated { .. }) => {
                            assert!(Lsn(expected) < oldest, "{what}: a typed error at {expected}, which the log still holds");
                            break;
                        }
                        Err(e) => panic!("{what}: {e}"),
                    }
                }
            }
        }
    }
}
