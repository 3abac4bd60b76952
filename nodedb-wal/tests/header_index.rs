//! Header indexes beside sealed segments: a headers-only scan reads them instead of the
//! segments and hands out exactly what a scan of the segments would; an index that is damaged,
//! stale or missing is ignored; a payload read through it is still checked against the segment.

use std::path::Path;

use nodedb_wal::storage::{FaultConfig, OpenMode, Storage, StorageFile};
use nodedb_wal::{Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment};

const DIR: &str = "/indexed";

fn config() -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 1 << 20;
    c
}

fn sealed(wal: &SegmentedWal<SimStorage>) -> usize {
    wal.segments().iter().filter(|s| s.sealed).count()
}

/// A log of at least five sealed segments (and an open one) of ~20 KiB records of varied types and scopes.
fn filled(seed: u64) -> (SimStorage, SegmentedWal<SimStorage>) {
    let sim = SimStorage::new(seed, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    let mut i = 0u32;
    while wal.segments().len() < 6 {
        let ty = RecordType::optional(0x100 + (i % 3) as u16);
        let scope = Scope { database: i % 2, tenant: i % 5, vshard: i % 7 };
        let payload = vec![i as u8; 20_000 + (i as usize * 97) % 5_000];
        wal.append(Record::new(ty, &payload).scoped(scope)).unwrap();
        i += 1;
    }
    wal.sync().unwrap();
    (sim, wal)
}

/// Every handle of a headers-only scan, and the bytes the scan read.
fn scan_headers(sim: &SimStorage, wal: &SegmentedWal<SimStorage>) -> (Vec<String>, u64) {
    let before = sim.bytes_read();
    let mut lazy = wal.lazy_reader(wal.segments()[0].first_lsn).unwrap();
    let mut seen = Vec::new();
    while let Some(h) = lazy.next_header().unwrap() {
        seen.push(format!("{:?} {:?} {:?} {} {} {} {}", h.lsn, h.record_type, h.scope, h.flags, h.stored_len, h.segment().0, h.offset()));
    }
    (seen, sim.bytes_read() - before)
}

fn index_names(sim: &SimStorage) -> Vec<String> {
    sim.list(Path::new(DIR)).unwrap().into_iter().filter(|n| segment::parse_index(n).is_some()).collect()
}

fn remove_indexes(sim: &SimStorage) {
    for name in index_names(sim) {
        sim.remove(&Path::new(DIR).join(name)).unwrap();
    }
}

#[test]
fn a_headers_only_scan_through_the_indexes_sees_exactly_what_a_segment_scan_sees() {
    let (sim, wal) = filled(1);
    assert_eq!(index_names(&sim).len(), sealed(&wal), "one index per sealed segment");
    let (indexed, indexed_bytes) = scan_headers(&sim, &wal);
    remove_indexes(&sim);
    let (scanned, scanned_bytes) = scan_headers(&sim, &wal);
    assert_eq!(indexed, scanned);
    assert!(indexed.len() > 200);
    assert!(indexed_bytes * 2 < scanned_bytes, "indexes read {indexed_bytes} bytes; the segments' blocks {scanned_bytes}");
}

#[test]
fn a_damaged_or_stale_index_is_ignored() {
    let (sim, wal) = filled(2);
    let (expected, _) = scan_headers(&sim, &wal);
    let dir = Path::new(DIR);
    let names = index_names(&sim);
    // One index with a flipped byte, one replaced by another segment's, one cut short.
    let flip = dir.join(&names[0]);
    let mut bytes = sim.read_file(&flip).unwrap();
    bytes[100] ^= 0x40;
    sim.write_file(&flip, &bytes);
    let other = sim.read_file(&dir.join(&names[2])).unwrap();
    sim.write_file(&dir.join(&names[1]), &other);
    let cut = dir.join(&names[3]);
    let bytes = sim.read_file(&cut).unwrap();
    sim.write_file(&cut, &bytes[..bytes.len() / 2]);
    let (seen, _) = scan_headers(&sim, &wal);
    assert_eq!(seen, expected);
}

#[test]
fn a_payload_read_through_an_index_is_checked_against_the_segment() {
    let (sim, wal) = filled(3);
    let first = wal.segments()[0].id;
    let path = segment::path(Path::new(DIR), first);
    let mut bytes = sim.read_file(&path).unwrap();
    bytes[4096 + 48 + 10] ^= 1; // a payload byte of the first record
    sim.write_file(&path, &bytes);
    let mut lazy = wal.lazy_reader(Lsn::FIRST).unwrap();
    let handle = lazy.next_header().unwrap().unwrap();
    assert_eq!(handle.lsn, Lsn(1), "the header comes from the index, which is intact");
    let err = lazy.payload().unwrap_err();
    assert!(matches!(err, WalError::Corruption { segment, .. } if segment == first), "{err}");
}

/// A segment cut short under an open log (by hand, or by a restart of its owner cutting a torn
/// tail while a read-only tool reads): the index promises frames the file no longer holds.
#[test]
fn a_payload_past_the_end_of_a_segment_cut_after_it_was_indexed_is_corruption_not_a_panic() {
    for cut in [512, 2048, 4096, 4096 + 30_000] {
        let (sim, wal) = filled(6);
        let victim = wal.segments()[1];
        let path = segment::path(Path::new(DIR), victim.id);
        let bytes = sim.read_file(&path).unwrap();
        sim.write_file(&path, &bytes[..cut]);
        let mut lazy = wal.lazy_reader(victim.first_lsn).unwrap();
        let mut whole = 0;
        let err = loop {
            let handle = lazy.next_header().unwrap().expect("the index still lists every record of the segment");
            assert_eq!(handle.segment(), victim.id, "cut at {cut}: the segment's records cannot all be whole");
            match lazy.payload() {
                Ok(payload) => assert_eq!(payload.len(), handle.stored_len as usize),
                Err(err) => break err,
            }
            whole += 1;
        };
        assert!(matches!(err, WalError::Corruption { segment, .. } if segment == victim.id), "cut at {cut}: {err}");
        assert_eq!(whole, usize::from(cut > 4096 + 25_000), "cut at {cut}: only records wholly before the cut are read");
    }
}

#[test]
fn truncation_removes_indexes_and_opening_removes_orphans() {
    let (sim, wal) = filled(4);
    let before = sealed(&wal);
    assert_eq!(wal.truncate_before(wal.segments()[3].first_lsn).unwrap(), 3);
    assert_eq!(index_names(&sim).len(), before - 3, "the indexes of the segments left");
    // An index whose segment is gone (a crash between the two removals) is removed at open.
    let gone = wal.segments()[0].id.0 - 1;
    let orphan = sim.open(
        &segment::index_path(Path::new(DIR), nodedb_wal::SegmentId(gone)),
        OpenMode { create: true, write: true, direct: false, create_new: false },
    );
    orphan.unwrap().write_at(b"orphan", 0).unwrap();
    drop(wal);
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    assert_eq!(index_names(&sim).len(), before - 3 + 1, "the orphan went; the segment sealed by recovery has one");
    let (seen, _) = scan_headers(&sim, &wal);
    remove_indexes(&sim);
    assert_eq!(seen, scan_headers(&sim, &wal).0);
}

#[test]
fn small_records_get_no_index() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    while wal.segments().len() < 3 {
        wal.append(Record::new(RecordType::optional(0x100), &[7; 100])).unwrap();
    }
    wal.sync().unwrap();
    assert!(index_names(&sim).is_empty(), "an index of 148-byte frames would cost a third of the segment");
}

