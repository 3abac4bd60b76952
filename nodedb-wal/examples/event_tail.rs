//! Event-plane tailing: a subscriber follows the log as it grows, sees each record only once it
//! is durable (never one a crash could take back), and reads payloads only for the record types
//! it subscribes to, skipping the rest without reading them.
//!
//! A subscriber that takes every record whole uses `SegmentedWal::tail` instead: its
//! `next_timeout` waits for the next durable record without polling. This one polls the
//! durable LSN because it reads headers first, which the tail does not.

use std::sync::Arc;
use std::time::Duration;

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};

const ORDER: RecordType = RecordType::optional(0x101);
const METRIC: RecordType = RecordType::optional(0x102);
const EVENTS: u32 = 3000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = SegmentedWalConfig::new(dir.path());
    config.allow_buffered_fallback = true;
    let wal = Arc::new(SegmentedWal::open(config)?);

    let writer = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || -> nodedb_wal::Result<()> {
            for i in 0..EVENTS {
                let kind = if i % 3 == 0 { ORDER } else { METRIC };
                wal.append(Record::new(kind, format!("event {i}").as_bytes()))?;
                if i % 100 == 99 {
                    wal.sync()?;
                }
            }
            wal.sync().map(drop)
        })
    };

    // The subscriber's cursor: the next LSN it has not seen. After a restart it would resume
    // from the cursor it stored with its own state.
    let (mut cursor, mut orders, mut skipped) = (Lsn::FIRST, 0u32, 0u32);
    while cursor.0 <= u64::from(EVENTS) {
        // Sleep until the next record is durable (no polling); wake now and then anyway, as
        // a subscriber that also watches for shutdown would.
        if !wal.watch_durable(cursor, Duration::from_millis(100))? {
            continue;
        }
        // Readers stop at the durable LSN, so nothing a crash could undo is delivered.
        let mut reader = wal.lazy_reader(cursor)?;
        while let Some(handle) = reader.next_header()? {
            if handle.record_type == ORDER {
                // Lent from the reader's buffer: no copy, no allocation per record.
                let payload = reader.payload_view()?;
                orders += 1;
                if orders % 250 == 0 {
                    println!("lsn {}: {}", handle.lsn, String::from_utf8_lossy(payload));
                }
            } else {
                skipped += 1;
            }
            cursor = handle.lsn.next();
        }
        // Past the records the reader passed over too (a newer build's optional types), which
        // no header names: without this the subscriber would find them durable and spin.
        cursor = reader.next_lsn().map_or(cursor, |next| next.max(cursor));
    }
    writer.join().expect("writer thread")?;
    // The cursor is the next LSN to read, so the last one seen is the one before it.
    let last_seen = cursor.prev().expect("the cursor starts at Lsn::FIRST and only moves on");
    println!("delivered {orders} orders, skipped {skipped} metrics without reading their payloads, up to LSN {last_seen}");
    Ok(())
}
