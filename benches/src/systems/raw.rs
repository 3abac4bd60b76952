//! The disk itself, without a log: O_DIRECT `pwrite` + `fdatasync` in a loop from one thread.
//!
//! Both baselines write into a file that was fully written and synced beforehand, so no sync
//! also has to persist block allocation: that is the fastest a sync can be on this disk, which
//! is what a floor and a ceiling should be.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nodedb_wal::storage::AlignedBuf;
use rustix::fs::{Mode, OFlags};

use crate::driver::{Params, Timed, run_for};
use crate::report::Report;

const BLOCK: usize = 4096;
const FLOOR_WRITE: usize = 4 << 10;
const FLOOR_FILE: u64 = 64 << 20;
const BANDWIDTH_WRITE: usize = 1 << 20;
const BANDWIDTH_FILE: u64 = 256 << 20;

/// Opens `path` for O_DIRECT writes and fills `len` bytes of it, synced.
fn prewritten(path: &Path, len: u64) -> io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::DIRECT | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644))?;
    let mut chunk = AlignedBuf::zeroed(BANDWIDTH_WRITE, BLOCK);
    chunk.fill(0x5A);
    let mut offset = 0;
    while offset < len {
        write_all_at(&fd, &chunk, offset)?;
        offset += chunk.len() as u64;
    }
    rustix::fs::fdatasync(&fd)?;
    Ok(fd)
}

/// One O_DIRECT write; a short write is an error because an aligned one never should be short.
fn write_all_at(fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<()> {
    let written = rustix::io::pwrite(fd, buf, offset)?;
    if written != buf.len() {
        return Err(io::Error::other(format!("short O_DIRECT write: {written} of {} bytes", buf.len())));
    }
    Ok(())
}

/// Writes `write_len` bytes + fdatasync per call, cycling through a `file_len` prewritten file.
fn write_sync_loop(params: &Params, name: &str, write_len: usize, file_len: u64) -> io::Result<(Timed, u64)> {
    let dir = tempfile::Builder::new().prefix(name).tempdir_in(&params.dir)?;
    let fd = prewritten(&dir.path().join("raw"), file_len)?;
    let mut buf = AlignedBuf::zeroed(write_len, BLOCK);
    buf.fill(0xC3);
    let syncs = AtomicU64::new(0);
    let (fd, buf, syncs_ref) = (&fd, &buf, &syncs);
    let timed = run_for(1, params.duration, params.device, move |_| {
        let mut offset = 0u64;
        Ok(move || {
            write_all_at(fd, buf, offset)?;
            rustix::fs::fdatasync(fd)?;
            syncs_ref.fetch_add(1, Ordering::Relaxed);
            offset = (offset + write_len as u64) % file_len;
            Ok(1)
        })
    })?;
    Ok((timed, syncs.into_inner()))
}

/// 4 KiB O_DIRECT write + fdatasync at queue depth 1: the latency floor of a durable append.
pub fn floor(params: &Params) -> io::Result<Report> {
    let (timed, syncs) = write_sync_loop(params, "raw-floor-", FLOOR_WRITE, FLOOR_FILE)?;
    Ok(Report {
        system: "raw-floor".into(),
        threads: 1,
        size_bytes: FLOOR_WRITE,
        timed,
        fsyncs: Some(syncs),
        wal_bytes: None,
        latency_of: "one 4 KiB pwrite + fdatasync",
        note: "O_DIRECT, queue depth 1, into already-written blocks: the disk's durable latency floor",
        rounds: 1,
    })
}

/// 1 MiB O_DIRECT writes + fdatasync each, sequential: the bandwidth ceiling of synced writes.
pub fn bandwidth(params: &Params) -> io::Result<Report> {
    let (timed, syncs) = write_sync_loop(params, "raw-bandwidth-", BANDWIDTH_WRITE, BANDWIDTH_FILE)?;
    Ok(Report {
        system: "raw-bandwidth".into(),
        threads: 1,
        size_bytes: BANDWIDTH_WRITE,
        timed,
        fsyncs: Some(syncs),
        wal_bytes: None,
        latency_of: "one 1 MiB pwrite + fdatasync",
        note: "O_DIRECT, sequential through a 256 MiB already-written file: the synced-bandwidth ceiling",
        rounds: 1,
    })
}
