//! The group-commit batch buffer: many appenders fill disjoint regions of one aligned buffer at
//! once, without a lock, and the flusher takes the whole buffer once every region is done.
//!
//! Disjointness comes from an atomic cursor; "every region is done" is "the flusher's `Arc` is
//! the only one left", which `Arc::get_mut` checks. No region can outlive its buffer.

#![allow(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::AlignedBuf;

const SEALED: usize = 1 << (usize::BITS - 1);

/// An aligned buffer that appenders reserve regions of and the flusher writes out.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// use nodedb_wal::storage::BatchBuf;
///
/// let buf = Arc::new(BatchBuf::new(100, 64, 64));
/// assert_eq!((buf.limit(), buf.capacity()), (100, 192), "limit plus slack, rounded up to the alignment");
/// let mut a = buf.try_reserve(40).expect("fits");
/// let mut b = buf.try_reserve(60).expect("fits");
/// assert!(buf.try_reserve(1).is_none(), "over the limit");
/// a.bytes().fill(1); // appenders fill their regions at the same time, without a lock
/// b.bytes().fill(2);
/// assert_eq!(buf.seal(), 100);
/// drop((a, b));
///
/// // Every region is gone: the flusher owns the buffer again.
/// let mut buf = Arc::try_unwrap(buf).expect("no region left");
/// assert_eq!(buf.bytes_mut()[39..41], [1, 2]);
/// buf.reset();
/// assert_eq!(buf.used(), 0);
/// ```
pub struct BatchBuf {
    mem: AlignedBuf,
    /// Bytes reservations may use; the rest of the capacity is kept for the closing padding.
    limit: usize,
    /// Bytes reserved so far, with the [`SEALED`] bit once no more reservations are taken.
    cursor: AtomicUsize,
}

impl BatchBuf {
    /// A buffer of `limit` reservable bytes plus room for the closing frames, aligned to `align`.
    /// See [`BatchBuf`] for an example.
    #[must_use]
    pub fn new(limit: usize, align: usize, slack: usize) -> BatchBuf {
        let size = BatchBuf::size(limit, slack);
        BatchBuf { mem: AlignedBuf::zeroed(size, align), limit, cursor: AtomicUsize::new(0) }
    }

    /// [`Self::new`], or `None` where the system has no memory for it
    /// ([`AlignedBuf::try_zeroed`]): for the one-off buffer of a batch as large as what one
    /// call appends, which the log refuses rather than end the process.
    #[must_use]
    pub fn try_new(limit: usize, align: usize, slack: usize) -> Option<BatchBuf> {
        let size = BatchBuf::size(limit, slack);
        Some(BatchBuf { mem: AlignedBuf::try_zeroed(size, align)?, limit, cursor: AtomicUsize::new(0) })
    }

    /// The bytes to allocate. Checked in release builds too: regions are handed out up to
    /// `limit`, which must lie inside the allocation and below the cursor's sealed bit.
    fn size(limit: usize, slack: usize) -> usize {
        assert!(limit < SEALED, "batch limit {limit} too large");
        limit.checked_add(slack).expect("batch size overflows")
    }

    /// The [`Self::capacity`] a buffer made by [`Self::new`] with these arguments has; `None`
    /// where it overflows.
    #[must_use]
    pub fn capacity_for(limit: usize, align: usize, slack: usize) -> Option<usize> {
        AlignedBuf::size_for(limit.checked_add(slack)?, align)
    }

