//! A read-only look at a log another process may own ([`inspect_dir`]), and how it rescans
//! when the owner's truncation overtakes it ([`Overtaken`]).
//!
//! A look holds no lock, so a segment it listed may be truncated (or reused) before it reads
//! it; the rescans here tell such races from a segment that is really missing, and bound how
//! long a look keeps trying.

use std::path::Path;

use super::RecoveryInfo;
use super::dir::{Scan, scan_dir};
use super::ids::listed_ids;
use crate::crypto::KeyRing;
use crate::error::{Result, WalError};
use crate::storage::Storage;
use crate::types::SegmentId;

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
}
