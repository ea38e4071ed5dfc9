//! Exit codes, and how an error maps to one.
//!
//! Commands return `anyhow::Error`s with context; [`classify`] walks the error's chain
//! and picks the code from the first cause it recognises: an explicit [`Coded`] error, a
//! transport error (unreachable versus refused), an engine or ledger error (the local
//! store), a validation error (a bad value on the command line). Anything else is a
//! plain failure (1).

use std::fmt;
use std::io;

use sync_transport::proto::ErrorCode;
use sync_transport::{TokenError, TransportError};

/// What a `weft` process tells its caller. The numbers are documented in `--help` and in
/// the README; they never change meaning.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Exit {
    /// Success.
    Ok = 0,
    /// The command ran but did not fully succeed.
    Failure = 1,
    /// Bad flags or values.
    Usage = 2,
    /// The node cannot be reached.
    Unreachable = 3,
    /// The node refused the credentials or the request.
    Refused = 4,
    /// The local store cannot be opened, read or written.
    Store = 5,
    /// `serve` cannot listen on its address.
    Listen = 6,
    /// Interrupted by a signal (128 + SIGINT's number, as shells report it).
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error with an explicit exit code.
#[derive(Debug)]
pub(crate) struct Coded {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// An error that exits with `exit`.
pub(crate) fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        exit,
        message: message.into(),
    })
}

/// A usage error (exit 2).
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    coded(Exit::Usage, message)
}

/// Whether the error is a broken pipe on output (the reader went away: `weft list |
/// head`), which is a normal way for a command to end.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn transport_exit(e: &TransportError) -> Exit {
    match e {
        TransportError::Unreachable(_)
        | TransportError::Timeout { .. }
        | TransportError::Tls(_)
        | TransportError::NotWeft(_) => Exit::Unreachable,
        TransportError::Refused { code, .. } => match code {
            ErrorCode::Unauthenticated | ErrorCode::Forbidden => Exit::Refused,
            ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::Timeout => {
                Exit::Unreachable
            }
            _ => Exit::Failure,
        },
        TransportError::Token(_) => Exit::Refused,
        TransportError::Endpoint(_) => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// The exit code for an error: the first cause in its chain that says.
pub(crate) fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.exit;
        }
        if let Some(t) = cause.downcast_ref::<TransportError>() {
            return transport_exit(t);
        }
        if cause.downcast_ref::<TokenError>().is_some() {
            return Exit::Refused;
        }
        if let Some(e) = cause.downcast_ref::<sync_engine::Error>() {
            match e {
                sync_engine::Error::Transport(t) => return transport_exit(t),
                sync_engine::Error::Ledger(_) | sync_engine::Error::Tree(_) => return Exit::Store,
                sync_engine::Error::Validation(_) => return Exit::Usage,
                _ => {}
            }
        }
        if cause.downcast_ref::<sync_ledger::Error>().is_some() {
            return Exit::Store;
        }
        if cause
            .downcast_ref::<sync_types::ValidationError>()
            .is_some()
        {
            return Exit::Usage;
        }
    }
    Exit::Failure
}

/// The error and its causes on one line, `outer: inner: ...`, leaving out a cause whose
/// text the previous one already ends with (library errors often repeat their source).
pub(crate) fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

