//! Keeping secrets out of swap.

#![allow(unsafe_code)]

use std::io;

/// Locks the pages holding `buf` into RAM (best effort for callers: they log a failure).
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::memlock;
///
/// let secret = vec![0x5Au8; 32];
/// match memlock::lock(&secret) {
///     Ok(()) => memlock::unlock(&secret)?,
///     // RLIMIT_MEMLOCK may be too small (or zero) for an unprivileged process.
///     Err(err) => eprintln!("cannot lock: {err}"),
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn lock(buf: &[u8]) -> io::Result<()> {
    // SAFETY: mlock only pins the pages of a live allocation; it neither reads nor writes them,
    // and `buf` is valid for its length.
    unsafe { rustix::mm::mlock(buf.as_ptr().cast_mut().cast(), buf.len()) }?;
    Ok(())
}

/// Undoes [`lock`], whose example shows it.
pub fn unlock(buf: &[u8]) -> io::Result<()> {
    // SAFETY: as in `lock`; munlock only unpins.
    unsafe { rustix::mm::munlock(buf.as_ptr().cast_mut().cast(), buf.len()) }?;
    Ok(())
}

/// Whether secrets' pages are locked and kept out of core dumps. Miri runs neither `mlock` nor
/// `madvise`; both change only how the kernel treats the pages, never what they hold, so under
/// Miri secrets live on plain pages and Miri still checks how their memory is made, written,
/// zeroed and freed (docs/TESTING.md, "Miri and the sanitizers").
const KERNEL_TREATMENT: bool = !cfg!(miri);

/// A page of its own for a secret: a page-aligned allocation of whole pages, locked into RAM
/// where the limit allows, left out of core dumps, zeroed and unlocked on drop.
///
/// Locks count per page, not per allocation: `munlock` of one small heap allocation unlocks
/// every other secret sharing its page. A secret on pages of its own is unlocked only with
/// itself.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::memlock::SecretPage;
///
/// let mut page = SecretPage::new(32);
/// page.bytes_mut().copy_from_slice(&[7u8; 32]);
/// assert_eq!(page.bytes(), &[7u8; 32]);
/// let other = SecretPage::new(32);
/// assert_ne!(page.bytes().as_ptr() as usize / 4096, other.bytes().as_ptr() as usize / 4096, "a page each");
/// ```
#[derive(Debug)]
pub struct SecretPage {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    len: usize,
    locked: bool,
}

// SAFETY: the allocation is owned by this value alone; access follows Rust's borrow rules
// through `bytes` and `bytes_mut`.
unsafe impl Send for SecretPage {}
// SAFETY: as for `Send`; shared references only read.
unsafe impl Sync for SecretPage {}

impl SecretPage {
    /// A zeroed secret of `len` bytes, on whole pages of its own. Fails only as `Box::new`
    /// does, when memory is exhausted.
    #[must_use]
    pub fn new(len: usize) -> SecretPage {
        let page = rustix::param::page_size();
        let size = len.max(1).div_ceil(page).checked_mul(page).expect("secret size overflows");
        let layout = std::alloc::Layout::from_size_align(size, page).expect("a page size is a power of two");
        // SAFETY: the layout's size is not zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        let mut page = SecretPage { ptr, layout, len, locked: false };
        // Locking and advice only change how the kernel treats the pages; a failure leaves the
        // secret usable, only less protected.
        if KERNEL_TREATMENT {
            page.locked = lock(page.pages()).is_ok();
            // SAFETY: the range is the allocation just made, page-aligned and of whole pages.
            let _ = unsafe { rustix::mm::madvise(raw.cast(), layout.size(), rustix::mm::Advice::LinuxDontDump) };
        }
        page
    }

