//! The crash harness shared by `process_kill` and `fs_shutdown`.
//!
//! A child process (the test binary itself, re-executed to run only its child entry point)
//! opens the log and appends from [`THREADS`] threads; after each `wait_durable` returns Ok it
//! writes an `ACK lsn thread seq` line to an acknowledgement file, one `write` per group of
//! lines ([`child`]). The parent crashes the child, reads the file (a killed child may leave a
//! partial last line) and reopens the log. [`model::Model`] then checks what recovery returned:
//! dense LSNs, every record the log ever returned before still there unchanged, every
//! acknowledged record there, and every new record intact, from this round's child, and one
//! that its thread really appended.
//!
//! Threads 5, 6 and 7 append each pipeline of records as one atomic group; the model checks
//! that recovery returns their records in whole groups only, each at consecutive LSNs. In
//! feature rounds one group in four ends with a collection tombstone or temporal purge
//! (`append_group_entries`): recovery must gather that drop exactly when it returns the group,
//! and never the drop of a group it does not return.
//!
//! Rounds with [`Mode::features`] (one in three) use the rest of the append and truncation
//! surface while the crash can land: 32 KiB segments (a roll every few dozen records, into
//! files that truncation kept for reuse) and a commit window of 200 µs; thread 0 appends with
//! `append_durable`, threads 2 and 3 with `append_batch`, thread 1 a tombstone, temporal purge
//! or Calvin position now and then; one more thread truncates behind the durable LSN (each
//! checkpoint written as a `TRUNC` line before the call), and, in encrypted rounds, one more
//! rotates the active key every few milliseconds.
//!
//! Rounds with [`Mode::large_records`] number their threads from [`LARGE_THREAD_BASE`], and
//! one record in four of threads 0, 3, 4 and 7 there is of 2 to 9 MiB, larger than a batch:
//! recovery must return such a record whole or not at all. Rounds with [`Mode::writer`] run a
//! [`nodedb_wal::WalWriter`] in the child instead of the log (`child::run_writer_child`).
//!
//! A payload names its origin (round, thread, sequence number) in its first 16 bytes; the rest
//! of it, its length, type and scope are a function of that origin, so one bit out of place or a
//! record that was never appended shows.

pub mod child;
pub mod drops;
pub mod dwb;
pub mod model;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use nodedb_wal::{
    CalvinAppliedPayload, CollectionTombstonePayload, FsStorage, KeyRing, Lsn, ReadOnlyWal, RecordType, Scope, SecureKey, SegmentedWal,
    SegmentedWalConfig, TemporalPurgeEngine, TemporalPurgePayload, WalError, WalRecord,
};

/// Appending threads in the child.
pub const THREADS: u32 = 8;
/// The `thread` of the records the parent appends between rounds.
pub const PARENT_THREAD: u32 = u32::MAX;
/// The first thread number of rounds with [`Mode::large_records`]: the thread number alone says
/// how large a record's payload is, so the parent checks it without knowing the round's mode.
pub const LARGE_THREAD_BASE: u32 = 64;

/// What a child thread does (its pipeline, groups, batches): the same in rounds with and
/// without large records.
pub fn role(thread: u32) -> u32 {
    thread % LARGE_THREAD_BASE
}

/// Whether `thread` appends records of 2 to 9 MiB (one in four of its records).
fn appends_large(thread: u32) -> bool {
    thread != PARENT_THREAD && thread >= LARGE_THREAD_BASE && [0, 3, 4, 7].contains(&role(thread))
}

/// The configuration of every crash test log: small segments so that rounds roll them often,
/// small batches so that big payloads take the one-off buffer path.
pub fn config(dir: &Path, direct: bool) -> SegmentedWalConfig {
    let mut c = SegmentedWalConfig::new(dir);
    c.segment_bytes_target = 128 * 1024;
    c.batch_bytes_max = 16 * 1024;
    c.alignment = 4096;
    c.direct_io = direct;
    c.allow_buffered_fallback = true;
    c
}

