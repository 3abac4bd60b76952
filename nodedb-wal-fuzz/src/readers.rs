//! Every reader the crate offers, run over one log directory, and the checks that hold what
//! they return to each other and to what was written.

use std::path::Path;
use std::time::Duration;

use nodedb_wal::storage::Storage;
use nodedb_wal::{LazyWalReader, Lsn, ReadOnlyWal, RecordType, RecoveryInfo, SegmentedWal, WalError, WalIter};

use crate::logs::{self, BaseLog};

/// What a reader hands out of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Plaintext payloads.
    Plain,
    /// Payloads as stored (ciphertext and tag in an encrypted log).
    Raw,
    /// Headers only: the payload's stored length.
    Headers,
}

/// One record as a reader handed it out: LSN, type, and payload (empty for headers only) with
/// its stored length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub lsn: Lsn,
    pub record_type: RecordType,
    pub payload: Vec<u8>,
    pub stored_len: usize,
}

/// Everything one reader returned, and how it stopped.
#[derive(Debug)]
pub struct Read {
    pub name: &'static str,
    pub form: Form,
    /// A lazy reader: the one reader that takes headers from a header index.
    pub lazy: bool,
    pub records: Vec<Got>,
    pub end: Result<(), WalError>,
}

impl Read {
    fn new(name: &'static str, form: Form) -> Read {
        Read { name, form, lazy: false, records: Vec::new(), end: Ok(()) }
    }

    fn push(&mut self, lsn: Lsn, record_type: RecordType, payload: &[u8]) {
        self.records.push(Got { lsn, record_type, payload: payload.to_vec(), stored_len: payload.len() });
    }

    /// Records up to the first error (or the end).
    fn drain(mut self, mut next: impl FnMut(&mut Read) -> Option<Result<(), WalError>>) -> Read {
        // A reader never hands out more records than the log ever had: a bound, not a check.
        for _ in 0..10_000 {
            match next(&mut self) {
                None => return self,
                Some(Ok(())) => {}
                Some(Err(err)) => {
                    self.end = Err(err);
                    return self;
                }
            }
        }
        panic!("{}: more than 10,000 records from a log of a few dozen", self.name);
    }
}

fn owned<S: Storage>(name: &'static str, form: Form, iter: Result<WalIter<S>, WalError>) -> Read {
    let read = Read::new(name, form);
    let mut iter = match iter {
        Ok(iter) => iter,
        Err(err) => return Read { end: Err(err), ..read },
    };
    read.drain(|read| {
        let record = iter.next()?;
        Some(record.map(|r| read.push(r.lsn, r.record_type, &r.payload)))
    })
}

fn lent<S: Storage>(name: &'static str, form: Form, iter: Result<WalIter<S>, WalError>) -> Read {
    let read = Read::new(name, form);
    let mut iter = match iter {
        Ok(iter) => iter,
        Err(err) => return Read { end: Err(err), ..read },
    };
    read.drain(|read| {
        let view = iter.next_view()?;
        Some(view.map(|v| read.push(v.lsn, v.record_type, v.payload)))
    })
}

/// The lazy reader, asking for every payload or for none.
fn lazy<S: Storage>(name: &'static str, payloads: bool, reader: Result<LazyWalReader<S>, WalError>) -> Read {
    let read = Read { lazy: true, ..Read::new(name, if payloads { Form::Plain } else { Form::Headers }) };
    let mut reader = match reader {
        Ok(reader) => reader,
        Err(err) => return Read { end: Err(err), ..read },
    };
    read.drain(|read| {
        let handle = match reader.next_header() {
            Ok(handle) => handle?,
            Err(err) => return Some(Err(err)),
        };
        if !payloads {
            let stored_len = handle.stored_len as usize;
            read.records.push(Got { lsn: handle.lsn, record_type: handle.record_type, payload: Vec::new(), stored_len });
            return Some(Ok(()));
        }
        Some(reader.payload().map(|p| read.push(handle.lsn, handle.record_type, &p)))
    })
}

