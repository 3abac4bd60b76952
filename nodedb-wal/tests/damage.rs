//! Damaged logs on disk: recovery returns exactly the records before damage it may cut, and a
//! typed error for damage it must not cut.
//!
//! A torn tail (the last batch of the last segment torn, truncated, or zeroed, as a crash leaves
//! it) is cut at the last valid record, reported in `RecoveryInfo::torn_tail`, and the cut
//! survives later reopens; appends continue at the next LSN. Damage that acknowledged records
//! follow (a bit flip in a sealed segment, or before later synced batches of the last segment),
//! a truncated or missing sealed segment and a segment under another id's name are errors that
//! name the segment and offset; recovery never drops such records silently. An empty or
//! half-created segment after a sealed one is the trace of an interrupted roll and is removed.
//! Every test runs on real files and on the simulated storage.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{
    BLOCK, Disk, Frame, Gated, Place, append_synced, assert_records, config, copy_dir, frames, locate, read_all, record_frame, seg,
    segment_ids, unseal, write_log,
};
use nodedb_wal::format::frame::{FLAG_GROUP_CONTINUES, HEADER_LEN, decode_frame, seal_frame};
use nodedb_wal::format::manifest::{MANIFEST_FILE, MANIFEST_TEMP_FILE, ManifestSlot, SLOT_LEN, SLOT_SPACING};
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::recovery::TornTail;
use nodedb_wal::segment;
use nodedb_wal::segment::scan::TailEnd;
use nodedb_wal::storage::faulty::FaultyStorage;
use nodedb_wal::storage::{FaultConfig, OpenMode, SECTOR, Storage};
use nodedb_wal::{CorruptionKind, FsStorage, Lsn, MissingBecause, RecordHeader, SegmentId, SegmentedWal, SimStorage, WalError};

fn open<D: Disk>(disk: &D, dir: &Path) -> Result<SegmentedWal<D>, WalError> {
    SegmentedWal::open_with(disk.clone(), config(dir))
}

/// Opens a log that must fail, and returns why.
fn open_err<D: Disk>(disk: &D, dir: &Path) -> WalError {
    match open(disk, dir) {
        Ok(wal) => panic!("opened a damaged log: {:?}", wal.recovery_info()),
        Err(e) => e,
    }
}

/// Asserts `err` is corruption of `segment` at `offset`, and returns its kind.
#[track_caller]
fn assert_corruption(err: &WalError, segment: u64, offset: u64) -> CorruptionKind {
    match *err {
        WalError::Corruption { segment: s, offset: o, kind } if s == SegmentId(segment) && o == offset => kind,
        _ => panic!("expected corruption of segment {segment} at offset {offset}, got {err:?}"),
    }
}

/// Opens the log, checks that it holds exactly `1..=last`, and that no tail was cut.
fn assert_intact<D: Disk>(disk: &D, dir: &Path, last: u64) {
    let wal = open(disk, dir).unwrap();
    assert_eq!(wal.recovery_info().torn_tail, None);
    assert_records(&read_all(&wal), 1, last);
    assert_eq!(wal.next_lsn(), Lsn(last + 1));
    wal.close().unwrap();
}

/// Flips one bit of byte `at` of a file.
fn flip<D: Disk>(disk: &D, path: &Path, at: u64, bit: u32) {
    disk.edit(path, |b| b[at as usize] ^= 1 << (bit % 8));
}

// ---------------------------------------------------------------------------------------------
// Torn tails
// ---------------------------------------------------------------------------------------------

/// How a crash (or the test standing in for one) tore the last batch.
#[derive(Clone, Copy, Debug)]
enum Tear {
    /// One bit of a record's payload flipped.
    FlipPayload,
    /// One bit of a record's header flipped.
    FlipHeader,
    /// The file cut inside a record's payload.
    TruncateInRecord,
    /// The file cut inside a record's header.
    TruncateInHeader,
    /// One 512-byte sector inside the batch reads as zeros: it never reached the disk, while
    /// sectors after it did.
    ZeroSector,
}

fn torn_tail_is_cut_to_last_valid_record<D: Place>(tear: Tear) {
    let (disk, dir, _tmp) = D::fresh();
    // Three small acknowledged batches, then a last batch of 30 records over two blocks.
    let last = write_log(&disk, &dir, &[10, 10, 10, 30]);
    unseal(&disk, &dir);
    assert_eq!(segment_ids(&disk, &dir), vec![1], "everything in one segment");
    let path = seg(&dir, 1);
    let before = disk.read(&path);
    let victim = record_frame(&before, 45);
    let mid = victim.offset + victim.frame_len() / 2;
    let cut = match tear {
        Tear::FlipPayload => {
            flip(&disk, &path, victim.offset + HEADER_LEN as u64 + 3, 5);
            45
        }
        Tear::FlipHeader => {
            flip(&disk, &path, victim.offset + 9, 0);
            45
        }
        Tear::TruncateInRecord => {
            disk.edit(&path, |b| b.truncate((victim.offset + HEADER_LEN as u64 + 7) as usize));
            45
        }
        Tear::TruncateInHeader => {
            disk.edit(&path, |b| b.truncate((victim.offset + 20) as usize));
            45
        }
        Tear::ZeroSector => {
            let sector = mid / SECTOR as u64 * SECTOR as u64;
            disk.edit(&path, |b| b[sector as usize..sector as usize + SECTOR].fill(0));
            // The first record the zeroed sector reaches into.
            let first_hit = frames(&before).into_iter().find(|f| f.is_record() && f.offset + f.frame_len() > sector).unwrap();
            assert!(first_hit.offset % BLOCK != 0, "the tear lies inside the batch, not on its boundary");
            first_hit.header.lsn.0
        }
    };
    assert!(cut > 31 && cut <= last, "the tear is in the last batch");
    let cut_at = record_frame(&before, cut).offset;
    let damaged_len = disk.read(&path).len() as u64;

    let wal = open(&disk, &dir).unwrap();
    let info = wal.recovery_info().clone();
    let expected = TornTail { segment: SegmentId(1), offset: cut_at, bytes_discarded: damaged_len - cut_at, found: TailEnd::Damaged };
    assert_eq!(info.torn_tail, Some(expected), "{tear:?}");
    assert_eq!(info.last_lsn, Lsn(cut - 1));
    assert_eq!(info.record_count, cut - 1);
    assert_records(&read_all(&wal), 1, cut - 1);
    assert_eq!(wal.next_lsn(), Lsn(cut), "the cut LSNs are handed out again");
    assert!(wal.segments().iter().all(|s| s.sealed), "recovery sealed the torn segment");
    append_synced(&wal, cut, cut + 4);
    wal.close().unwrap();

    // The cut is durable: later opens find the same records and no torn tail.
    assert_eq!(segment_ids(&disk, &dir), vec![1, 2], "appends after the cut go to a new segment");
    assert_intact(&disk, &dir, cut + 4);
    assert_intact(&disk, &dir, cut + 4);
}

both!(
    torn_tail_with_a_flipped_payload_bit_is_cut_fs,
    torn_tail_with_a_flipped_payload_bit_is_cut_sim,
    torn_tail_is_cut_to_last_valid_record,
    Tear::FlipPayload
);
both!(
    torn_tail_with_a_flipped_header_bit_is_cut_fs,
    torn_tail_with_a_flipped_header_bit_is_cut_sim,
    torn_tail_is_cut_to_last_valid_record,
    Tear::FlipHeader
);
both!(
    torn_tail_truncated_inside_a_payload_is_cut_fs,
    torn_tail_truncated_inside_a_payload_is_cut_sim,
    torn_tail_is_cut_to_last_valid_record,
    Tear::TruncateInRecord
);
both!(
    torn_tail_truncated_inside_a_header_is_cut_fs,
    torn_tail_truncated_inside_a_header_is_cut_sim,
    torn_tail_is_cut_to_last_valid_record,
    Tear::TruncateInHeader
);
both!(
    torn_tail_with_a_lost_sector_is_cut_fs,
    torn_tail_with_a_lost_sector_is_cut_sim,
    torn_tail_is_cut_to_last_valid_record,
    Tear::ZeroSector
);

