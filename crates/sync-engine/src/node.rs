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
//!   (the replica's apply decides it against the stored record).
//!
//! Storage calls are synchronous (the ledger has no async runtime); the ones that can
//! wait on an fsync (apply, blob writes) run on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sync_ledger::{DeadLetterFilter, LogQuery, LogRead, UploadCursor};
use sync_smt::{Limits, Responder};
use sync_transport::HandlerError;
use sync_transport::node::{Handler, RequestContext};
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest, LogEntry,
    LogFilter, LogPage, LogPageReply, LogPageRequest, MessageData, ReadMessagesReply,
    ReadMessagesRequest, RootReply, RootRequest,
};
use sync_transport::token::Role;
use sync_types::{
    ApplyOutcome, Connectivity, DeadLetterCategory, HealthSummary, Message, Scope, ScopeClass,
    TenantId,
};
use tokio::sync::watch;

use crate::replica::{Origin, Replica};

/// Default largest blob a tenant may upload to a node, in bytes (4 GiB).
pub const BLOB_BYTES_MAX_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;
/// Default number of blob uploads a node keeps open at once.
pub const BLOB_UPLOADS_MAX_DEFAULT: usize = 16;
/// An open upload that received nothing for this long may be closed to make room for
/// another (its durable part stays; the sender resumes), in ms.
pub const BLOB_UPLOAD_IDLE_MS_MAX: u64 = 60_000;

/// What blob uploads a node accepts; every limit has its unit last.
#[derive(Clone, Debug)]
pub struct BlobLimits {
    /// Largest blob a tenant may upload, in bytes. Default [`BLOB_BYTES_MAX_DEFAULT`].
    pub blob_bytes_max: u64,
    /// Per-tenant overrides of [`blob_bytes_max`](Self::blob_bytes_max), in bytes.
    pub tenant_blob_bytes_max: HashMap<TenantId, u64>,
    /// Uploads open at once over all tenants; a new one beyond this is refused as
    /// unavailable (retryable) until one finishes or idles out. Default
    /// [`BLOB_UPLOADS_MAX_DEFAULT`].
    pub uploads_max: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            blob_bytes_max: BLOB_BYTES_MAX_DEFAULT,
            tenant_blob_bytes_max: HashMap::new(),
            uploads_max: BLOB_UPLOADS_MAX_DEFAULT,
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

/// Uploads between two chunks: the hash state of each, so a chunk continues the upload
/// without re-reading what is stored, and when it last moved (ms).
type OpenUploads = Arc<Mutex<HashMap<sync_types::Cid, (UploadCursor, u64)>>>;

/// Serves a replica to remote peers. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaHandler {
    replica: Replica,
    responder: Arc<Responder>,
    changes: Arc<Mutex<HashMap<TenantId, watch::Sender<u64>>>>,
    blob_limits: Arc<BlobLimits>,
    uploads: OpenUploads,
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
    ///   what it pulled, and relaying a held message changes nothing).
    ///
    /// A message naming another protocol than its stored record is refused by the
    /// replica's apply (`Invalid`), for owners and delegates alike.
    fn refusal(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        message: &Message,
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
            && self.classify(tenant, &claims.scope, message)? != ScopeClass::InScope
        {
            return Ok(Some(ApplyOutcome::Unauthorized));
        }
        Ok(None)
    }

    /// A handler over `replica`, with default diff limits.
    pub fn new(replica: Replica) -> Self {
        let changes: Arc<Mutex<HashMap<TenantId, watch::Sender<u64>>>> = Arc::default();
        let senders = Arc::downgrade(&changes);
        // The ledger calls this after every commit that appended to a tenant's log; the
        // watch value is only a wake-up, subscriptions read the durable log.
        replica
            .ledger()
            .add_listener(move |tenant: &TenantId, head: u64| {
                if let Some(senders) = senders.upgrade()
                    && let Some(tx) = senders
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(tenant)
                {
                    tx.send_replace(head);
                }
            });
        Self {
            replica,
            responder: Arc::new(Responder::new(Limits::default())),
            changes,
            blob_limits: Arc::new(BlobLimits::default()),
            uploads: Arc::default(),
        }
    }

    /// Sets the blob upload limits. Default [`BlobLimits::default`].
    #[must_use]
    pub fn with_blob_limits(mut self, limits: BlobLimits) -> Self {
        self.blob_limits = Arc::new(limits);
        self
    }

    /// The replica served.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn classify(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        message: &Message,
    ) -> Result<ScopeClass, HandlerError> {
        self.replica
            .classify(tenant, scope, message)
            .map_err(internal)
    }
}

