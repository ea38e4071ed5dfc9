//! The server node: the transport's [`Handler`] over a multi-tenant [`Replica`].
//!
//! The transport has already verified the caller's token and checked the request's
//! tenant, action and scope against it; the handler cuts every answer to the scope the
//! request names (which lies inside the grant):
//!
//! - roots and diffs run over the tree of that scope;
//! - log pages and message reads leave out messages outside it (a page still advances
//!   its cursor past them, so a filtered reader never re-reads them);
//! - a delete is classified by its record's initial write, and one outside the caller's
//!   grant is answered `Unauthorized`;
//! - a delegate's message authored by someone else is `Unauthorized` (`Duplicate` when
//!   already held); a version naming another protocol than its record's is `Invalid`
//!   (the replica's apply decides it against the stored record);
//! - blobs are stated, read, uploaded and named under the rules of the `blobs` module
//!   (a blob belongs to the tenants whose writes name it; uploads are per tenant and
//!   hold a slot only while their request runs).
//!
//! Storage calls are synchronous (the ledger has no async runtime); the ones that can
//! wait on an fsync (apply, blob writes) run on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sync_ledger::{DeadLetterFilter, LogQuery, LogRead};
use sync_smt::{Limits, Responder};
use sync_transport::node::{BlobWriteGuard, Handler, RequestContext};
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest, LogEntry,
    LogExtent, LogFilter, LogPage, LogPageReply, LogPageRequest, MessageData, ReadMessagesReply,
    ReadMessagesRequest, RootReply, RootRequest,
};
use sync_transport::token::Role;
use sync_transport::{HandlerError, LogExtentQuery};
use sync_types::{
    Actions, ApplyOutcome, BatchInitialWrites, Connectivity, DeadLetterCategory, Dependency,
    Direction, HealthSummary, KnownRanges, Message, ProgressToken, RecordId, Scope, ScopeClass,
    TenantId,
};
use tokio::sync::watch;

use crate::replica::{Origin, Replica};

mod blobs;
mod extent;
mod wake;

pub use blobs::{
    BLOB_REFERRERS_CHECKED_MAX, PAUSED_UPLOADS_MAX, PAUSED_UPLOADS_PER_TENANT_MAX,
    POSSESSIONS_PER_TENANT_MAX,
};

/// Default largest blob a tenant may upload to a node, in bytes (4 GiB).
pub const BLOB_BYTES_MAX_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;
/// Default number of blob upload requests a node runs at once.
pub const BLOB_UPLOADS_MAX_DEFAULT: usize = 16;
/// Default number of blob upload requests one tenant runs at once.
pub const BLOB_UPLOADS_PER_TENANT_MAX_DEFAULT: usize = 4;

/// What blob uploads a node accepts; every limit has its unit last.
#[derive(Clone, Debug)]
pub struct BlobLimits {
    /// Largest blob a tenant may upload, in bytes. Default [`BLOB_BYTES_MAX_DEFAULT`].
    pub blob_bytes_max: u64,
    /// Per-tenant overrides of [`blob_bytes_max`](Self::blob_bytes_max), in bytes.
    pub tenant_blob_bytes_max: HashMap<TenantId, u64>,
    /// Upload requests running at once over all tenants; one beyond this is refused
    /// as unavailable (retryable, naming the limit) until one ends. A request holds its
    /// slot only while it runs: one whose connection goes gives it back at once.
    /// Default [`BLOB_UPLOADS_MAX_DEFAULT`].
    pub uploads_max: usize,
    /// Upload requests running at once per tenant, so one tenant cannot take the
    /// node's slots. Default [`BLOB_UPLOADS_PER_TENANT_MAX_DEFAULT`].
    pub uploads_per_tenant_max: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            blob_bytes_max: BLOB_BYTES_MAX_DEFAULT,
            tenant_blob_bytes_max: HashMap::new(),
            uploads_max: BLOB_UPLOADS_MAX_DEFAULT,
            uploads_per_tenant_max: BLOB_UPLOADS_PER_TENANT_MAX_DEFAULT,
        }
    }
}

