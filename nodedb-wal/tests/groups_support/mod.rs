//! The plain model `tests/groups.rs` checks recovery against: every record the log returned,
//! which group it belongs to, and the drops and purges it carries. What recovery gathers must
//! be exactly what the model computes from the records that survived.

use std::collections::{BTreeMap, HashMap};

use nodedb_wal::storage::SimRng;
use nodedb_wal::{
    CollectionTombstonePayload, GroupEntry, Lsn, Record, RecordType, RecoveryInfo, Scope, TemporalPurge, TemporalPurgeEngine,
    TemporalPurgePayload, WalRecord,
};

pub const TY: RecordType = RecordType::optional(0x300);

/// A few names, so that drops of the same collection meet and their purge LSNs merge.
const COLLECTIONS: [&str; 3] = ["orders", "cpu", "logs"];

/// A member's payload names its group, its index and the group's size.
pub fn member(group: u64, index: u64, size: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(24 + len);
    for v in [group, index, size] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend((0..len).map(|i| (group as usize * 31 + index as usize * 7 + i) as u8));
    p
}

/// One member of a group the test appends, owning what a [`GroupEntry`] borrows.
#[derive(Clone, Debug)]
pub enum Member {
    Plain(Record<'static>, Vec<u8>),
    Tombstone(CollectionTombstonePayload),
    Purge(TemporalPurgePayload, Scope),
}

impl Member {
    pub fn entry(&self) -> GroupEntry<'_> {
        match self {
            Member::Plain(record, payload) => GroupEntry::Record(Record { payload, ..*record }),
            Member::Tombstone(t) => GroupEntry::Tombstone(t),
            Member::Purge(p, scope) => GroupEntry::TemporalPurge(p, *scope),
        }
    }

    /// The payload as the log stores it.
    fn payload(&self) -> Vec<u8> {
        match self {
            Member::Plain(_, payload) => payload.clone(),
            Member::Tombstone(t) => t.encode().unwrap(),
            Member::Purge(p, _) => p.encode().unwrap(),
        }
    }
}

/// A random group of `size` members: mostly records, some drops and purges. A drop's purge
/// LSN is any LSN up to `next` (the log's next LSN), as a database takes it.
pub fn random_group(rng: &mut SimRng, group: u64, size: u64, next: Lsn) -> Vec<Member> {
    let name = |rng: &mut SimRng| COLLECTIONS[rng.below(COLLECTIONS.len() as u64) as usize].to_string();
    (0..size)
        .map(|i| match rng.below(8) {
            0 => Member::Tombstone(CollectionTombstonePayload {
                database: rng.below(2) as u32,
                tenant: rng.below(2) as u32,
                collection: name(rng),
                purge_lsn: Lsn(1 + rng.below(next.0)),
            }),
            1 => {
                let engine = if rng.below(2) == 0 { TemporalPurgeEngine::Timeseries } else { TemporalPurgeEngine::Columnar };
                let purge = TemporalPurgePayload {
                    engine,
                    collection: name(rng),
                    cutoff_unix_ms: rng.below(1000) as i64,
                    purged_count: rng.below(9),
                };
                Member::Purge(purge, Scope { database: rng.below(2) as u32, tenant: 1, vshard: rng.below(4) as u32 })
            }
            _ => Member::Plain(Record::new(TY, &[]), member(group, i, size, rng.below(3000) as usize)),
        })
        .collect()
}

/// A group that must be refused whole: good members and one bad one.
pub fn rejected_group(rng: &mut SimRng, next: Lsn) -> Vec<Member> {
    let size = 1 + rng.below(4);
    let mut members = random_group(rng, 0, size, next);
    let bad = match rng.below(4) {
        0 => Member::Tombstone(CollectionTombstonePayload {
            database: 0,
            tenant: 0,
            collection: "orders".into(),
            purge_lsn: Lsn(next.0 + 1 + rng.below(100)),
        }),
        1 => Member::Tombstone(CollectionTombstonePayload { database: 0, tenant: 0, collection: "x".repeat(256), purge_lsn: next }),
        2 => Member::Purge(
            TemporalPurgePayload {
                engine: TemporalPurgeEngine::Timeseries,
                collection: "y".repeat(300),
                cutoff_unix_ms: 0,
                purged_count: 0,
            },
            Scope::default(),
        ),
        _ => Member::Plain(Record::new(RecordType::COLLECTION_TOMBSTONE, &[]), Vec::new()),
    };
    let at = rng.below(members.len() as u64 + 1) as usize;
    members.insert(at, bad);
    members
}

