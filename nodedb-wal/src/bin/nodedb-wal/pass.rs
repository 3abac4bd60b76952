//! `verify`'s pass over the records, beside a writer whose truncation may overtake it.

use std::io::Write;
use std::time::{Duration, Instant};

use nodedb_wal::storage::Storage;
use nodedb_wal::{Lsn, ReadOnlyWal, RecoveryInfo, WalError};

use super::look::wrong_key_at_first_record;
use super::{Exit, decode};

/// Looks in a row in which the pass checked no record of the log as it was when the pass
/// began, of which a pass takes at most this many before it ends with the truncation error
/// (status 3). Looks in which it checked some are not counted: beside a fast writer a pass
/// starved of the CPU is overtaken again and again while it makes its way, and its verdict
/// must not depend on the machine's speed. Only a writer that truncates faster than the pass
/// reads (64 looks in a row in which it read nothing), or one that keeps overtaking the pass
/// past the end of the log it began with, ends it.
const VERIFY_FRUITLESS_LOOKS: u32 = 64;

/// Where `verify`'s pass stands: the look it reads, the next LSN to check, and the records a
/// writer's truncation took before the pass reached them (below the writer's checkpoint, so
/// nothing anyone will read again).
pub(super) struct Pass<S: Storage> {
    wal: ReadOnlyWal<S>,
    pub(super) info: RecoveryInfo,
    next: Lsn,
    /// The log's last LSN when the pass began: reading past it is no progress on what the
    /// pass set out to check.
    end: Lsn,
    pub(super) skipped: Option<(Lsn, Lsn)>,
    /// Looks in a row in which no record up to `end` was checked.
    fruitless: u32,
    checked_since_look: bool,
    pub(super) records: u64,
    pub(super) bytes: u64,
}

