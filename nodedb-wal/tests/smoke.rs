//! Basic behaviour on both storages: what is appended and synced is read back after reopening.

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};

fn config(dir: &std::path::Path) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 64 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c
}

fn appended_records_are_read_back_after_reopen<S: nodedb_wal::storage::Storage + Clone>(storage: S, dir: &std::path::Path) {
    let ty = RecordType::optional(0x100);
    {
        let wal = SegmentedWal::open_with(storage.clone(), config(dir)).unwrap();
        for i in 0..500u32 {
            let payload = vec![i as u8; (i as usize * 37) % 3000];
            let lsn = wal.append(Record::new(ty, &payload)).unwrap();
            assert_eq!(lsn, Lsn(u64::from(i) + 1));
        }
        wal.sync().unwrap();
        assert!(wal.segments().len() > 2, "rolled over: {:?}", wal.segments());
        wal.close().unwrap();
    }
    let wal = SegmentedWal::open_with(storage, config(dir)).unwrap();
    let info = wal.recovery_info();
    assert_eq!(info.record_count, 500);
    assert_eq!(info.last_lsn, Lsn(500));
    assert!(info.torn_tail.is_none());
    let records: Vec<_> = wal.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 500);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn, Lsn(i as u64 + 1));
        assert_eq!(r.payload, vec![i as u8; (i * 37) % 3000]);
    }
    assert_eq!(wal.append(Record::new(ty, b"more")).unwrap(), Lsn(501));
}

#[test]
fn appended_records_are_read_back_after_reopen_fs() {
    let dir = tempfile::tempdir().unwrap();
    appended_records_are_read_back_after_reopen(nodedb_wal::FsStorage::new(), dir.path());
}

#[test]
fn appended_records_are_read_back_after_reopen_sim() {
    appended_records_are_read_back_after_reopen(SimStorage::new(1, FaultConfig::default()), std::path::Path::new("/wal"));
}
