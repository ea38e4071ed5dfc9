//! Positions in an event log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::ids::{Cid, StreamId};

/// A position in one tenant's event log on one node.
///
/// `stream_id` names the log instance and `epoch` changes whenever the log is rebuilt or
/// truncated; two tokens are comparable only when both are equal ([`same_domain`]).
/// `cid` is the message at `position`, so a node can tell a token that points at a
/// different message from a valid one. A token is a source-local cursor, not a causal
/// clock: it must never be reused against another node or log.
///
/// Text form: `stream.epoch.position.cid` (hex, decimal, decimal, hex).
///
/// [`same_domain`]: ProgressToken::same_domain
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ProgressToken {
    /// The log instance.
    pub stream_id: StreamId,
    /// The log's epoch.
    pub epoch: u64,
    /// The position, starting at 1; positions are sparse under filters.
    pub position: u64,
    /// The message at `position`.
    pub cid: Cid,
}

impl ProgressToken {
    /// Whether `self` and `other` come from the same log instance and epoch.
    pub fn same_domain(&self, other: &ProgressToken) -> bool {
        self.stream_id == other.stream_id && self.epoch == other.epoch
    }

    /// Compares positions when both tokens are in the same domain; `None` otherwise.
    pub fn compare(&self, other: &ProgressToken) -> Option<std::cmp::Ordering> {
        self.same_domain(other)
            .then(|| self.position.cmp(&other.position))
    }
}

impl fmt::Display for ProgressToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.stream_id, self.epoch, self.position, self.cid
        )
    }
}

impl FromStr for ProgressToken {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "progress token";
        let malformed = |reason| ValidationError::Malformed { what: WHAT, reason };
        let mut parts = s.split('.');
        let mut next = || {
            parts
                .next()
                .ok_or(malformed("expected stream.epoch.position.cid"))
        };
        let stream_id = next()?.parse()?;
        let epoch = next()?
            .parse()
            .map_err(|_| malformed("epoch is not a number"))?;
        let position = next()?
            .parse()
            .map_err(|_| malformed("position is not a number"))?;
        let cid = next()?.parse()?;
        if parts.next().is_some() {
            return Err(malformed("expected stream.epoch.position.cid"));
        }
        Ok(Self {
            stream_id,
            epoch,
            position,
            cid,
        })
    }
}

/// Why a cursor cannot be served.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum GapReason {
    /// The cursor is below the log's compaction floor.
    TooOld,
    /// The cursor is beyond the log's head.
    TooNew,
    /// The cursor names another epoch of this log.
    EpochMismatch,
    /// The cursor names another log instance.
    StreamMismatch,
    /// The entry at the cursor's position holds another message.
    MessageMismatch,
}

/// The answer to a cursor that cannot be served; the reader must reconcile and resume
/// from `latest_available`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Gap {
    /// The cursor that was asked for.
    pub requested: ProgressToken,
    /// The oldest entry the log still holds, if any.
    pub oldest_available: Option<ProgressToken>,
    /// The newest entry of the log, if any: where a reader resumes after reconciling.
    pub latest_available: Option<ProgressToken>,
    /// Why the cursor was refused.
    pub reason: GapReason,
}
