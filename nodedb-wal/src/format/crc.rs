//! The one CRC32C (Castagnoli) every on-disk structure is checked with.
//!
//! Two implementations, chosen per CPU at run time; both compute the same function.
//! - Where the CPU multiplies carry-less 512 bits at a time (AVX-512 with VPCLMULQDQ), the
//!   `crc-fast` crate's folding: on this project's Zen 4 machine it checked 1 KiB frames in
//!   43 ns against 63 and 4 KiB in 96 ns against 192 (`cargo bench --bench encode`).
//! - Elsewhere, the `crc32c` crate's loop of `crc32` instructions (or its table): an earlier
//!   machine, its CPU not recorded, measured `crc-fast` slower from ~300 bytes on
//!   (BENCHMARKS.md). Drawing the line at the wide multiplies is an assumption.

/// The CRC32C of `bytes` (initial value and final xor `0xFFFF_FFFF`, reflected).
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    if wide_clmul() { folded(bytes) } else { instruction_loop(bytes) }
}

/// The CRC32C of `a` followed by `bytes`, given `crc` = the CRC32C of `a`.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The CRC32C of `b`, given `whole` = the CRC32C of `a` followed by `b`, `prefix` = the
/// CRC32C of `a`, and `b_len`. Costs a few hundred operations whatever the lengths: a scan
/// that checks frames at every offset takes each frame's checksum from running ones this way,
/// instead of reading the frame again.
#[must_use]
pub fn crc32c_of_suffix(whole: u32, prefix: u32, b_len: u64) -> u32 {
    // crc(a ++ b) = crc(a) · x^(8·|b|) + crc(b) in GF(2)[x] mod the polynomial (the initial
    // value and the final xor cancel), so crc(b) = crc(a ++ b) + crc(a) · x^(8·|b|).
    whole ^ mul_mod(prefix, x_pow_bytes(b_len))
}

/// The CRC32C polynomial, reflected: bit 31 is the coefficient of x^0.
const POLY: u32 = 0x82F6_3B78;

/// `a · b` mod the polynomial, both reflected (bit 31 is x^0).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// `X_POW_TWO_POW[k]` = x^(2^k) mod the polynomial, reflected.
const X_POW_TWO_POW: [u32; 64] = {
    let mut table = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        table[k] = p;
        p = mul_mod(p, p);
        k += 1;
    }
    table
};

/// x^(8·`bytes`) mod the polynomial, reflected: the shift over `bytes` bytes.
fn x_pow_bytes(bytes: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut n = bytes;
    let mut k = 3; // 8 = 2^3 bits a byte
    while n != 0 && k < 64 {
        if n & 1 != 0 {
            p = mul_mod(X_POW_TWO_POW[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "chosen only on x86-64; tested everywhere"))]
fn folded(bytes: &[u8]) -> u32 {
    // CRC-32/ISCSI is CRC32C; crc-fast returns every width as a u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

#[inline]
fn instruction_loop(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Whether the CPU has 512-bit carry-less multiplies (std caches the answer).
#[inline]
fn wide_clmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("vpclmulqdq") && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_implementations_give_the_published_check_value() {
        // The CRC-32C check value: the checksum of the ASCII digits "123456789".
        for crc in [crc32c, folded, instruction_loop] {
            assert_eq!(crc(b"123456789"), 0xE306_9283);
        }
    }

    #[test]
    fn a_suffix_checksum_follows_from_the_whole_and_the_prefix_at_every_split() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for split in (0..300).chain([511, 512, 513, 4095, 4999, 5000]) {
            for end in [split, split + 1, split + 48, 5000].into_iter().filter(|&e| e >= split && e <= 5000) {
                let (a, b) = (&bytes[..split], &bytes[split..end]);
                let whole = crc32c_append(crc32c(a), b);
                assert_eq!(whole, crc32c(&bytes[..end]), "append at {split}");
                assert_eq!(crc32c_of_suffix(whole, crc32c(a), b.len() as u64), crc32c(b), "split {split} end {end}");
            }
        }
    }

    #[test]
    fn both_implementations_agree_at_every_length_and_alignment() {
        let bytes: Vec<u8> = (0..9000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..16 {
            for len in (0..2100).chain([4095, 4096, 4097, 8191, 8192]) {
                let slice = &bytes[start..start + len];
                assert_eq!(folded(slice), instruction_loop(slice), "start {start} len {len}");
            }
        }
    }
}
