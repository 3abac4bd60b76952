//! Salvage edges beside `tests/salvage.rs`: destinations named through `..` or a symlink, a
//! segment file that is a copy of another, tombstones on both sides of the damage (against a
//! log written independently with only the records before it), an empty log and a torn first
//! record, side-file damage after an unclean shutdown, a wrong key for a middle rotation,
//! records larger than the copy buffer, a sealed segment ending inside a group, and a salvaged
//! log appended to, reopened and salvaged again.

mod common;

use std::path::Path;

use common::{Disk, append_synced, assert_records, config, copy_dir, locate, read_all, seg, segment_ids, unseal, write_log};
use nodedb_wal::format::frame::HEADER_LEN;
use nodedb_wal::format::manifest::ManifestSlot;
use nodedb_wal::salvage::{SalvageReport, salvage, salvage_with};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    CollectionTombstonePayload, FsStorage, GroupEntry, Lsn, Record, RecordType, Scope, SegmentId, SegmentedWal, SimStorage,
    TemporalPurgeEngine, TemporalPurgePayload, WalError,
};

fn flip<D: Disk>(disk: &D, path: &Path, at: u64) {
    disk.edit(path, |b| b[at as usize] ^= 0x10);
}

/// Salvages `dir` into `dest` on `disk`, and opens the new log's records.
fn salvaged<D: Disk>(disk: &D, dir: &Path, dest: &Path) -> (SalvageReport, Vec<nodedb_wal::WalRecord>) {
    let report = salvage_with(disk, dir, dest, None).unwrap();
    let wal = SegmentedWal::open_with(disk.clone(), config(dest)).unwrap();
    assert_eq!(wal.next_lsn(), report.next_lsn);
    let records = read_all(&wal);
    wal.close().unwrap();
    (report, records)
}

/// A closed log on real files in a fresh temporary directory, and its path.
fn real_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    write_log(&FsStorage::new(), &dir, &[10; 3]);
    (tmp, dir)
}

#[test]
fn a_destination_inside_the_source_named_through_dotdot_is_refused_and_nothing_is_made_there() {
    let (tmp, dir) = real_log();
    std::fs::create_dir(tmp.path().join("other")).unwrap();
    let dest = tmp.path().join("other").join("..").join("wal").join("saved");
    let result = salvage(&dir, &dest, None);
    assert!(!dir.join("saved").exists(), "the source is only read");
    assert!(matches!(result, Err(WalError::InvalidConfig { .. })), "{result:?}");
}

#[test]
fn a_destination_inside_the_source_through_a_symlink_is_refused_and_nothing_is_made_there() {
    let (tmp, dir) = real_log();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let result = salvage(&dir, &link.join("saved"), None);
    assert!(!dir.join("saved").exists(), "the source is only read");
    assert!(matches!(result, Err(WalError::InvalidConfig { .. })), "{result:?}");
    // The source named through the link, the destination beside it: taken.
    let report = salvage(&link, &tmp.path().join("saved"), None).unwrap();
    assert_eq!(report.records, Some(Lsn(1)..=Lsn(30)));
}

#[test]
fn a_destination_beside_the_source_named_through_dotdot_is_taken() {
    let (tmp, dir) = real_log();
    let report = salvage(&dir, &dir.join("..").join("saved"), None).unwrap();
    assert_eq!(report.records, Some(Lsn(1)..=Lsn(30)));
    assert!(tmp.path().join("saved").is_dir());
}

