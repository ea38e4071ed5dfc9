//! Framing: pure code over bytes, no tokio, no hyper.
//!
//! A frame is a fixed 12-byte header followed by a body:
//!
//! ```text
//! offset  size  field
//! 0       4     magic        b"WEFT"
//! 4       1     version      1 plain body, 2 dense body (see below)
//! 5       1     kind         FrameKind (1 request, 2 reply, 3 error, 4 subscribe, 5 notice)
//! 6       2     reserved     zero; a non-zero value is refused
//! 8       4     body_len     u32 big-endian, at most the reader's `frame_bytes_max`
//! 12      ...   body         sync_types::codec envelope: 1 version byte + postcard 1.x
//! ```
//!
//! The header is checked before a reader commits to reading the body, so an oversized
//! length costs an error, never an allocation. The body goes through the `sync-types`
//! codec, which refuses trailing bytes and re-validates every validated id while
//! decoding; [`decode`] then checks the element-count and string-length limits of the
//! body type ([`Body::check_limits`]), so a value that decodes is a value within limits.
//!
//! An unknown protocol version is answered with [`FrameError::UnsupportedVersion`],
//! which names the versions this node speaks ([`SUPPORTED_VERSIONS`]).
//!
//! # Versions
//!
//! Version 1 ([`PROTOCOL_VERSION`]) carries every body as the codec encodes its type.
//! Version 2 ([`DENSE_VERSION`]) carries the bodies that hold messages (pushes, log
//! pages, message reads) in the dense form of [`crate::dense`] (still a codec envelope
//! with postcard inside): names that repeat across the frame sent once, and what the
//! receiver can recompute left out. [`decode`] rebuilds the same value from either, so
//! a caller never sees which one came. A peer writes version 2 only to a peer that said
//! it reads it (negotiated per request in HTTP headers; see `compress` with the `net`
//! feature); every other body is always version 1.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_types::DecodeError;
use sync_types::codec;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"WEFT";
/// The protocol version this build writes.
pub const PROTOCOL_VERSION: u8 = 1;
/// The frame version of dense bodies ([`crate::dense`]).
pub const DENSE_VERSION: u8 = crate::dense::DENSE_VERSION;
/// Every protocol version this build reads.
pub const SUPPORTED_VERSIONS: &[u8] = &[PROTOCOL_VERSION, DENSE_VERSION];
/// Size of the frame header, in bytes.
pub const HEADER_BYTES: usize = 12;
/// Default limit on a frame body, in bytes (a full write batch with inline data fits).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

/// What a frame's body holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum FrameKind {
    /// A [`crate::proto::Request`].
    Request = 1,
    /// A [`crate::proto::Reply`].
    Reply = 2,
    /// A [`crate::proto::ErrorReply`].
    Error = 3,
    /// A [`crate::proto::SubscribeRequest`].
    Subscribe = 4,
    /// A [`crate::proto::Notice`] on a subscription.
    Notice = 5,
}

impl FrameKind {
    /// The kind for a header byte, if known.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Request,
            2 => FrameKind::Reply,
            3 => FrameKind::Error,
            4 => FrameKind::Subscribe,
            5 => FrameKind::Notice,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// The protocol version (one of [`SUPPORTED_VERSIONS`] once decoded).
    pub version: u8,
    /// What the body holds.
    pub kind: FrameKind,
    /// Body length in bytes.
    pub body_len: u32,
}

impl Header {
    /// The 12 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.kind as u8;
        out[8..].copy_from_slice(&self.body_len.to_be_bytes());
        out
    }

    /// Reads and checks a header from the front of `bytes` (which may hold more).
    ///
    /// Checks, in order: enough bytes, magic, version, kind, reserved bytes, and the body
    /// length against `frame_bytes_max`.
    pub fn decode(bytes: &[u8], frame_bytes_max: usize) -> Result<Header, FrameError> {
        let h: &[u8; HEADER_BYTES] = bytes
            .get(..HEADER_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated {
                needed: HEADER_BYTES,
                got: bytes.len(),
            })?;
        if h[..4] != MAGIC {
            return Err(FrameError::BadMagic {
                found: [h[0], h[1], h[2], h[3]],
            });
        }
        let version = h[4];
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(FrameError::UnsupportedVersion {
                found: version,
                supported: SUPPORTED_VERSIONS.to_vec(),
            });
        }
        let kind = FrameKind::from_u8(h[5]).ok_or(FrameError::UnknownKind(h[5]))?;
        let reserved = u16::from_be_bytes([h[6], h[7]]);
        if reserved != 0 {
            return Err(FrameError::ReservedBits(reserved));
        }
        let body_len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if body_len as usize > frame_bytes_max {
            return Err(FrameError::TooLarge {
                len: body_len as usize,
                max: frame_bytes_max,
            });
        }
        Ok(Header {
            version,
            kind,
            body_len,
        })
    }
}

