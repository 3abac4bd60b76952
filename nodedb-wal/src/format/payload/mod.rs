//! Payload codecs of the record types this crate defines for the engines.

mod calvin;
mod purge;
mod tombstone;

pub use calvin::{CALVIN_APPLIED_LEN, CalvinAppliedPayload};
pub use purge::{TemporalPurgeEngine, TemporalPurgePayload};
pub use tombstone::{CollectionTombstonePayload, MAX_COLLECTION_NAME_LEN};

/// Why a payload did not decode.
///
/// # Examples
///
/// ```
/// use nodedb_wal::{CollectionTombstonePayload, Lsn, PayloadError, TemporalPurgePayload};
///
/// let tombstone = CollectionTombstonePayload { database: 1, tenant: 2, collection: "orders".into(), purge_lsn: Lsn(9) };
/// let bytes = tombstone.encode()?;
/// assert_eq!(CollectionTombstonePayload::decode(&bytes[..10]), Err(PayloadError::Truncated));
/// let mut longer = bytes.clone();
/// longer.push(0);
/// assert_eq!(CollectionTombstonePayload::decode(&longer), Err(PayloadError::TrailingBytes));
/// let mut not_utf8 = bytes.clone();
/// not_utf8[18] = 0xFF; // the name's first byte
/// assert_eq!(CollectionTombstonePayload::decode(&not_utf8), Err(PayloadError::NameNotUtf8));
/// assert_eq!(TemporalPurgePayload::decode(&[0, 0]), Err(PayloadError::UnknownEngine { code: 0 }));
/// # Ok::<(), PayloadError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// Fewer bytes than the layout needs.
    Truncated,
    /// More bytes than the layout describes.
    TrailingBytes,
    /// A collection name longer than [`MAX_COLLECTION_NAME_LEN`].
    NameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A collection name that is not UTF-8.
    NameNotUtf8,
    /// An engine code this build does not know.
    UnknownEngine {
        /// The code.
        code: u8,
    },
    /// A reserved byte is not zero.
    Reserved,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::Truncated => f.write_str("it is shorter than its layout"),
            PayloadError::TrailingBytes => f.write_str("it is longer than its layout"),
            PayloadError::NameTooLong { len } => {
                write!(f, "its collection name is {len} bytes, and at most {MAX_COLLECTION_NAME_LEN} are allowed")
            }
            PayloadError::NameNotUtf8 => f.write_str("its collection name is not UTF-8"),
            PayloadError::UnknownEngine { code } => write!(f, "engine code {code} is unknown to this build"),
            PayloadError::Reserved => f.write_str("a reserved byte is not zero"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Reads a length-prefixed UTF-8 name: `u16` length, then the bytes.
fn decode_name(bytes: &[u8]) -> Result<(&str, &[u8]), PayloadError> {
    let len = usize::from(u16::from_le_bytes(bytes.get(..2).ok_or(PayloadError::Truncated)?.try_into().expect("2 bytes")));
    if len > MAX_COLLECTION_NAME_LEN {
        return Err(PayloadError::NameTooLong { len });
    }
    let raw = bytes.get(2..2 + len).ok_or(PayloadError::Truncated)?;
    let name = std::str::from_utf8(raw).map_err(|_| PayloadError::NameNotUtf8)?;
    Ok((name, &bytes[2 + len..]))
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), PayloadError> {
    if name.len() > MAX_COLLECTION_NAME_LEN {
        return Err(PayloadError::NameTooLong { len: name.len() });
    }
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], PayloadError> {
    bytes.get(at..at + N).ok_or(PayloadError::Truncated).map(|b| b.try_into().expect("N bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message ends `MalformedPayload`'s, which is what an operator reads of it.
    #[test]
    fn every_payload_error_says_what_is_wrong() {
        let cases = [
            (PayloadError::Truncated, "it is shorter than its layout"),
            (PayloadError::TrailingBytes, "it is longer than its layout"),
            (PayloadError::NameTooLong { len: 300 }, "its collection name is 300 bytes, and at most 255 are allowed"),
            (PayloadError::NameNotUtf8, "its collection name is not UTF-8"),
            (PayloadError::UnknownEngine { code: 9 }, "engine code 9 is unknown to this build"),
            (PayloadError::Reserved, "a reserved byte is not zero"),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}
