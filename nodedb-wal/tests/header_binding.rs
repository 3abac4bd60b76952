//! The header of an encrypted record is bound to its payload, in every reader: a record whose
//! type, scope, durable LSN, flags or salt was changed by someone who holds no key but
//! recomputes the CRC is never handed out by `read_from` (owned or lent), `read_mapped`, the lazy
//! reader's payload, `replay_parallel` (in sequence and on several threads) or a tail; each
//! stops there with an error. So is a segment whose preamble names another key id the ring
//! holds, or another nonce epoch: never garbage. Both in a sealed segment and in the newest one.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::disk_with;
use nodedb_wal::format::frame::{FLAG_GROUP_CONTINUES, HEADER_LEN, RecordHeader, decode_frame, seal_frame};
use nodedb_wal::format::preamble::{PREAMBLE_SIZE, SegmentPreamble};
use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const DIR: &str = "/bound";

fn ring() -> Arc<KeyRing> {
    let ring = KeyRing::new();
    ring.insert(1, SecureKey::from_bytes(&mut [7; 32])).unwrap();
    ring.insert(2, SecureKey::from_bytes(&mut [8; 32])).unwrap();
    ring.set_active(1).unwrap();
    Arc::new(ring)
}

fn config() -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.segment_bytes_target = 32 * 1024;
    c.batch_bytes_max = 8 * 1024;
    c.key_ring = Some(ring());
    c
}

fn seg(id: u64) -> PathBuf {
    Path::new(DIR).join(format!("{id:020}.wal"))
}

fn payload(lsn: u64) -> Vec<u8> {
    format!("payload of {lsn} ").repeat(3).into_bytes()
}

/// Segment 1 sealed with LSNs 1 to 3, segment 2 open with LSNs 4 to 6.
fn log() -> Vec<(PathBuf, Vec<u8>)> {
    let sim = SimStorage::new(3, FaultConfig::default());
    let ty = RecordType::optional(0x100);
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    for lsn in 1..=3 {
        wal.append_durable(Record::new(ty, &payload(lsn))).unwrap();
    }
    drop(wal);
    let wal = SegmentedWal::open_with(sim.clone(), config()).unwrap();
    for lsn in 4..=6 {
        wal.append_durable(Record::new(ty, &payload(lsn))).unwrap();
    }
    // A power cut instead of a close: segment 2 stays open.
    let crashed = sim.crash(1);
    drop(wal);
    vec![(seg(1), crashed.read_file(&seg(1)).unwrap()), (seg(2), crashed.read_file(&seg(2)).unwrap())]
}

/// The offset and header of the record at `lsn` in a segment's bytes.
fn record_at(bytes: &[u8], lsn: u64) -> (usize, RecordHeader) {
    let mut at = PREAMBLE_SIZE;
    while at < bytes.len() {
        match decode_frame(&bytes[at..]) {
            Ok(h) if h.lsn.0 == lsn && !h.record_type.is_meta() => return (at, h),
            Ok(h) => at += h.frame_len(),
            Err(_) => at = (at + 1).next_multiple_of(4096),
        }
    }
    panic!("no record {lsn}");
}

