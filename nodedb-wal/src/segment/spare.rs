//! Read buffers kept from one reader to the next.
//!
//! A replay opens segment after segment, and each reader (and its read-ahead helper) needs a
//! few buffers of the same sizes. Asking the system for them anew every time costs page
//! faults and zeroing each time, and giving them back can cost more where freed memory goes
//! back to a hypervisor (this machine's VM reports free pages to its host): in the replay
//! benchmark, a warm plain read measured right after a recovery that had freed its buffers
//! ran at a fifth of its usual speed in two rounds of three; with the pool, those rounds were
//! back to the usual speed (the first round after a log is written still is not, for a
//! reason not found yet; BENCHMARKS.md). So buffers up to `MAX_LEN` go back to a
//! small shared pool when dropped, and new ones come from it first. The pool holds at most
//! `MAX_KEPT` buffers (8 MiB) for the life of the process.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use crate::storage::AlignedBuf;

/// Buffers kept at most (a few readers' worth).
const MAX_KEPT: usize = 8;

/// The largest buffer kept: a reader's chunk.
const MAX_LEN: usize = 1 << 20;

static SPARE: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// An aligned buffer that goes back to the pool when dropped. Its bytes are whatever its last
/// user left there: readers track how much of it they filled.
#[derive(Debug)]
pub struct SpareBuf(Option<AlignedBuf>);

impl SpareBuf {
    /// A buffer of `len` bytes (rounded up to `align`, as [`AlignedBuf::zeroed`] does), from
    /// the pool if one of that size and alignment is kept.
    pub fn get(len: usize, align: usize) -> SpareBuf {
        let size = len.div_ceil(align).max(1) * align;
        let kept = {
            let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
            spare.iter().position(|b| b.len() == size && b.align() == align).map(|at| spare.swap_remove(at))
        };
        SpareBuf(Some(kept.unwrap_or_else(|| AlignedBuf::zeroed(size, align))))
    }
}

impl Deref for SpareBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().expect("held until dropped")
    }
}

impl DerefMut for SpareBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for SpareBuf {
    fn drop(&mut self) {
        let Some(buf) = self.0.take().filter(|b| b.len() <= MAX_LEN) else { return };
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < MAX_KEPT {
            spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_handed_out_again_for_the_same_size_only() {
        // A fresh buffer is zeroed, and the allocator may well hand out the same address again:
        // only the marker left in it shows that a buffer came back from the pool.
        let marker: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8 | 1).collect();
        let mut first = SpareBuf::get(5000, 4096);
        assert_eq!(first.len(), 8192);
        first.copy_from_slice(&marker);
        drop(first);
        let other = SpareBuf::get(4096, 4096);
        assert!(other[..] != marker[..4096], "another size never gets it");
        // Other tests share the pool: look for the buffer among a few taken at once.
        let taken: Vec<SpareBuf> = (0..MAX_KEPT + 1).map(|_| SpareBuf::get(8192, 4096)).collect();
        assert!(taken.iter().any(|b| b[..] == marker[..]), "the kept buffer comes back");
        assert!(taken.iter().all(|b| b.len() == 8192 && b.as_ptr() as usize % 4096 == 0));
    }

    #[test]
    fn buffers_larger_than_a_chunk_are_not_kept() {
        let big = SpareBuf::get(MAX_LEN * 2, 4096);
        let at = big.as_ptr() as usize;
        drop(big);
        let again = SpareBuf::get(MAX_LEN * 2, 4096);
        // A fresh allocation may land at the same address; what matters is that the pool holds
        // no buffer of that size.
        drop(again);
        assert!(SPARE.lock().unwrap().iter().all(|b| b.len() <= MAX_LEN), "{at:#x}");
    }
}
