//! One-shot replication: catch up, push and reconcile every registered link.
//!
//! The [`Engine`] replicates a [`Replica`] with remote nodes. An application registers
//! identities ([`Engine::register_identity`]: a tenant, the endpoints it syncs with, a
//! scope, credentials); each (identity, endpoint) pair is a durable link in the ledger's
//! link store ([`LinkState`](sync_types::LinkState)), with a checkpoint in each direction. [`Engine::sync_once`]
//! runs every link once; the three per-link operations it is made of are public so the
//! live driver (the tokio shell around [`crate::machine::LinkMachine`], whose `CatchUp`,
//! `Push` and `Reconcile` actions they are) can call them one by one.
//!
//! # Example
//!
//! A replica and a node in one process (the in-process transport encodes every frame
//! as a socket would); over HTTP, use [`HttpConnector`] and the node's `http://` address.
//!
//! ```
//! use std::sync::Arc;
//! use sync_engine::sync::{Engine, Identity, InProcessConnector};
//! use sync_engine::{Replica, ReplicaHandler};
//! use sync_transport::{Claims, Node, ServerConfig, Token, TokenKey};
//! use sync_types::*;
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let tenant = TenantId::new("did:example:alice")?;
//! let alice = PrincipalId::new("did:example:alice")?;
//! let notes = ProtocolName::new("https://example.com/notes")?;
//! let note = ProtocolPath::new("note")?;
//!
//! // A node serving its own replica, reachable at an endpoint name.
//! let key = TokenKey::derive(b"node secret");
//! let server = Replica::in_memory()?;
//! let node = Node::new(Arc::new(ReplicaHandler::new(server.clone())), ServerConfig::new(key.clone()));
//! let endpoint = Endpoint::new("http://node.example:7070")?;
//! let net = Arc::new(InProcessConnector::new());
//! net.insert(endpoint.clone(), node);
//!
//! // A replica with local writes, and an engine syncing the tenant with the node.
//! let local = Replica::in_memory()?;
//! let rule = TypeRule { path: note.clone(), data_bytes_max: None };
//! local.configure(&tenant, &notes, vec![rule], vec![], &alice)?;
//! local.put(&tenant, &notes, &note, b"groceries", b"milk".to_vec(), &alice)?;
//! let token = Token::issue(&key, Claims::owner(tenant.clone(), alice, GrantId::new("laptop")?, u64::MAX));
//! let engine = Engine::builder(local.clone(), net).build();
//! engine.register_identity(Identity::owner(tenant.clone(), vec![endpoint], token.to_string()))?;
//!
//! let report = engine.sync_once().await;
//! assert!(report.is_ok());
//! assert_eq!(report.pushed().messages, 2);
//! assert_eq!(report.links[0].converged(), Some(true));
//! assert_eq!(server.root(&tenant, &Scope::Full)?, local.root(&tenant, &Scope::Full)?);
//! assert!(engine.health()?.healthy);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The three operations
//!
//! - [`Engine::catch_up`] reads the remote log in pages from the link's pull checkpoint
//!   and applies each page with [`Replica::apply`]. The pull checkpoint then moves over
//!   the longest prefix of the page that is *settled*: applied, duplicate or superseded,
//!   or failed for good (invalid, unauthorized, outside the scope) and recorded as a dead
//!   letter. It stops at the first entry that is not settled (deferred, or still missing
//!   a dependency), so nothing after an unsettled entry can become the resume point. A
//!   [`Gap`](sync_types::Gap) answer (the remote cannot serve the cursor) is returned to the caller, which
//!   reconciles and resumes from the gap's `latest_available`.
//! - [`Engine::push`] reads the local log after the push checkpoint, keeps what the
//!   link's scope covers and what did not just come from that endpoint (echo
//!   suppression), and sends it in write batches. An `Incomplete { missing }` answer makes
//!   the engine send exactly those dependencies, found through the local indexes (a
//!   protocol's configures, a record's initial write, a blob), in bounded passes.
//!   Permanent refusals become `push_permanent` dead letters and count as settled;
//!   transient failures are retried with backoff ([`SyncConfig::push_retry_backoff_ms`]),
//!   then recorded as `push_exhausted` and the link is marked `needs_reconcile`. The push
//!   checkpoint moves over the settled prefix only.
//! - [`Engine::reconcile`] compares roots of the link's scope; when they differ it runs
//!   the SMT diff ([`sync_smt::Initiator`]) against the node's responder, fetches and
//!   applies what only the remote has, pushes what only the local side has, and compares
//!   roots again. Equal roots clear `needs_reconcile`, set `last_sync_ms`, move the push
//!   checkpoint up to the local head seen before the diff (everything up to it is now on
//!   the remote), and clear the link's dead letters that convergence clears
//!   ([`DeadLetterCategory::cleared_by_convergence`](sync_types::DeadLetterCategory::cleared_by_convergence)).
//!
//! # Why pulled dependencies come from the tree diff
//!
//! The wire reads messages by cid, and an `Incomplete` outcome names a dependency by
//! protocol or record id: the pulling side cannot ask the node for "the initial write of
//! record R". Dependencies always precede their dependents in the node's log (the node
//! only accepts a message after its dependencies), so catch-up meets a missing
//! dependency only after a reset cursor, a compacted log or a dead-lettered message.
//! When it does, [`Engine::sync_once`] reconciles (the diff finds exactly the messages
//! only the remote holds, dependencies included) and catches up again. The pushing side
//! has the indexes and supplies dependencies by name.
//!
//! # sync_once
//!
//! [`Engine::sync_once`] takes every registered identity and endpoint, groups the links
//! by endpoint and runs the groups concurrently, the links of a group one after the
//! other: catch-up, push, then reconcile when the link has never synced, is marked
//! `needs_reconcile`, or its integrity interval has passed, and for protocol and full
//! scopes always at least the root comparison (two reads of cached roots; the diff runs
//! only when they differ). A group whose endpoint is unreachable stops at its first
//! unreachable link; the other groups go on. The [`SyncReport`] has per-link message and
//! byte counts each way, the reconcile outcome and roots compared, and errors. Events go
//! through [`Replica::emit`] after the state they report is persisted.
//!
//! # Echo suppression
//!
//! A pulled message is appended to the local log, and the push would send it straight
//! back. The engine remembers, per endpoint, the *local log positions* of messages it
//! applied from that endpoint (learned from the replica's change feed, which carries the
//! origin) as ranges: an initial sync of a million messages is one range, where a set of
//! cids would hold a million entries. Forgetting is harmless (the node answers
//! `Duplicate`); the set is in memory and bounded ([`ECHO_RANGES_MAX`]).
//!
//! # Blocking
//!
//! The ledger is synchronous. Applying a page or a fetched chunk (which waits on an
//! fsync) runs on tokio's blocking pool; small ledger reads and link saves run inline.
//!
//! # Concurrency
//!
//! Operations on one link are serialised by a per-link async lock; different links run
//! concurrently. `sync_once` calls do not overlap (a second waits for the first).

