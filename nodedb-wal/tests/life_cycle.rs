//! The segment life cycle across many lives of one log, on the simulated disk: each life opens
//! with another block size (512 B to 64 KiB), segment target, number of segments kept for reuse
//! and zero-fill, so that files kept under one life are reused under another; encrypted seeds
//! rotate keys at rolls and retire the old ones once truncation has taken their segments; lives
//! end in a close or a power cut, some with I/O faults, some while appenders, a truncating
//! thread (checkpoints up to the next LSN) and readers (`read_from`, `read_mapped`) run at once.
//! After every life, a read-only look and the owner's open recover every acknowledged record,
//! dense and intact, nothing that was never appended, and nothing from the last checkpoint on is
//! missing; what the readers returned while the log rolled, truncated and reused files under
//! them was records of the log, at their LSNs.
//!
//! `NODEDB_WAL_LIFE_SEEDS` sets how many seeds run (default 40 in debug builds, 400 in release);
//! `NODEDB_WAL_LIFE_SEED` runs one, and `NODEDB_WAL_LIFE_TRACE` prints each life's settings.
//! Written by an adversarial review of the life cycle, which it found sound (9,000 seeds).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nodedb_wal::storage::{FaultConfig, SimRng, Storage as _, SyncFailure};
use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};

const DIR: &str = "/life/wal";

/// What the test knows: every record appended (by LSN), the highest acknowledged LSN, the
/// highest checkpoint a truncation was given, and the keys the log may still need (oldest first,
/// the last active).
#[derive(Default)]
struct Model {
    appended: BTreeMap<u64, Vec<u8>>,
    acked: u64,
    checkpoint: u64,
    keys: Vec<u32>,
}

/// Key `id`, the same in every life, as a restart would load it.
fn key(id: u32) -> SecureKey {
    SecureKey::from_bytes(&mut [id as u8 ^ 0x5A; 32])
}

/// The ring a new life opens with: every key not retired, the newest active.
fn ring(model: &Model) -> Option<Arc<KeyRing>> {
    let (&active, older) = model.keys.split_last()?;
    let ring = KeyRing::with_active(active, key(active));
    for &id in older {
        ring.insert(id, key(id)).unwrap();
    }
    Some(Arc::new(ring))
}

/// The settings of a new life, drawn afresh each time.
fn life_config(rng: &mut SimRng, model: &Model) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(DIR);
    c.alignment = [512, 4096, 16384, 65536][rng.below(4) as usize];
    // The simulated disk takes O_DIRECT in 4 KiB units.
    c.direct_io = rng.below(2) == 0 && c.alignment >= 4096;
    c.segment_bytes_target = [16 * 1024, 24 * 1024, 40 * 1024, 64 * 1024][rng.below(4) as usize];
    c.segment_bytes_target = c.segment_bytes_target.max(4 * c.alignment as u64);
    c.batch_bytes_max = (8 * 1024).max(c.alignment);
    c.batch_buffers = 3;
    c.payload_bytes_max = (70 * 1024).max(c.segment_bytes_target as usize + 1024);
    c.recycle_segments = rng.below(9) as usize;
    c.zero_fill_bytes = if rng.below(2) == 0 { 0 } else { 128 * 1024 };
    c.key_ring = ring(model);
    if std::env::var("NODEDB_WAL_LIFE_TRACE").is_ok() {
        eprintln!(
            "life: align {} direct {} target {} recycle {} zero {} keys {:?}",
            c.alignment, c.direct_io, c.segment_bytes_target, c.recycle_segments, c.zero_fill_bytes, model.keys
        );
    }
    c
}

/// A random payload: mostly small, some larger than a batch buffer, some near `target`.
fn payload(rng: &mut SimRng, target: u64) -> Vec<u8> {
    let len = match rng.below(20) {
        0 => target as usize - 200 + rng.below(400) as usize,
        1 => 9 * 1024 + rng.below(10 * 1024) as usize,
        2..=4 => rng.below(4000) as usize,
        _ => rng.below(300) as usize,
    };
    let tag = rng.next_u64();
    (0..len).map(|i| (tag >> (i % 8 * 8)) as u8 ^ i as u8).collect()
}

