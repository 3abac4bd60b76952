//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

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

/// What exactly was wrong with bytes that should have been a valid structure.
///
/// # Examples
///
/// Damage in a sealed segment hit records a sync had covered, so recovery reports it instead
/// of cutting it away:
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::storage::{FaultConfig, Storage};
/// use nodedb_wal::{CorruptionKind, Lsn, Record, RecordType, SegmentId, SimStorage, WalError, WalWriter, WalWriterConfig};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let dir = Path::new("/log");
/// sim.create_dir_all(dir)?;
/// let mut first = WalWriter::create_with(sim.clone(), dir, SegmentId(1), Lsn(1), WalWriterConfig::default())?;
/// first.append(Record::new(RecordType::optional(0x100), b"acknowledged"))?;
/// let sealed = first.finish()?;
/// let mut second = WalWriter::create_with(sim.clone(), dir, SegmentId(2), sealed.end_lsn, WalWriterConfig::default())?;
/// second.append(Record::new(RecordType::optional(0x100), b"later"))?;
/// second.finish()?;
///
/// // Flip one bit inside the first record of the sealed segment (block 1 of the file).
/// let path = nodedb_wal::segment::path(dir, SegmentId(1));
/// let mut bytes = sim.read_file(&path).expect("segment exists");
/// bytes[4096 + 50] ^= 1;
/// sim.write_file(&path, &bytes);
///
/// let err = nodedb_wal::recovery::inspect_dir(&sim, dir, None).unwrap_err();
/// assert!(err.is_corruption());
/// assert!(matches!(err, WalError::Corruption { segment: SegmentId(1), offset: 4096, kind: CorruptionKind::BadFrame }), "{err}");
/// assert_eq!(
///     err.to_string(),
///     "corruption in segment 1 at offset 4096: a record frame fails its checksum or structure checks where intact records must be; nothing was cut or repaired"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The segment preamble's magic is not a WAL segment's.
    BadPreambleMagic,
    /// The segment has no valid header frame (its file is empty or too short, or zeroed or
    /// damaged at its start) where it cannot be the remains of an interrupted roll: newer
    /// segments follow it, a batch of it was durable, or a whole header frame is there that
    /// does not decode. Or the newest segment's file carries the last id (`u64::MAX`), which
    /// no writer of this crate makes, since no segment could follow it.
    BadSegmentHeader,
    /// A record frame failed its checksum or structure checks where intact data must be.
    BadFrame,
    /// A record's LSN is not the next one expected.
    LsnOutOfOrder {
        /// The LSN the log expected here.
        expected: Lsn,
        /// The LSN the frame carries.
        found: Lsn,
    },
    /// A sealed (non-final) segment does not end with its end marker.
    UnsealedSegment,
    /// Damaged bytes are followed by intact records that a later batch says were durable:
    /// this is not a torn tail, and cutting here would lose acknowledged records.
    DamageBeforeDurableRecords {
        /// The first LSN lost at the damage.
        lost_from: Lsn,
        /// The durable watermark the later, intact frame carries.
        durable_claimed: Lsn,
    },
    /// A segment's first LSN does not follow the previous segment's last one.
    LsnGap {
        /// What the previous segment ends with (next LSN).
        expected: Lsn,
        /// What this segment says it starts with.
        found: Lsn,
    },
    /// The header inside the file names another segment id than its file name.
    IdentityMismatch {
        /// The id in the segment header frame.
        header_id: SegmentId,
    },
    /// A payload codec could not decode its bytes.
    BadPayload,
    /// A sealed segment ends inside an atomic group (a group never spans a seal).
    IncompleteGroup,
}

impl std::fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptionKind::BadPreambleMagic => f.write_str("the file does not open with a WAL segment's preamble"),
            CorruptionKind::BadSegmentHeader => f.write_str(
                "the segment has no valid header frame (the file is empty or too short, or zeroed or damaged at its start) and is not the remains of an interrupted roll, or the segment has an id no log of this crate makes (the last one)",
            ),
            CorruptionKind::BadFrame => f.write_str("a record frame fails its checksum or structure checks where intact records must be"),
            CorruptionKind::LsnOutOfOrder { expected, found } => write!(f, "a record carries LSN {found} where {expected} was next"),
            CorruptionKind::UnsealedSegment => f.write_str(
                "a segment that is not the newest does not end with its end frame (if a WalWriter added the segments after it to a log not reopened first, taking those away opens the log again)",
            ),
            CorruptionKind::DamageBeforeDurableRecords { lost_from, durable_claimed } => write!(
                f,
                "damaged bytes from LSN {lost_from} on are followed by intact records that say LSNs up to {durable_claimed} were durable; cutting there would lose acknowledged records"
            ),
            CorruptionKind::LsnGap { expected, found } => {
                write!(f, "the segment starts at LSN {found}, and the one before it ends where {expected} would be next")
            }
            CorruptionKind::IdentityMismatch { header_id } => write!(f, "the file's header names segment {header_id}"),
            CorruptionKind::BadPayload => f.write_str("a payload does not decode"),
            CorruptionKind::IncompleteGroup => f.write_str("a sealed segment ends inside an atomic group"),
        }
    }
}

