//! What was wrong with a log's bytes ([`CorruptionKind`]) or with its set of segment files
//! ([`MissingBecause`]).
//!
//! These are the details recovery and the readers attach to
//! [`WalError::Corruption`](super::WalError::Corruption) and
//! [`WalError::MissingSegment`](super::WalError::MissingSegment); they live apart from the enum
//! so that it reads as a list of outcomes, with the fine print here.

use crate::types::{Lsn, SegmentId};

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
/// assert!(err.to_string().starts_with(
///     "corruption in segment 1 at offset 4096: a record frame fails its checksum or structure checks where intact records must be; nothing was cut or repaired. "
/// ));
/// assert!(err.to_string().contains("`nodedb-wal salvage DIR NEW_DIR`"), "the way out: {err}");
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

/// What says a missing segment should be there ([`WalError::MissingSegment`](super::WalError::MissingSegment)).
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
    /// A later segment is there (and, where an open found it, an earlier one too): a hole,
    /// which truncation never leaves.
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
