//! A panic in a caller's closure or loop over the log leaves the log usable.

use std::time::Duration;

use nodedb_wal::storage::FaultConfig;
use nodedb_wal::{Lsn, Record, SegmentedWal, SegmentedWalConfig, SimStorage};

use crate::support::{TY, check_run, config, encrypted, payload_of, watchdog};

/// A panic in a caller's closure or loop over the log (a replay's apply callback, with decoder
/// threads working ahead; a tail loop; a reader loop) unwinds to the caller and leaves the log
/// working: appends are acknowledged and the log reads back whole.
#[test]
fn a_panic_in_a_replay_callback_a_tail_loop_or_a_reader_loop_leaves_the_log_usable() {
    watchdog("panics in callers", || {
        // Plaintext: a replay reads in sequence on few cores (with a read-ahead helper).
        for config in [config("/panics"), encrypted("/panics")] {
            panics_in_callers(config);
        }
    });
}

fn panics_in_callers(config: SegmentedWalConfig) {
    {
        let wal = SegmentedWal::open_with(SimStorage::new(9, FaultConfig::default()), config).unwrap();
        for i in 1..=3000u64 {
            wal.append(Record::new(TY, &payload_of(i))).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.segments().len() > 4);
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for at in [1u64, 700, 2999] {
            for threads in [1, 2, 4] {
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    wal.replay_parallel(Lsn::FIRST, threads, |r| {
                        if r.lsn.0 == at {
                            panic!("the apply callback failed");
                        }
                        Ok(())
                    })
                }));
                assert!(panicked.is_err(), "the panic reached the caller");
            }
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut tail = wal.tail(Lsn::FIRST);
                while let Some(r) = tail.next_timeout(Duration::from_secs(5)).unwrap() {
                    assert!(r.lsn.0 != at, "the subscriber failed");
                }
            }));
            assert!(panicked.is_err());
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for r in wal.read_from(Lsn::FIRST).unwrap() {
                    assert!(r.unwrap().lsn.0 != at, "the reader's caller failed");
                }
            }));
            assert!(panicked.is_err());
        }
        std::panic::set_hook(quiet);
        let lsn = wal.append_durable(Record::new(TY, &payload_of(3001))).unwrap();
        assert_eq!(lsn, Lsn(3001));
        let mut applied = 0u64;
        wal.replay_parallel(Lsn::FIRST, 4, |r| {
            applied += 1;
            assert_eq!(r.payload, payload_of(r.lsn.0));
            Ok(())
        })
        .unwrap();
        assert_eq!(applied, 3001);
        let mut tail = wal.tail(Lsn(2990));
        let records = std::iter::from_fn(|| tail.next_timeout(Duration::from_millis(50)).transpose());
        assert_eq!(check_run("tail", Lsn(2990), records.map(|r| r.map(|r| (r.lsn, r.payload.into_vec()))), usize::MAX), 12);
        wal.close().unwrap();
    }
}
