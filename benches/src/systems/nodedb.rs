//! `nodedb-wal` itself, driven three ways: blocking appends with group commit, the same with
//! group commit defeated (one fdatasync per record), and one pipelined appender.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodedb_wal::{FsStorage, IoBackend, KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, WalError};

use crate::driver::{Params, run_for};
use crate::report::Report;
use crate::systems::payload;

/// The record type every benchmark record carries: an application type readers may skip.
pub const BENCH_TYPE: RecordType = RecordType::optional(0x0100);

/// Turns a WAL error into the `io::Error` the driver passes around, keeping its message.
pub fn to_io(err: WalError) -> io::Error {
    io::Error::other(err)
}

/// A fresh log in its own directory under the run's directory, with the default config
/// (O_DIRECT, 4 KiB blocks, 1 MiB batches, 64 MiB segments). The directory goes with the guard.
pub fn open_fresh(params: &Params) -> io::Result<(SegmentedWal, tempfile::TempDir)> {
    open_fresh_on(params, FsStorage::new(), None)
}

/// [`open_fresh`] with a chosen I/O backend and, if given, a key ring (an active key encrypts).
pub fn open_fresh_on(params: &Params, storage: FsStorage, key_ring: Option<Arc<KeyRing>>) -> io::Result<(SegmentedWal, tempfile::TempDir)> {
    let dir = tempfile::Builder::new().prefix("nodedb-wal-").tempdir_in(&params.dir)?;
    let mut config = SegmentedWalConfig::new(dir.path());
    config.key_ring = key_ring;
    config.commit_window = params.commit_window;
    let wal = SegmentedWal::open_with(storage, config).map_err(to_io)?;
    Ok((wal, dir))
}

/// `append_durable` from every thread: concurrent appends share fdatasyncs.
pub fn group_commit(params: &Params) -> io::Result<Report> {
    group_commit_on(params, FsStorage::new(), "nodedb-wal", None)
}

/// [`group_commit`] with every record encrypted (AES-256-GCM under a random key).
pub fn group_commit_encrypted(params: &Params) -> io::Result<Report> {
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    group_commit_on(params, FsStorage::new(), "nodedb-wal-encrypted", Some(ring))
}

/// Storage on `backend` and the backend's name, or an error where the kernel refuses io_uring.
fn backend_storage(backend: IoBackend) -> io::Result<(FsStorage, &'static str)> {
    let (storage, name) = match backend {
        IoBackend::IoUring => (FsStorage::io_uring(), "uring"),
        IoBackend::Pwrite => (FsStorage::pwrite_only(), "pwrite"),
    };
    if storage.backend() != backend {
        return Err(io::Error::other("the kernel refused io_uring"));
    }
    Ok((storage, name))
}

/// [`group_commit`] on a named I/O backend: `nodedb-wal-pwrite` or `nodedb-wal-uring`.
pub fn group_commit_backend(params: &Params, backend: IoBackend) -> io::Result<Report> {
    let (storage, name) = backend_storage(backend)?;
    let system = format!("nodedb-wal-{name}");
    group_commit_on(params, storage, &system, None)
}

fn group_commit_on(params: &Params, storage: FsStorage, name: &str, key_ring: Option<Arc<KeyRing>>) -> io::Result<Report> {
    let (wal, _dir) = open_fresh_on(params, storage, key_ring)?;
    let payload = payload(params.size);
    if params.checkpoint {
        warm_up(&wal, &payload)?;
    }
    let (wal_ref, payload) = (&wal, &payload);
    let before = wal.stats();
    let timed = with_checkpointer(&wal, params.checkpoint, || {
        run_for(params.threads, params.duration, params.device, move |_| {
            Ok(move || {
                wal_ref.append_durable(Record::new(BENCH_TYPE, payload)).map_err(to_io)?;
                Ok(1)
            })
        })
    })?;
    let stats = wal.stats().since(&before);
    wal.close().map_err(to_io)?;
    Ok(Report {
        system: name.into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: Some(stats.fsyncs),
        wal_bytes: Some(stats.bytes_written),
        latency_of: "one append_durable call",
        note: if params.checkpoint {
            "append_durable from every thread; group commit; truncated behind by a checkpointer, files reused"
        } else {
            "append_durable from every thread; group commit; never truncated (--no-checkpoint)"
        },
        rounds: 1,
    })
}

