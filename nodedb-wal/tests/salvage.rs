//! Point-in-time salvage (`nodedb_wal::salvage`): for every kind of damage recovery refuses, the
//! new log opens and holds exactly the records before the damage (same LSNs, types, scopes,
//! payloads), an atomic group the damage cuts is dropped whole, and the report's count of
//! intact records past the damage matches what was appended after it. A healthy log is copied
//! whole, and the source's bytes never change. A salvage cut short by a power cut at any step
//! leaves a directory that does not open, or opens empty (before its `MANIFEST` exists), never
//! with a wrong or partial set of records. Bad destinations, missing keys and permission
//! problems are typed errors. Runs on real files and on the simulated storage.

mod common;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    Disk, Place, append_synced, assert_records, config, copy_dir, frames, locate, payload, read_all, record_type, scope, seg, segment_ids,
    write_log,
};
use nodedb_wal::format::frame::{HEADER_LEN, seal_frame};
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::salvage::{SalvageReport, salvage_with};
use nodedb_wal::storage::faulty::{EACCES, FaultOp, FaultyStorage};
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    CollectionTombstonePayload, CorruptionKind, FsStorage, GroupEntry, KeyRing, Lsn, MissingBecause, Record, SecureKey, SegmentId,
    SegmentedWal, SimStorage, WalError, WalRecord,
};

/// Twenty synced batches of ten records over several segments of 32 KiB, closed.
fn source_log<D: Disk>(disk: &D, dir: &Path) -> u64 {
    let last = write_log(disk, dir, &[10; 20]);
    assert!(segment_ids(disk, dir).len() >= 3, "several segments: {:?}", segment_ids(disk, dir));
    last
}

/// Every file of `dir` and its bytes.
fn files<D: Disk>(disk: &D, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    disk.names(dir).into_iter().map(|name| (name.clone(), disk.read(&dir.join(&name)))).collect()
}

/// Salvages `dir` (a copy made for this case) into a new directory beside it, checking that
/// the source's bytes did not change, and returns the report and the new log's records.
fn salvaged<D: Disk>(disk: &D, dir: &Path, ring: Option<&KeyRing>) -> (SalvageReport, Vec<WalRecord>) {
    let before = files(disk, dir);
    let dest = dir.with_file_name(format!("{}-saved", dir.file_name().unwrap().to_str().unwrap()));
    let report = salvage_with(disk, dir, &dest, ring).unwrap();
    assert_eq!(files(disk, dir), before, "the source is only read");
    let wal = SegmentedWal::open_with(disk.clone(), config(&dest)).unwrap();
    let info = wal.recovery_info();
    assert_eq!((info.torn_tail, info.removed_interrupted_roll), (None, None), "the new log is healthy");
    assert_eq!(wal.next_lsn(), report.next_lsn);
    let records = read_all(&wal);
    wal.close().unwrap();
    (report, records)
}

/// A copy of `dir` under `name`, to damage.
fn copy_of<D: Disk>(disk: &D, dir: &Path, name: &str) -> PathBuf {
    let copy = dir.with_file_name(name);
    copy_dir(disk, dir, &copy);
    copy
}

fn lsns(range: RangeInclusive<u64>) -> RangeInclusive<Lsn> {
    Lsn(*range.start())..=Lsn(*range.end())
}

/// The report says the copy holds `1..=kept`, stopped at damage of `segment` at `offset`, and
/// found `past` intact after it.
#[track_caller]
fn assert_cut(report: &SalvageReport, kept: u64, segment: u64, offset: Option<u64>, past: &[RangeInclusive<u64>]) {
    assert_eq!(report.records, (kept > 0).then(|| lsns(1..=kept)), "kept");
    assert_eq!(report.next_lsn, Lsn(kept + 1));
    let damage = report.damage.as_ref().expect("damage reported");
    assert_eq!((damage.segment, damage.offset), (Some(SegmentId(segment)), offset), "{:?}", damage.error);
    let expected: Vec<RangeInclusive<Lsn>> = past.iter().cloned().map(lsns).collect();
    assert_eq!(report.past_the_stop.lsn_ranges, expected, "past the damage");
    assert_eq!(report.past_the_stop.records, past.iter().map(|r| r.end() - r.start() + 1).sum::<u64>());
}