fn internal(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Internal(e.to_string())
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
        // One protocol can be filtered by the ledger's per-protocol log index; other
        // scopes are filtered here, and the page's cursor still moves past what was left
        // out.
        let single = match (&req.scope, &req.filter.protocols) {
            (_, Some(set)) if set.protocols().len() == 1 => Some(set.protocols()[0].clone()),
            (Scope::ProtocolSet(set), None) if set.protocols().len() == 1 => {
                Some(set.protocols()[0].clone())
            }
            _ => None,
        };
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let mut query = LogQuery::after(req.from, limit);
        query.protocol = single;
        let page = match ledger.read_log(&req.tenant, &query).map_err(internal)? {
            LogRead::Gap(gap) => return Ok(LogPageReply::Gap(gap)),
            LogRead::Page(page) => page,
        };
        let mut entries = Vec::with_capacity(page.entries.len());
        for entry in page.entries {
            if !in_filter(&req.filter, &entry.message)
                || self.classify(&req.tenant, &req.scope, &entry.message)? != ScopeClass::InScope
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
                    if self.classify(&req.tenant, &req.scope, &stored.message)?
                        == ScopeClass::InScope =>
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
        let mut outcomes: Vec<Option<ApplyOutcome>> = Vec::with_capacity(messages.len());
        for m in &messages {
            outcomes.push(self.refusal(ctx, tenant, &m.message)?);
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
            replica.apply(&tenant, items, Origin::Remote(None))
        })
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            crate::Error::Ledger(sync_ledger::Error::Poisoned) => {
                HandlerError::Unavailable(e.to_string())
            }
            other => internal(other),
        })?;
        let mut applied = applied.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| applied.next().unwrap_or(ApplyOutcome::Deferred)))
            .collect())
    }

    async fn blob_stat(
        &self,
        _ctx: &RequestContext,
        req: BlobStatRequest,
    ) -> Result<BlobStat, HandlerError> {
        let blobs = self.replica.ledger().blobs();
        if let Some(size) = blobs.size(&req.cid).map_err(internal)? {
            return Ok(BlobStat {
                cid: req.cid,
                size: Some(size),
                received_bytes: size,
                complete: true,
            });
        }
        let received = blobs
            .upload_offset(&req.cid)
            .map_err(internal)?
            .unwrap_or(0);
        Ok(BlobStat {
            cid: req.cid,
            size: None,
            received_bytes: received,
            complete: false,
        })
    }

    async fn blob_read(
        &self,
        _ctx: &RequestContext,
        req: &BlobReadRequest,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, HandlerError> {
        let blobs = self.replica.ledger().blobs();
        if !blobs.has(&req.cid).map_err(internal)? {
            return Err(HandlerError::NotFound(format!("blob {}", req.cid)));
        }
        let bytes = blobs
            .read_range(&req.cid, offset, u64::from(len))
            .map_err(internal)?;
        Ok(Bytes::from(bytes))
    }

    async fn blob_write(
        &self,
        _ctx: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: Bytes,
    ) -> Result<BlobStat, HandlerError> {
        let max = self.blob_limits.blob_bytes_max_for(&req.tenant);
        if req.total_size > max {
            return Err(HandlerError::Forbidden(format!(
                "blob of {} bytes exceeds tenant {}'s upload limit of {max} bytes",
                req.total_size, req.tenant
            )));
        }
        let replica = self.replica.clone();
        let req = req.clone();
        let uploads = self.uploads.clone();
        let uploads_max = self.blob_limits.uploads_max.max(1);
        tokio::task::spawn_blocking(move || {
            write_chunk(&replica, &uploads, uploads_max, &req, offset, &chunk)
        })
        .await
        .map_err(internal)?
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
        let mut senders = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .entry(tenant.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// Stores one chunk of an upload. The upload stays open between chunks (its hash state
/// in `uploads`), so a transfer of any size hashes every byte once; it is made durable
/// at the end of each request's range, which is where a sender resumes after a failure.
fn write_chunk(
    replica: &Replica,
    uploads: &OpenUploads,
    uploads_max: usize,
    req: &BlobWriteRequest,
    offset: u64,
    chunk: &[u8],
) -> Result<BlobStat, HandlerError> {
    let blobs = replica.ledger().blobs();
    let now = replica.now_ms();
    let open = lock(uploads)
        .remove(&req.cid)
        // A sender that lost a request resumes from the durable offset: reopen there.
        .filter(|(cursor, _)| cursor.offset() == offset);
    let upload = match open {
        Some((cursor, _)) => blobs.resume(cursor, now),
        None => {
            let mut open = lock(uploads);
            if open.len() >= uploads_max {
                open.retain(|_, (_, at)| now.saturating_sub(*at) < BLOB_UPLOAD_IDLE_MS_MAX);
            }
            if open.len() >= uploads_max {
                return Err(HandlerError::Unavailable(format!(
                    "{} blob uploads are in progress; retry later",
                    open.len()
                )));
            }
            drop(open);
            blobs.upload(&req.cid, Some(req.total_size), now)
        }
    };
    let mut upload = upload.map_err(|e| match e {
        sync_ledger::Error::UploadInProgress(_) => HandlerError::Unavailable(e.to_string()),
        other => internal(other),
    })?;
    if upload.is_complete() {
        return Ok(BlobStat {
            cid: req.cid,
            size: Some(upload.offset()),
            received_bytes: upload.offset(),
            complete: true,
        });
    }
    if upload.offset() != offset {
        return Err(HandlerError::BadRequest(format!(
            "chunk at offset {offset}, but the upload continues at {}",
            upload.offset()
        )));
    }
    upload.write(chunk).map_err(internal)?;
    if upload.offset() >= req.total_size {
        let size = upload.finish(replica.durability()).map_err(|e| match e {
            sync_ledger::Error::BlobMismatch { .. } => HandlerError::BadRequest(e.to_string()),
            other => internal(other),
        })?;
        return Ok(BlobStat {
            cid: req.cid,
            size: Some(size),
            received_bytes: size,
            complete: true,
        });
    }
    // The end of a request's range is committed (where a sender resumes), not synced:
    // commits persist in order, so a power loss leaves a consistent prefix and the
    // sender asks for the offset again. Only the stored blob is synced.
    let received = if upload.offset() >= req.offset + req.len {
        upload
            .checkpoint(sync_ledger::Durability::Buffered)
            .map_err(internal)?
    } else {
        upload.offset()
    };
    if let Some(cursor) = upload.pause() {
        lock(uploads).insert(req.cid, (cursor, now));
    }
    Ok(BlobStat {
        cid: req.cid,
        size: Some(req.total_size),
        received_bytes: received,
        complete: false,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