/// The same log with group commit defeated: each thread holds one global mutex around
/// `append` + `wait_durable`, so no sync can cover a second record. This is the cost of the
/// write path without batching, on the same code and the same files.
pub fn fsync_per_append(params: &Params) -> io::Result<Report> {
    let (wal, _dir) = open_fresh(params)?;
    let payload = payload(params.size);
    if params.checkpoint {
        warm_up(&wal, &payload)?;
    }
    let one_at_a_time = Mutex::new(());
    let (wal_ref, payload, one_at_a_time) = (&wal, &payload, &one_at_a_time);
    let before = wal.stats();
    let timed = with_checkpointer(&wal, params.checkpoint, || {
        run_for(params.threads, params.duration, params.device, move |_| {
            Ok(move || {
                let _turn = one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let lsn = wal_ref.append(Record::new(BENCH_TYPE, payload)).map_err(to_io)?;
                wal_ref.wait_durable(lsn).map_err(to_io)?;
                Ok(1)
            })
        })
    })?;
    let stats = wal.stats().since(&before);
    wal.close().map_err(to_io)?;
    Ok(Report {
        system: "fsync-per-append".into(),
        threads: params.threads,
        size_bytes: params.size,
        timed,
        fsyncs: Some(stats.fsyncs),
        wal_bytes: Some(stats.bytes_written),
        latency_of: "one append + wait_durable, including the wait for the global mutex",
        note: if params.checkpoint {
            "nodedb-wal with a global mutex around append+wait_durable: one fdatasync per record; checkpointing"
        } else {
            "nodedb-wal with a global mutex around append+wait_durable: one fdatasync per record; never truncated"
        },
        rounds: 1,
    })
}

/// Appends `count` records without waiting and returns the last LSN.
pub fn append_many(wal: &SegmentedWal, payload: &[u8], count: u64) -> io::Result<Lsn> {
    let mut last = Lsn::ZERO;
    for _ in 0..count {
        last = wal.append(Record::new(BENCH_TYPE, payload)).map_err(to_io)?;
    }
    Ok(last)
}

/// Untimed: writes three segments' worth and truncates them (their files are kept for reuse),
/// then goes on into the next segment, which reuses one of them, and truncates again. The log
/// then starts timing as a checkpointing database keeps it: appending into a reused file, with
/// truncated files waiting for the next segments. (Stopping after the first truncation left the
/// timed run in the fresh remainder of the fourth segment.)
fn warm_up(wal: &SegmentedWal, payload: &[u8]) -> io::Result<()> {
    let fill_until = |done: &dyn Fn(&SegmentedWal) -> bool| -> io::Result<()> {
        while !done(wal) {
            let last = append_many(wal, payload, 256)?;
            wal.request_sync(last).map_err(to_io)?;
        }
        let durable = wal.sync().map_err(to_io)?;
        wal.truncate_before(durable.next()).map_err(to_io)?;
        Ok(())
    };
    fill_until(&|wal| wal.segments().len() >= 4)?;
    let newest = |wal: &SegmentedWal| wal.segments().last().map(|s| s.id);
    let before = newest(wal);
    fill_until(&|wal| newest(wal) != before)
}

