//! Errors of the engine.

use sync_types::{Cid, Dependency, RecordId, ValidationError};

/// Any error of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ledger failed (storage, corruption, poisoning).
    #[error("ledger: {0}")]
    Ledger(#[from] sync_ledger::Error),
    /// A value given by the caller is invalid.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The tree index could not be built.
    #[error("tree index: {0}")]
    Tree(#[from] sync_smt::Error),
    /// The write or delete names a record this replica does not hold.
    #[error("record {0} not found")]
    RecordNotFound(RecordId),
    /// The message cannot be applied until these are present.
    #[error("missing dependencies: {0:?}")]
    Missing(Vec<Dependency>),
    /// The message breaks its protocol or an invariant.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A call to a remote node failed (see [`sync_transport::TransportError::is_retryable`]).
    #[error("transport: {0}")]
    Transport(#[from] sync_transport::TransportError),
    /// A remote node answered something the protocol does not allow (a token from another
    /// log, a malformed diff round, a page that does not advance).
    #[error("remote broke the protocol: {0}")]
    Protocol(String),
    /// The link does not belong to a registered identity (unregistered, or its scope or
    /// credentials changed).
    #[error("link {0} is not registered")]
    UnknownLink(String),
    /// The link stopped for good: a message it received depends on something outside its
    /// scope (closure). It stays `terminal_incomplete`; a new scope or new grants make a
    /// new link.
    #[error("link {link} is terminal_incomplete: {reason}")]
    TerminalIncomplete {
        /// The link.
        link: String,
        /// Why.
        reason: String,
    },
    /// Every grant of the link's delegate credentials has expired. The link stays
    /// `terminal_incomplete` (its authorization epoch hashes the expiry, so it can never
    /// sync again); a refreshed token registers a new link.
    #[error("link {link}: its delegate grants expired at {expired_at_ms} ms")]
    GrantExpired {
        /// The link.
        link: String,
        /// The latest expiry among the grants, in milliseconds since the Unix epoch.
        expired_at_ms: u64,
    },
    /// A write's expected version is not the record's winning version: the record moved
    /// on (or never existed), and nothing was written.
    #[error(
        "{} moved on: expected {expected}, found {}",
        record_name(record_id),
        found_name(found)
    )]
    VersionMismatch {
        /// The record (`None` for a write that creates a new record).
        record_id: Option<RecordId>,
        /// What the write expected.
        expected: crate::replica::Expected,
        /// The record's winning version, when it has one.
        found: Option<Cid>,
    },
    /// One item of a batch could not be written, so nothing of the batch was.
    #[error("batch item {index}: {source}")]
    BatchItem {
        /// The item's position in the batch.
        index: usize,
        /// Why.
        source: Box<Error>,
    },
    /// A blocking task of the engine panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error of a batch's only item, without the batch around it.
    pub(crate) fn unbatched(self) -> Error {
        match self {
            Error::BatchItem { index: 0, source } => *source,
            other => other,
        }
    }
}

fn record_name(record: &Option<RecordId>) -> String {
    match record {
        Some(r) => format!("record {r}"),
        None => "the new record".into(),
    }
}

fn found_name(found: &Option<Cid>) -> String {
    match found {
        Some(cid) => format!("version {cid}"),
        None => "no version".into(),
    }
}