/// Why an engine segment file could not be encrypted or decrypted.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{EngineFileProblem, KeyRing, SecureKey, WalError, decrypt_engine_file, encrypt_engine_file};
///
/// let problem = |result: nodedb_wal::Result<u64>| match result {
///     Err(WalError::EngineFile { problem }) => Some(problem),
///     _ => None,
/// };
/// // Encrypting needs an active key.
/// let empty = KeyRing::new();
/// assert_eq!(problem(encrypt_engine_file(&empty, &mut &b"data"[..], &mut Vec::new())), Some(EngineFileProblem::NoActiveKey));
///
/// let ring = KeyRing::with_active(1, SecureKey::generate());
/// let mut file = Vec::new();
/// encrypt_engine_file(&ring, &mut &b"column bytes"[..], &mut file)?;
/// let zeros = vec![0u8; file.len()];
/// assert_eq!(problem(decrypt_engine_file(&ring, &mut &zeros[..], &mut Vec::new())), Some(EngineFileProblem::NotAnEngineFile));
/// assert_eq!(problem(decrypt_engine_file(&ring, &mut &file[..20], &mut Vec::new())), Some(EngineFileProblem::Truncated));
/// let mut tampered = file.clone();
/// *tampered.last_mut().expect("a tag") ^= 1; // one flipped bit in the only chunk's tag
/// let found = problem(decrypt_engine_file(&ring, &mut &tampered[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::FirstChunkDamaged), "the key check value matched: damage");
/// // Another key under the file's key id, and a damaged key check value (header bytes 36..40).
/// let wrong = KeyRing::with_active(1, SecureKey::generate());
/// let found = problem(decrypt_engine_file(&wrong, &mut &file[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::WrongKey { key_id: 1 }));
/// let mut tampered = file.clone();
/// tampered[37] ^= 1;
/// let found = problem(decrypt_engine_file(&ring, &mut &tampered[..], &mut Vec::new()));
/// assert_eq!(found, Some(EngineFileProblem::KeyCheckDamaged));
/// # Ok::<(), WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineFileProblem {
    /// Encrypting needs an active key in the ring.
    NoActiveKey,
    /// The bytes do not start with an engine file preamble (`NSEG`).
    NotAnEngineFile,
    /// A format version this build does not read.
    UnsupportedVersion {
        /// The file's version.
        version: u16,
    },
    /// A cipher id this build does not know.
    UnsupportedCipher {
        /// The file's cipher id.
        cipher: u8,
    },
    /// The header's chunk length is invalid, a version 1 header's reserved bytes are not
    /// zero, or a version 2 header's key check value is (which no writer writes: most likely a
    /// version 1 header whose version field was damaged).
    BadHeader,
    /// The file ends before its header or its last chunk.
    Truncated,
    /// A chunk failed authentication. At a later chunk than 0 the key is right (chunk 0
    /// authenticated under it): the file was altered, reordered or cut there. At chunk 0, only
    /// in a version 1 file, this is a wrong key or a corrupt first chunk (or header), which no
    /// reader can tell apart: a version 1 header names the key's id and holds nothing that
    /// checks the key under that id. Version 2 reports [`WrongKey`](Self::WrongKey),
    /// [`KeyCheckDamaged`](Self::KeyCheckDamaged) or
    /// [`FirstChunkDamaged`](Self::FirstChunkDamaged) there instead.
    AuthenticationFailed {
        /// The chunk's index.
        chunk: u64,
    },
    /// The ring's key under the file's key id is not the key the file was written with: the
    /// header's key check value (version 2) does not match it, and chunk 0 does not
    /// authenticate under it either. A damaged salt (16 header bytes) reads the same, as no
    /// key then opens the file; so does a file whose check value is damaged and that is cut
    /// or damaged again in chunk 0. Reported before [`Truncated`](Self::Truncated): with the
    /// right key, a cut file reports the cut.
    WrongKey {
        /// The key id the file names.
        key_id: u32,
    },
    /// The header's key check value is damaged, the key being right: chunk 0 authenticates
    /// under the header with the value that key gives. Nothing is decrypted.
    KeyCheckDamaged,
    /// Chunk 0 of a version 2 file failed authentication although the header's key check value
    /// matches the key: the key is right, and the header (outside its salt and key id) or
    /// chunk 0 was altered, or the file was cut inside chunk 0.
    FirstChunkDamaged,
}

