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

use std::path::Path;

use crate::crypto::KeyRing;
use crate::error::{CorruptionKind, IoOp, MissingBecause, Result, WalError};
use crate::format::frame::{FLAG_GROUP_CONTINUES, HEADER_LEN, RecordHeader, decode_frame};
use crate::format::header_index::HeaderIndex;
use crate::format::manifest::FLOOR_FILE;
use crate::format::payload::{CollectionTombstonePayload, TemporalPurgePayload};
use crate::format::preamble::{CIPHER_AES_256_GCM, CIPHER_NONE, PREAMBLE_SIZE, WAL_PREAMBLE_MAGIC};
use crate::manifest::{self, FloorSeen};
use crate::replay::{TemporalPurge, TombstoneSet};
use crate::segment::crypt::{check_plaintext_allowed, cipher_for, open_record};
use crate::segment::evidence::{Claims, scan_claims};
use crate::segment::index::IndexBuilder;
use crate::segment::reader::{ChunkReader, DEFAULT_CHUNK};
use crate::segment::scan::{SegmentHead, SegmentScan, Step, TailEnd, read_head};
use crate::segment::{self, SegmentInfo};
use crate::storage::{Advice, OpenMode, SECTOR, Storage, StorageFile};
use crate::types::{Lsn, RecordType, SegmentId};

mod live;

/// What the bytes after the first bad position say about it.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// // The same torn last batch: safe to cut unless a later frame says it was acknowledged.
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::Unacknowledged), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::Acknowledged), TailAction::Corrupt);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Only zeros follow (or nothing).
    None,
    /// Non-zero bytes follow, but no intact frame of the segment.
    Debris,
    /// Intact frames follow, but none claims the lost LSN was durable.
    Unacknowledged,
    /// An intact frame claims the lost LSN was durable.
    Acknowledged,
}

/// What recovery does at a segment's end.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// let sealed = TailEnd::Sealed { records_end: 8192 };
/// assert_eq!(decide(false, sealed, Evidence::None), TailAction::Accept);
/// assert_eq!(decide(true, TailEnd::Blank, Evidence::None), TailAction::Accept, "zeros after the last batch");
/// assert_eq!(decide(false, TailEnd::Blank, Evidence::None), TailAction::Corrupt, "an older segment must be sealed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailAction {
    /// The segment ends cleanly here.
    Accept,
    /// Cut the torn, unacknowledged tail here.
    CutTorn,
    /// Stop: acknowledged data is damaged.
    Corrupt,
}

/// The recovery decision table (see the module docs), as one `match`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::recovery::{Evidence, TailAction, decide};
/// use nodedb_wal::segment::scan::TailEnd;
///
/// let sealed = TailEnd::Sealed { records_end: 4096 };
/// assert_eq!(decide(true, sealed, Evidence::Acknowledged), TailAction::Accept, "the end frame settles it");
/// assert_eq!(decide(false, TailEnd::Damaged, Evidence::None), TailAction::Corrupt);
/// assert_eq!(decide(true, TailEnd::Eof, Evidence::None), TailAction::Accept);
/// assert_eq!(decide(true, TailEnd::Stale, Evidence::Debris), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Damaged, Evidence::None), TailAction::CutTorn);
/// assert_eq!(decide(true, TailEnd::Eof, Evidence::Acknowledged), TailAction::Corrupt);
/// ```
#[must_use]
pub fn decide(last_segment: bool, end: TailEnd, evidence: Evidence) -> TailAction {
    match (last_segment, end, evidence) {
        (_, TailEnd::Sealed { .. }, _) => TailAction::Accept,
        (false, _, _) => TailAction::Corrupt,
        (true, _, Evidence::Acknowledged) => TailAction::Corrupt,
        (true, TailEnd::Eof | TailEnd::Blank | TailEnd::Stale, Evidence::None) => TailAction::Accept,
        (true, TailEnd::Eof | TailEnd::Blank | TailEnd::Stale, Evidence::Debris | Evidence::Unacknowledged) => TailAction::CutTorn,
        (true, TailEnd::Damaged, Evidence::None | Evidence::Debris | Evidence::Unacknowledged) => TailAction::CutTorn,
    }
}

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

/// Reads every segment of `dir` and decides what the log holds. Changes nothing on disk except
/// removing a segment left by an interrupted roll.
pub(crate) fn recover_dir<S: Storage>(storage: &S, dir: &Path, direct: bool, align: usize, ring: Option<&KeyRing>) -> Result<Recovered> {
    scan_dir(storage, dir, direct, align, ring, Scan::Repair)
}

