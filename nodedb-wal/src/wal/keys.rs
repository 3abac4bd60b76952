//! Which keys the log's segments are encrypted under: what a key rotation must keep in the
//! ring, and when a retired key may go.

use std::io::ErrorKind;

use super::SegmentedWal;
use crate::error::{CorruptionKind, IoOp, Result, WalError};
use crate::format::preamble::CIPHER_AES_256_GCM;
use crate::segment::{self, scan};
use crate::storage::{OpenMode, Storage, StorageFile};
use crate::types::SegmentId;

impl<S: Storage> SegmentedWal<S> {
    /// The key id each segment the log holds is encrypted under, oldest first; `None` for a
    /// plaintext segment. The segments are those [`Self::segments`] lists.
    ///
    /// After a rotation ([`crate::KeyRing::set_active`]) the older segments stay under the old
    /// key until [`Self::truncate_before`] removes them: a key no segment names here is no
    /// longer needed to open or read the log. Keep its key file anyway while a backup of the
    /// log made before the truncation may be restored. Each call reads the first block of
    /// every segment; a segment a truncation removes meanwhile is left out.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{KeyRing, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage};
    ///
    /// let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.segment_bytes_target = 64 * 1024;
    /// config.key_ring = Some(Arc::clone(&ring));
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config)?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 1"))?;
    /// ring.insert(2, SecureKey::generate())?;
    /// ring.set_active(2)?; // the next append starts a segment under key 2
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 2"))?;
    /// let keys = |wal: &SegmentedWal<SimStorage>| -> nodedb_wal::Result<Vec<Option<u32>>> {
    ///     Ok(wal.segment_key_ids()?.into_iter().map(|(_, key)| key).collect())
    /// };
    /// assert_eq!(keys(&wal)?, [Some(1), Some(2)]);
    ///
    /// // Once a checkpoint covers key 1's segment and truncation removes it, key 1 may retire.
    /// wal.truncate_before(wal.sync()?.next())?;
    /// assert_eq!(keys(&wal)?, [Some(2)]);
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn segment_key_ids(&self) -> Result<Vec<(SegmentId, Option<u32>)>> {
        let mut keys = Vec::new();
        for info in self.segments() {
            if let Some(key) = self.segment_key_id(info.id)? {
                keys.push((info.id, key));
            }
        }
        Ok(keys)
    }

    /// The key id a segment's preamble names (`Some(None)` for plaintext), or `None` where the
    /// segment is gone: removed by a truncation, or kept and already reused as a later one.
    fn segment_key_id(&self, id: SegmentId) -> Result<Option<Option<u32>>> {
        let path = segment::path(&self.config.dir, id);
        let mode = OpenMode { create: false, write: false, direct: false, create_new: false };
        let file = match self.storage.open(&path, mode) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io(IoOp::Open, &path, e)),
        };
        let mut first = vec![0u8; self.config.alignment];
        let len = file.read_at(&mut first, 0).map_err(|e| WalError::io(IoOp::Read, &path, e))?;
        // The log wrote (or recovery checked) this head: one that no longer decodes was damaged
        // since, and one naming another segment is a kept file reused after it was truncated.
        let head = scan::decode_head(&first[..len], id)?.ok_or(WalError::Corruption {
            segment: id,
            offset: 0,
            kind: CorruptionKind::BadSegmentHeader,
        })?;
        if head.header.segment_id != id {
            return Ok(None);
        }
        Ok(Some((head.preamble.cipher == CIPHER_AES_256_GCM).then_some(head.preamble.key_id)))
    }
}