/// The type of every record here.
fn ty() -> RecordType {
    RecordType::optional(0x100)
}

/// Reads the live log from `from` and checks each record against the model; a truncation
/// overtaking the reader ends the read.
fn check_read(wal: &SegmentedWal<SimStorage>, model: &Model, from: Lsn, seed: u64, mapped: bool) {
    let iter = if mapped { wal.read_mapped(from) } else { wal.read_from(from) };
    let Ok(iter) = iter else { return };
    let mut expected = None;
    for r in iter {
        match r {
            Ok(r) => {
                if let Some(e) = expected {
                    assert_eq!(r.lsn.0, e, "seed {seed}: dense");
                }
                expected = Some(r.lsn.0 + 1);
                let appended = model.appended.get(&r.lsn.0).unwrap_or_else(|| panic!("seed {seed}: LSN {} never appended", r.lsn));
                assert_eq!(&r.payload, appended, "seed {seed}: payload of {}", r.lsn);
            }
            Err(WalError::SegmentTruncated { .. }) => return,
            Err(e) => panic!("seed {seed}: read failed: {e}"),
        }
    }
}

/// Looks at the log read-only, then opens it, and checks what it recovered against the model,
/// which it then trims to what survived (records past the recovered end were never acknowledged).
fn reopen(sim: &SimStorage, model: &mut Model, config: SegmentedWalConfig, seed: u64) -> SegmentedWal<SimStorage> {
    let look = ReadOnlyWal::open_with(sim.clone(), Path::new(DIR), ring(model));
    if let Err(e) = &look
        && !matches!(e, WalError::Io { .. } if sim.list(Path::new(DIR)).is_err())
    {
        panic!("seed {seed}: look failed: {e}");
    }
    drop(look);
    let wal = SegmentedWal::open_with(sim.clone(), config).unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    let info = wal.recovery_info().clone();
    assert!(info.first_lsn.0 <= model.checkpoint.max(1), "seed {seed}: checkpoint {} but first {}", model.checkpoint, info.first_lsn);
    let mut expected = info.first_lsn.0;
    for r in wal.read_from(info.first_lsn).unwrap() {
        let r = r.unwrap_or_else(|e| panic!("seed {seed}: replay failed: {e}"));
        assert_eq!(r.lsn.0, expected, "seed {seed}: dense");
        let appended = model.appended.get(&r.lsn.0).unwrap_or_else(|| panic!("seed {seed}: LSN {} never appended", r.lsn));
        assert_eq!(&r.payload, appended, "seed {seed}: payload of {}", r.lsn);
        expected += 1;
    }
    let last = expected - 1;
    assert!(last >= model.acked, "seed {seed}: acked {} lost; recovered to {last}", model.acked);
    model.appended.retain(|&lsn, _| lsn <= last);
    model.acked = last;
    model.checkpoint = model.checkpoint.min(last + 1);
    wal
}