/// How a round opens the log: every combination of I/O backend, page-cache use and
/// encryption crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// io_uring (where the kernel allows it) rather than pwrite + fdatasync.
    pub uring: bool,
    /// O_DIRECT rather than buffered writes.
    pub direct: bool,
    /// New segments are encrypted (the key stays in the ring either way, so that segments of
    /// earlier encrypted rounds stay readable).
    pub encrypted: bool,
    /// Segments of 16 MiB instead of 128 KiB: a round that runs long enough leaves a newest
    /// segment past a megabyte, which recovery reads with a read-ahead helper.
    pub large_segments: bool,
    /// The child also uses `append_durable`, `append_batch`, tombstones and temporal purges,
    /// truncates while it appends, and rotates the key in encrypted rounds; segments are of
    /// 32 KiB (unless large).
    pub features: bool,
    /// Threads number from [`LARGE_THREAD_BASE`], and some append records of 2 to 9 MiB, in
    /// batches of 1 MiB (the default).
    pub large_records: bool,
    /// The child writes with a [`nodedb_wal::WalWriter`] (plaintext, one thread) instead of
    /// opening the log; the parent still recovers it as a log.
    pub writer: bool,
}

/// The segment size of a [`Mode`] with `features` (and not `large_segments`): many rolls, and
/// kept files reused often.
const FEATURE_SEGMENT_BYTES: u64 = 32 * 1024;

/// The segment size of a [`Mode`] with `large_segments`.
const LARGE_SEGMENT_BYTES: u64 = 16 << 20;

/// The ids of the crash tests' keys: the first is active in encrypted rounds, and feature
/// rounds rotate through all of them. Every ring holds all, so every segment stays readable.
pub const KEY_IDS: [u32; 3] = [7, 8, 9];

/// A ring holding the crash tests' keys, the first active (new segments encrypted) or none.
fn key_ring(active: bool) -> std::sync::Arc<KeyRing> {
    let ring = KeyRing::new();
    for id in KEY_IDS {
        ring.insert(id, SecureKey::from_bytes(&mut [id as u8 ^ 0x5A; 32])).expect("a new ring takes a key");
    }
    if active {
        ring.set_active(KEY_IDS[0]).expect("the key is in the ring");
    }
    std::sync::Arc::new(ring)
}

impl Mode {
    /// The mode of round `round`.
    pub fn of_round(round: u32) -> Mode {
        Mode {
            uring: round.is_multiple_of(2),
            direct: round % 4 < 2,
            encrypted: round % 8 >= 4,
            large_segments: false,
            features: round % 3 == 2,
            large_records: false,
            writer: false,
        }
    }

    /// The mode of round `round` of a test whose rounds may run long: half of every sixteen
    /// with large segments.
    pub fn of_long_round(round: u32) -> Mode {
        Mode { large_segments: round % 16 >= 8, ..Mode::of_round(round) }
    }

    fn encode(self) -> String {
        let backend = if self.uring { "uring" } else { "pwrite" };
        let io = if self.direct { "direct" } else { "buffered" };
        let size = if self.large_segments { "large" } else { "small" };
        let features = if self.features { "features" } else { "basic" };
        let records = if self.large_records { "mib" } else { "kib" };
        let writer = if self.writer { "writer" } else { "log" };
        format!("{backend}-{io}-{}-{size}-{features}-{records}-{writer}", if self.encrypted { "aes" } else { "plain" })
    }

    fn decode(s: &str) -> Mode {
        let parts: Vec<&str> = s.split('-').collect();
        let [backend, io, cipher, size, features, records, writer] = parts[..] else { panic!("bad mode {s:?}") };
        Mode {
            uring: backend == "uring",
            direct: io == "direct",
            encrypted: cipher == "aes",
            large_segments: size == "large",
            features: features == "features",
            large_records: records == "mib",
            writer: writer == "writer",
        }
    }

    /// The segment size a round of this mode rolls at.
    pub fn segment_bytes(self) -> u64 {
        if self.large_segments {
            LARGE_SEGMENT_BYTES
        } else if self.features {
            FEATURE_SEGMENT_BYTES
        } else {
            config(Path::new(""), false).segment_bytes_target
        }
    }

    /// Opens the log in `dir` this way.
    pub fn open(self, dir: &Path) -> Result<SegmentedWal, WalError> {
        self.open_keyed(dir).map(|(wal, _)| wal)
    }

    /// Opens the log in `dir` this way, and returns the key ring it uses (to rotate keys).
    pub fn open_keyed(self, dir: &Path) -> Result<(SegmentedWal, std::sync::Arc<KeyRing>), WalError> {
        let storage = if self.uring { FsStorage::io_uring() } else { FsStorage::pwrite_only() };
        let mut config = config(dir, self.direct);
        config.segment_bytes_target = self.segment_bytes();
        if self.large_records {
            config.batch_bytes_max = SegmentedWalConfig::new(dir).batch_bytes_max;
        }
        if self.features {
            // Syncs wait a little for more appends to join their batch.
            config.commit_window = Some(std::time::Duration::from_micros(200));
        }
        let ring = key_ring(self.encrypted);
        config.key_ring = Some(std::sync::Arc::clone(&ring));
        Ok((SegmentedWal::open_with(storage, config)?, ring))
    }
}

