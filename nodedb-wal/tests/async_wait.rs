//! The async wait (`SegmentedWal::durable`): a task's `Waker` runs on the thread that made its
//! record durable, the log's flusher. What a waker does there must not break the log.
//! (Needs tests/common/mod.rs from the damage tests.)

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use common::{Gate, Gated, Place, config, read_all};
use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SimStorage, WalError};

type Log = SegmentedWal<Gated<SimStorage>>;

/// A task whose executor is gone: waking it drops it, and with it the wait it was running and
/// the log it owned. It shuts the gate first, so that the flusher's next batch is held between
/// its write and its sync, and says when it is done.
struct Orphan {
    wait: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    log: Mutex<Option<Arc<Log>>>,
    gate: Arc<Gate>,
    /// Close the log (its last handle) instead of dropping it; the outcome is sent.
    close: bool,
    done: Mutex<mpsc::Sender<Option<Result<(), WalError>>>>,
}

impl Wake for Orphan {
    fn wake(self: Arc<Self>) {
        self.gate.shut();
        drop(self.wait.lock().unwrap().take());
        let log = self.log.lock().unwrap().take().expect("woken once");
        let closed = self.close.then(|| Arc::into_inner(log).expect("the last handle").close());
        let _ = self.done.lock().unwrap().send(closed);
    }
}

/// Appends two records, the first synced and the second left for the next batch, and lets an
/// orphaned task's waker drop (or `close`) the log's last handle on the flusher thread. Checks
/// that the directory stays locked while the flusher still holds a batch and that every record
/// is there once it is done; returns what `close` said.
fn dropped_on_the_flusher(close: bool) -> Option<Result<(), WalError>> {
    let (sim, dir, _tmp) = SimStorage::fresh();
    let gated = Gated::new(sim.clone());
    let wal = Arc::new(SegmentedWal::open_with(gated.clone(), config(&dir)).unwrap());
    let ty = RecordType::optional(0x100);
    gated.gate.shut();
    let first = wal.append(Record::new(ty, b"first")).unwrap();
    wal.request_sync(first).unwrap();
    gated.gate.wait_held();
    // Written but not yet synced: the next record waits for the next batch.
    let second = wal.append(Record::new(ty, b"second")).unwrap();
    let (done, woken) = mpsc::channel();
    let owned = Arc::clone(&wal);
    let wait: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move { owned.durable(first).unwrap().await.unwrap() });
    let task = Arc::new(Orphan {
        wait: Mutex::new(Some(wait)),
        log: Mutex::new(Some(Arc::clone(&wal))),
        gate: Arc::clone(&gated.gate),
        close,
        done: Mutex::new(done),
    });
    let waker = Waker::from(Arc::clone(&task));
    let polled = task.wait.lock().unwrap().as_mut().expect("not yet woken").as_mut().poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending());
    // The executor is gone: only the registered waker keeps the task, and the task the log.
    drop((waker, task, wal));
    // Let the first batch's sync through: its waker drops the log on the flusher thread, which
    // goes on to write the second batch and is held before syncing it.
    gated.gate.open();
    let closed = woken.recv_timeout(Duration::from_secs(20)).expect("the task was woken");
    gated.gate.wait_held();
    let err = SegmentedWal::open_with(sim.clone(), config(&dir)).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "opened under a flusher still writing: {err}");
    gated.gate.open();

    let deadline = Instant::now() + Duration::from_secs(20);
    let reopened = loop {
        match SegmentedWal::open_with(sim.clone(), config(&dir)) {
            Ok(wal) => break wal,
            Err(WalError::Locked { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(reopened.recovery_info().last_lsn, second, "the flusher wrote everything appended before it let go");
    let third = reopened.append_durable(Record::new(ty, b"third")).unwrap();
    reopened.close().unwrap();
    let wal = SegmentedWal::open_with(sim, config(&dir)).unwrap();
    let payloads: Vec<(Lsn, Vec<u8>)> = read_all(&wal).into_iter().map(|r| (r.lsn, r.payload.into_vec())).collect();
    assert_eq!(payloads, [(first, b"first".to_vec()), (second, b"second".to_vec()), (third, b"third".to_vec())]);
    closed
}

// Found by an adversarial review: an orphaned task's waker dropped the last handle on the
// flusher thread. The drop tried to join the flusher from the flusher (a panic, caught), and the
// directory's lock went with the dropped log while the flusher still had a batch to write: a
// second writer opened the directory, and the old flusher's late batch landed in the segment the
// new writer had sealed, behind which the new writer's acknowledged record became unreadable.
#[test]
fn a_log_dropped_by_a_waker_on_the_flusher_keeps_its_directory_until_the_flusher_is_done() {
    assert!(dropped_on_the_flusher(false).is_none());
}

/// `close` there cannot wait for the flusher, so it says it could not confirm the records still
/// being written, which the flusher then writes all the same.
#[test]
fn a_close_on_the_flusher_says_what_it_could_not_confirm() {
    let closed = dropped_on_the_flusher(true).expect("closed");
    assert!(matches!(closed, Err(WalError::CloseUnconfirmed { durable: Lsn(1), appended: Lsn(2) })), "{closed:?}");
}
