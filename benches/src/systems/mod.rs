//! The systems `compare` runs. Each one sets up in its own directory, runs the timed loop, and
//! tears down; setup and teardown are outside the timing.

pub mod nodedb;
pub mod okaywal;
pub mod raw;
pub mod sqlite;

use std::io;

use crate::driver::Params;
use crate::report::Report;

/// Runs the system named `name` (one of [`crate::args::ALL_SYSTEMS`]).
pub fn run(name: &str, params: &Params, pipelined: bool) -> io::Result<Report> {
    match name {
        "nodedb-wal" if pipelined => nodedb::pipelined(params, false),
        "nodedb-wal-batch" if pipelined => nodedb::pipelined(params, true),
        "nodedb-wal-pwrite" if pipelined => nodedb::pipelined_backend(params, nodedb_wal::IoBackend::Pwrite),
        "nodedb-wal-uring" if pipelined => nodedb::pipelined_backend(params, nodedb_wal::IoBackend::IoUring),
        "nodedb-wal-batch" => Err(io::Error::new(io::ErrorKind::InvalidInput, "nodedb-wal-batch runs with --pipelined only")),
        "nodedb-wal" => nodedb::group_commit(params),
        "nodedb-wal-encrypted" => nodedb::group_commit_encrypted(params),
        "nodedb-wal-pwrite" => nodedb::group_commit_backend(params, nodedb_wal::IoBackend::Pwrite),
        "nodedb-wal-uring" => nodedb::group_commit_backend(params, nodedb_wal::IoBackend::IoUring),
        "fsync-per-append" => nodedb::fsync_per_append(params),
        "raw-floor" => raw::floor(params),
        "raw-bandwidth" => raw::bandwidth(params),
        "okaywal" => okaywal::run(params, okaywal::Files::Default),
        "okaywal-64m" => okaywal::run(params, okaywal::Files::Large),
        "sqlite" => sqlite::run(params),
        other => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown system {other}"))),
    }
}

/// A payload that is not all zeros, so nothing along the way can shortcut it.
#[must_use]
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u8) ^ 0xA5).collect()
}
