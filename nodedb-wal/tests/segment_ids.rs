//! Segment ids are `u64`s and never wrap. Recovery refuses a newest segment with the last id
//! (no segment could follow it), so the log must never make one: a log whose ids are nearly
//! used up (its first segment written by a `WalWriter` with a huge id) stops taking appends
//! with a typed error before its last id, and every acknowledged record opens again.
//!
//! Found by an adversarial review: the group committer rolled from the last id to segment 0
//! (segment ids wrapped in a release build), acknowledged every append, and left a log that
//! did not open again (`MissingSegment`, a hole between 4 and the huge ids); a log whose
//! newest segment took the last id opened as `BadSegmentHeader` corruption.

use std::path::Path;

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{Lsn, Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, WalWriter, WalWriterConfig};

const TY: RecordType = RecordType::optional(0x400);

fn config(dir: &Path) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    config.segment_bytes_target = 16 * 1024;
    config.batch_bytes_max = 4096;
    config
}

#[test]
fn a_log_whose_segment_ids_run_out_refuses_appends_and_keeps_every_acknowledged_record() {
    let sim = SimStorage::new(9, FaultConfig::default());
    let dir = Path::new("/ids");
    sim.create_dir_all(dir).unwrap();
    let first = SegmentId(u64::MAX - 3);
    let mut writer = WalWriter::create_with(sim.clone(), dir, first, Lsn(1), WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"written by a WalWriter")).unwrap();
    writer.finish().unwrap();

    let wal = SegmentedWal::open_with(sim.clone(), config(dir)).unwrap();
    let mut acked = Vec::new();
    let refused = loop {
        // Three records of 3000 bytes fill a segment of 16 KiB: a few hundred tries at most.
        assert!(acked.len() < 1000, "appends never stopped: segment ids wrapped");
        let payload = vec![acked.len() as u8; 3000];
        match wal.append_durable(Record::new(TY, &payload)) {
            Ok(lsn) => acked.push((lsn, payload)),
            Err(err) => break err,
        }
    };
    assert!(matches!(refused, WalError::SegmentIdsExhausted { .. }), "{refused}");
    assert!(!acked.is_empty(), "the ids left were used");
    let ids: Vec<SegmentId> = wal.segments().iter().map(|s| s.id).collect();
    assert_eq!(ids.last(), Some(&SegmentId(u64::MAX - 1)), "the last id is never made: {ids:?}");
    assert!(ids.iter().all(|id| id.0 >= first.0), "ids wrapped: {ids:?}");
    // A refused append used no LSN, and the log still syncs what it holds.
    assert_eq!(wal.next_lsn(), acked.last().unwrap().0.next());
    wal.sync().unwrap();
    drop(wal);

    let wal = SegmentedWal::open_with(sim, config(dir)).expect("a log this crate wrote opens again");
    let records: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), acked.len() + 1);
    assert_eq!(records[0].payload, b"written by a WalWriter");
    for (record, (lsn, payload)) in records[1..].iter().zip(&acked) {
        assert_eq!((record.lsn, &record.payload[..]), (*lsn, &payload[..]));
    }
    // Still readable, still refusing: there is no id for another segment.
    let again = wal.append(Record::new(TY, b"more")).unwrap_err();
    assert!(matches!(again, WalError::SegmentIdsExhausted { .. }), "{again}");
}
