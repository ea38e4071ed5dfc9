//! One-shot replication: catch up, push and reconcile every registered link.
//!
//! The [`Engine`] replicates a [`Replica`] with remote nodes. An application registers
//! identities ([`Engine::register_identity`]: a tenant, the endpoints it syncs with, a
//! scope, credentials); each (identity, endpoint) pair is a durable link in the ledger's
//! link store ([`LinkState`]), with a checkpoint in each direction. [`Engine::sync_once`]
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
//!   [`Gap`] answer (the remote cannot serve the cursor) is returned to the caller, which
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
//!   ([`DeadLetterCategory::cleared_by_convergence`]).
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_ledger::{DeadLetterFilter, LogRead, RegisteredIdentity, UploadCursor};
use sync_smt::{Config as DiffConfig, Hash, Initiator, Step, Tree};
use sync_transport::client::BlobSource;
use sync_transport::proto::ErrorCode;
use sync_transport::proto::{
    BATCH_MESSAGES_MAX, BlobReadRequest, BlobStatRequest, BlobWriteRequest, DiffRequest,
    LOG_PAGE_ENTRIES_MAX, LogFilter, LogPageReply, LogPageRequest, MessageData, READ_CIDS_MAX,
    ReadMessagesRequest, RootRequest, WriteBatchRequest,
};
use sync_transport::{
    ClientConfig, Handler, HttpClient, InProcessClient, Node, Remote, TransportError,
};
use sync_types::{
    ApplyOutcome, Authorization, Cid, Connectivity, DeadLetter, DeadLetterCategory, Dependency,
    Direction, DirectionCheckpoint, Endpoint, Gap, HealthSummary, LinkKey, LinkState, LinkStatus,
    Message, ProgressToken, ReconcileReason, Scope, ScopeClass, SyncEvent, TenantId, codec,
};

use crate::closure::{CLOSURE_FORBIDDEN_CODE, Forbidden, Gate, forbidden_dependency};
use crate::error::{Error, Result};
use crate::replica::{Origin, Replica};

/// Most entries asked for per remote log page (the protocol's maximum).
pub const PAGE_ENTRIES_DEFAULT: u32 = LOG_PAGE_ENTRIES_MAX;
/// Most pages one catch-up reads before it yields (the next call goes on).
pub const CATCH_UP_PAGES_MAX: usize = 100_000;
/// Most local log entries read per push step.
pub const PUSH_READ_ENTRIES_DEFAULT: usize = 1_000;
/// Most bytes (encoded messages and inline data) in one write batch, well under the
/// transport's default frame limit.
pub const PUSH_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most live events applied on the calling task by [`Engine::apply_live_batch`] when
/// the store never blocks; a larger batch goes to the blocking pool, so a task is never
/// held for long.
pub const LIVE_APPLY_INLINE_LEN_MAX: usize = 64;
/// Most passes that supply missing dependencies, per batch.
pub const DEPENDENCY_PASSES_MAX: usize = 8;
/// Pages in a row that may fail to advance the pull checkpoint (repeated pages) before a
/// catch-up gives up.
pub const STALLED_PAGES_MAX: u32 = 3;
/// Default interval of the integrity reconcile, in milliseconds.
pub const INTEGRITY_CHECK_MS_DEFAULT: u64 = 300_000;
/// Most ranges of pulled local positions remembered per endpoint for echo suppression.
pub const ECHO_RANGES_MAX: usize = 65_536;
/// Bytes of a blob moved per request by sync; a transfer resumes from the last range
/// made durable, so this is also the most an interruption costs.
pub const BLOB_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of the first range of a blob upload (see [`BLOB_CHUNK_BYTES`]).
pub const BLOB_PROBE_BYTES: u64 = 64 * 1024;
/// Blob transfers (uploads and downloads) one engine runs at once, over all its links.
pub const BLOB_TRANSFERS_MAX_DEFAULT: usize = 2;
/// Blob transfers (uploads and downloads) one link runs at once.
pub const BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT: usize = 1;
/// Downloads of one blob in one fetch before it is left staged for a later sync: a
/// transfer that fails verification stores nothing and starts over once.
pub const BLOB_FETCH_ATTEMPTS_MAX: u32 = 2;

/// Tunables of the engine; every limit has its unit last.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Entries asked for per remote log page. Default [`PAGE_ENTRIES_DEFAULT`].
    pub page_entries: u32,
    /// Pages one catch-up reads at most. Default [`CATCH_UP_PAGES_MAX`].
    pub catch_up_pages_max: usize,
    /// Local log entries read per push step. Default [`PUSH_READ_ENTRIES_DEFAULT`].
    pub push_read_entries: usize,
    /// Messages per write batch. Default [`BATCH_MESSAGES_MAX`].
    pub push_batch_messages: usize,
    /// Bytes per write batch. Default [`PUSH_BATCH_BYTES_MAX`].
    pub push_batch_bytes_max: usize,
    /// Cids per message read. Default [`READ_CIDS_MAX`].
    pub read_batch_cids: usize,
    /// Passes supplying missing dependencies. Default [`DEPENDENCY_PASSES_MAX`].
    pub dependency_passes_max: usize,
    /// Wait before each push attempt, in milliseconds; after the last attempt fails the
    /// messages are dead-lettered `push_exhausted` and the link needs a reconcile.
    /// Default `[0, 250, 1000, 2000]`.
    pub push_retry_backoff_ms: Vec<u64>,
    /// A link is reconciled at least this often by `sync_once`. Default
    /// [`INTEGRITY_CHECK_MS_DEFAULT`].
    pub integrity_check_ms: u64,
    /// Compare roots at the end of every `sync_once` for full and protocol-set scopes
    /// (cheap: both roots are cached), and diff when they differ. Projection scopes
    /// build their trees on demand and are compared only when a reconcile is due.
    /// Default true.
    pub verify_roots: bool,
    /// Blob transfers running at once over all links (a semaphore); the rest wait.
    /// Default [`BLOB_TRANSFERS_MAX_DEFAULT`].
    pub blob_transfers_max: usize,
    /// Blob transfers running at once on one link (a semaphore per link, taken before
    /// the engine's); the rest wait. Default [`BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT`].
    pub blob_transfers_per_link_max: usize,
    /// Whether sync downloads the blobs of staged records at all. When false, pulled
    /// records whose payload is a blob stay [staged](crate::blob::Residency::Staged)
    /// until a sync with it set (an application on a metered network, say). Default
    /// true.
    pub blob_fetch: bool,
    /// Whether [`Engine::catch_up`] and [`Engine::reconcile`] fetch the blobs of the
    /// records they staged in a detached task instead of before returning, so that a
    /// large download never delays the next catch-up of small messages (the live
    /// driver's case). [`Engine::sync_link`] always waits for them. Default true.
    pub blob_fetch_detached: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            page_entries: PAGE_ENTRIES_DEFAULT,
            catch_up_pages_max: CATCH_UP_PAGES_MAX,
            push_read_entries: PUSH_READ_ENTRIES_DEFAULT,
            push_batch_messages: BATCH_MESSAGES_MAX,
            push_batch_bytes_max: PUSH_BATCH_BYTES_MAX,
            read_batch_cids: READ_CIDS_MAX,
            dependency_passes_max: DEPENDENCY_PASSES_MAX,
            push_retry_backoff_ms: vec![0, 250, 1_000, 2_000],
            integrity_check_ms: INTEGRITY_CHECK_MS_DEFAULT,
            verify_roots: true,
            blob_transfers_max: BLOB_TRANSFERS_MAX_DEFAULT,
            blob_transfers_per_link_max: BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT,
            blob_fetch: true,
            blob_fetch_detached: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connectors
// ---------------------------------------------------------------------------------------

/// How the engine reaches an endpoint: a [`Remote`] per endpoint and credentials. The
/// engine never talks to a node any other way, so a simulation swaps the connector and
/// nothing else.
pub trait Connector: Send + Sync + 'static {
    /// The client type.
    type Remote: Remote + 'static;

    /// A client of `endpoint` presenting `token` (the registered identity's capability
    /// token text). Connecting may be lazy: an unreachable node usually shows on the
    /// first call, as a retryable [`TransportError`].
    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> std::result::Result<Self::Remote, TransportError>;
}

impl<C: Connector> Connector for Arc<C> {
    type Remote = C::Remote;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> std::result::Result<Self::Remote, TransportError> {
        (**self).connect(endpoint, token)
    }
}

/// Connects over HTTP ([`HttpClient`]); clients are kept per (endpoint, token) so their
/// connection pools are reused across syncs.
#[derive(Debug, Default)]
pub struct HttpConnector {
    config: ClientConfig,
    clients: Mutex<HashMap<(Endpoint, String), HttpClient>>,
}

impl HttpConnector {
    /// A connector whose clients use `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            clients: Mutex::default(),
        }
    }
}

impl Connector for HttpConnector {
    type Remote = HttpClient;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> std::result::Result<HttpClient, TransportError> {
        let token = token.unwrap_or_default().to_owned();
        let mut clients = lock(&self.clients);
        let key = (endpoint.clone(), token);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = HttpClient::with_token_text(endpoint, &key.1, self.config.clone())?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Connects to [`Node`]s in the same process ([`InProcessClient`]), for tests and
/// simulation. An endpoint without a node is unreachable.
pub struct InProcessConnector<H> {
    nodes: Mutex<HashMap<Endpoint, Node<H>>>,
}

impl<H> Default for InProcessConnector<H> {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
        }
    }
}

