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
