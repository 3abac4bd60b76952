//! `KeyRing`: the keys a log may encrypt and decrypt with, by key id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::key::SecureKey;
use crate::error::{Result, WalError};

#[derive(Debug, Default)]
struct Inner {
    keys: BTreeMap<u32, Arc<SecureKey>>,
    /// Ids let go by [`KeyRing::retire`]: never taken again by this ring.
    retired: BTreeSet<u32>,
    active: Option<u32>,
    refuse_plaintext: bool,
}

impl Inner {
    fn retire(&mut self, key_id: u32) -> Result<()> {
        if self.active == Some(key_id) {
            return Err(WalError::KeyActive { key_id });
        }
        self.retired.insert(key_id);
        self.keys.remove(&key_id);
        Ok(())
    }
}

/// Keys by id. The active key encrypts every segment created from now on; the others keep
/// decrypting older segments. The log never removes a key on its own: a segment names its key
/// id in its preamble and is unreadable without it. The caller retires a key once no segment
/// needs it ([`crate::SegmentedWal::retire_key`]); the ring then refuses its id for as long as
/// it lives ([`Self::retire`] says how to keep it refused across restarts).
///
/// # Examples
///
/// ```
/// use nodedb_wal::{KeyRing, SecureKey, WalError};
///
/// let ring = KeyRing::new();
/// assert!(ring.active().is_none(), "nothing is encrypted yet");
/// ring.insert(1, SecureKey::generate())?;
/// ring.set_active(1)?;
///
/// // Rotation: a new key encrypts new segments, the old one still reads old segments.
/// ring.insert(2, SecureKey::generate())?;
/// ring.set_active(2)?;
/// assert_eq!(ring.active().map(|(id, _)| id), Some(2));
/// assert!(ring.get(1).is_some());
/// assert_eq!(ring.key_ids(), [1, 2]);
///
/// // Ids are never reused, and only a held key can become active.
/// assert!(matches!(ring.insert(1, SecureKey::generate()), Err(WalError::KeyIdInUse { key_id: 1 })));
/// assert!(matches!(ring.set_active(9), Err(WalError::UnknownKeyId { key_id: 9, .. })));
/// # Ok::<(), WalError>(())
/// ```
#[derive(Debug, Default)]
pub struct KeyRing {
    inner: RwLock<Inner>,
    /// Counts changes to what a new segment gets (the active key, refusing plaintext), so
    /// that the log looks at the ring again only after one.
    generation: AtomicU64,
}

