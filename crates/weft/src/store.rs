//! [`Weft`]: an application's handle on its local store, and on the sync with a node.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, SyncConfig};
use sync_ledger::{Durability, FjallStore, MemoryStore, Store};
use sync_transport::Token;
use sync_types::{
    Endpoint, HealthSummary, LinkState, PrincipalId, ProtocolName, ProtocolPath, TenantId, TypeRule,
};

use crate::collection::Collection;
use crate::error::{Error, Result, blocking, check_report};
use crate::index::KeyIndex;

/// How long [`Weft::stop_live`] and [`Weft::close`] wait for live links to stop.
pub const LIVE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The path every collection's records live at in its protocol.
pub const COLLECTION_PATH: &str = "item";

/// An application's local store: typed collections, queries, a change feed, and sync
/// with a node. Cheap to clone (a handle). Every call that touches the disk runs on
/// tokio's blocking pool, so none blocks an async worker; a tokio runtime must be
/// running.
#[derive(Clone)]
pub struct Weft {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) replica: Replica,
    pub(crate) tenant: TenantId,
    author: RwLock<PrincipalId>,
    engine: Engine<Arc<HttpConnector>>,
    live: tokio::sync::Mutex<Option<LiveSync<Arc<HttpConnector>>>>,
    configured: Mutex<HashSet<ProtocolName>>,
    pub(crate) keys: KeyIndex,
}

impl std::fmt::Debug for Weft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weft")
            .field("tenant", &self.inner.tenant)
            .finish_non_exhaustive()
    }
}

/// Opens a [`Weft`].
#[must_use]
#[derive(Debug)]
pub struct WeftBuilder {
    tenant: String,
    author: Option<String>,
    durability: Durability,
    sync: SyncConfig,
}

impl WeftBuilder {
    /// Who writes, until a token says otherwise. Default: the principal of the token
    /// registered by an earlier [`Weft::connect`], else the tenant itself (its owner).
    pub fn author(mut self, author: impl Into<String>) -> Self {
        self.author = Some(author.into());
        self
    }

    /// The durability of every commit. Default: [`Durability::SyncData`], so an
    /// acknowledged write survives a power loss.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How sync pages, pushes, retries and fetches blobs (for example
    /// `blob_fetch: false` on a metered network: large values stay
    /// [`Residency::Staged`](crate::Residency::Staged) until fetched). Default:
    /// [`SyncConfig::default`].
    pub fn sync_config(mut self, config: SyncConfig) -> Self {
        self.sync = config;
        self
    }

    /// Opens (or creates) the store in directory `dir`: the replica in `dir/replica`,
    /// the key index in `dir/keys`.
    pub async fn open(self, dir: impl AsRef<Path>) -> Result<Weft> {
        let dir = dir.as_ref().to_path_buf();
        blocking(move || {
            let replica = Replica::builder()
                .durability(self.durability)
                .open(dir.join("replica"))?;
            let keys: Arc<dyn Store> = Arc::new(FjallStore::open(dir.join("keys"))?);
            self.finish(replica, keys)
        })
        .await
    }

    /// Opens a store in memory (tests, caches).
    pub async fn in_memory(self) -> Result<Weft> {
        blocking(move || {
            let replica = Replica::builder().durability(self.durability).in_memory()?;
            self.finish(replica, Arc::new(MemoryStore::new()))
        })
        .await
    }

