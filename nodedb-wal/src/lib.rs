//! `nodedb-wal`: the write-ahead log a multi-model database trusts with every write.
//!
//! A directory of segment files, each opening with a 16-byte preamble; records framed with a
//! CRC32C, dense LSNs, O_DIRECT block-aligned writes (pwrite + fdatasync by default, io_uring on request), and a group committer
//! so that many concurrent appends share one fdatasync. Recovery returns every acknowledged
//! record and nothing that was never appended, cuts torn tails and reports real corruption as
//! an error.
//!
//! Beside the log, [`DoubleWriteBuffer`] protects the storage engines' in-place page writes
//! from torn pages: page images go to a side file first, with one fdatasync per batch.
//!
//! # A database's use of the log
//!
//! Open the log at start-up (recovery runs first), replay what the engines have not applied,
//! then append; once the engines have made a checkpoint durable, drop the log below it.
//!
//! ```
//! use nodedb_wal::{CollectionTombstonePayload, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};
//!
//! // The application's own record type: 0x0100..=0x7FFF may be skipped by older readers.
//! const PUT: RecordType = RecordType::optional(0x100);
//!
//! let dir = tempfile::tempdir()?;
//! let mut config = SegmentedWalConfig::new(dir.path().join("wal"));
//! config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
//!
//! // Write. `append` only buffers; a record is acknowledged once a sync covers it.
//! let wal = SegmentedWal::open(config.clone())?;
//! wal.append_durable(Record::new(PUT, b"orders/1"))?;
//! let lsns = wal.append_batch(&[Record::new(PUT, b"orders/2"), Record::new(PUT, b"orders/3")])?;
//! wal.wait_durable(*lsns.end())?; // one fdatasync for both
//! let drop_at = wal.next_lsn();
//! wal.append_tombstone(&CollectionTombstonePayload { database: 0, tenant: 0, collection: "orders".into(), purge_lsn: drop_at })?;
//! wal.append_durable(Record::new(PUT, b"orders/1 again"))?;
//! drop(wal); // or a crash: recovery brings back every acknowledged record
//!
//! // Restart. Recovery has cut any torn tail and gathered the tombstones in its scan.
//! let wal = SegmentedWal::open(config)?;
//! let info = wal.recovery_info();
//! // The engines' files hold everything up to here. The log was truncated only below such a
//! // point, so reading on from it never meets `LsnNotRetained` unless records were lost.
//! let engine_applied = Lsn::ZERO;
//! // Reading from past the log's end is no error and reads nothing, so engines ahead of the
//! // log (the log restored from an older backup, or another database's log) would replay
//! // nothing and go on: check first.
//! assert!(engine_applied < wal.next_lsn(), "the engines hold records this log does not");
//! let mut replayed = Vec::new();
//! for record in wal.read_from(engine_applied.next())? {
//!     let record = record?;
//!     if record.record_type == PUT && info.tombstones.is_live(&record, "orders") {
//!         replayed.push(record.payload.into_vec());
//!     }
//! }
//! assert_eq!(replayed, [b"orders/1 again".to_vec()], "the rows before the drop stay dropped");
//! // A drop the engines' files do not hold yet (its tombstone at or past what they applied)
//! // must reach those files too: their rows of "orders" below the purge LSN go. The purge LSN
//! // alone cannot tell (it may lie below the engines' checkpoint); the drop's own LSN can.
//! assert!(info.tombstones.dropped_at(0, 0, "orders") > Some(engine_applied));
//!
//! // Checkpoint: the engines' files now hold every record up to `applied`. They store it
//! // with themselves; the next open replays from `applied.next()`, so the log below that
//! // LSN can go (`truncate_before` keeps every record at or above the LSN it is given).
//! let applied = wal.sync()?;
//! wal.truncate_before(applied.next())?; // whole segments only; the newest is always kept
//! wal.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where things are
//!
//! - **Writing**: [`SegmentedWal`] (`Send + Sync`; share it in an `Arc`) with
//!   [`append`](SegmentedWal::append), [`append_durable`](SegmentedWal::append_durable),
//!   [`append_group`](SegmentedWal::append_group) (all or nothing after a crash),
//!   [`append_batch`](SegmentedWal::append_batch) (many records, one reservation);
//!   waiting with [`wait_durable`](SegmentedWal::wait_durable), the
//!   [`durable`](SegmentedWal::durable) future, [`request_sync`](SegmentedWal::request_sync)
//!   or [`sync`](SegmentedWal::sync). Settings: [`SegmentedWalConfig`].
//! - **Reading**: [`read_from`](SegmentedWal::read_from) ([`WalIter`], whose
//!   [`next_view`](WalIter::next_view) lends records without a copy),
//!   [`read_mapped`](SegmentedWal::read_mapped) for a long catch-up,
//!   [`lazy_reader`](SegmentedWal::lazy_reader) for headers first ([`LazyWalReader`]),
//!   [`replay_parallel`](SegmentedWal::replay_parallel), and [`tail`](SegmentedWal::tail) to
//!   follow the live log ([`Tail`]). [`ReadOnlyWal`] reads a log without owning it (tools, or
//!   beside the writer); the `nodedb-wal` binary is such a tool.
//! - **Retention**: [`truncate_before`](SegmentedWal::truncate_before) and
//!   [`oldest_lsn`](SegmentedWal::oldest_lsn).
//! - **Records the engines share**: [`append_tombstone`](SegmentedWal::append_tombstone),
//!   [`append_temporal_purge`](SegmentedWal::append_temporal_purge) and
//!   [`append_calvin_applied`](SegmentedWal::append_calvin_applied); at open, recovery hands
//!   the first two back in [`RecoveryInfo`]; a replay that applies them in LSN order, as it
//!   meets them, decodes each with [`WalRecord::tombstone`] and [`WalRecord::temporal_purge`].
//!   A drop or purge goes all-or-nothing with the database's own records (its catalog entry)
//!   through [`append_group_entries`](SegmentedWal::append_group_entries) ([`GroupEntry`]).
//!   They go with their segments at truncation, so the engines keep drops and purges in their
//!   own checkpoints ([`TombstoneSet::dropped_at`], or [`TombstoneSet::drops`] for every drop
//!   with its own LSN).
//! - **Encryption at rest**: [`SegmentedWalConfig::key_ring`] with a [`KeyRing`] of
//!   [`SecureKey`]s; [`segment_key_ids`](SegmentedWal::segment_key_ids) tells which keys the
//!   log still needs after a rotation, and [`retire_key`](SegmentedWal::retire_key) lets one
//!   go once none does; [`encrypt_engine_file`] for the engines' own files.
//! - **Segments made elsewhere** (an import): [`WalWriter`].
//! - **A damaged log with no replica**: [`salvage`] copies its records up to the damage into a
//!   new log, and reports what lies past it.
//! - **Torn pages of in-place writes**: [`DoubleWriteBuffer`]. At start-up, its
//!   [`recover`](DoubleWriteBuffer::recover) puts torn pages back: run it before the engines
//!   apply the log's replay to those pages.
//! - **Tests**: [`SimStorage`] (a simulated disk that crashes on request, with faults from a
//!   [`FaultConfig`]) and [`storage::faulty::FaultyStorage`] (injected I/O errors), through
//!   [`SegmentedWal::open_with`]. An engine that runs on either names the log
//!   `SegmentedWal<S>` with `S:` [`Storage`].
//! - **Errors**: one type, [`WalError`], whose docs say what a database does with each.
//!   [`WalError::Poisoned`] means a write or fdatasync failed: nothing more is accepted, and
//!   opening the log again (once every handle is dropped) recovers what the disk holds, which
//!   may include records whose appends got the error.
//!
//! The repository's `docs/` holds the byte layout (`FORMAT.md`), what each call promises and
//! the test behind each promise (`DURABILITY.md`), and the reasons behind the design
//! (`DESIGN.md`).