fn flip<D: Disk>(disk: &D, path: &Path, at: u64) {
    disk.edit(path, |b| b[at as usize] ^= 0x10);
}

fn healthy_log_is_copied_whole_and_the_source_is_unchanged<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    let (report, records) = salvaged(&disk, &dir, None);
    assert!(
        report.damage.is_none() && report.torn_tail.is_none() && report.group_dropped.is_none() && report.floor_damage.is_none(),
        "{report:?}"
    );
    assert_eq!(report.past_the_stop.records, 0);
    assert_eq!(report.records, Some(lsns(1..=last)));
    let ids: Vec<u64> = report.segments.iter().map(|s| s.id.0).collect();
    assert_eq!(ids, segment_ids(&disk, &dir), "segment for segment");
    assert_records(&records, 1, last);
}

both!(
    healthy_log_is_copied_whole_and_the_source_is_unchanged_fs,
    healthy_log_is_copied_whole_and_the_source_is_unchanged_sim,
    healthy_log_is_copied_whole_and_the_source_is_unchanged
);

fn a_flipped_byte_mid_log_keeps_the_records_before_it<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    for victim in [1, 3, 95, 150, last] {
        let copy = copy_of(&disk, &dir, &format!("flip-{victim}"));
        let (id, frame) = locate(&disk, &copy, victim);
        flip(&disk, &seg(&copy, id), frame.offset + HEADER_LEN as u64 + 5);
        let (report, records) = salvaged(&disk, &copy, None);
        let past: Vec<RangeInclusive<u64>> = if victim < last { vec![victim + 1..=last] } else { vec![] };
        assert_cut(&report, victim - 1, id, Some(frame.offset), &past);
        assert_records(&records, 1, victim - 1);
    }
}

both!(
    a_flipped_byte_mid_log_keeps_the_records_before_it_fs,
    a_flipped_byte_mid_log_keeps_the_records_before_it_sim,
    a_flipped_byte_mid_log_keeps_the_records_before_it
);

/// Runs of consecutive LSNs in `lsns` (ascending).
fn runs(lsns: impl IntoIterator<Item = u64>) -> Vec<RangeInclusive<u64>> {
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for lsn in lsns {
        match out.last_mut() {
            Some(run) if run.end() + 1 == lsn => *run = *run.start()..=lsn,
            _ => out.push(lsn..=lsn),
        }
    }
    out
}

fn a_zeroed_block_keeps_the_records_before_it<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    for victim in [20, 120] {
        let copy = copy_of(&disk, &dir, &format!("zero-{victim}"));
        let (id, frame) = locate(&disk, &copy, victim);
        let block = (frame.offset / common::BLOCK * common::BLOCK).max(common::BLOCK);
        let hit = |offset: u64, len: u64| offset < block + common::BLOCK && offset + len > block;
        let in_segment: Vec<_> = frames(&disk.read(&seg(&copy, id))).into_iter().filter(|f| f.is_record()).collect();
        let lost: Vec<u64> = in_segment.iter().filter(|f| hit(f.offset, f.frame_len())).map(|f| f.header.lsn.0).collect();
        let first_lost = lost[0];
        disk.edit(&seg(&copy, id), |b| b[block as usize..(block + common::BLOCK) as usize].fill(0));
        let (report, records) = salvaged(&disk, &copy, None);
        let past = runs((first_lost + 1..=last).filter(|lsn| !lost.contains(lsn)));
        let offset = in_segment.iter().find(|f| f.header.lsn.0 == first_lost).unwrap().offset;
        assert_cut(&report, first_lost - 1, id, Some(offset.max(block)), &past);
        assert_records(&records, 1, first_lost - 1);
    }
}

