//! What an append asks the plan for and what it gets: the plan's fixed [`Limits`], the
//! [`Frames`] asked for, the [`Reservation`] made or why to [`Wait`], and where the plan gets a
//! new segment's salt and keys ([`Keys`]).

use super::batch::Identity;
use crate::crypto::TAG_LEN;
use crate::format::frame::HEADER_LEN;
use crate::format::layout::END_FRAME_LEN;
use crate::storage::{BatchBuf, Region};
use crate::types::{Lsn, SegmentId};

/// How many times the pool's bytes the one-off buffers of records larger than a batch may
/// hold in all, in flight and kept for reuse: the fixed budget (see `large.rs` for records
/// larger than it, and for one larger than the whole budget, alone in flight).
/// With only the pool's bytes, records of a few MiB went one at a time: each waited for the
/// one before it to be written and synced before it could even be encoded, and none were kept
/// (a 4 MiB record's buffer is larger than the 4 MiB pool), so each paid for a fresh zeroed
/// buffer. 16 threads of 4 MiB records ran at 0.3-0.7x okaywal; with four times the pool, and
/// the flusher writing queued batches under one sync, about 1.0x (1.04x in the full run of
/// BENCHMARKS.md).
const OVERSIZED_POOLS: usize = 4;

/// Fixed parameters of the plan.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub block: usize,
    pub batch_bytes_max: usize,
    pub batch_buffers: usize,
    pub segment_bytes_target: u64,
    /// The largest payload one record may have: frames up to its frame's length may grow the
    /// budget of one-off buffers (see [`Self::large_frame_max`]).
    pub payload_bytes_max: usize,
}

impl Limits {
    /// Extra room past `batch_bytes_max` for the padding and end frames.
    pub fn slack(&self) -> usize {
        2 * self.block + END_FRAME_LEN
    }

    /// Bytes the buffer of a batch of `frame_len` bytes of records takes, slack included.
    pub fn buffer_bytes(&self, frame_len: usize) -> usize {
        BatchBuf::capacity_for(frame_len, self.block, self.slack()).unwrap_or(usize::MAX)
    }

    /// Bytes the pool's own buffers hold.
    pub fn pool_bytes(&self) -> usize {
        self.batch_buffers * self.batch_bytes_max
    }

    /// Bytes the one-off buffers of oversized batches may hold in all, in flight and kept for
    /// reuse, unless larger records grow it for a while (`large.rs`): [`OVERSIZED_POOLS`]
    /// times the pool's.
    pub fn oversized_bytes(&self) -> usize {
        OVERSIZED_POOLS * self.pool_bytes()
    }

    /// The largest frame that may grow the budget of one-off buffers: one record of
    /// `payload_bytes_max`, encrypted. Groups and batches larger than that go alone, as any
    /// frame does when nothing is in flight, so that the memory held stays bounded by the
    /// configured record size and not by what one call appends.
    pub fn large_frame_max(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_bytes_max).saturating_add(TAG_LEN)
    }
}

/// What a reservation is for: `records` frames (consecutive LSNs) whose payloads take
/// `payload_bytes` in all. A frame's length is its payload's plus a fixed overhead, so that
/// is all the plan needs to know of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frames {
    pub records: usize,
    pub payload_bytes: usize,
}

impl Frames {
    /// One record of `payload_len` bytes.
    pub fn one(payload_len: usize) -> Frames {
        Frames { records: 1, payload_bytes: payload_len }
    }
}

/// What an append got.
#[derive(Debug)]
pub struct Reservation {
    pub lsn: Lsn,
    /// The sequence number of the batch the region belongs to.
    pub batch: u64,
    pub identity: Identity,
    pub region: Region,
}

/// The last segment id: never made, since recovery could not follow it with another.
pub const LAST_ID: SegmentId = SegmentId(u64::MAX);

/// Why a reservation could not be made right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// Every buffer is full or being written: wait for the flusher to free one.
    ForBuffer,
    /// No identity can be chosen for the segment the append needs (the key ring refuses
    /// plaintext segments and has no active key): do not wait, fail.
    NoIdentity,
    /// The segment the append needs would have the last id, which is never made (recovery
    /// refuses a newest segment nothing could follow): do not wait, fail.
    NoSegmentId,
    /// The records would take LSNs at or past [`Lsn::LIMIT`]: do not wait, fail.
    NoLsn,
    /// The one-off buffer the records need (this many bytes) could not be allocated: the
    /// system has no memory for what one call appends. Do not wait, fail.
    NoMemory { bytes: usize },
}

/// Where a plan gets a segment's salt and keys, and learns that the key ring changed.
pub trait Keys {
    /// Counts changes to the ring (0 without one): the plan asks [`Keys::still_fits`] only
    /// after a change.
    fn generation(&self) -> u64;
    /// Salt and keys for segment `id`; `None` where none can be chosen.
    fn new_identity(&mut self, id: SegmentId) -> Option<Identity>;
    /// Whether new records may still go into a segment of `identity`.
    fn still_fits(&self, identity: &Identity) -> bool;
}

/// Without a ring: an identity from the function, which never changes its mind.
impl<F: FnMut(SegmentId) -> Option<Identity>> Keys for F {
    fn generation(&self) -> u64 {
        0
    }

    fn new_identity(&mut self, id: SegmentId) -> Option<Identity> {
        self(id)
    }

    fn still_fits(&self, _identity: &Identity) -> bool {
        true
    }
}
