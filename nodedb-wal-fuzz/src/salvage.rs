//! The salvage target: a damaged log copied into a new directory, held to what the salvage
//! promises (see `nodedb_wal::salvage`), not just to not panicking.
//!
//! The log is either an arbitrary image (segment files cut from the input, as `recover_image`
//! makes them) or one of the crate's own logs (`logs`) damaged as the input says, where every
//! record ever appended is known. Either is salvaged with the key ring the input picks (the
//! logs' own test key, none, a wrong key under the same id, or the test key refusing
//! plaintext).

use std::path::Path;
use std::sync::Arc;

use nodedb_wal::format::frame::FLAG_ENCRYPTED;
use nodedb_wal::salvage::{SalvageReport, salvage_with};
use nodedb_wal::storage::Storage;
use nodedb_wal::{
    KeyRing, Lsn, ReadOnlyWal, RecordType, Scope, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, segment,
};

use crate::logs;

/// A record as the copy must keep it: LSN, type, scope, flags but the encryption flag (the
/// copy is plaintext) and payload.
type Kept = (Lsn, RecordType, Scope, u16, Vec<u8>);

/// Where the copy goes, and where a copy of the copy goes.
const DEST: &str = "/saved";
const DEST_AGAIN: &str = "/saved-again";

/// Segments an image input is cut into at most.
const IMAGE_SEGMENTS_MAX: usize = 4;

/// Salvages a log into a fresh directory, then checks: the source is byte for byte as it was;
/// on success the copy opens as an ordinary log whose records are intact, dense from the first
/// and as the report says, equal to what recovery reads where recovery reads the source, each
/// one appended to it where that is known, and salvaging the copy copies it whole; on an
/// error it is one of the key errors the salvage documents, and the destination does not open
/// with any record.
///
/// Input: flags (bit 7: one of the crate's logs, else an image; bits 0-1: the key ring, see
/// [`ring_for`]), then for a log its variant and the damage (`logs::damage`), for an image
/// up to four segment files, each of the first three a little-endian `u32` length and that many
/// bytes (fewer where the input ends), the fourth the rest.
pub fn salvage(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (files, base) = if flags & 0x80 != 0 {
        let Some((&variant, ops)) = rest.split_first() else { return };
        let base = logs::base(variant);
        let mut files = base.files.clone();
        logs::damage(&mut files, ops);
        (files, Some(base))
    } else {
        (image_files(rest), None)
    };
    let ring = ring_for(flags);
    let sim = logs::sim_with(&files);
    let src = Path::new(logs::DIR);
    let before = snapshot(&sim, src);
    let outcome = salvage_with(&sim, src, Path::new(DEST), ring.as_deref());
    assert_eq!(snapshot(&sim, src), before, "the salvage changed its source");
    let recovered = read_only(&sim, src, ring.clone());
    assert_eq!(snapshot(&sim, src), before, "a read-only look changed the log");
    let report = match outcome {
        Ok(report) => report,
        Err(err) => return check_refused(&sim, &err, recovered.as_ref().map(Vec::len)),
    };
    let copy = check_copy(&sim, &report);
    if let Some(recovered) = recovered {
        assert!(report.damage.is_none(), "damage in a log recovery reads whole: {:?}", report.damage);
        assert!(copy == recovered, "the copy of a log recovery reads holds what it reads: {}", difference(&copy, &recovered));
    }
    if let Some(base) = base {
        for (lsn, ty, _, _, payload) in &copy {
            let appended = base.written.get(&lsn.0).into_iter().flatten();
            assert!(appended.into_iter().any(|(t, p)| t == ty && p == payload), "LSN {lsn} was never appended as copied");
        }
    }
}

