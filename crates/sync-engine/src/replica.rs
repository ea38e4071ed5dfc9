//! The replica: a local store an application embeds.
//!
//! A [`Replica`] is the ledger, the tree index and the apply pipeline behind one handle.
//! Application writes ([`Replica::put`], [`Replica::write`], [`Replica::delete`],
//! [`Replica::configure`]) and messages from elsewhere ([`Replica::apply`]) take the same
//! path:
//!
//! 1. check each message alone: tenant, invariants ([`Message::validate`]), inline data
//!    against its reference;
//! 2. order the batch by dependencies (`order`);
//! 3. in passes (at most [`APPLY_PASSES_MAX`]): check each message's hard dependencies
//!    and protocol rules against what is committed; commit every ready message in one
//!    atomic ledger batch (merge rule, indexes, pruning, log append); update the tree
//!    index; what waited on those messages becomes ready in the next pass;
//! 4. answer every message with an [`ApplyOutcome`]: what is still missing after the
//!    passes is `Incomplete { missing }`;
//! 5. notify: changes to subscribers, conflicts as events, and resolve conflicts by the
//!    [`ConflictPolicy`].
//!
//! One writer at a time: a mutex serialises apply calls, so the tree index always
//! follows the ledger's commit order. Reads never take it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use sync_ledger::{Durability, HashedMessage, Ledger, LedgerOutcome};
use sync_types::{
    ApplyOutcome, Cid, Clock, Configure, ContextId, DataRef, Dependency, Hlc, HlcClock,
    MISSING_MAX, Message, NodeId, PrincipalId, ProgressToken, ProtocolDefinition, ProtocolName,
    ProtocolPath, RecordId, SyncEvent, TenantId, TypeRule,
};
use tokio::sync::broadcast;

use crate::conflict::Policies;
pub use crate::conflict::{ConflictInfo, ConflictPolicy, Resolution};
use crate::error::{Error, Result};
use crate::index::TreeIndex;
use crate::order::dependency_order_by;
pub use builder::ReplicaBuilder;

/// Most passes of one apply call: enough for a protocol, its composed protocols, and a
/// record tree as deep as [`sync_types::PATH_DEPTH_MAX`], plus updates and deletes.
pub const APPLY_PASSES_MAX: usize = sync_types::PATH_DEPTH_MAX + 4;
/// Capacity of the change and event channels; a subscriber that falls further behind
/// misses changes (and learns it from the channel) but can re-read the log. Every slot is
/// allocated when the replica opens, so this is also most of an idle replica's memory.
pub const CHANNEL_CAPACITY: usize = 256;

/// Where a message came from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Origin {
    /// Written by the application through this replica.
    Local,
    /// Received from a peer (the endpoint when known).
    Remote(Option<sync_types::Endpoint>),
}

/// A message the replica accepted, for change subscribers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    /// The tenant.
    pub tenant: TenantId,
    /// The accepted message.
    pub cid: Cid,
    /// Its position in the tenant's log.
    pub token: ProgressToken,
    /// The record it is a version of, for writes and deletes.
    pub record_id: Option<RecordId>,
    /// Whether the record is now deleted.
    pub deleted: bool,
    /// Where it came from.
    pub origin: Origin,
}

/// A record as the application sees it: its winning version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// The record.
    pub record_id: RecordId,
    /// Its protocol.
    pub protocol: ProtocolName,
    /// Its type path.
    pub path: ProtocolPath,
    /// Its context.
    pub context_id: ContextId,
    /// The winning version's cid.
    pub cid: Cid,
    /// The initial write's cid.
    pub initial: Option<Cid>,
    /// When the winning version was written.
    pub timestamp: Hlc,
    /// Who wrote the winning version.
    pub author: PrincipalId,
    /// Whether the winning version is a delete.
    pub deleted: bool,
    /// The payload reference of the winning version.
    pub data_ref: Option<DataRef>,
    /// The payload, when it is resident and at most
    /// [`RECORD_DATA_BYTES_MAX`](crate::blob::RECORD_DATA_BYTES_MAX): inline payloads
    /// always, blobs only when small; a larger blob is never loaded implicitly, read it
    /// with [`Replica::blob_reader`] or [`Replica::read_blob`].
    pub data: Option<Vec<u8>>,
    /// Whether the payload is here: [`Residency::Staged`](crate::blob::Residency::Staged) until a referenced blob has
    /// arrived and been verified.
    pub residency: crate::blob::Residency,
}