both!(
    a_zeroed_block_keeps_the_records_before_it_fs,
    a_zeroed_block_keeps_the_records_before_it_sim,
    a_zeroed_block_keeps_the_records_before_it
);

/// The first and last LSN of each segment of `dir`.
fn segment_lsns<D: Disk>(disk: &D, dir: &Path, id: u64) -> RangeInclusive<u64> {
    let records: Vec<u64> = frames(&disk.read(&seg(dir, id))).into_iter().filter(|f| f.is_record()).map(|f| f.header.lsn.0).collect();
    records[0]..=*records.last().unwrap()
}

fn a_missing_middle_segment_keeps_the_segments_before_it<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    let first_of_3 = *segment_lsns(&disk, &dir, 3).start();
    let kept = *segment_lsns(&disk, &dir, 1).end();
    disk.delete(&seg(&dir, 2));
    let (report, records) = salvaged(&disk, &dir, None);
    assert_cut(&report, kept, 2, None, &[first_of_3..=last]);
    let error = &report.damage.as_ref().unwrap().error;
    assert!(matches!(error, WalError::MissingSegment { missing: SegmentId(2), why: MissingBecause::Hole, .. }), "{error:?}");
    assert_records(&records, 1, kept);
}

both!(
    a_missing_middle_segment_keeps_the_segments_before_it_fs,
    a_missing_middle_segment_keeps_the_segments_before_it_sim,
    a_missing_middle_segment_keeps_the_segments_before_it
);

fn a_damaged_segment_head_keeps_the_segments_before_it<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    let first_of_2 = *segment_lsns(&disk, &dir, 2).start();
    flip(&disk, &seg(&dir, 2), (PREAMBLE_SIZE + HEADER_LEN + 3) as u64);
    let (report, records) = salvaged(&disk, &dir, None);
    assert_cut(&report, first_of_2 - 1, 2, Some(0), &[first_of_2..=last]);
    let error = &report.damage.as_ref().unwrap().error;
    assert!(matches!(error, WalError::Corruption { kind: CorruptionKind::BadSegmentHeader, .. }), "{error:?}");
    assert_records(&records, 1, first_of_2 - 1);
}

both!(
    a_damaged_segment_head_keeps_the_segments_before_it_fs,
    a_damaged_segment_head_keeps_the_segments_before_it_sim,
    a_damaged_segment_head_keeps_the_segments_before_it
);

/// Records 1..=10, then a group of a record, a tombstone and three records (11..=15), then
/// 16..=30, each synced; closed.
fn log_with_a_group<D: Disk>(disk: &D, dir: &Path) -> u64 {
    let wal = SegmentedWal::open_with(disk.clone(), config(dir)).unwrap();
    append_synced(&wal, 1, 10);
    let payloads: Vec<Vec<u8>> = (11..=15).map(payload).collect();
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 7, collection: "gone".into(), purge_lsn: Lsn(11) };
    let record = |lsn: u64| GroupEntry::Record(Record::new(record_type(lsn), &payloads[(lsn - 11) as usize]).scoped(scope(lsn)));
    let entries = [record(11), GroupEntry::Tombstone(&tombstone), record(13), record(14), record(15)];
    let group = wal.append_group_entries(&entries).unwrap();
    assert_eq!(group, lsns(11..=15));
    wal.sync().unwrap();
    append_synced(&wal, 16, 30);
    wal.close().unwrap();
    30
}

