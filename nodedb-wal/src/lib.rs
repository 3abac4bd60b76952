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

#![warn(missing_docs)]

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
pub mod segment;
pub mod storage;
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
pub use error::{CorruptionKind, EngineFileProblem, IoOp, KeyFileProblem, Result, WalError};
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
pub use record::{Record, WalRecord};
pub use recovery::RecoveryInfo;
pub use replay::{TemporalPurge, TombstoneSet, extract_temporal_purges, extract_tombstones, last_calvin_applied};
pub use segment::SegmentInfo;
pub use storage::{FsStorage, IoBackend, SimStorage};
pub use tail::Tail;
pub use types::{Lsn, RecordType, Scope, SegmentId};
pub use wal::{SegmentedWal, recover};
pub use writer::{WalWriter, WalWriterConfig};
