//! `create_if_missing` off: an open that finds no log refuses with `LogMissing` and creates
//! nothing (a missing directory, or one emptied by hand), while every existing log opens,
//! even one never written to.

use std::path::Path;

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

fn existing_only(dir: &Path) -> SegmentedWalConfig {
    let mut config = SegmentedWalConfig::new(dir);
    config.create_if_missing = false;
    config.allow_buffered_fallback = true;
    config
}

fn assert_log_missing<T>(opened: Result<T, WalError>, dir: &Path) {
    match opened {
        Err(WalError::LogMissing { path }) => assert_eq!(path, dir),
        Err(other) => panic!("expected LogMissing, got {other}"),
        Ok(_) => panic!("a log opened where there is none"),
    }
}

#[test]
fn a_missing_directory_is_refused_and_not_created() {
    let sim = SimStorage::new(1, FaultConfig::default());
    let dir = Path::new("/db/wal");
    assert_log_missing(SegmentedWal::open_with(sim.clone(), existing_only(dir)), dir);
    let listed = sim.list(dir).map(|names| names.len());
    assert_eq!(listed.map_err(|e| e.kind()), Err(std::io::ErrorKind::NotFound), "nothing was created");
}

#[test]
fn a_directory_emptied_by_hand_is_refused_and_stays_empty() {
    let sim = SimStorage::new(2, FaultConfig::default());
    let dir = Path::new("/wal");
    let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).unwrap();
    wal.append_durable(Record::new(RecordType::optional(0x100), b"row")).unwrap();
    wal.close().unwrap();
    for name in sim.list(dir).unwrap() {
        sim.remove(&dir.join(name)).unwrap();
    }
    assert_log_missing(SegmentedWal::open_with(sim.clone(), existing_only(dir)), dir);
    assert_eq!(sim.list(dir).unwrap(), Vec::<String>::new(), "nothing was created");
}

#[test]
fn an_existing_log_opens_even_one_never_written_to() {
    let sim = SimStorage::new(3, FaultConfig::default());
    let dir = Path::new("/wal");
    SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new(dir)).unwrap().close().unwrap();
    let wal = SegmentedWal::open_with(sim.clone(), existing_only(dir)).unwrap_or_else(|e| panic!("a new log, never written: {e}"));
    wal.append_durable(Record::new(RecordType::optional(0x100), b"row")).unwrap();
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(sim, existing_only(dir)).unwrap();
    let back = wal.read_from(Lsn::FIRST).unwrap().next().unwrap().unwrap();
    assert_eq!(back.payload, b"row");
}

#[test]
fn a_mistyped_path_on_the_file_system_is_refused_and_not_created() {
    let parent = tempfile::tempdir().unwrap();
    let real = parent.path().join("wal");
    assert_log_missing(SegmentedWal::open(existing_only(&real)), &real);
    let mut create = existing_only(&real);
    create.create_if_missing = true;
    let wal = SegmentedWal::open(create).unwrap();
    wal.append_durable(Record::new(RecordType::optional(0x100), b"row")).unwrap();
    wal.close().unwrap();
    let typo = parent.path().join("wall");
    assert_log_missing(SegmentedWal::open(existing_only(&typo)), &typo);
    assert!(!typo.exists(), "nothing was created");
    assert_eq!(SegmentedWal::open(existing_only(&real)).unwrap().recovery_info().record_count, 1);
}