impl<S: Storage> Pass<S> {
    /// Reads every record from the start of `wal`'s look to the end of the last look taken,
    /// looking again (`reopen`) each time a writer's truncation overtakes it.
    pub(super) fn run(wal: ReadOnlyWal<S>, mut reopen: impl FnMut() -> Result<ReadOnlyWal<S>, Exit>) -> Result<Pass<S>, Exit> {
        let info = wal.recovery_info().clone();
        let total = info.record_count.max(1);
        let (next, end) = (info.first_lsn, info.last_lsn);
        let mut pass = Pass { wal, info, next, end, skipped: None, fruitless: 0, checked_since_look: false, records: 0, bytes: 0 };
        let mut last_report = Instant::now();
        'pass: loop {
            let reader = match pass.wal.read_from(pass.next) {
                Ok(reader) => reader,
                Err(err) => {
                    pass.look_again(&mut reopen, err)?;
                    continue 'pass;
                }
            };
            for record in reader {
                let record = match record {
                    Ok(record) => record,
                    Err(err @ WalError::AuthenticationFailed { .. }) => return Err(wrong_key_at_first_record(&pass.info, err)),
                    Err(err) => {
                        pass.look_again(&mut reopen, err)?;
                        continue 'pass;
                    }
                };
                // A payload of the log's own types that does not decode is damage to the
                // log as the library reads it (`last_calvin_applied` refuses it): recovery
                // decodes only tombstones and purges, so verify checks the rest here.
                if let Some(Err(problem)) = decode::decode(record.lsn, record.record_type, &record.payload) {
                    return Err(WalError::MalformedPayload { lsn: record.lsn, record_type: record.record_type, problem }.into());
                }
                pass.next = record.lsn.next();
                pass.checked_since_look |= record.lsn <= pass.end;
                pass.records += 1;
                pass.bytes += record.payload.len() as u64;
                if last_report.elapsed() >= Duration::from_millis(500) {
                    note!("\rverify: {:>5.1}%  {} records", pass.records as f64 * 100.0 / total as f64, pass.records);
                    last_report = Instant::now();
                }
            }
            return Ok(pass);
        }
    }

    /// After `err` from the pass: where it is a truncation that overtook the pass (and the
    /// pass has not gone [`VERIFY_FRUITLESS_LOOKS`] looks without progress), looks again and
    /// goes on from where the log now starts if that is further on. Any other error ends it.
    fn look_again(&mut self, reopen: &mut impl FnMut() -> Result<ReadOnlyWal<S>, Exit>, err: WalError) -> Result<(), Exit> {
        if !matches!(err, WalError::SegmentTruncated { .. }) {
            return Err(err.into());
        }
        self.fruitless = if self.checked_since_look { 0 } else { self.fruitless + 1 };
        if self.fruitless >= VERIFY_FRUITLESS_LOOKS {
            return Err(err.into());
        }
        self.checked_since_look = false;
        self.wal = reopen()?;
        self.info = self.wal.recovery_info().clone();
        if self.info.first_lsn > self.next {
            let first = self.skipped.map_or(self.next, |(first, _)| first);
            self.skipped = Some((first, self.info.first_lsn.prev().expect("past `next`, so above LSN 0")));
            self.next = self.info.first_lsn;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use nodedb_wal::storage::{FaultConfig, OpenMode, Storage};
    use nodedb_wal::{Record, RecordType, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage};

    use super::*;

    /// How the writer overtakes the pass each time it opens a segment to read it.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Race {
        /// Truncates the segment after the one opened (and all before): the pass reads the
        /// opened one, then finds the next gone.
        PastTheOpened,
        /// Truncates the segment opened before the pass opens it: the pass reads nothing.
        TheOpened,
    }

    /// A storage on which the pass's reads race the writer, `left` times; looks (while `looking`
    /// is set) do not race.
    #[derive(Clone)]
    struct Overtaking {
        inner: SimStorage,
        wal: Arc<SegmentedWal<SimStorage>>,
        race: Race,
        left: Arc<AtomicUsize>,
        looking: Arc<AtomicBool>,
    }

    impl Overtaking {
        /// Rolls until the log holds six segments past `id`, then truncates every segment up to it.
        fn truncate_through(&self, id: SegmentId) {
            while self.wal.segments().last().unwrap().id.0 < id.0 + 6 {
                let record = Record::new(RecordType::optional(0x100), &[9u8; 4096]);
                self.wal.append_durable(record).unwrap();
            }
            let after = self.wal.segments().iter().find(|s| s.id > id).unwrap().first_lsn;
            self.wal.truncate_before(after).unwrap();
        }

        /// A look, which no race meets.
        fn look(&self) -> Result<ReadOnlyWal<Overtaking>, Exit> {
            self.looking.store(true, Ordering::SeqCst);
            let look = ReadOnlyWal::open_with(self.clone(), "/wal", None).map_err(Exit::from);
            self.looking.store(false, Ordering::SeqCst);
            look
        }
    }

    impl Storage for Overtaking {
        type File = <SimStorage as Storage>::File;
        type Lock = <SimStorage as Storage>::Lock;

        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.create_dir_all(dir)
        }

        fn lock_dir(&self, dir: &Path) -> std::io::Result<Self::Lock> {
            self.inner.lock_dir(dir)
        }

        fn remove(&self, path: &Path) -> std::io::Result<()> {
            self.inner.remove(path)
        }

        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.inner.rename(from, to)
        }

        fn rename_no_replace(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.inner.rename_no_replace(from, to)
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.inner.sync_dir(dir)
        }

        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            self.inner.list(dir)
        }

        fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Self::File> {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(id) = nodedb_wal::segment::parse_name(name) else { return self.inner.open(path, mode) };
            let reading = !mode.write && !self.looking.load(Ordering::SeqCst);
            if !reading || self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
                return self.inner.open(path, mode);
            }
            if self.race == Race::TheOpened {
                self.truncate_through(id);
                return self.inner.open(path, mode);
            }
            // Opened first: the file stays readable after the truncation removes it.
            let file = self.inner.open(path, mode);
            self.truncate_through(SegmentId(id.0 + 1));
            file
        }
    }

    /// A log of `segments` 32 KiB segments on a simulated disk, on a storage whose reads race
    /// the writer `races` times.
    fn overtaking(race: Race, races: usize, segments: usize) -> Overtaking {
        let sim = SimStorage::new(3, FaultConfig::default());
        let config = SegmentedWalConfig { segment_bytes_target: 32 << 10, recycle_segments: 0, ..SegmentedWalConfig::new("/wal") };
        let wal = Arc::new(SegmentedWal::open_with(sim.clone(), config).unwrap());
        while wal.segments().len() < segments {
            wal.append_durable(Record::new(RecordType::optional(0x100), &[1u8; 4096])).unwrap();
        }
        let (left, looking) = (Arc::new(AtomicUsize::new(races)), Arc::default());
        Overtaking { inner: sim, wal, race, left, looking }
    }

    fn run(storage: &Overtaking) -> (Result<Pass<Overtaking>, Exit>, usize) {
        let looks = AtomicUsize::new(0);
        let pass = Pass::run(storage.look().unwrap_or_else(|e| panic!("{}", e.message)), || {
            looks.fetch_add(1, Ordering::SeqCst);
            storage.look()
        });
        (pass, looks.load(Ordering::SeqCst))
    }

    // Seen failing before the fix: the pass gave up after 64 looks (status 3) although it
    // checked records between every two, as a pass starved of the CPU beside a fast writer.
    #[test]
    fn a_pass_overtaken_more_than_64_times_goes_on_while_it_checks_records_between() {
        // Each look's pass races twice: at the segment it reads, and at the next one, gone. Each
        // look takes two segments, so they all come before the end of the log it began with.
        let storage = overtaking(Race::PastTheOpened, 200, 240);
        let (pass, looks) = run(&storage);
        let pass = pass.unwrap_or_else(|e| panic!("status {}: {}", e.code, e.message));
        assert_eq!(looks, 100, "every race at a segment it reads overtook the pass");
        assert!(pass.skipped.is_some(), "the truncated records are named");
        assert_eq!(pass.info.last_lsn.0 + 1, storage.wal.next_lsn().0, "the pass reads to the end of its last look");
    }

    #[test]
    fn a_pass_the_writer_always_overtakes_before_it_reads_ends_with_the_truncation_error() {
        let storage = overtaking(Race::TheOpened, usize::MAX, 8);
        let (pass, looks) = run(&storage);
        let err = pass.err().expect("the writer always wins");
        assert_eq!(err.code, 3, "{}", err.message);
        assert_eq!(looks, VERIFY_FRUITLESS_LOOKS as usize - 1);
    }

    #[test]
    fn a_pass_the_writer_overtakes_forever_past_where_the_log_ended_ends_with_the_truncation_error() {
        let storage = overtaking(Race::PastTheOpened, usize::MAX, 16);
        let (pass, looks) = run(&storage);
        let err = pass.err().expect("the writer never lets the pass finish");
        assert_eq!(err.code, 3, "{}", err.message);
        // A look per two segments up to where the log ended at the start, then the fruitless
        // ones past it.
        assert!(looks <= 16 / 2 + VERIFY_FRUITLESS_LOOKS as usize, "{looks} looks");
    }
}
