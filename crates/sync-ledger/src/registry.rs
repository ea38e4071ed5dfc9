//! Replication links with their checkpoints, dead letters and registered identities.
//!
//! These are small, rarely written records; every read-modify-write holds the ledger's
//! registry lock so two threads cannot lose each other's update. Times are passed in
//! by the caller (`now_ms`), never read from a clock here.

use serde::{Deserialize, Serialize};
use sync_types::{
    Authorization, Cid, DeadLetter, DeadLetterCategory, DirectionCheckpoint, Endpoint, KnownRanges,
    LinkKey, LinkState, LinkStatus, ProtocolName, Scope, TenantId,
};

use crate::error::{Error, Result};
use crate::layout::{self, Key, dec, enc};
use crate::ledger::{Ledger, lock};
use crate::store::{Batch, Durability, KeyRange, Order, WriteScope};

/// Longest error text kept in a dead letter, in bytes.
pub const DEAD_LETTER_ERROR_BYTES_MAX: usize = sync_types::REASON_BYTES_MAX;

fn link_store_key(key: &LinkKey) -> Vec<u8> {
    Key::tenant(&key.tenant)
        .bytes(key.to_string().as_bytes())
        .into_vec()
}

/// Where a link's [`KnownRanges`] are kept: `meta` `"known/" T link`. Not in the link's
/// state, so the link record keeps its encoding, and its owner (the link machine) is
/// not involved: the ranges only ever save downloads.
fn known_store_key(key: &LinkKey) -> Vec<u8> {
    let mut k = KNOWN_PREFIX.to_vec();
    k.extend(link_store_key(key));
    k
}

const KNOWN_PREFIX: &[u8] = b"known/";

/// Where the node a link last reached is kept: `meta` `"reached/" T link`, beside the
/// link's state for the same reason as its known ranges.
fn reached_store_key(key: &LinkKey) -> Vec<u8> {
    let mut k = REACHED_PREFIX.to_vec();
    k.extend(link_store_key(key));
    k
}

const REACHED_PREFIX: &[u8] = b"reached/";

/// The node a link's calls last reached: one of the nodes its endpoint names (several
/// interchangeable nodes of a shared store), as its connector reported it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReachedNode {
    /// The node.
    pub node: Endpoint,
    /// Since when the link has reached this node, in ms since the Unix epoch (caller's
    /// clock).
    pub since_ms: u64,
}

/// The batch's deletes of what is kept beside a link's state.
fn delete_beside(batch: &mut Batch, key: &LinkKey) {
    batch.delete(layout::META, known_store_key(key));
    batch.delete(layout::META, reached_store_key(key));
}

/// The replication links of a [`Ledger`]; see [`Ledger::links`].
#[derive(Clone, Copy, Debug)]
pub struct Links<'a> {
    ledger: &'a Ledger,
}

/// The dead letters of a [`Ledger`]; see [`Ledger::dead_letters`].
#[derive(Clone, Copy, Debug)]
pub struct DeadLetters<'a> {
    ledger: &'a Ledger,
}

/// The registered identities of a [`Ledger`]; see [`Ledger::identities`].
#[derive(Clone, Copy, Debug)]
pub struct Identities<'a> {
    ledger: &'a Ledger,
}

impl Ledger {
    /// The link ledger.
    pub fn links(&self) -> Links<'_> {
        Links { ledger: self }
    }

    /// The dead letters.
    pub fn dead_letters(&self) -> DeadLetters<'_> {
        DeadLetters { ledger: self }
    }

    /// The registered identities.
    pub fn identities(&self) -> Identities<'_> {
        Identities { ledger: self }
    }
}

