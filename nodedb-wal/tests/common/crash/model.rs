//! What the log must hold after each crash, and the checks that it does.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nodedb_wal::{Lsn, Record, SegmentedWal, WalRecord, extract_temporal_purges, extract_tombstones};

use super::child::Acks;
use super::{Origin, PARENT_THREAD, THREADS, appends_groups, pipeline_depth, role};

/// Records the parent appends after each recovery.
const PARENT_RECORDS: u64 = 5;
/// Records kept below the newest when the parent truncates, so that recovery always walks
/// several sealed segments but the log stays small over hundreds of rounds.
const KEEP_RECORDS: u64 = 3000;
/// Records kept in rounds with records of several MiB: a few hundred MiB at most.
pub const KEEP_LARGE_RECORDS: u64 = 100;

/// Everything the log has returned since the test began, which it must keep returning.
#[derive(Debug)]
pub struct Model {
    records: BTreeMap<u64, Origin>,
    /// The oldest retained LSN.
    first: u64,
    /// The last LSN (0 while the log holds nothing).
    last: u64,
    /// Records children acknowledged, over all rounds.
    pub acked_total: u64,
    /// Records recovered that were appended but never acknowledged, over all rounds.
    pub unacked_total: u64,
    /// Recoveries that cut a torn tail.
    pub torn_tails: u64,
    /// Tombstones, temporal purges and Calvin positions recovered, over all rounds (a record
    /// counts again at each recovery that returns it).
    pub system_total: u64,
    /// Records the children's own truncations removed.
    pub truncated_by_child: u64,
    /// Tombstones and purges recovered at the end of a child's group, over all rounds (each
    /// counted in the round that added it).
    pub group_drops_total: u64,
    /// The records the last recovery returned.
    recovered: Vec<WalRecord>,
    /// Kept files (`.recycled`) in the directory before the current round, by inode.
    kept_inodes: Vec<u64>,
    /// Segments found after a crash in a file that was kept before its round: reuses the
    /// children made.
    pub reused_by_child: u64,
    /// Records kept below the newest when the parent truncates.
    keep_records: u64,
    /// Records acknowledged after a file-system shutdown began (`Acks::acked_late`), and how
    /// many of them were not recovered, over all rounds.
    pub acked_late: u64,
    pub acked_late_lost: u64,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            records: BTreeMap::new(),
            first: 1,
            last: 0,
            acked_total: 0,
            unacked_total: 0,
            torn_tails: 0,
            system_total: 0,
            truncated_by_child: 0,
            group_drops_total: 0,
            recovered: Vec::new(),
            kept_inodes: Vec::new(),
            reused_by_child: 0,
            keep_records: KEEP_RECORDS,
            acked_late: 0,
            acked_late_lost: 0,
        }
    }
}

impl Model {
    /// What the rounds so far did, for a test's summary line.
    pub fn summary(&self) -> String {
        format!(
            "{} records acknowledged, {} more recovered unacknowledged, {} torn tails cut, {} tombstones, purges and Calvin positions recovered ({} new ones \
             ending groups), {} records truncated and {} kept files reused by the children",
            self.acked_total,
            self.unacked_total,
            self.torn_tails,
            self.system_total,
            self.group_drops_total,
            self.truncated_by_child,
            self.reused_by_child
        )
    }

    /// A model whose truncations keep `records` below the newest (instead of 3000).
    pub fn keeping(records: u64) -> Model {
        Model { keep_records: records, ..Model::default() }
    }

