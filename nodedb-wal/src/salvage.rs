//! Point-in-time salvage: the way out for a damaged log that no replica or backup can replace.
//!
//! Recovery refuses a log whose acknowledged records are damaged, and reads nothing past the
//! damage. [`salvage`] copies the longest intact prefix of such a log (or all of a healthy one)
//! into a new directory that then opens as an ordinary log: every record from the oldest
//! present one up to the first position that is not the next intact record, with the same
//! LSNs, types, scopes and payloads. Each record is checked as it is copied (its checksum; in
//! an encrypted segment, its authentication under the ring given). An atomic group the damage
//! cuts is dropped whole. Tombstones and temporal purges are copied as records; the new log's
//! recovery gathers them again.
//!
//! What it costs is in the [`SalvageReport`]: where the damage is, and the intact records a
//! resync scan still finds after it, in the rest of that segment and in every later one, which
//! the new log does not hold. The new log hands out the LSNs after its last record again, as
//! after a torn tail: an engine that applied records past the cut holds data the log no
//! longer has, which is for the operator to weigh before the database starts on the copy.
//!
//! - **The source is only read**: no lock (taking it would create `LOCK` in a directory that
//!   may have none, or be read-only), no repair, nothing written, renamed or removed; the same
//!   read-only opens as `nodedb-wal verify`, so it works on a read-only copy. Run it on a log
//!   no writer has open: beside a live writer it may stop at the writer's unsynced tail (still
//!   a prefix) or fail where truncation takes a segment.
//! - **The new log is plaintext**: an encrypted log's records lie decrypted in the new
//!   directory, which needs the care the keys had. Opening it with a key ring encrypts the
//!   segments written from then on; a ring that refuses plaintext refuses it.
//! - **The destination** must be missing or empty (a `LOCK` alone counts as empty), and not
//!   inside the source ([`salvage`] resolves symbolic links and `..` as the file system does;
//!   [`salvage_with`] resolves `..` as names): anything else is
//!   [`WalError::SalvageDestinationNotEmpty`] or [`WalError::InvalidConfig`], with nothing written. Each new segment has the id of the one
//!   it copies.
//! - **A salvage cut short** (a crash, a kill, an error) leaves a new directory that does not
//!   open: its `MANIFEST` names a segment no log holds ([`PENDING`], refused as
//!   `MissingSegment`, or as `Corruption` of a segment left without records) until the last
//!   step, once every copied record is durable, names the real newest one. Before that
//!   `MANIFEST` exists the directory holds no segment, and opens as a new, empty log. An error
//!   of the last step itself leaves the outcome in doubt, as a failed sync does an append's:
//!   the copy may be complete, and open. Never does it open with part of the copy, or a record
//!   the source did not hold. Remove the directory and salvage again.
//! - **Keys**: an encrypted segment whose key the ring lacks is [`WalError::KeyRingMissing`] or
//!   [`WalError::UnknownKeyId`] before anything is written; a key that does not authenticate
//!   the segment's records (a wrong key) is damage ([`WalError::WrongKey`]) where the copy stops.
//!
//! # Examples
//!
//! ```
//! use std::path::Path;
//!
//! use nodedb_wal::salvage::salvage_with;
//! use nodedb_wal::storage::FaultConfig;
//! use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
//!
//! let sim = SimStorage::new(1, FaultConfig::default());
//! let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
//! for payload in [&b"first row"[..], b"second row", b"third row"] {
//!     wal.append_durable(Record::new(RecordType::optional(0x100), payload))?;
//! }
//! wal.close()?;
//! // A flipped byte in the last record's payload: the log is refused.
//! let path = nodedb_wal::segment::path(Path::new("/wal"), nodedb_wal::SegmentId(1));
//! let mut bytes = sim.read_file(&path).expect("segment");
//! let at = bytes.windows(9).rposition(|w| w == b"third row").expect("the payload");
//! bytes[at] ^= 1;
//! sim.write_file(&path, &bytes);
//! assert!(SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal")).is_err());
//!
//! let report = salvage_with(&sim, Path::new("/wal"), Path::new("/saved"), None)?;
//! assert_eq!(report.records, Some(Lsn(1)..=Lsn(2)));
//! assert!(matches!(report.damage.as_ref().map(|d| &d.error), Some(WalError::Corruption { .. })));
//! let saved = SegmentedWal::open_with(sim, SegmentedWalConfig::new("/saved"))?;
//! assert_eq!(saved.next_lsn(), Lsn(3), "LSN 3 is handed out again");
//! # Ok::<(), WalError>(())
//! ```