#[test]
fn a_destination_that_is_a_file_is_a_typed_error_and_the_file_is_left_alone() {
    let (tmp, dir) = real_log();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"mine").unwrap();
    let err = salvage(&dir, &file, None).unwrap_err();
    assert!(matches!(err, WalError::Io { .. } | WalError::SalvageDestinationNotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

/// A segment file replaced by a copy of an older one: the copy stops there, and the records
/// past the stop it reports are only ones the new log does not hold.
#[test]
fn a_segment_file_that_is_a_copy_of_an_older_one_stops_the_copy_and_is_not_counted_past_it() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let last = write_log(&sim, dir, &[10; 20]);
    let ids = segment_ids(&sim, dir);
    assert!(ids.len() >= 3, "{ids:?}");
    let victim = ids[ids.len() - 2];
    let first_lost = locate_first(&sim, dir, victim);
    let newest_first = locate_first(&sim, dir, *ids.last().unwrap());
    sim.write(&seg(dir, victim), &sim.read(&seg(dir, 1)));
    let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert_records(&records, 1, first_lost - 1);
    let damage = report.damage.as_ref().expect("damage");
    assert_eq!((damage.segment, damage.offset), (Some(SegmentId(victim)), Some(0)), "{:?}", damage.error);
    let past: Vec<_> = report.past_the_stop.lsn_ranges.iter().map(|r| r.start().0..=r.end().0).collect();
    assert_eq!(past, [newest_first..=last], "only what the copy does not hold");
}

/// The first LSN in segment `id`.
fn locate_first<D: Disk>(disk: &D, dir: &Path, id: u64) -> u64 {
    (1..).find(|&lsn| locate(disk, dir, lsn).0 == id).unwrap()
}

/// Records 1..=10, a tombstone (11), 12..=20, a tombstone (21), 22..=30 up to `upto`, each
/// synced; closed.
fn log_with_tombstones(sim: &SimStorage, dir: &Path, upto: u64) {
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    for (from, to) in [(1, 10), (12, 20), (22, 30)] {
        if from > upto {
            break;
        }
        append_synced(&wal, from, to.min(upto));
        if to < upto {
            let purge = CollectionTombstonePayload { database: 1, tenant: 7, collection: format!("c{to}"), purge_lsn: Lsn(to) };
            assert_eq!(wal.append_tombstone(&purge).unwrap(), Lsn(to + 1));
            wal.sync().unwrap();
        }
    }
    wal.close().unwrap();
}

#[test]
fn the_salvaged_log_gathers_exactly_the_tombstones_before_the_damage() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    log_with_tombstones(&sim, dir, 30);
    for victim in [5, 15, 25] {
        let copy = Path::new("/sim").join(format!("t{victim}"));
        copy_dir(&sim, dir, &copy);
        let (id, frame) = locate(&sim, &copy, victim);
        flip(&sim, &seg(&copy, id), frame.offset + HEADER_LEN as u64 + 1);
        let dest = copy.with_file_name(format!("t{victim}-saved"));
        let (report, _) = salvaged(&sim, &copy, &dest);
        assert_eq!(report.next_lsn, Lsn(victim));
        let expected_dir = copy.with_file_name(format!("t{victim}-expected"));
        log_with_tombstones(&sim, &expected_dir, victim - 1);
        let expected = SegmentedWal::open_with(sim.clone(), config(&expected_dir)).unwrap();
        let saved = SegmentedWal::open_with(sim.clone(), config(&dest)).unwrap();
        assert_eq!(saved.recovery_info().tombstones, expected.recovery_info().tombstones, "damage at {victim}");
        assert_eq!(read_all(&saved), read_all(&expected), "damage at {victim}");
        // The drops past the damage, which the copy's recovery no longer reports, are named.
        let lost: Vec<_> =
            [11, 21].into_iter().filter(|&lsn| lsn > victim).map(|lsn| (Lsn(lsn), RecordType::COLLECTION_TOMBSTONE)).collect();
        assert_eq!(report.past_the_stop.drops_and_purges, lost, "damage at {victim}");
        assert!(report.group_drops_and_purges.is_empty());
    }
}