impl std::fmt::Display for EngineFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineFileProblem::NoActiveKey => f.write_str("encrypting needs an active key in the key ring"),
            EngineFileProblem::NotAnEngineFile => f.write_str("the bytes do not open with an engine file preamble (NSEG)"),
            EngineFileProblem::UnsupportedVersion { version } => write!(f, "format version {version} is not one this build reads"),
            EngineFileProblem::UnsupportedCipher { cipher } => write!(f, "cipher {cipher} is unknown to this build"),
            EngineFileProblem::BadHeader => {
                f.write_str("the header is damaged: its chunk length, or the key check bytes for its version (zero in version 1, never zero in 2), are invalid")
            }
            EngineFileProblem::Truncated => f.write_str("the file ends before its header or its last chunk"),
            EngineFileProblem::AuthenticationFailed { chunk: 0 } => f.write_str(
                "chunk 0 failed authentication: wrong key or corrupt first chunk (the header names the key's id and nothing that checks the key, so the two look the same; a damaged header too)",
            ),
            EngineFileProblem::AuthenticationFailed { chunk } => {
                write!(f, "chunk {chunk} failed authentication: the file was altered, reordered or cut there (chunk 0 authenticated, so the key is right)")
            }
            EngineFileProblem::WrongKey { key_id } => write!(
                f,
                "the key ring's key {key_id} is not the key this file was written with (the header's key check value does not match it and chunk 0 does not authenticate under it): supply the key that was key {key_id} when the file was written (a damaged salt in the header reads the same: no key opens such a file)"
            ),
            EngineFileProblem::KeyCheckDamaged => f.write_str(
                "the header's key check value is damaged: the key is right (chunk 0 authenticates under it) but the file's header is not as written; nothing was decrypted",
            ),
            EngineFileProblem::FirstChunkDamaged => f.write_str(
                "chunk 0 failed authentication: the header or chunk 0 was altered, or the file was cut inside chunk 0 (the header's key check value matches, so the key is right)",
            ),
        }
    }
}

/// Why a key file was refused.
///
/// # Examples
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// use nodedb_wal::{KeyFileProblem, SecureKey, WalError};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("wal.key");
/// std::fs::write(&path, [7u8; 32])?;
/// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
/// let err = SecureKey::load(&path).unwrap_err();
/// assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Permissions { mode: 0o644 }, .. }), "{err}");
///
/// std::fs::write(&path, [7u8; 16])?;
/// std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
/// let err = SecureKey::load(&path).unwrap_err();
/// assert!(matches!(err, WalError::KeyFile { problem: KeyFileProblem::Length { len: 16 }, .. }), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The path is a symbolic link.
    Symlink,
    /// The path is not a regular file.
    NotAFile,
    /// Group or others may read or write it.
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// Another user owns it.
    Owner {
        /// The owner.
        uid: u32,
        /// This process's effective user.
        expected: u32,
    },
    /// It does not hold exactly 32 bytes.
    Length {
        /// Its length.
        len: u64,
    },
    /// It could not be read.
    Io(io::ErrorKind),
}

impl std::fmt::Display for KeyFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFileProblem::Symlink => f.write_str("it is a symbolic link; name the key file itself"),
            KeyFileProblem::NotAFile => f.write_str("it is not a regular file"),
            KeyFileProblem::Permissions { mode } => {
                write!(f, "its mode is {:o}; group and others must have no access (chmod 600)", mode & 0o7777)
            }
            KeyFileProblem::Owner { uid, expected } => write!(f, "it belongs to user {uid}, not to this process's user {expected}"),
            KeyFileProblem::Length { len } => write!(f, "it holds {len} bytes; a key file holds exactly 32"),
            KeyFileProblem::Io(kind) => write!(f, "it could not be read ({kind})"),
        }
    }
}

