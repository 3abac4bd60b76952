//! The published surface: a small program written against exactly the names a nodedb-wal user
//! expects at the crate root. If a name moves or changes shape, this stops compiling.

use nodedb_wal::{
    CIPHER_AES_256_GCM, CalvinAppliedPayload, CollectionTombstonePayload, DoubleWriteBuffer, DroppedCollection, DwbMode, FaultConfig,
    FsStorage, GroupCommitter, GroupEntry, LazyWalReader, Lsn, MAX_COLLECTION_NAME_LEN, PREAMBLE_SIZE, PREAMBLE_VERSION, Payload, Record,
    RecordHeader, RecordType, RecoveryInfo, Result, SEG_PREAMBLE_MAGIC, Scope, SecureKey, SegmentId, SegmentPreamble, SegmentedWal,
    SegmentedWalConfig, SimStorage, Storage, TemporalPurgeEngine, TemporalPurgePayload, TombstoneSet, WAL_PREAMBLE_MAGIC, WalError,
    WalRecord, WalWriter, decrypt_engine_file, encrypt_engine_file, extract_tombstones, last_calvin_applied, recover,
    wal_dwb_bytes_written_total,
};

/// Names that are types only: the program must be able to spell them.
#[allow(dead_code)]
struct Types<'a> {
    committer: Option<&'a GroupCommitter<FsStorage>>,
    lazy: Option<LazyWalReader<FsStorage>>,
    dwb: Option<DoubleWriteBuffer>,
    header: Option<RecordHeader>,
    payload: Option<Payload>,
    drop: Option<DroppedCollection<'a>>,
}

/// Records and their payloads go to other threads: a replay hands them to appliers.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<WalRecord>();
    send_sync::<Payload>();
    send_sync::<SegmentedWal<FsStorage>>();
};

fn program(dir: &std::path::Path) -> Result<RecoveryInfo> {
    // The preamble constants.
    assert_eq!(PREAMBLE_SIZE, 16);
    assert_eq!((WAL_PREAMBLE_MAGIC, SEG_PREAMBLE_MAGIC), (*b"NWAL", *b"NSEG"));
    let preamble = SegmentPreamble { cipher: CIPHER_AES_256_GCM, key_id: 4, nonce_epoch: 9, ..SegmentPreamble::plaintext_wal() };
    assert_eq!(preamble.version, PREAMBLE_VERSION);
    assert_eq!(SegmentPreamble::decode(&preamble.encode()), Ok(preamble));

    // A segment written on its own, then the log around it.
    let mut writer = WalWriter::create(dir, SegmentId(1), Lsn(1))?;
    writer.append(Record::new(RecordType::optional(0x100), b"first"))?;
    writer.finish()?;
    let wal = SegmentedWal::open(SegmentedWalConfig::new(dir))?;
    let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(1) };
    wal.append_tombstone(&tombstone)?;
    let purge =
        TemporalPurgePayload { engine: TemporalPurgeEngine::Timeseries, collection: "cpu".into(), cutoff_unix_ms: 0, purged_count: 3 };
    wal.append_temporal_purge(&purge, Scope::default())?;
    wal.append_calvin_applied(&CalvinAppliedPayload { epoch: 7, position: 2, vshard: 5 }, Scope::default())?;
    // A drop and a purge all-or-nothing with the records that go with them.
    let catalog = Record::new(RecordType::required(0x100), b"drop orders");
    let entries = [GroupEntry::from(catalog), GroupEntry::Tombstone(&tombstone), GroupEntry::TemporalPurge(&purge, Scope::default())];
    assert_eq!(wal.append_group_entries(&entries)?, Lsn(5)..=Lsn(7));
    wal.sync()?;
    let records: Vec<WalRecord> = wal.read_from(Lsn(1))?.collect::<Result<_>>()?;
    let set: TombstoneSet = extract_tombstones(&records)?;
    assert_eq!(set.purge_lsn(1, 2, "orders"), Some(Lsn(1)));
    assert_eq!(last_calvin_applied(&records)?.get(&5), Some(&(7, 2)));
    // One record at a time, as an in-order replay decodes them.
    assert_eq!(records[1].tombstone()?, Some(tombstone.clone()));
    assert_eq!(records[2].temporal_purge()?.map(|p| p.purge), Some(purge.clone()));
    let mut lazy = wal.lazy_reader(Lsn(1))?;
    assert!(lazy.next_header()?.is_some());
    drop(lazy);
    wal.close()?;

    // Names longer than the limit are a typed error.
    let long = CollectionTombstonePayload { collection: "x".repeat(MAX_COLLECTION_NAME_LEN + 1), ..tombstone };
    assert!(long.encode().is_err());

    // Keys, engine files, the double-write buffer's counter.
    let ring = nodedb_wal::KeyRing::with_active(1, SecureKey::generate());
    let mut file = Vec::new();
    encrypt_engine_file(&ring, &mut &b"column"[..], &mut file)?;
    let mut back = Vec::new();
    decrypt_engine_file(&ring, &mut &file[..], &mut back)?;
    assert_eq!(back, b"column");
    let _ = (wal_dwb_bytes_written_total(), DwbMode::Buffered);

    recover(SegmentedWalConfig::new(dir))
}

/// An engine generic over the storage the log runs on, named from the crate root: the real
/// file system in production, the simulated disk in its tests.
fn records_held<S: Storage>(wal: &SegmentedWal<S>) -> u64 {
    wal.next_lsn().0 - wal.oldest_lsn().0
}

#[test]
fn an_engine_generic_over_the_storage_names_it_from_the_crate_root() {
    let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal")).unwrap();
    wal.append_durable(nodedb_wal::Record::new(RecordType::optional(0x100), b"row")).unwrap();
    assert_eq!(records_held(&wal), 1);
}

#[test]
fn a_program_written_against_the_published_names_runs() {
    let dir = tempfile::tempdir().unwrap();
    let info = program(dir.path()).unwrap_or_else(|e: WalError| panic!("{e}"));
    assert_eq!(info.last_lsn, Lsn(7));
}
