//! The replica's Merkle trees: the full tenant and protocol-set trees kept by the index,
//! and projection trees built on demand from the ledger's path and context indexes.

use std::convert::Infallible;
use sync_smt::{Hash, Tree};

use sync_types::{
    Cid, Direction, Message, Projection, ProtocolName, RecordId, Scope, ScopeClass, TenantId,
};

use super::Replica;
use crate::error::Result;

impl Replica {
    /// Runs `f` on the tree of `scope` for `tenant` (loading protocol trees on first use,
    /// building projection trees from the record indexes).
    pub fn with_tree<R>(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        f: impl FnOnce(&Tree) -> R,
    ) -> Result<R> {
        // Over a shared store: follow the log first, and hold the follow lock through
        // the lazy loads below, so none misses a commit a concurrent follow applied.
        let _follow = if self.inner.shared {
            let guard = super::lock(&self.inner.follow);
            self.follow_locked(tenant)?;
            Some(guard)
        } else {
            None
        };
        if let Scope::Projection(projection) = scope {
            {
                let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
                if let Some(tree) = index.projection(tenant, projection) {
                    return Ok(f(tree));
                }
            }
            // Built under the index's write lock: a commit whose index update is still
            // pending then inserts into the cached tree (idempotently), so it cannot be
            // missed.
            let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
            let tree = self.projection_tree(tenant, projection)?;
            let result = f(&tree);
            index.cache_projection(tenant, projection.clone(), tree);
            return Ok(result);
        }
        if let Scope::ProtocolSet(set) = scope {
            let unloaded: Vec<&ProtocolName> = {
                let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
                set.protocols()
                    .iter()
                    .filter(|p| !index.has_protocol(tenant, p))
                    .collect()
            };
            if !unloaded.is_empty() {
                let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
                for protocol in unloaded {
                    if !index.has_protocol(tenant, protocol) {
                        let cids: Vec<Cid> = self
                            .inner
                            .ledger
                            .protocol_cids(tenant, protocol)?
                            .collect::<std::result::Result<_, _>>()?;
                        index.load_protocol(tenant, protocol, cids);
                    }
                }
            }
        }
        let index = self.inner.index.read().unwrap_or_else(|e| e.into_inner());
        let tree = index
            .tree(tenant, scope)
            .expect("full and protocol-set scopes always have a tree");
        Ok(f(&tree))
    }

    /// The root of `scope` for `tenant`.
    pub fn root(&self, tenant: &TenantId, scope: &Scope) -> Result<Hash> {
        self.with_tree(tenant, scope, Tree::root)
    }

    /// Decides, for any projection, whether it covers `message`: the scope gate pulling
    /// ([`Projection::gate`], [`Direction::Pull`]), the rule
    /// [`projection_tree`](Self::projection_tree) builds by (a configure by its protocol,
    /// a write by its path and context, a delete by its record's).
    pub(super) fn projection_membership(
        &self,
        tenant: &TenantId,
        message: &Message,
    ) -> Result<impl Fn(&Projection) -> bool + use<>> {
        let place = match message {
            Message::Delete(d) => self.record_place(tenant, &d.record_id)?,
            Message::Write(_) | Message::Configure(_) => None,
        };
        let message = message.clone();
        Ok(move |projection: &Projection| {
            let initial_write = |_: &RecordId| Ok::<_, Infallible>(place.clone());
            let Ok(class) = projection.gate(Direction::Pull, &message, &initial_write);
            class == ScopeClass::InScope
        })
    }

    /// A projection covers the configures of its protocols (records need them) and the
    /// retained messages of records under its path and context prefixes.
    fn projection_tree(&self, tenant: &TenantId, projection: &Projection) -> Result<Tree> {
        let ledger = &self.inner.ledger;
        let mut keys = Vec::new();
        for entry in projection.entries() {
            keys.extend(
                ledger
                    .configures(tenant, &entry.protocol)?
                    .into_iter()
                    .map(|c| *c.as_bytes()),
            );
            if entry.is_whole_protocol() {
                for cid in ledger.protocol_cids(tenant, &entry.protocol)? {
                    keys.push(*cid?.as_bytes());
                }
                continue;
            }
            for path in &entry.path_prefixes {
                keys.extend(
                    ledger
                        .path_cids(tenant, &entry.protocol, path)?
                        .into_iter()
                        .map(|c| *c.as_bytes()),
                );
            }
            for context in &entry.context_prefixes {
                keys.extend(
                    ledger
                        .context_cids(tenant, &entry.protocol, context)?
                        .into_iter()
                        .map(|c| *c.as_bytes()),
                );
            }
        }
        Ok(Tree::from_keys(keys))
    }
}