/// What says a missing segment should be there ([`WalError::MissingSegment`]).
///
/// # Examples
///
/// ```
/// use nodedb_wal::{MissingBecause, SegmentId, WalError};
///
/// let err = WalError::MissingSegment { missing: SegmentId(4), next_present: None, why: MissingBecause::Floor };
/// assert!(err.to_string().contains("FLOOR names segment 4 as the oldest the log still needs"));
/// let err = WalError::MissingSegment { missing: SegmentId(4), next_present: None, why: MissingBecause::Manifest { named: SegmentId(5) } };
/// assert!(err.to_string().contains("MANIFEST names segment 5 as the newest"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingBecause {
    /// Segments are there on both sides of it: a hole between the oldest and the newest.
    Hole,
    /// The log's `FLOOR` names it as the oldest segment the log still needs (truncation
    /// removes only segments below it).
    Floor,
    /// The log's `MANIFEST` names `named` as the newest segment whose first batch was durable,
    /// and no segment from the missing one on is there.
    Manifest {
        /// The segment `MANIFEST` names.
        named: SegmentId,
    },
}

/// Every error `nodedb-wal` returns.
///
/// Match on the variant to tell damaged data ([`WalError::is_corruption`]) from I/O failure
/// and from misuse; `Display` gives a sentence for logs.
///
/// # What a database does with each error
///
/// | error | what the database does |
/// |---|---|
/// | [`Poisoned`](WalError::Poisoned) | stops writing, drops every handle and opens the log again. A write the log did not acknowledge before it failed is in doubt, not lost: its record may be back after the open (the second example). Answer it "outcome unknown", never "failed", and let replay tell. A full disk (`kind` `StorageFull`) may refuse that open too, with `Io`, until there is room: [`truncate_before`](crate::SegmentedWal::truncate_before) still runs on the poisoned log, so truncating below the engines' checkpoint before dropping it frees the segments the checkpoint covers |
/// | [`Corruption`](WalError::Corruption), [`ManifestDamaged`](WalError::ManifestDamaged), [`FloorDamaged`](WalError::FloorDamaged) ([`is_corruption`](WalError::is_corruption)) | does not start on this log: acknowledged records are damaged, or the log cannot tell whether some are missing. Nothing was cut or repaired, and [`crate::ReadOnlyWal`] refuses the same log, so this crate reads nothing past the damage. Keep a copy of the directory, locate the damage with `nodedb-wal verify DIR` and `nodedb-wal inspect DIR`, and restore from a backup or a replica. Where neither exists (or the replica is behind), [`crate::salvage`] (`nodedb-wal salvage DIR NEW_DIR`) copies every record before the damage into a new log that opens; the cost is every record from the damage on, which its report counts (intact records past it, with their LSNs), and the new log hands those LSNs out again, so engines that applied them hold data the log no longer has. The two side files' messages say what removing them costs |
/// | [`MissingSegment`](WalError::MissingSegment) | a segment file the log needs is not in the directory (removed by hand, a partial copy or restore): put it back. `nodedb-wal inspect DIR` says whether `FLOOR`, `MANIFEST` or a hole between segments asks for it |
/// | [`KeyRingMissing`](WalError::KeyRingMissing), [`WrongKey`](WalError::WrongKey), [`KeyFile`](WalError::KeyFile), [`UnknownKeyId`](WalError::UnknownKeyId) | a configuration error: give a ring with each segment's key (`nodedb-wal inspect DIR` lists their ids). An open refused for it wrote nothing. A ring that lacks an old segment's key opens (unless the segment holds a tombstone or purge, which recovery reads); reading that segment is `UnknownKeyId` |
/// | [`AuthenticationFailed`](WalError::AuthenticationFailed) | the key is right (open checked it), so the record or its segment was altered: as corruption |
/// | [`Locked`](WalError::Locked) | another writer has the directory: a second instance of the database, which must not start |
/// | [`LsnNotRetained`](WalError::LsnNotRetained) | the log no longer holds records from where replay was asked to start: truncation went past the engines' checkpoint, or the directory belongs to other engine files |
/// | [`SegmentTruncated`](WalError::SegmentTruncated) | a reader met a truncation: read again from [`crate::SegmentedWal::oldest_lsn`] |
/// | [`Io`](WalError::Io) | at open: fix the cause it names (permissions, a full disk, a path that is not a directory) and open again. From `truncate_before`: no record is at risk and the log goes on; truncate again later |
/// | [`UnsupportedVersion`](WalError::UnsupportedVersion), [`UnsupportedCipher`](WalError::UnsupportedCipher), [`UnknownRequiredType`](WalError::UnknownRequiredType) | a newer build wrote the log: run that build |
/// | [`PayloadTooLarge`](WalError::PayloadTooLarge), [`ReservedRecordType`](WalError::ReservedRecordType), [`EmptyGroup`](WalError::EmptyGroup), [`LsnNotIssued`](WalError::LsnNotIssued), [`MalformedPayload`](WalError::MalformedPayload) from an append, [`InvalidConfig`](WalError::InvalidConfig) | a bug in the caller: nothing was appended and no LSN used; the log goes on |
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
    /// Bytes that must be intact are not. Nothing was cut or repaired.
    #[error("corruption in segment {segment} at offset {offset}: {kind}; nothing was cut or repaired")]
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
    /// where the next record authenticates, the first was altered: `AuthenticationFailed`). The open is refused before anything is written,
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
    #[error("record type {record_type:#06x} is reserved for nodedb-wal itself", record_type = .record_type.0)]
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