/// What recovery would find in `dir`, changing nothing on disk (an interrupted roll is
/// reported, not removed). For tools that look at a log another process may own.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// use nodedb_wal::recovery::inspect_dir;
/// use nodedb_wal::storage::FaultConfig;
/// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
///
/// let sim = SimStorage::new(1, FaultConfig::default());
/// let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
/// wal.append_durable(Record::new(RecordType::optional(0x100), b"live"))?;
/// // The log is open (and locked) here; looking at it is still allowed.
/// let info = inspect_dir(&sim, Path::new("/wal"), None)?;
/// assert_eq!((info.record_count, info.last_lsn), (1, Lsn(1)));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub fn inspect_dir<S: Storage>(storage: &S, dir: &Path, ring: Option<&KeyRing>) -> Result<RecoveryInfo> {
    // A writer's truncation can take a segment while the directory is listed or the segment
    // scanned: look again.
    let mut overtaken = Overtaken::default();
    loop {
        // The last look takes a header naming a later segment for what it then surely is:
        // the wrong file under that name (swapped or copied segments), not a race with reuse.
        let scan = if overtaken.gives_up() { Scan::LastLook } else { Scan::Look };
        match scan_dir(storage, dir, false, 512, ring, scan) {
            // A segment scanned may be truncated under the look. A directory is not listed in
            // one atomic step: a segment truncation removed while the listing was read can
            // leave a hole between two listed ones. And `FLOOR` is read after the listing: a
            // writer that rolled and truncated every listed segment meanwhile leaves a floor
            // above all of them, and the slot of `FLOOR` a truncation is writing reads as
            // damaged until the write is done. A segment that is really missing, or a slot
            // really damaged, is still so at the last look.
            Err(WalError::SegmentTruncated { .. } | WalError::MissingSegment { .. } | WalError::FloorSlotDamaged { .. })
                if scan == Scan::Look =>
            {
                overtaken.rescan(&listed_ids(storage, dir)?);
            }
            scanned => return Ok(scanned?.info),
        }
    }
}

/// Rescans that found the log where the one before did (its oldest segment the same), of
/// which a look makes at most [`TRUNCATED_RESCANS`]: a hole in a listing or a `FLOOR` slot
/// being written is soon over, while a segment really missing stays so.
const TRUNCATED_RESCANS: u32 = 8;

/// Times a look lets the writer replace every segment it listed (each rescan finding its
/// oldest segment past the newest of an earlier listing) before it gives up. A count of
/// rescans would make a look's verdict depend on the machine's speed: a reader starved of
/// the CPU beside a fast writer is overtaken again and again, each time by the writer
/// having moved on. Only a writer that truncates its whole log this many times over while
/// one scan reads it wins, and the look then ends with the truncation error.
const TRUNCATED_LAPS: u32 = 8;

/// Rescans a look makes at most, however the listings move: a listing whose oldest segment
/// goes back and forth (files put back by hand, say) neither repeats nor completes a lap, and
/// would otherwise keep the look going for ever.
const RESCANS_MAX: u32 = 1024;

/// How a look's rescans found the log moving on under it.
#[derive(Debug, Default)]
struct Overtaken {
    /// The oldest and newest segments of the last rescan's listing, once there is one.
    last: Option<(Option<SegmentId>, Option<SegmentId>)>,
    /// The newest segment of the listing that began the current lap.
    lap_end: Option<SegmentId>,
    stale: u32,
    laps: u32,
    rescans: u32,
}

impl Overtaken {
    /// Counts a rescan whose listing is `ids`.
    fn rescan(&mut self, ids: &[SegmentId]) {
        let (oldest, newest) = (ids.first().copied(), ids.last().copied());
        self.rescans += 1;
        match self.last {
            Some((last_oldest, _)) if last_oldest == oldest => self.stale += 1,
            Some(_) if oldest > self.lap_end => {
                self.laps += 1;
                self.lap_end = newest;
            }
            Some(_) => {}
            None => self.lap_end = newest,
        }
        self.last = Some((oldest, newest));
    }

    fn gives_up(&self) -> bool {
        self.stale >= TRUNCATED_RESCANS || self.laps >= TRUNCATED_LAPS || self.rescans >= RESCANS_MAX
    }
}

/// How a scan of the directory reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// The owner, holding the lock: repairs (removes an interrupted roll).
    Repair,
    /// A look beside a live writer, whose truncation and reuse may change listed segments.
    Look,
    /// The last of the looks [`inspect_dir`] retries.
    LastLook,
}

