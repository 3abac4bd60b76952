//! The memory-mapped reader and the lending reader on the real file system: they return exactly
//! what the `pread` reader returns, plaintext and encrypted, a damaged byte in a mapped segment
//! is a typed error, and a live tail that catches up through maps still delivers every record
//! once, in order, across rolls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Disk, append, append_synced, assert_records, config, locate, payload, seg};
use nodedb_wal::{CorruptionKind, FsStorage, KeyRing, Lsn, ReadOnlyWal, SecureKey, SegmentedWal, SegmentedWalConfig, WalError, WalRecord};

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::with_active(4, SecureKey::from_bytes(&mut [9; 32])))
}

fn open(dir: &std::path::Path, ring: Option<Arc<KeyRing>>) -> SegmentedWal {
    let config = SegmentedWalConfig { key_ring: ring, ..config(dir) };
    SegmentedWal::open(config).unwrap()
}

fn mapped_reading_matches_pread_reading(ring: Option<Arc<KeyRing>>) {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), ring.clone());
    append_synced(&wal, 1, 400);
    assert!(wal.segments().iter().filter(|s| s.sealed).count() >= 3, "several sealed segments are mapped");

    let read = |from| -> Vec<WalRecord> { wal.read_from(from).unwrap().collect::<Result<_, _>>().unwrap() };
    let expected = read(Lsn(1));
    assert_eq!(expected.len(), 400);
    let mapped: Vec<_> = wal.read_mapped(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(mapped, expected);
    let from_middle: Vec<_> = wal.read_mapped(Lsn(123)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(from_middle, read(Lsn(123)));

    // The lending reader hands out the same records, without a copy for plaintext ones.
    let mut lent = Vec::new();
    let mut reader = wal.read_mapped(Lsn(1)).unwrap();
    while let Some(view) = reader.next_view() {
        lent.push(view.unwrap().to_record());
    }
    assert_eq!(lent, expected);
    wal.close().unwrap();

    let view = ReadOnlyWal::open(dir.path(), ring.clone()).unwrap();
    let read_only: Vec<_> = view.read_mapped(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(read_only, expected);
    if ring.is_none() {
        assert_records(&expected, 1, 400);
    }
}

#[test]
fn mapped_reading_returns_exactly_what_pread_reading_returns_plaintext() {
    mapped_reading_matches_pread_reading(None);
}

#[test]
fn mapped_reading_returns_exactly_what_pread_reading_returns_encrypted() {
    mapped_reading_matches_pread_reading(Some(ring()));
}

#[test]
fn a_damaged_byte_in_a_mapped_segment_is_a_corruption_error() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), None);
    append_synced(&wal, 1, 200);
    wal.close().unwrap();
    // Opened before the damage, so that the reader meets it (opening would report it too).
    let view = ReadOnlyWal::open(dir.path(), None).unwrap();
    let disk = FsStorage::new();
    let (id, frame) = locate(&disk, dir.path(), 50);
    let path = seg(dir.path(), id);
    let mut bytes = disk.read(&path);
    bytes[frame.offset as usize + frame.frame_len() as usize - 1] ^= 0x40;
    disk.write(&path, &bytes);

    let mut reader = view.read_mapped(Lsn(1)).unwrap();
    let mut delivered = 0;
    let err = loop {
        match reader.next() {
            Some(Ok(record)) => {
                assert!(record.lsn < Lsn(50), "nothing at or past the damage is handed out");
                delivered += 1;
            }
            Some(Err(err)) => break err,
            None => panic!("the damaged record was not noticed"),
        }
    };
    assert_eq!(delivered, 49);
    assert!(matches!(err, WalError::Corruption { kind: CorruptionKind::BadFrame, .. }), "{err:?}");
    assert!(reader.next().is_none(), "a reader stops at its first error");
}

#[test]
fn a_live_tail_catching_up_through_maps_delivers_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), Some(ring()));
    const BACKLOG: u64 = 300;
    const LIVE: u64 = 1500;
    append_synced(&wal, 1, BACKLOG);
    std::thread::scope(|s| {
        s.spawn(|| {
            for lsn in BACKLOG + 1..=BACKLOG + LIVE {
                append(&wal, lsn);
                if lsn % 29 == 0 {
                    wal.sync().unwrap();
                }
            }
            wal.sync().unwrap();
        });
        let mut tail = wal.tail(Lsn::FIRST);
        let mut seen = Vec::new();
        while seen.len() < (BACKLOG + LIVE) as usize {
            let record = tail.next_timeout(Duration::from_secs(10)).unwrap().expect("the writer goes on");
            assert!(record.lsn <= wal.durable_lsn(), "{} delivered before it was durable", record.lsn);
            seen.push(record);
        }
        let lsns: Vec<u64> = seen.iter().map(|r| r.lsn.0).collect();
        assert_eq!(lsns, (1..=BACKLOG + LIVE).collect::<Vec<_>>(), "every record once, in order");
        assert!(seen.iter().all(|r| r.payload == payload(r.lsn.0)), "payloads decrypted and intact");
        assert_eq!(tail.cursor(), Lsn(BACKLOG + LIVE + 1));
    });
    assert!(wal.segments().len() > 10, "the tail followed many rolls");
}