#![warn(missing_docs)]

/// The README's code, compiled with the doctests so that it stays right.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

mod commit;
mod config;
pub mod crypto;
pub mod dwb;
mod error;
pub mod format;
mod manifest;
mod parallel;
mod payload;
mod read;
mod readonly;
mod record;
pub mod recovery;
mod replay;
pub mod salvage;
pub mod segment;
pub mod storage;
mod system;
mod tail;
mod types;
mod wal;
mod writer;

pub use commit::{CommitStatsSnapshot, DurableFuture, GroupCommitter};
pub use config::SegmentedWalConfig;
pub use crypto::{KeyRing, SecureKey, decrypt_engine_file, encrypt_engine_file};
pub use dwb::{
    DegradedPolicy, DoubleWriteBuffer, DwbConfig, DwbMode, DwbRecovery, DwbStats, FileId, PageCheck, wal_dwb_bytes_written_total,
};
pub use error::{CorruptionKind, EngineFileProblem, IoOp, KeyFileProblem, MissingBecause, Result, WalError};
pub use format::frame::RecordHeader;
pub use format::payload::{
    CalvinAppliedPayload, CollectionTombstonePayload, MAX_COLLECTION_NAME_LEN, PayloadError, TemporalPurgeEngine, TemporalPurgePayload,
};
pub use format::preamble::{
    CIPHER_AES_256_GCM, CIPHER_NONE, PREAMBLE_SIZE, PREAMBLE_VERSION, SEG_PREAMBLE_MAGIC, SegmentPreamble, WAL_PREAMBLE_MAGIC,
};
pub use payload::Payload;
pub use read::{LazyWalReader, RecordHandle, RecordView, WalIter};
pub use readonly::ReadOnlyWal;
pub use record::{GroupEntry, Record, WalRecord};
pub use recovery::RecoveryInfo;
pub use replay::{DroppedCollection, TemporalPurge, TombstoneSet, extract_temporal_purges, extract_tombstones, last_calvin_applied};
pub use segment::SegmentInfo;
pub use storage::{FaultConfig, FsStorage, IoBackend, SimStorage, Storage};
pub use tail::Tail;
pub use types::{Lsn, RecordType, Scope, SegmentId};
pub use wal::{SegmentedWal, recover};
pub use writer::{WalWriter, WalWriterConfig};