fn scan_dir<S: Storage>(storage: &S, dir: &Path, direct: bool, align: usize, ring: Option<&KeyRing>, scan: Scan) -> Result<Recovered> {
    let repair = scan == Scan::Repair;
    // The newest segment a durable batch went to, as the manifest says (logs made before it
    // existed have none: nothing to check). Read before the listing: a segment is created
    // before the manifest names it, so a reader beside a live writer lists what it names.
    let vouched = manifest::read(storage, dir)?.map(|slot| slot.newest);
    let listed = listed_ids(storage, dir)?;
    // Read after the listing: truncation records the floor before it removes anything below
    // it, so every segment a listing misses to truncation lies below a floor read after it
    // (which beside a live writer may lie above every listed one: `inspect_dir` looks again).
    let floor = manifest::read_floor(storage, dir)?;
    let (below_floor, ids) = split_at_floor(dir, listed, floor, vouched)?;
    let ctx = ScanCtx { storage, dir, direct, align, ring, beside_writer: !repair, reuse_races: scan == Scan::Look };
    let mut info = RecoveryInfo::default();
    let mut seal = None;
    let mut prev_end: Option<Lsn> = None;
    for (index, &id) in ids.iter().enumerate() {
        let last = index + 1 == ids.len();
        let outcome = if last && !repair {
            live::scan_live_segment(&ctx, id, prev_end, &mut info)?
        } else {
            scan_segment(&ctx, id, last, prev_end, &mut info)?
        };
        match outcome {
            Outcome::Sealed(seg) => {
                prev_end = Some(seg.end_lsn);
                info.segments.push(seg);
            }
            Outcome::Open(seg, _, torn) if seg.end_lsn == seg.first_lsn && vouched.is_some_and(|v| id <= v) => {
                // The manifest names a segment once its first batch is durable: one left with
                // no record lost acknowledged ones (its first batch damaged, or the file cut).
                let offset = torn.map_or(seg.bytes, |t| t.offset);
                return Err(WalError::Corruption { segment: id, offset, kind: CorruptionKind::BadFrame });
            }
            Outcome::Open(seg, pending, torn) => {
                prev_end = Some(seg.end_lsn);
                info.segments.push(seg);
                info.torn_tail = torn;
                seal = Some(pending);
            }
            Outcome::InterruptedRoll if vouched.is_some_and(|v| id <= v) => {
                // Not an interrupted roll: a batch of this segment was durable, so its head was.
                return Err(WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::BadSegmentHeader });
            }
            Outcome::InterruptedRoll => {
                if repair {
                    remove_interrupted_roll(storage, dir, id, &info)?;
                } else {
                    check_interrupted_roll(&info)?;
                }
                info.removed_interrupted_roll = Some(id);
            }
        }
    }
    let newest = info.segments.last().map_or(0, |s| s.id.0);
    if let Some(vouched) = vouched
        && vouched.0 > newest
    {
        // Acknowledged records lived in segments that are gone: say so rather than recover
        // to an older end.
        let why = MissingBecause::Manifest { named: vouched };
        return Err(WalError::MissingSegment { missing: SegmentId(newest + 1), next_present: None, why });
    }
    let next_lsn = prev_end.unwrap_or(Lsn::FIRST);
    info.first_lsn = info.segments.first().map_or(next_lsn, |s| s.first_lsn);
    info.record_count = info.segments.iter().map(SegmentInfo::record_count).sum();
    info.last_lsn = Lsn(next_lsn.0 - 1);
    // Counted from what remains: an interrupted roll's id is reused, leaving no hole.
    // No writer of this crate makes a segment with the last id (nothing could follow it).
    let next_segment = match info.segments.last() {
        None => SegmentId(1),
        Some(s) => SegmentId(s.id.0.checked_add(1).ok_or(WalError::Corruption {
            segment: s.id,
            offset: 0,
            kind: CorruptionKind::BadSegmentHeader,
        })?),
    };
    Ok(Recovered { info, seal, next_lsn, next_segment, below_floor })
}

