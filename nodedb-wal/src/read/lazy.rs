//! Headers first: [`LazyWalReader`] hands out each record's header ([`RecordHandle`]) and reads
//! its payload only when asked, for a replay that skips most records.

use std::sync::Arc;

use crate::error::{Result, WalError};
use crate::format::frame::RecordHeader;
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, Scope, SegmentId};

use super::ReadSpec;
use super::cursor::{Cursor, Found};

/// A record's header, handed out by [`LazyWalReader`] before its payload is read.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"abc"))?;
/// let mut lazy = wal.lazy_reader(Lsn::FIRST)?;
/// let handle = lazy.next_header()?.expect("a record");
/// assert_eq!((handle.lsn, handle.stored_len), (Lsn(1), 3));
/// assert_eq!(handle.segment(), nodedb_wal::SegmentId(1));
/// assert!(handle.offset() > 0, "after the segment's header frame");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHandle {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Header flags.
    pub flags: u16,
    /// Bytes of the payload as stored (for encrypted records, ciphertext plus tag).
    pub stored_len: u32,
    segment: SegmentId,
    offset: u64,
    header: RecordHeader,
}

impl RecordHandle {
    /// The segment the record is in.
    #[must_use]
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Where its frame starts in the segment file.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Reads headers first; the caller reads a record's payload with [`LazyWalReader::payload`]
/// or skips it, and a skipped payload is never read from disk (beyond the block its header
/// shares). A payload that is read is checked (CRC) and decrypted. This is selective replay:
/// filter by type, scope or LSN on the handle, read only what matters.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append(Record::new(ty, &[1; 64 * 1024]))?;
/// wal.append(Record::new(ty, b"small"))?;
/// wal.sync()?;
/// let mut lazy = wal.lazy_reader(Lsn::FIRST)?;
/// let mut small = None;
/// while let Some(handle) = lazy.next_header()? {
///     if handle.stored_len < 100 {
///         small = Some(lazy.payload()?); // the 64 KiB payload is never read
///     }
/// }
/// assert_eq!(small.as_deref(), Some(&b"small"[..]));
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub struct LazyWalReader<S: Storage> {
    cursor: Cursor<S>,
    current: Option<RecordHandle>,
}

impl<S: Storage> std::fmt::Debug for LazyWalReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyWalReader").field("current", &self.current.map(|h| h.lsn)).finish()
    }
}

impl<S: Storage> LazyWalReader<S> {
    pub(crate) fn new(storage: Arc<S>, spec: ReadSpec) -> Result<LazyWalReader<S>> {
        Ok(LazyWalReader { cursor: Cursor::new(storage, spec, true)?, current: None })
    }

    /// The LSN this reader goes on from: the one after the last record it handed out or
    /// passed over (records of this crate's optional types that this build does not know,
    /// written by a newer one, which readers skip). A subscriber that keeps this as its cursor,
    /// rather than the last record's LSN plus one, does not find skipped records durable again
    /// at every wait, and so does not spin on them. `None` until the reader has read a record.
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.cursor.next.map(|at| at.lsn)
    }

    /// The next record's header, or `None` at the end. Skips this crate's unknown optional types.
    pub fn next_header(&mut self) -> Result<Option<RecordHandle>> {
        // No current record until the cursor gives one: after an error (the next segment
        // truncated away, say) the last handle's segment may be closed already.
        self.current = None;
        let Some(Found { segment, offset, header, .. }) = self.cursor.next()? else { return Ok(None) };
        let handle = RecordHandle {
            lsn: header.lsn,
            record_type: header.record_type,
            scope: header.scope,
            flags: header.flags,
            stored_len: header.payload_len,
            segment,
            offset,
            header,
        };
        self.current = Some(handle);
        Ok(Some(handle))
    }

    /// Reads, checks and decrypts the payload of the record [`Self::next_header`] returned last.
    pub fn payload(&mut self) -> Result<Vec<u8>> {
        self.payload_view().map(<[u8]>::to_vec)
    }

    /// Like [`Self::payload`], lending the payload from the reader's own buffer instead of
    /// copying it out: no allocation per record. The borrow ends at the next call.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// let (order, metric) = (RecordType::optional(0x200), RecordType::optional(0x300));
    /// wal.append(Record::new(metric, b"cpu 0.5"))?;
    /// wal.append_durable(Record::new(order, b"order 17"))?;
    /// let mut reader = wal.lazy_reader(Lsn::FIRST)?;
    /// let mut orders = 0;
    /// while let Some(header) = reader.next_header()? {
    ///     if header.record_type == order {
    ///         assert_eq!(reader.payload_view()?, b"order 17");
    ///         orders += 1;
    ///     }
    /// }
    /// assert_eq!(orders, 1);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn payload_view(&mut self) -> Result<&[u8]> {
        let handle = self.current.ok_or(WalError::NoCurrentRecord)?;
        self.cursor.open_at(handle.segment, handle.offset, &handle.header)
    }
}
