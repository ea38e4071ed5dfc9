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
//! Hashed values never use this codec; they use the `canonical` module.
//!
//! # Why a decoding error can name the field and the rule
//!
//! Validated types decode through `#[serde(try_from = ...)]`, and serde hands their
//! [`ValidationError`] to the format as a custom message; postcard drops custom
//! messages (`postcard::Error::SerdeDeCustom`, shown as "Serde Deserialization Error").
//! So each of those `TryFrom` impls also passes its error through `rejected`, which
//! keeps it in a thread-local slot; [`decode`] empties the slot before it starts and,
//! when postcard reports a custom error, reports the kept one as
//! [`DecodeError::Invalid`] ("tenant id contains the forbidden character ' ' at byte
//! 3"), the same text the value gives when it is built by hand. Decoding is synchronous
//! on one thread and stops at the first error, so the slot holds exactly the error that
//! ended it. The alternative, a deserializer wrapper with its own error type around
//! postcard's, would duplicate serde's whole `Deserializer` surface to carry one string.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, ValidationError};
use crate::message::Message;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Default limit for one encoded message (with room for its largest inline payload).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    /// The last error of a validated type's `TryFrom` on this thread (see the module
    /// docs).
    static REJECTED: RefCell<Option<ValidationError>> = const { RefCell::new(None) };
}

/// Keeps `e` for [`decode`] to report, and returns it: every `TryFrom` impl used by
/// `#[serde(try_from)]` maps its error through this.
pub(crate) fn rejected(e: ValidationError) -> ValidationError {
    REJECTED.with(|r| *r.borrow_mut() = Some(e.clone()));
    e
}

fn take_rejected() -> Option<ValidationError> {
    REJECTED.with(|r| r.borrow_mut().take())
}

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

/// The length of [`encode`]'s output for `value`, counted without building it (for
/// traffic counters that would otherwise encode every message a second time).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    1 + postcard::experimental::serialized_size(value)
        .expect("our types always serialize with postcard")
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
    take_rejected();
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| match e {
        postcard::Error::SerdeDeCustom => {
            take_rejected().map_or_else(|| DecodeError::Malformed(e.to_string()), Into::into)
        }
        e => DecodeError::Malformed(e.to_string()),
    })?;
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
    fn encoded_len_counts_what_encode_writes() {
        let values: Vec<(u64, String, Vec<u8>)> = vec![
            (0, String::new(), vec![]),
            (300, "tenant".into(), vec![7; 200]),
            (u64::MAX, "x".repeat(1_000), vec![1; 70_000]),
        ];
        for v in &values {
            assert_eq!(
                encoded_len(v),
                encode(v).len(),
                "{:?}",
                (v.0, v.1.len(), v.2.len())
            );
        }
    }

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
        let err = decode::<crate::TenantId>(&bad, 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value: tenant id contains the forbidden character '^' at byte 1"
        );
        // A custom error that no validated type noted keeps postcard's text, and a
        // note left by an earlier failure is not reported for a later one.
        #[derive(Debug, serde::Deserialize)]
        enum OneVariant {
            A,
        }
        let _ = crate::TenantId::try_from("x y".to_owned());
        assert_eq!(
            decode::<OneVariant>(&[1, 5], 10).unwrap_err(),
            DecodeError::Malformed("Serde Deserialization Error".into())
        );
        assert!(matches!(
            decode::<OneVariant>(&[1, 0], 10),
            Ok(OneVariant::A)
        ));
    }

    #[test]
    fn every_validated_type_names_its_rule_when_decoding_fails() {
        use crate::{Actions, ContextId, Delegation, ProtocolName, RecordId, ScopeId};
        let text = |r: Result<(), DecodeError>| r.unwrap_err().to_string();
        let cases = [
            text(decode::<Actions>(&encode(&8u8), 10).map(drop)),
            text(decode::<crate::ProtocolSet>(&encode(&Vec::<ProtocolName>::new()), 10).map(drop)),
            text(decode::<crate::Projection>(&encode(&Vec::<u8>::new()), 10).map(drop)),
            text(decode::<ContextId>(&encode(&Vec::<RecordId>::new()), 10).map(drop)),
            text(decode::<ScopeId>(&encode("short"), 100).map(drop)),
            text(decode::<crate::ProtocolPath>(&encode("a/../b"), 100).map(drop)),
            text(decode::<Delegation>(&encode(&("bob", Vec::<u8>::new())), 100).map(drop)),
        ];
        for message in &cases {
            assert!(message.starts_with("invalid value: "), "{message}");
        }
        assert_eq!(
            cases[0],
            "invalid value: actions is malformed: unknown action bits"
        );
        assert_eq!(cases[1], "invalid value: protocol set is empty");
        assert_eq!(
            cases[5],
            "invalid value: protocol path segment contains the forbidden character '.' at byte 0"
        );
    }
}
