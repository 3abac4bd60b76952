//! `nodedb-wal salvage DIR NEW_DIR`: the intact prefix of a damaged log, copied into a new log,
//! and what the cut cost, in plain words.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use nodedb_wal::salvage::{SalvageReport, salvage};
use nodedb_wal::{Lsn, RecordType, WalError};

use super::{Args, Exit, KEY_HINT, Outcome, key_ring, log_dir};

/// Exit statuses, as `verify`'s: 0 the whole log copied, 1 copied whole but for a torn tail
/// recovery would cut too, 2 the copy stops at damage, 4 it stops at a wrong key.
pub(super) fn salvage_log(args: &Args) -> Outcome {
    let dir = log_dir(args)?;
    let dest = PathBuf::from(args.positional.get(1).ok_or_else(|| Exit::usage("salvage needs DIR and NEW_DIR"))?);
    let ring = key_ring(args, false)?;
    let report = salvage(&dir, &dest, ring.as_deref()).map_err(Exit::from)?;
    out!("salvaged {} into {}: {}", dir.display(), dest.display(), kept(&report));
    if ring.is_some() {
        out!("the new log is plaintext: its records are no longer encrypted; keep it as safe as the keys");
    }
    if let Some(err) = &report.floor_damage {
        out!(
            "FLOOR did not read ({err}): the copy starts at the oldest segment present; if segments below a hole are ones a cut-short truncation left behind, move them aside and salvage again"
        );
    }
    if let Some(group) = &report.group_dropped {
        out!("dropped with their atomic group, which the damage cut: {}{}", lsns(group), drops(&report.group_drops_and_purges));
    }
    let past = &report.past_the_stop;
    let found = match past.records {
        0 => "nothing".to_owned(),
        n => format!(
            "{n} intact records, {}{}",
            past.lsn_ranges.iter().map(lsns).collect::<Vec<_>>().join(", "),
            drops(&past.drops_and_purges)
        ),
    };
    let Some(damage) = &report.damage else {
        return Ok(match report.torn_tail {
            Some(torn) => {
                out!(
                    "no damage; a torn tail (segment {} offset {}, never acknowledged) was left out, as opening the log cuts it; found in it: {found}",
                    torn.segment,
                    torn.offset
                );
                1
            }
            None => {
                out!("no damage: the whole log was copied");
                0
            }
        });
    };
    let at = match (damage.segment, damage.offset) {
        (Some(segment), Some(offset)) => format!("in segment {segment} at offset {offset}"),
        (Some(segment), None) => format!("at segment {segment}, which is missing"),
        (None, _) => "beside the segments (every segment present was copied)".to_owned(),
    };
    match &damage.error {
        // The place is said already, and the error's advice is to run this very salvage.
        WalError::Corruption { kind, .. } => out!("stopped at damage {at}: {kind}"),
        error => out!("stopped at damage {at}: {error}"),
    }
    out!("past the damage, not copied: {found}");
    Ok(match damage.error {
        WalError::WrongKey { .. } => {
            out!("{}", KEY_HINT.trim_start());
            4
        }
        _ => 2,
    })
}

fn kept(report: &SalvageReport) -> String {
    let next = report.next_lsn;
    match &report.records {
        Some(range) => format!("{} records, {}; the new log hands out LSN {next} next", range.end().0 - range.start().0 + 1, lsns(range)),
        None => format!("no record; the new log hands out LSN {next} next"),
    }
}

/// The collection drops and purges among records left out, which the engines must make good
/// themselves where their files do not hold them yet: the new log's recovery cannot report them.
fn drops(found: &[(Lsn, RecordType)]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let each =
        |(lsn, record_type): &(Lsn, RecordType)| format!("{} at LSN {lsn}", super::decode::type_name(*record_type).unwrap_or("a record"));
    let listed = found.iter().map(each).collect::<Vec<_>>().join(", ");
    format!(
        "; among them drops and purges the new log does not hold, which the engines must apply themselves where their files do not hold them yet: {listed}"
    )
}

fn lsns(range: &RangeInclusive<Lsn>) -> String {
    if range.start() == range.end() { format!("LSN {}", range.start()) } else { format!("LSN {} to {}", range.start(), range.end()) }
}