fn damage_inside_a_group_drops_the_whole_group<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = log_with_a_group(&disk, &dir);
    // Whole, the group and its tombstone are copied as they were.
    let (report, records) = salvaged(&disk, &dir, None);
    assert!(report.damage.is_none(), "{report:?}");
    let source = SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap();
    assert_eq!(records, read_all(&source), "types, scopes, payloads and group flags");
    let tombstones = source.recovery_info().tombstones.clone();
    drop(source);
    let dest = dir.with_file_name("wal-saved");
    assert_eq!(SegmentedWal::open_with(disk.clone(), config(&dest)).unwrap().recovery_info().tombstones, tombstones);

    let copy = copy_of(&disk, &dir, "group");
    let (id, frame) = locate(&disk, &copy, 14);
    flip(&disk, &seg(&copy, id), frame.offset + HEADER_LEN as u64 + 2);
    let (report, records) = salvaged(&disk, &copy, None);
    assert_cut(&report, 10, id, Some(frame.offset), &[15..=last]);
    assert_eq!(report.group_dropped, Some(lsns(11..=13)), "read intact, dropped with the group");
    assert_records(&records, 1, 10);
}

both!(
    damage_inside_a_group_drops_the_whole_group_fs,
    damage_inside_a_group_drops_the_whole_group_sim,
    damage_inside_a_group_drops_the_whole_group
);

fn ring(byte: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [byte; 32])))
}

/// Records 1..=10 in plaintext, then 11..=60 encrypted under key 1 of `ring(7)`, closed.
fn half_encrypted_log(sim: &SimStorage, dir: &Path) -> u64 {
    write_log(sim, dir, &[10]);
    let mut c = config(dir);
    c.key_ring = Some(ring(7));
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    for from in (11..=60).step_by(10) {
        append_synced(&wal, from, from + 9);
    }
    wal.close().unwrap();
    60
}

#[test]
fn a_tampered_encrypted_payload_keeps_the_records_before_it() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    let last = half_encrypted_log(&sim, &dir);
    let (id, frame) = locate(&sim, &dir, 40);
    // The ciphertext changed and the frame's checksum made right again: only the key can tell.
    sim.edit(&seg(&dir, id), |bytes| {
        let at = frame.offset as usize;
        bytes[at + HEADER_LEN + 3] ^= 1;
        seal_frame(&mut bytes[at..at + frame.frame_len() as usize], frame.header.record_type);
    });
    let (report, records) = salvaged(&sim, &dir, Some(&ring(7)));
    // The tampered frame's checksum holds: the resync counts it.
    assert_cut(&report, 39, id, Some(frame.offset), &[40..=last]);
    let error = &report.damage.as_ref().unwrap().error;
    assert!(matches!(error, WalError::AuthenticationFailed { lsn: Lsn(40), .. }), "{error:?}");
    assert_records(&records, 1, 39);
}

#[test]
fn a_wrong_key_keeps_the_plaintext_records_before_it() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    let last = half_encrypted_log(&sim, &dir);
    let (id, frame) = locate(&sim, &dir, 11);
    let (report, records) = salvaged(&sim, &dir, Some(&ring(9)));
    assert_cut(&report, 10, id, Some(frame.offset), &[11..=last]);
    let error = &report.damage.as_ref().unwrap().error;
    assert!(matches!(error, WalError::WrongKey { key_id: 1, .. }), "{error:?}");
    assert_records(&records, 1, 10);
}

// Found by an adversarial review: a segment altered after one under the same key had
// authenticated (its preamble's nonce epoch changed) was reported as a wrong key, with the
// tool's status 4, to an operator holding the right key: it is damage.
#[test]
fn a_segment_altered_after_its_key_proved_right_is_damage_not_a_wrong_key() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    half_encrypted_log(&sim, &dir);
    // A segment more under the same key (the close sealed the one before).
    let mut c = config(&dir);
    c.key_ring = Some(ring(7));
    let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
    append_synced(&wal, 61, 70);
    wal.close().unwrap();
    let newest = *segment_ids(&sim, &dir).last().unwrap();
    let first = *segment_lsns(&sim, &dir, newest).start();
    assert!(first > 11, "an earlier segment under the key: {first}");
    // The nonce epoch is the preamble's last four bytes.
    flip(&sim, &seg(&dir, newest), PREAMBLE_SIZE as u64 - 1);
    let (report, records) = salvaged(&sim, &dir, Some(&ring(7)));
    let error = &report.damage.as_ref().unwrap().error;
    assert!(matches!(error, WalError::AuthenticationFailed { lsn, .. } if lsn.0 == first), "{error:?}");
    assert_records(&records, 1, first - 1);
}

