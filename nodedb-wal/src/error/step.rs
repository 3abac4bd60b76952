//! The step that failed ([`IoOp`]), and the poison a failed write or fsync leaves behind.
//!
//! They sit together because a poison is nothing but the first failed step, kept so that every
//! later call can report it again as [`WalError::Poisoned`] without ever retrying the step.

use std::io;
use std::path::{Path, PathBuf};

use super::WalError;

/// The system call or step that failed, for [`WalError::Io`].
///
/// [`WalError::Poisoned`] and [`WalError::DwbDegraded`] name one too: the step whose failure
/// put the log or the buffer in that state.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
/// use nodedb_wal::{IoOp, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
///
/// let storage = FaultyStorage::new(SimStorage::new(1, FaultConfig::default()));
/// let wal = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"))?;
/// storage.fail_once(FaultOp::SyncData, 0, EIO);
/// let err = wal.append_durable(Record::new(RecordType::optional(0x100), b"lost")).unwrap_err();
/// assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "{err}");
/// // The fsync is never retried: every later call fails the same way.
/// let err = wal.append(Record::new(RecordType::optional(0x100), b"refused")).unwrap_err();
/// assert!(matches!(err, WalError::Poisoned { op: IoOp::SyncData, .. }), "{err}");
///
/// // The poisoned log holds its directory until it is dropped; then an open recovers it.
/// let again = SegmentedWal::open_with(storage.clone(), SegmentedWalConfig::new("/wal"));
/// assert!(matches!(again, Err(WalError::Locked { .. })));
/// drop(wal);
/// let wal = SegmentedWal::open_with(storage, SegmentedWalConfig::new("/wal"))?;
/// wal.append_durable(Record::new(RecordType::optional(0x100), b"accepted again"))?;
/// # Ok::<(), WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    /// Creating the log directory.
    CreateDir,
    /// Listing the log directory.
    ListDir,
    /// Taking the directory lock.
    Lock,
    /// Opening or creating a file.
    Open,
    /// Reading a file.
    Read,
    /// Writing a file.
    Write,
    /// fdatasync of a file.
    SyncData,
    /// fsync of the directory after a create, rename or remove.
    SyncDir,
    /// Changing a file's length.
    SetLen,
    /// Removing a file.
    Remove,
    /// Reading a file's length.
    Stat,
    /// Renaming a file (a truncated segment kept for reuse, or taken back into use).
    Rename,
}

/// The first failure that ended a log, a writer or a double-write buffer: every later call gets
/// it back as [`WalError::Poisoned`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Poison {
    op: IoOp,
    kind: io::ErrorKind,
    os_error: Option<i32>,
    path: Option<PathBuf>,
}

impl Poison {
    pub(crate) fn of(op: IoOp, err: &io::Error) -> Poison {
        Poison { op, kind: err.kind(), os_error: err.raw_os_error(), path: None }
    }

    /// A failure of a step on the file at `path`, which the error names.
    pub(crate) fn at(op: IoOp, path: &Path, err: &io::Error) -> Poison {
        Poison { path: Some(path.to_path_buf()), ..Poison::of(op, err) }
    }

    pub(crate) fn error(&self) -> WalError {
        WalError::Poisoned { op: self.op, kind: self.kind, os_error: self.os_error, path: self.path.clone() }
    }
}