/// A torn first record of the last batch: the cut falls on the batch's block boundary, which the
/// end frame then occupies.
fn torn_first_record_of_a_batch_is_cut_on_the_block_boundary<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    write_log(&disk, &dir, &[10, 10]);
    unseal(&disk, &dir);
    let path = seg(&dir, 1);
    let before = disk.read(&path);
    let first = record_frame(&before, 11);
    assert_eq!(first.offset % BLOCK, 0, "a batch starts on a block boundary");
    flip(&disk, &path, first.offset + first.frame_len() - 1, 7);
    let wal = open(&disk, &dir).unwrap();
    let torn = wal.recovery_info().torn_tail.expect("a torn tail");
    assert_eq!((torn.segment, torn.offset, torn.found), (SegmentId(1), first.offset, TailEnd::Damaged));
    assert_records(&read_all(&wal), 1, 10);
    append_synced(&wal, 11, 12);
    wal.close().unwrap();
    assert_intact(&disk, &dir, 12);
}

both!(
    torn_first_record_of_a_batch_is_cut_on_the_block_boundary_fs,
    torn_first_record_of_a_batch_is_cut_on_the_block_boundary_sim,
    torn_first_record_of_a_batch_is_cut_on_the_block_boundary
);

/// A real power cut on the simulated disk while the last batch is written but not yet synced:
/// the crash keeps a random subset of its sectors. For every seed, recovery returns every
/// acknowledged record, then an intact prefix of the unacknowledged batch, and nothing else;
/// where it cuts, the cut is at the end of that prefix and persists.
#[test]
fn crash_during_a_batch_keeps_acknowledged_records_and_cuts_the_rest() {
    let dir = Path::new("/sim/wal");
    let mut torn_seen = 0;
    for seed in 0..48u64 {
        let sim = SimStorage::new(seed, FaultConfig::default());
        let gated = Gated::new(sim.clone());
        let wal = SegmentedWal::open_with(gated.clone(), config(dir)).unwrap();
        append_synced(&wal, 1, 10);
        append_synced(&wal, 11, 20);
        gated.gate.shut();
        for lsn in 21..=50 {
            common::append(&wal, lsn);
        }
        let image = std::thread::scope(|s| {
            let waiter = s.spawn(|| wal.sync());
            gated.gate.wait_held();
            let image = sim.crash(seed);
            gated.gate.open();
            assert!(waiter.join().unwrap().is_err(), "the unsynced batch is never acknowledged");
            image
        });
        drop(wal);

        let bytes = image.read(&seg(dir, 1));
        let chain = frames(&bytes);
        let chain_end = chain.last().map_or(0, |f| f.offset + f.frame_len());
        let survived = chain.iter().filter(|f| f.is_record()).count() as u64;
        assert!(survived >= 20, "seed {seed}: the acknowledged batches are durable");

        let wal = open(&image, dir).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let info = wal.recovery_info().clone();
        assert_records(&read_all(&wal), 1, survived);
        match info.torn_tail {
            Some(torn) => {
                torn_seen += 1;
                assert_eq!((torn.segment, torn.offset), (SegmentId(1), chain_end), "seed {seed}: cut at the end of the intact prefix");
            }
            None => assert_eq!(chain_end % BLOCK, 0, "seed {seed}: an uncut log ends on a block boundary"),
        }
        append_synced(&wal, survived + 1, survived + 3);
        wal.close().unwrap();
        assert_intact(&image, dir, survived + 3);
    }
    assert!(torn_seen > 10, "most crashes tear the batch ({torn_seen} of 48 did)");
}