#[test]
fn a_missing_key_is_refused_before_anything_is_written() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    half_encrypted_log(&sim, &dir);
    let dest = dir.with_file_name("saved");
    let err = salvage_with(&sim, &dir, &dest, None).unwrap_err();
    assert!(matches!(err, WalError::KeyRingMissing { .. }), "{err}");
    let other = KeyRing::with_active(2, SecureKey::from_bytes(&mut [7; 32]));
    let err = salvage_with(&sim, &dir, &dest, Some(&other)).unwrap_err();
    assert!(matches!(err, WalError::UnknownKeyId { key_id: 1, .. }), "{err}");
    assert!(sim.list(&dest).is_err(), "no destination made");
}

fn a_destination_that_holds_anything_is_refused_and_left_alone<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    source_log(&disk, &dir);
    let dest = dir.with_file_name("busy");
    disk.create_dir_all(&dest).unwrap();
    disk.write(&dest.join("notes"), b"mine");
    let err = salvage_with(&disk, &dir, &dest, None).unwrap_err();
    assert!(matches!(&err, WalError::SalvageDestinationNotEmpty { path } if *path == dest), "{err}");
    assert_eq!(disk.names(&dest), ["notes"]);
    let inside = dir.join("saved");
    assert!(matches!(salvage_with(&disk, &dir, &inside, None), Err(WalError::InvalidConfig { .. })));
    assert!(disk.list(&inside).is_err(), "nothing made in the source");
    // An empty one (a LOCK alone) is taken.
    let empty = dir.with_file_name("empty");
    disk.create_dir_all(&empty).unwrap();
    disk.write(&empty.join("LOCK"), b"");
    assert!(salvage_with(&disk, &dir, &empty, None).unwrap().damage.is_none());
}

both!(
    a_destination_that_holds_anything_is_refused_and_left_alone_fs,
    a_destination_that_holds_anything_is_refused_and_left_alone_sim,
    a_destination_that_holds_anything_is_refused_and_left_alone
);

#[test]
fn a_permission_problem_is_an_io_error_naming_the_file() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    source_log(&sim, &dir);
    let storage = FaultyStorage::new(sim.clone());
    storage.refuse_open(&seg(&dir, 2));
    let err = salvage_with(&storage, &dir, &dir.with_file_name("a"), None).unwrap_err();
    assert!(
        matches!(&err, WalError::Io { source, path, .. } if source.kind() == std::io::ErrorKind::PermissionDenied && *path == seg(&dir, 2)),
        "{err}"
    );
    let storage = FaultyStorage::new(sim);
    storage.fail_once(FaultOp::Write, 0, EACCES);
    let err = salvage_with(&storage, &dir, &dir.with_file_name("b"), None).unwrap_err();
    assert!(matches!(&err, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied), "{err}");
}

