//! [`ReadOnlyWal`]: a log opened for reading only, by tools and by processes that do not own
//! it. It takes no lock and writes nothing: it reports what recovery would find (without its
//! repairs) and reads the records recovery would return.
//!
//! Beside a running writer it reads what has been written, which can include the batch whose
//! fdatasync has not yet returned: a crash could still take those records back. A process that
//! must see only durable records reads through the writer (`SegmentedWal::read_from`, the live
//! tail), which stops at the durable LSN.

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::KeyRing;
use crate::error::Result;
use crate::read::{Decrypt, LazyWalReader, ReadSpec, WalIter};
use crate::recovery::{RecoveryInfo, inspect_dir};
use crate::segment::crypt;
use crate::storage::{FsStorage, Storage};
use crate::types::{Lsn, SegmentId};

/// A log opened for reading only. See the module documentation.
///
/// ```
/// use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig};
///
/// let dir = tempfile::tempdir()?;
/// let mut config = SegmentedWalConfig::new(dir.path());
/// config.allow_buffered_fallback = true;
/// let wal = SegmentedWal::open(config)?;
/// wal.append_durable(Record::new(RecordType::optional(0x100), b"seen by a tool"))?;
/// // The writer keeps running; a tool reads beside it without a lock.
/// let view = ReadOnlyWal::open(dir.path(), None)?;
/// assert!(view.recovery_info().torn_tail.is_none());
/// assert_eq!(view.read_from(Lsn::FIRST)?.count(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReadOnlyWal<S: Storage = FsStorage> {
    storage: Arc<S>,
    dir: PathBuf,
    info: RecoveryInfo,
    key_ring: Option<Arc<KeyRing>>,
}

impl ReadOnlyWal<FsStorage> {
    /// Opens the log in `dir` for reading; `key_ring` decrypts encrypted segments. A missing
    /// `dir` is [`crate::WalError::Io`], but a directory that holds no log opens as an empty
    /// one: a tool that must tell the two apart looks for segment files (the `nodedb-wal` tool
    /// refuses a directory with neither a segment nor `LOCK`).
    pub fn open(dir: impl Into<PathBuf>, key_ring: Option<Arc<KeyRing>>) -> Result<ReadOnlyWal<FsStorage>> {
        ReadOnlyWal::open_with(FsStorage::new(), dir, key_ring)
    }
}

