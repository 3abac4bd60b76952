//! Encryption at rest with key rotation: segments written before a rotation stay readable under
//! the old key, later segments use the new one, and the preamble of each names its key. Keys
//! come from key files, as in production; a wrong or missing key is refused at open, before
//! anything is written. Once truncation has removed the old key's last segment, it retires.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, WalError};

/// A key file as `SecureKey::load` takes it: 32 bytes, readable by its owner only from the
/// start. In production it comes from the shell (`SecureKey::load`'s docs) or a key service.
fn key_file(dir: &Path, name: &str, fill: u8) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?.write_all(&[fill; 32])?;
    Ok(path)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let keys = tempfile::tempdir()?; // never beside the log
    let (first, second) = (key_file(keys.path(), "1.key", 0x11)?, key_file(keys.path(), "2.key", 0x22)?);
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::load(&first)?));
    let mut config = SegmentedWalConfig::new(dir.path());
    config.key_ring = Some(Arc::clone(&ring));
    config.segment_bytes_target = 64 * 1024;
    config.allow_buffered_fallback = true;

    let wal = SegmentedWal::open(config.clone())?;
    for i in 0..200u32 {
        wal.append(Record::new(RecordType::optional(0x100), format!("before rotation {i}").as_bytes()))?;
    }
    wal.sync()?;
    // Rotate: the next segment the log creates is encrypted under key 2.
    ring.insert(2, SecureKey::load(&second)?)?;
    ring.set_active(2)?;
    for i in 0..2000u32 {
        wal.append(Record::new(RecordType::optional(0x100), format!("after rotation {i:>40}").as_bytes()))?;
    }
    // Segments written before the rotation stay under key 1 until a truncation removes them:
    // key 1 may retire once no segment names it here. (A segment is listed once its first
    // batch is durable.)
    wal.sync()?;
    let key_ids = wal.segment_key_ids()?;
    for (seg, (id, key)) in wal.segments().iter().zip(&key_ids) {
        assert_eq!(seg.id, *id, "nothing was truncated in between");
        println!("segment {id}: LSN {}..{}, key id {key:?}", seg.first_lsn, seg.end_lsn);
    }
    assert_eq!((key_ids.first().map(|k| k.1), key_ids.last().map(|k| k.1)), (Some(Some(1)), Some(Some(2))));
    wal.close()?;

    let reader = ReadOnlyWal::open(dir.path(), Some(Arc::clone(&ring)))?;
    let records = reader.read_from(Lsn::FIRST)?.collect::<Result<Vec<_>, _>>()?;
    println!("read {} records back in plaintext, first: {:?}", records.len(), String::from_utf8_lossy(&records[0].payload));

    // The wrong key under id 1: refused at open, and the log is left as it was.
    let wrong = KeyRing::new();
    wrong.insert(1, SecureKey::load(&key_file(keys.path(), "wrong.key", 0x33)?)?)?;
    // The right key 2, shared with the first ring rather than loaded (copied) again.
    wrong.insert(2, ring.get(2).ok_or("key 2 was inserted above")?)?;
    wrong.set_active(2)?;
    config.key_ring = Some(Arc::new(wrong));
    match SegmentedWal::open(config.clone()) {
        Err(err @ WalError::WrongKey { .. }) => println!("wrong key: {err}"),
        other => return Err(format!("expected WrongKey, got {other:?}").into()),
    }
    // No key ring at all: refused too, so that a forgotten ring never appends plaintext.
    config.key_ring = None;
    match SegmentedWal::open(config.clone()) {
        Err(err @ WalError::KeyRingMissing { .. }) => println!("no key ring: {err}"),
        other => return Err(format!("expected KeyRingMissing, got {other:?}").into()),
    }

    // Retire key 1 once a checkpoint covers its segments and truncation has removed them: the
    // ring lets the key go, and id 1 never takes another key (old copies may still name it).
    config.key_ring = Some(Arc::clone(&ring));
    let wal = SegmentedWal::open(config)?;
    match wal.retire_key(1) {
        Err(err @ WalError::KeyStillNeeded { .. }) => println!("not yet: {err}"),
        other => return Err(format!("expected KeyStillNeeded, got {other:?}").into()),
    }
    wal.truncate_before(wal.sync()?.next())?;
    wal.retire_key(1)?;
    println!("key 1 retired; the ring holds keys {:?}, retired {:?}", ring.key_ids(), ring.retired_key_ids());
    assert!(matches!(ring.insert(1, SecureKey::load(&first)?), Err(WalError::KeyRetired { key_id: 1 })));
    wal.close()?;
    Ok(())
}