impl Links<'_> {
    /// The stored state of a link, exactly as saved. A caller starting a link after a
    /// restart applies [`LinkState::on_load`] to it.
    pub fn get(&self, key: &LinkKey) -> Result<Option<LinkState>> {
        let k = link_store_key(key);
        match self.ledger.store.get(layout::LINKS, &k)? {
            Some(v) => Ok(Some(dec(layout::LINKS, &k, &v)?)),
            None => Ok(None),
        }
    }

    /// The stored link with `new`'s key, or `new` itself after storing it. Returns the
    /// state and whether it was created.
    pub fn get_or_create(
        &self,
        new: LinkState,
        durability: Durability,
    ) -> Result<(LinkState, bool)> {
        let _g = self.ledger.registry_guard()?;
        if let Some(found) = self.get(&new.key)? {
            return Ok((found, false));
        }
        self.put(&new, durability)?;
        Ok((new, true))
    }

    fn put(&self, state: &LinkState, durability: Durability) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(layout::LINKS, link_store_key(&state.key), enc(state));
        self.ledger.commit(batch, durability)
    }

    /// The positions of the link's remote log whose messages this replica holds
    /// already (it pushed them), as last saved.
    pub fn known(&self, key: &LinkKey) -> Result<Option<KnownRanges>> {
        let k = known_store_key(key);
        match self.ledger.store.get(layout::META, &k)? {
            Some(v) => Ok(Some(dec(layout::META, &k, &v)?)),
            None => Ok(None),
        }
    }

    /// Saves (or, when empty, deletes) the link's known positions of its remote log.
    pub fn save_known(
        &self,
        key: &LinkKey,
        known: &KnownRanges,
        durability: Durability,
    ) -> Result<()> {
        let mut batch = Batch::new();
        if known.is_empty() {
            batch.delete(layout::META, known_store_key(key));
        } else {
            batch.put(layout::META, known_store_key(key), enc(known));
        }
        self.ledger.commit(batch, durability)
    }

    /// The node the link last reached, as last saved.
    pub fn reached(&self, key: &LinkKey) -> Result<Option<ReachedNode>> {
        let k = reached_store_key(key);
        match self.ledger.store.get(layout::META, &k)? {
            Some(v) => Ok(Some(dec(layout::META, &k, &v)?)),
            None => Ok(None),
        }
    }

    /// Saves the node the link last reached (deleted with the link).
    pub fn save_reached(
        &self,
        key: &LinkKey,
        reached: &ReachedNode,
        durability: Durability,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(layout::META, reached_store_key(key), enc(reached));
        self.ledger.commit(batch, durability)
    }

    /// Saves a link's whole state (creating it if needed).
    pub fn save(&self, state: &LinkState, durability: Durability) -> Result<()> {
        let _g = self.ledger.registry_guard()?;
        self.put(state, durability)
    }

    /// Changes one stored link under the registry lock; returns the new state.
    pub fn update(
        &self,
        key: &LinkKey,
        durability: Durability,
        change: impl FnOnce(&mut LinkState),
    ) -> Result<LinkState> {
        let _g = self.ledger.registry_guard()?;
        let mut state = self
            .get(key)?
            .ok_or_else(|| Error::LinkNotFound(key.to_string()))?;
        change(&mut state);
        self.put(&state, durability)?;
        Ok(state)
    }

    /// Saves a link's pull checkpoint and last activity time.
    pub fn save_pull_checkpoint(
        &self,
        key: &LinkKey,
        checkpoint: DirectionCheckpoint,
        now_ms: u64,
        durability: Durability,
    ) -> Result<LinkState> {
        self.update(key, durability, |s| {
            s.pull = checkpoint;
            s.last_activity_ms = Some(now_ms);
        })
    }

    /// Saves a link's push checkpoint and last activity time.
    pub fn save_push_checkpoint(
        &self,
        key: &LinkKey,
        checkpoint: DirectionCheckpoint,
        now_ms: u64,
        durability: Durability,
    ) -> Result<LinkState> {
        self.update(key, durability, |s| {
            s.push = checkpoint;
            s.last_activity_ms = Some(now_ms);
        })
    }

    /// Sets a link's status, if the state machine allows the transition.
    pub fn set_status(
        &self,
        key: &LinkKey,
        status: LinkStatus,
        now_ms: u64,
        durability: Durability,
    ) -> Result<std::result::Result<LinkState, sync_types::TransitionError>> {
        let _g = self.ledger.registry_guard()?;
        let mut state = self
            .get(key)?
            .ok_or_else(|| Error::LinkNotFound(key.to_string()))?;
        if let Err(e) = state.set_status(status) {
            return Ok(Err(e));
        }
        state.last_activity_ms = Some(now_ms);
        self.put(&state, durability)?;
        Ok(Ok(state))
    }

    /// Sets or clears a link's `needs_reconcile` flag.
    pub fn set_needs_reconcile(
        &self,
        key: &LinkKey,
        needs_reconcile: bool,
        durability: Durability,
    ) -> Result<LinkState> {
        self.update(key, durability, |s| s.needs_reconcile = needs_reconcile)
    }

    /// Every link of a tenant, ordered by key.
    pub fn list(&self, tenant: &TenantId) -> Result<Vec<LinkState>> {
        self.scan(KeyRange::prefix(&Key::tenant(tenant).into_vec()))
    }

    /// Every link, ordered by tenant and key.
    pub fn list_all(&self) -> Result<Vec<LinkState>> {
        self.scan(KeyRange::all())
    }

    fn scan(&self, range: KeyRange) -> Result<Vec<LinkState>> {
        self.ledger
            .store
            .scan(layout::LINKS, range, Order::Ascending)?
            .map(|kv| {
                let (k, v) = kv?;
                dec(layout::LINKS, &k, &v)
            })
            .collect()
    }

    /// Deletes a link; returns whether it existed.
    pub fn delete(&self, key: &LinkKey, durability: Durability) -> Result<bool> {
        let _g = self.ledger.registry_guard()?;
        let existed = self.get(key)?.is_some();
        if existed {
            let mut batch = Batch::new();
            batch.delete(layout::LINKS, link_store_key(key));
            delete_beside(&mut batch, key);
            self.ledger.commit(batch, durability)?;
        }
        Ok(existed)
    }

    /// Deletes every link of `tenant` whose identity key
    /// ([`LinkKey::identity_key`]) is not in `keep`: the links an identity update or
    /// unregistration superseded. Returns the deleted keys.
    pub fn prune(
        &self,
        tenant: &TenantId,
        keep: &[String],
        durability: Durability,
    ) -> Result<Vec<LinkKey>> {
        let _g = self.ledger.registry_guard()?;
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for link in self.list(tenant)? {
            if !keep.contains(&link.key.identity_key()) {
                batch.delete(layout::LINKS, link_store_key(&link.key));
                delete_beside(&mut batch, &link.key);
                deleted.push(link.key);
            }
        }
        self.ledger.commit(batch, durability)?;
        Ok(deleted)
    }
}