/// A named change to a record's header.
type HeaderChange = (&'static str, fn(&mut RecordHeader));

/// Every way the header of one record can be changed without the key.
fn header_changes() -> Vec<HeaderChange> {
    vec![
        ("type to another application type", |h| h.record_type = RecordType::optional(0x101)),
        ("type to a required application type", |h| h.record_type = RecordType(0x4100)),
        ("type to calvin-applied", |h| h.record_type = RecordType::CALVIN_APPLIED),
        ("database", |h| h.scope.database ^= 1),
        ("tenant", |h| h.scope.tenant ^= 1),
        ("vshard", |h| h.scope.vshard ^= 1),
        ("durable LSN", |h| h.durable_lsn = Lsn(h.durable_lsn.0.saturating_sub(1))),
        ("group flag", |h| h.flags |= FLAG_GROUP_CONTINUES),
        ("salt", |h| h.salt ^= 1),
    ]
}

/// What each reader returns from the start of the log: the LSNs it handed out, and whether it
/// ended with an error.
fn readers(sim: &SimStorage) -> Vec<(&'static str, Vec<u64>, bool)> {
    let wal = match SegmentedWal::open_with(sim.clone(), config()) {
        Ok(wal) => wal,
        Err(_) => return vec![("open", Vec::new(), true)],
    };
    let from = wal.recovery_info().first_lsn;
    let mut out = Vec::new();
    let owned = |iter: Result<nodedb_wal::WalIter<SimStorage>, WalError>| {
        let mut lsns = Vec::new();
        for r in iter.unwrap() {
            match r {
                Ok(r) => lsns.push(r.lsn.0),
                Err(_) => return (lsns, true),
            }
        }
        (lsns, false)
    };
    let (lsns, failed) = owned(wal.read_from(from));
    out.push(("read_from", lsns, failed));
    let (lsns, failed) = owned(wal.read_mapped(from));
    out.push(("read_mapped", lsns, failed));
    let mut lent = wal.read_from(from).unwrap();
    let (mut lsns, mut failed) = (Vec::new(), false);
    while let Some(r) = lent.next_view() {
        match r {
            Ok(v) => lsns.push(v.lsn.0),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    out.push(("next_view", lsns, failed));
    let mut lazy = wal.lazy_reader(from).unwrap();
    let (mut lsns, mut failed) = (Vec::new(), false);
    loop {
        match lazy.next_header() {
            Ok(Some(h)) => match lazy.payload() {
                Ok(_) => lsns.push(h.lsn.0),
                Err(_) => {
                    failed = true;
                    break;
                }
            },
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    out.push(("lazy payload", lsns, failed));
    for threads in [1, 4] {
        let mut lsns = Vec::new();
        let failed = wal
            .replay_parallel(from, threads, |v| {
                lsns.push(v.lsn.0);
                Ok(())
            })
            .is_err();
        out.push((if threads == 1 { "replay_parallel(1)" } else { "replay_parallel(4)" }, lsns, failed));
    }
    let mut tail = wal.tail(from);
    let (mut lsns, mut failed) = (Vec::new(), false);
    loop {
        match tail.next_timeout(Duration::from_millis(20)) {
            Ok(Some(r)) => lsns.push(r.lsn.0),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    out.push(("tail", lsns, failed));
    out
}

fn assert_stopped_before(sim: &SimStorage, lsn: u64, context: &str) {
    for (reader, lsns, failed) in readers(sim) {
        assert!(!lsns.contains(&lsn), "{context}: {reader} handed out the altered record {lsn}: {lsns:?}");
        assert!(failed, "{context}: {reader} ended without an error, having handed out {lsns:?}");
    }
}

#[test]
fn an_untouched_log_reads_whole_in_every_reader() {
    for (reader, lsns, failed) in readers(&disk_with(9, Path::new(DIR), &log())) {
        assert_eq!((lsns, failed), ((1..=6).collect(), false), "{reader}");
    }
}

#[test]
fn a_header_field_changed_with_its_crc_recomputed_stops_every_reader_at_that_record() {
    let files = log();
    for (file, lsn) in [(0, 2), (1, 5)] {
        for (field, change) in header_changes() {
            let mut tampered = files.clone();
            let bytes = &mut tampered[file].1;
            let (at, mut header) = record_at(bytes, lsn);
            change(&mut header);
            header.encode_into(&mut bytes[at..at + HEADER_LEN]);
            seal_frame(&mut bytes[at..at + header.frame_len()], header.record_type);
            assert_stopped_before(&disk_with(9, Path::new(DIR), &tampered), lsn, &format!("record {lsn}, {field}"));
        }
    }
}

#[test]
fn a_preamble_naming_another_key_id_or_epoch_reads_as_an_error_never_garbage() {
    let files = log();
    for file in [0, 1] {
        for (field, change) in [("key id", (|p| p.key_id = 2) as fn(&mut SegmentPreamble)), ("nonce epoch", |p| p.nonce_epoch ^= 1)] {
            let mut tampered = files.clone();
            let bytes = &mut tampered[file].1;
            let mut preamble = SegmentPreamble::decode(bytes).unwrap();
            change(&mut preamble);
            bytes[..PREAMBLE_SIZE].copy_from_slice(&preamble.encode());
            let first = if file == 0 { 1 } else { 4 };
            assert_stopped_before(&disk_with(9, Path::new(DIR), &tampered), first, &format!("segment {}, {field}", file + 1));
        }
    }
}