/// Batches that queued up behind a sync are written one after another and made durable by one
/// fdatasync after the last. A crash before it may keep a later batch of such a run and lose an
/// earlier one. The later batch's frames carry the watermark from before the run, so they do not
/// vouch for the lost batch: recovery cuts it as a torn tail and keeps every acknowledged record,
/// never reporting damage before durable records.
#[test]
fn a_crash_that_keeps_a_later_batch_of_a_shared_sync_but_not_an_earlier_one_cuts_a_torn_tail() {
    let dir = Path::new("/sim/wal");
    let mut c = config(dir);
    c.segment_bytes_target = 1 << 20;
    let sim = SimStorage::new(3, FaultConfig::default());
    let gated = Gated::new(sim.clone());
    let wal = SegmentedWal::open_with(gated.clone(), c.clone()).unwrap();
    append_synced(&wal, 1, 10);
    gated.gate.shut();
    common::append(&wal, 11);
    wal.request_sync(Lsn(11)).unwrap();
    gated.gate.wait_held();
    // Three records larger than a batch queue up as three batches behind the held sync.
    let ty = nodedb_wal::RecordType::optional(0x100);
    for lsn in 12..=14u8 {
        assert_eq!(wal.append(nodedb_wal::Record::new(ty, &[lsn; 20 * 1024])).unwrap(), Lsn(u64::from(lsn)));
    }
    wal.request_sync(Lsn(14)).unwrap();
    gated.gate.release_held();
    wal.wait_durable(Lsn(11)).unwrap();
    gated.gate.wait_held();
    let path = seg(dir, 1);
    let written = sim.read(&path);
    let images = [sim.crash(1), sim.crash(2)];
    gated.gate.open();
    assert!(wal.wait_durable(Lsn(14)).is_err(), "the crashed disk never syncs the run");
    drop(wal);

    let (first, second) = (record_frame(&written, 12), record_frame(&written, 13));
    let later: Vec<Frame> = frames(&written).into_iter().filter(|f| f.offset >= second.offset).collect();
    assert!(later.len() >= 4, "the later batches were written behind the first: {later:?}");
    assert!(later.iter().all(|f| f.header.durable_lsn <= Lsn(11)), "no frame of the run claims more than was durable before it");
    let tears = [("lost whole", first.offset..second.offset), ("torn after its first sector", first.offset + SECTOR as u64..second.offset)];
    for (image, (what, tear)) in images.into_iter().zip(tears) {
        let mut bytes = written.clone();
        bytes[tear.start as usize..tear.end as usize].fill(0);
        image.write(&path, &bytes);
        let wal = SegmentedWal::open_with(image, c.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let torn = wal.recovery_info().torn_tail.unwrap_or_else(|| panic!("{what}: no torn tail"));
        assert_eq!((torn.segment, torn.offset), (SegmentId(1), first.offset), "{what}");
        assert_records(&read_all(&wal), 1, 11);
        assert_eq!(wal.next_lsn(), Lsn(12), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// Damage before acknowledged records
// ---------------------------------------------------------------------------------------------

/// Twenty batches of ten records over three segments of 32 KiB.
fn three_segment_log<D: Disk>(disk: &D, dir: &Path) -> u64 {
    let last = write_log(disk, dir, &[10; 20]);
    assert!(segment_ids(disk, dir).len() >= 3, "the log spans several segments: {:?}", segment_ids(disk, dir));
    last
}

fn bit_flip_in_a_sealed_segment_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    for victim in [3, 15, 40] {
        let copy = dir.with_file_name(format!("copy-{victim}"));
        copy_dir(&disk, &dir, &copy);
        let (id, frame) = locate(&disk, &copy, victim);
        assert!(id < *segment_ids(&disk, &copy).last().unwrap(), "LSN {victim} is in a sealed segment");
        flip(&disk, &seg(&copy, id), frame.offset + HEADER_LEN as u64 + 10, 2);
        let err = open_err(&disk, &copy);
        let kind = assert_corruption(&err, id, frame.offset);
        assert!(matches!(kind, CorruptionKind::BadFrame | CorruptionKind::UnsealedSegment), "{kind:?}");
    }
    assert_intact(&disk, &dir, last);
}

both!(
    bit_flip_in_a_sealed_segment_is_corruption_fs,
    bit_flip_in_a_sealed_segment_is_corruption_sim,
    bit_flip_in_a_sealed_segment_is_corruption
);

/// A log of 24,000 records in batches of 1,000, written with segments of `segment_bytes`.
/// Returns the config and the last LSN.
fn large_log<D: Disk>(disk: &D, dir: &Path, segment_bytes: u64) -> (nodedb_wal::SegmentedWalConfig, u64) {
    let mut c = config(dir);
    c.segment_bytes_target = segment_bytes;
    c.batch_bytes_max = 256 << 10;
    let wal = SegmentedWal::open_with(disk.clone(), c.clone()).unwrap();
    let last = 24_000;
    for from in (1..=last).step_by(1000) {
        append_synced(&wal, from, from + 999);
    }
    wal.close().unwrap();
    (c, last)
}

/// A log whose first segment is sealed at 4 MiB or more: long enough that readers and recovery
/// hand it to a helper thread that reads and checks it ahead of them (where there is a second
/// core). Returns the config and the last LSN.
fn large_sealed_segment_log<D: Disk>(disk: &D, dir: &Path) -> (nodedb_wal::SegmentedWalConfig, u64) {
    let log = large_log(disk, dir, 4 << 20);
    assert!(segment_ids(disk, dir).len() >= 2, "segment 1 is sealed");
    log
}

/// Damage anywhere in a large sealed segment (a payload bit or a header bit in any of its
/// read-ahead windows, or the file cut short in a frame) is reported at its frame, as in a
/// small one; and intact, every record of it reads back.
fn damage_deep_in_a_large_sealed_segment_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let (c, last) = large_sealed_segment_log(&disk, &dir);
    let wal = SegmentedWal::open_with(disk.clone(), c.clone()).unwrap();
    assert_records(&read_all(&wal), 1, last);
    wal.close().unwrap();
    let bytes = disk.read(&seg(&dir, 1));
    let records: Vec<Frame> = frames(&bytes).into_iter().filter(Frame::is_record).collect();
    let near = |offset: u64| *records.iter().find(|f| f.offset >= offset).expect("a frame there");
    // In the second half of read-ahead windows (256 KiB), where the helper, checking each
    // window from its end, is the likelier to meet it; a payload byte or a header byte.
    let victims = (1..14u64).map(|k| (near(k * (256 << 10) + (150 << 10)), if k % 2 == 0 { HEADER_LEN as u64 + 5 } else { 9 }));
    for (n, (frame, at)) in victims.enumerate() {
        let copy = dir.with_file_name(format!("copy-{n}"));
        copy_dir(&disk, &dir, &copy);
        flip(&disk, &seg(&copy, 1), frame.offset + at, n as u32);
        let err = SegmentedWal::open_with(disk.clone(), nodedb_wal::SegmentedWalConfig { dir: copy.clone(), ..c.clone() }).unwrap_err();
        assert_corruption(&err, 1, frame.offset);
    }
    // Cut short inside a frame, past the first windows: reported at that frame.
    let cut = near(3 << 20);
    let copy = dir.with_file_name("copy-cut");
    copy_dir(&disk, &dir, &copy);
    disk.edit(&seg(&copy, 1), |b| b.truncate(cut.offset as usize + 30));
    let err = SegmentedWal::open_with(disk.clone(), nodedb_wal::SegmentedWalConfig { dir: copy, ..c }).unwrap_err();
    assert_corruption(&err, 1, cut.offset);
}

both!(
    damage_deep_in_a_large_sealed_segment_is_corruption_fs,
    damage_deep_in_a_large_sealed_segment_is_corruption_sim,
    damage_deep_in_a_large_sealed_segment_is_corruption
);

/// A log whose only segment holds 4 MiB or more and is still the one being written: long
/// enough that recovery, holding the directory lock, hands it to a helper thread that reads
/// it (O_DIRECT where the log was written so) and checks it ahead of the scan. Returns the
/// config and the last LSN.
fn large_newest_segment_log<D: Disk>(disk: &D, dir: &Path) -> (nodedb_wal::SegmentedWalConfig, u64) {
    let log = large_log(disk, dir, 64 << 20);
    assert_eq!(segment_ids(disk, dir), vec![1], "one segment, never sealed");
    log
}

/// In the newest segment, read with a helper: damage deep in it, before acknowledged batches,
/// is corruption at its frame; a tear in its last batch is cut at the same record as in a
/// small segment; intact, every record comes back.
fn damage_in_a_large_newest_segment_is_judged_as_in_a_small_one<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let (c, last) = large_newest_segment_log(&disk, &dir);
    let at = |copy: &Path| nodedb_wal::SegmentedWalConfig { dir: copy.to_path_buf(), ..c.clone() };
    let bytes = disk.read(&seg(&dir, 1));
    let records: Vec<Frame> = frames(&bytes).into_iter().filter(Frame::is_record).collect();
    let near = |offset: u64| *records.iter().find(|f| f.offset >= offset).expect("a frame there");
    for (n, k) in [3u64, 6, 11].into_iter().enumerate() {
        let frame = near(k * (256 << 10) + (150 << 10));
        let copy = dir.with_file_name(format!("copy-{n}"));
        copy_dir(&disk, &dir, &copy);
        flip(&disk, &seg(&copy, 1), frame.offset + HEADER_LEN as u64 + 5, n as u32);
        let err = SegmentedWal::open_with(disk.clone(), at(&copy)).unwrap_err();
        assert_corruption(&err, 1, frame.offset);
    }
    let victim = *records.iter().rev().nth(300).expect("a frame of the last batch");
    let copy = dir.with_file_name("copy-torn");
    copy_dir(&disk, &dir, &copy);
    disk.edit(&seg(&copy, 1), |b| b.truncate(victim.offset as usize + HEADER_LEN + 7));
    let wal = SegmentedWal::open_with(disk.clone(), at(&copy)).unwrap();
    let cut = victim.header.lsn.0;
    assert_eq!(wal.recovery_info().torn_tail.map(|t| t.offset), Some(victim.offset));
    assert_records(&read_all(&wal), 1, cut - 1);
    drop(wal);
    let wal = SegmentedWal::open_with(disk.clone(), c).unwrap();
    assert_eq!(wal.recovery_info().torn_tail, None);
    assert_records(&read_all(&wal), 1, last);
}

both!(
    damage_in_a_large_newest_segment_is_judged_as_in_a_small_one_fs,
    damage_in_a_large_newest_segment_is_judged_as_in_a_small_one_sim,
    damage_in_a_large_newest_segment_is_judged_as_in_a_small_one
);

/// Damage in the last segment followed by batches written after it was synced: the later
/// batches' frames say the damaged LSN was durable, so this is not a torn tail.
fn bit_flip_before_acknowledged_batches_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10; 5]);
    assert_eq!(segment_ids(&disk, &dir), vec![1]);
    for victim in [1, 10, 15, 33, 40] {
        let copy = dir.with_file_name(format!("copy-{victim}"));
        copy_dir(&disk, &dir, &copy);
        let frame = record_frame(&disk.read(&seg(&copy, 1)), victim);
        flip(&disk, &seg(&copy, 1), frame.offset + HEADER_LEN as u64 + 1, 4);
        let err = open_err(&disk, &copy);
        match assert_corruption(&err, 1, frame.offset) {
            CorruptionKind::DamageBeforeDurableRecords { lost_from, durable_claimed } => {
                assert_eq!(lost_from, Lsn(victim));
                assert!(durable_claimed >= lost_from && durable_claimed <= Lsn(last), "{durable_claimed}");
            }
            kind => panic!("LSN {victim}: {kind:?}"),
        }
        // A look beside a writer finds the same, its check past the page cache included.
        let looked = nodedb_wal::recovery::inspect_dir(&disk, &copy, None).expect_err("a look at a damaged log");
        assert_eq!(looked.to_string(), err.to_string(), "LSN {victim}");
    }
    // The same flip in the last batch is a torn tail once the close's seal is gone (a power cut
    // before it): nothing after it says it was durable.
    unseal(&disk, &dir);
    let frame = record_frame(&disk.read(&seg(&dir, 1)), 45);
    flip(&disk, &seg(&dir, 1), frame.offset + HEADER_LEN as u64 + 1, 4);
    let wal = open(&disk, &dir).unwrap();
    assert_eq!(wal.recovery_info().torn_tail.map(|t| t.offset), Some(frame.offset));
    assert_records(&read_all(&wal), 1, 44);
}

