//! Recovery: reading a log directory after any stop, clean or not, and deciding what it holds.
//!
//! # The decision table
//!
//! Every segment is walked frame by frame until the first position `p` that is not the next
//! valid record. What is at `p` ([`TailEnd`]), whether this is the last segment, and the durable
//! watermark claimed by intact frames after `p` ([`Evidence`]) decide one action:
//!
//! | last segment? | at `p`               | evidence after `p`            | action      |
//! |---------------|----------------------|-------------------------------|-------------|
//! | any           | `Sealed` end frame   | (not looked at)               | accept      |
//! | no            | anything else        | (not looked at)               | corruption  |
//! | yes           | any                  | a frame claims `p`'s LSN durable | corruption |
//! | yes           | `Eof`/`Blank`/`Stale` | only zeros                    | accept      |
//! | yes           | `Eof`/`Blank`/`Stale` | debris or unacknowledged frames | cut torn tail |
//! | yes           | `Damaged`            | anything not acknowledged     | cut torn tail |
//!
//! A segment is sealed before the next one is created, so damage in any but the last segment
//! hit data that a sync had covered. In the last segment, a later frame's watermark says whether
//! the damaged LSN had been acknowledged: if so, this is corruption of durable data and cutting
//! would silently lose acknowledged records, so recovery stops with an error instead.
//! `Eof`, `Blank` and `Stale` only count as a clean end on a block boundary; inside a batch they
//! mean the batch was torn ([`TailEnd::Damaged`]).

mod decide;
mod dir;
mod ids;
mod live;
mod look;
mod open;
mod scan;

pub use self::decide::{Evidence, TailAction, decide};
pub(crate) use self::dir::recover_dir;
pub(crate) use self::ids::listed_ids;
pub use self::look::inspect_dir;
pub(crate) use self::open::{check_identity, key_gone_with_segment, open_existing, open_held};
pub(crate) use self::scan::is_collected;
use crate::format::header_index::HeaderIndex;
use crate::replay::{TemporalPurge, TombstoneSet};
use crate::segment::SegmentInfo;
use crate::segment::scan::TailEnd;
use crate::types::{Lsn, SegmentId};

/// Where and why recovery cut a torn tail.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::recovery::{TornTail, inspect_dir};
/// use nodedb_wal::segment::scan::TailEnd;
/// use nodedb_wal::storage::{FaultConfig, Storage};
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentId, SimStorage, WalWriter, WalWriterConfig};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let dir = Path::new("/log");
/// sim.create_dir_all(dir)?;
/// let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), Lsn(1), WalWriterConfig::default())?;
/// writer.append(Record::new(RecordType::optional(0x100), b"acknowledged"))?;
/// writer.sync()?;
///
/// // Half a batch that never finished: a block of debris after the synced one.
/// let mut bytes = sim.read_file(writer.path()).expect("segment");
/// bytes.extend_from_slice(&[0xAB; 4096]);
/// sim.write_file(writer.path(), &bytes);
///
/// let info = inspect_dir(&sim, dir, None)?;
/// let torn = TornTail { segment: SegmentId(1), offset: 8192, bytes_discarded: 4096, found: TailEnd::Damaged };
/// assert_eq!(info.torn_tail, Some(torn));
/// assert_eq!(info.last_lsn, Lsn(1), "the acknowledged record is kept");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: SegmentId,
    /// Where the last intact record ends.
    pub offset: u64,
    /// Bytes of the file past that point that were discarded.
    pub bytes_discarded: u64,
    /// What was found there.
    pub found: TailEnd,
}

/// What recovery found when the log was opened.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{CollectionTombstonePayload, Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
/// assert_eq!(wal.recovery_info().last_lsn, Lsn::ZERO, "a new log");
/// wal.append(Record::new(RecordType::optional(0x100), b"row"))?;
/// let tombstone = CollectionTombstonePayload { database: 1, tenant: 1, collection: "old".into(), purge_lsn: Lsn(1) };
/// wal.append_tombstone(&tombstone)?;
/// wal.close()?;
///
/// let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/wal"))?;
/// let info = wal.recovery_info();
/// assert_eq!((info.first_lsn, info.last_lsn, info.record_count), (Lsn(1), Lsn(2), 2));
/// assert_eq!((info.segments.len(), info.torn_tail), (1, None));
/// assert_eq!(info.tombstones.purge_lsn(1, 1, "old"), Some(Lsn(1)));
/// assert!(info.temporal_purges.is_empty() && info.removed_interrupted_roll.is_none());
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The oldest retained LSN (equal to `next_lsn` when the log holds no record).
    pub first_lsn: Lsn,
    /// The last recovered LSN ([`Lsn::ZERO`] when there is none).
    pub last_lsn: Lsn,
    /// Records recovered.
    pub record_count: u64,
    /// Segments found, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The torn tail that was cut, if any.
    pub torn_tail: Option<TornTail>,
    /// A segment left empty or half-created by an interrupted roll, which was removed.
    pub removed_interrupted_roll: Option<SegmentId>,
    /// Collections dropped in the recovered records, gathered in the same pass.
    pub tombstones: TombstoneSet,
    /// Temporal purges in the recovered records, in LSN order, for the engines to apply.
    pub temporal_purges: Vec<TemporalPurge>,
    /// Tombstone and temporal-purge records a read-only look ([`inspect_dir`],
    /// `ReadOnlyWal`) did not gather because it has no key for their segment; always 0 when
    /// the owner opens a log, which is refused without the key of every segment holding such
    /// a record (it opens without the key of a segment that holds none). A tool that only lists segments and
    /// health needs no key; one that reads `tombstones` or `temporal_purges` needs this at 0.
    pub ungathered: u64,
}

/// The last segment, not yet sealed: the writer seals it before appending elsewhere.
#[derive(Clone, Debug)]
pub(crate) struct PendingSeal {
    pub id: SegmentId,
    pub records_end: u64,
    pub block: u64,
    pub salt: u32,
    pub next_lsn: Lsn,
    /// Its header index, built as recovery scanned it, where one pays (see `segment::index`):
    /// the flusher writes one for the segments it seals, this is the same for the segment a
    /// restart seals, which catch-up readers after the restart are the likeliest to scan.
    pub index: Option<HeaderIndex>,
}

/// Recovery's findings plus the repairs the writer must make.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub info: RecoveryInfo,
    pub seal: Option<PendingSeal>,
    pub next_lsn: Lsn,
    pub next_segment: SegmentId,
    /// Segments below the truncation floor, which a truncation cut short by a crash did not
    /// remove yet; not scanned, for the owner to remove.
    pub below_floor: Vec<SegmentId>,
}

enum Outcome {
    Sealed(SegmentInfo),
    Open(SegmentInfo, PendingSeal, Option<TornTail>),
    InterruptedRoll,
}