/// Splits the listed segment ids at the truncation floor `FLOOR` records: those below it,
/// which a truncation that a crash cut short left for the next open to remove, and those the
/// log holds, which must start at the floor (no hole either). The oldest present above the
/// floor means segments the log still needed were removed, not truncated: an error, with
/// nothing changed; [`WalError::FloorSlotDamaged`] where the floor's other slot is damaged (it
/// may have held a later floor). No floor (a log no truncation has cut since `FLOOR`
/// existed): no check. Nor where the manifest (`vouched`) names no segment (0): a new log
/// whose floor names the segment its first batch will create, and which holds nothing of its
/// own until one is durable (no segment, or segments a `WalWriter` imported, of any ids).
fn split_at_floor(
    dir: &Path,
    listed: Vec<SegmentId>,
    floor: Option<FloorSeen>,
    vouched: Option<SegmentId>,
) -> Result<(Vec<SegmentId>, Vec<SegmentId>)> {
    // Every floor a truncation records is a listed segment, which the manifest named first.
    let floor = floor.filter(|_| vouched != Some(SegmentId(0)));
    let at = floor.map_or(SegmentId(0), |f| f.floor);
    let (below, ids): (Vec<SegmentId>, Vec<SegmentId>) = listed.into_iter().partition(|&id| id < at);
    match floor {
        Some(seen) if ids.first() != Some(&seen.floor) && seen.other_damaged => {
            return Err(WalError::FloorSlotDamaged {
                path: dir.join(FLOOR_FILE),
                floor: seen.floor,
                oldest_present: ids.first().copied(),
                contiguous: check_contiguous(&ids).is_ok(),
            });
        }
        Some(seen) if ids.first() != Some(&seen.floor) => {
            return Err(WalError::MissingSegment { missing: seen.floor, next_present: ids.first().copied(), why: MissingBecause::Floor });
        }
        _ => {}
    }
    check_contiguous(&ids)?;
    Ok((below, ids))
}

/// Segment ids in the directory, oldest first.
pub(crate) fn listed_ids<S: Storage>(storage: &S, dir: &Path) -> Result<Vec<SegmentId>> {
    let names = storage.list(dir).map_err(|e| WalError::io(IoOp::ListDir, dir, e))?;
    let mut ids: Vec<SegmentId> = names.iter().filter_map(|n| segment::parse_name(n)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A hole in the sequence of segment ids is an error.
fn check_contiguous(ids: &[SegmentId]) -> Result<()> {
    for pair in ids.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            let missing = SegmentId(pair[0].0 + 1);
            return Err(WalError::MissingSegment { missing, next_present: Some(pair[1]), why: MissingBecause::Hole });
        }
    }
    Ok(())
}

/// An empty newest segment is an interrupted roll only if the one before it is sealed.
fn check_interrupted_roll(info: &RecoveryInfo) -> Result<()> {
    if let Some(prev) = info.segments.last()
        && !prev.sealed
    {
        // The writer seals a segment durably before it creates the next one.
        return Err(WalError::Corruption { segment: prev.id, offset: prev.bytes, kind: CorruptionKind::UnsealedSegment });
    }
    Ok(())
}

fn remove_interrupted_roll<S: Storage>(storage: &S, dir: &Path, id: SegmentId, info: &RecoveryInfo) -> Result<()> {
    check_interrupted_roll(info)?;
    let path = segment::path(dir, id);
    tracing::warn!(segment = %id, "removing a segment left by an interrupted roll");
    storage.remove(&path).map_err(|e| WalError::io(IoOp::Remove, &path, e))?;
    storage.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))
}

/// Opens segment `id` at `path` for reading and holds it against reuse
/// ([`StorageFile::hold_shared`]) while the file is open. Where the log's truncation may have
/// taken the segment since it was listed (`may_be_truncated`: readers, and looks beside a
/// writer), a missing file is [`WalError::SegmentTruncated`].
pub(crate) fn open_held<S: Storage>(
    storage: &S,
    path: &Path,
    id: SegmentId,
    direct: bool,
    may_be_truncated: bool,
) -> Result<(S::File, u64)> {
    let (file, len) = match open_existing(storage, path, direct, false) {
        Err(WalError::Io { source, .. })
            if may_be_truncated && source.kind() == std::io::ErrorKind::NotFound && !still_listed(storage, path) =>
        {
            return Err(WalError::SegmentTruncated { segment: id });
        }
        opened => opened?,
    };
    file.hold_shared().map_err(|e| WalError::io(IoOp::Lock, path, e))?;
    Ok((file, len))
}

/// Whether `path`'s name is still in its directory. Truncation takes a segment's name away; a
/// name that is still there but opens to nothing (a symbolic link whose target is gone) was
/// not truncated, and its open error, which names it, is the answer. Where the directory
/// cannot be listed, the name counts as gone.
fn still_listed<S: Storage>(storage: &S, path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return false };
    storage.list(dir).is_ok_and(|names| names.iter().any(|n| n == name))
}

/// That the header of the file named for segment `id` names it too. Ids only grow, so where
/// truncation may have reused the file since it was listed, a later id means exactly that
/// ([`WalError::SegmentTruncated`]); any other id is corruption.
pub(crate) fn check_identity(head: &SegmentHead, id: SegmentId, may_be_truncated: bool) -> Result<()> {
    let header_id = head.header.segment_id;
    if header_id > id && may_be_truncated {
        return Err(WalError::SegmentTruncated { segment: id });
    }
    if header_id != id {
        return Err(WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::IdentityMismatch { header_id } });
    }
    Ok(())
}

