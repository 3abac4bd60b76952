//! How records reach a [`WalWriter`]'s file: appends encode frames into the batch buffer, a
//! full buffer is written as one padded batch, [`WalWriter::sync`] writes what is buffered and
//! fdatasyncs, and [`WalWriter::finish`] seals the segment with an end frame. Apart from
//! `writer.rs`, which checks the configuration and makes the file, because this is the part
//! that runs for every record; a failed write or sync here poisons the writer.

use super::WalWriter;
use crate::error::{IoOp, Poison, Result, WalError};
use crate::format::frame::{FLAG_GROUP_CONTINUES, HEADER_LEN, RecordHeader, encode_frame};
use crate::format::layout::{END_FRAME_LEN, padded_len, write_padding, write_segment_end};
use crate::record::Record;
use crate::segment::SegmentInfo;
use crate::storage::{AlignedBuf, Storage, StorageFile};
use crate::types::Lsn;

impl<S: Storage> WalWriter<S> {
    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(poison) => Err(poison.error()),
            None => Ok(()),
        }
    }

    /// Room a batch needs beyond its records: the end frame and the padding frame's spill.
    fn reserve(&self) -> usize {
        END_FRAME_LEN + self.block + HEADER_LEN
    }

    /// Buffers a record and returns its LSN; it is written when the buffer fills and durable
    /// after [`Self::sync`]. A record larger than the buffer gets a buffer of its own size,
    /// and is [`WalError::OutOfMemory`] where the system cannot allocate one (no LSN used).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Lsn, Record, RecordType, SegmentId, SimStorage, WalError, WalWriter, WalWriterConfig};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, Storage};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/log"))?;
    ///
    /// let mut writer = WalWriter::create_with(sim, Path::new("/log"), SegmentId(1), Lsn(1), WalWriterConfig::default())?;
    /// assert_eq!(writer.append(Record::new(RecordType::optional(0x100), b"a"))?, Lsn(1));
    /// assert_eq!(writer.append(Record::new(RecordType::required(0x100), b"b"))?, Lsn(2));
    /// // The crate's own types are refused, and use no LSN.
    /// let err = writer.append(Record::new(RecordType::COLLECTION_TOMBSTONE, b"")).unwrap_err();
    /// assert!(matches!(err, WalError::ReservedRecordType { .. }));
    /// assert_eq!(writer.next_lsn(), Lsn(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append(&mut self, record: Record<'_>) -> Result<Lsn> {
        self.check()?;
        if record.record_type.is_reserved() {
            return Err(WalError::ReservedRecordType { record_type: record.record_type });
        }
        self.append_frame(record, 0)
    }

    /// [`Self::append`] of a record a log held already, as it was: any data type (the crate's
    /// tombstones and purges too) and the group flag of its frame, for a salvage that copies a
    /// log (`crate::salvage`). The copy is plaintext: `flags` may only carry
    /// [`FLAG_GROUP_CONTINUES`].
    pub(crate) fn append_copied(&mut self, record: Record<'_>, flags: u16) -> Result<Lsn> {
        self.check()?;
        assert!(!record.record_type.is_meta() && flags & !FLAG_GROUP_CONTINUES == 0, "a data record, plaintext");
        self.append_frame(record, flags)
    }

    fn append_frame(&mut self, record: Record<'_>, flags: u16) -> Result<Lsn> {
        if self.next_lsn >= Lsn::LIMIT {
            return Err(WalError::LsnsExhausted { next: self.next_lsn });
        }
        let frame_len = HEADER_LEN + record.payload.len();
        let payload_len = u32::try_from(record.payload.len())
            .map_err(|_| WalError::PayloadTooLarge { len: record.payload.len(), max: u32::MAX as usize })?;
        if self.used + frame_len + self.reserve() > self.buf.len() {
            self.write_batch(false)?;
        }
        if frame_len + self.reserve() > self.buf.len() {
            // A record larger than the buffer gets a buffer of its own size; one the system
            // cannot allocate is refused, the writer unchanged, rather than end the process.
            let bytes = (frame_len + self.reserve()).next_multiple_of(self.block);
            self.buf = AlignedBuf::try_zeroed(bytes, self.block).ok_or(WalError::OutOfMemory { bytes })?;
        }
        let lsn = self.next_lsn;
        let header = RecordHeader {
            lsn,
            durable_lsn: self.durable_lsn,
            salt: self.salt,
            record_type: record.record_type,
            scope: record.scope,
            payload_len,
            flags,
        };
        encode_frame(&header, record.payload, &mut self.buf[self.used..self.used + frame_len]);
        self.used += frame_len;
        self.next_lsn = lsn.next();
        Ok(lsn)
    }

    /// Writes the buffered records (and the end frame, when sealing) as one padded batch.
    fn write_batch(&mut self, seal: bool) -> Result<()> {
        if self.used == 0 && !seal {
            return Ok(());
        }
        let mut used = self.used;
        if seal {
            let records_end = self.offset + used as u64;
            used += write_segment_end(&mut self.buf, used, records_end, self.next_lsn, self.durable_lsn, self.salt);
        }
        let padded = padded_len(used, self.block);
        write_padding(&mut self.buf[..padded], used, self.next_lsn, self.durable_lsn, self.salt);
        if let Err(e) = self.file.write_at(&self.buf[..padded], self.offset) {
            self.poisoned = Some(Poison::at(IoOp::Write, &self.path, &e));
            return Err(WalError::io(IoOp::Write, &self.path, e));
        }
        self.offset += padded as u64;
        self.used = 0;
        Ok(())
    }

    /// Writes everything appended and fdatasyncs it; returns the last durable LSN.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Lsn, Record, RecordType, SegmentId, SimStorage, WalWriter, WalWriterConfig};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, Storage};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/log"))?;
    /// # sim.sync_dir(Path::new("/"))?;
    ///
    /// let config = WalWriterConfig::default();
    /// let mut writer = WalWriter::create_with(sim.clone(), Path::new("/log"), SegmentId(1), Lsn(1), config)?;
    /// writer.append(Record::new(RecordType::optional(0x100), b"a"))?;
    /// assert_eq!(writer.durable_lsn(), Lsn::ZERO);
    /// assert_eq!(writer.sync()?, Lsn(1));
    /// assert_eq!(writer.durable_lsn(), Lsn(1));
    ///
    /// // An unsealed segment is still a log: recovery reads up to the last sync.
    /// let restarted = sim.crash(3);
    /// let info = nodedb_wal::recovery::inspect_dir(&restarted, Path::new("/log"), None)?;
    /// assert_eq!((info.last_lsn, info.segments[0].sealed), (Lsn(1), false));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync(&mut self) -> Result<Lsn> {
        self.check()?;
        self.write_batch(false)?;
        self.sync_file()
    }

    fn sync_file(&mut self) -> Result<Lsn> {
        if let Err(e) = self.file.sync_data() {
            self.poisoned = Some(Poison::at(IoOp::SyncData, &self.path, &e));
            return Err(WalError::io(IoOp::SyncData, &self.path, e));
        }
        self.durable_lsn = Lsn(self.next_lsn.0 - 1);
        Ok(self.durable_lsn)
    }

    /// Seals the segment with an end frame, syncs it and describes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{Lsn, Record, RecordType, SegmentId, SimStorage, WalWriter, WalWriterConfig};
    /// # use std::path::Path;
    /// # use nodedb_wal::storage::{FaultConfig, Storage};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # sim.create_dir_all(Path::new("/log"))?;
    ///
    /// let mut writer = WalWriter::create_with(sim, Path::new("/log"), SegmentId(2), Lsn(10), WalWriterConfig::default())?;
    /// for payload in [&b"x"[..], b"y", b"z"] {
    ///     writer.append(Record::new(RecordType::optional(0x100), payload))?;
    /// }
    /// let segment = writer.finish()?;
    /// assert_eq!((segment.id, segment.first_lsn, segment.end_lsn), (SegmentId(2), Lsn(10), Lsn(13)));
    /// assert!(segment.sealed);
    /// assert_eq!(segment.record_count(), 3);
    /// assert_eq!(segment.bytes % 4096, 0, "whole blocks");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish(mut self) -> Result<SegmentInfo> {
        self.check()?;
        self.write_batch(true)?;
        self.sync_file()?;
        Ok(SegmentInfo { id: self.id, first_lsn: self.first_lsn, end_lsn: self.next_lsn, bytes: self.offset, sealed: true })
    }
}
