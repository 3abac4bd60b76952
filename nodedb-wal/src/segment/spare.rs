//! Read buffers kept from one reader to the next.
//!
//! A replay opens segment after segment, and each reader (and its read-ahead helper) needs a
//! few buffers of the same sizes. Asking the system for them anew every time costs page
//! faults and zeroing each time (and, in a VM that reports free pages to its host, the host's
//! work to back them again). So buffers up to `MAX_LEN` go back to a small shared pool when
//! dropped, and new ones come from it first. The pool holds at most `MAX_KEPT` buffers
//! (8 MiB) for the life of the process.
//!
//! Larger buffers (a read-ahead window holding a frame longer than a chunk) are kept only for
//! the reading of one segment, in that reading's [`LargeSpares`]: a replay of 4 MiB records
//! took a fresh buffer per record, and its page faults, and ran at 0.1-0.2 of a plain read
//! warm; reusing them, 0.3-0.47 (BENCHMARKS.md). They go when the reading's helper is done
//! (a window a caller still holds then pins only its own), so the process keeps none.
//!
//! (The pool was first credited with curing slow warm plain reads in the replay benchmark
//! after a recovery. Those turned out to be the benchmark's own buffer, 16 bytes past a page,
//! into which this CPU's kernel copies ~4x slower; whether the pool was kept changed where
//! glibc put that buffer. BENCHMARKS.md.)

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use crate::storage::AlignedBuf;

/// Buffers kept at most (a few readers' worth).
const MAX_KEPT: usize = 8;

/// The largest buffer kept: a reader's chunk, or a read-ahead window with its headroom.
pub(crate) const MAX_LEN: usize = 1 << 20;

static SPARE: Pool = Pool(Mutex::new(Vec::new()));

/// The kept buffers.
#[derive(Debug)]
struct Pool(Mutex<Vec<AlignedBuf>>);

impl Pool {
    /// A kept buffer of exactly `size` bytes and `align`, if there is one.
    fn take(&self, size: usize, align: usize) -> Option<AlignedBuf> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().position(|b| b.len() == size && b.align() == align).map(|at| kept.swap_remove(at))
    }

    /// Keeps `buf` if it is small enough and the pool is not full.
    fn keep(&self, buf: AlignedBuf) {
        if buf.len() > MAX_LEN {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < MAX_KEPT {
            kept.push(buf);
        }
    }
}

/// Buffers larger than [`MAX_LEN`] kept for one reading of one segment (see the module
/// documentation): at most `LARGE_KEPT`, the largest ones.
#[derive(Debug, Default)]
pub struct LargeSpares(Mutex<Large>);

/// The kept buffers, and whether the reading still makes large windows.
#[derive(Debug, Default)]
struct Large {
    kept: Vec<AlignedBuf>,
    /// The helper is done: nothing takes a kept buffer again.
    closed: bool,
}

/// Large buffers one reading keeps at most: a window the helper fills while the reader is in
/// another (the windows queued between them hold their own).
const LARGE_KEPT: usize = 2;

impl LargeSpares {
    /// A kept buffer of at least `size` bytes aligned to at least `align`, if there is one.
    fn take(&self, size: usize, align: usize) -> Option<AlignedBuf> {
        let mut large = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = &mut large.kept;
        kept.iter().position(|b| b.len() >= size && b.align() >= align).map(|at| kept.swap_remove(at))
    }

    /// Keeps `buf`, in place of the smallest kept one if `LARGE_KEPT` are; returns the buffer
    /// let go, to be dropped (unmapped) after the lock. Once closed, keeps nothing.
    fn keep(&self, buf: AlignedBuf) -> Option<AlignedBuf> {
        let mut large = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if large.closed {
            return Some(buf);
        }
        let kept = &mut large.kept;
        if kept.len() < LARGE_KEPT {
            kept.push(buf);
            return None;
        }
        match kept.iter_mut().min_by_key(|b| b.len()).filter(|b| b.len() < buf.len()) {
            Some(smallest) => Some(std::mem::replace(smallest, buf)),
            None => Some(buf),
        }
    }

    /// The reading's helper is done, and with it every take: lets go of the kept buffers, and
    /// of those given back later. A window a caller keeps past the reading (a payload shared
    /// with it) then pins only its own buffer, not the reading's kept ones as well.
    pub fn close(&self) {
        let let_go = {
            let mut large = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            large.closed = true;
            std::mem::take(&mut large.kept)
        };
        drop(let_go);
    }
}

/// `len` in whole units of `align`, at least one: the length [`AlignedBuf::zeroed`] gives.
fn rounded(len: usize, align: usize) -> usize {
    len.div_ceil(align).max(1) * align
}

/// An aligned buffer that goes back where it came from when dropped: the shared pool, or the
/// [`LargeSpares`] of a reading. Its bytes are whatever its last user left there: readers
/// track how much of it they filled.
#[derive(Debug)]
pub struct SpareBuf {
    buf: Option<AlignedBuf>,
    /// The bytes asked for (rounded up): a large kept buffer may hold more.
    len: usize,
    home: Option<Arc<LargeSpares>>,
}