/// Where two lists of records part, for a finding's message.
fn difference(copy: &[Kept], read: &[Kept]) -> String {
    let summary =
        |r: Option<&Kept>| r.map(|(lsn, ty, scope, flags, p)| format!("{lsn} {ty:?} {scope:?} flags {flags:#x}, {} bytes", p.len()));
    let at = copy.iter().zip(read).position(|(a, b)| a != b).unwrap_or(copy.len().min(read.len()));
    format!(
        "{} records copied, {} read; at {at}: {:?} copied, {:?} read",
        copy.len(),
        read.len(),
        summary(copy.get(at)),
        summary(read.get(at))
    )
}

/// The key ring of `flags` bits 0-1: the logs' test key; none; another key under its id; the
/// test key refusing plaintext segments.
fn ring_for(flags: u8) -> Option<Arc<KeyRing>> {
    match flags & 3 {
        0 => logs::key_ring(true),
        1 => None,
        2 => Some(Arc::new(KeyRing::with_active(1, SecureKey::from_bytes(&mut [0xA5; 32])))),
        _ => {
            let ring = logs::key_ring(true).expect("a ring");
            ring.refuse_plaintext();
            Some(ring)
        }
    }
}

/// The segment files `{1..}.wal` an image input holds (see [`salvage`]).
fn image_files(mut rest: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for id in 1..=IMAGE_SEGMENTS_MAX as u64 {
        let len = match rest.split_first_chunk::<4>() {
            Some((len, after)) if id < IMAGE_SEGMENTS_MAX as u64 => {
                rest = after;
                (u32::from_le_bytes(*len) as usize).min(rest.len())
            }
            _ => rest.len(),
        };
        let (bytes, after) = rest.split_at(len);
        files.push((segment::file_name(SegmentId(id)), bytes.to_vec()));
        rest = after;
        if rest.is_empty() {
            break;
        }
    }
    files
}

/// Every file of `dir`, with its bytes, by name.
fn snapshot(sim: &SimStorage, dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut names = sim.list(dir).expect("the log directory lists");
    names.sort();
    names.into_iter().map(|name| (name.clone(), sim.read_file(&dir.join(name)))).collect()
}

/// Every record of a log, as a read-only look reads it; `None` where it does not open or read.
fn read_only(sim: &SimStorage, dir: &Path, ring: Option<Arc<KeyRing>>) -> Option<Vec<Kept>> {
    let log = ReadOnlyWal::open_with(sim.clone(), dir, ring).ok()?;
    let records = log.read_from(log.recovery_info().first_lsn).ok()?;
    records
        .map(|r| r.map(|r| (r.lsn, r.record_type, r.scope, r.flags & !FLAG_ENCRYPTED, r.payload.to_vec())))
        .collect::<Result<_, _>>()
        .ok()
}

fn dest_config(dir: &str) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.direct_io = false;
    c
}

/// A salvage that failed: with a key error it documents, and a destination that does not open
/// as a log holding records. The salvage asks for the key of every encrypted segment whose
/// head reads before it copies anything, where a read-only look needs a key only to read
/// records (`recovered`: how many it read): so only a ring refusing plaintext refuses a log
/// that look reads.
fn check_refused(sim: &SimStorage, err: &WalError, recovered: Option<usize>) {
    assert!(
        matches!(err, WalError::KeyRingMissing { .. } | WalError::UnknownKeyId { .. } | WalError::PlaintextRefused { .. }),
        "a salvage into a fresh directory fails only for a key: {err:?}"
    );
    if let (WalError::PlaintextRefused { .. }, Some(count)) = (err, recovered) {
        panic!("a log a read-only look reads ({count} records) under the same ring did not salvage: {err:?}");
    }
    if let Ok(wal) = SegmentedWal::open_with(sim.clone(), dest_config(DEST)) {
        assert_eq!(wal.recovery_info().record_count, 0, "a failed salvage left a log with records");
    }
}

