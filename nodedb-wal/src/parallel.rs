//! The decoders of [`SegmentedWal::replay_parallel`]: one per segment, each streaming its
//! checked (and decrypted) records in chunks to the applying thread, which hands spent chunks
//! back for reuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use crate::error::Result;
use crate::read::{ReadSpec, RecordView, WalIter};
use crate::storage::Storage;
use crate::types::{Lsn, RecordType, Scope};
#[cfg(doc)]
use crate::wal::SegmentedWal;

/// Chunks of decoded records a parallel replay's decoder may hold before the applier takes
/// them, and the payload bytes (or records) that make a chunk, so that a decoder can work most
/// of a segment ahead.
pub(crate) const DECODED_CHUNKS_AHEAD: usize = 64;
const DECODED_CHUNK_BYTES: usize = 1 << 20;
/// Payload bytes a decoder may have sent that the applier has not applied yet: ~64 MiB per
/// decoder whatever the record size. The chunk count alone does not bound them, since a record
/// larger than a chunk makes a chunk of its own (64 of 64 MiB records were 4 GiB). One chunk
/// always goes, however large, or a record larger than this could never be applied.
pub(crate) const DECODED_BYTES_AHEAD: usize = DECODED_CHUNKS_AHEAD * DECODED_CHUNK_BYTES;
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

/// The bytes of a decoder's chunks sent and not yet applied (see [`DECODED_BYTES_AHEAD`]).
#[derive(Debug, Default)]
pub(crate) struct Ahead(AtomicUsize);

impl Ahead {
    /// The applier applied `chunk`: its bytes no longer count, and it goes back to its decoder
    /// (emptied of a large record's buffer first, which reuse would otherwise keep). Always
    /// handed back unless the queue is full: a decoder waiting for room wakes on it.
    pub(crate) fn applied(&self, mut chunk: DecodedChunk, spent: &SyncSender<DecodedChunk>) {
        self.0.fetch_sub(chunk.bytes.len(), Ordering::AcqRel);
        if chunk.bytes.capacity() > 2 * DECODED_CHUNK_BYTES {
            chunk.bytes = Vec::new();
        }
        // Full (the decoder has buffers enough, and so does not wait) or gone: dropped.
        let _ = spent.try_send(chunk);
    }

    /// Sends `chunk` once it fits the bytes ahead (or nothing is ahead); `false` once the
    /// applier is gone. Waits on the spent chunks: each applied one comes back there (or the
    /// queue is full, and the wait does not block).
    fn send(&self, chunk: DecodedChunk, tx: &SyncSender<Result<DecodedChunk>>, spent: &Receiver<DecodedChunk>) -> bool {
        let len = chunk.bytes.len();
        loop {
            let ahead = self.0.load(Ordering::Acquire);
            if ahead == 0 || ahead + len <= DECODED_BYTES_AHEAD {
                break;
            }
            if spent.recv().is_err() {
                return false;
            }
        }
        self.0.fetch_add(len, Ordering::AcqRel);
        tx.send(Ok(chunk)).is_ok()
    }
}

/// Decodes one segment's records for [`SegmentedWal::replay_parallel`] and sends them in
/// chunks, at most [`DECODED_BYTES_AHEAD`] of them ahead of the applier, reusing the chunks
/// the applier hands back; the first error is sent last. Stops when the receiver is gone.
pub(crate) fn decode_segment<S: Storage>(
    storage: Arc<S>,
    spec: ReadSpec,
    tx: &SyncSender<Result<DecodedChunk>>,
    spent: &Receiver<DecodedChunk>,
    ahead: &Ahead,
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
                if chunk.is_full() && !ahead.send(std::mem::replace(&mut chunk, fresh()), tx, spent) {
                    return;
                }
            }
            Err(err) => {
                if ahead.send(chunk, tx, spent) {
                    let _ = tx.send(Err(err));
                }
                return;
            }
        }
    }
    if !chunk.records.is_empty() {
        ahead.send(chunk, tx, spent);
    }
}

#[cfg(test)]
mod tests {
    //! The decoders themselves, with as many as each case asks for: `replay_parallel` runs them
    //! only where the cores allow (on two cores it reads in sequence), and they must be right
    //! on every machine.

    use std::path::Path;

    use super::*;
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

    // Found by a review: a chunk is "full" at 1 MiB, but a record larger than that makes a
    // chunk of its own, and the channel held 64 chunks whatever their size: with 64 MiB
    // records (the payload maximum) one decoder could hold 4 GiB ahead of the applier.
    #[test]
    fn a_decoder_holds_a_bounded_number_of_bytes_ahead_of_the_applier_whatever_the_record_size() {
        let sim = SimStorage::new(5, FaultConfig::default());
        let mut c = SegmentedWalConfig::new("/decoders-large");
        c.segment_bytes_target = 1 << 30;
        let wal = SegmentedWal::open_with(sim.clone(), c).unwrap();
        let record = vec![7u8; 2 << 20];
        for _ in 0..40 {
            wal.append(Record::new(RecordType::optional(0x100), &record)).unwrap();
        }
        wal.sync().unwrap();
        let seg = wal.segments()[0];
        assert_eq!(wal.segments().len(), 1);
        let decrypt = crate::read::Decrypt::With(None);
        let spec = crate::read::ReadSpec::new("/decoders-large".into(), vec![seg], Lsn(1), wal.durable_lsn(), decrypt);
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_CHUNKS_AHEAD);
        // An applier that applies nothing (it hands no chunk back) counts what it was sent.
        let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<DecodedChunk>(DECODED_CHUNKS_AHEAD);
        drop(spent_tx);
        let storage = std::sync::Arc::new(sim.clone());
        let decoder = std::thread::spawn(move || decode_segment(storage, spec, &tx, &spent_rx, &Ahead::default()));
        let held: usize = rx.iter().map(|chunk| chunk.unwrap().bytes.len()).sum();
        decoder.join().unwrap();
        assert!(held <= DECODED_BYTES_AHEAD + record.len(), "{} MiB decoded ahead of the applier", held >> 20);
        // An applier that applies them all gets them all, waiting decoders and all.
        let mut applied = 0;
        let count = |r: RecordView<'_>| {
            applied += usize::from(r.payload == record.as_slice());
            Ok(())
        };
        assert_eq!(wal.replay_decoded(Lsn(1), 2, count).unwrap(), 40);
        assert_eq!(applied, 40);
    }
}
