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