/// Every reader of a read-only look.
pub fn read_look<S: Storage>(look: &ReadOnlyWal<S>, from: Lsn) -> Vec<Read> {
    vec![
        owned("look read_from", Form::Plain, look.read_from(from)),
        lent("look read_from views", Form::Plain, look.read_from(from)),
        owned("look read_from_raw", Form::Raw, look.read_from_raw(from)),
        lent("look read_mapped views", Form::Plain, look.read_mapped(from)),
        lazy("look lazy headers", false, look.lazy_reader(from)),
        lazy("look lazy payloads", true, look.lazy_reader(from)),
    ]
}

/// Every reader of the log's owner: the iterators, the lazy reader, parallel replay and a tail
/// (driven with a zero timeout, so that it never waits).
pub fn read_owner<S: Storage>(wal: &SegmentedWal<S>, from: Lsn) -> Vec<Read> {
    let mut reads = vec![
        owned("read_from", Form::Plain, wal.read_from(from)),
        lent("read_from views", Form::Plain, wal.read_from(from)),
        owned("read_from_raw", Form::Raw, wal.read_from_raw(from)),
        owned("read_mapped", Form::Plain, wal.read_mapped(from)),
        lent("read_mapped views", Form::Plain, wal.read_mapped(from)),
        lazy("lazy headers", false, wal.lazy_reader(from)),
        lazy("lazy payloads", true, wal.lazy_reader(from)),
    ];
    for (name, threads) in [("replay_parallel 1", 1), ("replay_parallel 3", 3)] {
        let mut read = Read::new(name, Form::Plain);
        let replayed = wal.replay_parallel(from, threads, |v| {
            read.push(v.lsn, v.record_type, v.payload);
            Ok(())
        });
        read.end = replayed.map(|count| assert_eq!(count, read.records.len() as u64, "{name}: the count it returns"));
        reads.push(read);
    }
    let mut tail = wal.tail(from);
    reads.push(Read::new("tail", Form::Plain).drain(|read| match tail.next_timeout(Duration::ZERO) {
        Ok(Some(r)) => {
            read.push(r.lsn, r.record_type, &r.payload);
            Some(Ok(()))
        }
        Ok(None) => None,
        Err(err) => Some(Err(err)),
    }));
    reads
}

/// How strictly the reads are held to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The log's segments are whole: it must open, read-only and for its owner, and every
    /// reader must read to its end.
    pub complete: bool,
    /// Headers the lazy reader takes may not be what was written: bytes damaged after recovery
    /// checked them (a headers-only scan checks no payload, so no checksum: "only for the
    /// durable part of a recovered log", `segment/scan.rs`), or a header index altered with its
    /// checksum recomputed (trusted as a plaintext frame whose CRC matches: "a caller filtering
    /// on them trusts the CRC", DESIGN.md, Encryption at rest). Its headers may then differ
    /// from the segment's, and a record whose header names a type to skip is skipped. A
    /// payload it reads is still checked against the segment's own frame (FORMAT.md, Header
    /// index; DESIGN.md, Readers), so the payloads it returns are exactly what was written.
    pub unchecked_headers: bool,
    /// The files were damaged after recovery checked them: a reader that meets the damage
    /// stops there with an error of any kind.
    pub damaged_after_open: bool,
}

