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
        page.locked = lock(page.pages()).is_ok();
        // SAFETY: the range is the allocation just made, page-aligned and of whole pages.
        let _ = unsafe { rustix::mm::madvise(raw.cast(), layout.size(), rustix::mm::Advice::LinuxDontDump) };
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
        // SAFETY: allocated in `new` with this layout, freed once; no reference outlives `self`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
