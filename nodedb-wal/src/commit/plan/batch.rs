//! What the plan hands the flusher: each batch's buffer and where it lands ([`Sealed`],
//! [`BatchMeta`], [`Target`]), the batch being filled ([`Active`]), the segment new batches
//! go to ([`SegmentPlan`]) and the salt and keys its frames are sealed with ([`Identity`]).

use std::sync::Arc;

use crate::crypto::{SegmentCipher, TAG_LEN};
use crate::format::frame::HEADER_LEN;
use crate::storage::BatchBuf;
use crate::types::{Lsn, SegmentId};

/// What a segment's frames are sealed with, chosen when the segment is planned.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The segment's salt, carried by every frame in it.
    pub salt: u32,
    /// Key material, when the segment is encrypted.
    pub crypt: Option<Crypt>,
}

/// The encryption of one segment.
#[derive(Clone, Debug)]
pub struct Crypt {
    pub key_id: u32,
    pub epoch: u32,
    pub kdf_salt: [u8; 16],
    pub cipher: Arc<SegmentCipher>,
}

impl Identity {
    /// Bytes a frame of `payload_len` takes in this segment.
    pub fn frame_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len + if self.crypt.is_some() { TAG_LEN } else { 0 }
    }
}

/// Where a batch lands.
#[derive(Clone, Debug)]
pub struct Target {
    /// The segment.
    pub segment: SegmentId,
    /// Its salt and keys.
    pub identity: Identity,
    /// The segment's first LSN.
    pub segment_first_lsn: Lsn,
    /// Offset of the batch inside the segment file.
    pub offset: u64,
    /// The flusher must create the segment (and write its header block) first.
    pub create: bool,
}

/// A batch being filled by appenders.
#[derive(Debug)]
pub struct Active {
    pub buf: Arc<BatchBuf>,
    pub first_lsn: Lsn,
    pub seq: u64,
    pub target: Target,
}

/// A batch no appender can join any more, waiting for the flusher.
#[derive(Debug)]
pub struct Sealed {
    pub buf: Arc<BatchBuf>,
    pub meta: BatchMeta,
}

/// What the flusher needs to know about a sealed batch.
#[derive(Clone, Debug)]
pub struct BatchMeta {
    /// The batch's sequence number: waiters sleep on it.
    pub seq: u64,
    /// First LSN in the batch and the LSN after its last record (equal when it holds none).
    pub first_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Bytes of records, and the batch's length once padded (and sealed, if `ends_segment`).
    pub used: usize,
    pub padded: usize,
    pub target: Target,
    /// The batch closes its segment with an end frame.
    pub ends_segment: bool,
    /// A one-off buffer for an oversized record: not returned to the pool.
    pub oversized: bool,
}

/// The segment new batches go to.
#[derive(Clone, Debug)]
pub struct SegmentPlan {
    pub id: SegmentId,
    /// Salt and keys, chosen when the segment's first batch is planned, not before: a key the
    /// ring made active after the log opened (or after the last roll) is the one it gets.
    pub identity: Option<Identity>,
    /// The key ring's generation when `identity` was last found to be what the ring wants.
    pub generation: u64,
    pub first_lsn: Lsn,
    /// Where the next batch starts.
    pub offset: u64,
    /// Whether some batch already creates this segment.
    pub started: bool,
}
