//! A small key-value engine on the log, as a database uses it: writers on several threads
//! fill a memtable, each put acknowledged once durable; a checkpoint writes the memtable to a
//! snapshot file and truncates the log below it; a restart loads the snapshot and replays the
//! log from the checkpoint, applying a collection drop and a purge of old versions where the
//! log has them (so a row written after the drop survives it).
//!
//! The checkpoint LSN is the first LSN the snapshot does not hold: the restart replays from
//! it, and `truncate_before` keeps every record from it on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig, TemporalPurgeEngine,
    TemporalPurgePayload, WalRecord,
};

const PUT: RecordType = RecordType::optional(0x100);
const CATALOG: RecordType = RecordType::required(0x101);
const SCOPE: Scope = Scope { database: 1, tenant: 1, vshard: 0 };

/// (collection, key) -> versions, oldest first: (LSN, timestamp, value).
type Rows = BTreeMap<(String, String), Vec<(Lsn, u64, String)>>;

struct Engine {
    wal: Arc<SegmentedWal>,
    rows: Mutex<Rows>,
    /// Writers hold it shared from append to memtable; a checkpoint or a drop holds it alone,
    /// so that every LSN below `next_lsn` is in the memtable, and no row of a collection being
    /// dropped takes an LSN between the drop's purge LSN and its tombstone.
    gate: RwLock<()>,
    snapshot: PathBuf,
}

impl Engine {
    fn open(config: SegmentedWalConfig, snapshot: PathBuf) -> Result<(Engine, u64), Box<dyn std::error::Error>> {
        let (checkpoint, mut rows) = load(&snapshot)?;
        let wal = SegmentedWal::open(config)?;
        let mut replayed = 0;
        for record in wal.read_from(checkpoint)? {
            apply(&mut rows, &record?)?;
            replayed += 1;
        }
        Ok((Engine { wal: Arc::new(wal), rows: Mutex::new(rows), gate: RwLock::new(()), snapshot }, replayed))
    }

    fn put(&self, collection: &str, key: &str, ts: u64, value: &str) -> nodedb_wal::Result<Lsn> {
        let line = format!("{collection}\t{key}\t{ts}\t{value}");
        let _writing = self.gate.read().expect("gate");
        let lsn = self.wal.append_durable(Record::new(PUT, line.as_bytes()).scoped(SCOPE))?;
        put_row(&mut self.rows.lock().expect("rows"), lsn, &line);
        Ok(lsn)
    }

    /// The catalog entry and the tombstone go all-or-nothing, in one group.
    fn drop_collection(&self, collection: &str) -> nodedb_wal::Result<()> {
        let _alone = self.gate.write().expect("gate");
        let purge_lsn = self.wal.next_lsn();
        let tombstone =
            CollectionTombstonePayload { database: SCOPE.database, tenant: SCOPE.tenant, collection: collection.into(), purge_lsn };
        let catalog = format!("drop {collection}");
        let entries = [Record::new(CATALOG, catalog.as_bytes()).scoped(SCOPE).into(), GroupEntry::Tombstone(&tombstone)];
        self.wal.wait_durable(*self.wal.append_group_entries(&entries)?.end())?;
        drop_rows(&mut self.rows.lock().expect("rows"), collection, purge_lsn);
        Ok(())
    }

    /// Drops the versions older than `cutoff` that a newer one (itself before the cutoff) replaces.
    fn purge(&self, collection: &str, cutoff: u64) -> nodedb_wal::Result<()> {
        let _alone = self.gate.write().expect("gate");
        let purged_count = purge_rows(&mut self.rows.lock().expect("rows"), collection, cutoff);
        let purge = TemporalPurgePayload {
            engine: TemporalPurgeEngine::Document,
            collection: collection.into(),
            cutoff_unix_ms: cutoff as i64,
            purged_count,
        };
        self.wal.wait_durable(self.wal.append_temporal_purge(&purge, SCOPE)?)?;
        Ok(())
    }

    /// Writes the memtable to the snapshot, then truncates the log below what it holds.
    fn checkpoint(&self) -> Result<(Lsn, usize), Box<dyn std::error::Error>> {
        let (checkpoint, rows) = {
            let _alone = self.gate.write().expect("gate");
            (self.wal.next_lsn(), self.rows.lock().expect("rows").clone())
        };
        save(&self.snapshot, checkpoint, &rows)?;
        Ok((checkpoint, self.wal.truncate_before(checkpoint)?))
    }
}

