//! What the commands that talk to a node share: which node, which token, and the
//! engine with the tenant registered for it.
//!
//! A store syncs each tenant with one node at a time: `weft sync --node X --token T`
//! registers (or re-registers) the tenant's identity with endpoint X, scope and
//! credentials from T, and the engine keeps the link's checkpoints in the store. Later
//! commands without `--node` or `--token` reuse the registered ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use sync_engine::sync::{Credentials, CredentialsConnector, HttpConnector, SyncConfig};
use sync_engine::{Engine, Identity, Replica};
use sync_ledger::RegisteredIdentity;
use sync_transport::{ClientConfig, FailoverConnector, HttpClient, Token};
use sync_types::{Endpoint, LinkKey, TenantId};

use crate::cli::{ClientArgs, NODE_DEFAULT, NodeArgs, ReplicaArgs};
use crate::exit::{Exit, coded, usage};
use crate::{kv, paths};

/// Parses a node address; a bare `HOST:PORT` means `http://HOST:PORT`. Several
/// addresses separated by commas name interchangeable nodes of one shared store: one
/// endpoint, whose calls go to whichever node answers (`FailoverConnector`).
pub(crate) fn parse_endpoint(text: &str) -> anyhow::Result<Endpoint> {
    if !text.contains(',') {
        return parse_one_endpoint(text);
    }
    let nodes = text
        .split(',')
        .map(parse_one_endpoint)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let joined: Vec<&str> = nodes.iter().map(Endpoint::as_str).collect();
    let endpoint = Endpoint::new(joined.join(","))
        .map_err(|e| usage(format!("bad node addresses {text:?}: {e}")))?;
    sync_transport::failover::endpoint_nodes(&endpoint)
        .map_err(|e| usage(format!("bad node addresses {text:?}: {e}")))?;
    Ok(endpoint)
}

fn parse_one_endpoint(text: &str) -> anyhow::Result<Endpoint> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let (scheme, authority) = if let Some(a) = full.strip_prefix("http://") {
        ("http", a)
    } else if let Some(a) = full.strip_prefix("https://") {
        ("https", a)
    } else {
        return Err(usage(format!(
            "bad node address {text:?}: expected http://HOST:PORT or https://HOST:PORT"
        )));
    };
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(usage(format!(
            "bad node address {text:?}: expected http://HOST:PORT or https://HOST:PORT"
        )));
    }
    Endpoint::new(format!("{scheme}://{authority}"))
        .map_err(|e| usage(format!("bad node address {text:?}: {e}")))
}

/// Why `endpoint` cannot be reached, found with a plain TCP connection: the transport's
/// own message says only that the connection failed.
pub(crate) fn diagnose(endpoint: &Endpoint) -> String {
    use std::net::ToSocketAddrs as _;
    // Of several nodes, the first (the one tried first).
    let first = endpoint.as_str().split(',').next().unwrap_or_default();
    let authority = first
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let addrs: Vec<std::net::SocketAddr> = match authority.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return format!("cannot resolve {authority}: {e}"),
    };
    let Some(addr) = addrs.first() else {
        return format!("{authority} resolves to no address");
    };
    match std::net::TcpStream::connect_timeout(addr, std::time::Duration::from_secs(2)) {
        Ok(_) => format!(
            "{addr} accepts connections, but the call broke before the node answered in full \
             (the node restarting, or a proxy cutting the connection)"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {addr} (connection refused)")
        }
        Err(e) => format!("cannot connect to {addr}: {e}"),
    }
}

/// `err`, with the reason a node cannot be reached when that is what it says.
pub(crate) fn explain(err: anyhow::Error, endpoint: &Endpoint) -> anyhow::Error {
    if crate::exit::classify(&err) == Exit::Unreachable
        && err.chain().any(|c| {
            matches!(
                c.downcast_ref(),
                Some(sync_transport::TransportError::Unreachable(_))
            )
        })
    {
        let why = diagnose(endpoint);
        return coded(
            Exit::Unreachable,
            format!("{}: {why}", crate::exit::describe(&err)),
        );
    }
    err
}

/// The client settings of this run, from the global flags (`set_client_config`).
static CLIENT_CONFIG: std::sync::OnceLock<ClientConfig> = std::sync::OnceLock::new();

/// Longest `--timeout`, in seconds (a day).
const TIMEOUT_S_MAX: f64 = 86_400.0;
/// Most `--retries`.
const RETRIES_MAX: u32 = 100;