/// A frame could not be decoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header or the declared body needs.
    #[error("truncated frame: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic {found:02x?}: not a weft frame")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The header names a protocol version this node does not speak.
    #[error("unsupported protocol version {found}; this node speaks versions {supported:?}")]
    UnsupportedVersion {
        /// The version in the header.
        found: u8,
        /// The versions this node speaks.
        supported: Vec<u8>,
    },
    /// The header names an unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The reserved header bytes are not zero.
    #[error("reserved header bytes are {0:#06x}, expected zero")]
    ReservedBits(u16),
    /// The declared body is larger than the reader's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compressed body could not be decompressed (see `compress`, with the `net`
    /// feature).
    #[error("bad compressed body: {0}")]
    Compression(String),
    /// Bytes follow the declared body.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// The frame holds another kind of body than expected.
    #[error("expected a {expected:?} frame, got {found:?}")]
    WrongKind {
        /// The expected kind.
        expected: FrameKind,
        /// The kind in the header.
        found: FrameKind,
    },
    /// The body is not a valid encoding of its type.
    #[error("bad frame body: {0}")]
    Body(#[from] DecodeError),
    /// A dense body (version 2) cannot be rebuilt: an index outside its table, a
    /// context that does not match its path, a frame kind without a dense form.
    #[error("bad dense frame: {0}")]
    Dense(String),
    /// A list in the body holds more elements than allowed.
    #[error("{what} holds {len} elements, more than the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string or byte field is longer than allowed.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A numeric field is outside its allowed range.
    #[error("{what} is out of range: {reason}")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Why, in a few words.
        reason: &'static str,
    },
}

/// A type that travels as a frame body.
pub trait Body: Serialize + DeserializeOwned {
    /// The frame kind that carries this type.
    const KIND: FrameKind;
    /// Checks element counts, string lengths and ranges; called by [`decode`].
    fn check_limits(&self) -> Result<(), FrameError>;

    /// The dense body of this value (a codec envelope), when it has one.
    fn to_dense(&self) -> Option<Vec<u8>> {
        None
    }

    /// Rebuilds a value from a dense body; a type without a dense form refuses it.
    fn from_dense(body: &[u8]) -> Result<Self, FrameError> {
        let _ = body;
        Err(FrameError::Dense(format!(
            "{:?} frames have no dense form",
            Self::KIND
        )))
    }
}

/// Encodes `body` as a complete frame (header and body).
pub fn encode<T: Body>(body: &T) -> Vec<u8> {
    with_header(PROTOCOL_VERSION, T::KIND, &codec::encode(body))
}

/// Encodes `body` as a dense frame (version [`DENSE_VERSION`]) when it has a dense
/// form; only for a peer that reads them.
pub fn encode_dense<T: Body>(body: &T) -> Option<Vec<u8>> {
    Some(with_header(DENSE_VERSION, T::KIND, &body.to_dense()?))
}

fn with_header(version: u8, kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(
        &Header {
            version,
            kind,
            // Bodies larger than 4 GiB would be refused by every reader anyway; our own
            // writers keep bodies under their frame limit.
            body_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        }
        .encode(),
    );
    out.extend_from_slice(payload);
    out
}

/// Splits one complete frame into its header and body, checking the header and that
/// exactly `body_len` bytes follow it.
pub fn split(bytes: &[u8], frame_bytes_max: usize) -> Result<(Header, &[u8]), FrameError> {
    let header = Header::decode(bytes, frame_bytes_max)?;
    let rest = &bytes[HEADER_BYTES..];
    let len = header.body_len as usize;
    if rest.len() < len {
        return Err(FrameError::Truncated {
            needed: HEADER_BYTES + len,
            got: bytes.len(),
        });
    }
    if rest.len() > len {
        return Err(FrameError::TrailingBytes(rest.len() - len));
    }
    Ok((header, rest))
}

/// Decodes one complete frame holding a `T`, enforcing `frame_bytes_max` and the limits
/// of `T`.
pub fn decode<T: Body>(bytes: &[u8], frame_bytes_max: usize) -> Result<T, FrameError> {
    let (header, body) = split(bytes, frame_bytes_max)?;
    decode_body(header, body)
}

/// Decodes a body whose header was already checked (see [`split`]).
pub fn decode_body<T: Body>(header: Header, body: &[u8]) -> Result<T, FrameError> {
    if header.kind != T::KIND {
        return Err(FrameError::WrongKind {
            expected: T::KIND,
            found: header.kind,
        });
    }
    let value: T = if header.version == DENSE_VERSION {
        T::from_dense(body)?
    } else {
        codec::decode(body, body.len())?
    };
    value.check_limits()?;
    Ok(value)
}

pub(crate) fn check_count(what: &'static str, len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        return Err(FrameError::TooMany { what, len, max });
    }
    Ok(())
}

pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        return Err(FrameError::TooLong { what, len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_pinned() {
        let h = Header {
            version: 1,
            kind: FrameKind::Reply,
            body_len: 0x0102_0304,
        };
        assert_eq!(
            h.encode(),
            [b'W', b'E', b'F', b'T', 1, 2, 0, 0, 1, 2, 3, 4],
            "the header layout is a wire format: change it only with a new version"
        );
        assert_eq!(Header::decode(&h.encode(), usize::MAX), Ok(h));
    }

    #[test]
    fn header_errors_are_typed() {
        let good = Header {
            version: 1,
            kind: FrameKind::Request,
            body_len: 10,
        }
        .encode();
        assert_eq!(
            Header::decode(&good[..5], 100),
            Err(FrameError::Truncated { needed: 12, got: 5 })
        );
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            Header::decode(&bad, 100),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = good;
        bad[4] = 9;
        let err = Header::decode(&bad, 100).unwrap_err();
        assert_eq!(
            err,
            FrameError::UnsupportedVersion {
                found: 9,
                supported: vec![1, 2]
            }
        );
        assert!(err.to_string().contains("speaks versions [1, 2]"), "{err}");
        let mut bad = good;
        bad[5] = 77;
        assert_eq!(Header::decode(&bad, 100), Err(FrameError::UnknownKind(77)));
        let mut bad = good;
        bad[7] = 1;
        assert_eq!(Header::decode(&bad, 100), Err(FrameError::ReservedBits(1)));
        assert_eq!(
            Header::decode(&good, 9),
            Err(FrameError::TooLarge { len: 10, max: 9 })
        );
    }
}