/// One replayed record: a row, or a drop or purge where the log has it.
fn apply(rows: &mut Rows, record: &WalRecord) -> nodedb_wal::Result<()> {
    if record.record_type == PUT {
        put_row(rows, record.lsn, std::str::from_utf8(&record.payload).expect("rows are text"));
    } else if let Some(drop) = record.tombstone()? {
        drop_rows(rows, &drop.collection, drop.purge_lsn);
    } else if let Some(purge) = record.temporal_purge()? {
        // A cutoff before 1970 has no version older than it: a cast would wrap it into a
        // far-future cutoff and purge every version but the newest.
        let cutoff = u64::try_from(purge.purge.cutoff_unix_ms).unwrap_or(0);
        purge_rows(rows, &purge.purge.collection, cutoff);
    }
    Ok(())
}

fn put_row(rows: &mut Rows, lsn: Lsn, line: &str) {
    let mut fields = line.splitn(4, '\t');
    let mut next = || fields.next().expect("four fields").to_owned();
    let (collection, key, ts, value) = (next(), next(), next(), next());
    let versions = rows.entry((collection, key)).or_default();
    let at = versions.partition_point(|v| v.0 < lsn);
    versions.insert(at, (lsn, ts.parse().expect("a timestamp"), value));
}

fn drop_rows(rows: &mut Rows, collection: &str, purge_lsn: Lsn) {
    for ((c, _), versions) in rows.iter_mut() {
        if c == collection {
            versions.retain(|v| v.0 >= purge_lsn);
        }
    }
    rows.retain(|_, versions| !versions.is_empty());
}

fn purge_rows(rows: &mut Rows, collection: &str, cutoff: u64) -> u64 {
    let mut purged = 0;
    for (_, versions) in rows.iter_mut().filter(|((c, _), _)| c == collection) {
        let newest_before = versions.iter().rposition(|v| v.1 < cutoff).unwrap_or(0);
        purged += newest_before as u64;
        versions.drain(..newest_before);
    }
    purged
}

/// The snapshot: the checkpoint LSN, then one line per version; written aside, synced, renamed.
fn save(path: &Path, checkpoint: Lsn, rows: &Rows) -> std::io::Result<()> {
    let mut text = format!("{}\n", checkpoint.0);
    for ((collection, key), versions) in rows {
        for (lsn, ts, value) in versions {
            text += &format!("{}\t{collection}\t{key}\t{ts}\t{value}\n", lsn.0);
        }
    }
    let aside = path.with_extension("new");
    let mut file = std::fs::File::create(&aside)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&aside, path)?;
    std::fs::File::open(path.parent().expect("a directory"))?.sync_all()
}

fn load(path: &Path) -> std::io::Result<(Lsn, Rows)> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Lsn::FIRST, Rows::new())),
        read => read?,
    };
    let mut lines = text.lines();
    let checkpoint = Lsn(lines.next().and_then(|l| l.parse().ok()).expect("a checkpoint line"));
    let mut rows = Rows::new();
    for line in lines {
        let (lsn, row) = line.split_once('\t').expect("an LSN");
        put_row(&mut rows, Lsn(lsn.parse().expect("an LSN")), row);
    }
    Ok((checkpoint, rows))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = SegmentedWalConfig::new(dir.path().join("wal"));
    config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
    config.segment_bytes_target = 64 * 1024;
    let snapshot = dir.path().join("snapshot");
    let (engine, _) = Engine::open(config.clone(), snapshot.clone())?;
    let engine = Arc::new(engine);

    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || -> nodedb_wal::Result<()> {
                for i in 0..50u64 {
                    engine.put("users", &format!("user{}", i % 10), i, &format!("written by {thread}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer panicked")?;
    }
    let (checkpoint, removed) = engine.checkpoint()?;
    println!("checkpoint at LSN {checkpoint}: {removed} segments truncated, the log now starts at {}", engine.wal.oldest_lsn());

    for (ts, value) in [(100, "draft"), (200, "sent"), (300, "paid")] {
        engine.put("orders", "order1", ts, value)?;
    }
    engine.drop_collection("users")?;
    engine.put("users", "user1", 400, "signed up again")?; // after the drop: a new collection
    engine.purge("orders", 250)?; // "draft" goes; "sent" was the value at the cutoff
    let before = engine.rows.lock().expect("rows").clone();
    drop(engine); // a crash, for the log: every acknowledged record is recovered

    let (engine, replayed) = Engine::open(config, snapshot)?;
    let after = engine.rows.lock().expect("rows").clone();
    println!("restarted: replayed {replayed} records from LSN {checkpoint}; {} rows", after.len());
    assert_eq!(after, before, "the snapshot and the replay give back the memtable");
    let versions = |key: (&str, &str)| after.get(&(key.0.to_owned(), key.1.to_owned())).map(Vec::len);
    assert_eq!(versions(("users", "user1")), Some(1), "only the row written after the drop");
    assert_eq!(versions(("users", "user2")), None, "dropped");
    assert_eq!(versions(("orders", "order1")), Some(2), "the purge kept the version at the cutoff and the newer one");
    Ok(())
}
