//! Identity newtypes shared by every layer.

use std::fmt;
use std::ops::RangeInclusive;

/// Log sequence number. Data records get dense LSNs starting at 1; `Lsn::ZERO` means "none".
///
/// # Examples
///
/// ```
/// use nodedb_wal::Lsn;
///
/// assert_eq!(Lsn::ZERO.next(), Lsn::FIRST);
/// assert_eq!(Lsn::FIRST.next(), Lsn(2));
/// assert_eq!(Lsn(2).prev(), Some(Lsn::FIRST));
/// assert!(Lsn::ZERO < Lsn::FIRST, "LSNs order like their numbers");
/// assert_eq!(Lsn::default(), Lsn::ZERO);
/// assert_eq!(Lsn(42).to_string(), "42");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No record: the durable LSN of an empty log.
    pub const ZERO: Lsn = Lsn(0);
    /// The first LSN a fresh log hands out.
    pub const FIRST: Lsn = Lsn(1);
    /// Every record's LSN is below this (2^63), and a segment's first LSN at most this: a log
    /// refuses the append that would reach it, and recovery refuses a segment header past it,
    /// so LSN arithmetic never wraps. No real log gets near: 2^63 appends take millennia.
    pub const LIMIT: Lsn = Lsn(1 << 63);

    /// The LSN after this one.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::Lsn;
    ///
    /// let third = Lsn::FIRST.next().next();
    /// assert_eq!(third, Lsn(3));
    /// ```
    #[must_use]
    pub const fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The LSN before this one, or `None` for [`Lsn::ZERO`], which has none. The LSN before
    /// [`Lsn::FIRST`] is [`Lsn::ZERO`], as the log itself uses it: the last LSN handed out
    /// before `next_lsn` is `next_lsn.prev()`, and that is `ZERO` ("none") in a new log.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::Lsn;
    ///
    /// assert_eq!(Lsn(3).prev(), Some(Lsn(2)));
    /// assert_eq!(Lsn::FIRST.prev(), Some(Lsn::ZERO), "no record before the first");
    /// assert_eq!(Lsn::ZERO.prev(), None);
    /// // The inverse of `next`.
    /// assert_eq!(Lsn(41).next().prev(), Some(Lsn(41)));
    /// ```
    #[must_use]
    pub const fn prev(self) -> Option<Lsn> {
        match self.0.checked_sub(1) {
            Some(n) => Some(Lsn(n)),
            None => None,
        }
    }

    /// Each LSN of `lsns`, in order (from either end): the LSNs an
    /// [`append_batch`](crate::SegmentedWal::append_batch) or
    /// [`append_group`](crate::SegmentedWal::append_group) returned, which a
    /// `RangeInclusive<Lsn>` cannot hand out itself (stepping a range of a newtype needs the
    /// unstable `Step` trait). The range is only read: it stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let rows = ["a", "b", "c"];
    /// let records: Vec<_> = rows.iter().map(|r| Record::new(RecordType::optional(0x100), r.as_bytes())).collect();
    /// let lsns = wal.append_batch(&records)?;
    /// // The memtable learns each row's LSN.
    /// let placed: Vec<(Lsn, &str)> = Lsn::range(&lsns).zip(rows).collect();
    /// assert_eq!(placed, [(Lsn(1), "a"), (Lsn(2), "b"), (Lsn(3), "c")]);
    /// assert_eq!(Lsn::range(&lsns).rev().next(), Some(*lsns.end()));
    /// wal.wait_durable(*lsns.end())?;
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn range(lsns: &RangeInclusive<Lsn>) -> impl DoubleEndedIterator<Item = Lsn> + Clone + use<> {
        (lsns.start().0..=lsns.end().0).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Sequence number of a segment file; it is also the file's name (`{id:020}.wal`).
///
/// # Examples
///
/// ```
/// use nodedb_wal::SegmentId;
///
/// let id = SegmentId(7);
/// assert_eq!(id.to_string(), "7");
/// assert!(id < SegmentId(8), "newer segments have higher ids");
/// assert_eq!(nodedb_wal::segment::file_name(id), "00000000000000000007.wal");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which database, tenant and virtual shard a record belongs to.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{Record, RecordType, Scope};
///
/// // The default scope is all zeros; records are in it unless they say otherwise.
/// assert_eq!(Scope::default(), Scope { database: 0, tenant: 0, vshard: 0 });
/// let scope = Scope { database: 1, tenant: 20, vshard: 300 };
/// let record = Record::new(RecordType::optional(0x100), b"row").scoped(scope);
/// assert_eq!(record.scope.tenant, 20);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Database id.
    pub database: u32,
    /// Tenant id.
    pub tenant: u32,
    /// Virtual shard id.
    pub vshard: u32,
}

