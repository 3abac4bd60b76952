//! A damaged first block never costs acknowledged records silently. The preamble (magic,
//! version, cipher, key id, nonce epoch) has no checksum of its own, and recovery takes a
//! newest segment whose head does not read for an interrupted roll, which it removes, unless
//! something shows the head was written; a flipped byte must never pass for such a roll. So for a log of several segments, every record synced, one byte of
//! the first block of the oldest, a middle or the newest segment is flipped, with and without
//! `MANIFEST`, in a plaintext and in an encrypted log. Then a read-only look (every record read,
//! eagerly and lazily) and an open for writing must each either return exactly the records
//! written, or fail with a typed error (not an I/O one) that leaves every file of the
//! directory byte for byte as it was. Nothing may panic. One documented exception: a changed
//! key id of an encrypted segment reads as a key the ring lacks, which an owner may open
//! (DURABILITY.md: a lost key leaves its segments recoverable but unreadable); reading that
//! segment must then fail with `UnknownKeyId` naming it, never return less.
//!
//! By default every byte of the preamble is flipped with each of three values, every second
//! byte of the head (the checksummed header frame and the padding frame's header) with one
//! of them, and a sample of the rest of the block; `NODEDB_WAL_FIRST_BLOCK_OFFSETS=all` flips
//! every byte of the block with each value (several minutes in a release build).

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use common::{BLOCK, append_synced, config, payload, record_type, scope, seg};
use nodedb_wal::format::frame::HEADER_LEN;
use nodedb_wal::format::manifest::MANIFEST_FILE;
use nodedb_wal::format::preamble::PREAMBLE_SIZE;
use nodedb_wal::{FsStorage, KeyRing, Lsn, ReadOnlyWal, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig, WalError, WalRecord};

/// The bytes of every file in a directory, by name.
type Files = BTreeMap<String, Vec<u8>>;

/// Values a flipped byte is xored with: the lowest bit, the highest, all of them.
const XORS: [u8; 3] = [0x01, 0x80, 0xFF];

/// The preamble's key id field.
const KEY_ID: std::ops::Range<usize> = 8..12;

/// The segment header frame's length (its 40-byte payload after a frame header).
const HEADER_FRAME_LEN: usize = HEADER_LEN + 40;

/// Where block 0's padding frame's header ends: the bytes a head is made of.
const HEAD_BYTES: usize = PREAMBLE_SIZE + HEADER_FRAME_LEN + HEADER_LEN;

fn snapshot(dir: &Path) -> Files {
    let mut files = Files::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        files.insert(entry.file_name().into_string().unwrap(), std::fs::read(entry.path()).unwrap());
    }
    files
}

