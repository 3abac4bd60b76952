//! Retiring keys beside every other writer at once: appenders of single records, groups and
//! batches (some pipelined, asking for a sync and going on), a thread rotating the active key,
//! one truncating, and one retiring every key that is not active, in loops. Whatever order they
//! run in, the log must never let go of a key that one of its segments is under: after all of
//! it, the log reopens with only the keys not retired, and every record at or above the last
//! truncation's checkpoint that was acknowledged durable reads back (never `UnknownKeyId`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nodedb_wal::storage::{FaultConfig, Storage};
use nodedb_wal::{FsStorage, KeyRing, Lsn, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

fn key(id: u32) -> SecureKey {
    SecureKey::from_bytes(&mut [id as u8; 32])
}

fn config(dir: &std::path::Path, ring: &Arc<KeyRing>, recycle: usize) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 16 * 1024;
    c.batch_bytes_max = 4 * 1024;
    c.recycle_segments = recycle;
    c.allow_buffered_fallback = true;
    c.key_ring = Some(Arc::clone(ring));
    c
}

fn payload(thread: u32, n: u32) -> Vec<u8> {
    let mut p = vec![thread as u8; 40 + (n as usize * 37) % 400];
    p[..4].copy_from_slice(&n.to_le_bytes());
    p
}

/// How one appender thread appends: one at a time and durable, groups, batches, or pipelined
/// (append, ask for a sync, wait for it a few appends later).
fn append_loop<S: Storage>(wal: &SegmentedWal<S>, thread: u32, stop: &AtomicBool, acked: &Mutex<BTreeSet<u64>>) {
    let ty = RecordType::optional(0x100);
    let mut in_flight: Vec<Lsn> = Vec::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let p = payload(thread, n);
        let lsns: Vec<Lsn> = match thread % 4 {
            0 => vec![wal.append_durable(Record::new(ty, &p)).unwrap()],
            1 => {
                let records = [Record::new(ty, &p), Record::new(ty, &p[..20])];
                let range = wal.append_group(&records).unwrap();
                wal.wait_durable(*range.end()).unwrap();
                Lsn::range(&range).collect()
            }
            2 => {
                let records = [Record::new(ty, &p), Record::new(ty, &p[..10]), Record::new(ty, &p[..30])];
                let range = wal.append_batch(&records).unwrap();
                wal.wait_durable(*range.end()).unwrap();
                Lsn::range(&range).collect()
            }
            _ => {
                let lsn = wal.append(Record::new(ty, &p)).unwrap();
                wal.request_sync(lsn).unwrap();
                in_flight.push(lsn);
                if in_flight.len() < 4 {
                    continue;
                }
                let done = std::mem::take(&mut in_flight);
                wal.wait_durable(*done.last().unwrap()).unwrap();
                done
            }
        };
        acked.lock().unwrap().extend(lsns.iter().map(|l| l.0));
    }
    for lsn in in_flight {
        wal.wait_durable(lsn).unwrap();
        acked.lock().unwrap().insert(lsn.0);
    }
}

/// Runs the threads for `rounds` rotations, then reopens with the keys not retired and checks
/// every acknowledged record above the last checkpoint reads back.
fn race<S: Storage + Clone + Send + Sync + 'static>(storage: S, dir: &std::path::Path, rounds: u32, recycle: usize)
where
    S::File: Send + Sync,
{
    let ring = Arc::new(KeyRing::with_active(1, key(1)));
    let wal = Arc::new(SegmentedWal::open_with(storage.clone(), config(dir, &ring, recycle)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let active = Arc::new(AtomicU32::new(1));
    let checkpoint = Arc::new(Mutex::new(Lsn::FIRST));
    let mut threads = Vec::new();
    for thread in 0..4 {
        let (wal, stop, acked) = (Arc::clone(&wal), Arc::clone(&stop), Arc::clone(&acked));
        threads.push(std::thread::spawn(move || append_loop(&wal, thread, &stop, &acked)));
    }
    {
        let (wal, stop, checkpoint) = (Arc::clone(&wal), Arc::clone(&stop), Arc::clone(&checkpoint));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let at = wal.sync().unwrap().next();
                wal.truncate_before(at).unwrap();
                *checkpoint.lock().unwrap() = at;
                std::thread::yield_now();
            }
        }));
    }
    {
        let (wal, stop, active) = (Arc::clone(&wal), Arc::clone(&stop), Arc::clone(&active));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = active.load(Ordering::Relaxed);
                for id in 1..now {
                    match wal.retire_key(id) {
                        Ok(()) | Err(WalError::KeyStillNeeded { .. }) => {}
                        Err(e) => panic!("retiring key {id}: {e}"),
                    }
                }
                std::thread::yield_now();
            }
        }));
    }
    for to in 2..=rounds + 1 {
        let seen = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < seen + 30 {
            std::thread::yield_now();
        }
        ring.insert(to, key(to)).unwrap();
        ring.set_active(to).unwrap();
        active.store(to, Ordering::Relaxed);
    }
    // The race goes on until it has retired a key: under load the rotations can end before
    // the truncations have freed an old key's last segment (seen once beside other builds).
    // The appenders and truncations go on meanwhile, so every old key's segments do go; the
    // deadline only turns a hang into a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ring.retired_key_ids().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no key was retired: the truncations never freed an old key");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let floor = *checkpoint.lock().unwrap();
    let retired = ring.retired_key_ids();
    let Ok(wal) = Arc::try_unwrap(wal) else { panic!("a thread still holds the log") };
    wal.close().unwrap();

    let fresh = Arc::new(KeyRing::new());
    for id in ring.key_ids() {
        fresh.insert(id, key(id)).unwrap();
    }
    for &id in &retired {
        fresh.retire(id).unwrap();
    }
    fresh.set_active(rounds + 1).unwrap();
    let wal =
        SegmentedWal::open_with(storage, config(dir, &fresh, recycle)).unwrap_or_else(|e| panic!("reopen (retired {retired:?}): {e}"));
    let read: BTreeSet<u64> =
        wal.read_from(wal.oldest_lsn()).unwrap().map(|r| r.unwrap_or_else(|e| panic!("retired {retired:?}: {e}")).lsn.0).collect();
    let missing: Vec<u64> = acked.lock().unwrap().iter().copied().filter(|&l| l >= floor.0 && !read.contains(&l)).collect();
    assert!(missing.is_empty(), "acknowledged records above {floor} lost: {missing:?}");
}

#[test]
fn keys_retired_beside_appenders_rotations_and_truncations_leave_every_durable_record_readable() {
    for seed in 0..6 {
        race(SimStorage::new(seed, FaultConfig::default()), std::path::Path::new("/races"), 12, (seed % 3) as usize);
    }
}

#[test]
fn keys_retired_beside_writers_on_a_real_file_system_leave_every_durable_record_readable() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        race(FsStorage::new(), dir.path(), 10, round);
    }
}