/// The receipt of a local write: which version was written, and whether it won.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// The record written.
    pub record_id: RecordId,
    /// The new version's cid.
    pub cid: Cid,
    /// Its position in the local log (`None` when it was not stored).
    pub token: Option<ProgressToken>,
    /// Whether the write is now the record's winning version. Check it: a
    /// [`WriteOutcome::Superseded`] write is not what a read returns.
    pub outcome: WriteOutcome,
}

impl Receipt {
    /// Whether the write became the record's winning version.
    pub fn won(&self) -> bool {
        self.outcome == WriteOutcome::Won
    }
}

/// What became of a local write once it was committed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteOutcome {
    /// The write is the record's winning version (for a configure: the protocol's
    /// current definition).
    Won,
    /// Another version orders after the write, so reads do not return it. Since a
    /// local write is stamped after the version it replaces, this only happens when
    /// something else got there first; the caller decides whether to write again.
    Superseded {
        /// The version that wins instead.
        winner: Cid,
    },
}

/// What a write addresses.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RecordKey {
    /// A new record with a fresh id.
    New,
    /// The record of an application's natural key (created on first write).
    Natural(Vec<u8>),
    /// An existing record.
    Id(RecordId),
}

/// A local write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WriteRequest {
    /// The record's protocol.
    pub protocol: ProtocolName,
    /// The record's type path.
    pub path: ProtocolPath,
    /// Which record.
    pub key: RecordKey,
    /// The parent record, for a type below the root.
    pub parent: Option<RecordId>,
    /// The payload.
    pub data: Option<Vec<u8>>,
    /// Who writes.
    pub author: PrincipalId,
}

/// A local store: ledger, tree index and apply pipeline. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Ledger,
    index: RwLock<TreeIndex>,
    writer: Mutex<()>,
    clock: Arc<dyn Clock + Send + Sync>,
    hlc: Mutex<HlcClock<Arc<dyn Clock + Send + Sync>>>,
    durability: Durability,
    policies: RwLock<Policies>,
    changes: broadcast::Sender<Change>,
    events: broadcast::Sender<SyncEvent>,
    /// Whether other processes write the store: then the trees follow the log
    /// (`follow.rs`) instead of this replica's applies.
    shared: bool,
    /// Serialises the follows and lazy loads of trees over a shared store.
    follow: Mutex<()>,
    follow_stats: Mutex<FollowStats>,
    tree_cache: follow::TreeCache,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// OS-seeded randomness without another dependency: std's `RandomState` is keyed from the
/// operating system's random source.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node_id())
            .finish_non_exhaustive()
    }
}

/// A message with its inline payload, as it travels.
pub type MessageWithData = (Message, Option<Vec<u8>>);

impl Replica {
    /// A builder with defaults: system clock, synced durability, last writer wins.
    pub fn builder() -> ReplicaBuilder {
        ReplicaBuilder::default()
    }

    /// Opens a replica on a fjall directory with defaults.
    pub fn open(path: impl AsRef<Path>) -> Result<Replica> {
        Self::builder().open(path)
    }

    /// Opens an in-memory replica with defaults.
    pub fn in_memory() -> Result<Replica> {
        Self::builder().in_memory()
    }