mod apply;
mod blobs;
mod catch_up;
mod config;
mod credentials;
mod health;
mod identity;
mod known;
mod meter;
mod push;
mod push_core;
mod push_count;
mod reconcile;
mod records;
mod report;
mod round;
mod run;
mod settle;

pub use config::*;
pub use credentials::{
    CredentialedRemote, Credentials, CredentialsConnector, REFRESH_MARGIN_MS_DEFAULT,
};
pub use identity::Identity;
pub use report::*;
pub use sync_transport::connector::{Connector, HttpConnector, InProcessConnector};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sync_transport::TransportError;
use sync_transport::proto::ErrorCode;
use sync_types::{Authorization, Cid, Endpoint, LinkKey, Message, Scope, codec};

use crate::error::Error;
use crate::link_news::NewsSink;
use crate::replica::Replica;

/// Builds an [`Engine`].
#[must_use]
pub struct EngineBuilder<C> {
    replica: Replica,
    connector: C,
    config: SyncConfig,
    seed: Option<u64>,
}

impl<C: Connector> EngineBuilder<C> {
    /// The tunables. Default: [`SyncConfig::default`].
    pub fn config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// Seeds the diff salts, so a simulation replays exactly. Default: seeded from the
    /// operating system's random source.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The engine.
    pub fn build(self) -> Engine<C> {
        let seed = self.seed.unwrap_or_else(os_random_u64);
        let blob_transfers_max = self.config.blob_transfers_max.max(1);
        Engine {
            inner: Arc::new(Inner {
                replica: self.replica,
                connector: self.connector,
                config: self.config,
                rng: Mutex::new(seed),
                echoes: Mutex::default(),
                known: Mutex::default(),
                link_locks: Mutex::default(),
                owners: Mutex::default(),
                last_reconcile_ms: Mutex::default(),
                sync_lock: tokio::sync::Mutex::new(()),
                blob_permits: Arc::new(tokio::sync::Semaphore::new(blob_transfers_max)),
                link_blob_permits: Mutex::default(),
                blob_fetching: Mutex::default(),
            }),
        }
    }
}

/// Replicates a [`Replica`] with remote nodes; see the [module docs](self). Cheap to
/// clone (a handle).
pub struct Engine<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Engine<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("replica", &self.inner.replica)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner<C> {
    replica: Replica,
    connector: C,
    config: SyncConfig,
    rng: Mutex<u64>,
    echoes: Mutex<HashMap<Endpoint, apply::Echoes>>,
    /// Each link's known positions of its remote log, once loaded ([`known`]).
    known: Mutex<HashMap<LinkKey, Option<sync_types::KnownRanges>>>,
    link_locks: Mutex<HashMap<LinkKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The owner of each link driven by a live driver ([`crate::link_news`]).
    owners: Mutex<HashMap<LinkKey, NewsSink>>,
    last_reconcile_ms: Mutex<HashMap<LinkKey, u64>>,
    sync_lock: tokio::sync::Mutex<()>,
    /// Bounds the blob transfers running at once ([`SyncConfig::blob_transfers_max`]).
    blob_permits: Arc<tokio::sync::Semaphore>,
    /// Bounds the blob transfers running at once per link
    /// ([`SyncConfig::blob_transfers_per_link_max`]).
    link_blob_permits: Mutex<HashMap<LinkKey, Arc<tokio::sync::Semaphore>>>,
    /// Blobs being downloaded, so two links do not fetch the same blob at once.
    blob_fetching: Mutex<HashSet<Cid>>,
}