impl KeyRing {
    /// An empty ring (nothing is encrypted until a key is active).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// A ring holding one key (owned or shared, as [`Self::insert`] takes it), active.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::{KeyRing, SecureKey, SegmentedWalConfig};
    ///
    /// let mut config = SegmentedWalConfig::new("/wal");
    /// config.key_ring = Some(Arc::new(KeyRing::with_active(7, SecureKey::generate())));
    /// assert_eq!(config.key_ring.as_ref().and_then(|ring| ring.active()).map(|(id, _)| id), Some(7));
    /// ```
    pub fn with_active(key_id: u32, key: impl Into<Arc<SecureKey>>) -> KeyRing {
        let ring = KeyRing::new();
        ring.insert(key_id, key).expect("an empty ring takes any id");
        ring.set_active(key_id).expect("just inserted");
        ring
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a key, owned (`SecureKey`) or shared (`Arc<SecureKey>`). An id already in the ring
    /// is refused: segments may already name it.
    ///
    /// A shared key is held, not copied: two logs, or a log and the engine files beside it,
    /// can use one key through rings of their own without its bytes being read out into
    /// another buffer (a copy is one more place to wipe). The key stays on its one locked page,
    /// and is wiped when the last ring or caller holding it drops it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::{KeyRing, SecureKey};
    ///
    /// let key = Arc::new(SecureKey::generate());
    /// let (log, engine) = (KeyRing::new(), KeyRing::new());
    /// log.insert(1, Arc::clone(&key))?;
    /// engine.insert(1, key)?;
    /// assert!(Arc::ptr_eq(&log.get(1).unwrap(), &engine.get(1).unwrap()), "one key, not two copies");
    /// # Ok::<(), nodedb_wal::WalError>(())
    /// ```
    pub fn insert(&self, key_id: u32, key: impl Into<Arc<SecureKey>>) -> Result<()> {
        let mut inner = self.write();
        if inner.retired.contains(&key_id) {
            return Err(WalError::KeyRetired { key_id });
        }
        if inner.keys.contains_key(&key_id) {
            return Err(WalError::KeyIdInUse { key_id });
        }
        inner.keys.insert(key_id, key.into());
        Ok(())
    }

    /// Makes `key_id` the key for segments created from now on. A log using the ring ends its
    /// segment at its next append and goes on in a new one under this key. A retired id is
    /// [`WalError::KeyRetired`].
    pub fn set_active(&self, key_id: u32) -> Result<()> {
        let mut inner = self.write();
        if inner.retired.contains(&key_id) {
            return Err(WalError::KeyRetired { key_id });
        }
        if !inner.keys.contains_key(&key_id) {
            return Err(WalError::UnknownKeyId { segment: None, key_id });
        }
        inner.active = Some(key_id);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The active key, if any.
    pub fn active(&self) -> Option<(u32, Arc<SecureKey>)> {
        let inner = self.read();
        inner.active.map(|id| (id, Arc::clone(&inner.keys[&id])))
    }

    /// The key with this id.
    pub fn get(&self, key_id: u32) -> Option<Arc<SecureKey>> {
        self.read().keys.get(&key_id).cloned()
    }

    /// Ids of every key held.
    pub fn key_ids(&self) -> Vec<u32> {
        self.read().keys.keys().copied().collect()
    }

    /// Drops the key under `key_id` from the ring and refuses the id from then on, to
    /// [`Self::insert`] and [`Self::set_active`] alike ([`WalError::KeyRetired`]): old
    /// segments, a salvage copy or a replica may still name the id, and a different key under
    /// it would read as a wrong key there. The key's bytes are wiped once its last holder (a
    /// caller's `Arc`, another ring) lets it go. The active key is refused
    /// ([`WalError::KeyActive`]); retiring an id twice, or one the ring never held, is `Ok`.
    ///
    /// This checks nothing on disk: a segment still encrypted under the key becomes
    /// unreadable ([`WalError::UnknownKeyId`] naming it, for this log and at every later open).
    /// A log's owner calls [`crate::SegmentedWal::retire_key`], which refuses while the log
    /// still holds such a segment; engine files encrypted under the key
    /// ([`crate::encrypt_engine_file`]) and other logs sharing the key are the caller's to
    /// check. The ring forgets retired ids when it is dropped: a process that builds its ring
    /// again at start-up retires them again (from its own list, or
    /// [`Self::retired_key_ids`] saved before), so that they stay refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use nodedb_wal::{KeyRing, SecureKey, WalError};
    ///
    /// let old = Arc::new(SecureKey::generate());
    /// let ring = KeyRing::with_active(1, Arc::clone(&old));
    /// assert!(matches!(ring.retire(1), Err(WalError::KeyActive { key_id: 1 })));
    ///
    /// ring.insert(2, SecureKey::generate())?;
    /// ring.set_active(2)?;
    /// ring.retire(1)?; // no segment needs key 1 any more (SegmentedWal::retire_key checks)
    /// assert!(ring.get(1).is_none());
    /// assert_eq!((ring.key_ids(), ring.retired_key_ids()), (vec![2], vec![1]));
    /// assert_eq!(Arc::strong_count(&old), 1, "the ring let go; dropping `old` wipes the key");
    ///
    /// // The id is never taken again, not even by the same key.
    /// assert!(matches!(ring.insert(1, old), Err(WalError::KeyRetired { key_id: 1 })));
    /// assert!(matches!(ring.set_active(1), Err(WalError::KeyRetired { key_id: 1 })));
    /// # Ok::<(), WalError>(())
    /// ```
    pub fn retire(&self, key_id: u32) -> Result<()> {
        self.write().retire(key_id)
    }

    /// Ids retired from this ring, in order.
    pub fn retired_key_ids(&self) -> Vec<u32> {
        self.read().retired.iter().copied().collect()
    }

    /// The ring's generation, where `key_id` is not active now (else [`WalError::KeyActive`]):
    /// for [`Self::retire_unchanged`] after the caller has checked that nothing needs the key.
    pub(crate) fn retirable(&self, key_id: u32) -> Result<u64> {
        let inner = self.read();
        if inner.active == Some(key_id) {
            return Err(WalError::KeyActive { key_id });
        }
        Ok(self.generation())
    }

    /// Retires `key_id` if the ring has not changed since [`Self::retirable`] gave
    /// `generation`; `Ok(false)` where it has. Unchanged, the key has not been active since,
    /// so nothing has been encrypted under it in between.
    pub(crate) fn retire_unchanged(&self, key_id: u32, generation: u64) -> Result<bool> {
        let mut inner = self.write();
        // `set_active` counts its change under the same lock, so this read cannot miss one.
        if self.generation() != generation {
            return Ok(false);
        }
        inner.retire(key_id).map(|()| true)
    }

    /// From now on, recovery and every reader using this ring refuse a segment that is not
    /// encrypted (`WalError::PlaintextRefused`). Only records in encrypted segments are
    /// authenticated: without this, someone who can write the log directory could put a
    /// plaintext segment of their own records in place of an encrypted one. For logs that
    /// were encrypted from their first segment (or whose plaintext segments are truncated).
    ///
    /// # Examples
    ///
    /// ```
    /// use nodedb_wal::{KeyRing, SecureKey};
    ///
    /// let ring = KeyRing::with_active(1, SecureKey::generate());
    /// assert!(!ring.refuses_plaintext());
    /// ring.refuse_plaintext();
    /// assert!(ring.refuses_plaintext());
    /// ```
    pub fn refuse_plaintext(&self) {
        self.write().refuse_plaintext = true;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes so far to the active key or to refusing plaintext.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether [`Self::refuse_plaintext`] was called.
    pub fn refuses_plaintext(&self) -> bool {
        self.read().refuse_plaintext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_and_refuses_unknown_or_reused_ids() {
        let ring = KeyRing::with_active(1, SecureKey::from_bytes(&mut [1; 32]));
        ring.insert(2, SecureKey::from_bytes(&mut [2; 32])).unwrap();
        ring.set_active(2).unwrap();
        assert_eq!(ring.active().unwrap().0, 2);
        assert!(ring.get(1).is_some(), "the old key still decrypts old segments");
        assert!(matches!(ring.set_active(3), Err(WalError::UnknownKeyId { key_id: 3, .. })));
        assert!(matches!(ring.insert(1, SecureKey::from_bytes(&mut [9; 32])), Err(WalError::KeyIdInUse { key_id: 1 })));
    }

    #[test]
    fn a_retired_key_is_let_go_and_its_id_refused_for_good() {
        let key = Arc::new(SecureKey::from_bytes(&mut [3; 32]));
        let weak = Arc::downgrade(&key);
        let ring = KeyRing::with_active(1, key);
        assert!(matches!(ring.retire(1), Err(WalError::KeyActive { key_id: 1 })), "the active key encrypts new segments");
        assert!(ring.get(1).is_some(), "a refused retirement changes nothing");
        ring.insert(2, SecureKey::from_bytes(&mut [4; 32])).unwrap();
        ring.set_active(2).unwrap();
        ring.retire(1).unwrap();
        assert!(weak.upgrade().is_none(), "the ring held the last reference: the key was dropped (and so wiped)");
        ring.retire(1).unwrap();
        ring.retire(9).unwrap();
        assert_eq!((ring.key_ids(), ring.retired_key_ids()), (vec![2], vec![1, 9]));
        for id in [1, 9] {
            assert!(matches!(ring.insert(id, SecureKey::from_bytes(&mut [5; 32])), Err(WalError::KeyRetired { key_id }) if key_id == id));
            assert!(matches!(ring.set_active(id), Err(WalError::KeyRetired { key_id }) if key_id == id));
        }
        assert_eq!(ring.active().unwrap().0, 2);
    }

    #[test]
    fn a_retirement_checked_against_an_older_ring_is_not_applied() {
        let ring = KeyRing::with_active(1, SecureKey::from_bytes(&mut [1; 32]));
        ring.insert(2, SecureKey::from_bytes(&mut [2; 32])).unwrap();
        ring.set_active(2).unwrap();
        let generation = ring.retirable(1).unwrap();
        // Key 1 active and back again in between: a segment may have been made under it.
        ring.set_active(1).unwrap();
        ring.set_active(2).unwrap();
        assert!(!ring.retire_unchanged(1, generation).unwrap());
        assert!(ring.get(1).is_some());
        let generation = ring.retirable(1).unwrap();
        assert!(ring.retire_unchanged(1, generation).unwrap());
        assert!(ring.get(1).is_none());
    }

    #[test]
    fn a_shared_key_is_held_not_copied_and_dropped_with_its_last_holder() {
        let key = Arc::new(SecureKey::from_bytes(&mut [5; 32]));
        let page = key.expose().as_ptr();
        let weak = Arc::downgrade(&key);
        let first = KeyRing::with_active(1, Arc::clone(&key));
        let second = KeyRing::new();
        second.insert(7, key).unwrap();
        for held in [first.get(1).unwrap(), second.get(7).unwrap()] {
            assert_eq!(held.expose().as_ptr(), page, "the bytes stay on the key's one page");
        }
        drop(first);
        assert_eq!(second.get(7).unwrap().expose(), &[5; 32], "the other ring's key outlives the first ring");
        drop(second);
        // The last holder gone, `SecureKey` was dropped, which zeroizes and unlocks its page.
        assert!(weak.upgrade().is_none(), "nothing keeps the key alive");
    }
}