    /// Closes the replica: syncs the ledger and, when this is the last handle, flushes its
    /// tables so the next open does not replay the journal. Other handles keep working
    /// until dropped.
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Ok(inner.ledger.close()?),
            Err(shared) => Ok(shared.ledger.persist(Durability::SyncAll)?),
        }
    }

    /// The node id this replica stamps into its timestamps.
    pub fn node_id(&self) -> NodeId {
        lock(&self.inner.hlc).node()
    }

    /// The ledger underneath (links, dead letters, identities, log reads). Unstable:
    /// only with the `unstable` feature, for tools that inspect storage (the `weft` CLI,
    /// the benches, the simulation); writing through it bypasses every check the replica
    /// makes.
    #[cfg(feature = "unstable")]
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The ledger underneath, for the engine itself.
    #[cfg(not(feature = "unstable"))]
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The current wall time of the replica's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The durability of the replica's commits.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Sets the conflict policy of every protocol without its own.
    pub fn set_conflict_policy(&self, policy: ConflictPolicy) {
        self.inner
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .default = policy;
    }

    /// Sets the conflict policy of one protocol.
    pub fn set_conflict_policy_for(&self, protocol: ProtocolName, policy: ConflictPolicy) {
        self.inner
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .by_protocol
            .insert(protocol, policy);
    }

    /// The conflict policy in effect for `protocol`.
    pub fn conflict_policy(&self, protocol: &ProtocolName) -> ConflictPolicy {
        self.policies().of(protocol).clone()
    }

    pub(crate) fn policies(&self) -> Policies {
        self.inner
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes accepted from now on, local and remote.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Events (conflicts, and what the engine reports through this replica).
    pub fn events(&self) -> broadcast::Receiver<SyncEvent> {
        self.inner.events.subscribe()
    }

    /// Sends an event to [`events`](Self::events) subscribers.
    pub fn emit(&self, event: SyncEvent) {
        let _ = self.inner.events.send(event);
    }

    fn tick(&self) -> Hlc {
        lock(&self.inner.hlc).tick()
    }

    /// A timestamp for a local version that replaces one stamped `replaced`: greater
    /// than it and than everything this replica issued or stored, whatever the wall
    /// clock says. The replaced version is already stored, so it is merged without the
    /// drift bound. This is the causality rule (ARCHITECTURE.md, "Causality").
    pub(crate) fn stamp_after(&self, replaced: Option<Hlc>) -> Hlc {
        let mut hlc = lock(&self.inner.hlc);
        if let Some(replaced) = replaced {
            hlc.resume_after(replaced);
        }
        hlc.tick()
    }

    // ---- local writes ----

    /// Installs or updates a protocol.
    pub fn configure(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        types: Vec<TypeRule>,
        uses: Vec<ProtocolName>,
        author: &PrincipalId,
    ) -> Result<Cid> {
        let definition = ProtocolDefinition::new(protocol, types, uses)?;
        let _writer = lock(&self.inner.writer);
        let current = self.inner.ledger.protocol_definition(tenant, protocol)?;
        let message = Message::Configure(Configure {
            tenant: tenant.clone(),
            protocol: protocol.clone(),
            definition,
            timestamp: self.stamp_after(current.map(|(_, c)| c.timestamp)),
            author: author.clone(),
        });
        self.apply_local_locked(tenant, message, None)
            .map(|r| r.cid)
    }

    /// Writes `data` as the record of a natural key: created on the first write, a new
    /// version afterwards (an upsert).
    pub fn put(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: &ProtocolPath,
        key: &[u8],
        data: Vec<u8>,
        author: &PrincipalId,
    ) -> Result<Receipt> {
        self.write(
            tenant,
            WriteRequest {
                protocol: protocol.clone(),
                path: path.clone(),
                key: RecordKey::Natural(key.to_vec()),
                parent: None,
                data: Some(data),
                author: author.clone(),
            },
        )
    }

    /// Writes a version of a record.
    pub fn write(&self, tenant: &TenantId, req: WriteRequest) -> Result<Receipt> {
        self.write_staged(tenant, req, None)
    }

    /// [`write`](Self::write) with the payload already staged (`(reference, inline
    /// bytes)`, see [`Replica::write_with_blob`]); `req.data` is then ignored.
    pub(crate) fn write_staged(
        &self,
        tenant: &TenantId,
        req: WriteRequest,
        staged: Option<(Option<DataRef>, Option<Vec<u8>>)>,
    ) -> Result<Receipt> {
        let _writer = lock(&self.inner.writer);
        let (message, inline) = self.compose_write(tenant, req, staged)?;
        self.apply_local_locked(tenant, message, inline)
    }

    /// Deletes a record.
    pub fn delete(
        &self,
        tenant: &TenantId,
        record_id: RecordId,
        author: &PrincipalId,
    ) -> Result<Receipt> {
        let _writer = lock(&self.inner.writer);
        let message = self.compose_delete(tenant, record_id, author)?;
        self.apply_local_locked(tenant, message, None)
    }

    /// Payloads up to the inline limit travel with the message; larger ones go to the
    /// blob store first, so the write that references them is complete.
    pub(crate) fn stage_data(
        &self,
        data: Option<Vec<u8>>,
    ) -> Result<(Option<DataRef>, Option<Vec<u8>>)> {
        let Some(data) = data else {
            return Ok((None, None));
        };
        let data_ref = DataRef::of(&data);
        if data_ref.is_inline() {
            return Ok((Some(data_ref), Some(data)));
        }
        self.inner.ledger.blobs().put(
            &data_ref.data_cid,
            data.as_slice(),
            self.inner.durability,
            self.now_ms(),
        )?;
        Ok((Some(data_ref), None))
    }

    fn apply_local_locked(
        &self,
        tenant: &TenantId,
        message: Message,
        data: Option<Vec<u8>>,
    ) -> Result<Receipt> {
        let cid = message.cid();
        let record_id = message.record_id();
        let message_kind = match &message {
            Message::Configure(c) => Some(c.protocol.clone()),
            _ => None,
        };
        let (outcomes, tokens) =
            self.apply_locked(tenant, vec![(message, data)], &Origin::Local)?;
        match outcomes.into_iter().next() {
            Some(
                applied @ (ApplyOutcome::Applied
                | ApplyOutcome::Duplicate
                | ApplyOutcome::Superseded),
            ) => {
                // A local version is stamped after what it replaces, so a newly stored
                // one is the winner; only a repeat or a superseded one needs a look.
                let winner = match (applied, &message_kind) {
                    (ApplyOutcome::Applied, _) => None,
                    (_, Some(protocol)) => self
                        .inner
                        .ledger
                        .protocol_definition(tenant, protocol)?
                        .map(|(c, _)| c),
                    (_, None) => match record_id {
                        Some(r) => self
                            .inner
                            .ledger
                            .record_head(tenant, &r)?
                            .map(|h| h.winner.cid),
                        None => None,
                    },
                };
                let outcome = match winner {
                    Some(w) if w != cid => WriteOutcome::Superseded { winner: w },
                    _ => WriteOutcome::Won,
                };
                Ok(Receipt {
                    record_id: record_id.unwrap_or(RecordId::from_bytes(*cid.as_bytes())),
                    cid,
                    token: tokens.get(&cid).copied(),
                    outcome,
                })
            }
            Some(ApplyOutcome::Incomplete { missing }) => Err(Error::Missing(missing)),
            Some(other) => Err(Error::Invalid(other.to_string())),
            None => Err(Error::Invalid("no outcome".into())),
        }
    }

    // ---- the apply pipeline ----

    /// Applies messages from elsewhere; one outcome per message, in input order.
    pub fn apply(
        &self,
        tenant: &TenantId,
        items: Vec<MessageWithData>,
        origin: Origin,
    ) -> Result<Vec<ApplyOutcome>> {
        let _writer = lock(&self.inner.writer);
        self.apply_locked(tenant, items, &origin)
            .map(|(outcomes, _)| outcomes)
    }

    /// [`apply`](Self::apply), also giving the local log position of each message it
    /// newly stored (the sync engine remembers them to avoid echoing pulled messages).
    pub fn apply_with_positions(
        &self,
        tenant: &TenantId,
        items: Vec<MessageWithData>,
        origin: Origin,
    ) -> Result<Vec<(ApplyOutcome, Option<ProgressToken>)>> {
        // Hashed once, outside the writer lock (a cid hashes the whole message), and
        // handed down to the ledger with the message.
        let items: Vec<HashedMessage> = items
            .into_iter()
            .map(|(m, d)| HashedMessage::new(m, d))
            .collect();
        let cids: Vec<Cid> = items.iter().map(HashedMessage::cid).collect();
        let _writer = lock(&self.inner.writer);
        let (outcomes, tokens) = self.apply_locked_hashed(tenant, items, &origin)?;
        Ok(outcomes
            .into_iter()
            .zip(cids)
            .map(|(o, cid)| (o, tokens.get(&cid).copied()))
            .collect())
    }

    pub(crate) fn apply_locked(
        &self,
        tenant: &TenantId,
        items: Vec<MessageWithData>,
        origin: &Origin,
    ) -> Result<(Vec<ApplyOutcome>, HashMap<Cid, ProgressToken>)> {
        let items = items
            .into_iter()
            .map(|(m, d)| HashedMessage::new(m, d))
            .collect();
        self.apply_locked_hashed(tenant, items, origin)
    }

    /// [`apply_locked`](Self::apply_locked) of messages hashed once by
    /// [`HashedMessage::new`]: the checks, the ledger and the trees all use that cid,
    /// and the messages are lent to the ledger, not copied.
    fn apply_locked_hashed(
        &self,
        tenant: &TenantId,
        items: Vec<HashedMessage>,
        origin: &Origin,
    ) -> Result<(Vec<ApplyOutcome>, HashMap<Cid, ProgressToken>)> {
        let ledger = &self.inner.ledger;
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; items.len()];
        let messages: Vec<&Message> = items.iter().map(HashedMessage::message).collect();
        let cids: Vec<Cid> = items.iter().map(HashedMessage::cid).collect();
        for (i, item) in items.iter().enumerate() {
            if let Err(reason) = check_alone(tenant, item.message(), item.data()) {
                outcomes[i] = Some(ApplyOutcome::invalid(reason));
            }
        }
        // The rows of every record the batch writes or names as a parent, in one batched
        // read (a round trip on a shared store): the checks read them, they say which
        // versions are held already, and the ledger's merge starts from them.
        let unchecked: Vec<usize> = (0..cids.len()).filter(|&i| outcomes[i].is_none()).collect();
        let row_ids: Vec<RecordId> = unchecked
            .iter()
            .filter_map(|&i| match &messages[i] {
                Message::Write(w) => Some([Some(w.record_id), w.parent_id]),
                Message::Delete(d) => Some([Some(d.record_id), None]),
                Message::Configure(_) => None,
            })
            .flatten()
            .flatten()
            .collect();
        let rows = ledger.read_records(tenant, &row_ids)?;
        // Already held: nothing to check (repeated pages and re-sent batches are common).
        // A write or delete is held iff its record retains it; a configure is looked up
        // by cid.
        let configures: Vec<usize> = unchecked
            .iter()
            .copied()
            .filter(|&i| matches!(messages[i], Message::Configure(_)))
            .collect();
        let held = if configures.is_empty() {
            Vec::new()
        } else {
            ledger.has_messages(
                tenant,
                &configures.iter().map(|&i| cids[i]).collect::<Vec<_>>(),
            )?
        };
        for (&i, held) in configures.iter().zip(held) {
            if held {
                outcomes[i] = Some(ApplyOutcome::Duplicate);
            }
        }
        for &i in &unchecked {
            if rows.holds(&cids[i], messages[i]) == Some(true) {
                outcomes[i] = Some(ApplyOutcome::Duplicate);
            }
        }
        let mut pending: Vec<usize> = dependency_order_by(&messages, &cids)
            .into_iter()
            .filter(|&i| outcomes[i].is_none())
            .collect();
        // Only a policy that rewrites losers needs their payloads before the commit
        // prunes them.
        let resolving = *origin != Origin::Local
            && self
                .inner
                .policies
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .any_resolving();
        let mut definitions = Definitions::default();
        definitions.set_records(rows);
        let mut missing: BTreeMap<usize, Vec<Dependency>> = BTreeMap::new();
        let mut tokens = HashMap::new();
        let mut conflicts = Vec::new();
        let mut changes = Vec::new();
        for _pass in 0..APPLY_PASSES_MAX {
            missing.clear();
            let mut ready = Vec::new();
            for &i in &pending {
                match self.check_against_store(tenant, messages[i], &mut definitions)? {
                    Check::Ready => ready.push(i),
                    Check::Missing(deps) => {
                        missing.insert(i, deps);
                    }
                    Check::Invalid(reason) => outcomes[i] = Some(ApplyOutcome::invalid(reason)),
                }
            }
            if *origin != Origin::Local {
                // Remote timestamps move the local clock forward, so later local writes
                // order after what this replica has seen. One too far ahead waits.
                let mut hlc = lock(&self.inner.hlc);
                ready.retain(|&i| match hlc.observe(messages[i].timestamp()) {
                    Ok(_) => true,
                    Err(_) => {
                        outcomes[i] = Some(ApplyOutcome::Deferred);
                        false
                    }
                });
            }
            if ready.is_empty() {
                break;
            }
            // Versions that may lose a conflict in this commit, with their payloads, kept
            // before the commit prunes them so a policy can write them again.
            let mut known: HashMap<Cid, MessageWithData> = HashMap::new();
            for &i in ready.iter().filter(|_| resolving) {
                let head = match messages[i].record_id() {
                    Some(r) => ledger.record_head(tenant, &r)?,
                    None => None,
                };
                if let Some(head) = head
                    && let Some(stored) = ledger.get_message(tenant, &head.winner.cid)?
                {
                    known.insert(stored.cid, (stored.message, stored.data));
                }
                known.insert(
                    cids[i],
                    (
                        items[i].message().clone(),
                        items[i].data().map(<[u8]>::to_vec),
                    ),
                );
            }
            let batch: Vec<&HashedMessage> = ready.iter().map(|&i| &items[i]).collect();
            // The rows read ahead go to the merge (which reads them again if a commit
            // happened since); the checks of a later pass read the committed rows.
            let applied = match definitions.take_records() {
                Some(rows) => {
                    ledger.apply_hashed_with_rows(tenant, &batch, self.inner.durability, rows)?
                }
                None => ledger.apply_hashed(tenant, &batch, self.inner.durability)?,
            };
            // Over a shared store the trees follow the log instead (`follow.rs`).
            let mut index = (!self.inner.shared)
                .then(|| self.inner.index.write().unwrap_or_else(|e| e.into_inner()));
            // The commit's changes to the trees, applied together below.
            let mut tree_added = Vec::with_capacity(ready.len());
            let mut tree_pruned = Vec::new();
            for (&i, result) in ready.iter().zip(applied) {
                let message = messages[i];
                outcomes[i] = Some(match result.outcome {
                    LedgerOutcome::Applied {
                        token,
                        pruned,
                        conflict,
                    } => {
                        if let Some(index) = index.as_mut() {
                            tree_added.push((message.protocol(), result.cid));
                            if index.has_projections(tenant) {
                                let scope_of = self.projection_membership(tenant, message)?;
                                index.insert_projected(tenant, result.cid, |p| scope_of(p));
                            }
                            tree_pruned.extend(pruned.iter().map(|p| (message.protocol(), *p)));
                        }
                        tokens.insert(result.cid, token);
                        changes.push(Change {
                            tenant: tenant.clone(),
                            cid: result.cid,
                            token,
                            record_id: message.record_id(),
                            deleted: matches!(message, Message::Delete(_)),
                            origin: origin.clone(),
                        });
                        if let Some(c) = conflict {
                            conflicts.push((message.record_id(), c));
                        }
                        ApplyOutcome::Applied
                    }
                    LedgerOutcome::Duplicate => ApplyOutcome::Duplicate,
                    LedgerOutcome::Refused { reason } => ApplyOutcome::invalid(reason),
                    LedgerOutcome::Superseded { conflict } => {
                        if let Some(c) = conflict {
                            conflicts.push((message.record_id(), c));
                        }
                        ApplyOutcome::Superseded
                    }
                });
            }
            if let Some(index) = index.as_mut() {
                index.apply_commit(tenant, &tree_added, &tree_pruned);
            }
            drop(index);
            for &i in &ready {
                if let Message::Configure(c) = &messages[i] {
                    definitions.forget(&c.protocol);
                }
            }
            pending.retain(|i| outcomes[*i].is_none());
            self.resolve_conflicts(tenant, &known, &conflicts, origin)?;
            conflicts.clear();
        }
        let outcomes = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| {
                    let mut deps = missing.remove(&i).unwrap_or_default();
                    deps.truncate(MISSING_MAX);
                    ApplyOutcome::Incomplete { missing: deps }
                })
            })
            .collect();
        for change in changes {
            let _ = self.inner.changes.send(change);
        }
        Ok((outcomes, tokens))
    }
}

mod batch;
mod builder;
mod checks;
mod follow;
mod reads;
mod trees;

pub use batch::{BatchOp, Expected, WRITE_BATCH_LEN_MAX, WriteBatch};
pub use follow::{FollowStats, TREE_CACHE_KEYS_DEFAULT, TREE_CACHE_TENANTS_DEFAULT};

use checks::{Check, Definitions, check_alone};

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