mod copy;
mod past;
mod place;
mod walk;

use std::ops::RangeInclusive;
use std::path::Path;

pub use copy::PENDING;
pub use past::IntactAfter;

use crate::crypto::KeyRing;
use crate::error::{Result, WalError};
use crate::manifest;
use crate::recovery::{self, RecoveryInfo, TornTail};
use crate::segment::SegmentInfo;
use crate::storage::{FsStorage, Storage};
use crate::types::{Lsn, RecordType, SegmentId};
use walk::{Source, Stop};

/// What a salvage kept, and what it did not.
#[derive(Debug)]
pub struct SalvageReport {
    /// The LSNs the new log holds (`None`: no record).
    pub records: Option<RangeInclusive<Lsn>>,
    /// The LSN the new log hands out next.
    pub next_lsn: Lsn,
    /// The new log's segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Where the copy stopped at damage; `None` for a healthy log, copied as recovery reads it.
    pub damage: Option<Damage>,
    /// A torn tail of a healthy log, not copied: recovery would have cut it (no acknowledged
    /// record is in it).
    pub torn_tail: Option<TornTail>,
    /// The members of an atomic group the stop cut, read intact but dropped with the group.
    pub group_dropped: Option<RangeInclusive<Lsn>>,
    /// The collection tombstones and temporal purges among [`SalvageReport::group_dropped`]
    /// (LSN and type), which the new log does not hold: as [`IntactAfter::drops_and_purges`].
    pub group_drops_and_purges: Vec<(Lsn, RecordType)>,
    /// Intact records found past the stop, not copied (from [`SalvageReport::next_lsn`] on).
    pub past_the_stop: IntactAfter,
    /// Why `FLOOR` did not read, where it did not: then the copy starts at the oldest segment
    /// present, which may be one a truncation cut short left behind. A hole after such
    /// segments reads as a missing segment, and the copy holds only LSNs the log had given
    /// up; move the segments below the hole aside and salvage again if that is what they are.
    pub floor_damage: Option<WalError>,
}

/// Where the damage a salvage stopped at lies, and what it is.
#[derive(Debug)]
pub struct Damage {
    /// The segment; `None` for damage of the directory's side files (`MANIFEST`, `FLOOR`),
    /// which stops nothing: every segment present was copied.
    pub segment: Option<SegmentId>,
    /// Where in it the first byte not copied is; `None` for a missing segment.
    pub offset: Option<u64>,
    /// What is wrong there, as recovery or a reader reports it: [`WalError::Corruption`] (with
    /// its [`crate::CorruptionKind`]), [`WalError::MissingSegment`],
    /// [`WalError::AuthenticationFailed`], [`WalError::WrongKey`], ...
    pub error: WalError,
}

/// [`salvage_with`] on the real file system, a destination inside the source refused as the file
/// system resolves both (symbolic links, `..`, a relative path).
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let (log, saved) = (dir.path().join("wal"), dir.path().join("saved"));
/// let mut config = nodedb_wal::SegmentedWalConfig::new(&log);
/// config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
/// let wal = nodedb_wal::SegmentedWal::open(config)?;
/// wal.append_durable(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), b"kept"))?;
/// wal.close()?;
/// let report = nodedb_wal::salvage::salvage(&log, &saved, None)?;
/// assert!(report.damage.is_none(), "a healthy log is copied whole");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn salvage(source: &Path, dest: &Path, ring: Option<&KeyRing>) -> Result<SalvageReport> {
    // Symbolic links and `..` as the file system resolves them, which only it knows.
    place::check_outside(&place::resolved(source), &place::resolved(dest))?;
    salvage_with(&FsStorage::new(), source, dest, ring)
}