/// Makes `dir` hold exactly `files`, writing only what differs.
fn restore(dir: &Path, files: &Files) {
    let now = snapshot(dir);
    for name in now.keys().filter(|n| !files.contains_key(*n)) {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    for (name, bytes) in files {
        if now.get(name) != Some(bytes) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn log_config(dir: &Path, ring: Option<&Arc<KeyRing>>) -> SegmentedWalConfig {
    let mut c = config(dir);
    c.key_ring = ring.cloned();
    c
}

/// Writes a log of at least three segments whose newest holds a single synced batch (the
/// first after a reopen), so that no later frame of it vouches for that batch. Returns the
/// records a reader reads back.
fn write_base_log(dir: &Path, ring: Option<&Arc<KeyRing>>) -> Vec<WalRecord> {
    let segments = |dir: &Path| snapshot(dir).keys().filter(|n| n.ends_with(".wal")).count();
    let wal = SegmentedWal::open_with(FsStorage::new(), log_config(dir, ring)).unwrap();
    let mut next = 1;
    while segments(dir) < 2 || next < 150 {
        append_synced(&wal, next, next + 9);
        next += 10;
    }
    wal.close().unwrap();
    let wal = SegmentedWal::open_with(FsStorage::new(), log_config(dir, ring)).unwrap();
    append_synced(&wal, next, next + 3);
    wal.close().unwrap();
    let last = next + 3;
    assert!(segments(dir) >= 3, "the log has an oldest, a middle and a newest segment");

    let look = ReadOnlyWal::open_with(FsStorage::new(), dir, ring.cloned()).unwrap();
    let records: Vec<WalRecord> = look.read_from(Lsn(1)).unwrap().collect::<Result<_, _>>().unwrap();
    let lsns: Vec<u64> = records.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, (1..=last).collect::<Vec<_>>());
    for r in &records {
        assert_eq!((&r.payload[..], r.record_type, r.scope), (&payload(r.lsn.0)[..], record_type(r.lsn.0), scope(r.lsn.0)));
    }
    records
}

/// How a damaged log was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Opened, with every record.
    Whole,
    /// Refused with a typed error, nothing changed.
    Refused,
    /// Opened, and the segment whose key id was changed fails to read with `UnknownKeyId`.
    KeyUnknown(SegmentId),
}

/// How the cases ended, for the counts at the end.
#[derive(Default, Debug)]
struct Tally {
    opened: u64,
    refused: u64,
    key_unknown: u64,
    failures: Vec<String>,
}

/// Whether `records` are exactly `expected`; else what differs.
fn compare(records: &[WalRecord], expected: &[WalRecord]) -> Result<(), String> {
    if records == expected {
        return Ok(());
    }
    let lsns = |rs: &[WalRecord]| rs.first().zip(rs.last()).map(|(a, b)| (a.lsn.0, b.lsn.0));
    Err(format!("{} records {:?} instead of {} {:?}", records.len(), lsns(records), expected.len(), lsns(expected)))
}

/// A failure that names damage must not read as an I/O failure or a poisoned log.
fn typed(err: &WalError) -> Result<(), String> {
    match err {
        WalError::Io { .. } | WalError::Poisoned { .. } => Err(format!("damage reported as {err:?}")),
        _ => Ok(()),
    }
}

/// Reads everything a read-only look at `dir` offers, eagerly and lazily.
fn look(dir: &Path, ring: Option<&Arc<KeyRing>>, expected: &[WalRecord]) -> Result<bool, String> {
    let ro = match ReadOnlyWal::open_with(FsStorage::new(), dir, ring.cloned()) {
        Ok(ro) => ro,
        Err(err) => return typed(&err).map(|()| false),
    };
    let first = ro.recovery_info().first_lsn;
    let eager: Result<Vec<WalRecord>, WalError> = ro.read_from(first).and_then(|it| it.collect());
    match eager {
        Ok(records) => compare(&records, expected).map_err(|e| format!("read-only read: {e}"))?,
        Err(err) => return typed(&err).map(|()| false),
    }
    let mut lazy = ro.lazy_reader(first).map_err(|e| format!("lazy reader: {e:?}"))?;
    let mut seen = Vec::new();
    loop {
        match lazy.next_header() {
            Ok(Some(h)) => seen.push((h.lsn, lazy.payload().map_err(|e| format!("lazy payload of {:?}: {e:?}", h.lsn))?)),
            Ok(None) => break,
            Err(err) => return typed(&err).map(|()| false),
        }
    }
    let wanted: Vec<(Lsn, Vec<u8>)> = expected.iter().map(|r| (r.lsn, r.payload.to_vec())).collect();
    if seen != wanted {
        return Err(format!("lazy read-only read: {} records instead of {}", seen.len(), wanted.len()));
    }
    Ok(true)
}

/// Opens the damaged log `dir` (whose files are `damaged`) both ways and checks the property.
fn check(dir: &Path, damaged: &Files, ring: Option<&Arc<KeyRing>>, expected: &[WalRecord]) -> Result<Verdict, String> {
    look(dir, ring, expected)?;
    if snapshot(dir) != *damaged {
        return Err("a read-only look changed the directory".into());
    }
    match SegmentedWal::open_with(FsStorage::new(), log_config(dir, ring)) {
        Ok(wal) => {
            let first = wal.recovery_info().first_lsn;
            let records: Result<Vec<WalRecord>, WalError> = wal.read_from(first).and_then(|it| it.collect());
            let verdict = match records {
                Err(WalError::UnknownKeyId { segment: Some(segment), .. }) => Verdict::KeyUnknown(segment),
                Err(err) => return Err(format!("opened, then reading failed: {err:?}")),
                Ok(records) => {
                    compare(&records, expected).map_err(|e| format!("opened with {e}: {:?}", wal.recovery_info()))?;
                    Verdict::Whole
                }
            };
            wal.close().map_err(|e| format!("close: {e:?}"))?;
            Ok(verdict)
        }
        Err(err) => {
            typed(&err)?;
            let now = snapshot(dir);
            if now != *damaged {
                let changed: Vec<&String> = damaged.keys().chain(now.keys()).filter(|n| damaged.get(*n) != now.get(*n)).collect();
                return Err(format!("refused with {err:?} but changed {changed:?}"));
            }
            Ok(Verdict::Refused)
        }
    }
}

/// The byte offsets of the first block to damage, each with the values to xor it with (see
/// the module docs).
fn damage() -> Vec<(usize, Vec<u8>)> {
    let block = BLOCK as usize;
    if std::env::var("NODEDB_WAL_FIRST_BLOCK_OFFSETS").as_deref() == Ok("all") {
        return (0..block).map(|at| (at, XORS.to_vec())).collect();
    }
    let preamble = (0..PREAMBLE_SIZE).map(|at| (at, XORS.to_vec()));
    let rest = (PREAMBLE_SIZE..HEAD_BYTES).step_by(2).chain((HEAD_BYTES..block).step_by(509)).chain([block - 1]);
    preamble.chain(rest.map(|at| (at, vec![XORS[at % XORS.len()]]))).collect()
}

fn sweep(ring: Option<Arc<KeyRing>>) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let expected = write_base_log(&base, ring.as_ref());
    let files = snapshot(&base);
    let ids: Vec<u64> = files.keys().filter_map(|n| nodedb_wal::segment::parse_name(n)).map(|id| id.0).collect();
    let (oldest, newest) = (ids[0], *ids.last().unwrap());
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut tally = Tally::default();
    for manifest in [true, false] {
        let mut start = files.clone();
        if !manifest {
            start.remove(MANIFEST_FILE);
        }
        for segment in [newest, oldest + 1, oldest] {
            let name = seg(&work, segment).file_name().unwrap().to_str().unwrap().to_owned();
            for (at, xors) in damage() {
                for xor in xors {
                    let case = format!("segment {segment}, byte {at} ^ {xor:#04x}, manifest {manifest}");
                    let mut damaged = start.clone();
                    damaged.get_mut(&name).unwrap()[at] ^= xor;
                    restore(&work, &damaged);
                    let key_id_changed = ring.is_some() && KEY_ID.contains(&at);
                    match catch_unwind(AssertUnwindSafe(|| check(&work, &damaged, ring.as_ref(), &expected))) {
                        Ok(Ok(Verdict::Whole)) => tally.opened += 1,
                        Ok(Ok(Verdict::Refused)) => tally.refused += 1,
                        Ok(Ok(Verdict::KeyUnknown(s))) if key_id_changed && s == SegmentId(segment) => tally.key_unknown += 1,
                        Ok(Ok(Verdict::KeyUnknown(s))) => tally.failures.push(format!("{case}: reading {s} failed with UnknownKeyId")),
                        Ok(Err(failure)) => tally.failures.push(format!("{case}: {failure}")),
                        Err(_) => tally.failures.push(format!("{case}: panicked")),
                    }
                }
            }
        }
    }
    let cases = tally.opened + tally.refused + tally.key_unknown + tally.failures.len() as u64;
    eprintln!(
        "{cases} damaged logs: {} opened whole, {} refused, {} opened with a key id no key has, {} failed",
        tally.opened,
        tally.refused,
        tally.key_unknown,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {cases} damaged logs broke the property; the first:\n{}",
        tally.failures.len(),
        tally.failures[..tally.failures.len().min(20)].join("\n")
    );
    assert!(tally.refused > 0 && tally.opened > 0, "damage to a head is refused, damage to padding is not");
}

#[test]
fn a_byte_flipped_in_any_first_block_of_a_plaintext_log_keeps_every_record_or_is_refused_changing_nothing() {
    sweep(None);
}

#[test]
fn a_byte_flipped_in_any_first_block_of_an_encrypted_log_keeps_every_record_or_is_refused_changing_nothing() {
    sweep(Some(Arc::new(KeyRing::with_active(3, SecureKey::from_bytes(&mut [0x5A; 32])))));
}
