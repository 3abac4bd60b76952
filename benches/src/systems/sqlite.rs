//! SQLite through rusqlite (bundled): WAL journal, `synchronous=FULL` so every commit is
//! synced, one INSERT per transaction, one connection per thread.

use std::io;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::driver::{Params, WARM_UP, run_for};
use crate::report::Report;
use crate::systems::payload;

/// How long a writer waits for another's lock before the run fails. Writers serialize on
/// SQLite's single write lock, so with many threads some wait a long time.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn to_io(err: rusqlite::Error) -> io::Error {
    io::Error::other(err)
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // `synchronous` is per connection; FULL syncs the WAL file at every commit.
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    Ok(conn)
}

fn create(path: &Path) -> rusqlite::Result<()> {
    let conn = connect(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    assert_eq!(mode.to_ascii_lowercase(), "wal", "SQLite refused WAL mode");
    conn.execute_batch("CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
}

/// Runs SQLite: each call is one autocommitted INSERT of a `size`-byte blob.
pub fn run(params: &Params) -> io::Result<Report> {
    let dir = tempfile::Builder::new().prefix("sqlite-").tempdir_in(&params.dir)?;
    let path = dir.path().join("bench.db");
    create(&path).map_err(to_io)?;
    let payload = payload(params.size);
    let (path, payload) = (&path, &payload);
    let make = move |_| {
        let conn = connect(path).map_err(to_io)?;
        Ok(move || {
            conn.prepare_cached("INSERT INTO log (payload) VALUES (?1)").and_then(|mut s| s.execute([payload])).map_err(to_io)?;
            Ok(1)
        })
    };
    run_for(params.threads, WARM_UP, params.device, make)?;
    let timed = run_for(params.threads, params.duration, params.device, make)?;
    Ok(Report {
        system: "sqlite".into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: None,
        wal_bytes: None,
        latency_of: "one INSERT in its own transaction",
        note: "rusqlite bundled, journal_mode=WAL, synchronous=FULL, connection per thread, busy_timeout 30 s, 1 s untimed warm-up",
    })
}
