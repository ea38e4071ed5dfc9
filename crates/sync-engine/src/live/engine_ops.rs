//! The live driver over the engine: [`EngineOps`] implements [`LinkOps`] with the
//! engine's operations, and [`LiveSync`] runs an engine's links in a [`LiveDriver`].

use std::sync::Arc;
use std::time::Duration;

use sync_ledger::LogEntry;
use sync_types::{LinkKey, LinkState, ProgressToken};

use crate::machine::{
    CatchUpResult, EventClass, LinkConfig, LinkError, LinkErrorKind, PushResult, ReconcileResult,
};

use super::{LinkOps, LiveDriver};

/// [`LinkOps`] over an [`Engine`](crate::sync::Engine): the engine's catch-up, push and
/// reconcile, the connector's subscription, and the replica's apply.
///
/// A push is retried inside the operation, on the engine's one retry schedule
/// ([`SyncConfig::push_retry_backoff_ms`](crate::sync::SyncConfig::push_retry_backoff_ms));
/// a push that still fails sends the link to a reconcile.
pub struct EngineOps<C: crate::sync::Connector> {
    engine: crate::sync::Engine<C>,
}

impl<C: crate::sync::Connector> std::fmt::Debug for EngineOps<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOps").finish_non_exhaustive()
    }
}

impl<C: crate::sync::Connector> EngineOps<C> {
    /// Operations over `engine`.
    pub fn new(engine: crate::sync::Engine<C>) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &crate::sync::Engine<C> {
        &self.engine
    }

    fn token(&self, tenant: &sync_types::TenantId) -> Option<String> {
        self.engine
            .identities()
            .ok()?
            .into_iter()
            .find(|i| &i.tenant == tenant)
            .and_then(|i| i.token)
    }
}

impl<C: crate::sync::Connector> LinkOps for EngineOps<C> {
    type Feed = sync_transport::Subscription;

    async fn push(&self, link: LinkState, _after: Option<ProgressToken>) -> PushResult {
        match self.engine.push_from(&link.key, Some(link.push)).await {
            Ok(outcome) if outcome.exhausted => PushResult::Failed("push retries exhausted".into()),
            Ok(outcome) => PushResult::Settled {
                upto: outcome.checkpoint,
            },
            Err(e) => PushResult::Failed(LinkError::from(&e)),
        }
    }

    async fn catch_up(&self, link: LinkState, _after: Option<ProgressToken>) -> CatchUpResult {
        match self.engine.catch_up_from(&link.key, Some(link.pull)).await {
            Ok(outcome) => match outcome.stop {
                Some(crate::sync::CatchUpStop::Gap(gap)) => CatchUpResult::Gap(gap),
                Some(crate::sync::CatchUpStop::Unsettled { cid, outcome: o }) => {
                    CatchUpResult::Failed(LinkError::new(
                        LinkErrorKind::Other,
                        format!("entry {cid} not settled: {o}"),
                    ))
                }
                None => CatchUpResult::Done {
                    upto: outcome.checkpoint,
                    head: outcome.reached_head.then_some(outcome.checkpoint).flatten(),
                },
            },
            Err(
                e @ (crate::Error::TerminalIncomplete { .. } | crate::Error::GrantExpired { .. }),
            ) => CatchUpResult::Terminal(LinkError::from(&e)),
            Err(e) => CatchUpResult::Failed(LinkError::from(&e)),
        }
    }

    async fn reconcile(&self, link: LinkState) -> ReconcileResult {
        match self.engine.reconcile(&link.key).await {
            Ok(outcome) => ReconcileResult::Done {
                converged: outcome.converged,
            },
            Err(
                e @ (crate::Error::TerminalIncomplete { .. } | crate::Error::GrantExpired { .. }),
            ) => ReconcileResult::Terminal(LinkError::from(&e)),
            Err(e) => ReconcileResult::Failed(LinkError::from(&e)),
        }
    }

    async fn subscribe(
        &self,
        link: LinkState,
        from: Option<ProgressToken>,
    ) -> Result<Self::Feed, LinkError> {
        use sync_transport::Remote as _;
        let token = self.token(&link.key.tenant);
        let remote = self
            .engine
            .connector()
            .connect(&link.key.endpoint, token.as_deref())
            .map_err(|e| LinkError::from(&crate::Error::from(e)))?;
        // What this replica pushed is left out of the replay (no echo after a
        // restart); what it pushes while subscribed is left out by its session.
        let known = self
            .engine
            .known_after(&link.key, from)
            .map_err(|e| LinkError::from(&e))?;
        remote
            .subscribe_known(
                sync_transport::proto::SubscribeRequest {
                    tenant: link.key.tenant.clone(),
                    scope: link.scope.clone(),
                    from,
                    filter: sync_transport::proto::LogFilter::default(),
                },
                known,
            )
            .await
            .map_err(|e| LinkError::from(&crate::Error::from(e)))
    }

    fn own(&self, link: &LinkKey, sink: crate::link_news::NewsSink) {
        self.engine.own_link(link.clone(), sink);
    }

    fn release(&self, link: &LinkKey) {
        self.engine.release_link(link);
    }

    fn classify(&self, link: &LinkState, entry: &LogEntry) -> EventClass {
        let replica = self.engine.replica();
        match replica
            .ledger()
            .has_message(&link.key.tenant, &entry.token.cid)
        {
            Ok(true) => return EventClass::Skip,
            Ok(false) => {}
            Err(_) => return EventClass::Unknown,
        }
        match self.engine.gate_live(link, &entry.message) {
            Ok(sync_types::ScopeClass::InScope) => EventClass::Apply,
            Ok(sync_types::ScopeClass::OutOfScope) => EventClass::Skip,
            Ok(sync_types::ScopeClass::Unknown) | Err(_) => EventClass::Unknown,
        }
    }