impl<S: Storage> ReadOnlyWal<S> {
    /// Opens the log in `dir` on `storage` for reading.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # wal.append_durable(Record::new(RecordType::optional(0x100), b"seen"))?;
    /// // Beside the running writer, on the same storage.
    /// let view = ReadOnlyWal::open_with(sim.clone(), "/wal", None)?;
    /// assert_eq!(view.recovery_info().record_count, 1);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn open_with(storage: S, dir: impl Into<PathBuf>, key_ring: Option<Arc<KeyRing>>) -> Result<ReadOnlyWal<S>> {
        let dir = dir.into();
        let info = inspect_dir(&storage, &dir, key_ring.as_deref())?;
        Ok(ReadOnlyWal { storage: Arc::new(storage), dir, info, key_ring })
    }

    /// What recovery would find (a torn tail it would cut is reported, not cut).
    pub fn recovery_info(&self) -> &RecoveryInfo {
        &self.info
    }

    /// The key id each segment of the look is encrypted under, oldest first; `None` for a
    /// plaintext segment: which keys reading the log needs, with no key given (as
    /// [`crate::SegmentedWal::segment_key_ids`] tells the owner). The segments are those
    /// [`RecoveryInfo::segments`] lists; one a writer's truncation removed since is left out.
    /// Each call reads the first bytes of every segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{KeyRing, ReadOnlyWal, Record, RecordType, SecureKey, SegmentId, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let sim = SimStorage::new(1, FaultConfig::default());
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.key_ring = Some(Arc::new(KeyRing::with_active(4, SecureKey::generate())));
    /// let wal = SegmentedWal::open_with(sim.clone(), config)?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"secret"))?;
    ///
    /// let view = ReadOnlyWal::open_with(sim, "/wal", None)?; // no key needed to ask
    /// assert_eq!(view.segment_key_ids()?, [(SegmentId(1), Some(4))]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn segment_key_ids(&self) -> Result<Vec<(SegmentId, Option<u32>)>> {
        crypt::key_ids(&*self.storage, &self.dir, &self.info.segments)
    }

    fn spec(&self, from: Lsn, decrypt: Decrypt) -> ReadSpec {
        ReadSpec::new(self.dir.clone(), self.info.segments.clone(), from, self.info.last_lsn, decrypt)
    }

    /// Reads the records recovery would return, from `from` on, decrypting encrypted ones.
    pub fn read_from(&self, from: Lsn) -> Result<WalIter<S>> {
        WalIter::new(Arc::clone(&self.storage), self.spec(from, Decrypt::With(self.key_ring.clone())))
    }

    /// Like [`Self::read_from`], reading sealed segments through a memory map and giving back
    /// the pages passed: see [`crate::SegmentedWal::read_mapped`], which this mirrors.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # wal.append_durable(Record::new(RecordType::optional(0x100), b"seen"))?;
    /// let view = ReadOnlyWal::open_with(sim.clone(), "/wal", None)?;
    /// let mut reader = view.read_mapped(Lsn::FIRST)?;
    /// assert_eq!(reader.next_view().expect("one record")?.payload, b"seen");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn read_mapped(&self, from: Lsn) -> Result<WalIter<S>> {
        let spec = ReadSpec { mapped: true, ..self.spec(from, Decrypt::With(self.key_ring.clone())) };
        WalIter::new(Arc::clone(&self.storage), spec)
    }

    /// Like [`Self::read_from`], handing out encrypted payloads as stored.
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # wal.append_durable(Record::new(RecordType::optional(0x100), b"seen"))?;
    /// let view = ReadOnlyWal::open_with(sim.clone(), "/wal", None)?;
    /// assert_eq!(view.read_from_raw(Lsn::FIRST)?.next().expect("one record")?.payload, b"seen");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn read_from_raw(&self, from: Lsn) -> Result<WalIter<S>> {
        WalIter::new(Arc::clone(&self.storage), self.spec(from, Decrypt::Raw))
    }

    /// Headers first, payloads on request: see [`LazyWalReader`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use nodedb_wal::{Lsn, ReadOnlyWal, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// # let wal = SegmentedWal::open_with(sim.clone(), SegmentedWalConfig::new("/wal"))?;
    /// # wal.append_durable(Record::new(RecordType::optional(0x100), b"seen"))?;
    /// let view = ReadOnlyWal::open_with(sim.clone(), "/wal", None)?;
    /// let mut lazy = view.lazy_reader(Lsn::FIRST)?;
    /// assert_eq!(lazy.next_header()?.map(|h| h.stored_len), Some(4));
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn lazy_reader(&self, from: Lsn) -> Result<LazyWalReader<S>> {
        LazyWalReader::new(Arc::clone(&self.storage), self.spec(from, Decrypt::With(self.key_ring.clone())))
    }

    /// Like [`Self::lazy_reader`], with payloads as stored (ciphertext then tag, as
    /// [`Self::read_from_raw`]). Record headers are stored in the clear, so a listing of an
    /// encrypted log needs no key this way; [`Self::lazy_reader`] refuses a segment whose key
    /// it lacks even where no payload is read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use nodedb_wal::{KeyRing, Lsn, ReadOnlyWal, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError, storage::FaultConfig};
    /// # let sim = SimStorage::new(1, FaultConfig::default());
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.key_ring = Some(Arc::new(KeyRing::with_active(1, SecureKey::generate())));
    /// let wal = SegmentedWal::open_with(sim.clone(), config)?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"secret"))?;
    ///
    /// let view = ReadOnlyWal::open_with(sim.clone(), "/wal", None)?; // no key
    /// assert!(matches!(view.lazy_reader(Lsn::FIRST)?.next_header(), Err(WalError::KeyRingMissing { .. })));
    /// let mut listing = view.lazy_reader_raw(Lsn::FIRST)?;
    /// let header = listing.next_header()?.expect("one record");
    /// assert_eq!((header.lsn, header.stored_len), (Lsn(1), 6 + 16), "the payload and its tag");
    /// assert_ne!(listing.payload()?, b"secret", "stored encrypted");
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn lazy_reader_raw(&self, from: Lsn) -> Result<LazyWalReader<S>> {
        LazyWalReader::new(Arc::clone(&self.storage), self.spec(from, Decrypt::Raw))
    }
}
