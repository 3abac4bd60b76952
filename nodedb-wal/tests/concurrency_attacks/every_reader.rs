//! Every kind of reader, with header indexes, mapped segments, key rotation and reused files,
//! beside one writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

use crate::support::{TY, config, replay_some, rounds, watchdog, xorshift};

/// A payload large enough (~3 KiB on average) that sealed segments get header indexes, and
/// that names its LSN: a record of a reused file's earlier life, or of another LSN, differs.
fn indexed_payload_of(lsn: u64) -> Vec<u8> {
    let mut bytes = lsn.to_le_bytes().repeat(1 + (lsn % 7) as usize);
    bytes.resize(1500 + (lsn as usize * 97) % 3000, lsn as u8);
    bytes
}

/// Like [`check_run`] for [`indexed_payload_of`]; `None` for a payload not read (a headers-only
/// scan that skipped it).
fn check_indexed(what: &str, from: Lsn, records: impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>>, max: usize) -> usize {
    let mut expected = from.0;
    for record in records.take(max) {
        match record {
            Ok((lsn, payload)) => {
                assert_eq!(lsn.0, expected, "{what} from {from}: a gap or a record out of order");
                if let Some(payload) = payload {
                    assert!(payload == indexed_payload_of(lsn.0), "{what} from {from}: the wrong record at {lsn}");
                }
                expected += 1;
            }
            Err(WalError::SegmentTruncated { .. } | WalError::LsnNotRetained { .. }) => break,
            Err(err) => panic!("{what} from {from} failed: {err}"),
        }
    }
    usize::try_from(expected - from.0).unwrap()
}

/// Owned records of a `WalIter` as [`check_indexed`] takes them.
fn owned<I: Iterator<Item = Result<nodedb_wal::WalRecord, WalError>>>(
    it: I,
) -> impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>> {
    it.map(|r| r.map(|r| (r.lsn, Some(r.payload.into_vec()))))
}

/// A lazy reader's records, reading every `every`th payload (none with 0).
fn lazy_records<S: Storage>(
    mut lazy: nodedb_wal::LazyWalReader<S>,
    every: u64,
) -> impl Iterator<Item = Result<(Lsn, Option<Vec<u8>>), WalError>> {
    std::iter::from_fn(move || match lazy.next_header() {
        Ok(Some(h)) if every > 0 && h.lsn.0 % every == 0 => Some(lazy.payload().map(|p| (h.lsn, Some(p)))),
        Ok(Some(h)) => Some(Ok((h.lsn, None))),
        Ok(None) => None,
        Err(err) => Some(Err(err)),
    })
}

/// The one writer of [`every_reader_beside_rolls_rotation_and_reuse`]: appends `n` records,
/// syncs every 20, truncates behind itself every 80 (files kept for reuse) and, with a key
/// ring, rotates to a new key every 150 records, so the next append rolls the segment.
fn churn<S: Storage>(wal: &SegmentedWal<S>, n: u64, ring: Option<&KeyRing>) {
    for i in 1..=n {
        assert_eq!(wal.append(Record::new(TY, &indexed_payload_of(i))).unwrap(), Lsn(i));
        if let Some(ring) = ring.filter(|_| i % 150 == 0) {
            let id = u32::try_from(i / 150 + 1).unwrap();
            ring.insert(id, SecureKey::from_bytes(&mut [id as u8; 32])).unwrap();
            ring.set_active(id).unwrap();
        }
        if i % 20 == 0 {
            let durable = wal.sync().unwrap();
            if i % 80 == 0 {
                wal.truncate_before(Lsn(durable.0.saturating_sub(300).max(1))).unwrap();
            }
        }
    }
    wal.sync().unwrap();
}

/// A reader that could not be made: its start truncated away meanwhile (0 records), or a
/// failure.
fn not_made(what: &str, from: Lsn, err: WalError) -> usize {
    match err {
        WalError::LsnNotRetained { .. } | WalError::SegmentTruncated { .. } => 0,
        err => panic!("{what}({from}): {err}"),
    }
}

/// One reader of kind `kind` made now from a random LSN the log holds, read to its end, to a
/// typed "not retained" stop or to `max` records; returns how many it handed out.
fn read_once<S: Storage + 'static>(wal: &Arc<SegmentedWal<S>>, kind: u64, rng: &mut u64) -> usize {
    let (oldest, durable) = (wal.oldest_lsn().0, wal.durable_lsn().0);
    let from = Lsn(oldest + xorshift(rng) % (durable.saturating_sub(oldest) + 1));
    let made = |what: &str, err: WalError| not_made(what, from, err);
    match kind {
        0 => wal.read_from(from).map_or_else(|e| made("read_from", e), |it| check_indexed("read_from", from, owned(it), 400)),
        1 => wal.read_mapped(from).map_or_else(|e| made("read_mapped", e), |it| check_indexed("read_mapped", from, owned(it), 400)),
        2 => wal.lazy_reader(from).map_or_else(|e| made("lazy_reader", e), |lazy| check_indexed("lazy", from, lazy_records(lazy, 3), 400)),
        3 => {
            wal.lazy_reader(from).map_or_else(|e| made("lazy_reader", e), |lazy| check_indexed("headers", from, lazy_records(lazy, 0), 400))
        }
        4 => {
            let records = replay_some(wal, from, 3, 300).into_iter().map(|r| r.map(|(lsn, payload)| (lsn, Some(payload))));
            check_indexed("replay", from, records, usize::MAX)
        }
        _ => {
            // A tail on its own thread, holding the log through its `Arc`.
            let mut tail = Arc::clone(wal).tail_shared(from);
            let records = std::thread::spawn(move || {
                std::iter::from_fn(|| tail.next_timeout(Duration::from_millis(20)).transpose())
                    .take(1500)
                    .map(|r| r.map(|r| (r.lsn, Some(r.payload.into_vec()))))
                    .collect::<Vec<_>>()
            });
            check_indexed("tail_shared", from, records.join().unwrap().into_iter(), usize::MAX)
        }
    }
}