    /// The whole pages the secret lives on.
    fn pages(&self) -> &[u8] {
        // SAFETY: the allocation `new` made with this layout, zero-initialised, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// Whether the pages are locked into RAM (`RLIMIT_MEMLOCK` allowed it).
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The secret's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of a live allocation this value owns, zero-initialised at first.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The secret's bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SecretPage {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.bytes_mut());
        if self.locked {
            // Only this value's pages: no other secret is unlocked.
            let _ = unlock(self.pages());
        }
        // The pages go back to the heap as they came, so that the kernel merges them with their
        // neighbours again: left out of dumps, each freed secret's pages stayed a mapping of
        // their own, and a process that makes secrets for months (a cipher per segment per
        // reader) ran towards `vm.max_map_count`, past which no memory can be mapped.
        if KERNEL_TREATMENT {
            // SAFETY: advice on the allocation this value owns; it changes only what a core dump
            // holds, never the contents.
            let _ = unsafe { rustix::mm::madvise(self.ptr.as_ptr().cast(), self.layout.size(), rustix::mm::Advice::LinuxDoDump) };
        }
        // SAFETY: allocated in `new` with this layout, freed once; no reference outlives `self`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A value on pages of its own, as a [`SecretPage`] holds bytes: for secrets that are not bytes,
/// such as a cipher's expanded key schedule. Dropped in place, then its bytes are zeroed, its
/// pages unlocked and freed.
///
/// The value passes through the stack on its way in, as any Rust value made by a constructor
/// does; only its home is protected.
///
/// # Examples
///
/// ```
/// use nodedb_wal::storage::memlock::SecretBox;
///
/// let schedule = SecretBox::new([0x42u32; 60]);
/// assert_eq!(schedule[59], 0x42);
/// assert_eq!(&*schedule as *const _ as usize % 4096, 0, "at the start of a page of its own");
/// ```
pub struct SecretBox<T> {
    value: std::ptr::NonNull<T>,
    page: SecretPage,
    _owns: std::marker::PhantomData<T>,
}

// SAFETY: the box owns its value, as `Box<T>` does.
unsafe impl<T: Send> Send for SecretBox<T> {}
// SAFETY: shared references hand out only `&T`, as `Box<T>` does.
unsafe impl<T: Sync> Sync for SecretBox<T> {}

impl<T> SecretBox<T> {
    /// Moves `value` onto pages of its own.
    ///
    /// # Panics
    ///
    /// If `T` must be aligned more strictly than a page.
    pub fn new(value: T) -> SecretBox<T> {
        assert!(std::mem::align_of::<T>() <= rustix::param::page_size(), "aligned beyond a page");
        let page = SecretPage::new(std::mem::size_of::<T>());
        let ptr = page.ptr.cast::<T>();
        // SAFETY: the page is a live, zeroed allocation of at least `size_of::<T>()` bytes, aligned
        // to a page and so to `T`, owned by `page` and holding nothing else.
        unsafe { ptr.as_ptr().write(value) };
        SecretBox { value: ptr, page, _owns: std::marker::PhantomData }
    }

    /// Whether the pages are locked into RAM (`RLIMIT_MEMLOCK` allowed it).
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.page.is_locked()
    }
}

impl<T> std::ops::Deref for SecretBox<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: `new` wrote a `T` there; it lives until `drop` and is only lent out shared here.
        unsafe { self.value.as_ref() }
    }
}

impl<T> Drop for SecretBox<T> {
    fn drop(&mut self) {
        let at = self.value.as_ptr();
        // SAFETY: the value `new` wrote, dropped once; nothing refers to it past this point. Then
        // its bytes (padding included) are written, not read, as zeros, through the raw pointer.
        unsafe {
            std::ptr::drop_in_place(at);
            zeroize::zeroize_flat_type(at.cast::<std::mem::MaybeUninit<T>>());
        }
        // `page` then zeroes, unlocks and frees the pages.
    }
}

impl<T> std::fmt::Debug for SecretBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").field("locked", &self.is_locked()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counted(Arc<AtomicUsize>, [u8; 100]);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_boxed_secret_is_dropped_once_in_place_and_lives_on_a_page_of_its_own() {
        let drops = Arc::new(AtomicUsize::new(0));
        let boxed = SecretBox::new(Counted(Arc::clone(&drops), [9; 100]));
        let other = SecretBox::new(Counted(Arc::clone(&drops), [1; 100]));
        let page = rustix::param::page_size();
        assert_eq!(&*boxed as *const Counted as usize % page, 0);
        assert_ne!(&*boxed as *const Counted as usize / page, &*other as *const Counted as usize / page);
        assert_eq!(boxed.1, [9; 100]);
        drop(boxed);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(other.1, [1; 100], "unlocking one box leaves the other's value alone");
        drop(other);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    // Miri runs no `getrlimit` or `mlock` (see `KERNEL_TREATMENT`); every other build runs this.
    #[cfg_attr(miri, ignore)]
    fn a_boxed_secret_is_locked_where_the_limit_allows() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        let boxed = SecretBox::new([7u64; 64]);
        if limit.current.is_none_or(|bytes| bytes >= 1 << 20) {
            assert!(boxed.is_locked(), "RLIMIT_MEMLOCK {:?} allows a page", limit.current);
        }
    }
}
