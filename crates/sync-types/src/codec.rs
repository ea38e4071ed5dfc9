//! The one codec for everything that goes on the wire or on disk and is not hashed.
//!
//! An encoding is a one-byte envelope version ([`ENVELOPE_VERSION`]) followed by a
//! [postcard] 1.x body. postcard documents its wire format as stable since 1.0; the
//! envelope version lets us change our own types later and still read old bytes.
//! (bincode is not used: it is discontinued and flagged unmaintained by RustSec.)
//!
//! Decoding is defensive: the caller states a size limit, the whole input must be
//! consumed, and validated types re-check their invariants while decoding, so a value
//! that decodes is a value the rest of the code may trust. postcard never pre-allocates
//! more than the input can hold, so a hostile length prefix costs an error, not memory.
//!
//! Hashed values never use this codec; they use the canonical encoding (`src/canonical.rs`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DecodeError;
use crate::message::Message;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Default limit for one encoded message (with room for its largest inline payload).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Encodes `value` in the current envelope.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Most encoded values (positions, cids, heads, rows) fit in 64 bytes: starting there
    // saves the three or four reallocations of growing from one byte.
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_VERSION);
    // postcard only fails to serialize sequences of unknown length and maps with
    // non-serializable keys; none of our types has either.
    postcard::to_io(value, &mut out).expect("our types always serialize with postcard");
    out
}

/// Decodes a `T` from `bytes`, which must be at most `bytes_max` long, start with a known
/// envelope version, and hold exactly one `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], bytes_max: usize) -> Result<T, DecodeError> {
    if bytes.len() > bytes_max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: bytes_max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != ENVELOPE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_VERSION,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Decodes a [`Message`] and checks its invariants ([`Message::validate`]).
pub fn decode_message(bytes: &[u8], bytes_max: usize) -> Result<Message, DecodeError> {
    let message: Message = decode(bytes, bytes_max)?;
    message.validate()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_are_typed() {
        assert_eq!(decode::<u32>(&[], 10), Err(DecodeError::Empty));
        assert_eq!(
            decode::<u32>(&[2, 0], 10),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        assert_eq!(
            decode::<u32>(&[1; 11], 10),
            Err(DecodeError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            decode::<u8>(&[1, 5, 6], 10),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            decode::<u32>(&[1], 10),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode::<u32>(&encode(&7u32), 10), Ok(7));
    }

    #[test]
    fn validated_types_are_checked_while_decoding() {
        let bad = encode("a^b");
        assert!(matches!(
            decode::<crate::TenantId>(&bad, 100),
            Err(DecodeError::Malformed(_))
        ));
    }
}