impl BlobLimits {
    /// The largest blob `tenant` may upload, in bytes.
    pub fn blob_bytes_max_for(&self, tenant: &TenantId) -> u64 {
        self.tenant_blob_bytes_max
            .get(tenant)
            .copied()
            .unwrap_or(self.blob_bytes_max)
    }
}

/// Serves a replica to remote peers. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaHandler {
    replica: Replica,
    responder: Arc<Responder>,
    changes: Arc<wake::Wakes>,
    blob_limits: Arc<BlobLimits>,
    blobs: Arc<blobs::NodeBlobs>,
    /// The bus to the other processes of a shared store; held here so it lives as
    /// long as the handler (the ledger's listener keeps only a weak reference).
    _bus: Option<Arc<dyn sync_ledger::ChangeBus>>,
}

impl std::fmt::Debug for ReplicaHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandler")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl ReplicaHandler {
    /// What the handler answers for a pushed message without applying it, if anything:
    ///
    /// - a delete the transport could not classify alone (under a projection grant) is
    ///   checked against the grant through its record, and `Unauthorized` outside it;
    /// - a delegate writes only as its own principal: a message of another author is
    ///   `Unauthorized`, unless the node already holds it (`Duplicate`: a replica relays
    ///   what it pulled, and relaying a held message changes nothing);
    /// - a write may name a blob only when the grant can read it or uploaded it, else
    ///   `Incomplete` asking for the blob (the sender uploads it, proving it holds it).
    ///
    /// A message naming another protocol than its stored record is refused by the
    /// replica's apply (`Invalid`), for owners and delegates alike.
    ///
    /// A delete's record is looked up in the store, then among `batch`: the initial
    /// writes of the same push that passed these checks (the store first, so a write in
    /// the batch never lends a place to a record that is stored elsewhere).
    fn refusal(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        message: &Message,
        batch: &BatchInitialWrites,
    ) -> Result<Option<ApplyOutcome>, HandlerError> {
        let claims = &ctx.claims;
        if claims.role == Role::Delegate && *message.author() != claims.principal {
            let held = self
                .replica
                .ledger()
                .has_message(tenant, &message.cid())
                .map_err(internal)?;
            return Ok(Some(if held {
                ApplyOutcome::Duplicate
            } else {
                ApplyOutcome::Unauthorized
            }));
        }
        if matches!(message, Message::Delete(_))
            && claims
                .scope
                .gate(Direction::Push, message, &|record: &RecordId| {
                    Ok::<_, crate::Error>(match self.replica.record_place(tenant, record)? {
                        Some(place) => Some(place),
                        None => batch.get(record).cloned(),
                    })
                })
                .map_err(internal)?
                != ScopeClass::InScope
        {
            return Ok(Some(ApplyOutcome::Unauthorized));
        }
        // A write may name a blob only when its grant can read it or uploaded it:
        // otherwise naming a cid would be a way to read someone else's blob.
        if let Some(blob) = crate::blob::blob_ref(message)
            && !self.blob_nameable(tenant, &claims.scope, &blob.data_cid)?
        {
            return Ok(Some(ApplyOutcome::Incomplete {
                missing: vec![Dependency::Blob(blob.data_cid)],
            }));
        }
        Ok(None)
    }

    /// A handler over `replica`, with default diff limits.
    pub fn new(replica: Replica) -> Self {
        let changes: Arc<wake::Wakes> = Arc::default();
        let wakes = Arc::downgrade(&changes);
        // The ledger calls this after every commit that appended to a tenant's log; the
        // watch value is only a wake-up, subscriptions read the durable log.
        replica
            .ledger()
            .add_listener(move |tenant: &TenantId, head: u64| {
                if let Some(wakes) = wakes.upgrade() {
                    wakes.head(tenant, head);
                }
            });
        Self {
            replica,
            responder: Arc::new(Responder::new(Limits::default())),
            changes,
            blob_limits: Arc::new(BlobLimits::default()),
            blobs: Arc::default(),
            _bus: None,
        }
    }

    /// Sets the blob upload limits. Default [`BlobLimits::default`].
    #[must_use]
    pub fn with_blob_limits(mut self, limits: BlobLimits) -> Self {
        self.blob_limits = Arc::new(limits);
        self
    }

    /// Connects the node to the other processes serving the same shared store: every
    /// commit of this node is announced on `bus` after it (`ChangeBus::publish`; a
    /// store that announces inside the commit itself, as PostgreSQL's `pg_notify` does,
    /// has a bus whose `publish` does nothing), and every announcement heard
    /// wakes this node's subscriptions of that tenant (a reconnect of the bus wakes them
    /// all). A lost announcement costs latency, never data: subscriptions read the log,
    /// and re-read it on their own schedule (`ServerConfig::live_poll_interval_ms`).
    #[must_use]
    pub fn with_bus(self, bus: Arc<dyn sync_ledger::ChangeBus>) -> Self {
        let publisher = Arc::downgrade(&bus);
        self.replica
            .ledger()
            .add_listener(move |tenant: &TenantId, head: u64| {
                if let Some(bus) = publisher.upgrade() {
                    bus.publish(tenant, head);
                }
            });
        let wakes = Arc::downgrade(&self.changes);
        bus.subscribe(Arc::new(move |news| {
            if let Some(wakes) = wakes.upgrade() {
                match news {
                    sync_ledger::BusNews::Head { tenant, head } => wakes.head(&tenant, head),
                    sync_ledger::BusNews::Lost => wakes.all(),
                }
            }
        }));
        Self {
            _bus: Some(bus),
            ..self
        }
    }

    /// The replica served.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The scope gate with this node's records: [`Direction::Pull`] for what it serves
    /// under a grant, [`Direction::Push`] for what it takes.
    fn classify(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        direction: Direction,
        message: &Message,
    ) -> Result<ScopeClass, HandlerError> {
        self.replica
            .classify(tenant, scope, direction, message)
            .map_err(internal)
    }
}

