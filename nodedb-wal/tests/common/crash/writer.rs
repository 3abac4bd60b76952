//! The crash child of [`Mode::writer`] rounds: a [`WalWriter`] instead of a log.
//!
//! The child seals the log's newest segment the way the writer's documentation asks (the log
//! opened and closed without an append), then adds segments after it with a `WalWriter`: one
//! thread, four records per `sync` (the pipeline of thread 3, so the parent's bound on
//! unacknowledged records holds), an `ACK` line for each record once its `sync` returned Ok, and
//! a `finish` and a new writer whenever a segment passes the round's segment size. A crash can
//! land in a batch write, a sync, a `finish`'s end frame or a new segment's creation.

use std::fmt::Write as _;
use std::fs::File;

use nodedb_wal::{FsStorage, Lsn, Record, SegmentId, WalError, WalWriter, WalWriterConfig};

use super::child::{ChildSpec, exit_open_failed, report_error, write_lines};
use super::{LARGE_THREAD_BASE, Mode, Origin, pipeline_depth};

/// The writer's thread: role 3, four records per sync, one of the threads that append records
/// of several MiB in rounds with large records.
const WRITER_ROLE: u32 = 3;

/// Seals the log in `spec`'s directory and returns the id and first LSN of the segment that
/// follows it.
fn seal_log(spec: &ChildSpec) -> Result<(SegmentId, Lsn), WalError> {
    let wal = spec.mode.open(&spec.dir)?;
    let next_id = wal.segments().last().map_or(SegmentId(1), |s| SegmentId(s.id.0 + 1));
    let next_lsn = wal.next_lsn();
    wal.close()?;
    Ok((next_id, next_lsn))
}

fn create(mode: Mode, spec: &ChildSpec, id: SegmentId, first: Lsn) -> Result<WalWriter, WalError> {
    let storage = if mode.uring { FsStorage::io_uring() } else { FsStorage::pwrite_only() };
    // Batches of four blocks in half the rounds: the writer writes many times between syncs.
    let batch_bytes = if spec.round % 4 < 2 { 16 << 10 } else { WalWriterConfig::default().batch_bytes };
    let config = WalWriterConfig { direct_io: mode.direct, alignment: 4096, batch_bytes };
    WalWriter::create_with(storage, &spec.dir, id, first, config)
}

/// The child's work: seal, say where the writer starts, then append and acknowledge until the
/// process is killed or an error stops it.
pub fn run_writer_child(spec: &ChildSpec, acks: &File) {
    let (mut id, first) = seal_log(spec).unwrap_or_else(|e| exit_open_failed(acks, &e));
    let mut writer = create(spec.mode, spec, id, first).unwrap_or_else(|e| exit_open_failed(acks, &e));
    write_lines(acks, &format!("OPEN {first}\n"));
    std::thread::spawn(super::child::exit_with_parent);
    let thread = WRITER_ROLE + if spec.mode.large_records { LARGE_THREAD_BASE } else { 0 };
    let depth = pipeline_depth(thread);
    let (mut seq, mut bytes) = (0, 0);
    loop {
        let mut lines = String::new();
        for seq in seq..seq + depth {
            let origin = Origin { round: spec.round, thread, seq };
            let payload = origin.payload();
            bytes += payload.len() as u64;
            match writer.append(Record::new(origin.record_type(), &payload).scoped(origin.scope())) {
                Ok(lsn) => writeln!(lines, "ACK {lsn} {thread} {seq}").expect("write to a String"),
                Err(e) => return report_error(acks, thread, &e),
            }
        }
        if let Err(e) = writer.sync() {
            return report_error(acks, thread, &e);
        }
        write_lines(acks, &lines);
        seq += depth;
        if bytes >= spec.mode.segment_bytes() {
            let next = writer.next_lsn();
            if let Err(e) = writer.finish() {
                return report_error(acks, thread, &e);
            }
            id = SegmentId(id.0 + 1);
            bytes = 0;
            writer = match create(spec.mode, spec, id, next) {
                Ok(writer) => writer,
                Err(e) => return report_error(acks, thread, &e),
            };
        }
    }
}