/// Opens an existing segment, for writing only where it will be written (reading and scanning
/// need no write access, so tools work on a read-only copy).
pub(crate) fn open_existing<S: Storage>(storage: &S, path: &Path, direct: bool, write: bool) -> Result<(S::File, u64)> {
    let mode = OpenMode { create: false, write, direct, create_new: false };
    let file = storage.open(path, mode).map_err(|e| WalError::io(IoOp::Open, path, e))?;
    let len = file.len().map_err(|e| WalError::io(IoOp::Stat, path, e))?;
    Ok((file, len))
}

/// What every segment's scan needs.
struct ScanCtx<'a, S> {
    storage: &'a S,
    dir: &'a Path,
    direct: bool,
    align: usize,
    ring: Option<&'a KeyRing>,
    /// A look beside a live writer (no lock, no repairs): its truncation may take a listed
    /// segment at any moment.
    beside_writer: bool,
    /// Whether a segment's header naming a later segment may be the writer's reuse of the file
    /// since it was listed ([`WalError::SegmentTruncated`], look again) rather than damage.
    reuse_races: bool,
}

fn scan_segment<S: Storage>(
    ctx: &ScanCtx<'_, S>,
    id: SegmentId,
    last: bool,
    prev_end: Option<Lsn>,
    info: &mut RecoveryInfo,
) -> Result<Outcome> {
    let path = segment::path(ctx.dir, id);
    // Only the newest segment is read as the log writes it (O_DIRECT). The others are read
    // through the page cache with the kernel's read-ahead, which overlaps the disk with the
    // checking (an O_DIRECT read at a time waits for the disk each time: opening a log was ~4x
    // slower, BENCHMARKS.md), and dropped from the cache behind. Nothing
    // writes them while the directory is locked, and the page cache agrees with the disk
    // for files written with O_DIRECT.
    let direct = ctx.direct && last;
    let (file, len) = open_held(ctx.storage, &path, id, direct, ctx.beside_writer)?;
    if last && !direct && !ctx.beside_writer {
        // After a failed fdatasync (this process's, or an earlier one's under the same kernel)
        // Linux keeps the pages it could not write in the page cache, marked clean. Read from
        // there, they would pass for records, and the fdatasync that follows recovery would not
        // write them: records reported durable, then lost with a sealed segment torn at the
        // next power cut. Dropping the clean pages first makes the scan read the disk (dirty
        // pages stay: a killed process's batch, which the sync after recovery writes).
        // O_DIRECT reads the disk anyway. Only the newest segment can hold such pages.
        file.advise(Advice::DontNeed, 0, 0);
    }
    let mut reader = ChunkReader::new(file, path.clone(), len, ctx.align, DEFAULT_CHUNK);
    if !direct {
        reader.read_sequentially();
    }
    // Nothing writes it while the scan runs (sealed, or the owner holds the directory lock),
    // so a helper may read it and check it ahead of the scan: for the newest segment with
    // O_DIRECT, which overlaps the disk's reads with the checking.
    let helped = !(last && ctx.beside_writer);
    if helped {
        reader.read_ahead();
    }
    let Some(head) = read_head(&mut reader, id)? else {
        return head_fault(&mut reader, id, last, prev_end);
    };
    check_identity(&head, id, ctx.reuse_races)?;
    if let Some(expected) = prev_end
        && head.header.first_lsn != expected
    {
        let kind = CorruptionKind::LsnGap { expected, found: head.header.first_lsn };
        return Err(WalError::Corruption { segment: id, offset: 0, kind });
    }
    if head.preamble.cipher == CIPHER_NONE {
        check_plaintext_allowed(ctx.ring, id)?;
    } else if ctx.ring.is_none() && !ctx.beside_writer {
        // The owner of an encrypted log opened without any key ring would append plaintext
        // after the encrypted segments. A ring without an active key says that is meant.
        return Err(WalError::KeyRingMissing { segment: id });
    }
    let mut scan = SegmentScan::new(reader, id, &head);
    if helped {
        scan.read_ahead();
    }
    let mut cipher = None;
    // A ring holding this segment's key id must hold its key: one record authenticated per
    // segment catches a wrong key under the right id now, before an owner appends records that
    // no single ring could read back alongside the old ones. (A ring without the id is
    // checked when a record of the segment is read.)
    let mut check_key = head.preamble.cipher == CIPHER_AES_256_GCM && ctx.ring.is_some_and(|r| r.get(head.preamble.key_id).is_some());
    let wrong_key = || WalError::WrongKey { segment: id, key_id: head.preamble.key_id };
    let mut suspect: Option<WalError> = None;
    // Only the owner seals the newest segment, so only it needs that segment's index.
    let mut index = IndexBuilder::new(len);
    if last && !ctx.beside_writer {
        index.start(id, head.header.salt, head.header.first_lsn);
    }
    // An atomic group still open: where its first frame starts, its first LSN, and what it
    // holds for `collect`, and the records of those types it cannot read (applied, and
    // counted, only once the group is whole: a tail cut inside the group takes them away).
    let mut group: Option<(u64, Lsn)> = None;
    let mut group_collected: Vec<(RecordHeader, Vec<u8>)> = Vec::new();
    let mut group_ungathered = 0;
    let (offset, end, claim) = loop {
        match scan.step()? {
            Step::Record { offset, header } => {
                index.add(offset, &header);
                let continues = header.flags & FLAG_GROUP_CONTINUES != 0;
                if continues && group.is_none() {
                    group = Some((offset, header.lsn));
                }
                let mut collected = is_collected(header.record_type);
                if collected && ctx.beside_writer && !can_decrypt(ctx.ring, &head) {
                    // A look without this segment's key can still check and list it.
                    group_ungathered += 1;
                    collected = false;
                }
                let key_check = std::mem::take(&mut check_key);
                if collected || key_check {
                    if cipher.is_none() {
                        cipher = Some(cipher_for(ctx.ring, id, &head)?);
                    }
                    let payload = scan.stepped_payload(offset, &header)?;
                    match open_record(cipher.as_ref().and_then(Option::as_ref), id, &header, payload) {
                        // The key is right after all: the record that did not authenticate was altered.
                        Ok(_) if suspect.is_some() => return Err(suspect.take().expect("checked")),
                        Ok(plain) if collected => group_collected.push((header, plain)),
                        Ok(_) => {}
                        // The first record does not authenticate: the wrong key, or that record
                        // altered. Whether the next one does tells the two apart.
                        Err(err @ WalError::AuthenticationFailed { .. }) if key_check && suspect.is_none() => {
                            suspect = Some(err);
                            check_key = true;
                        }
                        Err(WalError::AuthenticationFailed { .. }) if key_check => return Err(wrong_key()),
                        Err(err) => return Err(err),
                    }
                }
                if !continues {
                    group = None;
                    info.ungathered += std::mem::take(&mut group_ungathered);
                    for (header, plain) in group_collected.drain(..) {
                        collect(info, &header, &plain)?;
                    }
                }
            }
            Step::End { offset, end, claim } => break (offset, end, claim),
        }
    };
    if suspect.is_some() {
        // No record after the one that did not authenticate: most likely the key.
        return Err(wrong_key());
    }
    if last && !matches!(end, TailEnd::Sealed { .. }) && offset < scan.block() && len >= scan.block() {
        // The chain ends in the first block, at the padding frame after the header frame:
        // its header lies in the head's sector, which a crash writes whole or not at all
        // (see `head_fault`), and the frame needs no byte past it to be valid once the file
        // reaches the block's end. So the sector was changed after it was written, and a cut
        // here would drop the segment's records without a word when no later frame vouches
        // for them (its only batch). A file that ends inside its first block (a header
        // block a crash cut short) holds no record: that is still cut.
        return Err(scan.corruption(offset, CorruptionKind::BadFrame));
    }
    if group.is_some() && matches!(end, TailEnd::Sealed { .. }) {
        return Err(scan.corruption(offset, CorruptionKind::IncompleteGroup));
    }
    let first_lsn = head.header.first_lsn;
    // A group the tail left open is cut whole: the log ends where it began.
    let (records_end, lost) = group.unwrap_or((offset, scan.next_lsn()));
    let (end, evidence, best_claim) = match (last, end) {
        (true, e) if !matches!(e, TailEnd::Sealed { .. }) => {
            let claims = scan.claims_from(offset)?;
            if earlier_use_only(&mut scan, offset, head.header.salt, claims, claim)? {
                (if e == TailEnd::Damaged { TailEnd::Stale } else { e }, Evidence::None, None)
            } else {
                (e, evidence(claims, claim, lost), claims.durable.max(claim))
            }
        }
        _ => (end, Evidence::None, None),
    };
    let mut seg = SegmentInfo { id, first_lsn, end_lsn: lost, bytes: records_end, sealed: false };
    match decide(last, end, evidence) {
        TailAction::Corrupt => Err(scan.corruption(offset, corruption_kind(last, end, evidence, lost, best_claim))),
        TailAction::Accept if matches!(end, TailEnd::Sealed { .. }) => {
            seg.sealed = true;
            Ok(Outcome::Sealed(seg))
        }
        action => {
            let torn = (action == TailAction::CutTorn || records_end < offset).then_some(TornTail {
                segment: id,
                offset: records_end,
                bytes_discarded: len.saturating_sub(records_end),
                found: end,
            });
            let index = index.finish_before(records_end);
            let pending = PendingSeal { id, records_end, block: scan.block(), salt: head.header.salt, next_lsn: lost, index };
            Ok(Outcome::Open(seg, pending, torn))
        }
    }
}