/// A record type. The high bit marks a type every reader must understand.
///
/// Two ranges belong to this crate: `0x0000..=0x00FF` (optional) and `0x8000..=0x80FF`
/// (required). Applications use the rest: `0x0100..=0x7FFF` for types an older reader may
/// skip, `0x8100..=0xFFFF` for types it must not.
///
/// For its own ranges the log's readers apply the bit: an unknown required type stops them
/// ([`crate::WalError::UnknownRequiredType`]) and an unknown optional one is skipped. An
/// application's records are all handed out, whatever their bit: only the application knows
/// which of its types a build understands, so its replay stops at an unknown required one
/// itself (the second example).
///
/// # Examples
///
/// ```
/// use nodedb_wal::RecordType;
///
/// // An application's own types: one older readers may skip, one they must not.
/// let note = RecordType::optional(0x0120);
/// let schema = RecordType::required(0x0120);
/// assert_eq!((note.0, schema.0), (0x0120, 0x8120));
/// assert!(!note.is_required() && schema.is_required());
/// assert!(!note.is_reserved() && !schema.is_reserved());
///
/// // The crate's own types are reserved; the frames that structure a segment are meta.
/// assert!(RecordType::COLLECTION_TOMBSTONE.is_reserved() && RecordType::COLLECTION_TOMBSTONE.is_required());
/// for meta in [RecordType::PADDING, RecordType::SEGMENT_HEADER, RecordType::SEGMENT_END] {
///     assert!(meta.is_meta() && meta.0 & RecordType::REQUIRED_BIT != 0);
/// }
/// assert!(!RecordType::TEMPORAL_PURGE.is_meta());
/// assert!(RecordType::CALVIN_APPLIED.is_known_reserved() && !RecordType::CALVIN_APPLIED.is_required());
/// assert!(RecordType(0x8050).is_reserved() && !RecordType(0x8050).is_known_reserved());
/// ```
///
/// An application's replay, written by a build that knows one type:
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// const PUT: RecordType = RecordType::optional(0x100);
/// wal.append(Record::new(PUT, b"row"))?;
/// wal.append(Record::new(RecordType::optional(0x101), b"a later build's hint"))?;
/// wal.append(Record::new(RecordType::required(0x102), b"a later build's schema change"))?;
/// wal.sync()?;
/// let mut applied = Vec::new();
/// for record in wal.read_from(Lsn::FIRST)? {
///     let record = record?; // the log hands out all three
///     match record.record_type {
///         PUT => applied.push(record.lsn),
///         unknown if unknown.is_required() => {
///             assert_eq!(record.lsn, Lsn(3), "stop: this build cannot apply what follows");
///             break;
///         }
///         _ => {} // skipped: an older build may
///     }
/// }
/// assert_eq!(applied, [Lsn(1)]);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordType(pub u16);

