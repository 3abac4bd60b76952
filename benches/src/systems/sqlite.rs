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

/// Creates the database and returns the connection that made it. Keep it open until the timed
/// run is over: when the last connection to a WAL database closes, SQLite checkpoints the WAL
/// into the database and deletes it, so without it the timed run would start over in a new,
/// growing WAL file instead of the restarted one the warm-up left.
fn create(path: &Path) -> rusqlite::Result<Connection> {
    let conn = connect(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    assert_eq!(mode.to_ascii_lowercase(), "wal", "SQLite refused WAL mode");
    conn.execute_batch("CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")?;
    Ok(conn)
}

/// Runs SQLite: each call is one autocommitted INSERT of a `size`-byte blob.
pub fn run(params: &Params) -> io::Result<Report> {
    let dir = tempfile::Builder::new().prefix("sqlite-").tempdir_in(&params.dir)?;
    let path = dir.path().join("bench.db");
    let keeps_wal = create(&path).map_err(to_io)?;
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
    drop(keeps_wal);
    Ok(Report {
        system: "sqlite".into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: None,
        wal_bytes: None,
        latency_of: "one INSERT in its own transaction",
        note: "rusqlite bundled, journal_mode=WAL, synchronous=FULL, connection per thread, busy_timeout 30 s, 1 s untimed warm-up",
        rounds: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_a_warm_up_leaves_outlives_its_connections_while_the_creator_is_open() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bench.db");
        let wal = dir.path().join("bench.db-wal");
        let creator = create(&path).expect("create the database");
        {
            let warm_up = connect(&path).expect("connect");
            warm_up.execute("INSERT INTO log (payload) VALUES (?1)", [payload(128)]).expect("insert");
        }
        assert!(wal.exists(), "the WAL went with the warm-up's last connection");
        drop(creator);
        assert!(!wal.exists(), "SQLite removes the WAL when its last connection closes");
    }
}
