//! The result of applying one message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::Dependency;

/// Longest reason text kept in an outcome or dead letter, in bytes; longer text from a
/// peer is cut at a character boundary.
pub const REASON_BYTES_MAX: usize = 1024;

/// Most dependencies one `Incomplete` outcome may name.
pub const MISSING_MAX: usize = 64;

/// What happened to one message of a batch. Applying a batch reports one outcome per
/// message, never all-or-nothing.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Stored and indexed.
    Applied,
    /// Already stored.
    Duplicate,
    /// Older than what the record retains; nothing to store. Counts as success.
    Superseded,
    /// Not applied now for a transient reason (busy, shutting down); retry later.
    Deferred,
    /// Hard dependencies are missing; the sender should supply exactly these and retry.
    Incomplete {
        /// What is missing (at most [`MISSING_MAX`]).
        missing: Vec<Dependency>,
    },
    /// The message is malformed or breaks its protocol; retrying cannot help.
    Invalid {
        /// Why, in a few words (at most [`REASON_BYTES_MAX`] bytes).
        reason: String,
    },
    /// The sender's credentials do not allow this message.
    Unauthorized,
}

impl ApplyOutcome {
    /// An `Invalid` outcome with the reason cut to [`REASON_BYTES_MAX`] bytes.
    pub fn invalid(reason: impl Into<String>) -> Self {
        ApplyOutcome::Invalid {
            reason: truncate_reason(reason.into()),
        }
    }

    /// Whether the message is now held by the receiver (applied, or already there).
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            ApplyOutcome::Applied | ApplyOutcome::Duplicate | ApplyOutcome::Superseded
        )
    }

    /// Whether retrying the same message unchanged can never succeed.
    pub fn is_permanent_failure(&self) -> bool {
        matches!(
            self,
            ApplyOutcome::Invalid { .. } | ApplyOutcome::Unauthorized
        )
    }

    /// The snake_case name used in metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApplyOutcome::Applied => "applied",
            ApplyOutcome::Duplicate => "duplicate",
            ApplyOutcome::Superseded => "superseded",
            ApplyOutcome::Deferred => "deferred",
            ApplyOutcome::Incomplete { .. } => "incomplete",
            ApplyOutcome::Invalid { .. } => "invalid",
            ApplyOutcome::Unauthorized => "unauthorized",
        }
    }
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyOutcome::Incomplete { missing } => {
                write!(f, "incomplete ({} missing)", missing.len())
            }
            ApplyOutcome::Invalid { reason } => write!(f, "invalid: {reason}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Cuts `s` to at most [`REASON_BYTES_MAX`] bytes at a character boundary.
pub fn truncate_reason(mut s: String) -> String {
    if s.len() > REASON_BYTES_MAX {
        let mut end = REASON_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(ApplyOutcome::Superseded.is_success());
        assert!(!ApplyOutcome::Deferred.is_success());
        assert!(!ApplyOutcome::Deferred.is_permanent_failure());
        assert!(ApplyOutcome::Unauthorized.is_permanent_failure());
        assert!(!ApplyOutcome::Incomplete { missing: vec![] }.is_permanent_failure());
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(REASON_BYTES_MAX);
        let ApplyOutcome::Invalid { reason } = ApplyOutcome::invalid(long) else {
            unreachable!()
        };
        assert!(reason.len() <= REASON_BYTES_MAX);
        assert!(reason.len() >= REASON_BYTES_MAX - 1);
    }
}