/// A power cut after each step of a salvage (of a damaged log): after the restart the new
/// directory does not open, or opens empty (its `MANIFEST` not made yet), or holds exactly
/// what the finished salvage holds.
#[test]
fn a_salvage_cut_short_at_any_step_never_opens_with_a_wrong_record() {
    let (mut refused, mut empty, mut whole) = (0, 0, 0);
    for ops in 0.. {
        let sim = SimStorage::new(ops, FaultConfig::default());
        let dir = PathBuf::from("/sim/wal");
        source_log(&sim, &dir);
        let (id, frame) = locate(&sim, &dir, 150);
        flip(&sim, &seg(&dir, id), frame.offset + HEADER_LEN as u64);
        let storage = FaultyStorage::new(sim.clone());
        storage.cut_power_after(ops);
        let dest = PathBuf::from("/sim/saved");
        let finished = salvage_with(&storage, &dir, &dest, None).is_ok();
        let restarted = sim.crash(ops);
        match SegmentedWal::open_with(restarted.clone(), config(&dest)) {
            Err(err) => {
                assert!(matches!(err, WalError::MissingSegment { .. } | WalError::Corruption { .. }), "after {ops} steps: {err}");
                refused += 1;
            }
            Ok(wal) => {
                let records = read_all(&wal);
                if records.is_empty() {
                    assert!(!wal.segments().iter().any(|s| s.record_count() > 0));
                    empty += 1;
                } else {
                    assert_records(&records, 1, 149);
                    whole += 1;
                }
            }
        }
        if finished {
            break;
        }
    }
    assert!(refused > 10 && empty > 0 && whole > 0, "refused {refused}, empty {empty}, whole {whole}");
}

/// A log that was not closed, its last batch torn: no damage, and the copy holds what
/// recovery returns; the torn batch's intact records (never acknowledged) are named.
fn a_torn_tail_is_left_out_as_recovery_cuts_it<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10; 5]);
    common::unseal(&disk, &dir);
    let (id, frame) = locate(&disk, &dir, 45);
    flip(&disk, &seg(&dir, id), frame.offset + HEADER_LEN as u64 + 1);
    let (report, records) = salvaged(&disk, &dir, None);
    assert!(report.damage.is_none(), "{:?}", report.damage);
    assert_eq!(report.torn_tail.map(|t| (t.segment, t.offset)), Some((SegmentId(id), frame.offset)));
    assert_eq!(report.past_the_stop.lsn_ranges, [lsns(46..=last)]);
    assert_records(&records, 1, 44);
}

both!(
    a_torn_tail_is_left_out_as_recovery_cuts_it_fs,
    a_torn_tail_is_left_out_as_recovery_cuts_it_sim,
    a_torn_tail_is_left_out_as_recovery_cuts_it
);

/// After a truncation the copy starts at the oldest record the log holds, in segments of the
/// same ids, and leaves out segments below `FLOOR` that a crash kept from being removed.
fn a_truncated_log_is_copied_from_its_oldest_record<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    let leftover = disk.read(&seg(&dir, 1));
    let wal = SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap();
    let oldest = wal.segments()[2].first_lsn;
    wal.truncate_before(oldest).unwrap();
    let kept_ids: Vec<u64> = wal.segments().iter().map(|s| s.id.0).collect();
    wal.close().unwrap();
    assert_eq!(kept_ids[0], 3);
    // Segment 1 back, as a truncation cut short leaves it.
    disk.write(&seg(&dir, 1), &leftover);
    let (report, records) = salvaged(&disk, &dir, None);
    assert!(report.damage.is_none(), "{:?}", report.damage);
    assert_eq!(report.segments.iter().map(|s| s.id.0).collect::<Vec<_>>(), kept_ids);
    assert_records(&records, oldest.0, last);
}

/// As above with `FLOOR` damaged as well: the salvage cannot tell the leftover segment from
/// the log's oldest, so it copies from it, stops at the hole after it, and says that `FLOOR`
/// did not read (the one hint that the hole may be a truncation's).
fn a_damaged_floor_beside_a_truncations_leftover_is_named_in_the_report<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = source_log(&disk, &dir);
    let leftover = disk.read(&seg(&dir, 1));
    let wal = SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap();
    wal.truncate_before(wal.segments()[2].first_lsn).unwrap();
    wal.close().unwrap();
    disk.write(&seg(&dir, 1), &leftover);
    let floor = dir.join("FLOOR");
    let damaged: Vec<u8> = disk.read(&floor).iter().map(|b| b ^ 0x55).collect();
    disk.write(&floor, &damaged);
    let (report, _) = salvaged(&disk, &dir, None);
    assert!(matches!(report.floor_damage, Some(WalError::FloorDamaged { .. })), "{:?}", report.floor_damage);
    let damage = report.damage.as_ref().expect("the hole after the leftover");
    assert!(matches!(damage.error, WalError::MissingSegment { missing: SegmentId(2), .. }), "{:?}", damage.error);
    assert_eq!(report.past_the_stop.lsn_ranges.last().map(|r| *r.end()), Some(Lsn(last)), "the live log counted past the stop");
}

