//! Encryption at rest with key rotation: segments written before a rotation stay readable under
//! the old key, later segments use the new one, and the preamble of each names its key.

use std::sync::Arc;

use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // In production: SecureKey::load(path), which refuses keys other users could read.
    let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
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
    ring.insert(2, SecureKey::generate())?;
    ring.set_active(2)?;
    for i in 0..2000u32 {
        wal.append(Record::new(RecordType::optional(0x100), format!("after rotation {i:>40}").as_bytes()))?;
    }
    wal.close()?;

    let reader = ReadOnlyWal::open(dir.path(), Some(Arc::clone(&ring)))?;
    for seg in &reader.recovery_info().segments {
        let bytes = std::fs::read(dir.path().join(format!("{:020}.wal", seg.id.0)))?;
        let preamble = nodedb_wal::SegmentPreamble::decode(&bytes).map_err(|e| format!("segment {}: {e:?}", seg.id))?;
        println!("segment {}: LSN {}..{}, key id {}", seg.id, seg.first_lsn, seg.end_lsn, preamble.key_id);
    }
    let records = reader.read_from(Lsn::FIRST)?.collect::<Result<Vec<_>, _>>()?;
    println!("read {} records back in plaintext, first: {:?}", records.len(), String::from_utf8_lossy(&records[0].payload));
    Ok(())
}
