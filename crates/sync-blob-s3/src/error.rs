//! What can go wrong talking to the object store, and how the ledger sees it.

/// An error of the object store or of the way to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The server answered with an error status; `code` and `message` are from its
    /// XML error body when it sent one (`SignatureDoesNotMatch`, `NoSuchBucket`, …).
    #[error("S3 {op} {target}: HTTP {status} {code}: {message}")]
    Status {
        /// The request: `PUT`, `GET`, `LIST`, …
        op: &'static str,
        /// The bucket and key.
        target: String,
        /// The HTTP status.
        status: u16,
        /// S3's error code, or `-` when the body had none.
        code: String,
        /// S3's error message, or `-`.
        message: String,
    },
    /// The server could not be reached or did not answer in time (after the retries).
    #[error("S3 {op} {target}: {reason}")]
    Unreachable {
        /// The request.
        op: &'static str,
        /// The bucket and key.
        target: String,
        /// What happened on the last attempt.
        reason: String,
    },
    /// The server's answer is not what S3 sends: too large, or unreadable.
    #[error("S3 {op} {target}: bad response: {reason}")]
    BadResponse {
        /// The request.
        op: &'static str,
        /// The bucket and key.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration cannot work: a bad URL, bucket or prefix, no credentials.
    #[error("{0}")]
    Config(String),
}

impl S3Error {
    /// Whether the same request may succeed later: a server error (5xx), throttling
    /// (429) or no answer at all.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Status { status, .. } => *status >= 500 || *status == 429,
            S3Error::Unreachable { .. } => true,
            S3Error::BadResponse { .. } | S3Error::Config(_) => false,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// S3's error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } if code != "-" => Some(code),
            _ => None,
        }
    }
}

impl From<S3Error> for sync_ledger::Error {
    /// A transient failure is the ledger's [`Retry`](sync_ledger::Error::Retry) (nothing
    /// was committed that names the chunk; the operation can run again), anything else
    /// a backend failure.
    fn from(e: S3Error) -> Self {
        if e.is_transient() {
            sync_ledger::Error::retry(e)
        } else {
            sync_ledger::Error::backend(e)
        }
    }
}