/// Whether a record of this segment can be read with `ring`: plaintext, or its key is there.
fn can_decrypt(ring: Option<&KeyRing>, head: &SegmentHead) -> bool {
    head.preamble.cipher != CIPHER_AES_256_GCM || ring.is_some_and(|r| r.get(head.preamble.key_id).is_some())
}

/// Record types whose payloads recovery gathers for the engines in its one pass.
fn is_collected(record_type: RecordType) -> bool {
    record_type == RecordType::COLLECTION_TOMBSTONE || record_type == RecordType::TEMPORAL_PURGE
}

fn collect(info: &mut RecoveryInfo, header: &RecordHeader, payload: &[u8]) -> Result<()> {
    let malformed = |problem| WalError::MalformedPayload { lsn: header.lsn, record_type: header.record_type, problem };
    if header.record_type == RecordType::COLLECTION_TOMBSTONE {
        info.tombstones.insert_found(&CollectionTombstonePayload::decode(payload).map_err(malformed)?, header.lsn);
    } else {
        let purge = TemporalPurgePayload::decode(payload).map_err(malformed)?;
        info.temporal_purges.push(TemporalPurge { lsn: header.lsn, scope: header.scope, purge });
    }
    Ok(())
}

/// Whether everything after the records, which end at `offset`, is the earlier use of a reused
/// segment file: the records end cleanly at a block boundary, no frame of this segment (`salt`)
/// starts there or anywhere after, and intact frames of another salt follow. An earlier use's
/// batches span blocks, so a block boundary of the new segment can fall inside one of its
/// frames, whose tail reads as neither zeros nor a frame: that is no torn write of this
/// segment, whose next batch would start at the boundary with a header of this segment. (A
/// write torn some other way is cut at the same place either way; only the report differs.)
fn earlier_use_only<F: StorageFile>(scan: &mut SegmentScan<F>, offset: u64, salt: u32, claims: Claims, claim: Option<Lsn>) -> Result<bool> {
    if !claims.foreign || claims.durable.is_some() || claim.is_some() || !offset.is_multiple_of(scan.block()) {
        return Ok(false);
    }
    let head = scan.reader_mut().get(offset, HEADER_LEN)?;
    Ok(!RecordHeader::decode(head).is_ok_and(|h| h.salt == salt))
}

