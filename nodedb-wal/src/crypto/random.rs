//! Random bytes from the kernel, for what must never repeat: segment salts, nonce epochs,
//! key-derivation salts, keys, the double-write buffer's epochs.

/// Fills `buf` from the kernel's CSPRNG: `getrandom(2)`, or `/dev/urandom` where a sandbox
/// refuses the system call (as the standard library does). Panics only if neither answers:
/// salts and nonce epochs must not repeat, and nothing else would keep them apart.
pub(crate) fn fill_random(buf: &mut [u8]) {
    #[cfg(test)]
    if tests::NO_RANDOMNESS.get() {
        panic!("no randomness (a test's)");
    }
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                if let Err(fallback) = fill_from_urandom(&mut buf[filled..]) {
                    panic!("no randomness: getrandom failed ({e}), and /dev/urandom too ({fallback})");
                }
                return;
            }
        }
    }
}

/// [`fill_random`]'s way round a refused `getrandom(2)`.
fn fill_from_urandom(buf: &mut [u8]) -> std::io::Result<()> {
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, buf)
}

/// A random number (a segment's salt, a buffer's epoch).
pub(crate) fn random_u32() -> u32 {
    let mut raw = [0u8; 4];
    fill_random(&mut raw);
    u32::from_le_bytes(raw)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Makes [`fill_random`] panic on this thread, as it does where the system has no
        /// randomness to give.
        pub(crate) static NO_RANDOMNESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn the_fallback_for_a_refused_getrandom_reads_random_bytes() {
        // 64 bytes still all zero after a fill: odds of 2^-512.
        let mut buf = [0u8; 64];
        fill_from_urandom(&mut buf).unwrap();
        assert_ne!(buf, [0u8; 64]);
    }
}