    fn finish(self, replica: Replica, keys: Arc<dyn Store>) -> Result<Weft> {
        let tenant = TenantId::new(self.tenant)?;
        let engine = Engine::builder(replica.clone(), Arc::new(HttpConnector::default()))
            .config(self.sync)
            .build();
        let registered = engine
            .identities()?
            .into_iter()
            .find(|i| i.tenant == tenant)
            .and_then(|i| i.token)
            .and_then(|t| t.parse::<Token>().ok())
            .map(|t| t.unverified_claims().principal.clone());
        let author = match (registered, self.author) {
            (Some(principal), _) => principal,
            (None, Some(author)) => PrincipalId::new(author)?,
            (None, None) => PrincipalId::new(tenant.as_str())?,
        };
        Ok(Weft {
            inner: Arc::new(Inner {
                keys: KeyIndex::new(keys, self.durability),
                replica,
                tenant,
                author: RwLock::new(author),
                engine,
                live: tokio::sync::Mutex::new(None),
                configured: Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl Weft {
    /// A builder for the store of `tenant` (the owner's namespace: a user id, a DID).
    pub fn builder(tenant: impl Into<String>) -> WeftBuilder {
        WeftBuilder {
            tenant: tenant.into(),
            author: None,
            durability: Durability::SyncData,
            sync: SyncConfig::default(),
        }
    }

    /// Opens (or creates) the store of `tenant` in directory `dir` with defaults.
    pub async fn open(dir: impl AsRef<Path>, tenant: impl Into<String>) -> Result<Weft> {
        Self::builder(tenant).open(dir).await
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.inner.tenant
    }

    /// Who writes: the principal of the connected token (a node refuses writes by
    /// anyone else), or the builder's author.
    pub fn author(&self) -> PrincipalId {
        self.inner
            .author
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The replica underneath, for what the facade does not cover (explicit protocols
    /// and type rules, conflict policies, blobs, events).
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// The sync engine underneath (dead letters, per-link sync, blob fetches).
    pub fn engine(&self) -> &Engine<Arc<HttpConnector>> {
        &self.inner.engine
    }

    /// The collection `name` of values of type `T`, JSON-encoded. Its protocol
    /// (`weft:collection/<name>`, one type at [`COLLECTION_PATH`] with no size limit)
    /// is configured on first use.
    pub async fn collection<T>(&self, name: &str) -> Result<Collection<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let protocol = ProtocolName::new(format!("weft:collection/{name}"))?;
        let path = ProtocolPath::new(COLLECTION_PATH)?;
        self.ensure_protocol(&protocol, &path).await?;
        Ok(Collection::new(self.clone(), protocol, path))
    }

    /// A collection over a protocol the application configured itself (with
    /// [`Replica::configure`], its own type rules and size limits), at `path`.
    pub fn collection_in<T>(&self, protocol: ProtocolName, path: ProtocolPath) -> Collection<T>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        Collection::new(self.clone(), protocol, path)
    }

    async fn ensure_protocol(&self, protocol: &ProtocolName, path: &ProtocolPath) -> Result<()> {
        if self
            .inner
            .configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(protocol)
        {
            return Ok(());
        }
        let this = self.clone();
        let (protocol, path) = (protocol.clone(), path.clone());
        blocking(move || {
            let inner = &this.inner;
            // Under the set's lock, so two first uses configure once.
            let mut configured = inner.configured.lock().unwrap_or_else(|e| e.into_inner());
            if !configured.contains(&protocol)
                && !inner.replica.has_protocol(&inner.tenant, &protocol)?
            {
                let rule = TypeRule {
                    path,
                    data_bytes_max: None,
                };
                inner.replica.configure(
                    &inner.tenant,
                    &protocol,
                    vec![rule],
                    vec![],
                    &this.author(),
                )?;
            }
            configured.insert(protocol);
            Ok(())
        })
        .await
    }

    // ---- sync ----

    /// Syncs with `node` (`http://host:port`) presenting `token` (issued by the node's
    /// key). The token's principal becomes the [`author`](Self::author) of later writes;
    /// its scope is what syncs. The registration is stored: a store opened again syncs
    /// with the same node without a new `connect`.
    pub async fn connect(&self, node: &str, token: &str) -> Result<()> {
        let endpoint = Endpoint::new(node)?;
        let parsed: Token = token.trim().parse()?;
        let claims = parsed.unverified_claims().clone();
        if claims.tenant != self.inner.tenant {
            return Err(Error::Validation(sync_types::ValidationError::Malformed {
                what: "token",
                reason: "the token is for another tenant",
            }));
        }
        let identity = Identity {
            tenant: self.inner.tenant.clone(),
            endpoints: vec![endpoint],
            scope: claims.scope.clone(),
            authorization: claims.authorization(),
            token: Some(token.trim().to_owned()),
        };
        // Registering writes the link store (a synced write): off the worker. Live links
        // stop first and start again over the new registration.
        let mut live = self.inner.live.lock().await;
        let was_live = match live.take() {
            Some(running) => {
                running.stop(LIVE_STOP_TIMEOUT).await;
                true
            }
            None => false,
        };
        let this = self.clone();
        let registered = blocking(move || {
            let engine = &this.inner.engine;
            let known = engine
                .identities()?
                .into_iter()
                .any(|i| i.tenant == this.inner.tenant);
            if known {
                engine.update_identity(identity)?;
            } else {
                engine.register_identity(identity)?;
            }
            Ok(())
        })
        .await;
        if was_live {
            *live = Some(LiveSync::start(
                self.inner.engine.clone(),
                LinkConfig::default(),
            )?);
        }
        registered?;
        *self.inner.author.write().unwrap_or_else(|e| e.into_inner()) = claims.principal;
        Ok(())
    }

    /// One sync with every connected node: pull, push, compare roots. `Ok` only when
    /// every link ran and converged; otherwise the error names the link and why, with
    /// the detailed report.
    pub async fn sync(&self) -> Result<sync_engine::SyncReport> {
        if !self.connected().await? {
            return Err(Error::NotConnected);
        }
        check_report(self.inner.engine.sync_once().await)
    }

    /// Starts live sync: changes are pushed as they are written and pulled as the node
    /// announces them; links reconnect by themselves. Idempotent.
    pub async fn start_live(&self) -> Result<()> {
        let mut live = self.inner.live.lock().await;
        if live.is_none() {
            if !self.connected().await? {
                return Err(Error::NotConnected);
            }
            *live = Some(LiveSync::start(
                self.inner.engine.clone(),
                LinkConfig::default(),
            )?);
        }
        Ok(())
    }

    async fn connected(&self) -> Result<bool> {
        let this = self.clone();
        blocking(move || Ok(!this.inner.engine.identities()?.is_empty())).await
    }

    /// Stops live sync (waiting at most [`LIVE_STOP_TIMEOUT`]); writes stay local until
    /// the next sync.
    pub async fn stop_live(&self) {
        let live = self.inner.live.lock().await.take();
        if let Some(live) = live {
            live.stop(LIVE_STOP_TIMEOUT).await;
        }
    }

    /// The state of every link: status, connectivity, checkpoints, counters.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        let this = self.clone();
        blocking(move || Ok(this.inner.engine.links()?)).await
    }

    /// The sync status in one summary: connectivity, unsent local changes, dead
    /// letters, when a sync last completed, and whether all is well.
    pub async fn status(&self) -> Result<HealthSummary> {
        let this = self.clone();
        blocking(move || Ok(this.inner.engine.health()?)).await
    }

    /// Stops live sync and closes the store: the last handle (a `Weft` clone, a
    /// [`Collection`], a running feed) to go flushes it and releases its directory, so
    /// the next open replays nothing.
    pub async fn close(self) -> Result<()> {
        self.stop_live().await;
        let inner = self.inner.clone();
        drop(self);
        blocking(move || {
            inner.keys.close()?;
            inner.replica.clone().close()?;
            Ok(())
        })
        .await
    }
}