both!(
    bit_flip_before_acknowledged_batches_is_corruption_fs,
    bit_flip_before_acknowledged_batches_is_corruption_sim,
    bit_flip_before_acknowledged_batches_is_corruption
);

/// A later frame whose claim is exactly the lost LSN (the last batch, written once the batch
/// before it was durable, claims that batch's last record) is enough to make the damage
/// corruption: that record was acknowledged. Cut as a torn tail, it and everything after it
/// would vanish without a word.
fn damage_to_exactly_the_lsn_a_later_frame_claims_durable_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    write_log(&disk, &dir, &[10; 5]);
    unseal(&disk, &dir);
    let bytes = disk.read(&seg(&dir, 1));
    let claims: Vec<Lsn> =
        frames(&bytes).iter().filter(|f| f.is_record() && f.header.lsn > Lsn(40)).map(|f| f.header.durable_lsn).collect();
    assert_eq!(claims.iter().max(), Some(&Lsn(40)), "the last batch claims exactly the batch before it");
    let frame = record_frame(&bytes, 40);
    flip(&disk, &seg(&dir, 1), frame.offset + HEADER_LEN as u64 + 1, 4);
    let err = open_err(&disk, &dir);
    let kind = CorruptionKind::DamageBeforeDurableRecords { lost_from: Lsn(40), durable_claimed: Lsn(40) };
    assert_eq!(assert_corruption(&err, 1, frame.offset), kind);
}

/// A sealed segment whose last records say their group goes on (no writer leaves one: a group
/// never spans segments, and an end frame follows whole batches) is corruption at open, never a
/// log quietly shorter by the group: the end frame vouches for every record before it.
fn a_sealed_segment_ending_inside_a_group_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10; 5]);
    assert_eq!(segment_ids(&disk, &dir), vec![1]);
    disk.edit(&seg(&dir, 1), |bytes| {
        for lsn in [last - 1, last] {
            let frame = record_frame(bytes, lsn);
            let at = frame.offset as usize;
            let span = &mut bytes[at..at + frame.frame_len() as usize];
            RecordHeader { flags: frame.header.flags | FLAG_GROUP_CONTINUES, ..frame.header }.encode_into(&mut span[..HEADER_LEN]);
            seal_frame(span, frame.header.record_type);
        }
    });
    let err = open_err(&disk, &dir);
    assert!(matches!(err, WalError::Corruption { segment: SegmentId(1), kind: CorruptionKind::IncompleteGroup, .. }), "{err:?}");
}

both!(
    a_sealed_segment_ending_inside_a_group_is_corruption_fs,
    a_sealed_segment_ending_inside_a_group_is_corruption_sim,
    a_sealed_segment_ending_inside_a_group_is_corruption
);

both!(
    damage_to_exactly_the_lsn_a_later_frame_claims_durable_is_corruption_fs,
    damage_to_exactly_the_lsn_a_later_frame_claims_durable_is_corruption_sim,
    damage_to_exactly_the_lsn_a_later_frame_claims_durable_is_corruption
);

/// Byte positions to damage in a frame: every header byte, and a sample of the payload that
/// includes its first and last byte.
fn positions(frame: &Frame) -> Vec<u64> {
    let header = 0..HEADER_LEN as u64;
    let payload = (HEADER_LEN as u64..frame.frame_len()).step_by(11).chain([frame.frame_len() - 1]);
    header.chain(payload).map(|p| frame.offset + p).collect()
}

/// A flip of any byte of a record or of the end frame of a sealed segment is caught, and
/// reported at that frame.
fn every_byte_of_a_sealed_frame_is_checked<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let bytes = disk.read(&seg(&dir, 1));
    let all = frames(&bytes);
    let record = record_frame(&bytes, 7);
    let end = *all.iter().find(|f| f.header.record_type == nodedb_wal::RecordType::SEGMENT_END).expect("segment 1 is sealed");
    let mut trials = 0;
    for frame in [record, end] {
        for (n, at) in positions(&frame).into_iter().enumerate() {
            let copy = dir.with_file_name(format!("copy-{}-{n}", frame.offset));
            copy_dir(&disk, &dir, &copy);
            flip(&disk, &seg(&copy, 1), at, n as u32);
            let err = open_err(&disk, &copy);
            assert_corruption(&err, 1, frame.offset);
            trials += 1;
        }
    }
    assert!(trials > 60);
    assert_intact(&disk, &dir, last);
}

both!(every_byte_of_a_sealed_frame_is_checked_fs, every_byte_of_a_sealed_frame_is_checked_sim, every_byte_of_a_sealed_frame_is_checked);

/// Damage to the identity of a sealed segment (magic, version, cipher, header frame) is an
/// error of that segment, never a reason to skip it.
fn damaged_head_of_a_sealed_segment_is_an_error<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    // The preamble's magic, version, cipher and reserved byte, then the whole header frame.
    let checked = (0..8).chain(PREAMBLE_SIZE as u64..(PREAMBLE_SIZE + HEADER_LEN + 40) as u64);
    for at in checked {
        let copy = dir.with_file_name(format!("copy-{at}"));
        copy_dir(&disk, &dir, &copy);
        flip(&disk, &seg(&copy, 2), at, at as u32);
        match open_err(&disk, &copy) {
            WalError::UnsupportedVersion { segment, .. } | WalError::UnsupportedCipher { segment, .. } => {
                assert!((4..7).contains(&at), "byte {at}");
                assert_eq!(segment, SegmentId(2));
            }
            err => assert_eq!(assert_corruption(&err, 2, 0), CorruptionKind::BadSegmentHeader, "byte {at}"),
        }
    }
}

both!(
    damaged_head_of_a_sealed_segment_is_an_error_fs,
    damaged_head_of_a_sealed_segment_is_an_error_sim,
    damaged_head_of_a_sealed_segment_is_an_error
);

/// The newest segment's head damaged while acknowledged batches follow in it: this is not a
/// roll that a crash interrupted, so the segment is reported, not removed.
fn damaged_head_of_the_newest_segment_with_acknowledged_batches_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10; 5]);
    assert_eq!(segment_ids(&disk, &dir), vec![1]);
    for at in (0..4).chain((PREAMBLE_SIZE as u64..(PREAMBLE_SIZE + HEADER_LEN + 40) as u64).step_by(3)) {
        assert_head_damage_is_kept(&disk, &dir, &format!("byte {at}"), |copy| flip(&disk, &seg(copy, 1), at, at as u32));
    }
    assert_intact(&disk, &dir, last);
}