/// The copy opens as an ordinary log, with the records and next LSN the report says, dense from
/// the first and intact; salvaged again, it is copied whole. Returns its records.
fn check_copy(sim: &SimStorage, report: &SalvageReport) -> Vec<Kept> {
    let copy = read_only(sim, Path::new(DEST), None).expect("the copy opens and reads");
    let again = salvage_with(sim, Path::new(DEST), Path::new(DEST_AGAIN), None).expect("a copy salvages");
    assert!(again.damage.is_none() && again.torn_tail.is_none(), "a copy is a healthy log: {again:?}");
    assert_eq!((&again.records, again.next_lsn), (&report.records, report.next_lsn), "a copy's copy is the copy");
    assert_eq!(read_only(sim, Path::new(DEST_AGAIN), None).as_ref(), Some(&copy), "a copy's copy holds the copy's records");
    let wal = SegmentedWal::open_with(sim.clone(), dest_config(DEST)).unwrap_or_else(|err| panic!("the copy opens: {err:?}"));
    let info = wal.recovery_info();
    assert_eq!(wal.next_lsn(), report.next_lsn, "the copy hands out the LSN the report says");
    let held = (info.record_count > 0).then_some(info.first_lsn..=info.last_lsn);
    assert_eq!(held, report.records, "the copy holds the LSNs the report says");
    assert_eq!(copy.len() as u64, info.record_count);
    for (k, (lsn, ..)) in copy.iter().enumerate() {
        assert_eq!(lsn.0, info.first_lsn.0 + k as u64, "the copy's LSNs are dense");
    }
    let past = &report.past_the_stop;
    assert!(past.lsn_ranges.iter().all(|run| *run.start() >= report.next_lsn), "past the stop, only LSNs the copy lacks: {past:?}");
    assert_eq!(past.records, past.lsn_ranges.iter().map(|r| r.end().0 - r.start().0 + 1).sum::<u64>());
    copy
}

/// Small logs written by the crate, plaintext and encrypted: their segment files as one input.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (encrypted, flags) in [(false, 1), (true, 0)] {
        let segments = small_log(encrypted);
        let mut input = vec![flags];
        for (k, bytes) in segments.iter().enumerate() {
            if k + 1 < IMAGE_SEGMENTS_MAX {
                input.extend_from_slice(&u32::try_from(bytes.len()).expect("a small segment").to_le_bytes());
            }
            input.extend_from_slice(bytes);
        }
        seeds.push(input);
    }
    // The crate's logs: whole, a flipped byte in the middle of the second file, its tail
    // zeroed, the first segment removed, and with a wrong key.
    for variant in [0u8, 1, 3, 5, 7] {
        seeds.push(vec![0x80, variant]);
        seeds.push(vec![0x80, variant, 0, 1, 0, 0x80, 3]);
        seeds.push(vec![0x80, variant, 3, 2, 0, 0xC0, 0xFF]);
        seeds.push(vec![0x80, variant, 4, 0, 0, 0, 0]);
        seeds.push(vec![0x82, variant]);
    }
    seeds
}

/// The segment files of a small log of a few 4 KiB segments in 512-byte blocks.
fn small_log(encrypted: bool) -> Vec<Vec<u8>> {
    let sim = SimStorage::new(3, nodedb_wal::storage::FaultConfig::default());
    let mut config = logs::config(encrypted, false);
    config.segment_bytes_target = 4096;
    config.batch_bytes_max = 2048;
    let wal = SegmentedWal::open_with(sim.clone(), config).expect("seed log opens");
    for i in 0..12u8 {
        let payload = vec![i; usize::from(i) * 60];
        wal.append_durable(nodedb_wal::Record::new(RecordType::optional(0x100), &payload)).expect("seed append");
    }
    wal.close().expect("seed log closes");
    let mut names = sim.list(Path::new(logs::DIR)).expect("seed dir");
    names.retain(|n| segment::parse_name(n).is_some());
    names.sort();
    names.iter().filter_map(|n| sim.read_file(&Path::new(logs::DIR).join(n))).collect()
}
