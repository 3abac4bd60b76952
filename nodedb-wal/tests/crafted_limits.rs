//! Values on disk that pass their checksum but sit at the limit the code assumes: someone who
//! can write the log's files can recompute every CRC32C, so a checksum says nothing about
//! intent. Each test crafts one such value with a valid checksum and checks that the log meets
//! it with a typed error or as the format says, never a panic, an abort or a huge allocation.

mod common;

use std::path::Path;

use common::{Disk, config, seg};
use nodedb_wal::format::frame::{HEADER_LEN, decode_frame, encode_frame};
use nodedb_wal::format::header_index::HeaderIndex;
use nodedb_wal::format::manifest::{FLOOR_FILE, MANIFEST_FILE, MANIFEST_LEN, ManifestSlot, SlotKind};
use nodedb_wal::format::meta::SegmentHeaderPayload;
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    CorruptionKind, Lsn, Record, RecordHeader, RecordType, SegmentId, SegmentedWal, SimStorage, WalError, WalWriter, WalWriterConfig,
};

const TY: RecordType = RecordType::optional(0x400);

/// A log of `records` records of 1 KiB, over several small segments, closed.
fn written_log<D: Disk>(disk: &D, dir: &Path, records: u64) {
    let wal = SegmentedWal::open_with(disk.clone(), config(dir)).unwrap();
    for i in 0..records {
        wal.append_durable(Record::new(TY, &[i as u8; 1024])).unwrap();
    }
    wal.close().unwrap();
}

/// A two-slot file of `kind` whose only slot has the highest sequence a reader takes (2^63 - 1)
/// and names `id`: intact as the format has it, but with no sequence after it that reads.
fn last_sequence_file(kind: SlotKind, id: SegmentId) -> Vec<u8> {
    let slot = ManifestSlot { sequence: (1 << 63) - 1, newest: id };
    let mut bytes = vec![0u8; MANIFEST_LEN];
    let at = ManifestSlot::offset_of(slot.sequence) as usize;
    let encoded = slot.encode_as(kind);
    bytes[at..at + encoded.len()].copy_from_slice(&encoded);
    bytes
}

fn current(bytes: &[u8], kind: SlotKind) -> ManifestSlot {
    ManifestSlot::current_as(bytes, kind).expect("an intact slot")
}

// A FLOOR whose slot carries the last sequence a reader takes: the next truncation wrote its
// floor as sequence 2^63, which reads as a damaged slot, and removed the segments below it;
// the next open then took the older slot for current and refused the log (FloorSlotDamaged).
#[test]
fn a_floor_at_the_last_sequence_is_still_advanced_readably_by_a_truncation() {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/floor");
    written_log(&sim, dir, 60);
    sim.write(&dir.join(FLOOR_FILE), &last_sequence_file(SlotKind::Floor, SegmentId(1)));

    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let oldest_kept = wal.segments()[2];
    assert!(wal.truncate_before(oldest_kept.first_lsn).unwrap() >= 2);
    wal.close().unwrap();
    assert_eq!(current(&sim.read(&dir.join(FLOOR_FILE)), SlotKind::Floor).newest, oldest_kept.id);

    let wal = SegmentedWal::open_with(sim, config(dir)).expect("a truncated log opens");
    assert_eq!(wal.oldest_lsn(), oldest_kept.first_lsn);
    assert_eq!(wal.read_from(oldest_kept.first_lsn).unwrap().count() as u64, 60 - oldest_kept.first_lsn.0 + 1);
}

// The same for MANIFEST: every later update was written as sequence 2^63, which no reader
// takes, so the manifest stayed on the segment it named and stopped vouching for newer ones.
#[test]
fn a_manifest_at_the_last_sequence_still_follows_the_newest_segment() {
    let sim = SimStorage::new(2, FaultConfig::default());
    let dir = Path::new("/manifest");
    written_log(&sim, dir, 10);
    let newest = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap().segments().last().unwrap().id;
    sim.write(&dir.join(MANIFEST_FILE), &last_sequence_file(SlotKind::Manifest, newest));

    written_log(&sim, dir, 60);
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let now_newest = wal.segments().last().unwrap().id;
    drop(wal);
    assert!(now_newest > newest);
    assert_eq!(current(&sim.read(&dir.join(MANIFEST_FILE)), SlotKind::Manifest).newest, now_newest);
}

// A header index is read whole into memory before it is checked: a file far longer than any
// index of its segment (sparse, so it costs the disk nothing) asked for a terabyte.
#[test]
fn a_header_index_far_longer_than_its_segment_allows_is_not_read_into_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = nodedb_wal::FsStorage::default();
    written_log(&disk, dir, 60);
    let index = nodedb_wal::segment::index_path(dir, SegmentId(1));
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&index).unwrap();
    file.set_len(1 << 40).unwrap();
    drop(file);

    let wal = SegmentedWal::open_with(disk, config(dir)).unwrap();
    let mut reader = wal.lazy_reader(Lsn::FIRST).unwrap();
    let mut count = 0;
    while let Some(handle) = reader.next_header().unwrap() {
        count += 1;
        assert_eq!(handle.lsn, Lsn(count));
    }
    assert_eq!(count, 60);
}