/// Syncs records into the newest segment until it holds at least one record and has room for
/// `bytes` more, so what follows lands after records of its own segment. How full `filled`
/// leaves the newest segment depends on how far its appends ran ahead of the flusher; a group
/// that rolled the log would start its segment, and a segment the manifest names once its
/// first batch is durable, cut back to no record, is corruption (see `damage.rs`), not a torn
/// tail.
fn make_room_after_records(wal: &SegmentedWal<SimStorage>, bytes: u64) {
    let target = config().segment_bytes_target;
    loop {
        let newest = *wal.segments().last().unwrap();
        if newest.end_lsn > newest.first_lsn && newest.bytes + bytes < target {
            return;
        }
        wal.append(Record::new(RecordType::optional(0x102), &[9; 20_000])).unwrap();
        wal.sync().unwrap();
    }
}

/// A restart seals the segment the log was writing; recovery builds its index as it scans it,
/// cut where recovery cuts the segment: here an atomic group whose last record was torn.
#[test]
fn a_segment_sealed_by_a_restart_gets_an_index_of_exactly_the_records_recovery_kept() {
    for (seed, cut) in [(100, None), (101, Some(10_000usize)), (102, Some(25_000))] {
        let (sim, wal) = filled(seed);
        make_room_after_records(&wal, 120_000);
        let group: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 25_000]).collect();
        let records: Vec<Record<'_>> = group.iter().map(|p| Record::new(RecordType::optional(0x101), p)).collect();
        let lsns = wal.append_group(&records).unwrap();
        wal.sync().unwrap();
        let open = *wal.segments().last().unwrap();
        assert!(open.first_lsn < *lsns.start(), "seed {seed}: records before the group share its segment");
        let end = open.bytes as usize;
        drop(wal);
        let path = segment::path(Path::new(DIR), open.id);
        if let Some(cut) = cut {
            // The group's last frame loses its tail: recovery cuts the whole group.
            let bytes = sim.read_file(&path).unwrap();
            sim.write_file(&path, &bytes[..end - cut]);
        }
        let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
        let last = wal.recovery_info().last_lsn;
        assert_eq!(last, if cut.is_some() { lsns.start().prev().unwrap() } else { *lsns.end() }, "seed {seed}");
        let index = sim.read_file(&segment::index_path(Path::new(DIR), open.id)).expect("the sealed segment has an index");
        let index = nodedb_wal::format::header_index::HeaderIndex::decode(&index).expect("a whole index");
        assert_eq!((index.first_lsn, index.end_lsn()), (open.first_lsn, last.next()), "seed {seed}: exactly the records kept");
        let (indexed, _) = scan_headers(&sim, &wal);
        remove_indexes(&sim);
        let (scanned, _) = scan_headers(&sim, &wal);
        assert_eq!(indexed, scanned, "seed {seed}");
    }
}