/// A failure of the node's own storage or tasks, as the caller sees it: a shared store
/// that failed transiently (PostgreSQL restarting, a dropped connection; retrying is
/// safe) or a poisoned ledger (refused until the node reopens it) is `Unavailable`
/// (503, retried, and a live subscription is told to resubscribe later); anything else
/// is `Internal`.
fn internal(e: impl Into<crate::Error>) -> HandlerError {
    match e.into() {
        e @ crate::Error::Ledger(sync_ledger::Error::Retry(_) | sync_ledger::Error::Poisoned) => {
            HandlerError::Unavailable(e.to_string())
        }
        e => HandlerError::Internal(e.to_string()),
    }
}

/// The one protocol a page request reads, when it reads one: the ledger's per-protocol
/// log index filters it; other scopes are filtered entry by entry, and the page's
/// cursor still moves past what was left out.
fn single_protocol(req: &LogPageRequest) -> Option<sync_types::ProtocolName> {
    match (&req.scope, &req.filter.protocols) {
        (_, Some(set)) if set.protocols().len() == 1 => Some(set.protocols()[0].clone()),
        (Scope::ProtocolSet(set), None) if set.protocols().len() == 1 => {
            Some(set.protocols()[0].clone())
        }
        _ => None,
    }
}

fn in_filter(filter: &LogFilter, message: &Message) -> bool {
    filter
        .protocols
        .as_ref()
        .is_none_or(|set| set.contains(message.protocol()))
}

impl Handler for ReplicaHandler {
    async fn root(
        &self,
        _ctx: &RequestContext,
        req: RootRequest,
    ) -> Result<RootReply, HandlerError> {
        let root = self
            .replica
            .root(&req.tenant, &req.scope)
            .map_err(internal)?;
        Ok(RootReply {
            root: *root.as_bytes(),
        })
    }

