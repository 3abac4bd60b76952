//! Buffers aligned for O_DIRECT: from the heap, or mappings of their own when large.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::c_void;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// From this size up, a buffer is a mapping of its own, in transparent huge pages where the
/// kernel gives them. From the heap, a large buffer cost a page fault per 4 KiB page and a
/// `memset` over pages the kernel had just zeroed: a 16 MiB record's one-off buffer took
/// ~9 ms of CPU (58% of the 16 ms the record cost, `perf` in BENCHMARKS.md).
const MAPPED_FROM: usize = 2 << 20;

/// The bytes a mapped buffer of `layout` maps: its size in whole pages.
fn mapped_len(layout: Layout) -> usize {
    layout.size().next_multiple_of(rustix::param::page_size())
}

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
    /// A mapping of its own (see [`MAPPED_FROM`]), not a heap allocation.
    mapped: bool,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access hands out `&[u8]` (by `Deref`), and mutation needs `&mut self`, but
// for `as_mut_ptr`: private to `storage`, its one user (`BatchBuf`'s regions) writes only
// bytes its cursor gave to one region, and never derefs the whole buffer from `&self` while a
// region lives (the whole buffer needs `Arc::get_mut`), so no `&[u8]` overlaps those writes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The bytes [`Self::zeroed`] allocates for `len` bytes aligned to `align` (at least one
    /// `align` unit, a whole number of them); `None` where that overflows. The commit path
    /// budgets one-off buffers by it before it makes them.
    #[must_use]
    pub fn size_for(len: usize, align: usize) -> Option<usize> {
        len.div_ceil(align).max(1).checked_mul(align)
    }

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
        AlignedBuf::try_zeroed(len, align).unwrap_or_else(|| std::alloc::handle_alloc_error(AlignedBuf::layout(len, align)))
    }

    /// [`Self::zeroed`], or `None` where the system has no memory for it (a size far beyond
    /// what the machine holds, say), instead of ending the process: for a buffer whose size
    /// the caller chose, which the log can refuse.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::storage::AlignedBuf;
    ///
    /// assert_eq!(AlignedBuf::try_zeroed(5000, 4096).map(|b| b.len()), Some(8192));
    /// assert!(AlignedBuf::try_zeroed(isize::MAX as usize / 2, 4096).is_none(), "no machine holds that");
    /// ```
    #[must_use]
    pub fn try_zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = AlignedBuf::layout(len, align);
        // Miri runs no `madvise` and cannot trim a mapping: there the heap serves every size, as
        // it does wherever a mapping fails.
        if layout.size() >= MAPPED_FROM
            && !cfg!(miri)
            && let Some(buf) = AlignedBuf::mapped(layout)
        {
            return Some(buf);
        }
        // SAFETY: the layout has a non-zero size (at least one `align` unit).
        let raw = unsafe { alloc_zeroed(layout) };
        Some(AlignedBuf { ptr: NonNull::new(raw)?, layout, mapped: false })
    }

    /// The layout of a buffer of `len` bytes aligned to `align`. Panics if `align` is not a
    /// power of two, or the size overflows (checked in release builds too: a wrapped size
    /// would allocate less than `len`).
    fn layout(len: usize, align: usize) -> Layout {
        assert!(align.is_power_of_two(), "alignment {align} is not a power of two");
        let size = AlignedBuf::size_for(len, align).expect("buffer size overflows");
        Layout::from_size_align(size, align).expect("buffer size overflows")
    }

    /// A private anonymous mapping of `layout.size()` bytes aligned to `layout.align()`, which
    /// the kernel fills with zeros as they are first touched; `None` if it cannot be made (the
    /// heap then serves).
    fn mapped(layout: Layout) -> Option<AlignedBuf> {
        let (len, align) = (mapped_len(layout), layout.align());
        // Where `align` is coarser than a page, over-asked by `align` and trimmed to an aligned
        // start: the kernel aligns a mapping to its page size only.
        let slack = if align > rustix::param::page_size() { align } else { 0 };
        let total = len.checked_add(slack)?;
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new mapping at an address the kernel chooses: it overlaps nothing else.
        let raw = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), total, prot, MapFlags::PRIVATE) }.ok()?;
        let head = (raw as usize).next_multiple_of(align) - raw as usize;
        let tail = total - head - len;
        // SAFETY: the ranges before the aligned start and after its `len` bytes lie inside the
        // mapping just made, and page aligned (`raw` and `len` are multiples of the page size,
        // and so is `align` where `slack` is not 0); nothing refers to them.
        unsafe {
            let start = raw.cast::<u8>();
            for (at, n) in [(start, head), (start.add(head + len), tail)] {
                if n > 0 {
                    let _ = rustix::mm::munmap(at.cast::<c_void>(), n);
                }
            }
        }
        // SAFETY: `head` bytes into the mapping, so in it and not null.
        let ptr = NonNull::new(unsafe { raw.cast::<u8>().add(head) })?;
        // Advice only: where the kernel gives no huge pages, the buffer has small ones.
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping just made, which nothing else uses yet.
        let _ = unsafe { rustix::mm::madvise(ptr.as_ptr().cast::<c_void>(), len, rustix::mm::Advice::LinuxHugepage) };
        Some(AlignedBuf { ptr, layout, mapped: true })
    }

    /// The buffer's alignment. See [`AlignedBuf`] for an example.
    #[must_use]
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// The buffer's length in bytes, read from its layout rather than through a slice of the
    /// whole buffer (as `[u8]::len` would, by `Deref`): a batch buffer's length is asked while
    /// appenders write into its regions, and a shared slice over bytes another thread is
    /// writing is a data race (Miri found it, docs/TESTING.md).
    #[must_use]
    #[expect(clippy::len_without_is_empty, reason = "never empty: `zeroed` makes at least one block")]
    pub fn len(&self) -> usize {
        self.layout.size()
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
        if self.mapped {
            // SAFETY: ptr is the start of a mapping of exactly `mapped_len` bytes made by
            // `mapped`, unmapped once; no slice of it outlives `self`.
            if let Err(err) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), mapped_len(self.layout)) } {
                tracing::warn!(%err, "munmap of a buffer failed; its memory stays mapped");
            }
            return;
        }
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
    // Miri runs no `madvise` and cannot trim a mapping with `munmap`; every other build runs this.
    #[cfg_attr(miri, ignore)]
    fn a_large_buffer_is_mapped_aligned_and_zeroed_like_a_small_one() {
        for align in [512, 4096, 1 << 20] {
            let mut b = AlignedBuf::zeroed(MAPPED_FROM + 1, align);
            assert!(b.mapped, "from the threshold up");
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert_eq!(b.len(), (MAPPED_FROM + 1).next_multiple_of(align));
            assert!(b.iter().all(|&x| x == 0));
            b.fill(7);
            assert!(b.iter().all(|&x| x == 7), "writable to its last byte");
        }
        assert!(!AlignedBuf::zeroed(MAPPED_FROM - 4096, 4096).mapped);
    }

    #[test]
    fn buffer_is_aligned_zeroed_and_rounded_up() {
        let b = AlignedBuf::zeroed(5000, 4096);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 8192);
        assert!(b.iter().all(|&x| x == 0));
    }
}