    /// The last LSN the log holds.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Checks the freshly reopened `wal` after the child of `round` crashed, then takes its new
    /// records into the model.
    pub fn check_recovery(&mut self, wal: &SegmentedWal, round: u32, acks: &Acks) {
        let info = wal.recovery_info();
        self.torn_tails += u64::from(info.torn_tail.is_some());
        // A child that truncated may have moved the oldest record up to its highest checkpoint
        // (truncation removes only segments wholly below it), never further.
        let first_max = acks.truncated_to.map_or(self.first, |t| t.0.max(self.first));
        assert!(
            (self.first..=first_max).contains(&info.first_lsn.0),
            "recovery must keep every segment truncation left: the oldest LSN is {}, expected {}..={first_max}: {info:?}",
            info.first_lsn,
            self.first
        );
        if let Some(opened) = acks.opened_at {
            assert_eq!(opened.0, self.last + 1, "the child's recovery after the parent's clean close saw everything");
        }
        let first = info.first_lsn.0;
        let records: Vec<WalRecord> = wal
            .read_from(info.first_lsn)
            .unwrap_or_else(|e| panic!("read_from({}) failed: {e}", info.first_lsn))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("replay failed after recovery: {e} ({info:?})"));
        // The mapped reader returns the same records (it reads reused files' stale bytes past
        // a segment's end through maps, not preads).
        let mapped: Vec<WalRecord> = wal
            .read_mapped(info.first_lsn)
            .and_then(|records| records.collect())
            .unwrap_or_else(|e| panic!("round {round}: read_mapped after recovery failed: {e} ({info:?})"));
        assert!(mapped == records, "round {round}: read_mapped returns other records than read_from");
        let lsns_dense = records.iter().enumerate().all(|(i, r)| r.lsn.0 == first + i as u64);
        assert!(lsns_dense, "LSNs are dense from {first}: {:?}", records.iter().map(|r| r.lsn.0).collect::<Vec<_>>());
        let last = first + records.len() as u64 - 1;
        assert_eq!(info.last_lsn.0, last, "recovery_info().last_lsn matches the replay");
        assert_eq!(info.record_count, records.len() as u64, "recovery_info().record_count matches the replay");
        assert_eq!(wal.next_lsn().0, last + 1, "the next LSN follows the last recovered one");
        assert!(last >= self.last, "records the log returned before are gone: it held up to {}, now up to {last}", self.last);
        // What recovery gathered for the engines is exactly what the records it kept say.
        let tombstones = extract_tombstones(&records).expect("tombstones decode");
        assert_eq!(info.tombstones, tombstones, "recovery's tombstones are those of the records it returns");
        let purges = extract_temporal_purges(&records).expect("temporal purges decode");
        assert_eq!(info.temporal_purges, purges, "recovery's temporal purges are those of the records it returns");

