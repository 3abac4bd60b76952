//! Heap buffers aligned for O_DIRECT.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-initialised byte buffer whose address and length are multiples of `align`.
///
/// It dereferences to `[u8]`, so it goes wherever a byte slice does, O_DIRECT writes included.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::AlignedBuf;
///
/// let mut buf = AlignedBuf::zeroed(5000, 4096);
/// assert_eq!((buf.len(), buf.align()), (8192, 4096), "rounded up to whole blocks");
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// assert!(buf.iter().all(|&b| b == 0));
/// buf[..5].copy_from_slice(b"block");
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (rounded up to `align`) aligned to `align`, a power of two.
    /// Panics if `align` is not a power of two.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::AlignedBuf;
    ///
    /// assert_eq!(AlignedBuf::zeroed(0, 512).len(), 512, "never empty: at least one block");
    /// assert_eq!(AlignedBuf::zeroed(4096, 4096).len(), 4096);
    /// ```
    #[must_use]
    pub fn zeroed(len: usize, align: usize) -> AlignedBuf {
        assert!(align.is_power_of_two(), "alignment {align} is not a power of two");
        // Checked in release builds too: a wrapped size would allocate less than `len`.
        let size = len.div_ceil(align).max(1).checked_mul(align).expect("buffer size overflows");
        let layout = Layout::from_size_align(size, align).expect("buffer size overflows");
        // SAFETY: the layout has a non-zero size (at least one `align` unit).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, layout }
    }

    /// The buffer's alignment. See [`AlignedBuf`] for an example.
    #[must_use]
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// Raw pointer to the first byte, for the batch buffer's disjoint regions.
    pub(super) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.layout.size()).field("align", &self.layout.align()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "overflows")]
    fn a_size_that_would_wrap_panics_instead_of_allocating_less() {
        let _ = AlignedBuf::zeroed(usize::MAX, 4096);
    }

    #[test]
    fn buffer_is_aligned_zeroed_and_rounded_up() {
        let b = AlignedBuf::zeroed(5000, 4096);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 8192);
        assert!(b.iter().all(|&x| x == 0));
    }
}