/// Checks every read against the log it came from: each record was written, with that type and
/// payload, LSNs dense from where the read started; a read that ended without an error
/// handed out every record up to `info.last_lsn`; and all reads agree record for record as far
/// as both went.
pub fn check(base: &BaseLog, info: &RecoveryInfo, from: Lsn, reads: &[Read], rules: Rules) {
    let start = from.max(info.first_lsn).max(Lsn::FIRST);
    let whole = info.last_lsn.0.saturating_add(1).saturating_sub(start.0) as usize;
    let tag = if base.encrypted { 16 } else { 0 };
    let trusted = |read: &&Read| !(rules.unchecked_headers && read.lazy);
    for read in reads {
        let name = read.name;
        if !trusted(&read) && read.form == Form::Headers {
            continue;
        }
        for got in &read.records {
            let lsn = got.lsn.0;
            let candidates = base.written.get(&lsn).unwrap_or_else(|| panic!("{name}: LSN {lsn} was never written"));
            let matches = |(ty, payload): &(RecordType, Vec<u8>)| {
                *ty == got.record_type
                    && match (read.form, base.encrypted) {
                        (Form::Plain, _) | (Form::Raw, false) => got.payload == *payload,
                        (Form::Raw, true) | (Form::Headers, _) => got.stored_len == payload.len() + tag,
                    }
            };
            assert!(candidates.iter().any(matches), "{name}: LSN {lsn} is not what was written");
            assert!(got.lsn >= start && got.lsn <= info.last_lsn, "{name}: LSN {lsn} outside {start}..={}", info.last_lsn);
        }
        if !trusted(&read) {
            continue;
        }
        for (got, lsn) in read.records.iter().zip(start.0..) {
            assert_eq!(got.lsn, Lsn(lsn), "{name}: LSNs dense from {start}");
        }
        // Recovery checked every frame it kept, so a reader of what it found reads to its end,
        // but for what the docs name.
        match &read.end {
            Ok(()) => assert_eq!(read.records.len(), whole, "{name}: ended without an error short of LSN {}", info.last_lsn),
            // A read from below the oldest record the log still holds.
            Err(WalError::LsnNotRetained { .. }) if from.max(Lsn::FIRST) < info.first_lsn => assert!(read.records.is_empty()),
            // A preamble naming a key the ring lacks (or a cipher, without a ring): opening does
            // not check such a segment, reading it is an error (DESIGN.md, Encryption at rest).
            Err(WalError::UnknownKeyId { .. } | WalError::KeyRingMissing { .. }) if !rules.complete => {}
            Err(_) if rules.damaged_after_open => {}
            Err(err) => panic!("{name}: {err:?} reading a log whose recovery read it whole"),
        }
    }
    let trusted: Vec<&Read> = reads.iter().filter(trusted).collect();
    agree(&trusted, base.encrypted);
    same_stop(reads);
}

/// The readers that check every frame and hand out plaintext stop at the same record, for the
/// same reason: the sequential reader, its views, the mapped ones, parallel replay and a tail
/// read the same frames with the same checks.
fn same_stop(reads: &[Read]) {
    let full = |r: &&Read| r.form == Form::Plain && !r.lazy;
    let Some(first) = reads.iter().find(full) else { return };
    let stop = |r: &Read| (r.records.len(), r.end.as_ref().err().map(std::mem::discriminant));
    for read in reads.iter().filter(full) {
        assert_eq!(stop(read), stop(first), "{} and {} stop differently: {:?}, {:?}", read.name, first.name, read.end, first.end);
    }
}

/// Every two reads agree on the records both handed out: same LSN, type and plaintext length,
/// and the same payload where both hand out plaintext.
fn agree(reads: &[&Read], encrypted: bool) {
    fn key<'a>(read: &Read, got: &'a Got, encrypted: bool) -> (Lsn, RecordType, usize, Option<&'a [u8]>) {
        let plain = read.form == Form::Plain || read.form == Form::Raw && !encrypted;
        let tag = if encrypted && read.form != Form::Plain { 16 } else { 0 };
        (got.lsn, got.record_type, got.stored_len - tag, plain.then_some(got.payload.as_slice()))
    }
    let Some(longest) = reads.iter().max_by_key(|r| r.records.len()) else { return };
    for read in reads {
        for (a, b) in read.records.iter().zip(&longest.records) {
            let (ka, kb) = (key(read, a, encrypted), key(longest, b, encrypted));
            let same = (ka.0, ka.1, ka.2) == (kb.0, kb.1, kb.2);
            assert!(
                same && (ka.3.is_none() || kb.3.is_none() || ka.3 == kb.3),
                "{} and {} disagree at LSN {}",
                read.name,
                longest.name,
                a.lsn
            );
        }
    }
}

