//! The collection drops and temporal purges a crash child appends (alone on thread 1, at the
//! end of some groups on the group threads): recovery gathers each exactly when it returns the
//! record, and never one whose record it does not return.

use nodedb_wal::{CollectionTombstonePayload, RecordType, RecoveryInfo, TemporalPurgePayload, WalRecord};

use super::{LARGE_THREAD_BASE, Origin, THREADS, appends_groups, pipeline_depth};

/// Groups past a thread's last recovered record whose drops are looked for (and must be
/// missing): one may have been in flight at the crash, more if a shutdown lost acknowledged ones.
const GROUPS_PAST_THE_END: u64 = 8;

/// Checks what recovery gathered (`info`) against `new`, the records a child of `round`
/// added, of origins `origins`. Every tombstone among them is gathered at its own LSN
/// (`dropped_at`) with its purge LSN, and every temporal purge once, at its LSN; the drop a
/// group thread's next groups would carry is not gathered. Returns how many of the drops
/// recovered ended a group.
pub fn check_drops(info: &RecoveryInfo, round: u32, new: &[WalRecord], origins: &[Origin]) -> u64 {
    let mut in_groups = 0;
    for (record, origin) in new.iter().zip(origins) {
        if record.record_type == RecordType::COLLECTION_TOMBSTONE {
            let t = CollectionTombstonePayload::decode(&record.payload).expect("the origin check decoded it");
            let (at, purge_lsn) = gathered_tombstone(info, &t.collection, t.database, t.tenant);
            assert_eq!(at, Some(record.lsn), "round {round}: the drop of {origin:?} at LSN {} is gathered at {at:?}", record.lsn);
            assert_eq!(purge_lsn, Some(t.purge_lsn), "round {round}: the drop of {origin:?} is gathered with another purge LSN");
        } else if record.record_type == RecordType::TEMPORAL_PURGE {
            let p = TemporalPurgePayload::decode(&record.payload).expect("the origin check decoded it");
            let gathered: Vec<_> = info.temporal_purges.iter().filter(|g| g.purge.collection == p.collection).collect();
            let whole = gathered.len() == 1 && gathered[0].lsn == record.lsn && gathered[0].purge == p && gathered[0].scope == record.scope;
            assert!(whole, "round {round}: the purge of {origin:?} at LSN {} is gathered as {gathered:?}", record.lsn);
        } else {
            continue;
        }
        in_groups += u64::from(appends_groups(origin.thread));
    }
    for thread in (0..THREADS).flat_map(|t| [t, t + LARGE_THREAD_BASE]).filter(|&t| appends_groups(t)) {
        let next = origins.iter().filter(|o| o.thread == thread).map(|o| o.seq + 1).max().unwrap_or(0);
        let past = next..next + GROUPS_PAST_THE_END * pipeline_depth(thread);
        for origin in past.map(|seq| Origin { round, thread, seq }).filter(|o| o.ends_group_with_drop()) {
            check_not_gathered(info, origin);
        }
    }
    in_groups
}

/// Where recovery gathered the drop of `collection` in `database`, `tenant`: `dropped_at`
/// and the purge LSN.
fn gathered_tombstone(
    info: &RecoveryInfo,
    collection: &str,
    database: u32,
    tenant: u32,
) -> (Option<nodedb_wal::Lsn>, Option<nodedb_wal::Lsn>) {
    (info.tombstones.dropped_at(database, tenant, collection), info.tombstones.purge_lsn(database, tenant, collection))
}

/// Checks that recovery gathered no drop or purge of `origin`, whose group it did not return.
fn check_not_gathered(info: &RecoveryInfo, origin: Origin) {
    let collection = origin.collection();
    let dropped = gathered_tombstone(info, &collection, origin.round, origin.thread);
    let purged: Vec<_> = info.temporal_purges.iter().filter(|p| p.purge.collection == collection).collect();
    assert!(
        dropped == (None, None) && purged.is_empty(),
        "round {}: recovery gathered the drop or purge of {origin:?}, whose group it did not return: {dropped:?}, {purged:?}",
        origin.round
    );
}