    async fn apply(&self, link: LinkState, entry: LogEntry) -> Result<(), LinkError> {
        self.apply_batch(link, vec![entry])
            .await
            .pop()
            .unwrap_or_else(|| Err("no outcome".into()))
    }

    async fn apply_batch(
        &self,
        link: LinkState,
        entries: Vec<LogEntry>,
    ) -> Vec<Result<(), LinkError>> {
        // A payload above the inline limit travels as a blob: the record is applied as
        // staged and its blob is wanted, then fetched like catch-up fetches it.
        let blobs: Vec<Option<sync_types::DataRef>> = entries
            .iter()
            .map(|entry| match &entry.message {
                sync_types::Message::Write(w) => w.data.filter(|d| !d.is_inline()),
                _ => None,
            })
            .collect();
        let n = entries.len();
        let items = entries.into_iter().map(|e| (e.message, e.data)).collect();
        // `apply_live_batch` records each blob as wanted before applying its message.
        let outcomes = match self.engine.apply_live_batch(&link.key, items).await {
            Ok(outcomes) if outcomes.len() == n => outcomes,
            Ok(outcomes) => {
                let e = format!("{} outcomes for {n} live events", outcomes.len());
                return vec![Err(LinkError::new(LinkErrorKind::Local, e)); n];
            }
            Err(e) => return vec![Err(LinkError::from(&e)); n],
        };
        let store = self.engine.replica().ledger().blobs();
        let mut results = Vec::with_capacity(n);
        let mut missing = false;
        for (outcome, blob) in outcomes.into_iter().zip(blobs) {
            if !outcome.is_success() {
                results.push(Err(LinkError::new(
                    LinkErrorKind::Other,
                    format!("live event not applied: {outcome}"),
                )));
                continue;
            }
            match blob.map(|data| store.has(&data.data_cid)).transpose() {
                Ok(has) => {
                    missing |= has == Some(false);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(LinkError::new(LinkErrorKind::Local, e.to_string()))),
            }
        }
        // The records stay staged until their blobs arrive; a failed fetch is retried
        // by the next catch-up or reconcile.
        if missing && let Err(e) = self.engine.fetch_wanted_blobs(&link.key).await {
            tracing::debug!(link = %link.key, error = %e, "blob fetch failed");
        }
        results
    }
}

/// Live replication for an application: an [`Engine`](crate::sync::Engine) whose links
/// run in a [`LiveDriver`], with identities added, updated and removed while it runs.
///
/// Registering an identity starts its links; updating one stops the links the new
/// registration no longer uses (the engine deletes their durable state) and starts the
/// new ones; unregistering stops every link of the tenant.
pub struct LiveSync<C: crate::sync::Connector> {
    ops: Arc<EngineOps<C>>,
    driver: LiveDriver,
}

impl<C: crate::sync::Connector> std::fmt::Debug for LiveSync<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSync")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl<C: crate::sync::Connector> LiveSync<C> {
    /// Starts every registered link of `engine` in live or poll mode (`config.mode`).
    pub fn start(engine: crate::sync::Engine<C>, config: LinkConfig) -> crate::Result<Self> {
        let links = engine.links()?;
        let replica = engine.replica().clone();
        let ops = Arc::new(EngineOps::new(engine));
        let driver = LiveDriver::start(replica, ops.clone(), links, config);
        Ok(Self { ops, driver })
    }

    /// The engine (one-shot sync, health, dead letters, links).
    pub fn engine(&self) -> &crate::sync::Engine<C> {
        self.ops.engine()
    }

    /// The driver (link states, caught-up checks).
    pub fn driver(&self) -> &LiveDriver {
        &self.driver
    }

    fn start_links(&self, keys: &[LinkKey]) -> crate::Result<()> {
        for state in self.engine().links()? {
            if keys.contains(&state.key) {
                self.driver.add_link(state);
            }
        }
        Ok(())
    }

    /// Registers an identity and starts its links.
    pub fn register_identity(
        &self,
        identity: crate::sync::Identity,
    ) -> crate::Result<Vec<LinkKey>> {
        let keys = self.engine().register_identity(identity)?;
        self.start_links(&keys)?;
        Ok(keys)
    }

    /// Replaces an identity's registration: links it no longer uses stop, new ones start.
    pub fn update_identity(&self, identity: crate::sync::Identity) -> crate::Result<Vec<LinkKey>> {
        let tenant = identity.tenant.clone();
        let before: Vec<LinkKey> = self
            .engine()
            .links()?
            .into_iter()
            .map(|l| l.key)
            .filter(|k| k.tenant == tenant)
            .collect();
        let keys = self.engine().update_identity(identity)?;
        for old in before.into_iter().filter(|k| !keys.contains(k)) {
            self.driver.remove_link(old);
        }
        self.start_links(&keys)?;
        Ok(keys)
    }

    /// Unregisters an identity and stops its links.
    pub fn unregister_identity(&self, tenant: &sync_types::TenantId) -> crate::Result<()> {
        let keys: Vec<LinkKey> = self
            .engine()
            .links()?
            .into_iter()
            .map(|l| l.key)
            .filter(|k| &k.tenant == tenant)
            .collect();
        for key in keys {
            self.driver.remove_link(key);
        }
        self.engine().unregister_identity(tenant)?;
        Ok(())
    }

    /// Stops every link, at most `timeout`; see [`LiveDriver::stop`].
    pub async fn stop(self, timeout: Duration) -> bool {
        self.driver.stop(timeout).await
    }
}