/// Damages a copy of a one-segment log with `damage` (given the copy's directory) and asserts
/// that opening it reports the head of segment 1 as corrupt and leaves the segment in place.
fn assert_head_damage_is_kept<D: Place>(disk: &D, dir: &Path, what: &str, damage: impl FnOnce(&Path)) {
    let copy = dir.with_file_name(format!("copy-{}", what.replace(' ', "-")));
    copy_dir(disk, dir, &copy);
    damage(&copy);
    let err = open_err(disk, &copy);
    assert_eq!(assert_corruption(&err, 1, 0), CorruptionKind::BadSegmentHeader, "{what}");
    assert_eq!(segment_ids(disk, &copy), vec![1], "{what}: the damaged segment stays for inspection");
}

both!(
    damaged_head_of_the_newest_segment_with_acknowledged_batches_is_corruption_fs,
    damaged_head_of_the_newest_segment_with_acknowledged_batches_is_corruption_sim,
    damaged_head_of_the_newest_segment_with_acknowledged_batches_is_corruption
);

/// As above with the head zeroed, and no manifest to vouch for the segment (a log made before
/// manifests existed): the batches after it still claim durable records, so this is damage,
/// not a roll a crash cut short, and the segment stays. Found by an adversarial review: a
/// zeroed head was taken for an interrupted roll and the segment removed.
fn zeroed_head_of_the_newest_segment_with_acknowledged_batches_is_corruption_without_a_manifest<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10; 5]);
    for zeroed in [PREAMBLE_SIZE + HEADER_LEN, BLOCK as usize] {
        assert_head_damage_is_kept(&disk, &dir, &format!("{zeroed} bytes zeroed"), |copy| {
            disk.delete(&copy.join(MANIFEST_FILE));
            disk.edit(&seg(copy, 1), |b| b[..zeroed].fill(0));
        });
    }
    assert_intact(&disk, &dir, last);
}

both!(
    zeroed_head_of_the_newest_segment_is_corruption_without_a_manifest_fs,
    zeroed_head_of_the_newest_segment_is_corruption_without_a_manifest_sim,
    zeroed_head_of_the_newest_segment_with_acknowledged_batches_is_corruption_without_a_manifest
);

/// A newest segment whose only batch was acknowledged, in a log without a manifest: none of
/// its frames claims more than the segments before it did, so only its head's sector tells it
/// from a roll a crash cut short. A byte flipped in the preamble (which no checksum covers)
/// or in the header frame made recovery take it for an interrupted roll and remove it, its
/// acknowledged records with it. Found by an adversarial review; `first_block.rs` sweeps
/// every byte of the first block.
fn damaged_head_of_a_newest_segment_with_one_acknowledged_batch_is_corruption_without_a_manifest<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10]);
    // The magic, the key id and the nonce epoch (a plaintext segment's are zero), a byte of
    // the header frame.
    for (at, xor) in [(0, 0x01), (8, 0x80), (12, 0xFF), (PREAMBLE_SIZE + 20, 0x01)] {
        assert_head_damage_is_kept(&disk, &dir, &format!("byte {at} xor {xor}"), |copy| {
            disk.delete(&copy.join(MANIFEST_FILE));
            disk.edit(&seg(copy, 1), |b| b[at] ^= xor);
        });
    }
    assert_intact(&disk, &dir, last);
}

both!(
    damaged_head_of_a_newest_segment_with_one_acknowledged_batch_is_corruption_without_a_manifest_fs,
    damaged_head_of_a_newest_segment_with_one_acknowledged_batch_is_corruption_without_a_manifest_sim,
    damaged_head_of_a_newest_segment_with_one_acknowledged_batch_is_corruption_without_a_manifest
);

/// As above with the padding frame after the header frame damaged: its header lies in the
/// head's sector too, which a crash writes whole or not at all, yet recovery cut the segment
/// there as a torn tail and dropped its only, acknowledged batch. Found by the sweep in
/// `first_block.rs`.
fn damaged_padding_frame_in_the_first_block_is_corruption_without_a_manifest<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10]);
    let padding = PREAMBLE_SIZE + HEADER_LEN + 40;
    for at in [padding, padding + 6, padding + HEADER_LEN - 1] {
        let copy = dir.with_file_name(format!("copy-padding-{at}"));
        copy_dir(&disk, &dir, &copy);
        disk.delete(&copy.join(MANIFEST_FILE));
        disk.edit(&seg(&copy, 1), |b| b[at] ^= 0x80);
        let damaged = disk.read(&seg(&copy, 1));
        let err = open_err(&disk, &copy);
        assert_eq!(assert_corruption(&err, 1, padding as u64), CorruptionKind::BadFrame, "byte {at}");
        assert_eq!(segment_ids(&disk, &copy), vec![1], "byte {at}");
        assert!(disk.read(&seg(&copy, 1)) == damaged, "byte {at}: the segment is left as it was");
    }
    assert_intact(&disk, &dir, last);
}

both!(
    damaged_padding_frame_in_the_first_block_is_corruption_without_a_manifest_fs,
    damaged_padding_frame_in_the_first_block_is_corruption_without_a_manifest_sim,
    damaged_padding_frame_in_the_first_block_is_corruption_without_a_manifest
);

// ---------------------------------------------------------------------------------------------
// Missing, truncated, renamed and half-created segments
// ---------------------------------------------------------------------------------------------

fn truncated_sealed_segment_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let bytes = disk.read(&seg(&dir, 1));
    let record = record_frame(&bytes, 12);
    // Inside a record, on a block boundary (a whole batch lost), after the header block only.
    let cases = [(record.offset + 30, record.offset, None), (2 * BLOCK, 2 * BLOCK, None), (BLOCK, BLOCK, None), (0, 0, Some(()))];
    for (len, reported_at, empty) in cases {
        let copy = dir.with_file_name(format!("copy-{len}"));
        copy_dir(&disk, &dir, &copy);
        disk.edit(&seg(&copy, 1), |b| b.truncate(len as usize));
        let err = open_err(&disk, &copy);
        let kind = assert_corruption(&err, 1, reported_at);
        match empty {
            Some(()) => assert_eq!(kind, CorruptionKind::BadSegmentHeader),
            None => assert!(matches!(kind, CorruptionKind::UnsealedSegment | CorruptionKind::BadFrame), "{kind:?}"),
        }
    }
    assert_intact(&disk, &dir, last);
}

both!(truncated_sealed_segment_is_corruption_fs, truncated_sealed_segment_is_corruption_sim, truncated_sealed_segment_is_corruption);

// Found by a review: an empty segment between others was reported as "the segment's header
// frame is damaged although the segment holds records"; an empty file holds neither.
fn an_empty_middle_segment_is_reported_without_a_claim_that_it_holds_records<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let copy = dir.with_file_name("copy-empty");
    copy_dir(&disk, &dir, &copy);
    disk.edit(&seg(&copy, 2), Vec::clear);
    let err = open_err(&disk, &copy);
    assert_eq!(assert_corruption(&err, 2, 0), CorruptionKind::BadSegmentHeader);
    let message = err.to_string();
    assert!(message.contains("segment 2 at offset 0: the segment has no valid header frame (the file is empty or too short"), "{message}");
    assert!(!message.contains("holds records"), "{message}");
    assert_intact(&disk, &dir, last);
}

both!(
    an_empty_middle_segment_is_reported_without_a_claim_that_it_holds_records_fs,
    an_empty_middle_segment_is_reported_without_a_claim_that_it_holds_records_sim,
    an_empty_middle_segment_is_reported_without_a_claim_that_it_holds_records
);