fn evidence(claims: Claims, claim_at_end: Option<Lsn>, lost: Lsn) -> Evidence {
    match claims.durable.max(claim_at_end) {
        Some(durable) if durable >= lost => Evidence::Acknowledged,
        Some(_) => Evidence::Unacknowledged,
        None if claims.debris => Evidence::Debris,
        None => Evidence::None,
    }
}

fn corruption_kind(last: bool, end: TailEnd, evidence: Evidence, lost: Lsn, claim: Option<Lsn>) -> CorruptionKind {
    match (last, end) {
        (false, TailEnd::Damaged) => CorruptionKind::BadFrame,
        (false, _) => CorruptionKind::UnsealedSegment,
        (true, _) => {
            debug_assert_eq!(evidence, Evidence::Acknowledged);
            CorruptionKind::DamageBeforeDurableRecords { lost_from: lost, durable_claimed: claim.unwrap_or(lost) }
        }
    }
}

/// A segment whose first block is not a valid head: the remains of an interrupted roll, unless
/// some intact frame in it claims that one of its records was durable, or its first sector
/// was written as a head and more follows it.
fn head_fault<F: StorageFile>(reader: &mut ChunkReader<F>, id: SegmentId, last: bool, prev_end: Option<Lsn>) -> Result<Outcome> {
    let corrupt = WalError::Corruption { segment: id, offset: 0, kind: CorruptionKind::BadSegmentHeader };
    if !last {
        return Err(corrupt);
    }
    let threshold = prev_end.unwrap_or(Lsn::FIRST);
    reader.read_alone();
    // Without a valid head the salt and block size are unknown: look at every sector after
    // the first (no frame starts in it but the head's own).
    // Zeros and damage alike: the segment's first batch and its head are made durable by one
    // fdatasync, so an intact frame claiming one of its records durable means the head was
    // durable once, and is now lost (a zeroed head included).
    let claims = scan_claims(reader, SECTOR as u64, SECTOR as u64, None)?;
    if claims.durable.is_some_and(|d| d >= threshold) {
        return Err(corrupt);
    }
    // The claims cannot vouch for a segment whose only batch was acknowledged: its frames
    // claim no more than the segments before it. What tells such a segment from a roll is
    // the head's sector (see `head_sector_written`). A head that was written and no longer
    // reads, with anything after it, was changed on the medium (the preamble, which no
    // checksum covers, or the header frame): removing the file could lose acknowledged
    // records. A file with nothing but zeros after its first sector holds no record, and
    // removing it loses nothing.
    let holds_more = claims.durable.is_some() || claims.debris;
    if holds_more && head_sector_written(reader.get(0, SECTOR)?) {
        return Err(corrupt);
    }
    Ok(Outcome::InterruptedRoll)
}