/// Which dead letters to list or clear; `None` fields match everything.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct DeadLetterFilter {
    /// Only this tenant's.
    pub tenant: Option<TenantId>,
    /// Only failures with this endpoint.
    pub endpoint: Option<Endpoint>,
    /// Only these categories (any when empty).
    pub categories: Vec<DeadLetterCategory>,
    /// Only this protocol (entries without a protocol never match a set protocol).
    pub protocol: Option<ProtocolName>,
}

impl DeadLetterFilter {
    /// Whether `d` matches.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == d.tenant)
            && self.endpoint.as_ref().is_none_or(|e| *e == d.endpoint)
            && (self.categories.is_empty() || self.categories.contains(&d.category))
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| d.protocol.as_ref() == Some(p))
    }
}

fn dead_letter_key(tenant: &TenantId, cid: &Cid, endpoint: &Endpoint) -> Vec<u8> {
    Key::tenant(tenant)
        .cid(cid)
        .bytes(endpoint.as_str().as_bytes())
        .into_vec()
}

impl DeadLetters<'_> {
    /// Records a failure of `letter.cid` with `letter.endpoint`. A failure of the same
    /// pair replaces the stored one and counts one more attempt (the caller's
    /// `attempts` is ignored); the error text is cut to
    /// [`DEAD_LETTER_ERROR_BYTES_MAX`]. Returns the stored letter.
    pub fn record(&self, mut letter: DeadLetter, durability: Durability) -> Result<DeadLetter> {
        let _g = self.ledger.registry_guard()?;
        let key = dead_letter_key(&letter.tenant, &letter.cid, &letter.endpoint);
        let previous: Option<DeadLetter> =
            match self.ledger.store.get(layout::DEAD_LETTERS, &key)? {
                Some(v) => Some(dec(layout::DEAD_LETTERS, &key, &v)?),
                None => None,
            };
        letter.attempts = previous.map_or(1, |p| p.attempts.saturating_add(1));
        letter.error = sync_types::truncate_reason(letter.error);
        let mut batch = Batch::new();
        batch.put(layout::DEAD_LETTERS, key, enc(&letter));
        self.ledger.commit(batch, durability)?;
        Ok(letter)
    }

    /// One dead letter.
    pub fn get(
        &self,
        tenant: &TenantId,
        cid: &Cid,
        endpoint: &Endpoint,
    ) -> Result<Option<DeadLetter>> {
        let key = dead_letter_key(tenant, cid, endpoint);
        match self.ledger.store.get(layout::DEAD_LETTERS, &key)? {
            Some(v) => Ok(Some(dec(layout::DEAD_LETTERS, &key, &v)?)),
            None => Ok(None),
        }
    }

    /// The dead letters matching `filter`, newest first (by `failed_at_ms`, then cid).
    pub fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let range = match &filter.tenant {
            Some(t) => KeyRange::prefix(&Key::tenant(t).into_vec()),
            None => KeyRange::all(),
        };
        let mut out = Vec::new();
        for kv in self
            .ledger
            .store
            .scan(layout::DEAD_LETTERS, range, Order::Ascending)?
        {
            let (k, v) = kv?;
            let d: DeadLetter = dec(layout::DEAD_LETTERS, &k, &v)?;
            if filter.matches(&d) {
                out.push(d);
            }
        }
        out.sort_by(|a, b| {
            b.failed_at_ms
                .cmp(&a.failed_at_ms)
                .then(a.cid.cmp(&b.cid))
                .then(a.endpoint.cmp(&b.endpoint))
        });
        Ok(out)
    }

    /// Number of dead letters matching `filter`.
    pub fn count(&self, filter: &DeadLetterFilter) -> Result<u64> {
        Ok(self.list(filter)?.len() as u64)
    }

    /// Clears one (cid, endpoint) entry; returns whether it existed.
    pub fn clear(
        &self,
        tenant: &TenantId,
        cid: &Cid,
        endpoint: &Endpoint,
        durability: Durability,
    ) -> Result<bool> {
        let _g = self.ledger.registry_guard()?;
        let key = dead_letter_key(tenant, cid, endpoint);
        if self.ledger.store.get(layout::DEAD_LETTERS, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(layout::DEAD_LETTERS, key);
        self.ledger.commit(batch, durability)?;
        Ok(true)
    }

    /// Clears every entry matching `filter` in one batch (by link: tenant and endpoint;
    /// by category; or both); returns how many.
    pub fn clear_matching(
        &self,
        filter: &DeadLetterFilter,
        durability: Durability,
    ) -> Result<usize> {
        let _g = self.ledger.registry_guard()?;
        let mut batch = Batch::new();
        for d in self.list(filter)? {
            batch.delete(
                layout::DEAD_LETTERS,
                dead_letter_key(&d.tenant, &d.cid, &d.endpoint),
            );
        }
        let n = batch.len();
        if n > 0 {
            self.ledger.commit(batch, durability)?;
        }
        Ok(n)
    }
}