// Found by an adversarial review: recovery listed regular files only, so an oldest segment
// moved to another disk and linked back was taken for a truncated one, and its records
// silently left the log.
#[test]
fn a_segment_linked_in_from_elsewhere_is_read_not_taken_for_truncated() {
    let (disk, dir, tmp) = FsStorage::fresh();
    let last = three_segment_log(&disk, &dir);
    let moved = tmp.as_ref().unwrap().path().join("elsewhere");
    std::fs::rename(seg(&dir, 1), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, seg(&dir, 1)).unwrap();
    assert_intact(&disk, &dir, last);
    std::fs::remove_file(&moved).unwrap();
    assert!(matches!(open_err(&disk, &dir), WalError::Io { .. }), "a dangling link is an error, not a truncation");
}

// Found by a review: a look beside the writer (`ReadOnlyWal`, the tool) took a segment name
// that opens to nothing (a link whose target is gone) for a segment the writer's truncation
// had just taken, listed and scanned the whole log nine times over, and then reported
// `SegmentTruncated` ("truncated while a reader still needed it"): the wrong file problem, and
// the tool printed its usage text after it. The name is still there, so nothing truncated it.
#[test]
fn a_dangling_link_under_a_segment_name_is_an_open_error_naming_it_for_a_look_and_a_reader_too() {
    let (disk, dir, tmp) = FsStorage::fresh();
    let last = three_segment_log(&disk, &dir);
    let wal = SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap();
    let moved = tmp.as_ref().unwrap().path().join("elsewhere");
    std::fs::rename(seg(&dir, 2), &moved).unwrap();
    std::os::unix::fs::symlink(tmp.as_ref().unwrap().path().join("gone"), seg(&dir, 2)).unwrap();
    let named = |err: WalError| match err {
        WalError::Io { source, path, .. } if source.kind() == std::io::ErrorKind::NotFound && path == seg(&dir, 2) => {}
        other => panic!("expected the open of {} to fail, got {other:?}", seg(&dir, 2).display()),
    };
    named(nodedb_wal::ReadOnlyWal::open(&dir, None).unwrap_err());
    named(nodedb_wal::recovery::inspect_dir(&disk, &dir, None).unwrap_err());
    let reader = wal.read_from(Lsn(1)).unwrap().find_map(Result::err).expect("the reader stops at segment 2");
    named(reader);
    std::fs::remove_file(seg(&dir, 2)).unwrap();
    std::fs::rename(&moved, seg(&dir, 2)).unwrap();
    drop(wal);
    assert_intact(&disk, &dir, last);
}

fn removed_middle_segment_is_reported_missing<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    disk.delete(&seg(&dir, 2));
    assert!(matches!(open_err(&disk, &dir), WalError::MissingSegment { missing: SegmentId(2), why: MissingBecause::Hole, .. }));
}

both!(
    removed_middle_segment_is_reported_missing_fs,
    removed_middle_segment_is_reported_missing_sim,
    removed_middle_segment_is_reported_missing
);

// Found by review: with no record of which segment is the newest, a log whose newest segments
// were removed recovered cleanly to an older end, acknowledged records gone without a word.
fn removed_newest_segments_are_reported_missing<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let ids = segment_ids(&disk, &dir);
    let newest = *ids.last().unwrap();
    disk.delete(&seg(&dir, newest));
    let named = MissingBecause::Manifest { named: SegmentId(newest) };
    assert!(matches!(open_err(&disk, &dir), WalError::MissingSegment { missing, why, .. } if missing == SegmentId(newest) && why == named));
    disk.delete(&seg(&dir, newest - 1));
    assert!(matches!(open_err(&disk, &dir), WalError::MissingSegment { missing, .. } if missing == SegmentId(newest - 1)));
    for id in &ids[..ids.len() - 2] {
        disk.delete(&seg(&dir, *id));
    }
    assert!(matches!(open_err(&disk, &dir), WalError::MissingSegment { missing: SegmentId(1), .. }), "every segment removed");
}

both!(
    removed_newest_segments_are_reported_missing_fs,
    removed_newest_segments_are_reported_missing_sim,
    removed_newest_segments_are_reported_missing
);

/// A newest segment whose head is blank is an interrupted roll (removed) unless the manifest
/// says a batch of it was durable: then its head was too, and the blank head is damage.
fn a_blank_head_on_a_segment_the_manifest_vouches_for_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    disk.edit(&seg(&dir, newest), |b| b.iter_mut().for_each(|byte| *byte = 0));
    let err = open_err(&disk, &dir);
    assert_eq!(assert_corruption(&err, newest, 0), CorruptionKind::BadSegmentHeader);
}

both!(
    a_blank_head_on_a_vouched_segment_is_corruption_fs,
    a_blank_head_on_a_vouched_segment_is_corruption_sim,
    a_blank_head_on_a_segment_the_manifest_vouches_for_is_corruption
);

/// The manifest names a segment once its first batch is durable. A newest segment that
/// recovery would leave without a record (its only batch damaged from its first record on, or
/// the file cut after its head) lost acknowledged records: corruption, not a torn tail. Found
/// by an adversarial review: the batch was cut without a word. (Damage further into that
/// batch, leaving some of its records, is the blind spot DURABILITY.md names: it reads as a
/// torn last batch.)
fn a_vouched_newest_segment_left_without_records_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = write_log(&disk, &dir, &[10]);
    // The batch as a power cut before the close's seal leaves it (with the seal, damage in it
    // is `DamageBeforeDurableRecords`, tests/close_seal.rs).
    unseal(&disk, &dir);
    let first_payload_byte = record_frame(&disk.read(&seg(&dir, 1)), 1).offset as usize + HEADER_LEN;
    let damaged_copy = |what: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let copy = dir.with_file_name(format!("copy-{}", what.len()));
        copy_dir(&disk, &dir, &copy);
        disk.edit(&seg(&copy, 1), edit);
        let err = open_err(&disk, &copy);
        assert_eq!(assert_corruption(&err, 1, BLOCK), CorruptionKind::BadFrame, "{what}");
    };
    damaged_copy("a payload byte flipped", &|b| b[first_payload_byte + 2] ^= 0x10);
    damaged_copy("cut after the head", &|b| b.truncate(BLOCK as usize));
    assert_intact(&disk, &dir, last);
}

both!(
    a_vouched_newest_segment_left_without_records_is_corruption_fs,
    a_vouched_newest_segment_left_without_records_is_corruption_sim,
    a_vouched_newest_segment_left_without_records_is_corruption
);

/// `MANIFEST` is created whole and updated one slot at a time, so losing one slot is what a
/// torn update leaves (the other one answers), while losing both is damage: reported, and the
/// log left as it is until the file is removed.
fn a_manifest_without_an_intact_slot_is_refused_until_removed<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let manifest = dir.join(MANIFEST_FILE);
    let intact = disk.read(&manifest);
    let in_slot = |slot: usize| (slot * SLOT_SPACING + 17) as u64;

    flip(&disk, &manifest, in_slot(0), 3);
    assert_intact(&disk, &dir, last);
    disk.write(&manifest, &intact);
    flip(&disk, &manifest, in_slot(1), 3);
    assert_intact(&disk, &dir, last);

    let others = |disk: &D| {
        let names = disk.names(&dir).into_iter().filter(|n| n != MANIFEST_FILE);
        names.map(|n| (disk.read(&dir.join(&n)), n)).collect::<Vec<_>>()
    };
    let before = others(&disk);
    type Damage = fn(&mut Vec<u8>);
    let damaged: [(&str, Damage); 3] = [
        ("both slots flipped", |b| [0, 1].iter().for_each(|&s| b[s * SLOT_SPACING + 17] ^= 8)),
        ("emptied", |b| b.clear()),
        ("cut inside its first slot", |b| b.truncate(SLOT_LEN / 2)),
    ];
    for (how, damage) in damaged {
        disk.write(&manifest, &intact);
        disk.edit(&manifest, damage);
        match open_err(&disk, &dir) {
            WalError::ManifestDamaged { path } => assert_eq!(path, manifest, "{how}"),
            other => panic!("{how}: expected ManifestDamaged, got {other:?}"),
        }
        assert!(others(&disk) == before, "{how}: the refused open changed a file");
    }

    disk.delete(&manifest);
    assert_intact(&disk, &dir, last);
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    disk.delete(&seg(&dir, newest));
    let err = open_err(&disk, &dir);
    assert!(
        matches!(err, WalError::MissingSegment { missing, .. } if missing == SegmentId(newest)),
        "the new manifest vouches again: {err:?}"
    );
}