/// A read-only look opened beside the owner (another process would do the same), read mapped
/// or headers-first from a random LSN it holds.
fn look_once<S: Storage + Clone>(wal: &SegmentedWal<S>, dir: &std::path::Path, ring: Option<Arc<KeyRing>>, rng: &mut u64) -> usize {
    let look = match ReadOnlyWal::open_with(wal.storage().clone(), dir, ring) {
        Ok(look) => look,
        Err(err) => panic!("a read-only look beside the writer: {err}"),
    };
    let info = look.recovery_info();
    let (first, last) = (info.first_lsn.0, info.last_lsn.0);
    if last < first {
        return 0;
    }
    let from = Lsn(first + xorshift(rng) % (last - first + 1));
    let made = |what: &str, err: WalError| not_made(what, from, err);
    if xorshift(rng).is_multiple_of(2) {
        look.read_mapped(from).map_or_else(|e| made("look mapped", e), |it| check_indexed("look mapped", from, owned(it), 400))
    } else {
        look.lazy_reader(from).map_or_else(|e| made("look lazy", e), |lazy| check_indexed("look lazy", from, lazy_records(lazy, 2), 400))
    }
}

/// Every kind of reader (owned, mapped, headers-first with and without payloads, a parallel
/// replay, a shared tail on its own thread, a read-only look) runs while one writer appends
/// records large enough for header indexes, rolls, truncates behind itself with files kept
/// and reused, and (encrypted rounds) rotates its key every few segments: each hands out
/// records in order, dense, each the one appended at its LSN (never one of a reused file's
/// earlier life), or stops with a typed error. Segments of 1 MiB or more in some rounds, so
/// that helpers read and check ahead.
fn every_reader_beside_rolls_rotation_and_reuse<S: Storage + Clone + 'static>(
    dir_of: impl Fn(u64) -> std::path::PathBuf + Send + 'static,
    open: impl Fn(u64, SegmentedWalConfig) -> SegmentedWal<S> + Send + 'static,
) {
    watchdog("every reader", move || {
        for round in 0..rounds(4) {
            let dir = dir_of(round);
            let mut c = config("");
            c.dir = dir.clone();
            c.recycle_segments = 2;
            c.segment_bytes_target = if round % 4 < 2 { 96 * 1024 } else { 2 << 20 };
            c.batch_bytes_max = 32 * 1024;
            let ring = (round % 2 == 1).then(|| Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [1; 32]))));
            c.key_ring = ring.clone();
            let wal = Arc::new(open(round, c));
            const N: u64 = 4000;
            let done = AtomicBool::new(false);
            let read = AtomicU64::new(0);
            std::thread::scope(|s| {
                s.spawn(|| {
                    churn(&wal, N, ring.as_deref());
                    done.store(true, Ordering::SeqCst);
                });
                for r in 0..7u64 {
                    let (wal, done, read, dir, ring) = (&wal, &done, &read, &dir, ring.clone());
                    s.spawn(move || {
                        let mut rng = 77 + r * 13 + round;
                        let mut kind = r;
                        // Until the writer is done and something was read: on the simulated
                        // disk the writer can finish before any reader was scheduled.
                        while !done.load(Ordering::SeqCst) || read.load(Ordering::Relaxed) == 0 {
                            let n = if kind % 7 == 6 {
                                look_once(wal, dir, ring.clone(), &mut rng)
                            } else {
                                read_once(wal, kind % 7, &mut rng)
                            };
                            read.fetch_add(n as u64, Ordering::Relaxed);
                            kind += 1;
                        }
                    });
                }
            });
            assert!(read.load(Ordering::Relaxed) > 0, "the readers read something");
            let oldest = wal.oldest_lsn();
            let all = check_indexed("final", oldest, owned(wal.read_mapped(oldest).unwrap()), usize::MAX);
            assert_eq!(oldest.0 + all as u64, N + 1, "round {round}");
            drop(wal);
            // On real files, a widened sweep would otherwise keep every round's log (the
            // simulation's path is not on disk).
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

#[test]
fn every_reader_beside_rolls_rotation_and_reuse_reads_dense_records_or_stops_typed_sim() {
    every_reader_beside_rolls_rotation_and_reuse(
        |round| format!("/every-reader-{round}").into(),
        |round, c| SegmentedWal::open_with(SimStorage::new(400 + round, FaultConfig::default()), c).unwrap(),
    );
}

/// On real files, so that sealed segments are mapped.
#[test]
fn every_reader_beside_rolls_rotation_and_reuse_reads_dense_records_or_stops_typed_fs() {
    every_reader_beside_rolls_rotation_and_reuse(
        {
            let tmp = tempfile::tempdir().unwrap();
            move |round| tmp.path().join(format!("wal-{round}"))
        },
        |_, c| SegmentedWal::open(SegmentedWalConfig { allow_buffered_fallback: true, ..c }).unwrap(),
    );
}
