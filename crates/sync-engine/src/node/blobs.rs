//! The node's blob rules: who may stat, read, upload and name a blob, and how uploads
//! are kept apart and bounded.
//!
//! Blobs are stored once per node, by content, whatever tenant sent them. What ties a
//! blob to a tenant is a stored write of that tenant naming it (the ledger's `by_blob`
//! index). The rules (ARCHITECTURE.md, Security):
//!
//! - **Reading.** A token may stat and read a blob only when its tenant holds a write
//!   that names the blob and that the scope it asks for (inside its grant) covers,
//!   classified like every other read ([`Replica::classify`]); or when it uploaded the
//!   blob itself (a *possession*, below). Any other blob gets the answer a blob the node
//!   does not have gets: not complete, no bytes received, `not found` on a read.
//! - **Uploading.** Any token that may write the tenant may upload, but each tenant's
//!   upload of a blob is its own (`Blobs::upload_for_tenant`): tenants never
//!   see each other's progress, and wrong bytes fail only the upload that sent them.
//!   Every byte is received and hashed even when the blob is already stored, so an
//!   upload proves the sender holds the bytes.
//! - **Naming.** A token may write a message naming a blob only when it may already
//!   read that blob in its grant, or it uploaded the blob (a possession of its grant);
//!   otherwise the message is answered `Incomplete` with the blob missing, and the
//!   engine's push uploads it and retries. Without this rule, a write naming someone
//!   else's blob id would be a way to read it.
//!
//! Possessions are kept in memory, per tenant (at most
//! [`POSSESSIONS_PER_TENANT_MAX`], oldest dropped first): they only bridge the gap
//! between an upload and the message that follows it. After a restart a writer uploads
//! its blob again.
//!
//! Upload slots: an upload request holds a slot of its tenant and one of the node while
//! it runs ([`BlobLimits::uploads_per_tenant_max`], [`BlobLimits::uploads_max`]) and
//! gives both back when it ends, however it ends: the transport drops the request's
//! guard when the connection goes. Between two requests of one transfer the upload's
//! hash state is kept (a *paused* upload, so the next range does not re-hash what is
//! stored); paused uploads hold no slot, are bounded per tenant and per node (the oldest
//! goes first), and one whose request broke off is dropped with the request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sync_ledger::UploadCursor;
use sync_transport::HandlerError;
use sync_transport::node::BlobWriteGuard;
use sync_transport::proto::{BlobStat, BlobWriteRequest};
use sync_types::{Cid, Direction, Scope, ScopeClass, TenantId};

use super::{BlobLimits, ReplicaHandler, internal, lock};
use crate::replica::Replica;

/// Writes naming a blob that are classified before a blob is taken as unreadable: a
/// tenant with more writes naming one blob than this, none of them in a token's scope,
/// may be refused a read it could have had (never granted one it should not).
pub const BLOB_REFERRERS_CHECKED_MAX: usize = 256;
/// Blobs remembered per tenant as uploaded by one of its grants, oldest forgotten
/// first. A grant may name a blob in a write when it may read the blob or uploaded it
/// (ARCHITECTURE.md, Security); this memory bridges an upload and the write that
/// follows it, and a writer whose upload was forgotten sends the blob again.
pub const POSSESSIONS_PER_TENANT_MAX: usize = 1024;
/// Paused uploads kept per tenant, oldest dropped first: the hash state of an upload
/// between two requests of one transfer (at most a chunk, 64 KiB, of data each), so the
/// next request does not re-hash what is stored. A dropped one costs only that.
pub const PAUSED_UPLOADS_PER_TENANT_MAX: usize = 8;
/// Paused uploads kept over all tenants, oldest dropped first.
pub const PAUSED_UPLOADS_MAX: usize = 256;

/// A paused upload: its cursor, when it paused (ms), and whether it paused at the end
/// of a request's range (where the sender continues) rather than part way.
struct Paused {
    cursor: UploadCursor,
    at_ms: u64,
    at_range_end: bool,
}

/// Upload state shared by clones of a handler.
#[derive(Default)]
pub(crate) struct NodeBlobs {
    slots: Mutex<Slots>,
    paused: Mutex<HashMap<(TenantId, Cid), Paused>>,
    possessions: Mutex<HashMap<TenantId, VecDeque<(Cid, Scope)>>>,
}

#[derive(Default)]
struct Slots {
    total: usize,
    per_tenant: HashMap<TenantId, usize>,
}

