//! The decoders of [`SegmentedWal::replay_parallel`]: one per segment, each streaming its
//! checked (and decrypted) records in chunks to the applying thread, which hands spent chunks
//! back for reuse.

use std::sync::Arc;

use crate::error::Result;
use crate::read::{ReadSpec, RecordView, WalIter};
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, Scope};
#[cfg(doc)]
use crate::wal::SegmentedWal;

/// Chunks of decoded records a parallel replay's decoder may hold before the applier takes
/// them, and the payload bytes (or records) that make a chunk: memory stays under ~64 MiB per
/// decoder whatever the record size, and a decoder can work most of a segment ahead.
pub(crate) const DECODED_CHUNKS_AHEAD: usize = 64;
const DECODED_CHUNK_BYTES: usize = 1 << 20;
const DECODED_CHUNK_RECORDS: usize = 4096;

/// Records decoded by a [`SegmentedWal::replay_parallel`] decoder: what a [`RecordView`]
/// holds besides its payload, and the payloads back to back in one buffer.
#[derive(Debug, Default)]
pub(crate) struct DecodedChunk {
    records: Vec<(Lsn, RecordType, Scope, u16, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

impl DecodedChunk {
    fn push(&mut self, view: &RecordView<'_>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(view.payload);
        self.records.push((view.lsn, view.record_type, view.scope, view.flags, start..self.bytes.len()));
    }

    fn is_full(&self) -> bool {
        self.bytes.len() >= DECODED_CHUNK_BYTES || self.records.len() >= DECODED_CHUNK_RECORDS
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = RecordView<'_>> {
        self.records.iter().map(|(lsn, record_type, scope, flags, range)| RecordView {
            lsn: *lsn,
            record_type: *record_type,
            scope: *scope,
            flags: *flags,
            payload: &self.bytes[range.clone()],
        })
    }
}

/// Decodes one segment's records for [`SegmentedWal::replay_parallel`] and sends them in
/// chunks, reusing the chunks the applier hands back; the first error is sent last. Stops
/// when the receiver is gone.
pub(crate) fn decode_segment<S: Storage>(
    storage: Arc<S>,
    spec: ReadSpec,
    tx: &std::sync::mpsc::SyncSender<Result<DecodedChunk>>,
    spent: &std::sync::mpsc::Receiver<DecodedChunk>,
) {
    let mut records = match WalIter::new(storage, spec) {
        Ok(records) => records,
        Err(err) => {
            let _ = tx.send(Err(err));
            return;
        }
    };
    let fresh = || {
        let mut chunk = spent.try_recv().unwrap_or_default();
        chunk.records.clear();
        chunk.bytes.clear();
        chunk
    };
    let mut chunk = fresh();
    while let Some(record) = records.next_view() {
        match record {
            Ok(view) => {
                chunk.push(&view);
                if chunk.is_full() && tx.send(Ok(std::mem::replace(&mut chunk, fresh()))).is_err() {
                    return;
                }
            }
            Err(err) => {
                let _ = tx.send(Ok(chunk)).and_then(|()| tx.send(Err(err)));
                return;
            }
        }
    }
    if !chunk.records.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
}

#[cfg(test)]
mod tests {
    //! The decoders themselves, with as many as each case asks for: `replay_parallel` runs them
    //! only where the cores allow (on two cores it reads in sequence), and they must be right
    //! on every machine.

    use std::path::Path;

    use crate::error::WalError;
    use crate::read::RecordView;
    use crate::record::Record;
    use crate::storage::{FaultConfig, SimStorage};
    use crate::types::{Lsn, RecordType};
    use crate::wal::SegmentedWal;
    use crate::{SegmentedWalConfig, segment};

    fn log(dir: &str, sim: &SimStorage, records: u32, payload: impl Fn(u32) -> Vec<u8>) -> SegmentedWal<SimStorage> {
        let mut c = SegmentedWalConfig::new(dir);
        c.segment_bytes_target = 16 * 1024;
        c.batch_bytes_max = 4 * 1024;
        let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
        for i in 0..records {
            wal.append(Record::new(RecordType::optional(0x100), &payload(i))).unwrap();
        }
        wal.sync().unwrap();
        wal
    }

    #[test]
    fn decoders_return_exactly_what_sequential_replay_does_in_lsn_order() {
        let sim = SimStorage::new(4, FaultConfig::default());
        let wal = log("/decoders", &sim, 3000, |i| i.to_le_bytes().repeat(1 + (i % 50) as usize));
        assert!(wal.segments().len() > 10);
        let decoded = |from, decoders| {
            let mut records = Vec::new();
            let push = |r: RecordView<'_>| {
                records.push(r.to_record());
                Ok(())
            };
            let n = wal.replay_decoded(from, decoders, push).unwrap();
            assert_eq!(n, records.len() as u64, "the count returned");
            records
        };
        for (from, decoders) in [(Lsn(1), 1), (Lsn(1), 3), (Lsn(1234), 4), (Lsn(3000), 2), (Lsn(3001), 2), (Lsn::ZERO, 2)] {
            let sequential: Vec<_> = wal.read_from(from).unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(decoded(from, decoders), sequential, "from {from} with {decoders} decoders");
        }
        let mut seen = 0;
        let err = wal.replay_decoded(Lsn(1), 3, |_| {
            seen += 1;
            if seen == 10 { Err(WalError::Closed) } else { Ok(()) }
        });
        assert!(matches!(err, Err(WalError::Closed)) && seen == 10, "the callback's error stops the replay");
        wal.truncate_before(Lsn(2000)).unwrap();
        assert!(matches!(wal.replay_decoded(Lsn(1), 2, |_| Ok(())), Err(WalError::LsnNotRetained { .. })));
    }

    #[test]
    fn decoders_stop_at_damage_having_applied_exactly_the_records_before_it() {
        let sim = SimStorage::new(9, FaultConfig::default());
        let wal = log("/decoders-damage", &sim, 600, |i| i.to_le_bytes().repeat(64));
        let damaged = wal.segments()[4];
        let path = segment::path(Path::new("/decoders-damage"), damaged.id);
        let mut bytes = sim.read_file(&path).unwrap();
        bytes[4096 + 100] ^= 1; // the first record's payload
        sim.write_file(&path, &bytes);
        let before_damage: Vec<u64> = (1..damaged.first_lsn.0).collect();
        for decoders in [1, 2, 4] {
            let mut applied = Vec::new();
            let note = |r: RecordView<'_>| {
                applied.push(r.lsn.0);
                Ok(())
            };
            let outcome = wal.replay_decoded(Lsn(1), decoders, note);
            let Err(WalError::Corruption { segment, .. }) = outcome else { panic!("{decoders} decoders: {outcome:?}") };
            assert_eq!((segment, &applied), (damaged.id, &before_damage), "{decoders} decoders");
        }
    }
}