/// A hint for errors users commonly cause, printed under the error.
pub(crate) fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let text = describe(err).to_lowercase();
    match classify(err) {
        Exit::Unreachable if text.contains("at its limit of") && text.contains("connections") => {
            Some(
                "the node is busy: try again later; its operator can raise the limit (`weft serve --connections-max`, `--connections-per-address-max`)",
            )
        }
        Exit::Unreachable if text.contains("at its limit of") => Some(
            "the node is busy: try again later; its operator can raise the limit it names (see `weft serve --help`)",
        ),
        Exit::Unreachable if text.contains("not a weft node") => Some(
            "another program answers at that address: check --node (or WEFT_NODE), e.g. http://127.0.0.1:7700",
        ),
        Exit::Unreachable if text.contains("speaks tls only") => Some(
            "the node serves TLS: give --node (or WEFT_NODE) as https://HOST:PORT, and its CA with --tls-ca if the certificate is private",
        ),
        Exit::Unreachable if text.contains("tls:") => Some(
            "check the scheme (https:// for a node serving TLS) and give the CA of the node's certificate with --tls-ca",
        ),
        Exit::Unreachable => Some(
            "is `weft serve` running at that address? Check --node (or WEFT_NODE), e.g. http://127.0.0.1:7700",
        ),
        Exit::Refused if text.contains("signature") || text.contains("forged") => Some(
            "the token was issued with another node's key: issue one with `weft token issue --key-file <the node's key file>`",
        ),
        Exit::Refused if text.contains("upload limit") => Some(
            "the node limits blob uploads per tenant (`weft serve --blob-bytes-max`); delete the value or raise the limit",
        ),
        Exit::Refused if text.contains("expired") => {
            Some("issue a new token with `weft token issue` (see --expires-in)")
        }
        Exit::Refused => Some(
            "check --token (or WEFT_TOKEN) and --tenant: `weft token inspect <token>` shows what a token allows",
        ),
        Exit::Store if text.contains("lock") => Some(
            "another weft process holds this store open (a `weft watch`, or `weft serve`): stop it, or use another --store; while a watch runs, put, get, list, delete, status and links go through it",
        ),
        Exit::Store if text.contains("blob store") => Some(
            "check --blob-store (or blob_store, WEFT_BLOB_STORE): the bucket must exist at that endpoint, and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be allowed to list, read and write it",
        ),
        Exit::Store => Some(
            "check --store (or WEFT_STORE): it must be a weft store directory you can read and write",
        ),
        Exit::Listen => Some(
            "another process listens there: stop it, or choose another --listen address (port 0 picks a free one)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_map_to_reach_and_refusal_codes() {
        let unreachable = anyhow::Error::new(TransportError::Unreachable("refused".into()));
        assert_eq!(classify(&unreachable), Exit::Unreachable);
        let refused = anyhow::Error::new(TransportError::Refused {
            status: 401,
            code: ErrorCode::Unauthenticated,
            message: "token signature does not verify".into(),
            supported_versions: vec![1],
        })
        .context("sync with http://127.0.0.1:1");
        assert_eq!(classify(&refused), Exit::Refused);
        assert!(hint(&refused).unwrap().contains("key"));
        let engine = anyhow::Error::new(sync_engine::Error::Transport(TransportError::timeout(5)));
        assert_eq!(classify(&engine), Exit::Unreachable);
    }

    #[test]
    fn a_node_at_its_limit_is_busy_not_missing() {
        let at_limit = |message: &str| {
            anyhow::Error::new(TransportError::Refused {
                status: 503,
                code: ErrorCode::Overloaded,
                message: message.into(),
                supported_versions: vec![1],
            })
        };
        let connections = at_limit("the node is at its limit of 2 connections from one address");
        assert_eq!(classify(&connections), Exit::Unreachable);
        assert!(describe(&connections).contains("at its limit of 2 connections from one address"));
        assert!(
            hint(&connections)
                .unwrap()
                .contains("--connections-per-address-max")
        );
        let subscriptions = at_limit("the node is at its limit of 4 subscriptions");
        assert!(hint(&subscriptions).unwrap().contains("the limit it names"));
    }

    #[test]
    fn causes_are_not_repeated() {
        let inner = TransportError::Unreachable("connection refused".into());
        let err = anyhow::Error::new(sync_engine::Error::Transport(inner)).context("sync failed");
        assert_eq!(
            describe(&err),
            "sync failed: transport: node unreachable: connection refused"
        );
    }

    #[test]
    fn coded_errors_and_pipes() {
        assert_eq!(classify(&usage("bad")), Exit::Usage);
        assert_eq!(classify(&anyhow::anyhow!("other")), Exit::Failure);
        let pipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("print");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