/// One upload request's slots; dropping it gives them back and forgets a paused upload
/// left part way by this request.
struct UploadSlot {
    blobs: Arc<NodeBlobs>,
    tenant: TenantId,
    cid: Cid,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        {
            let mut slots = lock(&self.blobs.slots);
            slots.total = slots.total.saturating_sub(1);
            if let Some(n) = slots.per_tenant.get_mut(&self.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    slots.per_tenant.remove(&self.tenant);
                }
            }
        }
        let key = (self.tenant.clone(), self.cid);
        let mut paused = lock(&self.blobs.paused);
        if paused.get(&key).is_some_and(|p| !p.at_range_end) {
            // Its uncommitted tail is lost; the durable part stays for a resume.
            paused.remove(&key);
        }
    }
}

impl NodeBlobs {
    /// Upload requests running now, over all tenants.
    pub(crate) fn uploads_open(&self) -> usize {
        lock(&self.slots).total
    }

    fn acquire(
        self: &Arc<Self>,
        limits: &BlobLimits,
        tenant: &TenantId,
        cid: Cid,
    ) -> Result<UploadSlot, HandlerError> {
        let mut slots = lock(&self.slots);
        let per_tenant_max = limits.uploads_per_tenant_max.max(1);
        let mine = slots.per_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= per_tenant_max {
            return Err(HandlerError::Unavailable(format!(
                "tenant {tenant} holds its limit of {per_tenant_max} concurrent blob uploads \
                 (uploads_per_tenant_max); retry when one ends"
            )));
        }
        let max = limits.uploads_max.max(1);
        if slots.total >= max {
            return Err(HandlerError::Unavailable(format!(
                "the node holds its limit of {max} concurrent blob uploads (uploads_max); \
                 retry when one ends"
            )));
        }
        slots.total += 1;
        *slots.per_tenant.entry(tenant.clone()).or_insert(0) += 1;
        Ok(UploadSlot {
            blobs: self.clone(),
            tenant: tenant.clone(),
            cid,
        })
    }

    fn take_paused(&self, tenant: &TenantId, cid: Cid, offset: u64) -> Option<UploadCursor> {
        lock(&self.paused)
            .remove(&(tenant.clone(), cid))
            // A sender that lost a request resumes from the durable offset: reopen there.
            .filter(|p| p.cursor.offset() == offset)
            .map(|p| p.cursor)
    }

    fn pause(&self, key: (TenantId, Cid), cursor: UploadCursor, at_ms: u64, at_range_end: bool) {
        let tenant = key.0.clone();
        let mut paused = lock(&self.paused);
        paused.insert(
            key,
            Paused {
                cursor,
                at_ms,
                at_range_end,
            },
        );
        evict_oldest(
            &mut paused,
            &tenant,
            |p| p.at_ms,
            PAUSED_UPLOADS_PER_TENANT_MAX,
            PAUSED_UPLOADS_MAX,
        );
    }

    /// Remembers that a grant of `tenant` uploaded `cid` (it holds the bytes).
    fn possess(&self, tenant: &TenantId, cid: Cid, grant: &Scope) {
        let mut all = lock(&self.possessions);
        let mine = all.entry(tenant.clone()).or_default();
        if mine.iter().any(|(c, s)| *c == cid && s == grant) {
            return;
        }
        if mine.len() >= POSSESSIONS_PER_TENANT_MAX {
            mine.pop_front();
        }
        mine.push_back((cid, grant.clone()));
    }

    fn possesses(&self, tenant: &TenantId, cid: &Cid, grant: &Scope) -> bool {
        lock(&self.possessions)
            .get(tenant)
            .is_some_and(|mine| mine.iter().any(|(c, s)| c == cid && s == grant))
    }
}

/// Bounds `paused` after an insert for `tenant`: the tenant's own oldest go first (down
/// to `per_tenant_max`), then the node's (down to `max`), so one tenant's many uploads
/// cost the others nothing until the node-wide bound.
fn evict_oldest<V>(
    paused: &mut HashMap<(TenantId, Cid), V>,
    tenant: &TenantId,
    at_ms: impl Fn(&V) -> u64,
    per_tenant_max: usize,
    max: usize,
) {
    let oldest = |paused: &HashMap<(TenantId, Cid), V>, of: Option<&TenantId>| {
        paused
            .iter()
            .filter(|((t, _), _)| of.is_none_or(|of| t == of))
            .min_by_key(|(_, p)| at_ms(p))
            .map(|(k, _)| k.clone())
    };
    while paused.keys().filter(|(t, _)| t == tenant).count() > per_tenant_max {
        let Some(k) = oldest(paused, Some(tenant)) else {
            break;
        };
        paused.remove(&k);
    }
    while paused.len() > max {
        let Some(k) = oldest(paused, None) else {
            break;
        };
        paused.remove(&k);
    }
}