/// What a read-only look at the log in `dir` returns (every record from the oldest), taken
/// after a crash and before the owner's recovery repairs anything; with every key. A directory
/// that is not there (a first child stopped before its creation was durable) holds nothing.
pub fn read_only_look(dir: &Path) -> Result<Vec<WalRecord>, WalError> {
    if !dir.try_exists().expect("look for the log directory") {
        return Ok(Vec::new());
    }
    let look = ReadOnlyWal::open(dir, Some(key_ring(false)))?;
    let first = look.recovery_info().first_lsn;
    look.read_from(first)?.collect()
}

/// Who appended a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The crash round (the parent's records between rounds carry the round they follow).
    pub round: u32,
    /// The child's appending thread, or [`PARENT_THREAD`].
    pub thread: u32,
    /// The thread's sequence number in its round, from 0.
    pub seq: u64,
}

const ORIGIN_LEN: usize = 16;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Origin {
    fn hash(self) -> u64 {
        mix(mix((u64::from(self.round) << 32) | u64::from(self.thread)) ^ self.seq)
    }

    /// The payload: the origin, then 0 to 599 bytes (one record in 256: 16 to 40 KiB, more
    /// than a batch buffer holds; one in four of a thread that [`appends_large`]: 2 to 9 MiB)
    /// of a stream seeded by it.
    pub fn payload(self) -> Vec<u8> {
        let h = self.hash();
        let body = if appends_large(self.thread) && h.is_multiple_of(4) {
            (2 << 20) + (h >> 8) % (7 << 20)
        } else if h.is_multiple_of(256) {
            16 * 1024 + (h >> 8) % (24 * 1024)
        } else {
            (h >> 8) % 600
        } as usize;
        let mut bytes = Vec::with_capacity(ORIGIN_LEN + body + 8);
        bytes.extend_from_slice(&self.round.to_le_bytes());
        bytes.extend_from_slice(&self.thread.to_le_bytes());
        bytes.extend_from_slice(&self.seq.to_le_bytes());
        let mut x = h;
        while bytes.len() < ORIGIN_LEN + body {
            x = mix(x);
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes.truncate(ORIGIN_LEN + body);
        bytes
    }

    /// The record type: optional or required application types.
    pub fn record_type(self) -> RecordType {
        let h = self.hash();
        let code = 0x100 + (h >> 40) as u16 % 64;
        if h >> 63 == 0 { RecordType::optional(code) } else { RecordType::required(code) }
    }

    /// The scope.
    pub fn scope(self) -> Scope {
        let h = self.hash();
        Scope { database: self.round, tenant: self.thread, vshard: (h >> 20) as u32 % 1024 }
    }

    /// What the child appends for this origin in a feature round: `None` for an application
    /// record, else the system record: on thread [`SYSTEM_THREAD`], one sequence number in
    /// eight, appended alone; on a thread that [`appends_groups`], the last member of one group
    /// in four, a tombstone or purge in the group (`append_group_entries`).
    pub fn system(self) -> Option<System> {
        let h = self.hash();
        let alone = role(self.thread) == SYSTEM_THREAD && h.is_multiple_of(8);
        if self.thread == PARENT_THREAD || !(alone || self.ends_group_with_drop()) {
            return None;
        }
        let collection = self.collection();
        // No Calvin position in a group: `GroupEntry` cannot carry one.
        let kind = if alone { (h >> 3) % 3 } else { (h >> 3) % 2 * 2 };
        Some(match kind {
            0 => System::Tombstone { database: self.round, tenant: self.thread, collection },
            1 => {
                // The origin in the epoch and position, as a collection name does elsewhere.
                let applied = CalvinAppliedPayload {
                    epoch: (u64::from(self.round) << 32) | u64::from(self.thread),
                    position: self.seq as u32,
                    vshard: (h >> 24) as u32 % 1024,
                };
                System::Calvin { applied, scope: self.scope() }
            }
            _ => {
                let engine = if (h >> 4).is_multiple_of(2) { TemporalPurgeEngine::Timeseries } else { TemporalPurgeEngine::Document };
                let purge = TemporalPurgePayload { engine, collection, cutoff_unix_ms: (h >> 20) as i64, purged_count: h >> 40 };
                System::Purge { purge, scope: self.scope() }
            }
        })
    }

    /// Whether this is the last member of a group that ends with a tombstone or purge in
    /// feature rounds (one group in four of a thread that [`appends_groups`]).
    pub fn ends_group_with_drop(self) -> bool {
        let depth = pipeline_depth(self.thread);
        appends_groups(self.thread) && self.seq % depth == depth - 1 && mix(self.hash()).is_multiple_of(4)
    }

    /// The collection the tombstone or purge of this origin names.
    pub fn collection(self) -> String {
        format!("c-{}-{}-{}", self.round, self.thread, self.seq)
    }

    /// The origin a collection name written by [`Origin::system`] names.
    fn of_collection(name: &str) -> Option<Origin> {
        let mut parts = name.strip_prefix("c-")?.split('-');
        let origin = Origin { round: parts.next()?.parse().ok()?, thread: parts.next()?.parse().ok()?, seq: parts.next()?.parse().ok()? };
        (parts.next().is_none() && origin.system().is_some()).then_some(origin)
    }

    /// Decodes a tombstone's or temporal purge's origin and checks it against what that origin
    /// appends (a tombstone's purge LSN is the next LSN when it was appended: at most its own).
    fn of_system(record: &WalRecord) -> Result<Origin, String> {
        let lsn = record.lsn;
        let (origin, matches) = if record.record_type == RecordType::CALVIN_APPLIED {
            let applied = CalvinAppliedPayload::decode(&record.payload).map_err(|e| format!("LSN {lsn}: Calvin position: {e}"))?;
            let origin = Origin { round: (applied.epoch >> 32) as u32, thread: applied.epoch as u32, seq: u64::from(applied.position) };
            (origin, origin.system() == Some(System::Calvin { applied, scope: record.scope }))
        } else if record.record_type == RecordType::COLLECTION_TOMBSTONE {
            let t = CollectionTombstonePayload::decode(&record.payload).map_err(|e| format!("LSN {lsn}: tombstone: {e}"))?;
            let origin = Origin::of_collection(&t.collection).ok_or_else(|| format!("LSN {lsn}: tombstone of {t:?} names no origin"))?;
            let expected = origin.system().map(|s| s.tombstone(t.purge_lsn));
            let scope = Scope { database: t.database, tenant: t.tenant, vshard: 0 };
            (origin, expected.as_ref() == Some(&Some(t)) && record.scope == scope && record.lsn >= expected_purge(record))
        } else {
            let p = TemporalPurgePayload::decode(&record.payload).map_err(|e| format!("LSN {lsn}: temporal purge: {e}"))?;
            let origin = Origin::of_collection(&p.collection).ok_or_else(|| format!("LSN {lsn}: purge of {p:?} names no origin"))?;
            (origin, origin.system() == Some(System::Purge { purge: p, scope: record.scope }))
        };
        if !matches {
            return Err(format!("LSN {lsn}: the {:?} record of {origin:?} is not the one it appended: {record:?}", record.record_type));
        }
        Ok(origin)
    }

    /// Decodes a record's origin and checks every byte of it against what that origin appends.
    pub fn of(record: &WalRecord) -> Result<Origin, String> {
        if [RecordType::COLLECTION_TOMBSTONE, RecordType::TEMPORAL_PURGE, RecordType::CALVIN_APPLIED].contains(&record.record_type) {
            return Origin::of_system(record);
        }
        let p = &record.payload;
        if p.len() < ORIGIN_LEN {
            return Err(format!("LSN {}: payload of {} bytes is too short to name its origin", record.lsn, p.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"));
        let origin = Origin { round: u32_at(0), thread: u32_at(4), seq: u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")) };
        let expected = origin.payload();
        if *p != expected {
            let differ = p.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(p.len().min(expected.len()));
            return Err(format!(
                "LSN {}: payload claims {origin:?} but differs from its payload ({} bytes, expected {}, first difference at byte {differ})",
                record.lsn,
                p.len(),
                expected.len()
            ));
        }
        // Records of encrypted rounds carry the header's encrypted flag, and members of a group
        // but its last the group flag; no other flag is set.
        let flags = record.flags & !(nodedb_wal::format::frame::FLAG_ENCRYPTED | nodedb_wal::format::frame::FLAG_GROUP_CONTINUES);
        if record.record_type != origin.record_type() || record.scope != origin.scope() || flags != 0 {
            return Err(format!(
                "LSN {}: {origin:?} has type {:?}, scope {:?}, flags {}; expected {:?}, {:?}, 0 (or encrypted)",
                record.lsn,
                record.record_type,
                record.scope,
                record.flags,
                origin.record_type(),
                origin.scope()
            ));
        }
        Ok(origin)
    }
}

/// The purge LSN of a tombstone record, which must not be past the record's own LSN.
fn expected_purge(record: &WalRecord) -> Lsn {
    CollectionTombstonePayload::decode(&record.payload).map_or(Lsn(u64::MAX), |t| t.purge_lsn)
}

/// The child thread that appends tombstones and temporal purges in feature rounds.
pub const SYSTEM_THREAD: u32 = 1;

/// A system record the child appends in feature rounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum System {
    /// A collection tombstone (its purge LSN is the next LSN at the call).
    Tombstone { database: u32, tenant: u32, collection: String },
    /// A temporal purge and the scope it is appended under.
    Purge { purge: TemporalPurgePayload, scope: Scope },
    /// A Calvin position and the scope it is appended under.
    Calvin { applied: CalvinAppliedPayload, scope: Scope },
}

impl System {
    /// The tombstone payload with this purge LSN, if this is a tombstone.
    pub fn tombstone(&self, purge_lsn: Lsn) -> Option<CollectionTombstonePayload> {
        match self {
            System::Tombstone { database, tenant, collection } => {
                Some(CollectionTombstonePayload { database: *database, tenant: *tenant, collection: collection.clone(), purge_lsn })
            }
            System::Purge { .. } | System::Calvin { .. } => None,
        }
    }
}

/// How many records a child thread appends before it waits for the last of them: thread 0
/// appends one at a time, the others keep up to four in flight.
pub fn pipeline_depth(thread: u32) -> u64 {
    1 + u64::from(role(thread) % 4)
}

/// Whether a child thread appends each pipeline of records as one atomic group (threads 5, 6
/// and 7); recovery must then return whole groups only.
pub fn appends_groups(thread: u32) -> bool {
    thread != PARENT_THREAD && role(thread) >= 4 && pipeline_depth(thread) > 1
}

/// A small deterministic generator (splitmix64) for kill moments.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `NODEDB_WAL_CRASH_SEED`, else from the clock; prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("NODEDB_WAL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64
        });
        eprintln!("{test}: seed {seed} (set NODEDB_WAL_CRASH_SEED to repeat the kill schedule)");
        Rng(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }

    /// A pause of 1 to 50 ms.
    pub fn kill_delay(&mut self) -> Duration {
        Duration::from_micros(1000 + self.below(49_000))
    }

    /// A pause of up to 15 ms from a child's start: it lands in the child's start-up or its
    /// recovery as often as after them.
    pub fn start_delay(&mut self) -> Duration {
        Duration::from_micros(self.below(15_000))
    }

    /// A pause of 1 to 50 ms, or of 50 to 500 ms for a round with large segments or large
    /// records: long enough for the newest segment to pass a megabyte, or for records of
    /// several MiB to be acknowledged.
    pub fn kill_delay_for(&mut self, mode: Mode) -> Duration {
        if mode.large_segments || mode.large_records { Duration::from_micros(50_000 + self.below(450_000)) } else { self.kill_delay() }
    }
}

/// Rounds to run: `var` if set, else `release` in optimised builds and `debug` otherwise.
pub fn rounds_from_env(var: &str, release: u32, debug: u32) -> u32 {
    let default = if cfg!(debug_assertions) { debug } else { release };
    std::env::var(var).ok().map_or(default, |s| s.parse().unwrap_or_else(|_| panic!("{var}={s:?} is not a number")))
}

/// A scratch directory on a real disk (under the target directory, not a possible tmpfs).
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("nodedb-wal-crash-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `check`; if it panics, copies the log directory to the target directory for a
/// post-mortem before letting the panic go on.
pub fn preserving_on_failure<T>(dir: &Path, label: &str, check: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
        Ok(value) => value,
        Err(panic) => {
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-failure-{label}-{}", std::process::id()));
            match copy_tree(dir, &keep) {
                Ok(()) => eprintln!("the failing log is kept in {}", keep.display()),
                Err(e) => eprintln!("could not keep the failing log: {e}"),
            }
            std::panic::resume_unwind(panic)
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