    async fn diff_round(
        &self,
        _ctx: &RequestContext,
        req: DiffRequest,
    ) -> Result<DiffReply, HandlerError> {
        let responder = self.responder.clone();
        let round = self
            .replica
            .with_tree(&req.tenant, &req.scope, |tree| {
                responder.respond_bytes(tree, &req.round)
            })
            .map_err(internal)?
            .map_err(|e| HandlerError::BadRequest(format!("diff round: {e}")))?;
        Ok(DiffReply { round })
    }

    async fn log_page(
        &self,
        _ctx: &RequestContext,
        req: LogPageRequest,
    ) -> Result<LogPageReply, HandlerError> {
        let ledger = self.replica.ledger();
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let mut query = LogQuery::after(req.from, limit);
        query.protocol = single_protocol(&req);
        let page = match ledger.read_log(&req.tenant, &query).map_err(internal)? {
            LogRead::Gap(gap) => return Ok(LogPageReply::Gap(gap)),
            LogRead::Page(page) => page,
        };
        let mut entries = Vec::with_capacity(page.entries.len());
        for entry in page.entries {
            if !in_filter(&req.filter, &entry.message)
                || self.classify(&req.tenant, &req.scope, Direction::Pull, &entry.message)?
                    != ScopeClass::InScope
            {
                continue;
            }
            entries.push(LogEntry {
                token: entry.token,
                item: MessageData {
                    message: entry.message,
                    data: entry.data,
                },
            });
        }
        Ok(LogPageReply::Page(LogPage {
            entries,
            next: page.next,
            has_more: page.has_more,
        }))
    }

    async fn log_extent(
        &self,
        _ctx: &RequestContext,
        req: LogExtentQuery,
    ) -> Result<LogExtent, HandlerError> {
        if !req.count {
            return self.extent(&req);
        }
        // A count reads the rest of the log: on the blocking pool, not a worker.
        let handler = self.clone();
        tokio::task::spawn_blocking(move || handler.extent(&req))
            .await
            .map_err(internal)?
    }