    /// Reserves `len` bytes; `None` if the buffer is sealed or they do not fit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::BatchBuf;
    ///
    /// let buf = Arc::new(BatchBuf::new(4096, 4096, 0));
    /// let first = buf.try_reserve(100).expect("fits");
    /// let second = buf.try_reserve(100).expect("fits");
    /// assert_eq!((first.start(), second.start()), (0, 100), "regions never overlap");
    /// buf.seal();
    /// assert!(buf.try_reserve(1).is_none(), "sealed");
    /// ```
    pub fn try_reserve(self: &Arc<Self>, len: usize) -> Option<Region> {
        let mut cur = self.cursor.load(Ordering::Acquire);
        loop {
            if cur & SEALED != 0 || cur.checked_add(len).is_none_or(|end| end > self.limit) {
                return None;
            }
            match self.cursor.compare_exchange_weak(cur, cur + len, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Region { buf: Arc::clone(self), start: cur, len }),
                Err(now) => cur = now,
            }
        }
    }

    /// Refuses further reservations; returns the bytes reserved. See [`BatchBuf`] for an example.
    pub fn seal(&self) -> usize {
        self.cursor.fetch_or(SEALED, Ordering::AcqRel) & !SEALED
    }

    /// Bytes reserved so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::BatchBuf;
    ///
    /// let buf = Arc::new(BatchBuf::new(4096, 512, 0));
    /// let _region = buf.try_reserve(300);
    /// assert_eq!(buf.used(), 300);
    /// assert_eq!(buf.seal(), 300);
    /// assert_eq!(buf.used(), 300, "sealing keeps the count");
    /// ```
    #[must_use]
    pub fn used(&self) -> usize {
        self.cursor.load(Ordering::Acquire) & !SEALED
    }

    /// Reservable bytes. See [`BatchBuf`] for an example.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Total bytes, including the slack kept for closing frames. See [`BatchBuf`] for an
    /// example.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.mem.len()
    }

    /// The whole buffer, once no region is left (the caller holds the only `Arc`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::BatchBuf;
    ///
    /// let mut buf = Arc::new(BatchBuf::new(4096, 512, 0));
    /// let region = buf.try_reserve(10).expect("fits");
    /// assert!(Arc::get_mut(&mut buf).is_none(), "a region is still being filled");
    /// drop(region);
    /// let whole = Arc::get_mut(&mut buf).expect("no region left").bytes_mut();
    /// assert_eq!(whole.len(), 4096);
    /// ```
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem
    }

    /// Makes the buffer reusable: no reservations, not sealed. Old bytes stay until overwritten.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::BatchBuf;
    ///
    /// let mut buf = BatchBuf::new(4096, 512, 0);
    /// buf.seal();
    /// buf.reset();
    /// let buf = Arc::new(buf);
    /// assert_eq!(buf.try_reserve(8).map(|region| region.start()), Some(0));
    /// ```
    pub fn reset(&mut self) {
        *self.cursor.get_mut() = 0;
    }

    /// Makes the buffer reusable, as [`Self::reset`], for `limit` reservable bytes with `slack`
    /// more behind them (as [`Self::new`] takes them). `false`, and nothing changed, where
    /// they do not fit.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::BatchBuf;
    ///
    /// let mut buf = BatchBuf::new(8192, 512, 1024);
    /// assert!(buf.reset_to(5000, 1024));
    /// assert_eq!(buf.limit(), 5000);
    /// assert!(buf.reset_to(8192, 1024), "as much as it was made for");
    /// assert!(!buf.reset_to(8193, 1024), "more than it holds");
    /// ```
    pub fn reset_to(&mut self, limit: usize, slack: usize) -> bool {
        if limit.saturating_add(slack) > self.mem.len() {
            return false;
        }
        self.limit = limit;
        self.reset();
        true
    }
}

impl fmt::Debug for BatchBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuf").field("used", &self.used()).field("limit", &self.limit).finish()
    }
}

/// Exclusive access to a reserved range of a [`BatchBuf`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// use nodedb_wal::storage::BatchBuf;
///
/// let buf = Arc::new(BatchBuf::new(4096, 512, 0));
/// let mut region = buf.try_reserve(5).expect("fits");
/// region.bytes().copy_from_slice(b"frame");
/// assert_eq!(region.start(), 0);
/// drop(region);
/// let mut buf = Arc::try_unwrap(buf).expect("no region left");
/// assert_eq!(&buf.bytes_mut()[..5], b"frame");
/// ```
pub struct Region {
    buf: Arc<BatchBuf>,
    start: usize,
    len: usize,
}

impl Region {
    /// Offset of the region inside its batch. See [`Region`] for an example.
    #[must_use]
    pub fn start(&self) -> usize {
        self.start
    }

    /// The reserved bytes. See [`Region`] for an example.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `start..start+len` lies within the allocation (checked against `limit` at
        // reservation, and `limit` <= capacity). The cursor hands out each byte to at most one
        // region, so no other `&mut` overlaps. No `&mut BatchBuf` (and so no slice over the whole
        // buffer) can exist while this region's `Arc` is alive, because `bytes_mut` needs
        // `Arc::get_mut`. The `Arc` keeps the allocation alive.
        unsafe { std::slice::from_raw_parts_mut(self.buf.mem.as_mut_ptr().add(self.start), self.len) }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("start", &self.start).field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_for_is_the_capacity_new_makes() {
        for (limit, align, slack) in [(0, 512, 0), (1, 512, 100), (4096, 4096, 8200), (1 << 20, 4096, 8200), (3 << 20, 512, 1)] {
            assert_eq!(
                BatchBuf::capacity_for(limit, align, slack),
                Some(BatchBuf::new(limit, align, slack).capacity()),
                "{limit} {align} {slack}"
            );
        }
        assert_eq!(BatchBuf::capacity_for(usize::MAX, 512, 1), None);
    }

