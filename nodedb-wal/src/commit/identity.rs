//! A new segment's identity: its salt and, under the key ring's active key, its cipher
//! ([`new_identity`]); and the ring as the plan sees it ([`RingKeys`]).
//!
//! Kept apart from the plan, which is pure, because this is where randomness is drawn.

use std::sync::Arc;

use super::encode;
use super::plan::{self, Crypt, Identity};
use crate::crypto::{KeyRing, SegmentCipher, random};

/// The log's key ring (if any) as the plan sees it.
pub(super) struct RingKeys<'a>(pub(super) Option<&'a KeyRing>);

impl plan::Keys for RingKeys<'_> {
    fn generation(&self) -> u64 {
        self.0.map_or(0, KeyRing::generation)
    }

    fn new_identity(&mut self, id: crate::types::SegmentId) -> Option<Identity> {
        new_identity(self.0, id)
    }

    fn still_fits(&self, identity: &Identity) -> bool {
        let Some(ring) = self.0 else { return true };
        match (&identity.crypt, ring.active()) {
            (Some(crypt), Some((active, _))) => crypt.key_id == active,
            (None, Some(_)) => false,
            (crypt, None) => crypt.is_some() || !ring.refuses_plaintext(),
        }
    }
}

/// Salt and keys for a new segment: encrypted under the ring's active key, if there is one.
/// `None` where the ring refuses plaintext segments and has no active key (`refuse_plaintext`
/// called after the log opened; the config check at open refuses that state).
fn new_identity(key_ring: Option<&KeyRing>, id: crate::types::SegmentId) -> Option<Identity> {
    let active = key_ring.and_then(KeyRing::active);
    if active.is_none() && key_ring.is_some_and(KeyRing::refuses_plaintext) {
        return None;
    }
    let salt = random::random_u32();
    let crypt = active.map(|(key_id, key)| {
        let mut kdf_salt = [0u8; 16];
        random::fill_random(&mut kdf_salt);
        let epoch = random::random_u32();
        let preamble = encode::encrypted_preamble(key_id, epoch);
        let cipher = Arc::new(SegmentCipher::derive(&key, &kdf_salt, id, &preamble));
        Crypt { key_id, epoch, kdf_salt, cipher }
    });
    Some(Identity { salt, crypt })
}
