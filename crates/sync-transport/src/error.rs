//! Errors of the `sync-transport` crate.
//!
//! [`TransportError`] is the crate's error: what a [`crate::client::Remote`] call
//! returns. It separates failures worth retrying (the node was unreachable, timed out
//! or is overloaded: [`TransportError::is_retryable`]) from permanent refusals (4xx), so
//! the engine can choose between a retry and a dead letter. Per-operation enums sit
//! beside it where callers branch: [`crate::frame::FrameError`] (decoding),
//! [`crate::token::TokenError`] (token text), [`crate::token::AuthError`] (credential
//! checks) and [`HandlerError`] (what a node's handler reports).

use crate::frame::FrameError;
use crate::proto::{ErrorCode, ErrorReply};
use crate::token::TokenError;

/// A remote call failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The node could not be reached, or the connection broke mid-call (retryable).
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The call took longer than allowed (retryable). The message states the whole
    /// wait: every attempt and the time they took together.
    #[error(
        "no answer after {attempts} attempt{} over {:.1} s (each allowed {:.1} s)",
        if *attempts == 1 { "" } else { "s" },
        *waited_ms as f64 / 1000.0,
        *ms as f64 / 1000.0
    )]
    Timeout {
        /// The limit of one attempt that was hit, in milliseconds.
        ms: u64,
        /// Attempts made (1 when the call was not retried).
        attempts: u32,
        /// Time from the first attempt to giving up, in milliseconds, backoffs included.
        waited_ms: u64,
    },
    /// The node refused the request with an error reply.
    #[error("node refused the request ({code:?}, http {status}): {message}")]
    Refused {
        /// The HTTP status (or the status the in-process transport would have used).
        status: u16,
        /// What kind of failure.
        code: ErrorCode,
        /// The node's reason.
        message: String,
        /// The protocol versions the node speaks.
        supported_versions: Vec<u8>,
    },
    /// The node's reply could not be decoded.
    #[error("bad reply from node: {0}")]
    BadReply(#[from] FrameError),
    /// The reply was well-formed but not what the request asks for.
    #[error("unexpected reply from node: {0}")]
    UnexpectedReply(&'static str),
    /// The caller's token text could not be parsed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The endpoint cannot be used by this client.
    #[error("unsupported endpoint: {0}")]
    Endpoint(String),
    /// The TLS connection failed: an untrusted or wrong certificate, or a node that
    /// does not speak TLS (permanent: retrying does not change a certificate).
    #[error("tls: {0}")]
    Tls(String),
    /// Something answered at the address, but not as a weft node: an HTTP reply without
    /// a weft frame (another web server, a proxy's page). Not retried.
    #[error("not a weft node: {0}")]
    NotWeft(String),
    /// A blob upload's source stream failed.
    #[error("blob source failed: {0}")]
    BlobSource(String),
}

impl TransportError {
    /// Whether the same call may succeed later (unreachable, timeout, overloaded or
    /// unavailable node); everything else is permanent for the same request.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Unreachable(_) | TransportError::Timeout { .. } => true,
            TransportError::Refused { code, .. } => code.is_retryable(),
            _ => false,
        }
    }

    /// A timeout of one attempt that waited `ms`.
    pub fn timeout(ms: u64) -> Self {
        TransportError::Timeout {
            ms,
            attempts: 1,
            waited_ms: ms,
        }
    }

    /// The error of a call that gave up after `attempts` over `waited`: a timeout
    /// states the whole wait; other errors are unchanged.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn after_attempts(self, attempts: u32, waited: std::time::Duration) -> Self {
        match self {
            TransportError::Timeout { ms, .. } => TransportError::Timeout {
                ms,
                attempts,
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
            other => other,
        }
    }

    /// The error code, when the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            TransportError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn refused(reply: ErrorReply) -> Self {
        TransportError::Refused {
            status: reply.code.http_status(),
            code: reply.code,
            message: reply.message,
            supported_versions: reply.supported_versions,
        }
    }
}

/// What a node's handler reports when it cannot serve a request. The server turns it
/// into an error reply; nothing partial is sent.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The thing asked for does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot be served as asked (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The caller may not have this (403), found by the handler (for example a delete
    /// whose record lies outside the caller's scope).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Not now: storage busy, shutting down (503, retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An unexpected failure (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl HandlerError {
    /// The error reply the server sends for this error.
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            HandlerError::NotFound(_) => ErrorCode::NotFound,
            HandlerError::BadRequest(_) => ErrorCode::BadRequest,
            HandlerError::Forbidden(_) => ErrorCode::Forbidden,
            HandlerError::Unavailable(_) => ErrorCode::Unavailable,
            HandlerError::Internal(_) => ErrorCode::Internal,
        };
        ErrorReply::new(code, self.to_string())
    }
}