/// In hex, as types are written, with the required bit spelled out:
/// `RecordType(0x8120, required)`.
///
/// # Examples
///
/// ```
/// use nodedb_wal::RecordType;
///
/// assert_eq!(format!("{:?}", RecordType::optional(0x101)), "RecordType(0x0101, optional)");
/// assert_eq!(format!("{:?}", RecordType::required(0x101)), "RecordType(0x8101, required)");
/// assert_eq!(format!("{:?}", RecordType::SEGMENT_END), "RecordType(0x8003, required)");
/// ```
impl fmt::Debug for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = if self.is_required() { "required" } else { "optional" };
        write!(f, "RecordType({:#06x}, {bit})", self.0)
    }
}

impl RecordType {
    /// The bit that marks a type a reader must understand.
    pub const REQUIRED_BIT: u16 = 0x8000;

    /// Fills a batch to its block boundary; carries no LSN.
    pub const PADDING: RecordType = RecordType(0x8001);
    /// Opens a segment: its id, first LSN and salt. Carries no LSN.
    pub const SEGMENT_HEADER: RecordType = RecordType(0x8002);
    /// Seals a segment; nothing after it belongs to the segment. Carries no LSN.
    pub const SEGMENT_END: RecordType = RecordType(0x8003);

    /// A collection was dropped: [`crate::CollectionTombstonePayload`]. Required: a reader that
    /// ignored it would resurrect dropped data.
    pub const COLLECTION_TOMBSTONE: RecordType = RecordType(0x8010);
    /// An engine purged data older than a cutoff: [`crate::TemporalPurgePayload`]. Required.
    pub const TEMPORAL_PURGE: RecordType = RecordType(0x8011);
    /// A deterministic scheduler applied a transaction: [`crate::CalvinAppliedPayload`].
    /// Optional: it only speeds up finding where to resume.
    pub const CALVIN_APPLIED: RecordType = RecordType(0x0010);

    /// An application type that older readers may skip. The high bit of `code` is cleared:
    /// `optional(0x8120)` is `0x0120`.
    #[must_use]
    pub const fn optional(code: u16) -> RecordType {
        RecordType(code & !Self::REQUIRED_BIT)
    }

    /// An application type that every reader must understand (`code` with the high bit set).
    #[must_use]
    pub const fn required(code: u16) -> RecordType {
        RecordType(code | Self::REQUIRED_BIT)
    }

    /// Whether a reader that does not know this type must stop rather than skip it.
    #[must_use]
    pub const fn is_required(self) -> bool {
        self.0 & Self::REQUIRED_BIT != 0
    }

    /// Whether the type lies in one of the two ranges this crate reserves for itself.
    #[must_use]
    pub const fn is_reserved(self) -> bool {
        self.0 & 0x7F00 == 0
    }

    /// Frames that structure the log and carry no LSN of their own.
    #[must_use]
    pub const fn is_meta(self) -> bool {
        matches!(self.0, 0x8001..=0x800F)
    }

    /// Whether this version of the crate knows a reserved type.
    #[must_use]
    pub const fn is_known_reserved(self) -> bool {
        matches!(self.0, 0x8001..=0x8003 | 0x8010 | 0x8011 | 0x0010)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lsn_range_yields_each_lsn_once_from_either_end() {
        let lsns = Lsn(5)..=Lsn(8);
        assert_eq!(Lsn::range(&lsns).collect::<Vec<_>>(), [Lsn(5), Lsn(6), Lsn(7), Lsn(8)]);
        assert_eq!(Lsn::range(&lsns).rev().collect::<Vec<_>>(), [Lsn(8), Lsn(7), Lsn(6), Lsn(5)]);
        assert_eq!(Lsn::range(&(Lsn(3)..=Lsn(3))).collect::<Vec<_>>(), [Lsn(3)], "a batch of one record");
        let last = Lsn(Lsn::LIMIT.0 - 1);
        assert_eq!(Lsn::range(&(Lsn(last.0 - 1)..=last)).count(), 2, "no overflow at the last LSN");
        assert_eq!(Lsn::range(&(Lsn(4)..=Lsn(3))).count(), 0, "an empty range yields nothing");
        assert_eq!(lsns, Lsn(5)..=Lsn(8), "the range is only read");
    }
}