both!(
    a_damaged_floor_beside_a_truncations_leftover_is_named_in_the_report_fs,
    a_damaged_floor_beside_a_truncations_leftover_is_named_in_the_report_sim,
    a_damaged_floor_beside_a_truncations_leftover_is_named_in_the_report
);

both!(
    a_truncated_log_is_copied_from_its_oldest_record_fs,
    a_truncated_log_is_copied_from_its_oldest_record_sim,
    a_truncated_log_is_copied_from_its_oldest_record
);

/// A failed write or sync at any step of a salvage is returned as the error, and the new
/// directory, read with no crash in between, does not open, or opens empty (before its
/// `MANIFEST` exists) or whole (a failure of the last step, naming the newest segment in
/// `MANIFEST`, whose bytes may have landed): never short of what the salvage would have copied.
#[test]
fn a_salvage_whose_write_or_sync_fails_leaves_a_directory_that_does_not_open() {
    let mut failures = 0;
    for op in [FaultOp::Write, FaultOp::SyncData, FaultOp::SyncDir, FaultOp::Rename] {
        for after in 0.. {
            let (sim, dir, _tmp) = SimStorage::fresh();
            let last = source_log(&sim, &dir);
            let storage = FaultyStorage::new(sim.clone());
            storage.fail_once(op, after, nodedb_wal::storage::faulty::EIO);
            let dest = dir.with_file_name("saved");
            if salvage_with(&storage, &dir, &dest, None).is_ok() {
                assert_eq!(storage.injected(), 0, "{op:?} {after}: a failure the salvage did not see");
                break;
            }
            failures += 1;
            match SegmentedWal::open_with(sim.clone(), config(&dest)) {
                Err(err) => assert!(matches!(err, WalError::MissingSegment { .. } | WalError::Corruption { .. }), "{op:?} {after}: {err}"),
                // The last step's failure leaves the outcome in doubt, as a failed sync does
                // an append's: the copy may be complete (never short of it).
                Ok(wal) => assert!([0, last].contains(&wal.recovery_info().record_count), "{op:?} {after}"),
            }
        }
    }
    assert!(failures > 20, "{failures}");
}

/// A flipped bit anywhere in any segment (a sample of every file's bytes): the salvage never
/// fails, and the new log opens with exactly the records `1..=k` it reports, every record it
/// counts past the stop lying above `k`.
#[test]
fn a_flip_anywhere_gives_a_copy_of_a_prefix_and_nothing_else() {
    let (sim, dir, _tmp) = SimStorage::fresh();
    let last = source_log(&sim, &dir);
    let mut trials = 0;
    for id in segment_ids(&sim, &dir) {
        let len = sim.read(&seg(&dir, id)).len() as u64;
        for at in (0..len).step_by(401) {
            let copy = copy_of(&sim, &dir, &format!("any-{id}-{at}"));
            flip(&sim, &seg(&copy, id), at);
            let (report, records) = salvaged(&sim, &copy, None);
            let kept = report.records.as_ref().map_or(0, |r| r.end().0);
            assert_records(&records, 1, kept);
            assert!(report.past_the_stop.lsn_ranges.iter().all(|r| r.start().0 > kept), "segment {id} byte {at}: {report:?}");
            assert!(report.past_the_stop.records <= last - kept, "segment {id} byte {at}");
            trials += 1;
        }
    }
    assert!(trials > 150, "{trials}");
}
