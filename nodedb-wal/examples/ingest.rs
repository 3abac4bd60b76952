//! The ingest pattern: append without waiting, start the sync early with `request_sync`, and
//! acknowledge a batch of writes once a durable LSN covers them; then the same wait as a
//! future, under a minimal executor of a dozen lines (any executor will do: the log wakes the
//! task's waker when the sync lands, so nothing spins).
//!
//! On error the program stops with it. A `Poisoned` error leaves the writes not yet
//! acknowledged in doubt (the next open may return them): a database answers them "outcome
//! unknown", drops the log and opens it again.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig};

const ROW: RecordType = RecordType::optional(0x100);

/// Runs a future on this thread, sleeping until its waker is called.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park(); // a spurious wake-up only polls once more
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = SegmentedWalConfig::new(dir.path());
    config.allow_buffered_fallback = true; // a temporary directory may refuse O_DIRECT
    let wal = SegmentedWal::open(config)?;

    // Pipelined: each batch's sync runs while the next batch is appended.
    let mut unacknowledged = Vec::new();
    for batch in 0..8u32 {
        let mut last = Lsn::ZERO;
        for row in 0..500u32 {
            last = wal.append(Record::new(ROW, format!("batch {batch} row {row}").as_bytes()))?;
        }
        wal.request_sync(last)?;
        unacknowledged.push((batch, last));
    }
    for (batch, last) in unacknowledged {
        wal.wait_durable(last)?; // returns at once where a later sync already covered it
        println!("batch {batch} acknowledged: durable through LSN {last}");
    }

    // The same wait as a future.
    let lsn = wal.append(Record::new(ROW, b"from a task"))?;
    block_on(wal.durable(lsn)?)?;
    assert!(wal.durable_lsn() >= lsn);
    let stats = wal.stats();
    println!("{} records in {} fdatasyncs; LSN {lsn} durable through the future", stats.records, stats.fsyncs);
    wal.close()?;
    Ok(())
}