// A salvage left out drops and purges (past the damage, or in the atomic group it cut) and
// reported only their LSNs among the other records: nothing told the operator that the copy's
// recovery would no longer report a collection drop, whose rows then come back in every engine
// whose files did not hold the drop yet.
#[test]
fn a_salvage_names_the_drops_and_purges_it_leaves_out_in_a_cut_group_and_past_the_damage() {
    let sim = SimStorage::new(12, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let ty = RecordType::optional(0x100);
    let scope = Scope { database: 1, tenant: 7, vshard: 0 };
    wal.append_durable(Record::new(ty, b"a row").scoped(scope)).unwrap();
    let drop = |collection: &str| CollectionTombstonePayload { database: 1, tenant: 7, collection: collection.into(), purge_lsn: Lsn(1) };
    let purge = TemporalPurgePayload { engine: TemporalPurgeEngine::Document, collection: "c".into(), cutoff_unix_ms: 5, purged_count: 1 };
    let (gone, dropped_later) = (drop("gone"), drop("later"));
    let entries = [
        GroupEntry::from(Record::new(ty, b"catalog: drop gone").scoped(scope)),
        GroupEntry::Tombstone(&gone),
        GroupEntry::TemporalPurge(&purge, scope),
        GroupEntry::from(Record::new(ty, b"the group's last member").scoped(scope)),
    ];
    let group = wal.append_group_entries(&entries).unwrap();
    wal.sync().unwrap();
    let later = wal.append_tombstone(&dropped_later).unwrap();
    let later_purge = wal.append_temporal_purge(&purge, scope).unwrap();
    wal.append_durable(Record::new(ty, b"a row after").scoped(scope)).unwrap();
    wal.close().unwrap();
    // Damage to the group's last member: the walk stops there and drops the group whole.
    let (id, frame) = locate(&sim, dir, group.end().0);
    flip(&sim, &seg(dir, id), frame.offset + HEADER_LEN as u64 + 1);

    let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert_eq!(records.iter().map(|r| r.payload.to_vec()).collect::<Vec<_>>(), [b"a row".to_vec()], "only the row before the group");
    let first = group.start().0;
    assert_eq!(report.group_dropped, Some(Lsn(first)..=Lsn(first + 2)), "the members read intact");
    let in_group = [(Lsn(first + 1), RecordType::COLLECTION_TOMBSTONE), (Lsn(first + 2), RecordType::TEMPORAL_PURGE)];
    assert_eq!(report.group_drops_and_purges, in_group);
    let past = [(later, RecordType::COLLECTION_TOMBSTONE), (later_purge, RecordType::TEMPORAL_PURGE)];
    assert_eq!(report.past_the_stop.drops_and_purges, past);
    let saved = SegmentedWal::open_with(sim.clone(), config(Path::new("/sim/saved"))).unwrap();
    assert!(saved.recovery_info().tombstones.is_empty() && saved.recovery_info().temporal_purges.is_empty(), "the copy holds none");
}

#[test]
fn an_empty_log_salvages_into_an_empty_log_that_hands_out_lsn_1() {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    SegmentedWal::open_with(sim.clone(), config(dir)).unwrap().close().unwrap();
    let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert!(records.is_empty() && report.records.is_none() && report.damage.is_none(), "{report:?}");
    assert_eq!(report.next_lsn, Lsn(1));
    // A directory with no file at all: the same.
    sim.create_dir_all(Path::new("/sim/bare")).unwrap();
    let (report, records) = salvaged(&sim, Path::new("/sim/bare"), Path::new("/sim/bare-saved"));
    assert!(records.is_empty() && report.records.is_none(), "{report:?}");
    // A source that does not exist is an error, and makes nothing.
    let err = salvage_with(&sim, Path::new("/sim/none"), Path::new("/sim/none-saved"), None).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
}

#[test]
fn a_log_whose_first_record_is_damaged_salvages_into_an_empty_log() {
    for closed in [true, false] {
        let sim = SimStorage::new(2, FaultConfig::default());
        let dir = Path::new("/sim/wal");
        write_log(&sim, dir, &[10]);
        if !closed {
            unseal(&sim, dir);
        }
        let (id, frame) = locate(&sim, dir, 1);
        flip(&sim, &seg(dir, id), frame.offset + HEADER_LEN as u64 + 1);
        let refused = SegmentedWal::open_with(sim.clone(), config(dir)).is_err();
        let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
        assert!(records.is_empty() && report.records.is_none(), "{report:?}");
        assert_eq!(report.next_lsn, Lsn(1));
        assert_eq!(report.past_the_stop.lsn_ranges, [Lsn(2)..=Lsn(10)], "closed {closed}");
        assert_eq!(report.damage.is_some(), refused, "damage where recovery refuses the log: {report:?}");
        assert_eq!(report.torn_tail.is_some(), !refused, "a torn tail where recovery cuts it: {report:?}");
    }
}

/// A damaged `MANIFEST` beside segments a power cut left unsealed: every segment is copied,
/// and the report places the damage beside the segments, as its docs say.
#[test]
fn damaged_side_files_after_an_unclean_shutdown_are_reported_beside_the_segments() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let last = write_log(&sim, dir, &[10; 5]);
    unseal(&sim, dir);
    let manifest = dir.join("MANIFEST");
    sim.edit(&manifest, |b| b.iter_mut().for_each(|x| *x ^= 0x55));
    let err = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert_records(&records, 1, last);
    let damage = report.damage.as_ref().expect("damage");
    assert_eq!((damage.segment, damage.offset), (None, None), "{:?}", damage.error);
}

