//! Which keys the log's segments are encrypted under: what a key rotation must keep in the
//! ring, and retiring a key once no segment needs it.

use super::SegmentedWal;
use crate::error::{Result, WalError};
use crate::segment::crypt;
use crate::storage::Storage;
use crate::types::SegmentId;

impl<S: Storage> SegmentedWal<S> {
    /// The key id each segment the log holds is encrypted under, oldest first; `None` for a
    /// plaintext segment. The segments are those [`Self::segments`] lists.
    ///
    /// After a rotation ([`crate::KeyRing::set_active`]) the older segments stay under the old
    /// key until [`Self::truncate_before`] removes them: a key no segment names here is no
    /// longer needed to open or read the log, and [`Self::retire_key`] lets it go. Keep its key
    /// file anyway while a backup of the log made before the truncation may be restored. Each call reads the first block of
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
        crypt::key_ids(&*self.storage, &self.config.dir, &self.segments())
    }

    /// Retires `key_id` from the log's key ring ([`crate::KeyRing::retire`]: the key is let
    /// go and its id never taken again), once no segment the log holds is encrypted under it.
    /// Refused, with nothing changed, while one is ([`WalError::KeyStillNeeded`] naming the
    /// oldest: truncate past it first), for the active key ([`WalError::KeyActive`]), on a
    /// poisoned log, and without a key ring ([`WalError::UnknownKeyId`]).
    ///
    /// A segment is encrypted under the key that was active when its first record was
    /// appended, and may not be listed until that record is durable: so this syncs every
    /// record appended so far first, then reads the key ids of the segments (as
    /// [`Self::segment_key_ids`] does), then retires the key unless the ring's active key
    /// changed in between (it looks again then). An append or a truncation running meanwhile
    /// cannot slip a segment under the key past it.
    ///
    /// It checks this log only. Other logs sharing the ring or the key, and engine files
    /// encrypted under it ([`crate::encrypt_engine_file`]), are the caller's to check: once the
    /// key is gone, what still names it is [`WalError::UnknownKeyId`]. So is a segment under
    /// the key found at a later open (a copy put back, a backup restored): the log opens
    /// unless recovery must read that segment's tombstones, and reading the segment is
    /// refused. A reader that truncation overtakes (the segment removed and its key retired
    /// between opening the file and looking the key up) is told
    /// [`WalError::SegmentTruncated`], as for any truncation under it. Retired ids live as long as the ring: one
    /// built again at start-up must retire them again to keep refusing them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::storage::FaultConfig;
    /// use nodedb_wal::{KeyRing, Record, RecordType, SecureKey, SegmentedWal, SegmentedWalConfig, SimStorage, WalError};
    ///
    /// let ring = Arc::new(KeyRing::with_active(1, SecureKey::generate()));
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.key_ring = Some(Arc::clone(&ring));
    /// let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), config)?;
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 1"))?;
    ///
    /// // Rotate: the next append starts a segment under key 2.
    /// ring.insert(2, SecureKey::generate())?;
    /// ring.set_active(2)?;
    /// assert!(matches!(wal.retire_key(2), Err(WalError::KeyActive { key_id: 2 })));
    /// wal.append_durable(Record::new(RecordType::optional(0x100), b"under key 2"))?;
    /// let err = wal.retire_key(1).unwrap_err();
    /// assert!(matches!(err, WalError::KeyStillNeeded { key_id: 1, .. }), "{err}");
    ///
    /// // Once a checkpoint covers key 1's segment and truncation removes it, key 1 retires.
    /// wal.truncate_before(wal.sync()?.next())?;
    /// wal.retire_key(1)?;
    /// assert!(ring.get(1).is_none());
    /// assert!(matches!(ring.insert(1, SecureKey::generate()), Err(WalError::KeyRetired { key_id: 1 })));
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn retire_key(&self, key_id: u32) -> Result<()> {
        let ring = self.config.key_ring.as_deref().ok_or(WalError::UnknownKeyId { segment: None, key_id })?;
        loop {
            let generation = ring.retirable(key_id)?;
            // Every segment under the key had its first record reserved while the key was
            // active, so before now; once those records are durable, the segment is listed.
            self.sync()?;
            let needed = self.segment_key_ids()?.into_iter().find(|&(_, key)| key == Some(key_id));
            if let Some((segment, _)) = needed {
                return Err(WalError::KeyStillNeeded { key_id, segment });
            }
            if ring.retire_unchanged(key_id, generation)? {
                return Ok(());
            }
        }
    }
}
