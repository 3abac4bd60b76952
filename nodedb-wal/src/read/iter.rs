//! Whole records in LSN order: [`WalIter`], which hands them out owned (sharing the read
//! buffer where it can) or lent ([`RecordView`]).

use std::sync::Arc;

use crate::error::Result;
use crate::payload::Payload;
use crate::record::WalRecord;
use crate::segment::SegmentInfo;
use crate::segment::read_ahead::Window;
use crate::segment::reader::DEFAULT_CHUNK;
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, Scope};

use super::cursor::{Cursor, Found};
use super::{Position, ReadSpec};

/// A record borrowed from a reader ([`WalIter::next_view`]): valid until the reader moves on.
/// A plaintext payload is read in place, without a copy.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"lent"))?;
/// let mut reader = wal.read_from(Lsn::FIRST)?;
/// let view = reader.next_view().expect("a record")?;
/// assert_eq!((view.lsn, view.payload), (Lsn(1), &b"lent"[..]));
/// let owned = view.to_record(); // a copy that outlives the reader
/// assert_eq!(owned.payload, b"lent");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Its type.
    pub record_type: RecordType,
    /// Database, tenant and vshard.
    pub scope: Scope,
    /// Header flags.
    pub flags: u16,
    /// The payload (decrypted, unless the reader hands out payloads as stored).
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// An owned copy.
    #[must_use]
    pub fn to_record(&self) -> WalRecord {
        WalRecord {
            lsn: self.lsn,
            record_type: self.record_type,
            scope: self.scope,
            flags: self.flags,
            payload: Payload::from(self.payload),
        }
    }
}

/// Iterates the records of a log in LSN order, from a starting LSN up to a bound that was
/// durable when the iterator was made. Holds one segment's read window at a time.
///
/// As an [`Iterator`] it hands out owned records, whose plaintext payloads share the read
/// buffer while the caller lets go of them in time (see [`Payload`]); [`WalIter::next_view`]
/// lends them instead, which saves even that where a replay only looks at each payload once.
///
/// In a sealed segment, where a core is free, a reader has a helper thread reading ahead of it
/// and holds up to about 3 MiB of read buffers; both go when it leaves the segment or is
/// dropped. A reader put aside mid-segment keeps them, so drop readers no longer used.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"one"))?;
/// let records: Vec<_> = wal.read_from(Lsn::FIRST)?.collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 1);
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
pub struct WalIter<S: Storage> {
    cursor: Cursor<S>,
    done: bool,
    failed: bool,
}

impl<S: Storage> std::fmt::Debug for WalIter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIter").field("from", &self.cursor.spec.from).field("until", &self.cursor.spec.until).finish()
    }
}

impl<S: Storage> WalIter<S> {
    pub(crate) fn new(storage: Arc<S>, spec: ReadSpec) -> Result<WalIter<S>> {
        let done = spec.from > spec.until;
        Ok(WalIter { cursor: Cursor::new(storage, spec, false)?, done, failed: false })
    }

    /// The next record, lent until the next call; `None` at the end. After an error, `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// for i in 0..3u8 {
    ///     wal.append(Record::new(ty, &[i; 100]))?;
    /// }
    /// wal.sync()?;
    /// let (mut records, mut bytes) = (0, 0);
    /// let mut reader = wal.read_from(Lsn::FIRST)?;
    /// while let Some(view) = reader.next_view() {
    ///     let view = view?;
    ///     records += 1;
    ///     bytes += view.payload.len();
    /// }
    /// assert_eq!((records, bytes), (3, 300));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn next_view(&mut self) -> Option<Result<RecordView<'_>>> {
        let found = self.next_found(false)?;
        Some(found.map(|found| RecordView {
            lsn: found.header.lsn,
            record_type: found.header.record_type,
            scope: found.header.scope,
            flags: found.header.flags,
            payload: found.payload,
        }))
    }

    /// The next record, with the buffer its payload may share where it is to be `owned`; `None`
    /// at the end and after an error.
    #[inline]
    fn next_found(&mut self, owned: bool) -> Option<Result<Found<'_>>> {
        if self.done {
            return None;
        }
        self.cursor.owned = owned;
        match self.cursor.next() {
            Ok(Some(found)) => Some(Ok(found)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                self.failed = true;
                Some(Err(err))
            }
        }
    }

    /// Lets go of buffers a large record made larger than a read needs: the decryption buffer,
    /// and the open segment's read window. For a reader kept between uses (a tail's), which
    /// would otherwise hold them as long as it lives (a quiet log never rolls its segment).
    pub(crate) fn trim(&mut self) {
        if self.cursor.plain.capacity() > DEFAULT_CHUNK {
            self.cursor.plain = Vec::new();
        }
        if let Some(scan) = self.cursor.scan.as_mut() {
            scan.reader_mut().trim();
        }
    }

    /// Bytes of the buffers the reader holds between records (its read window, its
    /// decryption buffer).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let window = self.cursor.scan.as_ref().map_or(0, |scan| scan.reader().held_bytes());
        window + self.cursor.plain.capacity()
    }

    /// The LSN this reader goes on from: the one after the last record it handed out or
    /// passed over (records of this crate's optional types that this build does not know,
    /// written by a newer one, which readers skip). A subscriber that keeps this as its cursor,
    /// rather than the last record's LSN plus one, does not find skipped records durable again
    /// at every wait, and so does not spin on them. `None` until the reader has read a record.
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.cursor.next.map(|at| at.lsn)
    }

    /// Where the record after the last one handed out or passed over starts.
    pub(crate) fn resume_point(&self) -> Option<Position> {
        self.cursor.next
    }

    /// Goes on to `until` (see `Cursor::extend`) after handing out everything up to the old
    /// bound; `false` after an error or where the reader cannot go on.
    pub(crate) fn extend(&mut self, until: Lsn, segments: Vec<SegmentInfo>) -> Result<bool> {
        if self.failed || !self.cursor.extend(until, segments)? {
            return Ok(false);
        }
        self.done = false;
        Ok(true)
    }
}

impl<S: Storage> Iterator for WalIter<S> {
    type Item = Result<WalRecord>;

    fn next(&mut self) -> Option<Result<WalRecord>> {
        let found = match self.next_found(true)? {
            Ok(found) => found,
            Err(err) => return Some(Err(err)),
        };
        let header = found.header;
        let payload = match found.window.and_then(|window| share(window, found.payload)) {
            Some(shared) => shared,
            // The plaintext is the record's own: the next record's goes into a new buffer.
            None if found.decrypted => Payload::from(std::mem::take(&mut self.cursor.plain)),
            None => Payload::from(found.payload),
        };
        Some(Ok(WalRecord { lsn: header.lsn, record_type: header.record_type, scope: header.scope, flags: header.flags, payload }))
    }
}

/// `payload` as a part of `window`'s buffer, if it lies there (not where it was decrypted,
/// say, or read anew into another buffer).
#[inline]
fn share(window: Arc<Window>, payload: &[u8]) -> Option<Payload> {
    let buf = window.buf.as_ptr_range();
    let (start, end) = (payload.as_ptr(), payload.as_ptr().wrapping_add(payload.len()));
    if start < buf.start || end > buf.end {
        return None;
    }
    let at = start.addr() - buf.start.addr();
    Some(Payload::shared(window, at, payload.len()))
}
