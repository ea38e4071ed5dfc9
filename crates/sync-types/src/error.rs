//! Errors of the `sync-types` crate.
//!
//! Callers branch on the kind of failure, so each operation family has its own enum
//! ([`ValidationError`], [`DecodeError`], [`DriftError`], [`TransitionError`]) and
//! [`Error`] gathers them for callers that only propagate.

use crate::link::LinkStatus;

/// Any error of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value broke one of its invariants (an id, a message, a scope).
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Bytes from the wire or from disk could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A remote timestamp was too far in the future.
    #[error(transparent)]
    Drift(#[from] DriftError),
    /// A link status change that the state machine does not allow.
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

/// A value broke one of its invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A string or list is shorter than allowed.
    #[error("{what} is empty")]
    Empty {
        /// The kind of value, e.g. "tenant id".
        what: &'static str,
    },
    /// A string or list is longer than allowed.
    #[error("{what} is too long: {len} exceeds the limit of {max}")]
    TooLong {
        /// The kind of value.
        what: &'static str,
        /// Its length (bytes for strings, items for lists).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string holds a character its kind does not allow.
    #[error("{what} contains the forbidden character {ch:?} at byte {at}")]
    BadChar {
        /// The kind of value.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A value does not have the required form.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// The kind of value.
        what: &'static str,
        /// What is wrong, in a few words.
        reason: &'static str,
    },
}

/// Bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than the caller's limit.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The input is empty, so it has no version byte.
    #[error("input is empty")]
    Empty,
    /// The envelope carries a version this build does not speak.
    #[error("unsupported format version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// The body decoded into a value that breaks an invariant.
    #[error("invalid value: {0}")]
    Invalid(#[from] ValidationError),
}

/// A remote hybrid-logical-clock timestamp is further ahead of the local wall clock
/// than the configured bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote timestamp is {ahead_ms} ms ahead of the local clock, beyond the allowed drift of {max_drift_ms} ms"
)]
pub struct DriftError {
    /// How far ahead the remote wall time is, in milliseconds.
    pub ahead_ms: u64,
    /// The configured bound, in milliseconds.
    pub max_drift_ms: u64,
}

/// A link status change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link status cannot change from {from} to {to}")]
pub struct TransitionError {
    /// The current status.
    pub from: LinkStatus,
    /// The refused target status.
    pub to: LinkStatus,
}
