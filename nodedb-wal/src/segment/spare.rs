//! Read buffers kept from one reader to the next.
//!
//! A replay opens segment after segment, and each reader (and its read-ahead helper) needs a
//! few buffers of the same sizes. Asking the system for them anew every time costs page
//! faults and zeroing each time (and, in a VM that reports free pages to its host, the host's
//! work to back them again). So buffers up to `MAX_LEN` go back to a small shared pool when
//! dropped, and new ones come from it first. The pool holds at most `MAX_KEPT` buffers
//! (8 MiB) for the life of the process.
//!
//! (The pool was first credited with curing slow warm plain reads in the replay benchmark
//! after a recovery. Those turned out to be the benchmark's own buffer, 16 bytes past a page,
//! into which this CPU's kernel copies ~4x slower; whether the pool was kept changed where
//! glibc put that buffer. BENCHMARKS.md.)

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

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

/// An aligned buffer that goes back to the pool when dropped. Its bytes are whatever its last
/// user left there: readers track how much of it they filled.
#[derive(Debug)]
pub struct SpareBuf(Option<AlignedBuf>);

impl SpareBuf {
    /// A buffer of `len` bytes (rounded up to `align`, as [`AlignedBuf::zeroed`] does), from
    /// the pool if one of that size and alignment is kept.
    pub fn get(len: usize, align: usize) -> SpareBuf {
        let size = len.div_ceil(align).max(1) * align;
        SpareBuf(Some(SPARE.take(size, align).unwrap_or_else(|| AlignedBuf::zeroed(size, align))))
    }
}

impl Deref for SpareBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.0.as_deref().expect("held until dropped")
    }
}

impl DerefMut for SpareBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for SpareBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            SPARE.keep(buf);
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
    fn a_spare_buffer_has_the_size_and_alignment_asked_for() {
        let buf = SpareBuf::get(5000, 4096);
        assert_eq!(buf.len(), 8192);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
    }
}