/// How the log opened: as a read-only look, and for its owner (its recovery).
#[derive(Debug)]
pub struct Opened {
    pub look: Result<RecoveryInfo, WalError>,
    pub owner: Result<RecoveryInfo, WalError>,
}

/// Opens the log in `dir` of `storage` every way the crate offers, reads it with every reader,
/// and checks what they return.
pub fn open_and_read_all<S: Storage + Clone>(storage: &S, dir: &Path, base: &BaseLog, from: Lsn, rules: Rules) -> Opened {
    let ring = logs::key_ring(base.encrypted);
    // A read-only look first, before the owner's recovery repairs anything.
    let look = ReadOnlyWal::open_with(storage.clone(), dir, ring.clone()).map(|look| {
        check(base, look.recovery_info(), from, &read_look(&look, from), rules);
        look.recovery_info().clone()
    });
    let mut config = logs::config(base.encrypted, base.large);
    config.dir = dir.to_path_buf();
    let wal = match SegmentedWal::open_with(storage.clone(), config.clone()) {
        Ok(wal) => wal,
        Err(err) => return Opened { look, owner: Err(err) },
    };
    let info = wal.recovery_info().clone();
    if let Ok(seen) = &look {
        same_log(seen, &info, "a read-only look and the owner's recovery");
    }
    check(base, &info, from, &read_owner(&wal, from), rules);
    // Beside the owner, after its repairs.
    let beside = ReadOnlyWal::open_with(storage.clone(), dir, ring).expect("a look beside an owner that opened");
    same_log(beside.recovery_info(), &info, "a look beside the owner and the owner");
    check(base, &info, from, &read_look(&beside, from), rules);
    drop(wal);
    let again = SegmentedWal::open_with(storage.clone(), config).expect("a log that opened once opens again");
    same_log(again.recovery_info(), &info, "a second recovery and the first");
    check(base, &info, from, &[owned("read_from after a second open", Form::Plain, again.read_from(from))], rules);
    Opened { look, owner: Ok(info) }
}

/// Opens the log in `dir` of `storage` as a read-only look and for its owner, then damages its
/// files as `ops` say (`logs::damage`) and reads it with every reader: damage a reader meets,
/// which recovery did not see, is a typed error there, never a record that was not written
/// nor an end short of the last record.
pub fn damage_after_open<S: Storage + Clone>(storage: &S, dir: &Path, base: &BaseLog, from: Lsn, ops: &[u8]) {
    let look = ReadOnlyWal::open_with(storage.clone(), dir, logs::key_ring(base.encrypted)).expect("the undamaged log opens read-only");
    let mut config = logs::config(base.encrypted, base.large);
    config.dir = dir.to_path_buf();
    let wal = SegmentedWal::open_with(storage.clone(), config).expect("the undamaged log opens");
    logs::damage_in_place(storage, dir, ops);
    let rules = Rules { complete: false, unchecked_headers: true, damaged_after_open: true };
    check(base, look.recovery_info(), from, &read_look(&look, from), rules);
    check(base, wal.recovery_info(), from, &read_owner(&wal, from), rules);
}

/// Two recoveries of one log found the same records (and the same tombstones and purges).
fn same_log(a: &RecoveryInfo, b: &RecoveryInfo, what: &str) {
    assert_eq!((a.first_lsn, a.last_lsn), (b.first_lsn, b.last_lsn), "{what} disagree on the records");
    assert_eq!(a.tombstones, b.tombstones, "{what} disagree on the tombstones");
    assert_eq!(a.temporal_purges, b.temporal_purges, "{what} disagree on the purges");
}