/// One link, ready to run: its key, scope and a client of its endpoint.
pub(super) struct LinkCtx<R> {
    key: LinkKey,
    scope: Scope,
    remote: R,
    /// The progress of the operation this context runs (see [`meter`]).
    meters: meter::Meters,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn os_random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn item_bytes(message: &Message, data: Option<&[u8]>) -> u64 {
    (codec::encoded_len(message) + data.map_or(0, <[u8]>::len)) as u64
}

/// A reply too large for the frame limit: ask for a smaller page.
pub(super) fn too_large(e: &TransportError) -> bool {
    matches!(e, TransportError::BadReply(_)) || e.code() == Some(ErrorCode::TooLarge)
}

/// Whether an error means the endpoint cannot be reached now (its group stops).
pub(super) fn is_unreachable(e: &Error) -> bool {
    matches!(e, Error::Transport(t) if t.is_retryable())
}

/// The latest expiry of a delegate's grants when every grant has expired at `now_ms`
/// (the node refuses a token from its expiry on).
pub(super) fn grants_expired(authorization: &Authorization, now_ms: u64) -> Option<u64> {
    match authorization {
        Authorization::Owner => None,
        Authorization::Delegate(d) => {
            let latest = d.grants().iter().map(|g| g.expires_at_ms).max()?;
            (latest <= now_ms).then_some(latest)
        }
    }
}

impl<C: Connector> Engine<C> {
    /// A builder for an engine over `replica`, reaching nodes through `connector`.
    pub fn builder(replica: Replica, connector: C) -> EngineBuilder<C> {
        EngineBuilder {
            replica,
            connector,
            config: SyncConfig::default(),
            seed: None,
        }
    }

    /// The replica replicated.
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.inner.connector
    }

    /// The tunables.
    pub fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.inner.replica.now_ms()
    }

    pub(super) fn durability(&self) -> sync_ledger::Durability {
        self.inner.replica.durability()
    }

    pub(super) fn ledger(&self) -> &sync_ledger::Ledger {
        self.inner.replica.ledger()
    }

    /// `ms` spread uniformly over `[ms/2, 3ms/2)` by the engine's seeded generator, so
    /// the retries of a fleet's engines do not fall in step.
    pub(super) fn jittered(&self, ms: u64) -> u64 {
        let half = ms / 2;
        if half == 0 {
            return ms;
        }
        let mut state = lock(&self.inner.rng);
        half + splitmix64(&mut state) % (2 * half)
    }

    pub(super) fn salt(&self) -> [u8; 16] {
        let mut state = lock(&self.inner.rng);
        let a = splitmix64(&mut state).to_le_bytes();
        let b = splitmix64(&mut state).to_le_bytes();
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&a);
        salt[8..].copy_from_slice(&b);
        salt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_ranges_merge_and_stay_bounded() {
        let mut e = apply::Echoes::default();
        for p in [5, 7, 6, 1, 2, 9] {
            e.insert(p);
        }
        assert_eq!(
            e.ranges.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(1, 2), (5, 7), (9, 9)]
        );
        assert!(e.contains(6) && e.contains(1) && e.contains(9));
        assert!(!e.contains(3) && !e.contains(8) && !e.contains(10));
        e.insert(8);
        assert_eq!(e.ranges.len(), 2, "8 joins 5..=7 and 9");
        for p in 0..(ECHO_RANGES_MAX as u64 + 10) {
            e.insert(100 + 2 * p);
        }
        assert!(e.ranges.len() <= ECHO_RANGES_MAX);
        assert!(!e.contains(1), "the oldest ranges go first");
    }

    #[test]
    fn batches_respect_both_bounds_in_order() {
        let cfg = SyncConfig {
            push_batch_messages: 3,
            push_batch_bytes_max: 100,
            ..SyncConfig::default()
        };
        let sizes = [10, 10, 10, 10, 90, 200, 5, 5];
        assert_eq!(
            push_core::batch_ranges(sizes.into_iter(), &cfg),
            vec![0..3, 3..5, 5..6, 6..8]
        );
        assert!(push_core::batch_ranges(std::iter::empty(), &cfg).is_empty());
    }

    #[test]
    fn salts_come_from_the_seed() {
        let mut a = 7;
        let mut b = 7;
        assert_eq!(splitmix64(&mut a), splitmix64(&mut b));
        assert_ne!(splitmix64(&mut a), 7);
    }
}