        let mut origins = Vec::with_capacity(records.len());
        for r in &records {
            let origin = Origin::of(r).unwrap_or_else(|e| panic!("round {round}: {e}"));
            if let Some(known) = self.records.get(&r.lsn.0) {
                assert_eq!(origin, *known, "LSN {} changed since the log returned it", r.lsn);
            }
            origins.push(origin);
        }
        self.recovered = records.clone();
        self.system_total += records.iter().filter(|r| r.record_type.is_reserved()).count() as u64;
        let from = (self.last + 1).max(first);
        let new = &origins[(from - first) as usize..];
        self.check_new_records(round, from, from > self.last + 1, new, acks);
        let new_records = &records[(from - first) as usize..];
        self.group_drops_total += super::drops::check_drops(info, round, new_records, new);
        self.records = self.records.split_off(&first);
        for (i, origin) in new.iter().enumerate() {
            self.records.insert(from + i as u64, *origin);
        }
        self.acked_total += acks.acked.len() as u64;
        self.acked_late += acks.acked_late.len() as u64;
        self.acked_late_lost += acks.acked_late.iter().filter(|a| a.lsn.0 > last).count() as u64;
        let acked_kept = acks.acked.iter().filter(|a| a.lsn.0 >= from).count() as u64;
        self.unacked_total += new.len() as u64 - acked_kept;
        self.truncated_by_child += first - self.first;
        self.first = first;
        self.last = last;
    }

    /// The records a child added (from LSN `from` on): each from this round, each thread's
    /// sequence numbers consecutive in LSN order (from 0 unless the child truncated away its
    /// first records: `cut`), every acknowledged one at or above `from` among them, and no
    /// thread further than its acknowledgements plus one pipeline of appends it had not yet
    /// seen acknowledged.
    fn check_new_records(&self, round: u32, from: u64, cut: bool, new: &[Origin], acks: &Acks) {
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for (i, origin) in new.iter().enumerate() {
            let lsn = from + i as u64;
            assert_eq!(origin.round, round, "LSN {lsn}: {origin:?} was not appended in round {round}");
            assert!(role(origin.thread) < THREADS, "LSN {lsn}: {origin:?} names no child thread");
            let expected = next_seq.entry(origin.thread).or_insert(if cut { origin.seq } else { 0 });
            assert_eq!(origin.seq, *expected, "LSN {lsn}: thread {} skipped or repeated a record", origin.thread);
            // A group takes consecutive LSNs, and neither a tail cut nor a truncation splits it.
            let depth = pipeline_depth(origin.thread);
            if appends_groups(origin.thread) && origin.seq % depth != 0 {
                let previous = Origin { seq: origin.seq - 1, ..*origin };
                assert!(i > 0 && new[i - 1] == previous, "round {round}: LSN {lsn}: {origin:?} does not follow the rest of its group");
            }
            *expected += 1;
            *counts.entry(origin.thread).or_insert(0) += 1;
        }
        let mut acked_per_thread: HashMap<u32, u64> = HashMap::new();
        for ack in acks.acked.iter().filter(|a| a.lsn.0 >= from || !cut) {
            let at = ack.lsn.0.checked_sub(from).map(|i| i as usize).and_then(|i| new.get(i));
            let Some(found) = at else {
                panic!("round {round}: acknowledged {ack:?} is lost; the log ends at LSN {}", from + new.len() as u64 - 1);
            };
            assert_eq!((found.thread, found.seq), (ack.thread, ack.seq), "acknowledged LSN {} holds another record", ack.lsn);
            *acked_per_thread.entry(ack.thread).or_insert(0) += 1;
        }
        for ack in &acks.acked_late {
            let at = ack.lsn.0.checked_sub(from).map(|i| i as usize).and_then(|i| new.get(i));
            if let Some(found) = at {
                assert_eq!((found.thread, found.seq), (ack.thread, ack.seq), "acknowledged LSN {} holds another record", ack.lsn);
            }
            // Counted either way: the thread saw it acknowledged, so its next appends may be there.
            *acked_per_thread.entry(ack.thread).or_insert(0) += 1;
        }
        for (thread, count) in counts {
            let acked = acked_per_thread.get(&thread).copied().unwrap_or(0);
            let depth = pipeline_depth(thread);
            if appends_groups(thread) {
                assert_eq!(
                    count % depth,
                    0,
                    "round {round}: thread {thread} appends groups of {depth}, but {count} of its records came back"
                );
            }
            assert!(
                count < acked + depth + 1,
                "round {round}: thread {thread} has {count} records but only {acked} acknowledged; it never appended more than {depth} ahead"
            );
        }
    }

    /// Checks a read-only look taken after the crash, before the owner's recovery: it returns
    /// every record acknowledged in the round, and a prefix of what recovery then returned.
    /// Not always all of it: a write the dead child had submitted through io_uring can land
    /// after the child is reaped (its ring is torn down asynchronously), between the look and
    /// the recovery, so the look may stop before that batch, which nobody was told is durable.
    pub fn check_read_only_look(&self, round: u32, look: Result<Vec<WalRecord>, nodedb_wal::WalError>, acks: &Acks) {
        let look = look.unwrap_or_else(|e| panic!("round {round}: a read-only look after the crash failed: {e}"));
        let lsns = |r: &[WalRecord]| (r.first().map(|f| f.lsn.0), r.last().map(|l| l.lsn.0));
        let acked_end = acks.acked.iter().map(|a| a.lsn.0).max();
        assert!(
            self.recovered.starts_with(&look) && look.last().map(|r| r.lsn.0) >= acked_end,
            "round {round}: the read-only look returned LSNs {:?}, recovery {:?} (acknowledged up to {acked_end:?}), or other bytes",
            lsns(&look),
            lsns(&self.recovered)
        );
    }

    /// Notes the kept files in `dir` before a child runs, to count how many it reused.
    pub fn note_kept_files(&mut self, dir: &Path) {
        self.kept_inodes = inodes(dir, |name| name.ends_with(".recycled"));
    }

    /// Counts the segments in `dir` that are files kept before the round.
    pub fn count_reused_files(&mut self, dir: &Path) {
        let segments = inodes(dir, |name| nodedb_wal::segment::parse_name(name).is_some());
        self.reused_by_child += segments.iter().filter(|i| self.kept_inodes.contains(i)).count() as u64;
    }

    /// Appends a few records from the parent: the recovered log accepts appends at the next
    /// LSN, and they become durable.
    pub fn append_as_parent(&mut self, wal: &SegmentedWal, round: u32) {
        for seq in 0..PARENT_RECORDS {
            let origin = Origin { round, thread: PARENT_THREAD, seq };
            let payload = origin.payload();
            let lsn = wal.append(Record::new(origin.record_type(), &payload).scoped(origin.scope())).expect("append after recovery");
            assert_eq!(lsn.0, self.last + 1, "appends after recovery continue at the next LSN");
            self.records.insert(lsn.0, origin);
            self.last = lsn.0;
        }
        assert_eq!(wal.sync().expect("sync after recovery").0, self.last);
    }

    /// Removes old segments so that hundreds of rounds keep the log small.
    pub fn truncate(&mut self, wal: &SegmentedWal) {
        let checkpoint = self.last.saturating_sub(self.keep_records);
        wal.truncate_before(Lsn(checkpoint)).expect("truncate");
        let first = wal.segments().first().map_or(self.last + 1, |s| s.first_lsn.0);
        assert!(first <= checkpoint.max(self.first), "truncation removed records at or above the checkpoint {checkpoint}");
        self.first = first;
        self.records = self.records.split_off(&first);
    }
}

/// The inodes of the files in `dir` whose names `wanted` takes (none if `dir` is missing).
fn inodes(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&wanted))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.ino())
        .collect()
}
