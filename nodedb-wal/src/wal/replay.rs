//! Parallel replay: decoders per segment working ahead of the applying thread.

use std::sync::Arc;

use super::SegmentedWal;
use crate::error::{Result, WalError};
use crate::parallel::{Ahead, DECODED_CHUNKS_AHEAD, decode_segment};
use crate::read::{ReadSpec, RecordView};
use crate::segment::SegmentInfo;
use crate::storage::Storage;
use crate::types::Lsn;

/// The decoders of a [`SegmentedWal::replay_parallel`] asked for `threads`: at least one, at
/// most one per core.
fn decoders_for(threads: usize) -> usize {
    threads.min(crate::segment::reader::usable_cores()).max(1)
}

impl<S: Storage> SegmentedWal<S> {
    /// Replays the durable records from `from` on, in LSN order, decoding (checking and
    /// decrypting) up to `threads` segments at once: `apply` takes the records of the oldest
    /// segment as its decoder streams them, while the decoders of the next segments work
    /// ahead. Each record is lent ([`RecordView::to_record`] makes an owned copy): decoders
    /// copy payloads into chunk buffers the applying thread hands back, so no record costs an
    /// allocation. Memory: up to ~64 MiB of decoded records per decoder. Stops at the first
    /// error, from reading or from `apply`, which wraps an engine's own error with
    /// [`WalError::caller`] (it comes back as [`WalError::Caller`], to downcast).
    ///
    /// `threads` is a bound, and so are the cores: decoding is work for a core, and each
    /// decoder may hold ~64 MiB, so more decoders than cores would only take memory (a caller's
    /// 1,000 on a log of 1,000 segments would have been 1,000 threads and up to 64 GB). `apply`
    /// runs on the calling thread. A log without a key ring
    /// (plaintext) where fewer than two cores are left beside it is read in sequence instead
    /// (the calling thread checks the records while a read-ahead helper reads ahead): checking
    /// is bound by memory traffic, and the decoders' copy costs more than they save there. On
    /// two cores, warm, 1 KiB records: ~0.55-0.69 of a plain read against ~0.31-0.36 with two
    /// decoders (BENCHMARKS.md). Decrypting is work that splits across decoders, so a log
    /// with a key ring always gets them.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
    /// # let ty = RecordType::optional(0x100);
    /// for i in 0..10u8 {
    ///     wal.append(Record::new(ty, &[i]))?;
    /// }
    /// wal.sync()?;
    /// let mut seen = Vec::new();
    /// let applied = wal.replay_parallel(Lsn::FIRST, 2, |r| {
    ///     seen.push((r.lsn.0, r.payload[0]));
    ///     Ok(())
    /// })?;
    /// assert_eq!(applied, 10);
    /// assert_eq!(seen, (1..=10).map(|i| (i, i as u8 - 1)).collect::<Vec<_>>(), "in LSN order");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn replay_parallel(&self, from: Lsn, threads: usize, mut apply: impl FnMut(RecordView<'_>) -> Result<()>) -> Result<u64> {
        let spare_cores = crate::segment::reader::usable_cores().saturating_sub(1);
        if self.config.key_ring.is_none() && threads.min(spare_cores) < 2 {
            let mut records = self.read_from(from)?;
            let mut applied = 0;
            while let Some(record) = records.next_view() {
                apply(record?)?;
                applied += 1;
            }
            return Ok(applied);
        }
        self.replay_decoded(from, decoders_for(threads), apply)
    }

    /// [`Self::replay_parallel`] with exactly `decoders` decoders (at least one).
    pub(crate) fn replay_decoded(&self, from: Lsn, decoders: usize, mut apply: impl FnMut(RecordView<'_>) -> Result<()>) -> Result<u64> {
        let until = self.durable_lsn();
        let mut segments = self.segments();
        // The same rule as the sequential reader (each worker below starts inside its segment).
        if let Some(oldest) = segments.first() {
            crate::read::check_retained(from, oldest.first_lsn, until)?;
        }
        segments.retain(|s| s.end_lsn > from && s.first_lsn <= until);
        std::thread::scope(|scope| {
            // One decoder per segment, at most `threads` at once, each streaming its records
            // in chunks through a bounded channel; they are applied in segment order while the
            // decoders of the segments after it work ahead. Applied chunks go back to their
            // decoder for reuse.
            let decoder = |seg: &SegmentInfo| {
                let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
                let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
                // The decoders keep the cores busy already: a read-ahead helper per decoder
                // would only crowd them (warm 1 KiB replay with two threads: 79 -> 126 ms).
                let spec = ReadSpec {
                    segments: vec![*seg],
                    from: from.max(seg.first_lsn),
                    until,
                    check_ahead: false,
                    ..self.read_spec(from, self.decrypt())
                };
                let storage = Arc::clone(&self.storage);
                let ahead = Arc::new(Ahead::default());
                let decoder_ahead = Arc::clone(&ahead);
                // A thread the system refuses is an error, not a panic in the caller's replay
                // (the decoders already running stop as their receivers go).
                std::thread::Builder::new()
                    .name("nodedb-wal-decode".into())
                    .spawn_scoped(scope, move || decode_segment(storage, spec, &tx, &spent_rx, &decoder_ahead))
                    .map_err(|e| WalError::io(crate::error::IoOp::Open, "replay decoder thread", e))?;
                Ok::<_, WalError>((rx, spent_tx, ahead))
            };
            let mut queued = segments.iter();
            let mut running = queued.by_ref().take(decoders.max(1)).map(decoder).collect::<Result<std::collections::VecDeque<_>>>()?;
            let mut applied = 0;
            while let Some((decoded, spent, ahead)) = running.pop_front() {
                // Returning early drops the receivers: the decoders' sends fail and they stop.
                for chunk in decoded {
                    let chunk = chunk?;
                    for record in chunk.records() {
                        apply(record)?;
                        applied += 1;
                    }
                    ahead.applied(chunk, &spent);
                }
                if let Some(seg) = queued.next() {
                    running.push_back(decoder(seg)?);
                }
            }
            Ok(applied)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decoders_for;
    use crate::segment::reader::usable_cores;

    #[test]
    fn a_parallel_replay_runs_at_most_one_decoder_per_core_and_at_least_one() {
        assert_eq!(decoders_for(1_000), usable_cores());
        assert_eq!(decoders_for(0), 1);
        assert_eq!(decoders_for(1), 1);
    }
}
