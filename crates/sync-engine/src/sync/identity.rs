//! Identities and links: what an application registers, the links made from it, and
//! the checks a link passes before it runs.

use sync_ledger::{DeadLetterFilter, RegisteredIdentity};
use sync_types::{
    Authorization, DeadLetterCategory, Endpoint, LinkKey, LinkState, LinkStatus, Scope, TenantId,
};

use crate::error::{Error, Result};

use super::{Connector, Engine, LinkCtx, grants_expired, lock};

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

impl<C: Connector> Engine<C> {
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
    pub(super) fn inherit_checkpoints(
        &self,
        key: &LinkKey,
        superseded: &[LinkState],
    ) -> Result<()> {
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

    pub(super) fn to_registered(&self, identity: Identity) -> Result<RegisteredIdentity> {
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

    pub(super) fn ensure_links(&self, identity: &RegisteredIdentity) -> Result<Vec<LinkKey>> {
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

    pub(super) fn link_ctx(&self, key: &LinkKey) -> Result<LinkCtx<C::Remote>> {
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
            meters: super::meter::Meters::new(self.replica(), key),
        })
    }

    /// The checks of [`link_ctx`](Self::link_ctx) without its side effects (creating
    /// missing link rows, opening a connection): what applying a live event needs.
    pub(super) fn check_live_link(&self, key: &LinkKey) -> Result<()> {
        let identity = self.link_identity(key)?;
        self.check_usable(key, &identity)
    }

    /// The registered identity `key` belongs to, if the link is one of its current
    /// links (same endpoint, scope and authorization).
    pub(super) fn link_identity(&self, key: &LinkKey) -> Result<RegisteredIdentity> {
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
    pub(super) fn check_usable(&self, key: &LinkKey, identity: &RegisteredIdentity) -> Result<()> {
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

    pub(super) fn load(&self, key: &LinkKey) -> Result<LinkState> {
        self.ledger()
            .links()
            .get(key)?
            .ok_or_else(|| Error::UnknownLink(key.to_string()))
    }

    pub(super) async fn lock_link(&self, key: &LinkKey) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.inner.link_locks)
            .entry(key.clone())
            .or_default()
            .clone();
        m.lock_owned().await
    }
}