/// Whether the first sector of a segment whose head does not read was written as a head: it
/// opens with the WAL magic, or holds an intact header frame after the preamble. The
/// preamble, the header frame and the padding frame's header all lie in that sector, which a
/// crash writes whole or not at all (FORMAT.md, "Assumptions about the media"), and a reused
/// file has its new head durable before it takes the segment's name. So a roll a crash cut
/// short leaves there zeros or stale bytes the file system never overwrote (which match
/// neither test but by a 1 in 2^32 chance), or a prefix of a head in a file that ends inside
/// the sector; never a whole head with a byte changed, which leaves either the magic or the
/// header frame's checksum intact.
fn head_sector_written(sector: &[u8]) -> bool {
    let header_frame = sector.get(PREAMBLE_SIZE..).map(decode_frame);
    sector.starts_with(&WAL_PREAMBLE_MAGIC) || header_frame.is_some_and(|h| h.is_ok_and(|h| h.record_type == RecordType::SEGMENT_HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rescans a look makes until it gives up, given the listing each rescan finds.
    fn rescans_until_given_up(listing: impl Fn(u32) -> Vec<SegmentId>) -> u32 {
        let mut overtaken = Overtaken::default();
        let mut rescans = 0;
        while !overtaken.gives_up() && rescans <= 2 * RESCANS_MAX {
            rescans += 1;
            overtaken.rescan(&listing(rescans));
        }
        rescans
    }

    #[test]
    fn a_look_whose_listings_go_back_and_forth_gives_up_in_bounded_rescans() {
        // The oldest segment alternates: no two listings in a row agree, and none passes the
        // first listing's newest, so neither the stale count nor the laps ever end the look.
        let rescans =
            rescans_until_given_up(|n| if n % 2 == 0 { vec![SegmentId(3), SegmentId(9)] } else { vec![SegmentId(4), SegmentId(9)] });
        assert_eq!(rescans, RESCANS_MAX);
    }

    #[test]
    fn a_look_gives_up_on_a_listing_that_stays_or_a_writer_that_laps_it() {
        assert_eq!(rescans_until_given_up(|_| vec![SegmentId(5), SegmentId(6)]), TRUNCATED_RESCANS + 1, "the first rescan sets the mark");
        let lapped = rescans_until_given_up(|n| vec![SegmentId(u64::from(n) * 10), SegmentId(u64::from(n) * 10 + 5)]);
        assert_eq!(lapped, TRUNCATED_LAPS + 1, "each listing starts past the newest of the one before");
    }

    #[test]
    fn every_tail_state_maps_to_exactly_one_action() {
        let ends = [TailEnd::Sealed { records_end: 0 }, TailEnd::Eof, TailEnd::Blank, TailEnd::Stale, TailEnd::Damaged];
        let evidences = [Evidence::None, Evidence::Debris, Evidence::Unacknowledged, Evidence::Acknowledged];
        for last in [false, true] {
            for end in ends {
                for ev in evidences {
                    let expected = match (last, end, ev) {
                        (_, TailEnd::Sealed { .. }, _) => TailAction::Accept,
                        (false, ..) => TailAction::Corrupt,
                        (true, _, Evidence::Acknowledged) => TailAction::Corrupt,
                        (true, TailEnd::Damaged, _) => TailAction::CutTorn,
                        (true, _, Evidence::Unacknowledged | Evidence::Debris) => TailAction::CutTorn,
                        (true, _, Evidence::None) => TailAction::Accept,
                    };
                    assert_eq!(decide(last, end, ev), expected, "{last} {end:?} {ev:?}");
                }
            }
        }
    }
}
