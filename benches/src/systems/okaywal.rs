//! okaywal 0.3: every thread commits one entry per record. `EntryWriter::commit` returns once
//! the entry is synced, and okaywal group-commits: threads queued behind one sync share it.

use std::io;

use okaywal::{Configuration, LogVoid};

use crate::driver::{Params, WARM_UP, run_for};
use crate::report::Report;
use crate::systems::payload;

/// The log files okaywal is given.
#[derive(Clone, Copy, Debug)]
pub enum Files {
    /// Its defaults: 1 MiB files, a checkpoint after 768 KiB.
    Default,
    /// Files as large as nodedb-wal's default segments: 64 MiB, a checkpoint after 48 MiB. With
    /// large records its default files roll (a rename, and a directory sync when checkpointed)
    /// many times a second, which is not the comparison a reader wants for them.
    Large,
}

/// Runs okaywal with a checkpointer that does nothing (`LogVoid`), so segment recycling costs
/// only okaywal's own work.
pub fn run(params: &Params, files: Files) -> io::Result<Report> {
    let dir = tempfile::Builder::new().prefix("okaywal-").tempdir_in(&params.dir)?;
    let (config, system, note) = match files {
        Files::Default => (
            Configuration::default_for(dir.path()),
            "okaywal",
            "okaywal 0.3 defaults, no-op checkpointer (LogVoid), 1 s untimed warm-up; fsyncs unknown, see device_flushes",
        ),
        Files::Large => (
            Configuration::default_for(dir.path()).preallocate_bytes(64 << 20).checkpoint_after_bytes(48 << 20),
            "okaywal-64m",
            "okaywal 0.3, 64 MiB files checkpointed after 48 MiB, no-op checkpointer (LogVoid), 1 s untimed warm-up; fsyncs unknown, see device_flushes",
        ),
    };
    let wal = config.open(LogVoid)?;
    let payload = payload(params.size);
    let (wal_ref, payload) = (&wal, &payload);
    let make = move |_| {
        Ok(move || {
            let mut entry = wal_ref.begin_entry()?;
            entry.write_chunk(payload)?;
            entry.commit()?;
            Ok(1)
        })
    };
    run_for(params.threads, WARM_UP, params.device, make)?;
    let timed = run_for(params.threads, params.duration, params.device, make)?;
    wal.shutdown()?;
    Ok(Report {
        system: system.into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: None,
        wal_bytes: None,
        latency_of: "begin_entry + write_chunk + commit (durable)",
        note,
        rounds: 1,
    })
}