/// Sets the client settings of this run from `--timeout`, `--retries` and `--tls-ca`.
pub(crate) fn set_client_config(args: &ClientArgs) -> anyhow::Result<()> {
    let mut config = ClientConfig::default();
    if let Some(secs) = args.timeout {
        if !(secs > 0.0 && secs <= TIMEOUT_S_MAX) {
            return Err(usage(format!(
                "--timeout {secs}: expected seconds above 0, at most {TIMEOUT_S_MAX}"
            )));
        }
        // In range: at most 86 400 000 ms.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (secs * 1000.0).ceil() as u64;
        config.request_time_ms_max = ms;
        config.connect_time_ms_max = config.connect_time_ms_max.min(ms);
    }
    if let Some(retries) = args.retries {
        if retries > RETRIES_MAX {
            return Err(usage(format!("--retries {retries}: at most {RETRIES_MAX}")));
        }
        config.retries_max = retries;
    }
    if let Some(path) = &args.tls_ca {
        let pem = std::fs::read(path)
            .map_err(|e| usage(format!("cannot read --tls-ca {}: {e}", path.display())))?;
        config.tls.ca_pem = Some(pem);
    }
    let _ = CLIENT_CONFIG.set(config);
    Ok(())
}

/// The client settings of the CLI: the transport's defaults changed by the global
/// flags.
pub(crate) fn client_config() -> ClientConfig {
    CLIENT_CONFIG.get().cloned().unwrap_or_default()
}

/// A client of the nodes of `endpoint` (one, or several separated by commas), for
/// `health --node`: it asks the first that answers.
pub(crate) fn failover_client(
    endpoint: &Endpoint,
    token: &str,
) -> anyhow::Result<sync_transport::FailoverRemote<HttpClient>> {
    use sync_transport::Connector as _;
    FailoverConnector::new(HttpConnector::new(client_config()))
        .connect(endpoint, Some(token))
        .with_context(|| format!("cannot talk to {endpoint}"))
}

/// One health call to `endpoint` presenting `token`: does the node answer and accept it?
async fn contact(endpoint: &Endpoint, token: &str) -> anyhow::Result<()> {
    use sync_transport::Remote as _;
    let client = failover_client(endpoint, token)?;
    client
        .health()
        .await
        .map_err(|e| explain(anyhow::Error::new(e), endpoint))?;
    Ok(())
}

/// Parses token text; a malformed token is an authorization error (exit 4).
pub(crate) fn parse_token(text: &str) -> anyhow::Result<Token> {
    text.trim()
        .parse()
        .map_err(|e| coded(Exit::Refused, format!("bad token: {e}")))
}

/// An engine over a store, reaching nodes over HTTP (an endpoint naming several nodes
/// fails over between them).
/// Tokens come from `--token-file` when given (re-read at every refresh), else the
/// registered token is presented.
pub(crate) type HttpEngine = Engine<CredentialsConnector<FailoverConnector<HttpConnector>>>;

/// An engine over `replica`.
pub(crate) fn engine(replica: Replica) -> HttpEngine {
    engine_with(replica, SyncConfig::default(), None)
}

/// An engine over `replica` with `config`, taking its tokens from `token_file` when set.
pub(crate) fn engine_with(
    replica: Replica,
    config: SyncConfig,
    token_file: Option<PathBuf>,
) -> HttpEngine {
    let provider: Arc<dyn Credentials> = Arc::new(TokenFile(token_file));
    let connector = CredentialsConnector::new(
        FailoverConnector::new(HttpConnector::new(client_config())),
        provider,
    );
    Engine::builder(replica, connector).config(config).build()
}

