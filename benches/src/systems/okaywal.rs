//! okaywal 0.3: every thread commits one entry per record. `EntryWriter::commit` returns once
//! the entry is synced, and okaywal group-commits: threads queued behind one sync share it.

use std::io;

use okaywal::{LogVoid, WriteAheadLog};

use crate::driver::{Params, run_for};
use crate::report::Report;
use crate::systems::payload;

/// Runs okaywal with its default configuration and a checkpointer that does nothing
/// (`LogVoid`), so segment recycling costs only okaywal's own work.
pub fn run(params: &Params) -> io::Result<Report> {
    let dir = tempfile::Builder::new().prefix("okaywal-").tempdir_in(&params.dir)?;
    let wal = WriteAheadLog::recover(dir.path(), LogVoid)?;
    let payload = payload(params.size);
    let (wal_ref, payload) = (&wal, &payload);
    let timed = run_for(params.threads, params.duration, params.device, move |_| {
        Ok(move || {
            let mut entry = wal_ref.begin_entry()?;
            entry.write_chunk(payload)?;
            entry.commit()?;
            Ok(1)
        })
    })?;
    wal.shutdown()?;
    Ok(Report {
        system: "okaywal".into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: None,
        wal_bytes: None,
        latency_of: "begin_entry + write_chunk + commit (durable)",
        note: "okaywal 0.3 defaults, no-op checkpointer (LogVoid); fsyncs unknown, see device_flushes",
    })
}
