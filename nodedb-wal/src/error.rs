//! The crate's one error type, [`WalError`], and its [`Result`].
//!
//! The enums that detail a variant (the failed step, the kind of corruption, the problem with
//! an engine or key file) live in the submodules, as do the longer message sentences and the
//! poison a failed write leaves; this file keeps the list of outcomes a caller matches on.

mod corruption;
mod encryption;
mod messages;
mod step;

use std::io;
use std::path::PathBuf;

pub use self::corruption::{CorruptionKind, MissingBecause};
pub use self::encryption::{EngineFileProblem, KeyFileProblem};
use self::messages::{floor_slot_damaged, missing_why, needed_by, poisoned};
pub use self::step::IoOp;
pub(crate) use self::step::Poison;
use crate::format::dwb::FileId;
use crate::types::{Lsn, RecordType, SegmentId};

/// Result with [`WalError`].
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::{FaultConfig, Storage};
/// use nodedb_wal::{Lsn, Record, RecordType, Result, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// fn log_note<S: Storage>(wal: &SegmentedWal<S>, note: &str) -> Result<Lsn> {
///     wal.append_durable(Record::new(RecordType::optional(0x100), note.as_bytes()))
/// }
///
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// assert_eq!(log_note(&wal, "started")?, Lsn::FIRST);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Every error `nodedb-wal` returns.
///
/// Match on the variant to tell damaged data ([`WalError::is_corruption`]) from I/O failure
/// and from misuse; `Display` gives a sentence for logs.
///
/// # What a database does with each error
///
/// In short: only [`Poisoned`](WalError::Poisoned) stops the log (every later call on that
/// handle returns it; drop the log and open it again), as [`DwbDegraded`](WalError::DwbDegraded)
/// stops a double-write buffer's page writes until it is reopened; every other error leaves
/// the log as it was. The key errors (the row of `KeyRingMissing`, and
/// [`PlaintextRefused`](WalError::PlaintextRefused)) mean "give the right key ring". Worth a
/// retry once the cause named is gone: `Io` at open or from `truncate_before`, `Locked` once
/// the other writer has closed, `SegmentTruncated` (from the oldest LSN), the O_DIRECT
/// refusals after a change of config. The rest are damage (as corruption), a newer build's
/// log, or a bug in the caller, and a retry as it is gets the same answer.
///
/// | error | what the database does |
/// |---|---|
/// | [`Poisoned`](WalError::Poisoned) | stops writing, drops every handle and opens the log again. A write the log did not acknowledge before it failed is in doubt, not lost: its record may be back after the open (the second example). Answer it "outcome unknown", never "failed", and let replay tell. A full disk (`kind` `StorageFull`) may refuse that open too, with `Io`, until there is room: [`truncate_before`](crate::SegmentedWal::truncate_before) still runs on the poisoned log, so truncating below the engines' checkpoint before dropping it frees the segments the checkpoint covers |
/// | [`Corruption`](WalError::Corruption), [`ManifestDamaged`](WalError::ManifestDamaged), [`FloorDamaged`](WalError::FloorDamaged), [`FloorSlotDamaged`](WalError::FloorSlotDamaged) ([`is_corruption`](WalError::is_corruption)) | does not start on this log: acknowledged records are damaged, or the log cannot tell whether some are missing. Nothing was cut or repaired, and [`crate::ReadOnlyWal`] refuses the same log, so this crate reads nothing past the damage. Keep a copy of the directory, locate the damage with `nodedb-wal verify DIR` and `nodedb-wal inspect DIR`, and restore from a backup or a replica. Where neither exists (or the replica is behind), [`crate::salvage`] (`nodedb-wal salvage DIR NEW_DIR`) copies every record before the damage into a new log that opens; the cost is every record from the damage on, which its report counts (intact records past it, with their LSNs), and the new log hands those LSNs out again, so engines that applied them hold data the log no longer has. The two side files' messages say what removing them costs |
/// | [`MissingSegment`](WalError::MissingSegment) | a segment file the log needs is not in the directory (removed by hand, a partial copy or restore): put it back. `nodedb-wal inspect DIR` says whether `FLOOR`, `MANIFEST` or a hole between segments asks for it |
/// | [`KeyRingMissing`](WalError::KeyRingMissing), [`WrongKey`](WalError::WrongKey), [`KeyFile`](WalError::KeyFile), [`UnknownKeyId`](WalError::UnknownKeyId) | a configuration error: give a ring with each segment's key (`nodedb-wal inspect DIR` lists their ids). An open refused for it wrote nothing. A ring that lacks an old segment's key opens (unless the segment holds a tombstone or purge, which recovery reads); reading that segment is `UnknownKeyId` |
/// | [`PlaintextRefused`](WalError::PlaintextRefused) | the ring refuses plaintext and a segment is plaintext: written before encryption was turned on (drop `refuse_plaintext` until a truncation has removed it), or put in place of an encrypted one, which is tampering: as corruption |
/// | [`KeyIdInUse`](WalError::KeyIdInUse), [`KeyRetired`](WalError::KeyRetired), [`KeyActive`](WalError::KeyActive), [`KeyStillNeeded`](WalError::KeyStillNeeded) | a key ring change refused, nothing changed: a new key needs a new id, the active key stays until another is active, and a key retires only once truncation has removed its last segment |
/// | [`AuthenticationFailed`](WalError::AuthenticationFailed) | the key is right (open checked it), so the record or its segment was altered: as corruption |
/// | [`LogMissing`](WalError::LogMissing) | the log is not where the database expects it (`create_if_missing` off): do not start, find the log. Nothing was created |
/// | [`DirectIoUnsupported`](WalError::DirectIoUnsupported), [`DirectIoAlignment`](WalError::DirectIoAlignment) | the file system does not take O_DIRECT as configured: set `allow_buffered_fallback` (or the block size the message names) and open again. Nothing was written |
/// | [`Locked`](WalError::Locked) | another writer has the directory: a second instance of the database, which must not start |
/// | [`LsnNotRetained`](WalError::LsnNotRetained) | the log no longer holds records from where replay was asked to start: truncation went past the engines' checkpoint, or the directory belongs to other engine files |
/// | [`SegmentTruncated`](WalError::SegmentTruncated) | a reader met a truncation: read again from [`crate::SegmentedWal::oldest_lsn`] |
/// | [`Io`](WalError::Io) | at open: fix the cause it names (permissions, a full disk, a path that is not a directory) and open again. From `truncate_before`: no record is at risk and the log goes on; truncate again later |
/// | [`UnsupportedVersion`](WalError::UnsupportedVersion), [`UnsupportedCipher`](WalError::UnsupportedCipher), [`UnknownRequiredType`](WalError::UnknownRequiredType), [`DwbUnsupportedVersion`](WalError::DwbUnsupportedVersion) | a newer build wrote the log (or the buffer): run that build |
/// | [`SegmentIdsExhausted`](WalError::SegmentIdsExhausted), [`LsnsExhausted`](WalError::LsnsExhausted) | only a log started near the end of the ids or LSNs (a [`crate::WalWriter`] segment) gets here: the append used no LSN and the log stays readable; copy its records into a log that starts lower |
/// | [`OutOfMemory`](WalError::OutOfMemory) | one append's records (a group or batch, encoded in one buffer, or one record larger than the buffers) are more than the system can allocate: nothing was appended and no LSN used; the log goes on. Append them in smaller groups |
/// | [`PayloadTooLarge`](WalError::PayloadTooLarge), [`ReservedRecordType`](WalError::ReservedRecordType), [`EmptyGroup`](WalError::EmptyGroup), [`LsnNotIssued`](WalError::LsnNotIssued), [`MalformedPayload`](WalError::MalformedPayload) from an append, [`InvalidConfig`](WalError::InvalidConfig) | a bug in the caller: nothing was appended and no LSN used; the log goes on |
/// | [`Closed`](WalError::Closed), [`NoCurrentRecord`](WalError::NoCurrentRecord), [`CloseUnconfirmed`](WalError::CloseUnconfirmed) | a bug in the caller: a call after `close`; `payload()` before `next_header()`; a close from a task's `Waker` on the flusher thread (the records appended are still written and synced, but close from a thread of the database's own) |
/// | [`SegmentFileExists`](WalError::SegmentFileExists), [`SalvageDestinationNotEmpty`](WalError::SalvageDestinationNotEmpty), [`DwbForeignFile`](WalError::DwbForeignFile) | the path given holds something else, left as it was: give another path, or move that away |
/// | [`EngineFile`](WalError::EngineFile) | an engine file ([`crate::encrypt_engine_file`]) did not encrypt or decrypt: its `problem` says which of a missing or wrong key (give the right ring), a newer build's file, or damage (as corruption, for that engine's files) |
/// | [`Caller`](WalError::Caller) | the caller's own error, given back as its source ([`WalError::caller`]) |
/// | [`DwbDegraded`](WalError::DwbDegraded) | the double-write buffer's file failed: nothing of the refused page write reached its pages. Fix the cause it names and open the buffer again (or accept torn pages with [`crate::DegradedPolicy::WriteUnprotected`]) |
/// | [`DwbUnrepairable`](WalError::DwbUnrepairable), [`DwbHeaderDamaged`](WalError::DwbHeaderDamaged) | a page file or the buffer is damaged beyond what the buffer repairs: as corruption, for that engine's files |
/// | [`DwbUnknownFile`](WalError::DwbUnknownFile), [`DwbPageLen`](WalError::DwbPageLen), [`DwbNotRecovered`](WalError::DwbNotRecovered) | a bug in the caller (register every page file, then `recover`, then write): nothing was written |
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
///
/// let mut config = SegmentedWalConfig::new("/wal");
/// config.payload_bytes_max = 4;
/// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config)?;
/// let err = wal.append(Record::new(RecordType::optional(0x100), b"too long")).unwrap_err();
/// assert!(matches!(err, WalError::PayloadTooLarge { len: 8, max: 4 }));
/// assert!(!err.is_corruption(), "misuse, not damage");
/// assert_eq!(err.to_string(), "payload of 8 bytes exceeds the maximum of 4 (`payload_bytes_max` in the config)");
///
/// // The crate's own record types cannot be appended as application records.
/// let err = wal.append(Record::new(RecordType::PADDING, b"")).unwrap_err();
/// assert!(matches!(err, WalError::ReservedRecordType { .. }));
/// # Ok::<(), WalError>(())
/// ```
///
/// A write whose fdatasync failed is in doubt: here its bytes reached the file before the
/// sync failed, and the next open returns the record that `append_durable` refused.
///
/// ```
/// use nodedb_wal::storage::faulty::{EIO, FaultOp, FaultyStorage};
/// use nodedb_wal::{FsStorage, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, WalError};
///
/// let dir = tempfile::tempdir()?;
/// let mut config = SegmentedWalConfig::new(dir.path());
/// config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
/// let storage = FaultyStorage::new(FsStorage::new());
/// let wal = SegmentedWal::open_with(storage.clone(), config.clone())?;
/// storage.fail_once(FaultOp::SyncData, 0, EIO);
/// let err = wal.append_durable(Record::new(RecordType::optional(0x100), b"in doubt")).unwrap_err();
/// assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
/// drop(wal);
///
/// let wal = SegmentedWal::open(config)?;
/// let back: Vec<_> = wal.read_from(Lsn::FIRST)?.collect::<Result<_, _>>()?;
/// assert_eq!(back[0].payload, b"in doubt", "refused, and yet on the disk");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A system call failed.
    #[error("{op:?} failed on {}: {source}", path.display())]
    Io {
        /// The step that failed.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Bytes that must be intact are not. Nothing was cut or repaired. The message names the
    /// way out: a replica or backup, else [`crate::salvage`] (`nodedb-wal salvage`), whose copy
    /// `nodedb-wal verify` checks.
    #[error(
        "corruption in segment {segment} at offset {offset}: {kind}; nothing was cut or repaired. Restore the log from a replica or backup, or copy the records before the damage into a new log with `nodedb-wal salvage DIR NEW_DIR` (`salvage::salvage`); `nodedb-wal verify DIR` checks the copy"
    )]
    Corruption {
        /// The segment file.
        segment: SegmentId,
        /// Byte offset inside the segment file.
        offset: u64,
        /// What was wrong.
        kind: CorruptionKind,
    },
    /// A segment file is missing: one between the oldest and the newest, newest ones that
    /// the log's `MANIFEST` says held durable records, or the oldest one the log's `FLOOR`
    /// says it still needs (truncation removes only segments below it). `why` says which.
    #[error("segment {missing} is missing from the log directory: {}", missing_why(*missing, *next_present, *why))]
    MissingSegment {
        /// The id that should exist.
        missing: SegmentId,
        /// The next segment there past the hole; `None` where the missing ones are the newest
        /// (the manifest names them, or `FLOOR` names `missing` and no segment from it on is
        /// left). A far-off next one may be a stray file named like a segment rather than a
        /// sign of lost ones: the message names it.
        next_present: Option<SegmentId>,
        /// What says the log needs it.
        why: MissingBecause,
    },
    /// The log's `FLOOR` has one intact slot and one damaged, and the segment the intact slot
    /// names as the oldest the log still needs is not there. Most likely the damaged slot held
    /// a later floor, which a truncation made durable before it removed the segments below it,
    /// and nothing is lost; but a log whose segments were removed by other means, with its
    /// newer slot torn, looks the same, so the log is refused. Where the segments below
    /// `oldest_present` were truncated on purpose (a checkpoint covers them), removing `FLOOR`
    /// opens the log with the segments present, unchecked at its low end, and the owner's next
    /// open writes a new `FLOOR`.
    #[error("{}", floor_slot_damaged(path, *floor, *oldest_present, *contiguous))]
    FloorSlotDamaged {
        /// The floor file.
        path: PathBuf,
        /// The oldest segment the intact slot says the log still needs.
        floor: SegmentId,
        /// The oldest segment there (above the floor), if any.
        oldest_present: Option<SegmentId>,
        /// Whether the segments from `oldest_present` on are all there (no hole between them).
        contiguous: bool,
    },
    /// The log's `MANIFEST` has no intact slot. It is created whole (written and synced, then
    /// renamed into place) and updated one slot at a time, so no crash leaves it so: the file
    /// was damaged, and the log cannot tell whether its newest segments are all there. Removing
    /// the file opens the log with the segments present, unchecked for lost newest ones.
    #[error("{} is damaged (no intact slot); remove it to open the log with the segments present, unchecked for lost newest ones", path.display())]
    ManifestDamaged {
        /// The manifest file.
        path: PathBuf,
    },
    /// The log's `FLOOR` (its truncation floor) has no intact slot. Like the manifest, it is
    /// created whole and updated one slot at a time, so no crash leaves it so: the file was
    /// damaged, and the log cannot tell whether its oldest segments are all there. Removing
    /// the file opens the log with the segments present, unchecked for lost oldest ones.
    #[error("{} is damaged (no intact slot); remove it to open the log with the segments present, unchecked for lost oldest ones", path.display())]
    FloorDamaged {
        /// The floor file.
        path: PathBuf,
    },
    /// The segment was written by a format version this build does not read.
    #[error(
        "segment {segment} has format version {version}, this build reads up to {supported}: a newer build wrote it (open the log with that build), or its preamble, which no checksum covers, is damaged"
    )]
    UnsupportedVersion {
        /// The segment file.
        segment: SegmentId,
        /// Its version.
        version: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The segment's preamble names a cipher this build does not know (a missing key is
    /// [`WalError::KeyRingMissing`] or [`WalError::UnknownKeyId`]).
    #[error(
        "segment {segment} uses cipher {cipher}, which this build does not know: a newer build wrote it (open the log with that build), or its preamble, which no checksum covers, is damaged"
    )]
    UnsupportedCipher {
        /// The segment file.
        segment: SegmentId,
        /// The cipher id in its preamble.
        cipher: u8,
    },
    /// A record of a type this build does not know carries the "required" bit.
    #[error(
        "record {lsn} has required type {record_type:#06x} that this build does not know and may not skip: a newer build of nodedb-wal wrote it; read the log with that build",
        record_type = .record_type.0
    )]
    UnknownRequiredType {
        /// The record.
        lsn: Lsn,
        /// Its type.
        record_type: RecordType,
    },
    /// The file system refused O_DIRECT and the configuration does not allow buffered I/O.
    #[error("{} does not support O_DIRECT; to write through the page cache there, set allow_buffered_fallback (a log) or DwbMode::Buffered (a double-write buffer)", path.display())]
    DirectIoUnsupported {
        /// The file that could not be opened.
        path: PathBuf,
    },
    /// The file system takes O_DIRECT I/O only in blocks coarser than the configured ones (a
    /// disk with 4096-byte logical sectors under 512-byte blocks, say), as the kernel reports
    /// it (`statx`, Linux 6.1 on). Refused when the file is opened, before anything is
    /// written: every O_DIRECT write would fail with `EINVAL`.
    #[error(
        "{} takes O_DIRECT I/O only in blocks of {required} bytes, and blocks of {configured} are configured; configure {required} or more, or write through the page cache",
        path.display()
    )]
    DirectIoAlignment {
        /// The file whose alignment the kernel reported.
        path: PathBuf,
        /// The block length configured (the log's `alignment`, the buffer's `block_len`).
        configured: usize,
        /// The alignment O_DIRECT needs there.
        required: usize,
    },
    /// An earlier write or fsync failed; the log accepts nothing more until it is reopened.
    /// A [`crate::WalWriter`] and a [`crate::DoubleWriteBuffer`] are poisoned the same way. The
    /// poisoned log keeps its directory's lock: drop it (every clone of an `Arc`) before opening
    /// it again, or the open is [`WalError::Locked`].
    ///
    /// One cause is not a failure of the disk: a file the log did not make found under the
    /// name of its next segment (`op` is `Open` or `Rename`, `kind` is `AlreadyExists`, and
    /// `path` names it). The log never writes over such a file, and cannot go on without that
    /// segment; the file is left as it was. Move it away before reopening: opening takes a
    /// newest file with no valid head for a roll a crash interrupted, and removes it.
    #[error("{}", poisoned(*op, *kind, *os_error, path.as_deref()))]
    Poisoned {
        /// The step that failed first.
        op: IoOp,
        /// The operating system's error kind.
        kind: io::ErrorKind,
        /// The operating system's error number, where there was one (`EIO` has no kind of its
        /// own, so the number is what tells it).
        os_error: Option<i32>,
        /// The file the step was on: the segment being made, written or synced, the log's
        /// directory for a directory sync, the `MANIFEST`; `None` where the step had none
        /// (a panic while a batch was written) or the poisoned writer does not say.
        path: Option<PathBuf>,
    },
    /// A payload exceeds the configured maximum. Nothing was appended and no LSN was used.
    #[error("payload of {len} bytes exceeds the maximum of {max} (`payload_bytes_max` in the config)")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The records of one append need a buffer of `bytes` (all of them, encoded) that the
    /// system cannot allocate: a group or batch far larger than the machine's memory, or a
    /// record larger than the buffers where no room is left for a copy of it. Nothing was
    /// appended and no LSN was used; the log (or [`crate::WalWriter`]) goes on.
    #[error("the records of one append need a buffer of {bytes} bytes, which the system cannot allocate")]
    OutOfMemory {
        /// The bytes of the buffer asked for.
        bytes: usize,
    },
    /// The caller asked about an LSN the log has not handed out.
    #[error("LSN {lsn} has not been issued (next is {next})")]
    LsnNotIssued {
        /// The LSN asked for.
        lsn: Lsn,
        /// The next LSN the log will issue.
        next: Lsn,
    },
    /// A read asked for records older than the oldest retained segment.
    #[error("LSN {requested} is no longer retained; the oldest is {oldest}")]
    LsnNotRetained {
        /// The LSN asked for.
        requested: Lsn,
        /// The oldest LSN the log still holds.
        oldest: Lsn,
    },
    /// A segment is not encrypted, and the key ring refuses plaintext segments
    /// (`KeyRing::refuse_plaintext`): it may have been put in place of an encrypted one.
    #[error("segment {segment} is not encrypted, and the key ring refuses plaintext segments")]
    PlaintextRefused {
        /// The segment.
        segment: SegmentId,
    },
    /// A reader reached a segment that truncation removed (or reused as a later segment) after
    /// the reader listed it: the records it needed are no longer retained.
    #[error("segment {segment} was truncated while a reader still needed it; read again from the oldest LSN the log still holds")]
    SegmentTruncated {
        /// The segment the reader needed.
        segment: SegmentId,
    },
    /// An open with [`crate::SegmentedWalConfig::create_if_missing`] off found no log: the
    /// directory is missing, or holds neither `MANIFEST` nor a segment. Nothing was created.
    #[error("no log in {}: no MANIFEST and no segment there, and create_if_missing is off; check the path (a volume not mounted?) or restore the log", path.display())]
    LogMissing {
        /// The log directory.
        path: PathBuf,
    },
    /// Another `SegmentedWal` or [`crate::WalWriter`] (in this or another process) has the
    /// directory open.
    #[error("{} is locked by another writer (a SegmentedWal or WalWriter, in this process or another); close it first, or read beside it with ReadOnlyWal", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// A [`crate::WalWriter`] was asked for a segment whose file exists already (a segment, an
    /// empty file, a symbolic link): it only ever makes a new file, and leaves this one as it
    /// was.
    #[error("{} exists already; a WalWriter only makes a new segment file and left this one as it was", path.display())]
    SegmentFileExists {
        /// The file.
        path: PathBuf,
    },
    /// A salvage ([`crate::salvage`]) was given a destination that holds something already:
    /// it only writes a new log into a directory that is missing or empty, and left this one
    /// as it was.
    #[error("{} is not empty; a salvage writes its new log only into a missing or empty directory, and left this one as it was", path.display())]
    SalvageDestinationNotEmpty {
        /// The destination directory.
        path: PathBuf,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A key file is unsafe or unreadable; the key was not loaded.
    #[error("key file {} refused: {problem}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        problem: KeyFileProblem,
    },
    /// An engine segment file could not be encrypted or decrypted.
    #[error("engine segment file: {problem}")]
    EngineFile {
        /// What is wrong.
        problem: EngineFileProblem,
    },
    /// A segment (or a request) names a key id the key ring does not hold.
    #[error("key id {key_id} is not in the key ring{}", needed_by(*segment))]
    UnknownKeyId {
        /// The segment that needs it, if any.
        segment: Option<SegmentId>,
        /// The key id.
        key_id: u32,
    },
    /// The key ring already holds this key id.
    #[error("key id {key_id} is already in the key ring")]
    KeyIdInUse {
        /// The key id.
        key_id: u32,
    },
    /// The key id was retired from the key ring ([`crate::KeyRing::retire`]): segments, a
    /// salvage copy or a replica may still name it, so it never takes another key.
    #[error("key id {key_id} was retired from the key ring and is never used again; give the new key another id")]
    KeyRetired {
        /// The key id.
        key_id: u32,
    },
    /// The key ring's active key cannot be retired: new segments are encrypted under it.
    #[error("key id {key_id} is the key ring's active key; make another key active (or none) before retiring it")]
    KeyActive {
        /// The key id.
        key_id: u32,
    },
    /// [`crate::SegmentedWal::retire_key`] was refused: a segment the log still holds is
    /// encrypted under the key. Nothing changed.
    #[error("key id {key_id} still encrypts segment {segment}; truncate the log past that segment before retiring the key")]
    KeyStillNeeded {
        /// The key id.
        key_id: u32,
        /// The oldest segment the log holds under it.
        segment: SegmentId,
    },
    /// A record failed authentication: a wrong key, or the record, its header or its segment
    /// were altered. No plaintext is returned.
    #[error("record {lsn} in segment {segment} failed authentication (wrong key or tampered data)")]
    AuthenticationFailed {
        /// The segment.
        segment: SegmentId,
        /// The record.
        lsn: Lsn,
    },
    /// The ring's key under a segment's key id does not authenticate the segment's first
    /// record, checked for every segment when a log opens, nor the record after it: most likely
    /// a wrong key under the right id (or, in a segment of one record, that record altered;
    /// where the next record authenticates, or a record of an earlier segment under the same
    /// key id did, the segment was altered: `AuthenticationFailed`). The open is refused before anything is written,
    /// so that no segment is added that no single ring could read with the ones before it.
    #[error("key {key_id} of the key ring does not authenticate segment {segment}: most likely the wrong key for that id")]
    WrongKey {
        /// The segment whose first record failed authentication.
        segment: SegmentId,
        /// The key id its preamble names.
        key_id: u32,
    },
    /// An encrypted record was met but the log has no key ring.
    #[error("segment {segment} is encrypted but no key ring was given; give one that holds the key its preamble names")]
    KeyRingMissing {
        /// The segment.
        segment: SegmentId,
    },
    /// A record of a type this crate defines has a payload that does not decode. Also the
    /// refusal of an `append_tombstone` or `append_temporal_purge` whose payload would not
    /// (a collection name over [`crate::MAX_COLLECTION_NAME_LEN`] bytes): `lsn` is then the
    /// one the record would have had, and no LSN was used.
    #[error("record {lsn} of type {record_type:#06x} has a malformed payload: {problem}", record_type = .record_type.0)]
    MalformedPayload {
        /// The record.
        lsn: Lsn,
        /// Its type.
        record_type: RecordType,
        /// What is wrong.
        problem: crate::format::payload::PayloadError,
    },
    /// Record types `0x0000..=0x00FF` and `0x8000..=0x80FF` belong to this crate.
    #[error(
        "record type {record_type:#06x} is reserved for nodedb-wal itself; an application's types are RecordType::optional or RecordType::required of a code from 0x0100 to 0x7FFF",
        record_type = .record_type.0
    )]
    ReservedRecordType {
        /// The type asked for.
        record_type: RecordType,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// The log has no segment id left for a new segment: its newest segment has the last id
    /// but one, and the last is never made (recovery could not follow it with another, so a
    /// log ending there would not open). Only a log whose first segment was given an id near
    /// `u64::MAX` (a [`crate::WalWriter`] segment) gets here; the append used no LSN, and the
    /// log stays readable. Copy its records into a log with lower ids to go on.
    #[error(
        "segment ids are used up: segment {newest} is the last this log can make; copy its records into a log with lower segment ids to go on"
    )]
    SegmentIdsExhausted {
        /// The newest segment id the log may use.
        newest: SegmentId,
    },
    /// The append would take LSNs at or past [`Lsn::LIMIT`] (2^63). Only a log that started
    /// near it (a [`crate::WalWriter`] segment with a huge first LSN) gets here; the append
    /// used no LSN, and the log stays readable.
    #[error(
        "LSNs are used up: the next would be {next}, and every LSN stays below 2^63; copy the records into a log that starts lower to go on"
    )]
    LsnsExhausted {
        /// The next LSN the log would have handed out.
        next: Lsn,
    },
    /// The log was closed (or dropped) on its own flusher thread, by a task's `Waker`, which
    /// cannot wait for the flusher: it still writes and syncs every record appended, but the
    /// close could not confirm it.
    #[error("closed on the flusher thread with records up to {appended} appended and {durable} durable; they are still being written")]
    CloseUnconfirmed {
        /// The durable LSN when the close returned.
        durable: Lsn,
        /// The last LSN appended.
        appended: Lsn,
    },
    /// `append_group` or `append_batch` was given no records.
    #[error("a group or batch of records needs at least one record")]
    EmptyGroup,
    /// `LazyWalReader::payload` was called with no record from `next_header` to read.
    #[error("payload() needs a record from next_header() first")]
    NoCurrentRecord,
    /// The caller's own function failed (`replay_parallel`'s `apply`, say) and the log
    /// stopped there; its error is the source, to be taken back with `downcast`.
    #[error("the caller's function failed: {source}")]
    Caller {
        /// The caller's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The double-write buffer's file could not be opened or written, and its policy is to
    /// refuse page writes while degraded. Nothing of the refused write reached its pages.
    #[error("the double-write buffer {} is degraded by a failed {op:?} ({kind}); page writes are refused until the cause is fixed and the buffer reopened", path.display())]
    DwbDegraded {
        /// The buffer file.
        path: PathBuf,
        /// The step that failed.
        op: IoOp,
        /// The operating system's error kind.
        kind: io::ErrorKind,
    },
    /// A page write or recovery needs a file that was never registered with the buffer.
    #[error("page file {file} is not registered with the double-write buffer; register it with register_file first")]
    DwbUnknownFile {
        /// The file.
        file: FileId,
    },
    /// A page's length differs from the length its file was registered with.
    #[error("page {page_no} of file {file} is {len} bytes; the file's pages are {expected}")]
    DwbPageLen {
        /// The file.
        file: FileId,
        /// The page.
        page_no: u64,
        /// Its length.
        len: usize,
        /// The registered page length.
        expected: usize,
    },
    /// Pages were written before `recover` ran on a buffer file that existed at open: the
    /// write could overwrite the only intact image of a torn page.
    #[error("the double-write buffer {} holds images from before the open; call recover first", path.display())]
    DwbNotRecovered {
        /// The buffer file.
        path: PathBuf,
    },
    /// A page is torn in place and its newest buffered image is rejected by the caller's
    /// validator, so it cannot be repaired. Nothing was written to it.
    #[error("page {page_no} of file {file} is torn and its buffered image (sequence {seq}) is not a valid page; nothing was written to it")]
    DwbUnrepairable {
        /// The file.
        file: FileId,
        /// The page.
        page_no: u64,
        /// The sequence of the rejected image.
        seq: u64,
    },
    /// The double-write buffer's file header is damaged while its ring holds batches whose
    /// slots carry a salt: without the header's salt they cannot be told from slots spelled
    /// out inside page images. Nothing was written. Removing the buffer file gives up the
    /// repair of pages a crash tore; restoring its header block from a copy brings it back.
    #[error(
        "double-write buffer {} has a damaged file header and {salted_batches} batch start(s) that need its salt; nothing was written. Restoring its header block from a copy brings it back; removing the file gives up the repair of pages a crash tore",
        path.display()
    )]
    DwbHeaderDamaged {
        /// The buffer file.
        path: PathBuf,
        /// Intact slots with a salt found where a batch may start (on 512-byte boundaries).
        salted_batches: usize,
    },
    /// The file at the buffer's path is not a double-write buffer: no buffer header (not even
    /// its magic), no slot of one, and bytes that are not all zero, as a file made by something
    /// else is. A buffer whose creation a crash interrupted holds zeros only. Nothing was
    /// written, and the file is neither reformatted nor (in mode `Off`) removed: move it away,
    /// or point the buffer elsewhere.
    #[error("{} is not a double-write buffer file; it was left as found: move it away, or point the buffer elsewhere", path.display())]
    DwbForeignFile {
        /// The file.
        path: PathBuf,
    },
    /// The buffer file was written by a format version this build does not read.
    #[error("double-write buffer {} has format version {version}, this build reads up to {supported}", path.display())]
    DwbUnsupportedVersion {
        /// The buffer file.
        path: PathBuf,
        /// Its version.
        version: u16,
        /// The newest version this build reads.
        supported: u16,
    },
}