#[test]
fn a_salvaged_log_takes_appends_reopens_and_salvages_again_into_the_same_records() {
    let sim = SimStorage::new(6, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    write_log(&sim, dir, &[10; 20]);
    let (id, frame) = locate(&sim, dir, 123);
    flip(&sim, &seg(dir, id), frame.offset + HEADER_LEN as u64 + 1);
    let (first, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert_records(&records, 1, 122);
    let (again, twice) = salvaged(&sim, Path::new("/sim/saved"), Path::new("/sim/saved2"));
    assert_eq!(twice, records, "a salvage of the salvage holds the same records");
    assert_eq!((&again.records, again.next_lsn, again.damage.is_none()), (&first.records, first.next_lsn, true), "{again:?}");
    assert_eq!(again.segments.iter().map(|s| s.id).collect::<Vec<_>>(), first.segments.iter().map(|s| s.id).collect::<Vec<_>>());
    let wal = SegmentedWal::open_with(sim.clone(), config(Path::new("/sim/saved"))).unwrap();
    append_synced(&wal, 123, 160);
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), config(Path::new("/sim/saved"))).unwrap();
    assert_records(&read_all(&wal), 1, 160);
}

/// The key id in segment `id`'s preamble (0: plaintext).
fn key_of(sim: &SimStorage, dir: &Path, id: u64) -> u32 {
    nodedb_wal::format::preamble::SegmentPreamble::decode(&sim.read(&seg(dir, id))).map_or(0, |p| p.key_id)
}

/// A log rotated from key 1 to 2 to 3; the ring given holds a wrong key 2: the copy stops at
/// the first segment under key 2 (`WrongKey`), with every record under key 1 before it.
#[test]
fn a_wrong_key_for_a_middle_rotation_keeps_the_segments_before_it() {
    let sim = SimStorage::new(8, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let key = |b: u8| nodedb_wal::SecureKey::from_bytes(&mut [b; 32]);
    let ring = std::sync::Arc::new(nodedb_wal::KeyRing::with_active(1, key(1)));
    let mut c = config(dir);
    c.key_ring = Some(ring.clone());
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    for (key_id, from) in [(1, 1), (2, 101), (3, 201)] {
        if key_id > 1 {
            ring.insert(key_id, key(key_id as u8)).unwrap();
            ring.set_active(key_id).unwrap();
        }
        for at in (from..from + 100).step_by(10) {
            append_synced(&wal, at, at + 9);
        }
    }
    wal.close().unwrap();
    let ids = segment_ids(&sim, dir);
    let first_of_2 = *ids.iter().find(|&&id| key_of(&sim, dir, id) == 2).expect("a segment under key 2");
    assert!(key_of(&sim, dir, *ids.last().unwrap()) == 3 && key_of(&sim, dir, 1) == 1);
    let kept = locate_first(&sim, dir, first_of_2) - 1;
    let wrong = nodedb_wal::KeyRing::with_active(1, key(1));
    wrong.insert(2, key(99)).unwrap();
    wrong.insert(3, key(3)).unwrap();
    let dest = Path::new("/sim/saved");
    let report = salvage_with(&sim, dir, dest, Some(&wrong)).unwrap();
    let damage = report.damage.as_ref().expect("damage");
    assert!(matches!(damage.error, WalError::WrongKey { key_id: 2, .. }), "{:?}", damage.error);
    assert_eq!(damage.segment, Some(SegmentId(first_of_2)));
    assert_eq!(report.records, Some(Lsn(1)..=Lsn(kept)));
    assert_eq!(report.past_the_stop.lsn_ranges, [Lsn(kept + 1)..=Lsn(300)], "wrong-key frames are intact frames");
    let saved = SegmentedWal::open_with(sim.clone(), config(dest)).unwrap();
    assert_records(&read_all(&saved), 1, kept);
}

/// Records larger than the copy's write buffer (1 MiB) and than a segment, and one of the
/// largest payload a log takes, copied whole and byte for byte.
#[test]
fn records_larger_than_the_copy_buffer_and_a_segment_are_copied_whole() {
    let sim = SimStorage::new(9, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let mut c = config(dir);
    c.payload_bytes_max = 3 << 20;
    let sizes = [10usize, 1 << 20, 3 << 20, 7, (1 << 20) + 13];
    let payloads: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as u8).collect()).collect();
    let wal = SegmentedWal::open_with(sim.clone(), c.clone()).unwrap();
    for p in &payloads {
        wal.append_durable(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), p)).unwrap();
    }
    wal.close().unwrap();
    let dest = Path::new("/sim/saved");
    let report = salvage_with(&sim, dir, dest, None).unwrap();
    assert!(report.damage.is_none(), "{report:?}");
    let saved = SegmentedWal::open_with(sim.clone(), config(dest)).unwrap();
    let got: Vec<Vec<u8>> = read_all(&saved).into_iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(got, payloads);
}

