//! Errors of the facade: one enum for every call, and [`SyncError`] for a sync that did
//! not fully succeed.

use sync_engine::SyncReport;
use sync_types::LinkKey;

/// Any error of a Weft call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine or its store failed, or refused the write (see the source).
    #[error(transparent)]
    Engine(#[from] sync_engine::Error),
    /// The key index's store failed.
    #[error("key index: {0}")]
    Index(#[from] sync_ledger::Error),
    /// A name given by the caller is invalid (tenant, collection, endpoint).
    #[error(transparent)]
    Validation(#[from] sync_types::ValidationError),
    /// A natural key is empty or too long.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A value could not be encoded.
    #[error("cannot encode the value: {0}")]
    Encode(String),
    /// A stored payload could not be decoded as this collection's type.
    #[error("cannot decode the record: {0}")]
    Decode(String),
    /// The record is here but its value is a blob that has not arrived yet (still
    /// downloading, or not fetched on a metered link): read it again once
    /// [`Entry::residency`](crate::Entry::residency) would be `Resident`, or fetch it
    /// through [`Weft::engine`](crate::Weft::engine).
    #[error("record {record}'s value ({size} bytes) has not arrived yet ({residency:?})")]
    NotArrived {
        /// The record.
        record: sync_types::RecordId,
        /// The value's size in bytes.
        size: u64,
        /// Where the value stands.
        residency: sync_engine::Residency,
    },
    /// A record's header names a key that does not derive its record id: the payload
    /// was copied under another key.
    #[error("record {record} carries key {key:?}, which is not its own")]
    KeyMismatch {
        /// The record.
        record: sync_types::RecordId,
        /// The key its header names.
        key: String,
    },
    /// A token could not be parsed.
    #[error("bad token: {0}")]
    Token(#[from] sync_transport::TokenError),
    /// The call needs a sync target: call [`Weft::connect`](crate::Weft::connect) first.
    #[error("not connected: call connect() with a node and a token first")]
    NotConnected,
    /// A sync did not fully succeed.
    #[error(transparent)]
    Sync(#[from] Box<SyncError>),
    /// A node could not start.
    #[error("node: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The facade's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A sync that did not fully succeed: which link failed and why, with the whole
/// report (what every link moved, the roots compared).
#[derive(Debug, thiserror::Error)]
#[error("sync {} failed: {reason}", match link { Some(l) => format!("with {}", l.endpoint), None => "before any link ran".into() })]
pub struct SyncError {
    /// The link that failed (`None`: the sync failed before any link ran).
    pub link: Option<LinkKey>,
    /// Why, in words: the link's error, or that its roots still differ.
    pub reason: String,
    /// The detailed report of the whole sync.
    pub report: SyncReport,
}

/// A report as a `Result`: an error before any link ran, or the first link with an
/// error, or whose roots were compared and differ, fails it.
pub(crate) fn check_report(report: SyncReport) -> Result<SyncReport> {
    let failed = match &report.error {
        Some(e) => Some((None, e.to_string())),
        None => report.links.iter().find_map(|l| {
            let reason = match (&l.error, l.converged()) {
                (Some(e), _) => e.to_string(),
                (None, Some(false)) => "the roots still differ after the sync".to_string(),
                _ => return None,
            };
            Some((Some(l.link.clone()), reason))
        }),
    };
    match failed {
        None => Ok(report),
        Some((link, reason)) => Err(Box::new(SyncError {
            link,
            reason,
            report,
        })
        .into()),
    }
}

/// Runs blocking store work off the async worker.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}
