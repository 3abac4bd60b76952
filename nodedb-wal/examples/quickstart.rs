//! Appends from several threads into a temporary log, drops the log without closing it,
//! reopens the directory and prints what recovery found.

use std::sync::Arc;

use nodedb_wal::{Lsn, Record, RecordType, Scope, SegmentedWal, SegmentedWalConfig};

const THREADS: u32 = 4;
const RECORDS_PER_THREAD: u32 = 2_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = SegmentedWalConfig::new(dir.path());
    config.segment_bytes_target = 256 * 1024;
    // Temporary directories may live on tmpfs or overlayfs: take O_DIRECT where it is offered.
    config.allow_buffered_fallback = true;

    let wal = Arc::new(SegmentedWal::open(config.clone())?);
    println!("opened {} (O_DIRECT: {})", dir.path().display(), wal.direct_io());
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || -> nodedb_wal::Result<Lsn> {
                let mut last = Lsn::ZERO;
                for i in 0..RECORDS_PER_THREAD {
                    let payload = format!("thread {t} record {i}");
                    let record = Record::new(RecordType::optional(0x100), payload.as_bytes()).scoped(Scope {
                        database: 1,
                        tenant: t,
                        vshard: i % 8,
                    });
                    last = wal.append_durable(record)?;
                }
                Ok(last)
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread panicked")?;
    }
    let stats = wal.stats();
    println!(
        "appended {} records in {} fdatasyncs ({:.1} records per sync)",
        stats.records,
        stats.fsyncs,
        stats.records as f64 / stats.fsyncs.max(1) as f64
    );
    drop(wal);

    let wal = SegmentedWal::open(config)?;
    let info = wal.recovery_info();
    println!(
        "recovery: {} records, LSN {}..={}, {} segments, torn tail: {:?}",
        info.record_count,
        info.first_lsn,
        info.last_lsn,
        info.segments.len(),
        info.torn_tail
    );
    let replayed = wal.read_from(Lsn::FIRST)?.count();
    println!("replayed {replayed} records; next LSN is {}", wal.next_lsn());
    // The LSN before the next one is the last recovered record (`Lsn::ZERO` in an empty log).
    assert_eq!(wal.next_lsn().prev(), Some(info.last_lsn));
    assert_eq!(replayed as u64, u64::from(THREADS * RECORDS_PER_THREAD));
    Ok(())
}