/// What the test appended at one LSN.
#[derive(Clone, Debug)]
struct Known {
    member: Member,
    payload: Vec<u8>,
    group: u64,
    size: usize,
}

/// Every record the log ever returned, by LSN, and the acknowledged end.
#[derive(Default)]
pub struct Model {
    known: BTreeMap<u64, Known>,
    pub acked: u64,
}

impl Model {
    pub fn appended(&mut self, first: Lsn, group: u64, members: &[Member]) {
        for (lsn, member) in (first.0..).zip(members) {
            let known = Known { member: member.clone(), payload: member.payload(), group, size: members.len() };
            self.known.insert(lsn, known);
        }
    }

    /// Forgets what a recovery did not return: those LSNs are issued again.
    pub fn keep_up_to(&mut self, last: Lsn) {
        self.known.retain(|&lsn, _| lsn <= last.0);
    }

    /// That `records`, read from the log recovery returned (`info`), are what was appended,
    /// each group whole, and that recovery gathered exactly their drops and purges.
    pub fn check(&self, info: &RecoveryInfo, records: &[WalRecord], at: &str) {
        assert!(info.last_lsn.0 >= self.acked, "{at}: acknowledged {}, log ends at {}", self.acked, info.last_lsn);
        let mut members: HashMap<u64, (usize, usize)> = HashMap::new();
        for r in records {
            let known = self.known.get(&r.lsn.0).unwrap_or_else(|| panic!("{at}: LSN {} was never appended", r.lsn));
            let entry = known.member.entry();
            assert_eq!(
                (r.record_type, r.scope, &r.payload[..]),
                (entry.record_type(), entry.scope(), &known.payload[..]),
                "{at}: LSN {}",
                r.lsn
            );
            members.entry(known.group).or_insert((0, known.size)).0 += 1;
        }
        for (group, (seen, size)) in members {
            assert_eq!(seen, size, "{at}: group {group} recovered {seen} of {size} members");
        }
        self.check_gathered(info, records, at);
    }

    fn check_gathered(&self, info: &RecoveryInfo, records: &[WalRecord], at: &str) {
        // (database, tenant, name) -> (purge LSN, LSN of the last tombstone), as a drop merges.
        let mut drops: BTreeMap<(u32, u32, String), (Lsn, Lsn)> = BTreeMap::new();
        let mut purges = Vec::new();
        for r in records {
            match &self.known[&r.lsn.0].member {
                Member::Tombstone(t) => {
                    let merged = drops.entry((t.database, t.tenant, t.collection.clone())).or_insert((t.purge_lsn, r.lsn));
                    *merged = (merged.0.max(t.purge_lsn), merged.1.max(r.lsn));
                }
                Member::Purge(purge, scope) => purges.push(TemporalPurge { lsn: r.lsn, scope: *scope, purge: purge.clone() }),
                Member::Plain(..) => {}
            }
        }
        let set = &info.tombstones;
        assert_eq!(set.len(), drops.len(), "{at}: dropped collections");
        for ((database, tenant, name), (purge_lsn, lsn)) in drops {
            assert_eq!(set.purge_lsn(database, tenant, &name), Some(purge_lsn), "{at}: purge LSN of {database}/{tenant}/{name}");
            assert_eq!(set.dropped_at(database, tenant, &name), Some(lsn), "{at}: dropped_at of {database}/{tenant}/{name}");
        }
        assert_eq!(info.temporal_purges, purges, "{at}: temporal purges");
    }

    /// Tombstones and purges among `records`: what a look without their key cannot gather.
    pub fn gathered_count(&self, records: &[WalRecord]) -> u64 {
        records.iter().filter(|r| !matches!(self.known[&r.lsn.0].member, Member::Plain(..))).count() as u64
    }
}