/// One thread's random operations on a live log: appends (single, batches, groups; some near
/// the segment target, some larger than a batch buffer), syncs, truncations at checkpoints up to
/// the next LSN (a segment's first LSN among them), key rotations and retirements, and reads.
fn ops(
    wal: &SegmentedWal<SimStorage>,
    ring: Option<&KeyRing>,
    model: &mut Model,
    rng: &mut SimRng,
    target: u64,
    seed: u64,
) -> Result<(), WalError> {
    for _ in 0..rng.below(80) {
        match rng.below(14) {
            0..=5 => {
                let bytes = payload(rng, target);
                let lsn = wal.append(Record::new(ty(), &bytes))?;
                model.appended.insert(lsn.0, bytes);
            }
            6 => {
                let batch: Vec<Vec<u8>> = (0..1 + rng.below(6)).map(|_| payload(rng, target / 4)).collect();
                let records: Vec<Record<'_>> = batch.iter().map(|b| Record::new(ty(), b)).collect();
                let lsns = if rng.below(2) == 0 { wal.append_batch(&records)? } else { wal.append_group(&records)? };
                for (lsn, b) in (lsns.start().0..=lsns.end().0).zip(batch) {
                    model.appended.insert(lsn, b);
                }
            }
            7..=8 => {
                let lsn = wal.sync()?;
                model.acked = model.acked.max(lsn.0);
            }
            9..=10 => {
                let next = wal.next_lsn().0;
                let checkpoint = match rng.below(4) {
                    0 => next,
                    1 => {
                        let segs = wal.segments();
                        if segs.is_empty() { next } else { segs[rng.below(segs.len() as u64) as usize].first_lsn.0 }
                    }
                    _ => rng.below(next + 1),
                };
                let checkpoint = checkpoint.max(1);
                model.checkpoint = model.checkpoint.max(checkpoint);
                let reader_from = wal.oldest_lsn();
                wal.truncate_before(Lsn(checkpoint))?;
                if model.keys.len() > 1 && rng.below(2) == 0 {
                    let oldest = model.keys[0];
                    match wal.retire_key(oldest) {
                        Ok(()) => {
                            model.keys.remove(0);
                        }
                        Err(WalError::KeyStillNeeded { .. } | WalError::KeyActive { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if rng.below(2) == 0 {
                    check_read(wal, model, reader_from, seed, rng.below(2) == 0);
                }
            }
            11 => {
                // Rotate: the next segment is encrypted under a new key.
                let Some(ring) = ring.filter(|_| rng.below(3) == 0) else { continue };
                let id = model.keys.last().expect("an encrypted log has a key") + 1;
                ring.insert(id, key(id))?;
                ring.set_active(id)?;
                model.keys.push(id);
            }
            _ => {
                let from = wal.oldest_lsn();
                check_read(wal, model, from, seed, rng.below(2) == 0);
            }
        }
    }
    Ok(())
}

/// Appenders, a truncating thread and a reading thread at once, the disk cut at a random moment.
fn concurrent(wal: SegmentedWal<SimStorage>, sim: &SimStorage, model: &mut Model, rng: &mut SimRng, target: u64, seed: u64) -> SimStorage {
    use std::sync::Mutex;
    let wal = Arc::new(wal);
    let shared = Arc::new(Mutex::new((BTreeMap::new(), 0u64, 0u64)));
    let read = Arc::new(Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
    let mut threads = Vec::new();
    for t in 0..3 {
        let (wal, shared) = (Arc::clone(&wal), Arc::clone(&shared));
        let mut rng = SimRng::new(rng.next_u64() ^ t);
        threads.push(std::thread::spawn(move || {
            for _ in 0..rng.below(60) {
                let bytes = payload(&mut rng, target);
                let Ok(lsn) = wal.append(Record::new(ty(), &bytes)) else { return };
                shared.lock().unwrap().0.insert(lsn.0, bytes);
                if wal.wait_durable(lsn).is_err() {
                    return;
                }
                let mut s = shared.lock().unwrap();
                s.1 = s.1.max(lsn.0);
            }
        }));
    }
    {
        let (wal, shared) = (Arc::clone(&wal), Arc::clone(&shared));
        let mut rng = SimRng::new(rng.next_u64());
        threads.push(std::thread::spawn(move || {
            for _ in 0..rng.below(30) {
                let next = wal.next_lsn().0;
                let checkpoint = if rng.below(2) == 0 { next } else { 1 + rng.below(next) };
                {
                    let mut s = shared.lock().unwrap();
                    s.2 = s.2.max(checkpoint);
                }
                let _ = wal.truncate_before(Lsn(checkpoint));
                std::thread::yield_now();
            }
        }));
    }
    let crashed = Arc::new(AtomicBool::new(false));
    {
        let (wal, read, crashed) = (Arc::clone(&wal), Arc::clone(&read), Arc::clone(&crashed));
        let mut rng = SimRng::new(rng.next_u64());
        threads.push(std::thread::spawn(move || {
            for _ in 0..rng.below(8) {
                let from = wal.oldest_lsn();
                let iter = if rng.below(2) == 0 { wal.read_mapped(from) } else { wal.read_from(from) };
                let Ok(iter) = iter else { continue };
                let mut prev = None;
                for r in iter {
                    match r {
                        Ok(r) => {
                            if let Some(p) = prev {
                                assert_eq!(r.lsn.0, p + 1, "seed {seed}: dense");
                            }
                            prev = Some(r.lsn.0);
                            read.lock().unwrap().push((r.lsn.0, r.payload.to_vec()));
                        }
                        Err(WalError::SegmentTruncated { .. } | WalError::Poisoned { .. }) => break,
                        Err(_) if crashed.load(Ordering::SeqCst) => break,
                        Err(e) => panic!("seed {seed}: concurrent read failed: {e}"),
                    }
                }
            }
        }));
    }
    for _ in 0..rng.below(400) {
        std::thread::yield_now();
    }
    crashed.store(true, Ordering::SeqCst);
    let after = sim.crash(rng.next_u64());
    for t in threads {
        t.join().unwrap_or_else(|_| panic!("seed {seed}: a thread panicked"));
    }
    let (appended, acked, checkpoint) = std::mem::take(&mut *shared.lock().unwrap());
    model.appended.extend(appended);
    model.acked = model.acked.max(acked);
    model.checkpoint = model.checkpoint.max(checkpoint);
    for (lsn, payload) in read.lock().unwrap().iter() {
        let appended = model.appended.get(lsn).unwrap_or_else(|| panic!("seed {seed}: read LSN {lsn} never appended"));
        assert_eq!(appended, payload, "seed {seed}: concurrent read of {lsn} differs");
    }
    drop(wal);
    after
}

/// A few lives of one log, each ended by a close, a power cut, or a power cut while threads run.
fn run_seed(seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut sim = SimStorage::new(rng.next_u64(), FaultConfig::default());
    sim.set_sync_failure(SyncFailure::KeepsCleanPages);
    sim.set_intermediate_writes(true);
    let mut model = Model::default();
    if seed % 2 == 1 {
        model.keys.push(1);
    }
    let mut config = life_config(&mut rng, &model);
    let mut target = config.segment_bytes_target;
    let mut wal = reopen(&sim, &mut model, config.clone(), seed);
    for _round in 0..2 + rng.below(8) {
        let faulty = rng.below(4) == 0;
        sim.set_faults(if faulty {
            FaultConfig { sync_fail_ppm: 20_000, write_eio_ppm: 5_000, write_enospc_ppm: 5_000, sync_dir_fail_ppm: 20_000 }
        } else {
            FaultConfig::default()
        });
        if rng.below(3) == 0 {
            sim = concurrent(wal, &sim, &mut model, &mut rng, target, seed);
            sim.set_faults(FaultConfig::default());
            config = life_config(&mut rng, &model);
            target = config.segment_bytes_target;
            wal = reopen(&sim, &mut model, config.clone(), seed);
            continue;
        }
        // A failure (an injected fault) ends the life as it would end the application's.
        let _ = ops(&wal, config.key_ring.as_deref(), &mut model, &mut rng, target, seed);
        if rng.below(3) == 0 {
            let _ = wal.close();
        } else {
            let after = sim.crash(rng.next_u64());
            drop(wal);
            sim = after;
        }
        sim.set_faults(FaultConfig::default());
        config = life_config(&mut rng, &model);
        target = config.segment_bytes_target;
        wal = reopen(&sim, &mut model, config.clone(), seed);
        let bytes = payload(&mut rng, target);
        let lsn = wal.append_durable(Record::new(ty(), &bytes)).unwrap_or_else(|e| panic!("seed {seed}: append after recovery: {e}"));
        model.appended.insert(lsn.0, bytes);
        model.acked = lsn.0;
    }
}

#[test]
fn acknowledged_records_survive_lives_that_change_block_size_target_reuse_and_keys() {
    if let Ok(one) = std::env::var("NODEDB_WAL_LIFE_SEED") {
        run_seed(one.parse().expect("a seed number"));
        return;
    }
    let default = if cfg!(debug_assertions) { 40 } else { 400 };
    let seeds: u64 = std::env::var("NODEDB_WAL_LIFE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    for seed in 0..seeds {
        if std::panic::catch_unwind(|| run_seed(seed)).is_err() {
            panic!("life-cycle simulation failed; reproduce with NODEDB_WAL_LIFE_SEED={seed}");
        }
    }
}

/// The payload of LSN `lsn` in the readers' test: a record read at an LSN that does not carry it
/// (an old one of a reused file, say) is told apart.
fn payload_of(lsn: u64) -> Vec<u8> {
    let len = 200 + (lsn * 7919 % 5000) as usize;
    (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
}

/// What a reader overtaken by truncation may say instead of records.
fn overtaken(e: &WalError) -> bool {
    matches!(e, WalError::SegmentTruncated { .. } | WalError::LsnNotRetained { .. })
}

/// That a reader handed out the record appended at `lsn`, right after the one before.
fn check(kind: &str, lsn: Lsn, bytes: &[u8], prev: &mut Option<u64>) {
    assert_eq!(bytes, payload_of(lsn.0), "{kind}: payload of {lsn}");
    if let Some(p) = *prev {
        assert_eq!(lsn.0, p + 1, "{kind}: dense");
    }
    *prev = Some(lsn.0);
}

/// Every kind of reader (pread, mapped, headers-only with payloads, a read-only look, a tail)
/// over and over beside a writer that rolls small segments, truncates every few batches and
/// reuses the files it keeps, on real files (so with real `flock`s): each returns only records
/// of the log, dense and at their LSNs, or stops where truncation overtook it.
#[test]
fn readers_of_every_kind_beside_rolls_truncations_and_reuse_read_only_the_logs_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SegmentedWalConfig::new(dir.path());
    config.allow_buffered_fallback = true;
    config.segment_bytes_target = 16 * 1024;
    config.batch_bytes_max = 8 * 1024;
    config.recycle_segments = 3;
    let wal = Arc::new(SegmentedWal::open(config).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for kind in 0..5 {
        let (wal, done, path) = (Arc::clone(&wal), Arc::clone(&done), dir.path().to_path_buf());
        readers.push(std::thread::spawn(move || {
            let mut passes = 0u64;
            while !done.load(Ordering::SeqCst) {
                passes += 1;
                let from = wal.oldest_lsn();
                let mut prev = None;
                let result: Result<(), WalError> = (|| {
                    match kind {
                        0 | 1 => {
                            let iter = if kind == 0 { wal.read_from(from)? } else { wal.read_mapped(from)? };
                            for r in iter {
                                let r = r?;
                                check("reader", r.lsn, &r.payload, &mut prev);
                            }
                        }
                        2 => {
                            let mut lazy = wal.lazy_reader(from)?;
                            while let Some(h) = lazy.next_header()? {
                                let p = lazy.payload()?;
                                check("lazy", h.lsn, &p, &mut prev);
                            }
                        }
                        3 => {
                            let look = ReadOnlyWal::open(&path, None)?;
                            let first = look.recovery_info().first_lsn;
                            for r in look.read_from(first)? {
                                let r = r?;
                                check("look", r.lsn, &r.payload, &mut prev);
                            }
                        }
                        _ => {
                            let mut tail = wal.tail(from);
                            for _ in 0..200 {
                                match tail.next_timeout(std::time::Duration::from_millis(5))? {
                                    Some(r) => check("tail", r.lsn, &r.payload, &mut prev),
                                    None => break,
                                }
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    assert!(overtaken(&e), "reader {kind}: {e}");
                }
            }
            passes
        }));
    }
    for i in 0..2000u64 {
        let lsn = wal.next_lsn().0;
        let got = wal.append(Record::new(ty(), &payload_of(lsn))).unwrap();
        assert_eq!(got.0, lsn);
        if i % 7 == 0 {
            wal.sync().unwrap();
        }
        if i % 23 == 0 {
            let checkpoint = wal.durable_lsn().next();
            wal.truncate_before(checkpoint).unwrap();
        }
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        let passes = r.join().unwrap();
        assert!(passes > 0);
    }
}