// Found by the `header_index` fuzz target, which recomputes the CRC of what it mutates: the
// decoder took nonzero bytes where FORMAT.md says zero (the reserved field, and each entry's
// checksum field), so a decoded index did not re-encode to its file, and LSNs past
// `Lsn::LIMIT`, whose `end_lsn` overflowed.
#[test]
fn an_index_decodes_only_from_its_one_encoding_with_lsns_below_the_limit() {
    use nodedb_wal::format::crc::crc32c;
    use nodedb_wal::format::frame::RecordHeader;
    use nodedb_wal::format::header_index::HeaderIndex;
    let index = |first: u64| {
        let header = RecordHeader {
            lsn: Lsn(first),
            durable_lsn: Lsn(0),
            salt: 7,
            record_type: RecordType::optional(0x100),
            scope: Scope::default(),
            payload_len: 10,
            flags: 0,
        };
        let mut index = HeaderIndex::new(nodedb_wal::SegmentId(1), 7, Lsn(first));
        index.push(4096, &header);
        index.encode()
    };
    let resealed = |mut bytes: Vec<u8>| {
        let at = bytes.len() - 4;
        let crc = crc32c(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    assert!(HeaderIndex::decode(&index(Lsn::LIMIT.0 - 1)).is_some(), "the last LSN there is");
    for (what, at) in [("reserved", 6), ("an entry's checksum field", 32 + 8)] {
        let mut bytes = index(5);
        bytes[at] = 1;
        assert_eq!(HeaderIndex::decode(&resealed(bytes)), None, "{what} not zero");
    }
    for first in [Lsn::LIMIT.0, u64::MAX] {
        assert_eq!(HeaderIndex::decode(&index(first)), None, "an LSN from {first}");
    }
}

// Found by the `readers` fuzz target, in a build with overflow checks: a read-only look (which
// reads in 4 KiB units) at a log of 512-byte blocks, whose sealed segment was cut inside its
// first block after the look opened. The payload of the first record, at 512, lies past the
// cut, and the read of it looked a unit back from 512: the subtraction overflowed (a panic
// with overflow checks; otherwise a read at an offset near 2^64).
#[test]
fn a_payload_past_a_cut_inside_the_first_block_is_corruption_not_an_overflow() {
    let sim = SimStorage::new(7, FaultConfig::default());
    let mut c = config();
    (c.alignment, c.direct_io, c.segment_bytes_target) = (512, false, 64 * 1024);
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    while wal.segments().len() < 3 {
        wal.append(Record::new(RecordType::optional(0x100), &[3; 9000])).unwrap();
    }
    wal.sync().unwrap();
    let victim = wal.segments()[0];
    assert!(!index_names(&sim).is_empty(), "the sealed segments have header indexes");
    let look = nodedb_wal::ReadOnlyWal::open_with(sim.clone(), DIR, None).unwrap();
    let path = segment::path(Path::new(DIR), victim.id);
    let bytes = sim.read_file(&path).unwrap();
    sim.write_file(&path, &bytes[..200]);
    let mut lazy = look.lazy_reader(Lsn::FIRST).unwrap();
    let handle = lazy.next_header().unwrap().expect("from the index");
    assert_eq!(handle.offset(), 512);
    let err = lazy.payload().unwrap_err();
    assert!(matches!(err, WalError::Corruption { segment, .. } if segment == victim.id), "{err}");
}
