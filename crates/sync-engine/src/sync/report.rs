//! What the engine's operations report: traffic, outcomes of catch-up, push and
//! reconcile, and the per-link and whole-sync reports.

use sync_smt::Hash;
use sync_types::{ApplyOutcome, Cid, Gap, LinkKey, ProgressToken};

use crate::error::Error;

/// Messages and bytes moved in one direction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Traffic {
    /// Messages (received, or acknowledged by the remote).
    pub messages: u64,
    /// Bytes of encoded messages and inline data (received, or sent).
    pub bytes: u64,
    /// Bytes of blobs (downloaded, or uploaded).
    pub blob_bytes: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.blob_bytes += other.blob_bytes;
    }
}

/// Why a catch-up stopped before the remote's head.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CatchUpStop {
    /// The remote cannot serve the pull checkpoint: reconcile, then resume from
    /// `latest_available`.
    Gap(Gap),
    /// An entry could not be settled (deferred, or a dependency is missing); the
    /// checkpoint stays before it.
    Unsettled {
        /// The entry's message.
        cid: Cid,
        /// What applying it answered.
        outcome: ApplyOutcome,
    },
}

/// What [`Engine::catch_up`](crate::sync::Engine::catch_up) did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CatchUpOutcome {
    /// Pages read.
    pub pages: u64,
    /// Entries received.
    pub received: Traffic,
    /// Entries newly applied (not duplicates).
    pub applied: u64,
    /// Entries dropped because they were delivered before (repeated pages, duplicates
    /// across page boundaries).
    pub duplicates_dropped: u64,
    /// Entries recorded as dead letters.
    pub dead_lettered: u64,
    /// Blobs downloaded.
    pub blobs_fetched: u64,
    /// The pull checkpoint afterwards.
    pub checkpoint: Option<ProgressToken>,
    /// Whether the last page said nothing more is stored after it.
    pub reached_head: bool,
    /// Why it stopped early, if it did.
    pub stop: Option<CatchUpStop>,
}

/// What [`Engine::push`](crate::sync::Engine::push) did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PushOutcome {
    /// Messages the remote acknowledged and bytes sent.
    pub sent: Traffic,
    /// Local entries skipped because they came from this endpoint.
    pub echoes_skipped: u64,
    /// Local entries outside the link's scope.
    pub out_of_scope: u64,
    /// Messages recorded as dead letters.
    pub dead_lettered: u64,
    /// Dependencies supplied after `Incomplete` answers.
    pub dependencies_sent: u64,
    /// Blobs uploaded.
    pub blobs_sent: u64,
    /// The push checkpoint afterwards.
    pub checkpoint: Option<ProgressToken>,
    /// Retries were exhausted: the link needs a reconcile.
    pub exhausted: bool,
    /// Whether the whole local log was settled.
    pub reached_head: bool,
}

/// What [`Engine::reconcile`](crate::sync::Engine::reconcile) did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReconcileOutcome {
    /// The local root before.
    pub local_root: Hash,
    /// The remote root before.
    pub remote_root: Hash,
    /// Whether the roots differed and the diff ran.
    pub diffed: bool,
    /// Messages only the local side held.
    pub only_local: u64,
    /// Messages only the remote held.
    pub only_remote: u64,
    /// Diff round trips.
    pub round_trips: u64,
    /// Messages fetched and bytes received.
    pub pulled: Traffic,
    /// Messages acknowledged and bytes sent.
    pub pushed: Traffic,
    /// Messages recorded as dead letters.
    pub dead_lettered: u64,
    /// The local root after.
    pub post_local_root: Hash,
    /// The remote root after.
    pub post_remote_root: Hash,
    /// Whether the roots are equal after.
    pub converged: bool,
}

/// What one link did in [`Engine::sync_once`](crate::sync::Engine::sync_once).
#[derive(Debug)]
pub struct LinkReport {
    /// The link.
    pub link: LinkKey,
    /// Received from the remote (catch-up and reconcile).
    pub pulled: Traffic,
    /// Sent to the remote (push and reconcile).
    pub pushed: Traffic,
    /// The catch-up, when it ran (the last one, after a reconcile it needed).
    pub catch_up: Option<CatchUpOutcome>,
    /// The push, when it ran.
    pub push: Option<PushOutcome>,
    /// The last reconcile, when one ran.
    pub reconcile: Option<ReconcileOutcome>,
    /// What stopped the link, if anything.
    pub error: Option<Error>,
}

impl LinkReport {
    pub(super) fn new(link: LinkKey) -> Self {
        Self {
            link,
            pulled: Traffic::default(),
            pushed: Traffic::default(),
            catch_up: None,
            push: None,
            reconcile: None,
            error: None,
        }
    }

    /// Whether the roots were compared and found equal (`None`: not compared).
    pub fn converged(&self) -> Option<bool> {
        self.reconcile.as_ref().map(|r| r.converged)
    }
}

/// What [`Engine::sync_once`](crate::sync::Engine::sync_once) did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// One report per link, grouped by endpoint.
    pub links: Vec<LinkReport>,
    /// Endpoints whose links all ran.
    pub endpoints_ok: usize,
    /// Endpoints that were unreachable (their remaining links were skipped).
    pub endpoints_failed: usize,
    /// A failure before any link ran (reading the registered identities).
    pub error: Option<Error>,
}

impl SyncReport {
    /// No error anywhere.
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && self.links.iter().all(|l| l.error.is_none())
    }

    /// Received over all links.
    pub fn pulled(&self) -> Traffic {
        let mut t = Traffic::default();
        for l in &self.links {
            t += l.pulled;
        }
        t
    }

    /// Sent over all links.
    pub fn pushed(&self) -> Traffic {
        let mut t = Traffic::default();
        for l in &self.links {
            t += l.pushed;
        }
        t
    }
}