/// A sealed segment whose last records say their group goes on (no writer leaves one: a group
/// never spans segments): the copy stops at its end frame, the cut group dropped whole.
#[test]
fn a_sealed_segment_ending_inside_a_group_drops_the_group_and_stops_there() {
    use nodedb_wal::format::frame::{FLAG_GROUP_CONTINUES, RecordHeader, seal_frame};
    let sim = SimStorage::new(11, FaultConfig::default());
    let dir = Path::new("/sim/wal");
    let last = write_log(&sim, dir, &[10; 20]);
    let first_of_2 = locate_first(&sim, dir, 2);
    let (tail, before) = (first_of_2 - 1, first_of_2 - 2);
    sim.edit(&seg(dir, 1), |bytes| {
        for lsn in [before, tail] {
            let frame = common::record_frame(bytes, lsn);
            let at = frame.offset as usize;
            let span = &mut bytes[at..at + frame.frame_len() as usize];
            let header = RecordHeader { flags: frame.header.flags | FLAG_GROUP_CONTINUES, ..frame.header };
            header.encode_into(&mut span[..HEADER_LEN]);
            seal_frame(span, frame.header.record_type);
        }
    });
    let (report, records) = salvaged(&sim, dir, Path::new("/sim/saved"));
    assert_records(&records, 1, before - 1);
    assert_eq!(report.group_dropped, Some(Lsn(before)..=Lsn(tail)));
    let damage = report.damage.as_ref().expect("damage");
    assert!(matches!(damage.error, WalError::Corruption { kind: nodedb_wal::CorruptionKind::IncompleteGroup, .. }), "{:?}", damage.error);
    assert_eq!(damage.segment, Some(SegmentId(1)));
    assert_eq!(report.past_the_stop.lsn_ranges, [Lsn(first_of_2)..=Lsn(last)]);
}

/// The salvage's last step names the newest segment in both slots of the copy's `MANIFEST`:
/// were the older one left naming `PENDING`, damage to the newer one (a torn sector, a bit
/// flipped on the medium) would make the good copy refuse to open for good.
#[test]
fn a_salvaged_log_opens_whichever_slot_of_its_manifest_is_damaged() {
    for newer in [true, false] {
        let sim = SimStorage::new(19, FaultConfig::default());
        let (dir, dest) = (Path::new("/wal"), Path::new("/saved"));
        let last = write_log(&sim, dir, &[10; 3]);
        let report = salvage_with(&sim, dir, dest, None).unwrap();
        let manifest = dest.join("MANIFEST");
        let current = ManifestSlot::current(&sim.read(&manifest)).expect("the copy's manifest reads");
        let damaged = if newer { current.sequence } else { current.sequence - 1 };
        flip(&sim, &manifest, ManifestSlot::offset_of(damaged));
        let wal = SegmentedWal::open_with(sim.clone(), config(dest))
            .unwrap_or_else(|e| panic!("the copy opens with its {} slot damaged: {e}", if newer { "newer" } else { "older" }));
        assert_eq!(wal.next_lsn(), report.next_lsn);
        assert_eq!(read_all(&wal).len() as u64, last);
    }
}