/// The end of an `UnknownKeyId` message: the segment that needs the key, if any.
fn needed_by(segment: Option<SegmentId>) -> String {
    segment.map_or_else(String::new, |s| format!("; segment {s} is encrypted under it"))
}

/// The end of a `MissingSegment` message: what says the segment should be there, and what is.
fn missing_why(missing: SegmentId, next_present: Option<SegmentId>, why: MissingBecause) -> String {
    let before = missing.0.saturating_sub(1);
    match (why, next_present) {
        (MissingBecause::Hole, Some(next)) => format!(
            "a hole: segments {before} and {next} are there, and the ones between are not (the next one there is {}, a file of this log or a stray one)",
            crate::segment::file_name(next)
        ),
        (MissingBecause::Hole, None) => format!("a hole after segment {before}"),
        (MissingBecause::Floor, next) => {
            let there = next.map_or_else(
                || "no segment from it on is there".to_string(),
                |n| format!("the oldest one there is {}", crate::segment::file_name(n)),
            );
            format!(
                "FLOOR names segment {missing} as the oldest the log still needs (truncation removed only those below it), and {there}; \
                 if a build older than FLOOR truncated this log, removing FLOOR opens it with the segments present, unchecked at its low end"
            )
        }
        (MissingBecause::Manifest { named }, _) => {
            let there = match before {
                0 => "no segment is there".to_string(),
                newest => format!("the newest there is {newest}"),
            };
            format!("MANIFEST names segment {named} as the newest whose records were durable, and {there}")
        }
    }
}

/// The message of [`WalError::FloorSlotDamaged`].
fn floor_slot_damaged(path: &Path, floor: SegmentId, oldest_present: Option<SegmentId>, contiguous: bool) -> String {
    let there = match (oldest_present, contiguous) {
        (None, _) => "no segment from it on is there".to_string(),
        (Some(oldest), true) => format!("the oldest segment there is {oldest}, and every one from it on is there"),
        (Some(oldest), false) => format!("the oldest segment there is {oldest}, and some above it are missing too"),
    };
    format!(
        "{} has a damaged slot; its intact slot names segment {floor} as the oldest the log still needs, but {there}. \
         Most likely the damaged slot held a later floor and the segments below it were truncated, losing nothing, \
         but segments removed by other means look the same, so the log is refused. \
         If a checkpoint covers every segment below the oldest one there (truncated on purpose), remove {}: \
         the log then opens with the segments present, unchecked at its low end, and its owner writes a new one",
        path.display(),
        path.display()
    )
}

/// The message of [`WalError::Poisoned`].
fn poisoned(op: IoOp, kind: io::ErrorKind, os_error: Option<i32>, path: Option<&Path>) -> String {
    match path {
        Some(path) if kind == io::ErrorKind::AlreadyExists && matches!(op, IoOp::Open | IoOp::Rename) => format!(
            "the log is poisoned: {} is in the way of its next segment, a file the log did not make and left as it was; move it away, then reopen the log",
            path.display()
        ),
        _ => {
            let of = path.map_or_else(String::new, |p| format!(" of {}", p.display()));
            // The same error ends a log, a WalWriter and a double-write buffer: the words fit all.
            format!(
                "poisoned by an earlier failed {op:?}{of} ({}): nothing more is accepted; drop every handle, then open the log (or the double-write buffer) again to recover what the disk holds",
                describe(kind, os_error)
            )
        }
    }
}

/// An error kind in words, with the system's message for its number where there is one.
fn describe(kind: io::ErrorKind, os_error: Option<i32>) -> String {
    os_error.map_or_else(|| kind.to_string(), |code| io::Error::from_raw_os_error(code).to_string())
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