impl ReplicaHandler {
    /// Whether `tenant` holds a write naming `cid` that `scope` covers.
    fn blob_referenced_in(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        cid: &Cid,
    ) -> Result<bool, HandlerError> {
        let ledger = self.replica.ledger();
        for referrer in ledger
            .blob_referrers(tenant, cid, BLOB_REFERRERS_CHECKED_MAX)
            .map_err(internal)?
        {
            if let Some(stored) = ledger.get_message(tenant, &referrer).map_err(internal)?
                && self.classify(tenant, scope, Direction::Pull, &stored.message)?
                    == ScopeClass::InScope
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a caller with grant `grant`, asking for `scope` (inside the grant), may
    /// see blob `cid` of `tenant`: a write in the scope names it, or the grant uploaded
    /// it.
    pub(crate) fn blob_readable(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        grant: &Scope,
        cid: &Cid,
    ) -> Result<bool, HandlerError> {
        Ok(self.blobs.possesses(tenant, cid, grant)
            || self.blob_referenced_in(tenant, scope, cid)?)
    }

    /// Whether a write of `tenant` by grant `grant` may name blob `cid` (see the module
    /// docs): the grant may read it already, or uploaded it.
    pub(crate) fn blob_nameable(
        &self,
        tenant: &TenantId,
        grant: &Scope,
        cid: &Cid,
    ) -> Result<bool, HandlerError> {
        self.blob_readable(tenant, grant, grant, cid)
    }

    /// Upload requests running now, over all tenants (each holds a slot until it ends).
    pub fn blob_uploads_open(&self) -> usize {
        self.blobs.uploads_open()
    }

    /// Refuses a blob over the tenant's size limit, then takes the request's slots.
    pub(crate) fn begin_upload(
        &self,
        req: &BlobWriteRequest,
    ) -> Result<BlobWriteGuard, HandlerError> {
        self.check_upload_size(req)?;
        let slot = self
            .blobs
            .acquire(&self.blob_limits, &req.tenant, req.cid)?;
        Ok(BlobWriteGuard::new(slot))
    }

    pub(crate) fn check_upload_size(&self, req: &BlobWriteRequest) -> Result<(), HandlerError> {
        let max = self.blob_limits.blob_bytes_max_for(&req.tenant);
        if req.total_size > max {
            return Err(HandlerError::Forbidden(format!(
                "blob of {} bytes exceeds tenant {}'s upload limit of {max} bytes",
                req.total_size, req.tenant
            )));
        }
        Ok(())
    }

    /// Stores one chunk of `req` for the grant `grant`, on the blocking pool; a
    /// completed upload becomes a possession of the grant.
    pub(crate) async fn write_blob_chunk(
        &self,
        grant: &Scope,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: bytes::Bytes,
    ) -> Result<BlobStat, HandlerError> {
        self.check_upload_size(req)?;
        let replica = self.replica.clone();
        let blobs = self.blobs.clone();
        let req2 = req.clone();
        let stat = tokio::task::spawn_blocking(move || {
            write_chunk(&replica, &blobs, &req2, offset, &chunk)
        })
        .await
        .map_err(internal)??;
        if stat.complete {
            self.blobs.possess(&req.tenant, req.cid, grant);
        }
        Ok(stat)
    }
}

/// Stores one chunk of a tenant's upload, staged under the tenant's own id. The upload
/// stays paused between chunks (its hash state kept), so a transfer of any size hashes
/// every byte once; it is made durable at the end of each request's range, which is
/// where a sender resumes after a failure.
fn write_chunk(
    replica: &Replica,
    state: &NodeBlobs,
    req: &BlobWriteRequest,
    offset: u64,
    chunk: &[u8],
) -> Result<BlobStat, HandlerError> {
    let blobs = replica.ledger().blobs();
    let now = replica.now_ms();
    let upload = match state.take_paused(&req.tenant, req.cid, offset) {
        Some(cursor) => blobs.resume(cursor, now),
        None => blobs.upload_for_tenant(&req.tenant, &req.cid, Some(req.total_size), now),
    };
    // Another request of the tenant writes this upload: in this process, or, over a
    // shared store, on another node (which owns the upload until it ends or its owner
    // row expires). A commit of this request may also find the upload taken over.
    let in_progress = |e: sync_ledger::Error| match e {
        sync_ledger::Error::UploadInProgress(_) => HandlerError::Unavailable(format!(
            "tenant {} is already uploading blob {}; retry when that upload ends",
            req.tenant, req.cid
        )),
        other => internal(other),
    };
    let mut upload = upload.map_err(in_progress)?;
    if upload.offset() != offset {
        return Err(HandlerError::BadRequest(format!(
            "chunk at offset {offset}, but the upload continues at {}",
            upload.offset()
        )));
    }
    upload.write(chunk).map_err(|e| match e {
        sync_ledger::Error::BlobTooLarge { .. } => HandlerError::BadRequest(e.to_string()),
        other => in_progress(other),
    })?;
    if upload.offset() >= req.total_size {
        let size = upload.finish(replica.durability()).map_err(|e| match e {
            sync_ledger::Error::BlobMismatch { .. } => HandlerError::BadRequest(format!(
                "the uploaded bytes are not blob {}: {e}",
                req.cid
            )),
            other => in_progress(other),
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
    let at_range_end = upload.offset() >= req.offset + req.len;
    let received = if at_range_end {
        upload
            .checkpoint(sync_ledger::Durability::Buffered)
            .map_err(in_progress)?
    } else {
        upload.offset()
    };
    if let Some(cursor) = upload.pause() {
        state.pause((req.tenant.clone(), req.cid), cursor, now, at_range_end);
    }
    Ok(BlobStat {
        cid: req.cid,
        size: Some(req.total_size),
        received_bytes: received,
        complete: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(i: usize) -> TenantId {
        TenantId::new(format!("t{i}")).unwrap()
    }

    fn cid(i: usize) -> Cid {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Cid::from_bytes(b)
    }

    #[test]
    fn paused_uploads_are_bounded_per_tenant_then_per_node_oldest_first() {
        let mut paused: HashMap<(TenantId, Cid), u64> = HashMap::new();
        // One tenant pauses more than its share: its oldest go, the newest stay.
        for i in 0..PAUSED_UPLOADS_PER_TENANT_MAX + 3 {
            paused.insert((tenant(0), cid(i)), i as u64);
            evict_oldest(
                &mut paused,
                &tenant(0),
                |t| *t,
                PAUSED_UPLOADS_PER_TENANT_MAX,
                PAUSED_UPLOADS_MAX,
            );
        }
        assert_eq!(paused.len(), PAUSED_UPLOADS_PER_TENANT_MAX);
        assert!(
            !paused.contains_key(&(tenant(0), cid(2))),
            "the oldest went first"
        );
        assert!(paused.contains_key(&(tenant(0), cid(3))));
        // Many tenants, one each, pass the node's bound: the node's oldest go, whoever
        // they belong to, and no tenant is left over its own share.
        let mut at = 1_000;
        for t in 1..=PAUSED_UPLOADS_MAX {
            at += 1;
            paused.insert((tenant(t), cid(0)), at);
            evict_oldest(
                &mut paused,
                &tenant(t),
                |t| *t,
                PAUSED_UPLOADS_PER_TENANT_MAX,
                PAUSED_UPLOADS_MAX,
            );
        }
        assert_eq!(paused.len(), PAUSED_UPLOADS_MAX);
        assert!(
            paused.keys().all(|(t, _)| *t != tenant(0)),
            "tenant 0's uploads were the node's oldest"
        );
        assert!(paused.contains_key(&(tenant(PAUSED_UPLOADS_MAX), cid(0))));
    }

    #[test]
    fn possessions_are_bounded_per_tenant_and_forget_the_oldest() {
        let blobs = NodeBlobs::default();
        let grant = Scope::Full;
        for i in 0..=POSSESSIONS_PER_TENANT_MAX {
            blobs.possess(&tenant(0), cid(i), &grant);
        }
        assert!(
            !blobs.possesses(&tenant(0), &cid(0), &grant),
            "the oldest is forgotten"
        );
        assert!(blobs.possesses(&tenant(0), &cid(1), &grant));
        assert!(blobs.possesses(&tenant(0), &cid(POSSESSIONS_PER_TENANT_MAX), &grant));
        assert_eq!(
            lock(&blobs.possessions)[&tenant(0)].len(),
            POSSESSIONS_PER_TENANT_MAX
        );
        // Another tenant's uploads neither count against this one nor are visible to it.
        blobs.possess(&tenant(1), cid(1), &grant);
        assert!(blobs.possesses(&tenant(0), &cid(1), &grant));
        assert!(!blobs.possesses(&tenant(1), &cid(2), &grant));
        // A possession is the uploading grant's: another grant of the tenant holds none.
        let other = Scope::protocols(vec![sync_types::ProtocolName::new("p").unwrap()]).unwrap();
        assert!(!blobs.possesses(&tenant(0), &cid(1), &other));
    }
}
