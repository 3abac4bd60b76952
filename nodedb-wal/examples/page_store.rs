//! The double-write buffer under a toy page store: 4 KiB pages that carry their own checksum
//! and version. A page torn in place is put back from the buffer at the next open.

use nodedb_wal::{DoubleWriteBuffer, DwbConfig, FileId, PageCheck};

const PAGE: usize = 4096;
const FILE: FileId = FileId(1);

/// A page: version (8 bytes), CRC32C of the rest (4 bytes), then data.
fn page(version: u64, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; PAGE];
    p[..8].copy_from_slice(&version.to_le_bytes());
    let crc = crc32(&p[12..]);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// The storage engine's own page check, which the buffer asks at recovery.
fn check(_file: FileId, bytes: &[u8]) -> PageCheck {
    let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if bytes.len() == PAGE && stored == crc32(&bytes[12..]) {
        PageCheck::Intact { version: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) }
    } else {
        PageCheck::Torn
    }
}

/// A small bitwise CRC-32C, to keep the example free of extra dependencies.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pages = dir.path().join("pages");
    std::fs::write(&pages, [page(1, 0xA1), page(1, 0xB1)].concat())?;
    let config = DwbConfig::new(dir.path().join("dwb"));
    {
        let dwb = DoubleWriteBuffer::open(config.clone())?;
        dwb.register_file(FILE, &pages, PAGE)?;
        dwb.recover(check)?;
        let (a, b) = (page(2, 0xA2), page(2, 0xB2));
        dwb.write_pages(&[(FILE, 0, &a), (FILE, 1, &b)])?;
        println!("wrote version 2 of both pages through the buffer: {:?}", dwb.stats());
    }
    // A crash tears page 1 in place: its second half never reached the disk.
    let mut bytes = std::fs::read(&pages)?;
    bytes[PAGE + PAGE / 2..].fill(0);
    std::fs::write(&pages, &bytes)?;
    println!("page 1 after the crash: {:?}", check(FILE, &bytes[PAGE..]));

    let dwb = DoubleWriteBuffer::open(config)?;
    dwb.register_file(FILE, &pages, PAGE)?;
    let report = dwb.recover(check)?;
    let bytes = std::fs::read(&pages)?;
    println!("recovery restored {:?}; page 1 is now {:?}", report.pages_restored, check(FILE, &bytes[PAGE..]));
    Ok(())
}