both!(
    a_manifest_without_an_intact_slot_is_refused_until_removed_fs,
    a_manifest_without_an_intact_slot_is_refused_until_removed_sim,
    a_manifest_without_an_intact_slot_is_refused_until_removed
);

/// A manifest is written under a temporary name and renamed into place; one left behind by a
/// creation a crash cut short is replaced, and never taken for the manifest.
fn a_half_created_manifest_is_written_again<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let manifest = dir.join(MANIFEST_FILE);
    assert!(!disk.names(&dir).contains(&MANIFEST_TEMP_FILE.to_string()), "no temporary file stays after a creation");
    disk.delete(&manifest);
    disk.write(&dir.join(MANIFEST_TEMP_FILE), &[0xAB; SLOT_LEN / 2]);
    assert_intact(&disk, &dir, last);
    let names = disk.names(&dir);
    assert!(names.contains(&MANIFEST_FILE.to_string()) && !names.contains(&MANIFEST_TEMP_FILE.to_string()), "{names:?}");
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    assert_eq!(ManifestSlot::current(&disk.read(&manifest)).map(|s| s.newest), Some(SegmentId(newest)));
}

both!(a_half_created_manifest_is_written_again_fs, a_half_created_manifest_is_written_again_sim, a_half_created_manifest_is_written_again);

/// The power cut at every step of an open that creates the manifest (a log that has none, as
/// one made before it existed) leaves a log that opens with every record, never a manifest
/// refused as damaged; and the manifest the open after that writes vouches for the newest
/// segment.
#[test]
fn a_power_cut_while_the_manifest_is_created_leaves_a_log_that_opens() {
    let dir = Path::new("/wal");
    let mut opened_whole = false;
    for budget in 0..64 {
        let sim = SimStorage::new(budget, FaultConfig::default());
        let last = three_segment_log(&sim, dir);
        sim.delete(&dir.join(MANIFEST_FILE));
        let faulty = FaultyStorage::new(sim.clone());
        faulty.cut_power_after(budget);
        let first = SegmentedWal::open_with(faulty, config(dir));
        opened_whole |= first.is_ok();
        drop(first);
        let after = sim.crash(budget * 31 + 7);
        assert_intact(&after, dir, last);
        let newest = *segment_ids(&after, dir).last().unwrap();
        let manifest = ManifestSlot::current(&after.read(&dir.join(MANIFEST_FILE)));
        assert_eq!(manifest.map(|m| m.newest), Some(SegmentId(newest)), "budget {budget}");
        if opened_whole {
            return;
        }
    }
    panic!("no open finished within the budgets tried");
}

fn swapped_segments_are_an_identity_mismatch<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let tmp = dir.join("swap");
    disk.move_file(&seg(&dir, 1), &tmp);
    disk.move_file(&seg(&dir, 2), &seg(&dir, 1));
    disk.move_file(&tmp, &seg(&dir, 2));
    let err = open_err(&disk, &dir);
    assert_eq!(assert_corruption(&err, 1, 0), CorruptionKind::IdentityMismatch { header_id: SegmentId(2) });
    // A look without the lock (a tool beside a possible writer) first takes a header naming a
    // later segment for the writer reusing the file, and looks again; once its looks are
    // used up it reports the damage, not a truncation. Found by an adversarial review.
    let err = nodedb_wal::recovery::inspect_dir(&disk, &dir, None).unwrap_err();
    assert_eq!(assert_corruption(&err, 1, 0), CorruptionKind::IdentityMismatch { header_id: SegmentId(2) });
}

both!(
    swapped_segments_are_an_identity_mismatch_fs,
    swapped_segments_are_an_identity_mismatch_sim,
    swapped_segments_are_an_identity_mismatch
);

/// A storage whose first `misses` listings leave out one name, as a listing of a large
/// directory read in several calls can leave out a segment truncation removed meanwhile.
struct HoleyListing<S> {
    inner: S,
    hidden: String,
    misses: AtomicU32,
}

impl<S: Storage> Storage for HoleyListing<S> {
    type File = S::File;
    type Lock = S::Lock;

    pass_through_dir_ops!();

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names = self.inner.list(dir)?;
        if self.misses.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(1)).is_ok() {
            names.retain(|n| *n != self.hidden);
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<S::File> {
        self.inner.open(path, mode)
    }
}

// Found by an adversarial review: a look beside a writer truncating a large directory saw a
// hole where a listing read in several calls missed a segment removed meanwhile, and reported
// `MissingSegment` for a healthy log. Looks now list again; a hole still there at the last
// look is reported.
fn a_look_lists_again_past_a_hole_only_a_racing_listing_saw<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    let name = seg(&dir, 2).file_name().unwrap().to_str().unwrap().to_owned();
    let holey = |misses| HoleyListing { inner: disk.clone(), hidden: name.clone(), misses: AtomicU32::new(misses) };
    let info = nodedb_wal::recovery::inspect_dir(&holey(3), &dir, None).unwrap();
    assert_eq!((info.first_lsn, info.last_lsn), (Lsn(1), Lsn(last)));
    let err = nodedb_wal::recovery::inspect_dir(&holey(u32::MAX), &dir, None).unwrap_err();
    assert!(matches!(err, WalError::MissingSegment { missing: SegmentId(2), .. }), "{err:?}");
}

both!(
    a_look_lists_again_past_a_hole_only_a_racing_listing_saw_fs,
    a_look_lists_again_past_a_hole_only_a_racing_listing_saw_sim,
    a_look_lists_again_past_a_hole_only_a_racing_listing_saw
);

/// A segment of another log under the right id does not continue this log's LSNs.
fn segment_of_another_log_is_an_lsn_gap<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let other = dir.with_file_name("other");
    write_log(&disk, &other, &[13; 20]);
    let ours = disk.read(&seg(&dir, 2));
    let theirs = disk.read(&seg(&other, 2));
    let first_lsn = |bytes: &[u8]| frames(bytes)[0].header.lsn;
    assert_ne!(first_lsn(&ours), first_lsn(&theirs));
    disk.write(&seg(&dir, 2), &theirs);
    let err = open_err(&disk, &dir);
    let kind = CorruptionKind::LsnGap { expected: first_lsn(&ours), found: first_lsn(&theirs) };
    assert_eq!(assert_corruption(&err, 2, 0), kind);
}

both!(segment_of_another_log_is_an_lsn_gap_fs, segment_of_another_log_is_an_lsn_gap_sim, segment_of_another_log_is_an_lsn_gap);