impl WalError {
    /// Wraps the caller's own error, for a function the log calls (`replay_parallel`'s
    /// `apply`) to stop it with.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # wal.append_durable(Record::new(RecordType::optional(0x100), b"row"))?;
    /// #[derive(Debug)]
    /// struct EngineFull;
    /// impl std::fmt::Display for EngineFull {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("the engine is full")
    ///     }
    /// }
    /// impl std::error::Error for EngineFull {}
    ///
    /// let err = wal.replay_parallel(Lsn::FIRST, 2, |_| Err(WalError::caller(EngineFull))).unwrap_err();
    /// let WalError::Caller { source } = err else { panic!("{err}") };
    /// assert!(source.downcast_ref::<EngineFull>().is_some());
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn caller(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> WalError {
        WalError::Caller { source: err.into() }
    }

    /// Whether this error reports damaged data (as opposed to I/O failure or misuse).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{CorruptionKind, SegmentId, WalError};
    ///
    /// let damaged = WalError::Corruption { segment: SegmentId(3), offset: 8192, kind: CorruptionKind::UnsealedSegment };
    /// assert!(damaged.is_corruption());
    /// assert!(!WalError::Closed.is_corruption());
    /// let lost = WalError::MissingSegment { missing: SegmentId(2), next_present: None, why: nodedb_wal::MissingBecause::Floor };
    /// assert!(!lost.is_corruption(), "a lost file is not damaged bytes");
    /// ```
    #[must_use]
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            WalError::Corruption { .. }
                | WalError::ManifestDamaged { .. }
                | WalError::FloorDamaged { .. }
                | WalError::FloorSlotDamaged { .. }
                | WalError::DwbHeaderDamaged { .. }
        )
    }

    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>, source: io::Error) -> WalError {
        WalError::Io { op, path: path.into(), source }
    }
}