    async fn read_messages(
        &self,
        _ctx: &RequestContext,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, HandlerError> {
        let ledger = self.replica.ledger();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for cid in req.cids {
            match ledger.get_message(&req.tenant, &cid).map_err(internal)? {
                Some(stored)
                    if self.classify(
                        &req.tenant,
                        &req.scope,
                        Direction::Pull,
                        &stored.message,
                    )? == ScopeClass::InScope =>
                {
                    found.push(MessageData {
                        message: stored.message,
                        data: stored.data,
                    });
                }
                _ => missing.push(cid),
            }
        }
        Ok(ReadMessagesReply { found, missing })
    }

    async fn apply(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<Vec<ApplyOutcome>, HandlerError> {
        let placed = self.apply_with_positions(ctx, tenant, messages).await?;
        Ok(placed.into_iter().map(|(o, _)| o).collect())
    }

    async fn apply_placed(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<(Vec<ApplyOutcome>, Option<KnownRanges>), HandlerError> {
        let placed = self.apply_with_positions(ctx, tenant, messages).await?;
        let mut known: Option<KnownRanges> = None;
        for token in placed.iter().filter_map(|(_, t)| t.as_ref()) {
            let k = known.get_or_insert_with(|| KnownRanges::new(token.stream_id, token.epoch));
            if k.same_log(token) {
                k.insert(token.position);
            }
        }
        Ok((placed.into_iter().map(|(o, _)| o).collect(), known))
    }

    async fn blob_stat(
        &self,
        ctx: &RequestContext,
        req: BlobStatRequest,
    ) -> Result<BlobStat, HandlerError> {
        let blobs = self.replica.ledger().blobs();
        if self.blob_readable(&req.tenant, &req.scope, &ctx.claims.scope, &req.cid)?
            && let Some(size) = blobs.size(&req.cid).map_err(internal)?
        {
            return Ok(BlobStat {
                cid: req.cid,
                size: Some(size),
                received_bytes: size,
                complete: true,
            });
        }
        // A writer resuming its tenant's own upload learns how far it got; nobody
        // learns anything of another tenant's.
        let received = if ctx.claims.actions.contains(Actions::WRITE) {
            blobs
                .tenant_upload_offset(&req.tenant, &req.cid)
                .map_err(internal)?
                .unwrap_or(0)
        } else {
            0
        };
        Ok(BlobStat {
            cid: req.cid,
            size: None,
            received_bytes: received,
            complete: false,
        })
    }

    async fn blob_read(
        &self,
        ctx: &RequestContext,
        req: &BlobReadRequest,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, HandlerError> {
        let blobs = self.replica.ledger().blobs();
        // The same answer for a blob the caller may not see as for one not stored.
        if !self.blob_readable(&req.tenant, &req.scope, &ctx.claims.scope, &req.cid)?
            || !blobs.has(&req.cid).map_err(internal)?
        {
            return Err(HandlerError::NotFound(format!("blob {}", req.cid)));
        }
        let bytes = blobs
            .read_range(&req.cid, offset, u64::from(len))
            .map_err(internal)?;
        Ok(Bytes::from(bytes))
    }

    fn blob_write_begin(
        &self,
        _ctx: &RequestContext,
        req: &BlobWriteRequest,
    ) -> Result<BlobWriteGuard, HandlerError> {
        self.begin_upload(req)
    }

    async fn blob_write(
        &self,
        ctx: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: Bytes,
    ) -> Result<BlobStat, HandlerError> {
        self.write_blob_chunk(&ctx.claims.scope, req, offset, chunk)
            .await
    }

    async fn health(&self) -> Result<HealthSummary, HandlerError> {
        let letters = self.replica.ledger().dead_letters();
        let failed = letters
            .count(&DeadLetterFilter::default())
            .map_err(internal)?;
        let closure = letters
            .count(&DeadLetterFilter {
                categories: vec![DeadLetterCategory::Closure],
                ..DeadLetterFilter::default()
            })
            .map_err(internal)?;
        Ok(HealthSummary::new(
            Connectivity::Online,
            failed,
            closure,
            0,
            0,
            None,
        ))
    }

    fn changes(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        self.changes.receiver(tenant)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReplicaHandler {
    /// Applies a pushed batch (see [`Handler::apply`]): one outcome per message, with
    /// the log position it got when it was added to the log.
    async fn apply_with_positions(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<Vec<(ApplyOutcome, Option<ProgressToken>)>, HandlerError> {
        // Everything but deletes first; then deletes, which may name a record whose
        // initial write is in this push and passed.
        let is_delete = |m: &MessageData| matches!(m.message, Message::Delete(_));
        let none = BatchInitialWrites::new(std::iter::empty());
        let mut outcomes: Vec<Option<ApplyOutcome>> = Vec::with_capacity(messages.len());
        for m in &messages {
            outcomes.push(if is_delete(m) {
                None
            } else {
                self.refusal(ctx, tenant, &m.message, &none)?
            });
        }
        let batch = BatchInitialWrites::new(
            messages
                .iter()
                .zip(&outcomes)
                .filter(|(m, o)| !is_delete(m) && o.is_none())
                .map(|(m, _)| &m.message),
        );
        for (m, o) in messages.iter().zip(outcomes.iter_mut()) {
            if is_delete(m) {
                *o = self.refusal(ctx, tenant, &m.message, &batch)?;
            }
        }
        let items: Vec<(Message, Option<Vec<u8>>)> = messages
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_none())
            .map(|(m, _)| (m.message, m.data))
            .collect();
        let replica = self.replica.clone();
        let tenant = tenant.clone();
        let applied = tokio::task::spawn_blocking(move || {
            replica.apply_with_positions(&tenant, items, Origin::Remote(None))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let mut applied = applied.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                Some(refused) => (refused, None),
                None => applied.next().unwrap_or((ApplyOutcome::Deferred, None)),
            })
            .collect())
    }
}
