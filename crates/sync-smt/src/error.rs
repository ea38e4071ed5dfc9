//! The crate's one error type.

/// Everything that can go wrong in `sync-smt`: building a tree from bad input, decoding a
/// bad message, a peer breaking the protocol, or a session that cannot settle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Keys given to [`Tree::from_sorted`](crate::Tree::from_sorted) were not strictly
    /// increasing; `index` is the first key out of order.
    #[error("keys are not strictly increasing at index {index}")]
    Unsorted {
        /// Index of the first key that is not greater than its predecessor.
        index: usize,
    },
    /// An encoded message is longer than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Length of the message in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The message starts with a protocol version this crate does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// The message bytes do not decode (truncated, trailing bytes, bad tag, bad prefix).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A count in a message (queries, keys, digests) is above its limit.
    #[error("{what} count {count} exceeds the limit of {max}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The count found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Session parameters (in a config or a request) are outside the protocol's bounds.
    #[error("invalid session parameters: {0}")]
    InvalidParams(&'static str),
    /// The peer sent a message that decodes but breaks a protocol rule (the text says which).
    #[error("peer violated the protocol: {0}")]
    Protocol(&'static str),
    /// After the last allowed attempt the remote root still differs from the local root
    /// with the computed difference applied: a lying peer, or a peer whose set keeps
    /// changing.
    #[error("roots still differ after {attempts} attempts")]
    RootMismatch {
        /// Attempts made, each with a fresh salt.
        attempts: u32,
    },
    /// The local tree changed between two steps of a session.
    #[error("the local tree changed during the session")]
    LocalChanged,
    /// The session needed more round trips than allowed in one attempt.
    #[error("session exceeded {max} round trips")]
    TooManyRounds {
        /// The limit.
        max: usize,
    },
    /// A response arrived while no request was in flight (the session is finished).
    #[error("no request is in flight")]
    NotWaiting,
}