impl SpareBuf {
    /// A buffer of `len` bytes (rounded up to `align`, as [`AlignedBuf::zeroed`] does), from
    /// the pool if one of that size and alignment is kept.
    pub fn get(len: usize, align: usize) -> SpareBuf {
        let size = rounded(len, align);
        let buf = SPARE.take(size, align).unwrap_or_else(|| AlignedBuf::zeroed(size, align));
        SpareBuf { buf: Some(buf), len: size, home: None }
    }

    /// Like [`Self::get`], but one larger than [`MAX_LEN`] comes from `home` where it keeps one
    /// large enough, and goes back there.
    pub fn get_in(len: usize, align: usize, home: &Arc<LargeSpares>) -> SpareBuf {
        let size = rounded(len, align);
        if size <= MAX_LEN {
            return SpareBuf::get(len, align);
        }
        let buf = home.take(size, align).unwrap_or_else(|| AlignedBuf::zeroed(size, align));
        SpareBuf { buf: Some(buf), len: size, home: Some(Arc::clone(home)) }
    }

    /// How many buffers the reading this one came from keeps (0 for the shared pool's).
    #[cfg(test)]
    pub fn home_kept(&self) -> usize {
        self.home.as_ref().map_or(0, |home| home.0.lock().unwrap().kept.len())
    }
}

impl Deref for SpareBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.buf.as_deref().expect("held until dropped")[..self.len]
    }
}

impl DerefMut for SpareBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_deref_mut().expect("held until dropped")[..self.len]
    }
}

impl Drop for SpareBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            match &self.home {
                Some(home) => drop(home.keep(buf)),
                None => SPARE.keep(buf),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shared pool is shared with every other test running at once: these use a pool of
    // their own.
    fn pool() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    #[test]
    fn a_kept_buffer_is_handed_out_again_for_its_size_and_alignment_only() {
        let pool = pool();
        let buf = AlignedBuf::zeroed(8192, 4096);
        let at = buf.as_ptr() as usize;
        pool.keep(buf);
        assert!(pool.take(4096, 4096).is_none(), "another size");
        assert!(pool.take(8192, 512).is_none(), "another alignment");
        assert_eq!(pool.take(8192, 4096).map(|b| b.as_ptr() as usize), Some(at));
        assert!(pool.take(8192, 4096).is_none(), "handed out once");
    }

    #[test]
    fn the_pool_keeps_neither_large_buffers_nor_more_than_its_limit() {
        let pool = pool();
        pool.keep(AlignedBuf::zeroed(MAX_LEN * 2, 4096));
        assert!(pool.take(MAX_LEN * 2, 4096).is_none());
        for _ in 0..MAX_KEPT + 3 {
            pool.keep(AlignedBuf::zeroed(4096, 4096));
        }
        let mut taken = 0;
        while pool.take(4096, 4096).is_some() {
            taken += 1;
        }
        assert_eq!(taken, MAX_KEPT);
    }

    #[test]
    fn a_large_buffer_goes_back_to_its_reading_and_is_handed_out_for_any_size_it_holds() {
        let home = Arc::new(LargeSpares::default());
        let first = SpareBuf::get_in(3 * MAX_LEN, 4096, &home);
        let at = first.as_ptr() as usize;
        drop(first);
        let smaller = SpareBuf::get_in(2 * MAX_LEN + 1, 512, &home);
        assert_eq!(smaller.as_ptr() as usize, at, "the kept buffer");
        assert_eq!(smaller.len(), 2 * MAX_LEN + 512, "only the bytes asked for");
        let larger = SpareBuf::get_in(4 * MAX_LEN, 4096, &home);
        assert_ne!(larger.as_ptr() as usize, at, "too small for it");
        // The kept buffer was made for 4 KiB alignment: not handed out for a coarser one, even
        // where its address happens to be aligned.
        drop(smaller);
        let coarse = SpareBuf::get_in(MAX_LEN * 2, 1 << 20, &home);
        assert_ne!(coarse.as_ptr() as usize, at, "a buffer made for a finer alignment");
        assert!((coarse.as_ptr() as usize).is_multiple_of(1 << 20), "never less aligned");
        drop((coarse, larger));
        assert!(SpareBuf::get_in(MAX_LEN, 4096, &home).home.is_none(), "small ones use the shared pool");
    }

    #[test]
    fn a_reading_keeps_at_most_its_largest_few_large_buffers() {
        let home = LargeSpares::default();
        for n in 2..=5 {
            drop(home.keep(AlignedBuf::zeroed(n * MAX_LEN, 4096)));
        }
        let kept: Vec<usize> = home.0.lock().unwrap().kept.iter().map(|b| b.len() / MAX_LEN).collect();
        assert_eq!(kept.len(), LARGE_KEPT);
        assert!(kept.contains(&5) && kept.contains(&4), "{kept:?}");
    }

    #[test]
    fn a_spare_buffer_has_the_size_and_alignment_asked_for() {
        let buf = SpareBuf::get(5000, 4096);
        assert_eq!(buf.len(), 8192);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
    }
}