/// Runs `body` with a checkpointer beside it when `on`, as a database runs one: every few
/// milliseconds it truncates the log below what is durable once a segment is sealed, so that
/// truncated segment files are kept and reused. okaywal's side checkpoints as it goes too (its
/// defaults start a checkpoint every 768 KiB and reuse the checkpointed 1 MiB files), so both
/// logs are compared in the state a long-running database keeps them in.
fn with_checkpointer<R>(wal: &SegmentedWal, on: bool, body: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
    if !on {
        return body();
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let checkpointer = scope.spawn(|| -> io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                if wal.segments().len() > 1 {
                    wal.truncate_before(wal.durable_lsn().next()).map_err(to_io)?;
                }
            }
            Ok(())
        });
        let result = body();
        stop.store(true, Ordering::Relaxed);
        let checkpointed = checkpointer.join().expect("the checkpointer thread panicked");
        let output = result?;
        checkpointed?;
        Ok(output)
    })
}

/// One thread appends groups of `every` records without waiting (one `append` each, or one
/// `append_batch` per group if `batched`). After each group it asks for a sync of it
/// (`request_sync`); with `depth` groups not yet known durable it waits on the oldest, whose
/// sync ran while the later groups were appended. Only records whose `wait_durable` returned
/// are counted.
pub fn pipelined(params: &Params, batched: bool) -> io::Result<Report> {
    let system = if batched { "nodedb-wal-pipelined-batch" } else { "nodedb-wal-pipelined" };
    pipelined_on(params, batched, FsStorage::new(), system.into())
}

/// [`pipelined`] (one `append` per record) on a named I/O backend:
/// `nodedb-wal-pipelined-pwrite` or `nodedb-wal-pipelined-uring`.
pub fn pipelined_backend(params: &Params, backend: IoBackend) -> io::Result<Report> {
    let (storage, name) = backend_storage(backend)?;
    pipelined_on(params, false, storage, format!("nodedb-wal-pipelined-{name}"))
}

fn pipelined_on(params: &Params, batched: bool, storage: FsStorage, system: String) -> io::Result<Report> {
    let (wal, _dir) = open_fresh_on(params, storage, None)?;
    let payload = payload(params.size);
    let (wal_ref, payload, every, depth) = (&wal, &payload, params.every, params.depth.max(1));
    let checkpoint = params.checkpoint;
    if checkpoint {
        warm_up(&wal, payload)?;
    }
    let before = wal.stats();
    let timed = run_for(1, params.duration, params.device, move |_| {
        let mut in_flight: VecDeque<Lsn> = VecDeque::with_capacity(depth + 1);
        let group: Vec<Record<'_>> = (0..every).map(|_| Record::new(BENCH_TYPE, payload)).collect();
        Ok(move || {
            let last = if batched { *wal_ref.append_batch(&group).map_err(to_io)?.end() } else { append_many(wal_ref, payload, every)? };
            wal_ref.request_sync(last).map_err(to_io)?;
            in_flight.push_back(last);
            if in_flight.len() <= depth {
                return Ok(0);
            }
            let oldest = in_flight.pop_front().expect("more than depth groups");
            wal_ref.wait_durable(oldest).map_err(to_io)?;
            if checkpoint && wal_ref.segments().len() > 1 {
                wal_ref.truncate_before(oldest.next()).map_err(to_io)?;
            }
            Ok(every)
        })
    })?;
    let stats = wal.stats().since(&before);
    wal.close().map_err(to_io)?;
    Ok(Report {
        system,
        threads: 1,
        size_bytes: params.size,
        timed,
        fsyncs: Some(stats.fsyncs),
        wal_bytes: Some(stats.bytes_written),
        latency_of: "`every` appends, request_sync, and wait_durable of the oldest group in flight",
        note: match (batched, checkpoint) {
            (true, true) => {
                "one thread: groups of `every` records, one append_batch each, at most `depth` groups in flight; truncates behind itself"
            }
            (true, false) => {
                "one thread: groups of `every` records, one append_batch each, at most `depth` groups in flight; never truncates"
            }
            (false, true) => "one thread: groups of `every` appends, at most `depth` groups in flight; truncates behind itself",
            (false, false) => "one thread: groups of `every` appends, at most `depth` groups in flight; never truncates",
        },
        rounds: 1,
    })
}
