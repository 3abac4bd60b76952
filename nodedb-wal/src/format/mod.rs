//! Pure codecs for every on-disk structure. No I/O happens here: each codec encodes into and
//! decodes from byte slices, so it can be fuzzed and tested without a disk.
//!
//! All integers are little-endian. The byte tables live in `docs/FORMAT.md`.

pub mod crc;
pub mod dwb;
pub mod frame;
pub mod header_index;
pub mod layout;
pub mod manifest;
pub mod meta;
pub mod payload;
pub mod preamble;

/// Reads a little-endian integer at a fixed offset of a slice the caller has length-checked.
macro_rules! read_le {
    ($ty:ty, $bytes:expr, $at:expr) => {{
        const N: usize = std::mem::size_of::<$ty>();
        let mut raw = [0u8; N];
        raw.copy_from_slice(&$bytes[$at..$at + N]);
        <$ty>::from_le_bytes(raw)
    }};
}
pub(crate) use read_le;