/// Inside a segment, a frame whose checksum holds but whose LSN is not the next one (a repeat of
/// the one before, or a jump ahead) is corruption where it stands, never a record: a chain that
/// took it would hand out two records under one LSN, or none under some.
fn a_checksummed_record_out_of_lsn_order_inside_a_segment_is_corruption<D: Place>() {
    for (name, wrong) in [("repeat", 1), ("gap", 7)] {
        let (disk, dir, _tmp) = D::fresh();
        three_segment_log(&disk, &dir);
        let path = seg(&dir, 1);
        let mut bytes = disk.read(&path);
        let frame = record_frame(&bytes, 2);
        let at = frame.offset as usize;
        RecordHeader { lsn: Lsn(wrong), ..frame.header }.encode_into(&mut bytes[at..at + HEADER_LEN]);
        seal_frame(&mut bytes[at..at + frame.frame_len() as usize], frame.header.record_type);
        assert_eq!(decode_frame(&bytes[at..]).map(|h| h.lsn), Ok(Lsn(wrong)), "{name}: the checksum holds");
        disk.write(&path, &bytes);
        let err = open_err(&disk, &dir);
        assert_corruption(&err, 1, frame.offset);
    }
}

both!(
    a_checksummed_record_out_of_lsn_order_inside_a_segment_is_corruption_fs,
    a_checksummed_record_out_of_lsn_order_inside_a_segment_is_corruption_sim,
    a_checksummed_record_out_of_lsn_order_inside_a_segment_is_corruption
);

/// Renaming the newest segment to the next id leaves a hole where it was.
fn segment_renamed_past_the_end_leaves_a_missing_segment<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    disk.move_file(&seg(&dir, newest), &seg(&dir, newest + 1));
    assert!(matches!(open_err(&disk, &dir), WalError::MissingSegment { missing, .. } if missing == SegmentId(newest)));
}

both!(
    segment_renamed_past_the_end_leaves_a_missing_segment_fs,
    segment_renamed_past_the_end_leaves_a_missing_segment_sim,
    segment_renamed_past_the_end_leaves_a_missing_segment
);

/// A stray file named like a far-off segment leaves a hole before it: the error names the file,
/// so that the operator can tell a stray from lost segments, and the log's files stay as they
/// were.
fn a_stray_file_named_like_a_far_off_segment_is_named_in_the_error<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    three_segment_log(&disk, &dir);
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    let before: Vec<_> = segment_ids(&disk, &dir).iter().map(|&id| disk.read(&seg(&dir, id))).collect();
    disk.write(&seg(&dir, 99), b"hi");
    let err = open_err(&disk, &dir);
    assert!(
        matches!(err, WalError::MissingSegment { missing, next_present: Some(SegmentId(99)), why: MissingBecause::Hole } if missing == SegmentId(newest + 1)),
        "{err:?}"
    );
    assert!(err.to_string().contains(&segment::file_name(SegmentId(99))), "{err}");
    let after: Vec<_> = segment_ids(&disk, &dir).iter().filter(|&&id| id != 99).map(|&id| disk.read(&seg(&dir, id))).collect();
    assert_eq!(before, after, "a refused open changes no segment");
}

both!(
    a_stray_file_named_like_a_far_off_segment_is_named_in_the_error_fs,
    a_stray_file_named_like_a_far_off_segment_is_named_in_the_error_sim,
    a_stray_file_named_like_a_far_off_segment_is_named_in_the_error
);

/// A copy of an old segment under the next id (a botched restore) is not read as new records.
fn stray_copy_under_the_next_id_is_an_identity_mismatch<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    assert_intact(&disk, &dir, last); // seals the newest segment
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    disk.write(&seg(&dir, newest + 1), &disk.read(&seg(&dir, 2)));
    let err = open_err(&disk, &dir);
    assert_eq!(assert_corruption(&err, newest + 1, 0), CorruptionKind::IdentityMismatch { header_id: SegmentId(2) });
}

both!(
    stray_copy_under_the_next_id_is_an_identity_mismatch_fs,
    stray_copy_under_the_next_id_is_an_identity_mismatch_sim,
    stray_copy_under_the_next_id_is_an_identity_mismatch
);

/// What a roll interrupted by a crash leaves at the next id.
#[derive(Clone, Copy, Debug)]
enum Leftover {
    Empty,
    ZeroBlock,
    HalfHeader,
}

fn interrupted_roll_is_removed<D: Place>(leftover: Leftover) {
    let (disk, dir, _tmp) = D::fresh();
    let last = three_segment_log(&disk, &dir);
    assert_intact(&disk, &dir, last); // seals the newest segment, as the writer does before a roll
    let newest = *segment_ids(&disk, &dir).last().unwrap();
    let next = seg(&dir, newest + 1);
    let bytes = match leftover {
        Leftover::Empty => Vec::new(),
        Leftover::ZeroBlock => vec![0; BLOCK as usize],
        Leftover::HalfHeader => disk.read(&seg(&dir, 1))[..PREAMBLE_SIZE + HEADER_LEN].to_vec(),
    };
    disk.write(&next, &bytes);

    let wal = open(&disk, &dir).unwrap();
    let info = wal.recovery_info();
    assert_eq!(info.removed_interrupted_roll, Some(SegmentId(newest + 1)), "{leftover:?}");
    assert_eq!(info.torn_tail, None);
    assert_records(&read_all(&wal), 1, last);
    assert!(!disk.names(&dir).contains(&nodedb_wal::segment::file_name(SegmentId(newest + 1))), "the leftover is gone");
    append_synced(&wal, last + 1, last + 5);
    wal.close().unwrap();
    assert_eq!(*segment_ids(&disk, &dir).last().unwrap(), newest + 1, "the id is reused");
    assert_intact(&disk, &dir, last + 5);
}

both!(
    empty_file_at_the_next_id_is_an_interrupted_roll_fs,
    empty_file_at_the_next_id_is_an_interrupted_roll_sim,
    interrupted_roll_is_removed,
    Leftover::Empty
);
both!(
    zeroed_file_at_the_next_id_is_an_interrupted_roll_fs,
    zeroed_file_at_the_next_id_is_an_interrupted_roll_sim,
    interrupted_roll_is_removed,
    Leftover::ZeroBlock
);
both!(
    half_written_header_at_the_next_id_is_an_interrupted_roll_fs,
    half_written_header_at_the_next_id_is_an_interrupted_roll_sim,
    interrupted_roll_is_removed,
    Leftover::HalfHeader
);

/// Bytes past the zeros after the last record of the newest segment that are neither zeros
/// nor a frame (a later batch whose write a power cut stopped half-way) are reported as a torn tail cut there, not
/// passed over as a clean end: `RecoveryInfo` says what recovery threw away.
#[test]
fn debris_after_the_last_record_is_reported_as_a_torn_tail() {
    let sim = SimStorage::new(33, FaultConfig::default());
    let dir = Path::new("/wal");
    let wal = SegmentedWal::open_with(sim.clone(), nodedb_wal::SegmentedWalConfig::new(dir)).unwrap();
    for i in 0..3u8 {
        wal.append_durable(nodedb_wal::Record::new(nodedb_wal::RecordType::optional(0x100), &[i + 1; 300])).unwrap();
    }
    let crashed = sim.crash(5);
    drop(wal);
    let path = dir.join(format!("{:020}.wal", 1));
    let mut bytes = crashed.read_file(&path).unwrap();
    let end = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
    // A block of zeros first, so that the scan stops at a clean end and only the look past
    // it finds the debris.
    let at = end.next_multiple_of(4096);
    bytes.resize(at + 4096, 0);
    bytes.extend_from_slice(&[0xAB; 4096]);
    crashed.write_file(&path, &bytes);

    let wal = SegmentedWal::open_with(crashed, nodedb_wal::SegmentedWalConfig::new(dir)).unwrap();
    let torn = wal.recovery_info().torn_tail.expect("the debris is reported as a torn tail");
    assert_eq!(torn.segment, SegmentId(1));
    assert_eq!((torn.offset, torn.bytes_discarded), (at as u64, 8192), "{torn:?}");
    let payloads: Vec<Vec<u8>> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().payload.into_vec()).collect();
    assert_eq!(payloads, (1..4u8).map(|i| vec![i; 300]).collect::<Vec<_>>());
}