/// Copies the intact prefix of the log in `source` into a new log in `dest`, on `storage`
/// (see the module docs). Errors: the destination ([`WalError::SalvageDestinationNotEmpty`],
/// [`WalError::InvalidConfig`] for one inside the source), a missing key
/// ([`WalError::KeyRingMissing`], [`WalError::UnknownKeyId`], [`WalError::PlaintextRefused`]),
/// and [`WalError::Io`] (a permission problem, a full disk), naming the step and the file. Damage is
/// not an error: it is where the copy stops, in the report.
pub fn salvage_with<S: Storage + Clone>(storage: &S, source: &Path, dest: &Path, ring: Option<&KeyRing>) -> Result<SalvageReport> {
    place::check_outside(&place::lexical(source), &place::lexical(dest))?;
    let src = Source { storage, dir: source, ring };
    let (ids, floor_damage) = source_ids(storage, source)?;
    walk::check_keys(&src, &ids)?;
    // Recovery's own verdict on the log, for where the walk's chain just ends.
    let verdict = match recovery::inspect_dir(storage, source, ring) {
        Err(err) if !is_damage(&err) => return Err(err),
        verdict => verdict,
    };
    let mut copier = copy::Copier::create(storage, dest)?;
    let stop = walk::walk(&src, &ids, &mut copier)?;
    let copied = copier.finish()?;
    let next_lsn = copied.segments.last().map_or(Lsn::FIRST, |s| s.end_lsn);
    let past_the_stop = match &stop {
        Some(stop) => past::intact_after(&src, &ids, stop, next_lsn)?,
        None => IntactAfter::default(),
    };
    let (damage, torn_tail) = judge(stop, verdict);
    let first = copied.segments.first().map_or(next_lsn, |s| s.first_lsn);
    let records = next_lsn.prev().filter(|&last| last >= first).map(|last| first..=last);
    Ok(SalvageReport {
        records,
        next_lsn,
        segments: copied.segments,
        damage,
        torn_tail,
        group_dropped: copied.group_dropped,
        group_drops_and_purges: copied.group_drops_and_purges,
        past_the_stop,
        floor_damage,
    })
}

/// Errors that describe the log's bytes rather than the caller's setup or the machine.
fn is_damage(err: &WalError) -> bool {
    err.is_corruption()
        || matches!(
            err,
            WalError::MissingSegment { .. }
                | WalError::AuthenticationFailed { .. }
                | WalError::WrongKey { .. }
                | WalError::UnsupportedVersion { .. }
                | WalError::UnsupportedCipher { .. }
                | WalError::MalformedPayload { .. }
        )
}

/// The damage the walk found where it stopped; where its chain just ended (the newest
/// segment), recovery's decision: a clean end, a torn tail it would cut, or damage.
fn judge(stop: Option<Stop>, verdict: Result<RecoveryInfo>) -> (Option<Damage>, Option<TornTail>) {
    if let Some(Stop { segment, offset, error: Some(error), .. }) = stop {
        return (Some(Damage { segment: Some(segment), offset, error }), None);
    }
    match verdict {
        Ok(info) => (None, info.torn_tail),
        Err(error) => {
            let (segment, offset) = match (&error, &stop) {
                // A side file stops nothing: every segment present was copied.
                (WalError::ManifestDamaged { .. } | WalError::FloorDamaged { .. } | WalError::FloorSlotDamaged { .. }, _) => (None, None),
                (WalError::Corruption { segment, offset, .. }, _) => (Some(*segment), Some(*offset)),
                (WalError::MissingSegment { missing, .. }, _) => (Some(*missing), None),
                (_, Some(stop)) => (Some(stop.segment), stop.offset),
                (_, None) => (None, None),
            };
            (Some(Damage { segment, offset, error }), None)
        }
    }
}

/// The source's segments, oldest first, from its truncation floor on: those below it are a
/// truncation a crash cut short, which the log no longer holds. A floor above every segment,
/// or one that does not read, is no reason to copy nothing: then every segment counts.
fn source_ids<S: Storage>(storage: &S, dir: &Path) -> Result<(Vec<SegmentId>, Option<WalError>)> {
    let mut ids = recovery::listed_ids(storage, dir)?;
    let (floor, floor_damage) = match manifest::read_floor(storage, dir) {
        Ok(floor) => (floor.map(|f| f.floor), None),
        Err(err @ WalError::FloorDamaged { .. }) => (None, Some(err)),
        Err(err) => return Err(err),
    };
    if let Some(floor) = floor
        && ids.iter().any(|&id| id >= floor)
    {
        ids.retain(|&id| id >= floor);
    }
    Ok((ids, floor_damage))
}
