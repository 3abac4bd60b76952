//! What the bytes of a torn tail are, as `verify` and `inspect` report them. Recovery counts
//! everything past the last intact record as discarded, and in the active segment most of that
//! is usually the zeros the log writes ahead of its writer (`zero_fill_bytes`, 1 MiB by
//! default): called "bytes never acknowledged" as a whole, a megabyte of them read as a
//! megabyte of lost writes. So the tail is read back and its trailing zeros told apart from the
//! debris before them.

use std::os::unix::fs::FileExt;
use std::path::Path;

use nodedb_wal::recovery::TornTail;

/// The finest block a log writes in: space never written is zero in whole sectors of it, so
/// zeros are counted from a sector boundary (a zero byte inside a written sector is data).
const SECTOR: u64 = 512;

/// Bytes read from the segment at a time.
const CHUNK: usize = 1 << 20;

/// The discarded bytes of `torn` in words: the debris (the existing wording, "never
/// acknowledged") and the zeros after it, read from the segment file in `dir`. Where the file
/// cannot be read (it went away beside a live writer, say) the count alone.
pub(super) fn describe(dir: &Path, torn: &TornTail) -> String {
    match debris_len(&nodedb_wal::segment::path(dir, torn.segment), torn.offset, torn.bytes_discarded) {
        Ok(debris) => words(debris, torn.bytes_discarded - debris),
        Err(_) => format!("{} bytes", torn.bytes_discarded),
    }
}

/// How the tail reads, from the length of its debris and of the zeros after it.
fn words(debris: u64, zeros: u64) -> String {
    const RESERVED: &str = "the log reserved ahead of its writer, never written with records";
    match (debris, zeros) {
        (debris, 0) => format!("{debris} bytes never acknowledged"),
        (0, zeros) => format!("{zeros} bytes of zeros: space {RESERVED}"),
        (debris, zeros) => format!("{debris} bytes never acknowledged, then {zeros} bytes of zeros: space {RESERVED}"),
    }
}

/// Of the `len` bytes at `start` in the file at `path`, how many come before the zeros that end
/// them: up to the sector boundary after the last byte that is not zero. Bytes past `len` (a
/// live writer's since the look) are not read.
fn debris_len(path: &Path, start: u64, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking and a regular file only, as the log's own opens: a segment swapped for a
    // FIFO since the look must not hang the report.
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let end = start + len;
    let mut buf = vec![0u8; CHUNK];
    let (mut at, mut last_nonzero) = (start, None);
    while at < end {
        let want = (end - at).min(CHUNK as u64) as usize;
        let got = file.read_at(&mut buf[..want], at)?;
        if got == 0 {
            break; // the file was cut since the look: what is gone is not debris
        }
        if let Some(i) = buf[..got].iter().rposition(|&b| b != 0) {
            last_nonzero = Some(at + i as u64);
        }
        at += got as u64;
    }
    Ok(last_nonzero.map_or(0, |p| (p + 1).next_multiple_of(SECTOR).min(end) - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debris_of(bytes: &[u8], start: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, bytes).unwrap();
        debris_len(&path, start, bytes.len() as u64 - start).unwrap()
    }

    #[test]
    fn trailing_zero_sectors_are_not_debris_and_zeros_inside_a_sector_are() {
        let mut bytes = vec![0u8; 8192];
        assert_eq!(debris_of(&bytes, 4096), 0, "all zeros");
        bytes[4096 + 10] = 1;
        assert_eq!(debris_of(&bytes, 4096), 512, "up to the end of the sector holding it");
        bytes[4096 + 2000] = 1;
        assert_eq!(debris_of(&bytes, 4096), 2048, "zeros between debris are debris");
        bytes[8191] = 1;
        assert_eq!(debris_of(&bytes, 4100), 4092, "to the end, from an offset inside a sector");
    }

    #[test]
    fn a_fifo_in_place_of_the_segment_is_no_tail_to_read_and_no_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("segment");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        assert!(debris_len(&fifo, 0, 4096).is_err());
    }

    #[test]
    fn a_tail_reads_as_debris_then_reserved_zeros() {
        assert_eq!(words(4096, 0), "4096 bytes never acknowledged");
        assert!(words(0, 8192).starts_with("8192 bytes of zeros: space the log reserved ahead of its writer"));
        assert!(words(4096, 8192).starts_with("4096 bytes never acknowledged, then 8192 bytes of zeros"));
    }
}
