//! Connectors: how a replication engine reaches an endpoint.
//!
//! A [`Connector`] turns an endpoint and a token into a [`Remote`]. The engine never
//! talks to a node any other way, so a simulation or a test swaps the connector and
//! nothing else: [`HttpConnector`] goes over the network, [`InProcessConnector`] calls
//! [`Node`]s in the same process through the same frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sync_types::Endpoint;

use crate::TransportError;
use crate::client::{ClientConfig, HttpClient, InProcessClient, Remote};
use crate::node::{Handler, Node};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    ) -> Result<Self::Remote, TransportError>;
}

impl<C: Connector> Connector for Arc<C> {
    type Remote = C::Remote;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<Self::Remote, TransportError> {
        (**self).connect(endpoint, token)
    }
}

/// Clients an [`HttpConnector`] keeps for reuse. Each (endpoint, token) has its own, so a
/// token that is refreshed again and again (`--token-file`, a credentials provider) would
/// otherwise add one for good each time.
pub const CONNECTOR_CLIENTS_MAX: usize = 64;

/// Connects over HTTP ([`HttpClient`]); clients are kept per (endpoint, token) so their
/// connection pools are reused across syncs, at most [`CONNECTOR_CLIENTS_MAX`] of them:
/// past it, the endpoint's clients for other tokens are dropped first, then any one. A
/// dropped client only loses its pool; remotes already handed out keep working.
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
    ) -> Result<HttpClient, TransportError> {
        let token = token.unwrap_or_default().to_owned();
        let mut clients = lock(&self.clients);
        let key = (endpoint.clone(), token);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = HttpClient::with_token_text(endpoint, &key.1, self.config.clone())?;
        if clients.len() >= CONNECTOR_CLIENTS_MAX {
            clients.retain(|(e, _), _| e != endpoint);
        }
        if clients.len() >= CONNECTOR_CLIENTS_MAX
            && let Some(any) = clients.keys().next().cloned()
        {
            clients.remove(&any);
        }
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
    ) -> Result<InProcessClient<H>, TransportError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_tokens_do_not_grow_the_client_cache_without_bound() {
        let connector = HttpConnector::new(ClientConfig::default());
        let a = Endpoint::new("http://127.0.0.1:1").unwrap();
        for i in 0..CONNECTOR_CLIENTS_MAX * 3 {
            connector.connect(&a, Some(&format!("token-{i}"))).unwrap();
        }
        assert!(lock(&connector.clients).len() <= CONNECTOR_CLIENTS_MAX);
        // The newest token's client is the one kept and reused.
        let last = format!("token-{}", CONNECTOR_CLIENTS_MAX * 3 - 1);
        assert!(lock(&connector.clients).contains_key(&(a.clone(), last.clone())));
        // Other endpoints' clients survive one endpoint's rotations while there is room
        // for them.
        let b = Endpoint::new("http://127.0.0.1:2").unwrap();
        connector.connect(&b, Some("b")).unwrap();
        for i in 0..CONNECTOR_CLIENTS_MAX {
            connector.connect(&a, Some(&format!("again-{i}"))).unwrap();
        }
        assert!(lock(&connector.clients).len() <= CONNECTOR_CLIENTS_MAX);
        assert!(lock(&connector.clients).contains_key(&(b, "b".to_owned())));
    }
}