impl<H> std::fmt::Debug for InProcessConnector<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessConnector")
            .field("endpoints", &lock(&self.nodes).keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<H: Handler> InProcessConnector<H> {
    /// A connector without nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `endpoint` with `node` (replacing any node there).
    pub fn insert(&self, endpoint: Endpoint, node: Node<H>) {
        lock(&self.nodes).insert(endpoint, node);
    }

    /// Takes `endpoint` off the network; returns whether it was there.
    pub fn remove(&self, endpoint: &Endpoint) -> Option<Node<H>> {
        lock(&self.nodes).remove(endpoint)
    }
}

impl<H: Handler> Connector for InProcessConnector<H> {
    type Remote = InProcessClient<H>;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> std::result::Result<InProcessClient<H>, TransportError> {
        let node = lock(&self.nodes)
            .get(endpoint)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("no node at {endpoint}")))?;
        Ok(InProcessClient::with_token_text(
            node,
            token.unwrap_or_default(),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Identities, outcomes and reports
// ---------------------------------------------------------------------------------------

/// What an application registers to sync a tenant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Identity {
    /// The tenant.
    pub tenant: TenantId,
    /// The nodes to sync with (at least one; duplicates are dropped).
    pub endpoints: Vec<Endpoint>,
    /// What to replicate.
    pub scope: Scope,
    /// The credentials' description (part of each link's identity).
    pub authorization: Authorization,
    /// The capability token text presented to the nodes.
    pub token: Option<String>,
}

impl Identity {
    /// The owner of `tenant` syncing everything with `endpoints`, presenting `token`.
    pub fn owner(tenant: TenantId, endpoints: Vec<Endpoint>, token: impl Into<String>) -> Self {
        Self {
            tenant,
            endpoints,
            scope: Scope::Full,
            authorization: Authorization::Owner,
            token: Some(token.into()),
        }
    }
}

/// Messages and bytes moved in one direction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Traffic {
    /// Messages (received, or acknowledged by the remote).
    pub messages: u64,
    /// Bytes of encoded messages and inline data (received, or sent).
    pub bytes: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.messages += other.messages;
        self.bytes += other.bytes;
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

/// What [`Engine::catch_up`] did.
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

/// What [`Engine::push`] did.
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

/// What [`Engine::reconcile`] did.
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

/// What one link did in [`Engine::sync_once`].
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
    fn new(link: LinkKey) -> Self {
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

/// What [`Engine::sync_once`] did.
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

// ---------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------

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
                link_locks: Mutex::default(),
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

struct Inner<C> {
    replica: Replica,
    connector: C,
    config: SyncConfig,
    rng: Mutex<u64>,
    echoes: Mutex<HashMap<Endpoint, Echoes>>,
    link_locks: Mutex<HashMap<LinkKey, Arc<tokio::sync::Mutex<()>>>>,
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
struct LinkCtx<R> {
    key: LinkKey,
    scope: Scope,
    remote: R,
}

/// A message to push, with what the batch needs to know about it.
#[derive(Clone)]
struct PushItem {
    cid: Cid,
    item: MessageData,
    bytes: u64,
}

impl PushItem {
    fn new(message: Message, data: Option<Vec<u8>>) -> Self {
        let bytes = item_bytes(&message, data.as_deref());
        Self {
            cid: message.cid(),
            item: MessageData { message, data },
            bytes,
        }
    }
}

/// Where a message ended up after sending or applying it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Settle {
    /// Held by the receiver.
    Done,
    /// Refused for good and dead-lettered.
    Failed,
    /// Not settled: the checkpoint must stay before it.
    Open,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn os_random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn item_bytes(message: &Message, data: Option<&[u8]>) -> u64 {
    (codec::encode(message).len() + data.map_or(0, <[u8]>::len)) as u64
}

/// Splits items of these sizes, in order, into batches of at most
/// [`SyncConfig::push_batch_messages`] messages and [`SyncConfig::push_batch_bytes_max`]
/// bytes (a single larger item goes alone).
fn batch_ranges(sizes: impl Iterator<Item = u64>, cfg: &SyncConfig) -> Vec<std::ops::Range<usize>> {
    let max_messages = cfg.push_batch_messages.max(1);
    let max_bytes = cfg.push_batch_bytes_max as u64;
    let mut out = Vec::new();
    let (mut start, mut bytes, mut len) = (0, 0u64, 0);
    for (i, size) in sizes.enumerate() {
        if i > start && (i - start >= max_messages || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
        len = i + 1;
    }
    if len > start {
        out.push(start..len);
    }
    out
}

/// A reply too large for the frame limit: ask for a smaller page.
fn too_large(e: &TransportError) -> bool {
    matches!(e, TransportError::BadReply(_)) || e.code() == Some(ErrorCode::TooLarge)
}

/// Whether an error means the endpoint cannot be reached now (its group stops).
fn is_unreachable(e: &Error) -> bool {
    matches!(e, Error::Transport(t) if t.is_retryable())
}

/// The latest expiry of a delegate's grants when every grant has expired at `now_ms`
/// (the node refuses a token from its expiry on).
fn grants_expired(authorization: &Authorization, now_ms: u64) -> Option<u64> {
    match authorization {
        Authorization::Owner => None,
        Authorization::Delegate(d) => {
            let latest = d.grants().iter().map(|g| g.expires_at_ms).max()?;
            (latest <= now_ms).then_some(latest)
        }
    }
}

fn settle(outcome: &ApplyOutcome) -> Settle {
    if outcome.is_success() {
        Settle::Done
    } else if outcome.is_permanent_failure() {
        Settle::Failed
    } else {
        Settle::Open
    }
}

/// A [`BlobSource`] over `len` bytes of a stored blob from `offset`, read one store chunk
/// at a time as the transport pulls it.
fn blob_range_source(replica: Replica, cid: Cid, offset: u64, len: u64) -> BlobSource {
    use futures_util::StreamExt;
    const PIECE_BYTES: u64 = 64 * 1024;
    let end = offset + len;
    futures_util::stream::unfold(offset, move |at| {
        let replica = replica.clone();
        async move {
            if at >= end {
                return None;
            }
            let n = (end - at).min(PIECE_BYTES - at % PIECE_BYTES);
            let piece = replica
                .ledger()
                .blobs()
                .read_range(&cid, at, n)
                .map(bytes::Bytes::from)
                .map_err(std::io::Error::other);
            Some((piece, at + n))
        }
    })
    .boxed()
}

fn big_data(message: &Message) -> Option<(Cid, u64)> {
    match message {
        Message::Write(w) => w
            .data
            .filter(|d| !d.is_inline())
            .map(|d| (d.data_cid, d.size)),
        _ => None,
    }
}

/// Local log positions applied from one endpoint, as inclusive ranges.
#[derive(Debug, Default)]
struct Echoes {
    ranges: BTreeMap<u64, u64>,
}

impl Echoes {
    fn contains(&self, position: u64) -> bool {
        self.ranges
            .range(..=position)
            .next_back()
            .is_some_and(|(_, &end)| position <= end)
    }

    fn insert(&mut self, position: u64) {
        if self.contains(position) {
            return;
        }
        let mut start = position;
        let mut end = position;
        if let Some((&s, &e)) = self.ranges.range(..position).next_back()
            && e.checked_add(1) == Some(position)
        {
            start = s;
        }
        if let Some(next) = position.checked_add(1)
            && let Some(e) = self.ranges.remove(&next)
        {
            end = e;
        }
        self.ranges.insert(start, end);
        while self.ranges.len() > ECHO_RANGES_MAX {
            self.ranges.pop_first();
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

    fn now_ms(&self) -> u64 {
        self.inner.replica.now_ms()
    }

    fn durability(&self) -> sync_ledger::Durability {
        self.inner.replica.durability()
    }

    fn ledger(&self) -> &sync_ledger::Ledger {
        self.inner.replica.ledger()
    }

    fn salt(&self) -> [u8; 16] {
        let mut state = lock(&self.inner.rng);
        let a = splitmix64(&mut state).to_le_bytes();
        let b = splitmix64(&mut state).to_le_bytes();
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&a);
        salt[8..].copy_from_slice(&b);
        salt
    }

    // ---- identities and links ----

    /// Registers a tenant for sync and creates its links (one per endpoint). Fails when
    /// the tenant is already registered.
    pub fn register_identity(&self, identity: Identity) -> Result<Vec<LinkKey>> {
        let registered = self.to_registered(identity)?;
        self.ledger()
            .identities()
            .register(&registered, self.durability())?;
        self.ensure_links(&registered)
    }

    /// Replaces a tenant's registration; links the new one does not use (another scope,
    /// credentials or endpoint) are deleted with their checkpoints.
    pub fn update_identity(&self, identity: Identity) -> Result<Vec<LinkKey>> {
        let registered = self.to_registered(identity)?;
        self.ledger()
            .identities()
            .update(&registered, self.durability())?;
        let keys = self.ensure_links(&registered)?;
        let superseded: Vec<LinkState> = self
            .ledger()
            .links()
            .list(&registered.tenant)?
            .into_iter()
            .filter(|l| !keys.contains(&l.key))
            .collect();
        for key in &keys {
            self.inherit_checkpoints(key, &superseded)?;
        }
        for link in superseded {
            self.ledger().links().delete(&link.key, self.durability())?;
            // Closure failures belong to the superseded scope or grants.
            self.ledger().dead_letters().clear_matching(
                &DeadLetterFilter {
                    tenant: Some(link.key.tenant.clone()),
                    endpoint: Some(link.key.endpoint.clone()),
                    categories: vec![DeadLetterCategory::Closure],
                    protocol: None,
                },
                self.durability(),
            )?;
        }
        Ok(keys)
    }

    /// A new link replicating the same scope with the same endpoint as a superseded one
    /// (only the credentials changed: a refreshed token, a re-grant) starts from the
    /// superseded link's checkpoints, which name positions in logs whatever the
    /// credentials; its first sync still reconciles (it has never synced), so a refresh
    /// costs a root comparison and the writes since, not a full download.
    fn inherit_checkpoints(&self, key: &LinkKey, superseded: &[LinkState]) -> Result<()> {
        let Some(prev) = superseded
            .iter()
            .find(|l| l.key.endpoint == key.endpoint && l.key.projection_id == key.projection_id)
        else {
            return Ok(());
        };
        let Some(state) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        let fresh = state.pull.contiguous_applied.is_none()
            && state.push.contiguous_applied.is_none()
            && state.last_sync_ms.is_none();
        if fresh {
            let (pull, push) = (prev.pull, prev.push);
            self.ledger().links().update(key, self.durability(), |s| {
                s.pull = pull;
                s.push = push;
            })?;
        }
        Ok(())
    }

    /// Unregisters a tenant and deletes its links; returns the removed registration.
    pub fn unregister_identity(&self, tenant: &TenantId) -> Result<RegisteredIdentity> {
        Ok(self
            .ledger()
            .identities()
            .unregister(tenant, self.durability())?)
    }

    /// Every registered identity, ordered by tenant.
    pub fn identities(&self) -> Result<Vec<RegisteredIdentity>> {
        Ok(self.ledger().identities().list()?)
    }

    /// The stored state of every registered link, ordered by tenant, then in the order
    /// of each identity's endpoints.
    pub fn links(&self) -> Result<Vec<LinkState>> {
        let mut out = Vec::new();
        for identity in self.identities()? {
            for key in self.ensure_links(&identity)? {
                if let Some(state) = self.ledger().links().get(&key)? {
                    out.push(state);
                }
            }
        }
        Ok(out)
    }

    fn to_registered(&self, identity: Identity) -> Result<RegisteredIdentity> {
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(identity.endpoints.len());
        for e in identity.endpoints {
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
        if endpoints.is_empty() {
            return Err(sync_types::ValidationError::Empty { what: "endpoints" }.into());
        }
        Ok(RegisteredIdentity {
            tenant: identity.tenant,
            endpoints,
            scope: identity.scope,
            authorization: identity.authorization,
            token: identity.token,
            updated_ms: self.now_ms(),
        })
    }

    fn ensure_links(&self, identity: &RegisteredIdentity) -> Result<Vec<LinkKey>> {
        let mut keys = Vec::with_capacity(identity.endpoints.len());
        for endpoint in &identity.endpoints {
            let state = LinkState::new(
                identity.tenant.clone(),
                endpoint.clone(),
                identity.scope.clone(),
                identity.authorization.clone(),
            );
            let (state, _) = self
                .ledger()
                .links()
                .get_or_create(state, self.durability())?;
            keys.push(state.key);
        }
        Ok(keys)
    }

    fn link_ctx(&self, key: &LinkKey) -> Result<LinkCtx<C::Remote>> {
        let identity = self.link_identity(key)?;
        self.ensure_links(&identity)?;
        self.check_usable(key, &identity)?;
        let remote = self
            .inner
            .connector
            .connect(&key.endpoint, identity.token.as_deref())?;
        Ok(LinkCtx {
            key: key.clone(),
            scope: identity.scope,
            remote,
        })
    }

    /// The checks of [`link_ctx`](Self::link_ctx) without its side effects (creating
    /// missing link rows, opening a connection): what applying a live event needs.
    fn check_live_link(&self, key: &LinkKey) -> Result<()> {
        let identity = self.link_identity(key)?;
        self.check_usable(key, &identity)
    }

    /// The registered identity `key` belongs to, if the link is one of its current
    /// links (same endpoint, scope and authorization).
    fn link_identity(&self, key: &LinkKey) -> Result<RegisteredIdentity> {
        let unknown = || Error::UnknownLink(key.to_string());
        let identity = self
            .ledger()
            .identities()
            .get(&key.tenant)?
            .ok_or_else(unknown)?;
        let expected = LinkKey::new(
            identity.tenant.clone(),
            key.endpoint.clone(),
            &identity.scope,
            &identity.authorization,
        );
        if !identity.endpoints.contains(&key.endpoint) || expected != *key {
            return Err(unknown());
        }
        Ok(identity)
    }

    /// Refuses a link whose grants expired (marking it terminal) or that an earlier
    /// closure failure stopped.
    fn check_usable(&self, key: &LinkKey, identity: &RegisteredIdentity) -> Result<()> {
        if let Some(expired_at_ms) = grants_expired(&identity.authorization, self.now_ms()) {
            self.set_terminal(key)?;
            return Err(Error::GrantExpired {
                link: key.to_string(),
                expired_at_ms,
            });
        }
        if self.load(key)?.status == LinkStatus::TerminalIncomplete {
            return Err(Error::TerminalIncomplete {
                link: key.to_string(),
                reason: "stopped by an earlier closure failure; a new scope or new grants make a new link".into(),
            });
        }
        Ok(())
    }

    fn load(&self, key: &LinkKey) -> Result<LinkState> {
        self.ledger()
            .links()
            .get(key)?
            .ok_or_else(|| Error::UnknownLink(key.to_string()))
    }

    async fn lock_link(&self, key: &LinkKey) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.inner.link_locks)
            .entry(key.clone())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    // ---- shared steps ----

    fn record_dead_letter(
        &self,
        key: &LinkKey,
        message: &Message,
        category: DeadLetterCategory,
        error_code: Option<String>,
        error: String,
    ) -> Result<()> {
        let letter = DeadLetter {
            cid: message.cid(),
            tenant: key.tenant.clone(),
            endpoint: key.endpoint.clone(),
            protocol: Some(message.protocol().clone()),
            category,
            error_code,
            error,
            attempts: 0,
            failed_at_ms: self.now_ms(),
        };
        let stored = self
            .ledger()
            .dead_letters()
            .record(letter, self.durability())?;
        self.replica().emit(SyncEvent::DeadLetterRecorded {
            dead_letter: stored,
        });
        Ok(())
    }

    fn mark_needs_reconcile(&self, key: &LinkKey, reason: Option<ReconcileReason>) -> Result<()> {
        let before = self.load(key)?.needs_reconcile;
        if !before {
            self.ledger()
                .links()
                .set_needs_reconcile(key, true, self.durability())?;
            if let Some(reason) = reason {
                self.replica().emit(SyncEvent::ReconcileNeeded {
                    link: key.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Saves a checkpoint with the traffic it covers, then announces it.
    fn save_checkpoint(
        &self,
        key: &LinkKey,
        direction: Direction,
        checkpoint: DirectionCheckpoint,
        traffic: Traffic,
    ) -> Result<()> {
        let now = self.now_ms();
        self.ledger().links().update(key, self.durability(), |s| {
            match direction {
                Direction::Pull => {
                    s.pull = checkpoint;
                    s.counters.messages_pulled += traffic.messages;
                    s.counters.bytes_pulled += traffic.bytes;
                }
                Direction::Push => {
                    s.push = checkpoint;
                    s.counters.messages_pushed += traffic.messages;
                    s.counters.bytes_pushed += traffic.bytes;
                }
            }
            s.last_activity_ms = Some(now);
        })?;
        if let Some(token) = checkpoint.contiguous_applied {
            self.replica().emit(SyncEvent::CheckpointAdvanced {
                link: key.clone(),
                direction,
                token,
            });
        }
        Ok(())
    }

    fn progress(&self, key: &LinkKey, direction: Direction, t: Traffic) {
        self.replica().emit(SyncEvent::SyncProgress {
            link: key.clone(),
            direction,
            messages: t.messages,
            bytes: t.bytes,
        });
    }

    /// Records a message the scope gate refused (`pull_scope_rejected`, code
    /// `out_of_scope` or `unknown`); an unknown one also marks the link for a reconcile,
    /// which retries it once its record can be classified.
    fn scope_rejected(&self, key: &LinkKey, message: &Message, class: ScopeClass) -> Result<()> {
        let (code, error) = match class {
            ScopeClass::Unknown => (
                "unknown",
                "pulled message cannot be classified against the link's scope (a delete whose record is not held); not applied",
            ),
            _ => (
                "out_of_scope",
                "pulled message lies outside the link's scope",
            ),
        };
        self.record_dead_letter(
            key,
            message,
            DeadLetterCategory::PullScopeRejected,
            Some(code.into()),
            error.into(),
        )?;
        if class == ScopeClass::Unknown {
            self.mark_needs_reconcile(key, Some(ReconcileReason::ScopeUnclassified))?;
        }
        Ok(())
    }

    /// The scope gate of one live event of `link` (see [`crate::closure`]): a refused
    /// one (out of scope, or unknown: fails closed) is recorded as a
    /// `pull_scope_rejected` dead letter.
    pub(crate) fn gate_live(&self, link: &LinkState, message: &Message) -> Result<ScopeClass> {
        let class = self
            .replica()
            .classify(&link.key.tenant, &link.scope, message)?;
        if class != ScopeClass::InScope {
            self.scope_rejected(&link.key, message, class)?;
        }
        Ok(class)
    }

    /// Puts the link in `terminal_incomplete` (when the status table allows it from
    /// where it is), persisted, then announced.
    fn set_terminal(&self, key: &LinkKey) -> Result<()> {
        let Some(state) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        if state.status == LinkStatus::TerminalIncomplete {
            return Ok(());
        }
        let mut changed = false;
        self.ledger().links().update(key, self.durability(), |s| {
            changed = s.set_status(LinkStatus::TerminalIncomplete).is_ok();
        })?;
        if !changed {
            return Ok(());
        }
        tracing::warn!(link = %key, "link is terminal_incomplete");
        self.replica().emit(SyncEvent::LinkStatusChanged {
            link: key.clone(),
            from: state.status,
            to: LinkStatus::TerminalIncomplete,
        });
        Ok(())
    }

    /// A dependency outside the scope: a `closure` dead letter for `message`, the link
    /// stops; returns the error the operation ends with.
    fn closure_failure(
        &self,
        key: &LinkKey,
        message: &Message,
        forbidden: Forbidden,
    ) -> Result<Error> {
        self.record_dead_letter(
            key,
            message,
            DeadLetterCategory::Closure,
            Some(CLOSURE_FORBIDDEN_CODE.into()),
            forbidden.reason.clone(),
        )?;
        self.set_terminal(key)?;
        Ok(Error::TerminalIncomplete {
            link: key.to_string(),
            reason: forbidden.reason,
        })
    }

    /// Applies messages from the link's endpoint on the blocking pool and remembers the
    /// local positions they got, for echo suppression.
    async fn apply_remote(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<(Message, Option<Vec<u8>>)>,
    ) -> Result<Vec<ApplyOutcome>> {
        self.apply_from(&ctx.key, items, false).await
    }

    /// Applies messages pulled from `link`'s endpoint and remembers their local
    /// positions as echoes. On a store whose commits never block (in memory) and with
    /// `inline` set, the apply runs on the calling task; otherwise on tokio's blocking
    /// pool.
    async fn apply_from(
        &self,
        link: &LinkKey,
        items: Vec<(Message, Option<Vec<u8>>)>,
        inline: bool,
    ) -> Result<Vec<ApplyOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let replica = self.replica().clone();
        let tenant = link.tenant.clone();
        let origin = Origin::Remote(Some(link.endpoint.clone()));
        let now = self.now_ms();
        let apply = move || {
            // A blob is recorded as wanted before the message that stages its record is
            // applied: commits persist in order, so a power loss that keeps the staged
            // record keeps the wanted entry, and the blob is still fetched after a
            // restart. (Wanting the blob of a message that turns out superseded costs
            // one download; the collector removes the unreferenced blob.)
            let blobs = replica.ledger().blobs();
            for (message, _) in &items {
                if let Some((cid, size)) = big_data(message) {
                    blobs.want(&cid, size, now)?;
                }
            }
            replica.apply_with_positions(&tenant, items, origin)
        };
        let applied = if inline && !self.replica().ledger().store().commit_may_block() {
            apply()?
        } else {
            tokio::task::spawn_blocking(apply)
                .await
                .map_err(|e| Error::Task(e.to_string()))??
        };
        let mut echoes = lock(&self.inner.echoes);
        let echoes = echoes.entry(link.endpoint.clone()).or_default();
        let outcomes = applied
            .into_iter()
            .map(|(outcome, token)| {
                if let Some(token) = token {
                    echoes.insert(token.position);
                }
                outcome
            })
            .collect();
        Ok(outcomes)
    }

    /// Applies one live event from `link`'s endpoint and remembers its local position, so
    /// the push never echoes it back to that endpoint.
    pub async fn apply_live(
        &self,
        link: &LinkKey,
        message: Message,
        data: Option<Vec<u8>>,
    ) -> Result<ApplyOutcome> {
        let outcomes = self.apply_live_batch(link, vec![(message, data)]).await?;
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(ApplyOutcome::Deferred))
    }

    /// Applies live events from `link`'s endpoint in one ledger commit (ordered by their
    /// dependencies, as any batch), one outcome per event in the order given, and
    /// remembers their local positions so the push never echoes them back.
    ///
    /// The link is checked as for any operation (registered, grants not expired, not
    /// `terminal_incomplete`), but no connection is made. On an in-memory store, and for
    /// at most [`LIVE_APPLY_INLINE_LEN_MAX`] events, the apply runs on the calling task:
    /// it never waits on I/O, and a blocking-pool round trip per live event costs more
    /// than the apply (`BENCHMARKS.md`, fan-out round 3).
    pub async fn apply_live_batch(
        &self,
        link: &LinkKey,
        items: Vec<(Message, Option<Vec<u8>>)>,
    ) -> Result<Vec<ApplyOutcome>> {
        self.check_live_link(link)?;
        let inline = items.len() <= LIVE_APPLY_INLINE_LEN_MAX;
        self.apply_from(link, items, inline).await
    }

    /// Fetches the blobs the local store wants (records applied as staged) from `link`'s
    /// remote: in a detached task when [`SyncConfig::blob_fetch_detached`] is set. The live
    /// driver calls it after applying a live event that references a blob it lacks.
    pub async fn fetch_wanted_blobs(&self, link: &LinkKey) -> Result<u64> {
        let ctx = self.link_ctx(link)?;
        self.fetch_staged_after(ctx).await
    }

    /// Fetches the blobs of staged records (the blob store's wanted list): awaited, or in
    /// a detached task when [`SyncConfig::blob_fetch_detached`] is set. Returns the blobs
    /// fetched before returning.
    async fn fetch_staged_after(&self, ctx: LinkCtx<C::Remote>) -> Result<u64> {
        if !self.has_wanted_blobs()? {
            return Ok(0);
        }
        if !self.inner.config.blob_fetch_detached {
            return self.fetch_staged(&ctx).await;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.fetch_staged(&ctx).await {
                tracing::debug!(link = %ctx.key, error = %e, "blob fetch failed; the records stay staged");
            }
        });
        Ok(0)
    }

    fn has_wanted_blobs(&self) -> Result<bool> {
        Ok(self
            .ledger()
            .blobs()
            .partial_uploads()?
            .iter()
            .any(|(_, s)| s.size.is_some()))
    }

    /// Downloads every wanted blob this link's remote can serve, one at a time. A blob
    /// the remote does not hold stays wanted (its records stay staged) for a later sync.
    async fn fetch_staged(&self, ctx: &LinkCtx<C::Remote>) -> Result<u64> {
        if !self.inner.config.blob_fetch {
            return Ok(0);
        }
        let wanted: Vec<(Cid, u64)> = self
            .ledger()
            .blobs()
            .partial_uploads()?
            .into_iter()
            .filter_map(|(cid, s)| s.size.map(|size| (cid, size)))
            .collect();
        let mut fetched = 0;
        for (cid, size) in wanted {
            if self.fetch_blob(ctx, cid, size).await? {
                fetched += 1;
            }
        }
        Ok(fetched)
    }

    /// Waits for a blob transfer slot on `link` and then one of the engine's (always in
    /// that order, so two transfers never wait on each other crosswise). The slots are
    /// released when the returned permits drop.
    async fn blob_permits(&self, link: &LinkKey) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        let per_link = lock(&self.inner.link_blob_permits)
            .entry(link.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    self.inner.config.blob_transfers_per_link_max.max(1),
                ))
            })
            .clone();
        let mut permits = Vec::with_capacity(2);
        // The semaphores are never closed, so acquiring cannot fail.
        permits.extend(per_link.acquire_owned().await.ok());
        permits.extend(self.inner.blob_permits.clone().acquire_owned().await.ok());
        permits
    }

    /// Downloads a blob the local store lacks, resuming a partial download; see
    /// [`fetch_blob_once`](Self::fetch_blob_once). A download that fails verification
    /// stored nothing and starts over, at most [`BLOB_FETCH_ATTEMPTS_MAX`] times. Returns
    /// whether the blob is now stored; otherwise the record stays staged.
    async fn fetch_blob(&self, ctx: &LinkCtx<C::Remote>, cid: Cid, size: u64) -> Result<bool> {
        if self.ledger().blobs().has(&cid)? {
            return Ok(false);
        }
        if !lock(&self.inner.blob_fetching).insert(cid) {
            return Ok(false); // another link is fetching it
        }
        let _permits = self.blob_permits(&ctx.key).await;
        let mut result = Ok(false);
        for attempt in 1..=BLOB_FETCH_ATTEMPTS_MAX {
            result = self.fetch_blob_once(ctx, cid, size).await;
            match &result {
                Err(Error::Ledger(e @ sync_ledger::Error::BlobMismatch { .. })) => {
                    tracing::warn!(link = %ctx.key, %cid, attempt, error = %e, "blob failed verification; fetching it again");
                    result = Ok(false);
                }
                _ => break,
            }
        }
        // A transfer that failed, verification included, leaves the blob wanted (a
        // mismatch puts the upload back to offset 0 in the commit that deletes its
        // chunks), so its record is fetched again by a later sync.
        lock(&self.inner.blob_fetching).remove(&cid);
        result
    }

    /// One download: resumes from the bytes already stored, asks for ranges of
    /// [`BLOB_CHUNK_BYTES`], streams each range into one upload (which hashes as it
    /// writes, so memory stays bounded by a few chunks whatever the size), commits each
    /// range, and stores the blob only when the hash of all its bytes matches.
    ///
    /// The storage work runs on tokio's blocking pool, about a MiB at a time (the
    /// upload paused in between, see [`sync_ledger::UploadCursor`]), so storage writes
    /// and the store's own write stalls never block the runtime's workers, which carry
    /// the small messages meanwhile. (No blocking task outlives a step, so a paused
    /// test clock still advances while a download waits on the network.)
    async fn fetch_blob_once(&self, ctx: &LinkCtx<C::Remote>, cid: Cid, size: u64) -> Result<bool> {
        use futures_util::StreamExt;
        /// Bytes handed to one blocking step.
        const STEP_BYTES: usize = 1024 * 1024;
        /// What a step does after writing its bytes.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Then {
            Pause,
            /// The end of a range: commit what came so far (not synced: commits persist
            /// in order, so a power loss resumes from an earlier range).
            Checkpoint,
            /// The last byte: verify and store the blob (synced).
            Finish,
        }
        let blocking = |f: Box<dyn FnOnce() -> Result<Option<UploadCursor>> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| Error::Task(e.to_string()))?
        };
        self.ledger().blobs().want(&cid, size, self.now_ms())?;
        let (replica, now, durability) = (self.replica().clone(), self.now_ms(), self.durability());
        let step = move |cursor: UploadCursor, pieces: Vec<bytes::Bytes>, then: Then| {
            let replica = replica.clone();
            blocking(Box::new(move || {
                let mut upload = replica.ledger().blobs().resume(cursor, now)?;
                for piece in &pieces {
                    upload.write(piece)?;
                }
                match then {
                    Then::Pause => {}
                    Then::Checkpoint => {
                        upload.checkpoint(sync_ledger::Durability::Buffered)?;
                    }
                    Then::Finish => {
                        upload.finish(durability)?;
                        return Ok(None);
                    }
                }
                Ok(upload.pause())
            }))
        };
        let opener = self.replica().clone();
        let opened = blocking(Box::new(move || {
            match opener.ledger().blobs().upload(&cid, Some(size), now) {
                Ok(upload) => Ok(upload.pause()),
                Err(sync_ledger::Error::UploadInProgress(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }))
        .await?;
        let Some(mut cursor) = opened else {
            return Ok(false); // stored already, or someone else is writing it
        };
        let mut offset = cursor.offset();
        while offset < size {
            let len = (size - offset).min(BLOB_CHUNK_BYTES);
            let req = BlobReadRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
                cid,
                offset,
                len,
            };
            let mut download = match ctx.remote.blob_read(req).await {
                Ok(d) => d,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            if download.head.offset != offset
                || download.head.len == 0
                || download.head.total_size != size
            {
                return Err(Error::Protocol(format!(
                    "blob {cid} range at {offset} came back as {:?}",
                    download.head
                )));
            }
            let start = offset;
            let end = offset + download.head.len;
            let mut pieces = Vec::new();
            let mut held = 0usize;
            while let Some(piece) = download.bytes.next().await {
                let piece = piece?;
                if offset + piece.len() as u64 > end {
                    return Err(Error::Protocol(format!(
                        "blob {cid} range at {start} is longer than announced"
                    )));
                }
                offset += piece.len() as u64;
                held += piece.len();
                pieces.push(piece);
                if held >= STEP_BYTES && offset < end {
                    let Some(c) = step(cursor, std::mem::take(&mut pieces), Then::Pause).await?
                    else {
                        return Ok(false);
                    };
                    cursor = c;
                    held = 0;
                }
            }
            if offset != end {
                // Truncated: what arrived is committed, the next attempt resumes after
                // it.
                let _ = step(cursor, pieces, Then::Checkpoint).await;
                return Err(Error::Protocol(format!(
                    "blob {cid} range at {start} ended after {} of {} bytes",
                    offset - start,
                    download.head.len
                )));
            }
            let then = if end < size {
                Then::Checkpoint
            } else {
                Then::Finish
            };
            match step(cursor, pieces, then).await? {
                Some(c) => cursor = c,
                None => return Ok(then == Then::Finish),
            }
        }
        Ok(false)
    }

    /// Uploads a local blob the remote lacks, resuming where the remote stopped. Each
    /// range is read from the store one chunk at a time as the transport sends it.
    async fn push_blob(&self, ctx: &LinkCtx<C::Remote>, cid: Cid) -> Result<bool> {
        let blobs = self.ledger().blobs();
        let Some(size) = blobs.size(&cid)? else {
            return Ok(false);
        };
        let stat = ctx
            .remote
            .blob_stat(BlobStatRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
                cid,
            })
            .await?;
        if stat.complete {
            return Ok(false);
        }
        let _permits = self.blob_permits(&ctx.key).await;
        let mut offset = stat.received_bytes;
        // The first range is one piece: a node that refuses the blob (a size limit)
        // answers before much is sent, so its error arrives whole instead of as a
        // broken upload.
        let mut range = BLOB_PROBE_BYTES;
        while offset < size {
            let len = (size - offset).min(range);
            range = BLOB_CHUNK_BYTES;
            let req = BlobWriteRequest {
                tenant: ctx.key.tenant.clone(),
                cid,
                total_size: size,
                offset,
                len,
            };
            let source = blob_range_source(self.replica().clone(), cid, offset, len);
            let stat = ctx.remote.blob_write(req, source).await?;
            if stat.complete {
                break;
            }
            if stat.received_bytes <= offset {
                return Err(Error::Protocol(format!(
                    "blob {cid} upload did not advance past {offset}"
                )));
            }
            offset = stat.received_bytes;
        }
        Ok(true)
    }

    // ---- catch-up ----

    /// Reads the remote log from the link's pull checkpoint and applies it; see the
    /// [module docs](self).
    pub async fn catch_up(&self, link: &LinkKey) -> Result<CatchUpOutcome> {
        let ctx = self.link_ctx(link)?;
        let guard = self.lock_link(link).await;
        let mut out = self.catch_up_locked(&ctx).await?;
        drop(guard);
        out.blobs_fetched += self.fetch_staged_after(ctx).await?;
        Ok(out)
    }

    async fn catch_up_locked(&self, ctx: &LinkCtx<C::Remote>) -> Result<CatchUpOutcome> {
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let mut cp = self.load(key)?.pull;
        let mut out = CatchUpOutcome {
            checkpoint: cp.contiguous_applied,
            ..CatchUpOutcome::default()
        };
        let mut limit = cfg.page_entries.clamp(1, LOG_PAGE_ENTRIES_MAX);
        let mut stalls = 0;
        while out.pages < cfg.catch_up_pages_max as u64 {
            let from = cp.contiguous_applied;
            let req = LogPageRequest {
                tenant: key.tenant.clone(),
                scope: ctx.scope.clone(),
                from,
                filter: LogFilter::default(),
                limit,
            };
            let page = match ctx.remote.log_page(req).await {
                Ok(LogPageReply::Page(page)) => page,
                Ok(LogPageReply::Gap(gap)) => {
                    self.replica().emit(SyncEvent::GapDetected {
                        link: key.clone(),
                        gap: gap.clone(),
                    });
                    out.stop = Some(CatchUpStop::Gap(gap));
                    return Ok(out);
                }
                Err(e) if limit > 1 && too_large(&e) => {
                    limit /= 2;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            out.pages += 1;
            // Every token must belong to the checkpoint's log. Entries at or before what
            // was already delivered (a repeated page, a duplicate across a page boundary
            // or inside a page) are dropped: they are settled already.
            let mut page = page;
            let mut prev = from;
            let mut entries = Vec::with_capacity(page.entries.len());
            for e in page.entries {
                if !cp.accepts_domain(&e.token) {
                    return Err(Error::Protocol(format!(
                        "log page entry {} is from another log than the checkpoint",
                        e.token
                    )));
                }
                if prev.is_none_or(|p| e.token.compare(&p) == Some(std::cmp::Ordering::Greater)) {
                    prev = Some(e.token);
                    entries.push(e);
                } else {
                    out.duplicates_dropped += 1;
                }
            }
            page.entries = entries;
            if let Some(next) = page.next
                && !cp.accepts_domain(&next)
            {
                return Err(Error::Protocol(format!(
                    "log page cursor {next} is from another log than the checkpoint"
                )));
            }
            // A cursor behind the entries (a repeated page) moves nothing back.
            if page.next.is_some_and(|n| {
                prev.is_some_and(|p| n.compare(&p) == Some(std::cmp::Ordering::Less))
            }) {
                page.next = prev;
            }

            // Gate, then apply what is in scope.
            let mut traffic = Traffic::default();
            let mut gated = vec![false; page.entries.len()];
            let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; page.entries.len()];
            let mut to_apply = Vec::new();
            let mut apply_index = Vec::new();
            let gate = Gate::new(page.entries.iter().map(|e| &e.item.message));
            for (i, e) in page.entries.iter().enumerate() {
                traffic.messages += 1;
                traffic.bytes += item_bytes(&e.item.message, e.item.data.as_deref());
                match gate.classify(self.replica(), &key.tenant, &ctx.scope, &e.item.message)? {
                    // Fails closed: not applied, dead-lettered, settled in order.
                    class @ (ScopeClass::OutOfScope | ScopeClass::Unknown) => {
                        self.scope_rejected(key, &e.item.message, class)?;
                        out.dead_lettered += 1;
                        gated[i] = true;
                        outcomes[i] = Some(ApplyOutcome::Unauthorized);
                    }
                    ScopeClass::InScope => {
                        apply_index.push(i);
                        to_apply.push((e.item.message.clone(), e.item.data.clone()));
                    }
                }
            }
            let applied = self.apply_remote(ctx, to_apply).await?;
            if applied.len() != apply_index.len() {
                return Err(Error::Task(
                    "apply returned the wrong number of outcomes".into(),
                ));
            }
            for (i, o) in apply_index.into_iter().zip(applied) {
                outcomes[i] = Some(o);
            }
            // A staged record's blob (wanted by `apply_remote`) is fetched after the
            // pages, outside the link's lock, so small messages are never held up behind
            // it.
            out.applied += outcomes
                .iter()
                .filter(|o| **o == Some(ApplyOutcome::Applied))
                .count() as u64;

            // Move the checkpoint over the settled prefix.
            let mut last_settled = None;
            let mut stop = None;
            let mut terminal = None;
            for ((e, o), gated) in page.entries.iter().zip(outcomes).zip(gated) {
                let o = o.expect("every entry has an outcome");
                match settle(&o) {
                    Settle::Done => {}
                    Settle::Failed => {
                        if !gated {
                            self.record_dead_letter(
                                key,
                                &e.item.message,
                                DeadLetterCategory::PullProcessing,
                                Some(o.as_str().into()),
                                o.to_string(),
                            )?;
                            out.dead_lettered += 1;
                        }
                    }
                    Settle::Open => {
                        // A dependency the scope forbids can never arrive: stop for good.
                        if let ApplyOutcome::Incomplete { missing } = &o
                            && let Some(f) = forbidden_dependency(
                                self.replica(),
                                &key.tenant,
                                &ctx.scope,
                                &e.item.message,
                                missing,
                            )?
                        {
                            out.dead_lettered += 1;
                            terminal = Some(self.closure_failure(key, &e.item.message, f)?);
                        }
                        stop = Some(CatchUpStop::Unsettled {
                            cid: e.item.message.cid(),
                            outcome: o,
                        });
                        break;
                    }
                }
                last_settled = Some(e.token);
            }
            let target = if stop.is_none() {
                page.next.or(last_settled)
            } else {
                last_settled
            };
            if let Some(last) = page.entries.last() {
                cp.observe_received(last.token);
            }
            out.received += traffic;
            if let Some(t) = target
                && cp.contiguous_applied != Some(t)
            {
                cp.commit(t);
                self.save_checkpoint(key, Direction::Pull, cp, traffic)?;
            }
            out.checkpoint = cp.contiguous_applied;
            self.progress(key, Direction::Pull, out.received);
            if let Some(e) = terminal {
                return Err(e);
            }
            if stop.is_some() {
                out.stop = stop;
                return Ok(out);
            }
            if !page.has_more {
                out.reached_head = true;
                return Ok(out);
            }
            if cp.contiguous_applied == from {
                stalls += 1;
                if stalls > STALLED_PAGES_MAX {
                    return Err(Error::Protocol(
                        "log pages say more follows but do not advance".into(),
                    ));
                }
            } else {
                stalls = 0;
            }
        }
        Ok(out)
    }

    // ---- push ----

    /// Sends the local log after the link's push checkpoint; see the
    /// [module docs](self).
    pub async fn push(&self, link: &LinkKey) -> Result<PushOutcome> {
        let ctx = self.link_ctx(link)?;
        let _guard = self.lock_link(link).await;
        self.push_locked(&ctx).await
    }

    async fn push_locked(&self, ctx: &LinkCtx<C::Remote>) -> Result<PushOutcome> {
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let mut cp = self.load(key)?.push;
        let mut out = PushOutcome {
            checkpoint: cp.contiguous_applied,
            ..PushOutcome::default()
        };
        loop {
            let page = match self.replica().changes_since(
                &key.tenant,
                cp.contiguous_applied,
                cfg.push_read_entries.max(1),
            )? {
                LogRead::Page(page) => page,
                LogRead::Gap(gap) => {
                    // The local log was rebuilt or compacted past the checkpoint: only a
                    // reconcile can tell what the remote lacks. Resume after it.
                    cp.reset(gap.latest_available);
                    self.save_checkpoint(key, Direction::Push, cp, Traffic::default())?;
                    self.mark_needs_reconcile(key, None)?;
                    out.checkpoint = cp.contiguous_applied;
                    return Ok(out);
                }
            };
            // Plan: which entries to send, which are settled without sending.
            let mut plan: Vec<(ProgressToken, Option<usize>)> = Vec::new();
            let mut to_send: Vec<PushItem> = Vec::new();
            {
                let echoes = lock(&self.inner.echoes);
                let echoes = echoes.get(&key.endpoint);
                for e in &page.entries {
                    if echoes.is_some_and(|x| x.contains(e.token.position)) {
                        out.echoes_skipped += 1;
                        plan.push((e.token, None));
                        continue;
                    }
                    plan.push((e.token, Some(to_send.len())));
                    to_send.push(PushItem::new(e.message.clone(), e.data.clone()));
                }
            }
            let mut keep = Vec::with_capacity(to_send.len());
            let mut renumber = vec![None; to_send.len()];
            for (i, item) in to_send.into_iter().enumerate() {
                match self
                    .replica()
                    .classify(&key.tenant, &ctx.scope, &item.item.message)?
                {
                    ScopeClass::InScope => {
                        renumber[i] = Some(keep.len());
                        keep.push(item);
                    }
                    ScopeClass::OutOfScope => out.out_of_scope += 1,
                    ScopeClass::Unknown => {
                        out.out_of_scope += 1;
                        self.mark_needs_reconcile(key, Some(ReconcileReason::ScopeUnclassified))?;
                    }
                }
            }
            for (_, slot) in &mut plan {
                *slot = slot.and_then(|i| renumber[i]);
            }
            let to_send = keep;

            // While this page waits for blob uploads, what follows it in the log is sent
            // meanwhile (see `send_small_meanwhile`).
            let lane_from = page.entries.last().map(|e| e.token);
            // Send in batches, in log order; stop after a batch with unsettled messages.
            let mut settles: Vec<Option<Settle>> = vec![None; to_send.len()];
            let mut failure = None;
            for range in batch_ranges(to_send.iter().map(|i| i.bytes), cfg) {
                let start = range.start;
                let (batch_settles, err) = self
                    .send_with_retry(ctx, to_send[range].to_vec(), lane_from, &mut out)
                    .await?;
                let open = batch_settles.contains(&Settle::Open);
                for (i, s) in batch_settles.into_iter().enumerate() {
                    settles[start + i] = Some(s);
                }
                if let Some(e) = err {
                    failure = Some(e);
                    break;
                }
                if open {
                    break;
                }
            }

            // Move the checkpoint over the settled prefix.
            let mut last_settled = None;
            let mut all = true;
            let mut acked = Traffic::default();
            for (token, slot) in &plan {
                if let Some(i) = slot {
                    match settles[*i] {
                        Some(Settle::Done) => {
                            acked.messages += 1;
                            acked.bytes += to_send[*i].bytes;
                        }
                        Some(Settle::Failed) => {}
                        Some(Settle::Open) | None => {
                            all = false;
                            break;
                        }
                    }
                }
                last_settled = Some(*token);
            }
            let target = if all {
                page.next.or(last_settled)
            } else {
                last_settled
            };
            if let Some(t) = target
                && cp.contiguous_applied != Some(t)
            {
                cp.commit(t);
                self.save_checkpoint(key, Direction::Push, cp, acked)?;
            }
            out.checkpoint = cp.contiguous_applied;
            self.progress(key, Direction::Push, out.sent);
            if let Some(e) = failure {
                return Err(e.into());
            }
            if !all {
                return Ok(out);
            }
            if !page.has_more {
                out.reached_head = true;
                return Ok(out);
            }
        }
    }

    /// Sends `items` with the retry schedule. Returns one settle per item and, when the
    /// last attempt failed in transport, that error (after dead-lettering the items).
    /// `lane_from`: see [`write_resolving`](Self::write_resolving).
    async fn send_with_retry(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<PushItem>,
        lane_from: Option<ProgressToken>,
        out: &mut PushOutcome,
    ) -> Result<(Vec<Settle>, Option<TransportError>)> {
        let cfg = &self.inner.config;
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; items.len()];
        let mut last_err = None;
        let schedule: &[u64] = if cfg.push_retry_backoff_ms.is_empty() {
            &[0]
        } else {
            &cfg.push_retry_backoff_ms
        };
        for &delay in schedule {
            let pending: Vec<usize> = (0..items.len())
                .filter(|&i| {
                    outcomes[i]
                        .as_ref()
                        .is_none_or(|o| settle(o) == Settle::Open)
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let batch: Vec<PushItem> = pending.iter().map(|&i| items[i].clone()).collect();
            match self.write_resolving(ctx, batch, lane_from, out).await {
                Ok(results) => {
                    last_err = None;
                    for (i, o) in pending.into_iter().zip(results) {
                        outcomes[i] = Some(o);
                    }
                }
                Err(Error::Transport(e)) if e.is_retryable() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        let mut settles = Vec::with_capacity(items.len());
        let mut exhausted = false;
        for (item, o) in items.iter().zip(outcomes) {
            let s = match &o {
                Some(o) if o.is_success() => Settle::Done,
                Some(o) if o.is_permanent_failure() => {
                    self.record_dead_letter(
                        &ctx.key,
                        &item.item.message,
                        DeadLetterCategory::PushPermanent,
                        Some(o.as_str().into()),
                        o.to_string(),
                    )?;
                    out.dead_lettered += 1;
                    Settle::Failed
                }
                other => {
                    let why = match (other, &last_err) {
                        (_, Some(e)) => e.to_string(),
                        (Some(o), None) => o.to_string(),
                        (None, None) => "not sent".into(),
                    };
                    self.record_dead_letter(
                        &ctx.key,
                        &item.item.message,
                        DeadLetterCategory::PushExhausted,
                        other.as_ref().map(|o| o.as_str().into()),
                        format!(
                            "push retries exhausted after {} attempts: {why}",
                            schedule.len()
                        ),
                    )?;
                    out.dead_lettered += 1;
                    exhausted = true;
                    Settle::Open
                }
            };
            settles.push(s);
        }
        if exhausted {
            out.exhausted = true;
            self.mark_needs_reconcile(&ctx.key, Some(ReconcileReason::PushRetryExhausted))?;
        }
        Ok((settles, last_err))
    }

    /// One attempt at a batch: sends it, and while the remote answers `Incomplete`,
    /// sends exactly the missing dependencies with the messages that need them, in at
    /// most [`SyncConfig::dependency_passes_max`] passes. Returns the outcome of each of
    /// `items`.
    ///
    /// Messages without a blob are sent while the blobs upload. With `lane_from` (the
    /// position of the last of the push's page), the local log after it is sent
    /// meanwhile too, including writes made during the upload, so that a small write
    /// never waits for a large blob ([`send_small_meanwhile`](Self::send_small_meanwhile)).
    async fn write_resolving(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<PushItem>,
        lane_from: Option<ProgressToken>,
        out: &mut PushOutcome,
    ) -> Result<Vec<ApplyOutcome>> {
        let cfg = &self.inner.config;
        let n = items.len();
        let mut all = items;
        let mut supplied: HashSet<Cid> = all.iter().map(|i| i.cid).collect();
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; n];
        let mut todo: Vec<usize> = (0..n).collect();
        for pass in 0..cfg.dependency_passes_max.max(1) {
            // Messages without a blob go at once, while the blobs of the others upload
            // (a small message is never queued behind a large blob); a message naming a
            // blob goes only after its blob.
            let (plain, with_blob): (Vec<usize>, Vec<usize>) = todo
                .iter()
                .partition(|&&i| big_data(&all[i].item.message).is_none());
            let mut blobs: Vec<Cid> = Vec::new();
            for &i in &with_blob {
                if let Some((cid, _)) = big_data(&all[i].item.message)
                    && !blobs.contains(&cid)
                {
                    blobs.push(cid);
                }
            }
            let uploads = async {
                use futures_util::StreamExt;
                let mut sent = 0u64;
                let mut results = futures_util::stream::iter(blobs)
                    .map(|cid| self.push_blob(ctx, cid))
                    .buffer_unordered(cfg.blob_transfers_per_link_max.max(1));
                while let Some(r) = results.next().await {
                    sent += u64::from(r?);
                }
                Ok::<u64, Error>(sent)
            };
            let mut sent_plain = PushOutcome::default();
            let uploads_and_plain = futures_util::future::join(
                uploads,
                self.send_items(ctx, &all, &plain, &mut sent_plain),
            );
            let mut lane_bytes = 0;
            let (uploaded, plain_results) = match lane_from {
                Some(from) if !with_blob.is_empty() => {
                    tokio::select! {
                        biased;
                        done = uploads_and_plain => done,
                        () = self.send_small_meanwhile(ctx, from, &mut lane_bytes) => {
                            unreachable!("the lane runs until the uploads end")
                        }
                    }
                }
                _ => uploads_and_plain.await,
            };
            let mut results = plain_results?;
            out.sent += sent_plain.sent;
            out.sent.bytes += lane_bytes;
            out.blobs_sent += uploaded?;
            if !with_blob.is_empty() {
                results.extend(self.send_items(ctx, &all, &with_blob, out).await?);
                // A message sent ahead may depend on one that named a blob (a later
                // version of a record whose initial write carries a blob): once more.
                let waiting: Vec<usize> = results
                    .iter()
                    .filter(|(i, o)| {
                        plain.contains(i) && matches!(o, ApplyOutcome::Incomplete { .. })
                    })
                    .map(|(i, _)| *i)
                    .collect();
                if !waiting.is_empty() {
                    results.retain(|(i, _)| !waiting.contains(i));
                    results.extend(self.send_items(ctx, &all, &waiting, out).await?);
                }
            }
            let mut missing = BTreeSet::new();
            let mut next = Vec::new();
            for (i, o) in results {
                if let ApplyOutcome::Incomplete { missing: m } = &o {
                    missing.extend(m.iter().cloned());
                    next.push(i);
                }
                if i < n {
                    if o.is_success() {
                        out.sent.messages += 1;
                    }
                    outcomes[i] = Some(o);
                }
            }
            if next.is_empty() || pass + 1 == cfg.dependency_passes_max.max(1) {
                break;
            }
            // Supply exactly what is missing, from the local indexes.
            let deps = self
                .local_dependencies(ctx, &missing, &mut supplied, out)
                .await?;
            if deps.is_empty() {
                break;
            }
            out.dependencies_sent += deps.len() as u64;
            let first_dep = all.len();
            all.extend(deps);
            // Dependencies first, then what waited for them (the remote also orders each
            // batch by dependencies).
            todo = (first_dep..all.len()).chain(next).collect();
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ApplyOutcome::Deferred))
            .collect())
    }

    /// The small-message lane of a push that waits for blob uploads: sends the messages
    /// without a blob that follow `from` in the local log, and then each one written
    /// after, until the caller drops it (when the uploads end). Everything it sends is
    /// sent again by the push once the blobs are up (and answered `Duplicate`): the push
    /// checkpoint still moves only over what the push itself settled. Failures are left
    /// to the push too. Adds the bytes it sent to `bytes`.
    async fn send_small_meanwhile(
        &self,
        ctx: &LinkCtx<C::Remote>,
        mut from: ProgressToken,
        bytes: &mut u64,
    ) {
        let cfg = &self.inner.config;
        let mut changes = self.replica().subscribe();
        loop {
            // Everything after `from` now, page by page.
            loop {
                let page = match self.replica().changes_since(
                    &ctx.key.tenant,
                    Some(from),
                    cfg.push_read_entries.max(1),
                ) {
                    Ok(LogRead::Page(page)) => page,
                    // A gap, or a read error: the push deals with them.
                    Ok(LogRead::Gap(_)) | Err(_) => break,
                };
                let mut items = Vec::new();
                {
                    let echoes = lock(&self.inner.echoes);
                    let echoes = echoes.get(&ctx.key.endpoint);
                    for e in &page.entries {
                        from = e.token;
                        if echoes.is_some_and(|x| x.contains(e.token.position))
                            || big_data(&e.message).is_some()
                        {
                            continue;
                        }
                        if let Ok(ScopeClass::InScope) =
                            self.replica()
                                .classify(&ctx.key.tenant, &ctx.scope, &e.message)
                        {
                            items.push(PushItem::new(e.message.clone(), e.data.clone()));
                        }
                    }
                }
                if !items.is_empty() {
                    let indexes: Vec<usize> = (0..items.len()).collect();
                    let mut sent = PushOutcome::default();
                    if let Err(e) = self.send_items(ctx, &items, &indexes, &mut sent).await {
                        tracing::debug!(link = %ctx.key, error = %e, "sending small messages during a blob upload failed; the push sends them later");
                    }
                    *bytes += sent.sent.bytes;
                }
                if !page.has_more {
                    break;
                }
            }
            // Lagging only loses wake-ups: the next read finds every entry.
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changes.recv().await {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sends `all[i]` for each `i` of `indexes` in write batches, in order; returns each
    /// one's outcome. Counts the bytes sent in `out`.
    async fn send_items(
        &self,
        ctx: &LinkCtx<C::Remote>,
        all: &[PushItem],
        indexes: &[usize],
        out: &mut PushOutcome,
    ) -> Result<Vec<(usize, ApplyOutcome)>> {
        let cfg = &self.inner.config;
        let mut results = Vec::with_capacity(indexes.len());
        for range in batch_ranges(indexes.iter().map(|&i| all[i].bytes), cfg) {
            let chunk = &indexes[range];
            let messages: Vec<MessageData> = chunk.iter().map(|&i| all[i].item.clone()).collect();
            let sent: u64 = chunk.iter().map(|&i| all[i].bytes).sum();
            let reply = ctx
                .remote
                .write_batch(WriteBatchRequest {
                    tenant: ctx.key.tenant.clone(),
                    messages,
                })
                .await?;
            out.sent.bytes += sent;
            if reply.outcomes.len() != chunk.len() {
                return Err(Error::Protocol(format!(
                    "{} outcomes for a batch of {}",
                    reply.outcomes.len(),
                    chunk.len()
                )));
            }
            results.extend(chunk.iter().copied().zip(reply.outcomes));
        }
        Ok(results)
    }

    /// The local messages that satisfy `missing` and were not sent yet; blobs are
    /// uploaded on the spot.
    async fn local_dependencies(
        &self,
        ctx: &LinkCtx<C::Remote>,
        missing: &BTreeSet<Dependency>,
        supplied: &mut HashSet<Cid>,
        out: &mut PushOutcome,
    ) -> Result<Vec<PushItem>> {
        let tenant = &ctx.key.tenant;
        let mut cids = Vec::new();
        for dep in missing {
            match dep {
                Dependency::Protocol(p) => cids.extend(self.ledger().configures(tenant, p)?),
                Dependency::Record(r) => {
                    if let Some(info) = self.ledger().record_info(tenant, r)?
                        && let Some(initial) = info.head.initial
                    {
                        cids.push(initial.cid);
                    }
                }
                Dependency::Blob(c) => {
                    if self.push_blob(ctx, *c).await? {
                        out.blobs_sent += 1;
                    }
                }
            }
        }
        let mut items = Vec::new();
        for cid in cids {
            if supplied.insert(cid)
                && let Some(stored) = self.ledger().get_message(tenant, &cid)?
            {
                items.push(PushItem::new(stored.message, stored.data));
            }
        }
        Ok(items)
    }
}

impl<C: Connector> Engine<C> {
    // ---- reconcile ----

    /// Compares the link's scope with the remote and repairs the difference both ways;
    /// see the [module docs](self).
    pub async fn reconcile(&self, link: &LinkKey) -> Result<ReconcileOutcome> {
        let ctx = self.link_ctx(link)?;
        let guard = self.lock_link(link).await;
        let out = self.reconcile_locked(&ctx).await?;
        drop(guard);
        self.fetch_staged_after(ctx).await?;
        Ok(out)
    }

    async fn remote_root(&self, ctx: &LinkCtx<C::Remote>) -> Result<Hash> {
        let reply = ctx
            .remote
            .root(RootRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
            })
            .await?;
        Ok(Hash(reply.root))
    }

    async fn reconcile_locked(&self, ctx: &LinkCtx<C::Remote>) -> Result<ReconcileOutcome> {
        let key = &ctx.key;
        // Everything up to this local position is in the local tree read below.
        let local_head = self.ledger().log_head(&key.tenant)?;
        let local_root = self.replica().root(&key.tenant, &ctx.scope)?;
        let remote_root = self.remote_root(ctx).await?;
        let mut out = ReconcileOutcome {
            local_root,
            remote_root,
            diffed: false,
            only_local: 0,
            only_remote: 0,
            round_trips: 0,
            pulled: Traffic::default(),
            pushed: Traffic::default(),
            dead_lettered: 0,
            post_local_root: local_root,
            post_remote_root: remote_root,
            converged: local_root == remote_root,
        };
        if !out.converged {
            let diff = self.diff(ctx).await?;
            out.diffed = true;
            out.only_local = diff.only_local.len() as u64;
            out.only_remote = diff.only_remote.len() as u64;
            out.round_trips = diff.round_trips as u64;

            let only_remote: Vec<Cid> = diff
                .only_remote
                .iter()
                .map(|k| Cid::from_bytes(*k))
                .collect();
            self.fetch_and_apply(ctx, &only_remote, &mut out).await?;

            // Messages the remote refused for good are not offered again until the
            // application clears their dead letters.
            let refused: HashSet<Cid> = self
                .ledger()
                .dead_letters()
                .list(&DeadLetterFilter {
                    tenant: Some(key.tenant.clone()),
                    endpoint: Some(key.endpoint.clone()),
                    categories: vec![DeadLetterCategory::PushPermanent],
                    protocol: None,
                })?
                .into_iter()
                .map(|d| d.cid)
                .collect();
            let mut items = Vec::new();
            for k in &diff.only_local {
                let cid = Cid::from_bytes(*k);
                if refused.contains(&cid) {
                    continue;
                }
                if let Some(stored) = self.ledger().get_message(&key.tenant, &cid)? {
                    items.push(PushItem::new(stored.message, stored.data));
                }
            }
            let mut push = PushOutcome::default();
            for range in batch_ranges(items.iter().map(|i| i.bytes), &self.inner.config) {
                let (_, err) = self
                    .send_with_retry(ctx, items[range].to_vec(), None, &mut push)
                    .await?;
                if let Some(e) = err {
                    return Err(e.into());
                }
            }
            out.pushed = push.sent;
            out.dead_lettered += push.dead_lettered;
            out.post_local_root = self.replica().root(&key.tenant, &ctx.scope)?;
            out.post_remote_root = self.remote_root(ctx).await?;
            out.converged = out.post_local_root == out.post_remote_root;
        }
        lock(&self.inner.last_reconcile_ms).insert(key.clone(), self.now_ms());
        if out.converged {
            self.on_converged(key, local_head)?;
        } else {
            self.mark_needs_reconcile(key, None)?;
        }
        Ok(out)
    }

    /// Equal roots: clear the flag, note the time, move the push checkpoint up to what
    /// the roots proved the remote holds, clear what convergence clears.
    fn on_converged(&self, key: &LinkKey, local_head: Option<ProgressToken>) -> Result<()> {
        let now = self.now_ms();
        let mut push_moved = None;
        self.ledger().links().update(key, self.durability(), |s| {
            s.needs_reconcile = false;
            s.last_sync_ms = Some(now);
            s.last_activity_ms = Some(now);
            if let Some(head) = local_head {
                let behind = match s.push.contiguous_applied {
                    None => true,
                    Some(cp) => head.compare(&cp) == Some(std::cmp::Ordering::Greater),
                };
                if behind {
                    s.push.commit(head);
                    push_moved = Some(head);
                }
            }
        })?;
        if let Some(token) = push_moved {
            self.replica().emit(SyncEvent::CheckpointAdvanced {
                link: key.clone(),
                direction: Direction::Push,
                token,
            });
        }
        self.ledger().dead_letters().clear_matching(
            &DeadLetterFilter {
                tenant: Some(key.tenant.clone()),
                endpoint: Some(key.endpoint.clone()),
                categories: DeadLetterCategory::ALL
                    .into_iter()
                    .filter(|c| c.cleared_by_convergence())
                    .collect(),
                protocol: None,
            },
            self.durability(),
        )?;
        self.replica()
            .emit(SyncEvent::ReconcileCompleted { link: key.clone() });
        Ok(())
    }

    /// Runs the SMT diff of the link's scope against the remote's responder. Full scopes
    /// diff the live tree and fall back to a snapshot when local writes change it
    /// meanwhile; other scopes diff a snapshot (their trees are assembled per call).
    async fn diff(&self, ctx: &LinkCtx<C::Remote>) -> Result<sync_smt::Diff> {
        let salt = self.salt();
        let snapshot = |this: &Self| -> Result<Tree> {
            this.replica()
                .with_tree(&ctx.key.tenant, &ctx.scope, Tree::clone)
        };
        let mut tree = match ctx.scope {
            Scope::Full => None,
            _ => Some(snapshot(self)?),
        };
        loop {
            match self.diff_once(ctx, tree.as_ref(), salt).await? {
                Some(diff) => return Ok(diff),
                None if tree.is_none() => tree = Some(snapshot(self)?),
                None => return Err(Error::Protocol("diff snapshot changed".into())),
            }
        }
    }

    fn on_tree<R>(
        &self,
        ctx: &LinkCtx<C::Remote>,
        snapshot: Option<&Tree>,
        f: impl FnOnce(&Tree) -> R,
    ) -> Result<R> {
        match snapshot {
            Some(tree) => Ok(f(tree)),
            None => self.replica().with_tree(&ctx.key.tenant, &ctx.scope, f),
        }
    }

    /// One diff session; `None` when the live local tree changed under it.
    async fn diff_once(
        &self,
        ctx: &LinkCtx<C::Remote>,
        snapshot: Option<&Tree>,
        salt: [u8; 16],
    ) -> Result<Option<sync_smt::Diff>> {
        let smt = |e: sync_smt::Error| Error::Protocol(format!("diff: {e}"));
        let (mut session, mut request) = self
            .on_tree(ctx, snapshot, |t| {
                Initiator::start(t, DiffConfig::default(), salt)
            })?
            .map_err(smt)?;
        loop {
            let reply = ctx
                .remote
                .diff_round(DiffRequest {
                    tenant: ctx.key.tenant.clone(),
                    scope: ctx.scope.clone(),
                    round: request.encode(),
                })
                .await?;
            match self.on_tree(ctx, snapshot, |t| session.handle_bytes(t, &reply.round))? {
                Ok(Step::Send(next)) => request = next,
                Ok(Step::Done(diff)) => return Ok(Some(diff)),
                Err(sync_smt::Error::LocalChanged) => return Ok(None),
                Err(e) => return Err(smt(e)),
            }
        }
    }

    /// Reads `cids` from the remote in chunks and applies them; what waits for a
    /// dependency fetched in a later chunk is applied again after the last chunk, in
    /// bounded passes; what still fails is dead-lettered `pull_processing`.
    async fn fetch_and_apply(
        &self,
        ctx: &LinkCtx<C::Remote>,
        cids: &[Cid],
        out: &mut ReconcileOutcome,
    ) -> Result<()> {
        let key = &ctx.key;
        let mut pending: Vec<(Message, Option<Vec<u8>>)> = Vec::new();
        let mut last_outcome: HashMap<Cid, ApplyOutcome> = HashMap::new();
        for chunk in cids.chunks(self.inner.config.read_batch_cids.clamp(1, READ_CIDS_MAX)) {
            let reply = ctx
                .remote
                .read_messages(ReadMessagesRequest {
                    tenant: key.tenant.clone(),
                    scope: ctx.scope.clone(),
                    cids: chunk.to_vec(),
                })
                .await?;
            let wanted: HashSet<&Cid> = chunk.iter().collect();
            let mut items = Vec::with_capacity(reply.found.len());
            let gate = Gate::new(reply.found.iter().map(|f| &f.message));
            for found in reply.found {
                if !wanted.contains(&found.message.cid()) {
                    return Err(Error::Protocol(
                        "read returned a message not asked for".into(),
                    ));
                }
                match gate.classify(self.replica(), &key.tenant, &ctx.scope, &found.message)? {
                    class @ (ScopeClass::OutOfScope | ScopeClass::Unknown) => {
                        self.scope_rejected(key, &found.message, class)?;
                        out.dead_lettered += 1;
                    }
                    ScopeClass::InScope => {
                        out.pulled.messages += 1;
                        out.pulled.bytes += item_bytes(&found.message, found.data.as_deref());
                        items.push((found.message, found.data));
                    }
                }
            }
            self.apply_round(ctx, items, &mut pending, &mut last_outcome)
                .await?;
            self.progress(key, Direction::Pull, out.pulled);
        }
        for _pass in 0..self.inner.config.dependency_passes_max {
            if pending.is_empty() {
                break;
            }
            let before = pending.len();
            let items = std::mem::take(&mut pending);
            self.apply_round(ctx, items, &mut pending, &mut last_outcome)
                .await?;
            if pending.len() == before {
                break;
            }
        }
        let mut terminal = None;
        for (message, _) in pending {
            let outcome = last_outcome
                .remove(&message.cid())
                .unwrap_or(ApplyOutcome::Deferred);
            // A dependency the scope forbids can never arrive: stop for good.
            if let ApplyOutcome::Incomplete { missing } = &outcome
                && let Some(f) = forbidden_dependency(
                    self.replica(),
                    &key.tenant,
                    &ctx.scope,
                    &message,
                    missing,
                )?
            {
                out.dead_lettered += 1;
                let e = self.closure_failure(key, &message, f)?;
                terminal.get_or_insert(e);
                continue;
            }
            self.record_dead_letter(
                key,
                &message,
                DeadLetterCategory::PullProcessing,
                Some(outcome.as_str().into()),
                format!("pull processing failed after retry passes: {outcome}"),
            )?;
            out.dead_lettered += 1;
        }
        match terminal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Applies `items`; settled ones are done (blobs fetched, refusals dead-lettered),
    /// unsettled ones go to `pending`.
    async fn apply_round(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<(Message, Option<Vec<u8>>)>,
        pending: &mut Vec<(Message, Option<Vec<u8>>)>,
        last_outcome: &mut HashMap<Cid, ApplyOutcome>,
    ) -> Result<()> {
        let outcomes = self.apply_remote(ctx, items.clone()).await?;
        for (item, o) in items.into_iter().zip(outcomes) {
            match settle(&o) {
                // A staged record's blob was wanted by `apply_remote`.
                Settle::Done => {}
                Settle::Failed => {
                    self.record_dead_letter(
                        &ctx.key,
                        &item.0,
                        DeadLetterCategory::PullProcessing,
                        Some(o.as_str().into()),
                        o.to_string(),
                    )?;
                }
                Settle::Open => {
                    last_outcome.insert(item.0.cid(), o);
                    pending.push(item);
                }
            }
        }
        Ok(())
    }

    // ---- one link, every link ----

    /// Syncs one link: catch-up, push, and a reconcile when due; see the
    /// [module docs](self).
    pub async fn sync_link(&self, link: &LinkKey) -> LinkReport {
        let mut report = LinkReport::new(link.clone());
        let result = self.sync_link_inner(link, &mut report).await;
        let connectivity = match &result {
            Err(e) if is_unreachable(e) => Connectivity::Offline,
            Err(Error::UnknownLink(_)) => Connectivity::Unknown,
            _ => Connectivity::Online,
        };
        if let Err(e) = self.set_connectivity(link, connectivity) {
            tracing::warn!(link = %link, error = %e, "could not save the link's connectivity");
        }
        if result.is_ok()
            && report.converged() == Some(true)
            && let Err(e) = self.settle_status(link)
        {
            tracing::warn!(link = %link, error = %e, "could not save the link's status");
        }
        if let Err(e) = result {
            tracing::debug!(link = %link, error = %e, "link sync failed");
            report.error = Some(e);
        }
        report
    }

    fn set_connectivity(&self, key: &LinkKey, to: Connectivity) -> Result<()> {
        if to == Connectivity::Unknown {
            return Ok(());
        }
        let Some(state) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        if state.connectivity != to {
            self.ledger()
                .links()
                .update(key, self.durability(), |s| s.connectivity = to)?;
            self.replica().emit(SyncEvent::ConnectivityChanged {
                link: key.clone(),
                from: state.connectivity,
                to,
            });
        }
        Ok(())
    }

    /// After a one-shot sync that converged: the status `crate::link_status` gives,
    /// persisted, then announced.
    fn settle_status(&self, key: &LinkKey) -> Result<()> {
        let Some(state) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        if crate::link_status::after_converged_sync(state.status).is_empty() {
            return Ok(());
        }
        // The path is taken from the status under the registry's lock, not the one read
        // above, in case a live driver changed it in between.
        let mut walked = Vec::new();
        self.ledger().links().update(key, self.durability(), |s| {
            for &to in crate::link_status::after_converged_sync(s.status) {
                match s.set_status(to) {
                    Ok(from) => walked.push((from, to)),
                    Err(_) => break,
                }
            }
        })?;
        for (from, to) in walked {
            self.replica().emit(SyncEvent::LinkStatusChanged {
                link: key.clone(),
                from,
                to,
            });
        }
        Ok(())
    }

    async fn sync_link_inner(&self, key: &LinkKey, report: &mut LinkReport) -> Result<()> {
        let ctx = self.link_ctx(key)?;
        let guard = self.lock_link(key).await;
        self.sync_link_locked(&ctx, report).await?;
        drop(guard);
        // 4. Fetch the blobs of staged records, outside the link's lock.
        let fetched = self.fetch_staged(&ctx).await?;
        if let Some(c) = report.catch_up.as_mut() {
            c.blobs_fetched += fetched;
        }
        Ok(())
    }

    async fn sync_link_locked(
        &self,
        ctx: &LinkCtx<C::Remote>,
        report: &mut LinkReport,
    ) -> Result<()> {
        let key = &ctx.key;
        let cfg = &self.inner.config;

        // 1. Pull what the remote logged since the checkpoint.
        let mut catch_up = self.catch_up_locked(ctx).await?;
        report.pulled += catch_up.received;
        if let Some(stop) = catch_up.stop.clone() {
            // A gap or a missing dependency: the tree diff finds what the log cannot
            // give, then the log resumes.
            let reconcile = self.reconcile_locked(ctx).await?;
            report.pulled += reconcile.pulled;
            report.pushed += reconcile.pushed;
            if let CatchUpStop::Gap(gap) = &stop
                && reconcile.converged
            {
                let mut cp = self.load(key)?.pull;
                cp.reset(gap.latest_available);
                self.save_checkpoint(key, Direction::Pull, cp, Traffic::default())?;
            }
            report.reconcile = Some(reconcile);
            catch_up = self.catch_up_locked(ctx).await?;
            report.pulled += catch_up.received;
        }
        report.catch_up = Some(catch_up);

        // 2. Push the local log since the checkpoint.
        let push = self.push_locked(ctx).await?;
        report.pushed += push.sent;
        report.push = Some(push);

        // 3. Reconcile when due; compare roots anyway when that is cheap.
        let state = self.load(key)?;
        let now = self.now_ms();
        let last = lock(&self.inner.last_reconcile_ms).get(key).copied();
        let due = state.last_sync_ms.is_none()
            || state.needs_reconcile
            || last.is_none_or(|t| now.saturating_sub(t) >= cfg.integrity_check_ms);
        let cheap = cfg.verify_roots && !matches!(ctx.scope, Scope::Projection(_));
        if due || cheap {
            let reconcile = self.reconcile_locked(ctx).await?;
            report.pulled += reconcile.pulled;
            report.pushed += reconcile.pushed;
            report.reconcile = Some(reconcile);
        }
        Ok(())
    }

    /// Syncs every registered link once; see the [module docs](self). Links are grouped
    /// by endpoint; groups run concurrently, and an unreachable endpoint stops only its
    /// own group. A second call waits for the first.
    pub async fn sync_once(&self) -> SyncReport {
        let _sync = self.inner.sync_lock.lock().await;
        let mut report = SyncReport::default();
        let links = match self.links() {
            Ok(links) => links,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let mut groups: Vec<(Endpoint, Vec<LinkKey>)> = Vec::new();
        for link in links {
            match groups.iter_mut().find(|(e, _)| *e == link.key.endpoint) {
                Some((_, keys)) => keys.push(link.key),
                None => groups.push((link.key.endpoint.clone(), vec![link.key])),
            }
        }
        let runs = groups.into_iter().map(|(_, keys)| self.sync_group(keys));
        for (links, ok) in futures_util::future::join_all(runs).await {
            report.links.extend(links);
            if ok {
                report.endpoints_ok += 1;
            } else {
                report.endpoints_failed += 1;
            }
        }
        report
    }

    async fn sync_group(&self, keys: Vec<LinkKey>) -> (Vec<LinkReport>, bool) {
        let mut reports = Vec::with_capacity(keys.len());
        let mut keys = keys.into_iter();
        for key in keys.by_ref() {
            let report = self.sync_link(&key).await;
            let unreachable = report.error.as_ref().is_some_and(is_unreachable);
            reports.push(report);
            if unreachable {
                for skipped in keys {
                    let mut r = LinkReport::new(skipped.clone());
                    r.error = Some(Error::Transport(TransportError::Unreachable(format!(
                        "skipped: {} is unreachable",
                        skipped.endpoint
                    ))));
                    reports.push(r);
                }
                return (reports, false);
            }
        }
        (reports, true)
    }

    // ---- health ----

    /// Local log entries after the link's push checkpoint that its scope may cover
    /// (for a projection, every entry of its protocols: an upper bound).
    pub fn pending_outbound(&self, link: &LinkKey) -> Result<u64> {
        let state = self.load(link)?;
        self.pending_of(&state)
    }

    fn pending_of(&self, state: &LinkState) -> Result<u64> {
        let ledger = self.ledger();
        let tenant = &state.key.tenant;
        let Some(info) = ledger.log_info(tenant)? else {
            return Ok(0);
        };
        let after = state
            .push
            .contiguous_applied
            .filter(|t| t.stream_id == info.stream_id && t.epoch == info.epoch)
            .map_or(0, |t| t.position);
        match state.scope.protocol_list() {
            None => Ok(ledger.count_log_after(tenant, after, None)?),
            Some(protocols) => {
                let mut n = 0;
                let mut seen = BTreeSet::new();
                for p in protocols {
                    if seen.insert(p) {
                        n += ledger.count_log_after(tenant, after, Some(p))?;
                    }
                }
                Ok(n)
            }
        }
    }

    /// Replication health over every registered link.
    pub fn health(&self) -> Result<HealthSummary> {
        let links = self.links()?;
        let connectivity = if links.iter().any(|l| l.connectivity == Connectivity::Online) {
            Connectivity::Online
        } else if links
            .iter()
            .any(|l| l.connectivity == Connectivity::Offline)
        {
            Connectivity::Offline
        } else {
            Connectivity::Unknown
        };
        let letters = self.ledger().dead_letters();
        let failed = letters.count(&DeadLetterFilter::default())?;
        let closure = letters.count(&DeadLetterFilter {
            categories: vec![DeadLetterCategory::Closure],
            ..DeadLetterFilter::default()
        })?;
        let degraded = links.iter().filter(|l| l.status.is_unhealthy()).count() as u64;
        let mut pending = 0;
        for l in &links {
            pending += self.pending_of(l)?;
        }
        let last_sync = links.iter().filter_map(|l| l.last_sync_ms).max();
        Ok(HealthSummary::new(
            connectivity,
            failed,
            closure,
            degraded,
            pending,
            last_sync,
        ))
    }

    /// Whether the link is caught up now: nothing local waits to be pushed, and
    /// everything the remote logged after the pull checkpoint is already held locally
    /// (typically this replica's own pushes, which the next catch-up skips over). The
    /// remote is asked, so it never answers early.
    pub async fn caught_up(&self, link: &LinkKey) -> Result<bool> {
        let ctx = self.link_ctx(link)?;
        let state = self.load(link)?;
        if self.pending_of(&state)? > 0 {
            return Ok(false);
        }
        let mut from = state.pull.contiguous_applied;
        for _ in 0..self.inner.config.catch_up_pages_max {
            let reply = ctx
                .remote
                .log_page(LogPageRequest {
                    tenant: link.tenant.clone(),
                    scope: ctx.scope.clone(),
                    from,
                    filter: LogFilter::default(),
                    limit: self
                        .inner
                        .config
                        .page_entries
                        .clamp(1, LOG_PAGE_ENTRIES_MAX),
                })
                .await?;
            let LogPageReply::Page(page) = reply else {
                return Ok(false);
            };
            for e in &page.entries {
                if !self.ledger().has_message(&link.tenant, &e.token.cid)? {
                    return Ok(false);
                }
            }
            if !page.has_more {
                return Ok(true);
            }
            if page.next == from {
                return Ok(false);
            }
            from = page.next;
        }
        Ok(false)
    }

    /// The dead letters of every link, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self
            .ledger()
            .dead_letters()
            .list(&DeadLetterFilter::default())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_ranges_merge_and_stay_bounded() {
        let mut e = Echoes::default();
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
            batch_ranges(sizes.into_iter(), &cfg),
            vec![0..3, 3..5, 5..6, 6..8]
        );
        assert!(batch_ranges(std::iter::empty(), &cfg).is_empty());
    }

    #[test]
    fn salts_come_from_the_seed() {
        let mut a = 7;
        let mut b = 7;
        assert_eq!(splitmix64(&mut a), splitmix64(&mut b));
        assert_ne!(splitmix64(&mut a), 7);
    }
}
