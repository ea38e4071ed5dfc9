//! The one error type of the ledger.

use sync_types::{Cid, DecodeError, TenantId};

/// A boxed error from a storage backend.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Any error of the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage backend failed (an I/O error, a fjall error).
    #[error("storage backend failed: {0}")]
    Backend(#[source] BackendError),
    /// A shared backend failed in a way that leaves it consistent: a dropped
    /// connection, a serialization failure, a deadlock victim, a timeout waiting for a
    /// connection. The operation was rolled back, or (for a connection lost during the
    /// commit) may have committed whole; running it again is safe (an apply is
    /// idempotent), and the ledger is not poisoned.
    #[error("shared store failed transiently, retry: {0}")]
    Retry(#[source] BackendError),
    /// A write failed earlier (typically an fsync), so the state on disk is unknown; the
    /// ledger refuses every further write until it is reopened.
    #[error("ledger is poisoned by an earlier failed write and refuses writes; reopen it")]
    Poisoned,
    /// A stored value could not be decoded: the entry is corrupt or was written by an
    /// incompatible build.
    #[error("corrupt value in partition {partition} at key {key}: {source}")]
    CorruptValue {
        /// The partition holding the entry.
        partition: &'static str,
        /// The entry's key, in hex.
        key: String,
        /// What the decoder found.
        #[source]
        source: DecodeError,
    },
    /// A key handed to a store is empty or longer than
    /// [`KEY_BYTES_MAX`](crate::store::KEY_BYTES_MAX).
    #[error("store keys must be 1 to {max} bytes long, this one is {len}")]
    InvalidKey {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stored key does not have the layout its partition documents.
    #[error("corrupt key in partition {partition}: {reason}")]
    CorruptKey {
        /// The partition holding the entry.
        partition: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries that must agree do not (an index names a missing or different
    /// message).
    #[error("inconsistent ledger: {0}")]
    Inconsistent(String),
    /// The store was written by a newer or unknown layout version.
    #[error(
        "ledger layout version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedLayout {
        /// The version found in the store.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A message handed to [`Ledger::apply`](crate::Ledger::apply) belongs to another
    /// tenant than the one named in the call.
    #[error("message {cid} belongs to tenant {found}, not to {expected}")]
    WrongTenant {
        /// The message.
        cid: Cid,
        /// The tenant named in the call.
        expected: TenantId,
        /// The message's tenant.
        found: TenantId,
    },
    /// Inline data handed with a message does not match the message's data reference.
    #[error("inline data of message {cid} does not match its data reference")]
    DataMismatch {
        /// The message.
        cid: Cid,
    },
    /// A batch is larger than a limit of the ledger.
    #[error("{what} of {len} exceeds the limit of {max}")]
    LimitExceeded {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes of an upload do not hash to the blob id they were announced under;
    /// nothing was stored.
    #[error("blob bytes hash to {actual}, not to the expected id {expected}")]
    BlobMismatch {
        /// The announced id.
        expected: Cid,
        /// The hash of the received bytes.
        actual: Cid,
    },
    /// An upload received more bytes than it announced.
    #[error("upload of blob {cid} exceeds its announced size of {size} bytes")]
    BlobTooLarge {
        /// The blob.
        cid: Cid,
        /// The announced size in bytes.
        size: u64,
    },
    /// The blob is not (completely) stored.
    #[error("blob {0} is not stored")]
    BlobNotFound(Cid),
    /// A byte range lies outside a blob.
    #[error("byte range {offset}..{end} lies outside blob {cid} of {size} bytes")]
    RangeOutOfBounds {
        /// The blob.
        cid: Cid,
        /// Start of the requested range.
        offset: u64,
        /// End (exclusive) of the requested range.
        end: u64,
        /// The blob's size in bytes.
        size: u64,
    },
    /// Another upload of the same blob is in progress in this process.
    #[error("an upload of blob {0} is already in progress")]
    UploadInProgress(Cid),
    /// An identity is already registered for the tenant.
    #[error("an identity is already registered for tenant {0}")]
    IdentityExists(TenantId),
    /// No identity is registered for the tenant.
    #[error("no identity is registered for tenant {0}")]
    IdentityNotFound(TenantId),
    /// No link with this key is stored.
    #[error("no link {0} is stored")]
    LinkNotFound(String),
}

/// The ledger's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps any backend error.
    pub fn backend(e: impl Into<BackendError>) -> Self {
        Error::Backend(e.into())
    }

    /// Wraps a transient error of a shared backend ([`Error::Retry`]).
    pub fn retry(e: impl Into<BackendError>) -> Self {
        Error::Retry(e.into())
    }

    /// Whether running the operation again may succeed ([`Error::Retry`]).
    pub fn is_retry(&self) -> bool {
        matches!(self, Error::Retry(_))
    }
}
