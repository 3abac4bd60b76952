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
