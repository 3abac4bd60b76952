//! Damage before a pipelined, acknowledged batch of the newest segment is reported, never cut.
//!
//! Group commit fills batch B while batch A is being written, so B's first frame carries a
//! durable watermark older than A's records. Only B's padding frame, stamped by the flusher after
//! A's sync, says A was durable. Recovery must see that claim.
//! (Needs tests/common/mod.rs from the damage tests.)

mod common;

use common::{Disk, Gated, Place, append, append_synced, config, frames, read_all, record_frame, seg, segment_ids, write_log};
use nodedb_wal::format::frame::HEADER_LEN;
use nodedb_wal::{FsStorage, Lsn, SegmentedWal, SimStorage, WalError};

/// Appends `a` and, while its batch is written but not yet synced, `b`; waits for both.
fn append_pipelined<D: Disk>(
    gated: &Gated<D>,
    wal: &SegmentedWal<Gated<D>>,
    a: std::ops::RangeInclusive<u64>,
    b: std::ops::RangeInclusive<u64>,
) {
    gated.gate.shut();
    for lsn in a.clone() {
        append(wal, lsn);
    }
    std::thread::scope(|s| {
        let waiter = s.spawn(|| wal.wait_durable(Lsn(*a.end())));
        gated.gate.wait_held();
        for lsn in b.clone() {
            append(wal, lsn);
        }
        gated.gate.open();
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(wal.sync().unwrap(), Lsn(*b.end()), "every record is acknowledged");
}

fn damage_before_a_pipelined_acknowledged_batch_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    let gated = Gated::new(disk.clone());
    let wal = SegmentedWal::open_with(gated.clone(), config(&dir)).unwrap();
    append_synced(&wal, 1, 10);
    append_pipelined(&gated, &wal, 11..=20, 21..=30);
    wal.close().unwrap();

    let path = seg(&dir, 1);
    let bytes = disk.read(&path);
    let b_first = record_frame(&bytes, 21);
    let b_padding = frames(&bytes).into_iter().find(|f| f.offset > b_first.offset && !f.is_record()).unwrap();
    assert_eq!(b_first.header.durable_lsn, Lsn(10), "B's first frame does not vouch for A");
    assert_eq!(b_padding.header.durable_lsn, Lsn(20), "B's padding frame does");

    let victim = record_frame(&bytes, 15);
    disk.edit(&path, |b| b[(victim.offset + HEADER_LEN as u64 + 2) as usize] ^= 0x10);
    match SegmentedWal::open_with(disk.clone(), config(&dir)) {
        Err(WalError::Corruption { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(wal) => panic!(
            "acknowledged records 15..=30 silently dropped: recovered up to {:?}, torn_tail {:?}",
            read_all(&wal).last().map(|r| r.lsn),
            wal.recovery_info().torn_tail
        ),
    }
}

/// Same root cause at a segment's head: the newest segment, holding two pipelined acknowledged
/// batches, has a damaged header frame. Recovery must report it, not delete the file.
fn damaged_head_of_a_newest_segment_with_pipelined_batches_is_corruption<D: Place>() {
    let (disk, dir, _tmp) = D::fresh();
    write_log(&disk, &dir, &[10, 10]);
    drop(SegmentedWal::open_with(disk.clone(), config(&dir)).unwrap()); // seals segment 1
    let gated = Gated::new(disk.clone());
    let wal = SegmentedWal::open_with(gated.clone(), config(&dir)).unwrap();
    append_pipelined(&gated, &wal, 21..=30, 31..=40);
    wal.close().unwrap();
    assert_eq!(segment_ids(&disk, &dir), vec![1, 2]);
    disk.edit(&seg(&dir, 2), |b| b[40] ^= 1); // inside the segment header frame
    match SegmentedWal::open_with(disk.clone(), config(&dir)) {
        Err(WalError::Corruption { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(wal) => panic!(
            "acknowledged records 21..=40 silently dropped: {:?}, segment files left: {:?}",
            wal.recovery_info(),
            segment_ids(&disk, &dir)
        ),
    }
}

#[test]
fn damage_before_a_pipelined_acknowledged_batch_is_corruption_fs() {
    damage_before_a_pipelined_acknowledged_batch_is_corruption::<FsStorage>();
}

#[test]
fn damage_before_a_pipelined_acknowledged_batch_is_corruption_sim() {
    damage_before_a_pipelined_acknowledged_batch_is_corruption::<SimStorage>();
}

#[test]
fn damaged_head_of_a_newest_segment_with_pipelined_batches_is_corruption_fs() {
    damaged_head_of_a_newest_segment_with_pipelined_batches_is_corruption::<FsStorage>();
}

#[test]
fn damaged_head_of_a_newest_segment_with_pipelined_batches_is_corruption_sim() {
    damaged_head_of_a_newest_segment_with_pipelined_batches_is_corruption::<SimStorage>();
}
