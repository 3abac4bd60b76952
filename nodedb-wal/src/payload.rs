//! [`Payload`]: a record's payload as handed out by a reader, owned or shared with the read
//! buffer it was read into.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use crate::segment::read_ahead::Window;

/// A record's bytes, handed out in a [`crate::WalRecord`]. Reads as a `[u8]` (it derefs to one)
/// and compares with byte strings, slices and vectors.
///
/// A plaintext payload read from a segment file shares the reader's read buffer (1 MiB, or as
/// long as the record where a record is longer) instead of being copied out of it: a replay
/// that applies each record and drops it pays no copy and no allocation per record. The buffer
/// lives as long as any payload in it. A reader whose caller keeps payloads past the buffer
/// they came from (it finds the buffer still held when it moves on, or leaves a segment)
/// copies every payload after that, so keeping records pins at most about two buffers per
/// reader. An iterator adapter that holds a record back (`peekable`, say) counts as keeping
/// one. To keep one record for long without its buffer, [`Payload::into_vec`] it.
///
/// # Examples
///
/// ```
/// # use nodedb_wal::{Lsn, Record, RecordType, SegmentedWal, SegmentedWalConfig, SimStorage, storage::FaultConfig};
/// # let wal = SegmentedWal::open_with(SimStorage::new(1, FaultConfig::default()), SegmentedWalConfig::new("/wal"))?;
/// # let ty = RecordType::optional(0x100);
/// wal.append_durable(Record::new(ty, b"bytes"))?;
/// let record = wal.read_from(Lsn::FIRST)?.next().expect("a record")?;
/// assert_eq!(record.payload, b"bytes");
/// assert_eq!(record.payload.len(), 5);
/// let kept: Vec<u8> = record.payload.into_vec();
/// assert_eq!(kept, b"bytes");
/// # Ok::<(), nodedb_wal::WalError>(())
/// ```
#[derive(Clone, Default)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    /// `len` bytes at `at` of a window's buffer.
    Shared {
        window: Arc<Window>,
        at: usize,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Owned(Vec::new())
    }
}

impl Payload {
    /// `len` bytes at `at` of `window`'s buffer.
    pub(crate) fn shared(window: Arc<Window>, at: usize, len: usize) -> Payload {
        debug_assert!(at + len <= window.buf.len());
        Payload(Repr::Shared { window, at, len })
    }

    /// The bytes as a slice.
    #[inline]
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(bytes) => bytes,
            Repr::Shared { window, at, len } => &window.buf[*at..*at + *len],
        }
    }

    /// The bytes as a vector of their own: no copy if the payload owns them, a copy if it shares
    /// a read buffer (which it then no longer holds).
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Owned(bytes) => bytes,
            Repr::Shared { .. } => self.as_slice().to_vec(),
        }
    }

    /// Whether the payload shares a reader's buffer rather than owning its bytes.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared { .. })
    }
}

impl Deref for Payload {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::borrow::Borrow<[u8]> for Payload {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload(Repr::Owned(bytes))
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Payload {
        Payload(Repr::Owned(bytes.to_vec()))
    }
}

impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(bytes: &[u8; N]) -> Payload {
        Payload(Repr::Owned(bytes.to_vec()))
    }
}

impl From<Payload> for Vec<u8> {
    fn from(payload: Payload) -> Vec<u8> {
        payload.into_vec()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload {}

impl Hash for Payload {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialOrd for Payload {
    fn partial_cmp(&self, other: &Payload) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Payload {
    fn cmp(&self, other: &Payload) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

/// Comparisons with the byte types a caller holds, both ways round.
macro_rules! eq_bytes {
    ($($(#[$n:ident])? $t:ty),*) => {$(
        impl<$(const $n: usize)?> PartialEq<$t> for Payload {
            fn eq(&self, other: &$t) -> bool {
                self.as_slice() == &other[..]
            }
        }
        impl<$(const $n: usize)?> PartialEq<Payload> for $t {
            fn eq(&self, other: &Payload) -> bool {
                &self[..] == other.as_slice()
            }
        }
    )*};
}

eq_bytes!(
    [u8],
    &[u8],
    Vec<u8>,
    #[N]
    [u8; N],
    #[N]
    &[u8; N]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(bytes: &[u8], at: usize) -> Payload {
        let mut window = Window::empty(at + bytes.len(), 512);
        window.buf[at..at + bytes.len()].copy_from_slice(bytes);
        Payload::shared(Arc::new(window), at, bytes.len())
    }

    #[test]
    fn a_shared_payload_reads_and_compares_as_the_bytes_it_covers() {
        let p = shared(b"middle", 100);
        assert!(p.is_shared());
        assert_eq!(p, b"middle");
        assert_eq!(p, *b"middle");
        assert_eq!(p, b"middle".to_vec());
        assert_eq!(b"middle".to_vec(), p);
        assert_eq!(p, Payload::from(b"middle"));
        assert_eq!(&p[1..3], b"id");
        assert_eq!(format!("{p:?}"), format!("{:?}", b"middle".as_slice()));
        assert_eq!(p.clone().into_vec(), b"middle");
    }

    #[test]
    fn an_owned_payload_gives_its_vector_back_without_a_copy() {
        let bytes = vec![7u8; 1000];
        let at = bytes.as_ptr();
        let p = Payload::from(bytes);
        assert!(!p.is_shared());
        let back = p.into_vec();
        assert_eq!(back.as_ptr(), at);
    }

    #[test]
    // A window's atomics (the read-ahead's checks) are interior mutability the lint sees, but a
    // payload's hash and order are its bytes, which nothing changes while it holds them.
    #[allow(clippy::mutable_key_type)]
    fn payloads_order_and_hash_by_their_bytes_whatever_holds_them() {
        use std::collections::HashSet;
        let set: HashSet<Payload> = [shared(b"a", 0), Payload::from(b"a"), Payload::from(b"b")].into_iter().collect();
        assert_eq!(set.len(), 2);
        let (a, b) = (shared(b"a", 3), Payload::from(b"b"));
        assert!(a < b && a.cmp(&b) == std::cmp::Ordering::Less);
    }
}