    #[test]
    fn a_reservation_whose_end_would_wrap_is_refused_not_granted_over_the_first() {
        // Unchecked in release builds, `cur + len` wrapped: the huge region was granted and
        // the next one overlapped the first (found by a review).
        let buf = Arc::new(BatchBuf::new(4096, 64, 0));
        let first = buf.try_reserve(100).unwrap();
        assert!(buf.try_reserve(usize::MAX - 50).is_none());
        assert_eq!(buf.try_reserve(10).unwrap().start(), 100, "after the first");
        drop(first);
    }

    #[test]
    #[should_panic(expected = "too large")]
    fn a_limit_that_would_wrap_the_allocation_panics_before_allocating() {
        let _ = BatchBuf::new(usize::MAX, 64, 1);
    }

    #[test]
    fn regions_are_disjoint_and_sealing_stops_reservations() {
        let buf = Arc::new(BatchBuf::new(100, 64, 64));
        let mut a = buf.try_reserve(40).unwrap();
        let mut b = buf.try_reserve(60).unwrap();
        assert!(buf.try_reserve(1).is_none(), "over the limit");
        a.bytes().fill(1);
        b.bytes().fill(2);
        assert_eq!((a.start(), b.start()), (0, 40));
        assert_eq!(buf.seal(), 100);
        drop((a, b));
        let mut buf = Arc::try_unwrap(buf).unwrap();
        assert!(buf.bytes_mut()[..40].iter().all(|&x| x == 1));
        assert!(buf.bytes_mut()[40..100].iter().all(|&x| x == 2));
        buf.reset();
        assert_eq!(buf.used(), 0);
    }

    #[test]
    fn the_flusher_cannot_take_the_buffer_while_a_region_is_alive() {
        let mut buf = Arc::new(BatchBuf::new(100, 64, 0));
        let region = buf.try_reserve(10).unwrap();
        buf.seal();
        assert!(Arc::get_mut(&mut buf).is_none());
        drop(region);
        assert!(Arc::get_mut(&mut buf).is_some());
    }

    /// The commit path's whole life of a batch, on threads: regions reserved under the plan's
    /// lock are filled by their appenders while the plan seals the buffer and checks its
    /// capacity (`Plan::seal_active`), and the flusher takes the buffer once the last region
    /// is dropped. Under Miri this checks that no access to the whole buffer overlaps an
    /// appender's writes, and that dropping a region orders its bytes before the flusher's
    /// read (`cargo +nightly miri test`, docs/TESTING.md).
    #[test]
    fn appenders_on_threads_fill_disjoint_regions_while_the_buffer_is_sealed_and_the_flusher_reads_them_all() {
        const REGIONS: usize = 4;
        const REGION_LEN: usize = 24;
        let mut buf = Arc::new(BatchBuf::new(REGIONS * REGION_LEN, 64, 64));
        let regions: Vec<Region> = (0..REGIONS).map(|_| buf.try_reserve(REGION_LEN).unwrap()).collect();
        let appenders: Vec<_> = regions
            .into_iter()
            .enumerate()
            .map(|(index, mut region)| std::thread::spawn(move || region.bytes().fill(index as u8 + 1)))
            .collect();
        assert_eq!(buf.seal(), REGIONS * REGION_LEN);
        assert!(buf.capacity() >= REGIONS * REGION_LEN, "sealing checks the padded batch fits");
        // The flusher's wait: no join, only the last region's drop orders the appenders' bytes.
        while Arc::get_mut(&mut buf).is_none() {
            std::thread::yield_now();
        }
        let whole = Arc::get_mut(&mut buf).unwrap().bytes_mut();
        for (index, bytes) in whole[..REGIONS * REGION_LEN].chunks(REGION_LEN).enumerate() {
            assert!(bytes.iter().all(|&b| b == index as u8 + 1), "region {index}: {bytes:?}");
        }
        for appender in appenders {
            appender.join().unwrap();
        }
    }
}