/// Records the node the session's link last reached (one of the nodes its endpoint
/// names), when it changed: what `weft status` shows. A failure to record it is logged,
/// never fatal.
pub(crate) fn save_reached(s: &Session) {
    let Some(node) = s.engine.connector().inner().reached(&s.endpoint) else {
        return;
    };
    let links = s.replica.ledger().links();
    match links.reached(&s.link) {
        Ok(Some(r)) if r.node == node => {}
        Ok(_) => {
            let reached = sync_ledger::ReachedNode {
                node,
                since_ms: s.replica.now_ms(),
            };
            if let Err(e) = links.save_reached(&s.link, &reached, sync_ledger::Durability::Buffered)
            {
                tracing::warn!(error = %e, "cannot record the node the link reached");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the node the link reached"),
    }
}

/// Longest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

/// `--token-file`: the token is read from the file whenever the engine connects or
/// needs a fresh one (an expired or refused token), so a process that rotates the file
/// keeps a long `weft watch` authorised.
struct TokenFile(Option<PathBuf>);

impl Credentials for TokenFile {
    fn token(&self, _endpoint: &Endpoint, _refresh: bool) -> Result<Option<String>, String> {
        let Some(path) = &self.0 else {
            return Ok(None);
        };
        read_token_file(path).map(Some)
    }
}

/// The token in `path`, trimmed.
pub(crate) fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(TOKEN_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// A store with a tenant registered for one node, and that node's link.
pub(crate) struct Session {
    pub(crate) engine: HttpEngine,
    pub(crate) replica: Replica,
    pub(crate) tenant: TenantId,
    pub(crate) endpoint: Endpoint,
    pub(crate) link: LinkKey,
}

impl Session {
    /// Opens the store and registers the tenant for the node of `node` (flags, then
    /// what is registered, then the default).
    pub(crate) async fn open(
        replica: &ReplicaArgs,
        node: &NodeArgs,
        config: SyncConfig,
    ) -> anyhow::Result<Self> {
        let dir = paths::replica_dir(replica.store.clone())?;
        let store = kv::open_replica(&dir, true)?;
        Self::over_with(store, replica.tenant.clone(), node, config).await
    }

    /// Registers `tenant` of an open replica for the node of `node`.
    pub(crate) async fn over(
        replica: Replica,
        tenant: TenantId,
        node: &NodeArgs,
    ) -> anyhow::Result<Self> {
        Self::over_with(replica, tenant, node, SyncConfig::default()).await
    }

    /// [`over`](Self::over) with an engine configured by `config`. A new or changed
    /// registration is stored only after the node accepted the token (a health call):
    /// a mistyped `--node` or a forged token leaves the registered link and its
    /// checkpoints as they were.
    pub(crate) async fn over_with(
        replica: Replica,
        tenant: TenantId,
        node: &NodeArgs,
        config: SyncConfig,
    ) -> anyhow::Result<Self> {
        let registered = replica
            .ledger()
            .identities()
            .get(&tenant)
            .context("cannot read the registered identities")?;
        let endpoint = match (&node.node, &registered) {
            (Some(text), _) => parse_endpoint(text)?,
            (None, Some(r)) if !r.endpoints.is_empty() => r.endpoints[0].clone(),
            _ => parse_endpoint(NODE_DEFAULT)?,
        };
        let token_text = match (&node.token, &node.token_file, &registered) {
            (_, Some(path), _) => read_token_file(path).map_err(usage)?,
            (Some(t), None, _) => t.trim().to_owned(),
            (None, None, Some(RegisteredIdentity { token: Some(t), .. })) => t.clone(),
            _ => {
                return Err(usage(format!(
                    "no token for tenant {tenant}: pass --token or set WEFT_TOKEN (issue one with `weft token issue --tenant {tenant}`)"
                )));
            }
        };
        let token = parse_token(&token_text)?;
        let claims = token.unverified_claims();
        if claims.tenant != tenant {
            return Err(usage(format!(
                "the token is for tenant {}, not {tenant}: pass --tenant {}",
                claims.tenant, claims.tenant
            )));
        }
        let identity = Identity {
            tenant: tenant.clone(),
            endpoints: vec![endpoint.clone()],
            scope: claims.scope.clone(),
            authorization: claims.authorization(),
            token: Some(token_text.clone()),
        };
        let engine = engine_with(replica.clone(), config, node.token_file.clone());
        let same = registered.as_ref().is_some_and(|r| {
            r.endpoints == identity.endpoints
                && r.scope == identity.scope
                && r.authorization == identity.authorization
                && r.token == identity.token
        });
        if !same {
            contact(&endpoint, &token_text).await.with_context(|| {
                format!("{endpoint} did not accept the contact; tenant {tenant}'s registration is unchanged")
            })?;
        }
        let keys = match (&registered, same) {
            (None, _) => engine.register_identity(identity.clone()),
            (Some(_), false) => engine.update_identity(identity.clone()),
            (Some(_), true) => Ok(engine
                .links()?
                .into_iter()
                .filter(|l| l.key.tenant == tenant)
                .map(|l| l.key)
                .collect()),
        }
        .with_context(|| format!("cannot register tenant {tenant} for {endpoint}"))?;
        let link = keys
            .into_iter()
            .find(|k| k.endpoint == endpoint)
            .ok_or_else(|| anyhow::anyhow!("the engine made no link for {endpoint}"))?;
        Ok(Self {
            engine,
            replica,
            tenant,
            endpoint,
            link,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_parse_with_or_without_a_scheme() {
        assert_eq!(
            parse_endpoint("127.0.0.1:7700").unwrap().as_str(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(
            parse_endpoint("http://localhost:1/").unwrap().as_str(),
            "http://localhost:1"
        );
        assert_eq!(
            parse_endpoint("https://node.example:443").unwrap().as_str(),
            "https://node.example:443"
        );
        for bad in ["https://", "http://", "http://a:1/path", "ftp://x"] {
            let err = parse_endpoint(bad).unwrap_err();
            assert_eq!(crate::exit::classify(&err), Exit::Usage, "{bad}");
        }
    }
}