/// Rewrites the header index of segment `id` with `change` applied to each entry, under a
/// recomputed checksum.
fn recrafted_index<D: Disk>(disk: &D, dir: &Path, id: SegmentId, change: impl Fn(usize, &mut RecordHeader)) {
    let path = nodedb_wal::segment::index_path(dir, id);
    let index = HeaderIndex::decode(&disk.read(&path)).expect("segment 2 has an index");
    let mut crafted = HeaderIndex::new(index.segment, index.salt, index.first_lsn);
    for (i, (offset, header)) in index.entries().iter().enumerate() {
        let mut header = *header;
        change(i, &mut header);
        crafted.push(*offset, &header);
    }
    disk.write(&path, &crafted.encode());
}

// A header index is checked for its length, checksum, salt and dense LSNs, and then trusted
// for headers; but one whose entry carried a meta type (an end frame's, here) was taken, and
// the lazy reader handed that entry out as a data record, which no reader is ever handed.
#[test]
fn a_header_index_entry_of_a_meta_type_is_no_record_and_the_index_is_passed_over() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/index");
    written_log(&sim, dir, 40);
    recrafted_index(&sim, dir, SegmentId(2), |i, h| {
        if i == 2 {
            h.record_type = RecordType::SEGMENT_END;
        }
    });

    let wal = SegmentedWal::open_with(sim, config(dir)).unwrap();
    let mut reader = wal.lazy_reader(Lsn::FIRST).unwrap();
    let mut lsn = 0;
    while let Some(handle) = reader.next_header().unwrap() {
        lsn += 1;
        assert_eq!((handle.lsn, handle.record_type), (Lsn(lsn), TY), "as written");
        assert_eq!(reader.payload().unwrap(), [(lsn - 1) as u8; 1024]);
    }
    assert_eq!(lsn, 40);
}

// A segment with the last id (its name and its checksummed header both say `u64::MAX`), which
// no writer of this crate makes and recovery refuses: salvage set out to copy it, the copy's
// `WalWriter` refused the id, and salvage failed with `InvalidConfig` (the tool's status 3, bad
// usage) instead of stopping at the damage (status 2).
#[test]
fn salvage_stops_at_a_segment_with_the_last_id_as_at_damage() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let dir = Path::new("/last-id");
    sim.create_dir_all(dir).unwrap();
    let below = SegmentId(u64::MAX - 1);
    let mut writer = WalWriter::create_with(sim.clone(), dir, below, Lsn::FIRST, WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"in a segment of the last id")).unwrap();
    writer.finish().unwrap();
    let mut bytes = sim.read(&seg(dir, below.0));
    let header = decode_frame(&bytes[PREAMBLE_SIZE..]).unwrap();
    let at = PREAMBLE_SIZE + HEADER_LEN;
    let mut payload = SegmentHeaderPayload::decode(&bytes[at..PREAMBLE_SIZE + header.frame_len()]).unwrap();
    payload.segment_id = SegmentId(u64::MAX);
    encode_frame(&header, &payload.encode(), &mut bytes[PREAMBLE_SIZE..]);
    sim.delete(&seg(dir, below.0));
    sim.write(&seg(dir, u64::MAX), &bytes);

    let report = nodedb_wal::salvage::salvage_with(&sim, dir, Path::new("/copy"), None).expect("a report, not an error");
    assert_eq!(report.records, None, "nothing is copied");
    let damage = report.damage.expect("the segment is damage");
    assert_eq!((damage.segment, damage.offset), (Some(SegmentId(u64::MAX)), Some(0)));
    assert!(matches!(damage.error, WalError::Corruption { kind: CorruptionKind::BadSegmentHeader, .. }), "{}", damage.error);
    assert_eq!(report.past_the_stop.records, 1, "the record left behind is reported");
}

// A sealed segment whose header starts at the limit (2^63), holding no record: recovery takes
// it (a first LSN may be the limit itself), but salvage's copy could not begin a segment there.
#[test]
fn salvage_copies_a_log_whose_last_segment_starts_at_the_limit() {
    use nodedb_wal::format::layout::{write_header_block, write_segment_end};
    use nodedb_wal::format::preamble::SegmentPreamble;
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/at-limit");
    sim.create_dir_all(dir).unwrap();
    let last = Lsn(Lsn::LIMIT.0 - 1);
    let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), last, WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"the last LSN there is")).unwrap();
    writer.finish().unwrap();
    let mut bytes = vec![0u8; 8192];
    let header = SegmentHeaderPayload { segment_id: SegmentId(2), first_lsn: Lsn::LIMIT, salt: 7, block_len: 4096, kdf_salt: [0; 16] };
    write_header_block(&mut bytes[..4096], &SegmentPreamble::plaintext_wal(), &header, last);
    write_segment_end(&mut bytes, 4096, 4096, Lsn::LIMIT, last, 7);
    sim.write(&seg(dir, 2), &bytes);
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).expect("recovery takes it");
    assert_eq!(wal.next_lsn(), Lsn::LIMIT);
    drop(wal);

    let report = nodedb_wal::salvage::salvage_with(&sim, dir, Path::new("/copy"), None).expect("a report, not an error");
    assert!(report.damage.is_none(), "{:?}", report.damage);
    assert_eq!((report.records, report.next_lsn), (Some(last..=last), Lsn::LIMIT));
    let copy = SegmentedWal::open_with(sim, config(Path::new("/copy"))).unwrap();
    assert_eq!(copy.next_lsn(), Lsn::LIMIT);
}
