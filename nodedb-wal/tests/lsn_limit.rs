//! LSNs never wrap: every record's LSN is below `Lsn::LIMIT` (2^63). A log that started near it
//! (a `WalWriter` segment with a huge first LSN, the only way to get there) refuses the append
//! that would reach it with `LsnsExhausted`, using no LSN, and opens again with every
//! acknowledged record; recovery refuses a segment header past the limit (`format::meta`'s
//! unit test), so a crafted one cannot make the log hand out LSNs that wrap; nor takes a
//! checksummed record at the limit itself for one of the log (the frame is damage, cut as a torn
//! tail), which would start the log with its durable word's poison bit set.

use std::path::Path;

use nodedb_wal::format::frame::{decode_frame, encode_frame};
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{
    Lsn, Record, RecordHeader, RecordType, Scope, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, WalWriter,
    WalWriterConfig,
};

const TY: RecordType = RecordType::optional(0x400);

fn log_starting_at(sim: &SimStorage, dir: &Path, first: Lsn) {
    sim.create_dir_all(dir).unwrap();
    let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), first, WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"written by a WalWriter")).unwrap();
    writer.finish().unwrap();
}

#[test]
fn a_log_whose_lsns_run_out_refuses_appends_and_keeps_every_acknowledged_record() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/lsns");
    let first = Lsn(Lsn::LIMIT.0 - 10);
    log_starting_at(&sim, dir, first);

    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).unwrap();
    let mut acked = Vec::new();
    let refused = loop {
        assert!(acked.len() < 100, "appends never stopped: LSNs went past the limit");
        match wal.append_durable(Record::new(TY, &[acked.len() as u8; 16])) {
            Ok(lsn) => acked.push(lsn),
            Err(err) => break err,
        }
    };
    assert!(matches!(refused, WalError::LsnsExhausted { next } if next == Lsn::LIMIT), "{refused}");
    assert_eq!(acked.first(), Some(&first.next()));
    assert_eq!(acked.last(), Lsn::LIMIT.prev().as_ref(), "every LSN below the limit was used");
    // A batch or group that would cross the limit is refused whole.
    let two = [Record::new(TY, b"a"), Record::new(TY, b"b")];
    assert!(matches!(wal.append_batch(&two), Err(WalError::LsnsExhausted { .. })));
    assert_eq!(wal.next_lsn(), Lsn::LIMIT, "refused appends used no LSN");
    wal.close().unwrap();

    let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new(dir)).expect("a log at the limit opens again");
    let lsns: Vec<Lsn> = wal.read_from(first).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns.len(), acked.len() + 1);
    assert_eq!(&lsns[1..], &acked[..]);
    assert!(matches!(wal.append(Record::new(TY, b"more")), Err(WalError::LsnsExhausted { .. })));
}

#[test]
fn a_wal_writer_refuses_records_at_the_limit() {
    let sim = SimStorage::new(4, FaultConfig::default());
    let dir = Path::new("/writer");
    sim.create_dir_all(dir).unwrap();
    let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), Lsn(Lsn::LIMIT.0 - 2), WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"a")).unwrap();
    writer.append(Record::new(TY, b"b")).unwrap();
    let err = writer.append(Record::new(TY, b"c")).unwrap_err();
    assert!(matches!(err, WalError::LsnsExhausted { next } if next == Lsn::LIMIT), "{err}");
    writer.finish().unwrap();
    // The log it started opens, holding both records, and takes no more.
    let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new(dir)).unwrap();
    assert_eq!(wal.next_lsn(), Lsn::LIMIT);
    assert_eq!(wal.read_from(Lsn(Lsn::LIMIT.0 - 2)).unwrap().count(), 2);
    assert!(matches!(wal.append(Record::new(TY, b"c")), Err(WalError::LsnsExhausted { .. })));
}

// Found by an adversarial review: recovery took a checksummed record at LSN 2^63 (a crafted
// segment that starts just below it) for a record of the log, so the log started with a
// durable watermark of 2^63, the bit that says "poisoned" since the watermark and the poison
// share one word: the flusher thread and the first append panicked ("cause is set before the
// flag"), and `durable_lsn` read 0. A record at or past the limit is damage like any other
// frame that does not continue the chain.
#[test]
fn a_record_at_the_limit_is_not_taken_for_one_of_the_log() {
    let sim = SimStorage::new(5, FaultConfig::default());
    let dir = Path::new("/crafted");
    sim.create_dir_all(dir).unwrap();
    let last = Lsn(Lsn::LIMIT.0 - 1);
    let mut writer = WalWriter::create_with(sim.clone(), dir, SegmentId(1), last, WalWriterConfig::default()).unwrap();
    writer.append(Record::new(TY, b"the last LSN there is")).unwrap();
    writer.sync().unwrap();
    drop(writer);
    // A frame with the next LSN, checksummed under the segment's salt, in the next block.
    let path = nodedb_wal::segment::path(dir, SegmentId(1));
    let mut bytes = sim.read_file(&path).unwrap();
    let salt = decode_frame(&bytes[PREAMBLE_SIZE..]).unwrap().salt;
    let payload = b"past the limit";
    let header = RecordHeader {
        lsn: Lsn::LIMIT,
        durable_lsn: last,
        salt,
        record_type: TY,
        scope: Scope::default(),
        payload_len: payload.len() as u32,
        flags: 0,
    };
    let at = bytes.len();
    bytes.resize(at + 4096, 0);
    encode_frame(&header, payload, &mut bytes[at..]);
    sim.write_file(&path, &bytes);

    let wal = SegmentedWal::open_with(sim, SegmentedWalConfig::new(dir)).unwrap();
    assert_eq!(wal.recovery_info().last_lsn, last);
    assert!(wal.recovery_info().torn_tail.is_some(), "the frame past the limit is cut");
    assert_eq!(wal.durable_lsn(), last);
    let lsns: Vec<Lsn> = wal.read_from(last).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, [last]);
    assert!(matches!(wal.append(Record::new(TY, b"more")), Err(WalError::LsnsExhausted { next }) if next == Lsn::LIMIT));
    wal.close().unwrap();
}
