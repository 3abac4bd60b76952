//! Replay across segments with bounded memory: [`WalIter`] hands out whole records,
//! [`LazyWalReader`] hands out headers and reads a payload only when asked.
//!
//! Both walk the log with one cursor (`cursor`); this file holds what a read is asked to do
//! ([`ReadSpec`], [`Decrypt`]) and where it may resume ([`Position`]).

mod cursor;
mod iter;
mod lazy;

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::KeyRing;
use crate::error::{Result, WalError};
use crate::segment::SegmentInfo;
use crate::segment::reader::DEFAULT_CHUNK;
use crate::types::{Lsn, SegmentId};

pub use self::iter::{RecordView, WalIter};
pub use self::lazy::{LazyWalReader, RecordHandle};

/// How a reader treats encrypted records.
#[derive(Clone, Debug)]
pub enum Decrypt {
    /// Decrypt with the ring's keys and hand out plaintext (the default).
    With(Option<Arc<KeyRing>>),
    /// Hand out payloads as stored (ciphertext and tag), for tools.
    Raw,
}

/// Where and how to read.
#[derive(Clone, Debug)]
pub(crate) struct ReadSpec {
    pub dir: PathBuf,
    pub direct: bool,
    pub align: usize,
    pub segments: Vec<SegmentInfo>,
    pub from: Lsn,
    pub until: Lsn,
    pub decrypt: Decrypt,
    /// Map sealed segments instead of reading them (see [`crate::storage::mmap`]).
    pub mapped: bool,
    /// Let a helper thread check a mapped segment's checksums ahead (see `segment::ahead`).
    pub check_ahead: bool,
    /// Bytes per read where segments are read, not mapped.
    pub chunk: usize,
    /// Where the record `from` starts, when a reader handed it out before.
    pub resume: Option<Position>,
    /// Read the active segment only up to its listed bytes, which the log's own listing keeps
    /// exact (taken after `until`, it covers every record up to it).
    pub clip_active: bool,
}

impl ReadSpec {
    pub fn new(dir: PathBuf, segments: Vec<SegmentInfo>, from: Lsn, until: Lsn, decrypt: Decrypt) -> ReadSpec {
        ReadSpec {
            dir,
            direct: false,
            align: 4096,
            segments,
            from,
            until,
            decrypt,
            mapped: false,
            check_ahead: true,
            chunk: DEFAULT_CHUNK,
            resume: None,
            clip_active: false,
        }
    }
}

/// Where a record's frame starts: a reader resumes there without scanning the segment from its
/// start (a live tail would otherwise scan its segment again at every refill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub segment: SegmentId,
    pub offset: u64,
    pub lsn: Lsn,
}

/// That a read from `from` finds its records: from below `oldest` (the first LSN the log still
/// holds) it is `LsnNotRetained`, unless nothing up to `until` (durable) was ever there. LSN 0
/// is never issued: a read from it reads from the first, as a tail does.
pub(crate) fn check_retained(from: Lsn, oldest: Lsn, until: Lsn) -> Result<()> {
    if from.max(Lsn::FIRST) < oldest && from <= until {
        return Err(WalError::LsnNotRetained { requested: from, oldest });
    }
    Ok(())
}