/// An identity registered for sync: a tenant, the endpoints it syncs with, what it
/// syncs, and the credentials it uses.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RegisteredIdentity {
    /// The tenant.
    pub tenant: TenantId,
    /// The remote nodes, in the order the application gave them.
    pub endpoints: Vec<Endpoint>,
    /// What to replicate.
    pub scope: Scope,
    /// How to authenticate.
    pub authorization: Authorization,
    /// The capability token presented to the endpoints, if any.
    pub token: Option<String>,
    /// When it was registered or last updated, in ms since the Unix epoch (caller's
    /// clock).
    pub updated_ms: u64,
}

impl Identities<'_> {
    fn key(tenant: &TenantId) -> Vec<u8> {
        Key::tenant(tenant).into_vec()
    }

    /// The identity registered for a tenant.
    pub fn get(&self, tenant: &TenantId) -> Result<Option<RegisteredIdentity>> {
        let key = Self::key(tenant);
        match self.ledger.store.get(layout::IDENTITIES, &key)? {
            Some(v) => Ok(Some(dec(layout::IDENTITIES, &key, &v)?)),
            None => Ok(None),
        }
    }

    /// Registers an identity; fails with [`Error::IdentityExists`] when the tenant
    /// already has one.
    pub fn register(&self, identity: &RegisteredIdentity, durability: Durability) -> Result<()> {
        let _g = self.ledger.registry_guard()?;
        if self.get(&identity.tenant)?.is_some() {
            return Err(Error::IdentityExists(identity.tenant.clone()));
        }
        self.put(identity, durability)
    }

    /// Replaces a registered identity; fails with [`Error::IdentityNotFound`] when
    /// the tenant has none. Returns the previous registration.
    pub fn update(
        &self,
        identity: &RegisteredIdentity,
        durability: Durability,
    ) -> Result<RegisteredIdentity> {
        let _g = self.ledger.registry_guard()?;
        let previous = self
            .get(&identity.tenant)?
            .ok_or_else(|| Error::IdentityNotFound(identity.tenant.clone()))?;
        self.put(identity, durability)?;
        Ok(previous)
    }

    fn put(&self, identity: &RegisteredIdentity, durability: Durability) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            layout::IDENTITIES,
            Self::key(&identity.tenant),
            enc(identity),
        );
        self.ledger.commit(batch, durability)
    }

    /// Unregisters a tenant's identity and deletes all its links in the same batch;
    /// returns the removed registration.
    pub fn unregister(
        &self,
        tenant: &TenantId,
        durability: Durability,
    ) -> Result<RegisteredIdentity> {
        let _g = self.ledger.registry_guard()?;
        let previous = self
            .get(tenant)?
            .ok_or_else(|| Error::IdentityNotFound(tenant.clone()))?;
        let mut batch = Batch::new();
        batch.delete(layout::IDENTITIES, Self::key(tenant));
        for link in self.ledger.links().list(tenant)? {
            batch.delete(layout::LINKS, link_store_key(&link.key));
            delete_beside(&mut batch, &link.key);
        }
        self.ledger.commit(batch, durability)?;
        Ok(previous)
    }

    /// Every registered identity, ordered by tenant.
    pub fn list(&self) -> Result<Vec<RegisteredIdentity>> {
        self.ledger
            .store
            .scan(layout::IDENTITIES, KeyRange::all(), Order::Ascending)?
            .map(|kv| {
                let (k, v) = kv?;
                dec(layout::IDENTITIES, &k, &v)
            })
            .collect()
    }
}

/// Held while a registry read-modify-write runs (see [`Ledger::registry_guard`]). The
/// shared store's lock is released first (fields drop in order), then the process's.
pub(crate) struct RegistryGuard<'a> {
    _shared: Option<Box<dyn crate::store::WriteTxn + 'a>>,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Ledger {
    /// Serializes a read-modify-write of links, dead letters or identities: within the
    /// process (`registry_lock`), and on a shared store across processes too, with the
    /// store's [`WriteScope::Registry`] lock held in a transaction of its own until the
    /// guard drops (after the write committed).
    pub(crate) fn registry_guard(&self) -> Result<RegistryGuard<'_>> {
        let local = lock(&self.registry_lock);
        let shared = if self.shared {
            let mut txn = self.store.begin()?;
            txn.lock(WriteScope::Registry)?;
            Some(txn)
        } else {
            None
        };
        Ok(RegistryGuard {
            _shared: shared,
            _local: local,
        })
    }
}
