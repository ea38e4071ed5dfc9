//! [`LocalNode`]: a node served by this process, on a socket, with the key that signs
//! its tokens.
//!
//! A node is what replicas sync through. In production it is usually `weft serve` on a
//! server; an application may also run one itself: a desktop app that is the hub of a
//! household's devices, an integration test, the examples and this crate's guide. It is
//! the same node (`ReplicaHandler` behind the HTTP and WebSocket server), not a test
//! double.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sync_engine::{Replica, ReplicaHandler};
use sync_transport::{Claims, Role, ServerConfig, ServerHandle, Token, TokenKey, serve};
use sync_types::{Actions, GrantId, PrincipalId, ProtocolName, ProtocolSet, Scope, TenantId};

use crate::error::{Result, blocking};

/// A node served by this process. Stop it with [`shutdown`](Self::shutdown).
pub struct LocalNode {
    server: ServerHandle<ReplicaHandler>,
    key: TokenKey,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl LocalNode {
    /// A node on an in-memory store, listening on `addr` (`127.0.0.1:0` picks a free
    /// port), its tokens signed with `key`.
    pub async fn start_in_memory(addr: SocketAddr, key: TokenKey) -> Result<LocalNode> {
        let replica = blocking(|| Ok(Replica::in_memory()?)).await?;
        Self::start_with(replica, addr, key).await
    }

    /// A node on a fjall store in `dir`.
    pub async fn start(
        dir: impl AsRef<Path>,
        addr: SocketAddr,
        key: TokenKey,
    ) -> Result<LocalNode> {
        let dir = dir.as_ref().to_path_buf();
        let replica = blocking(move || Ok(Replica::open(dir)?)).await?;
        Self::start_with(replica, addr, key).await
    }

    async fn start_with(replica: Replica, addr: SocketAddr, key: TokenKey) -> Result<LocalNode> {
        let server = serve(
            Arc::new(ReplicaHandler::new(replica)),
            ServerConfig::new(key.clone()),
            addr,
        )
        .await?;
        Ok(LocalNode { server, key })
    }

    /// The node's address for [`Weft::connect`](crate::Weft::connect): `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    /// A token for the owner of `tenant`: everything, until `expires_at_ms`
    /// (milliseconds since the Unix epoch; [`expires_in`] computes one). `principal`
    /// names the writer: give each device of a user its own (`alice-phone`), and
    /// entries show which device wrote them.
    pub fn owner_token(&self, tenant: &str, principal: &str, expires_at_ms: u64) -> Result<String> {
        let claims = Claims::owner(
            TenantId::new(tenant)?,
            PrincipalId::new(principal)?,
            GrantId::new(format!("owner-{principal}"))?,
            expires_at_ms,
        );
        Ok(Token::issue(&self.key, claims).to_string())
    }

    /// A token for `principal`, a delegate of `tenant`: read and sync (no writes) the
    /// collections named, until `expires_at_ms`. A replica connected with it receives
    /// those collections and nothing else; the node refuses its writes.
    pub fn read_only_token(
        &self,
        tenant: &str,
        principal: &str,
        collections: &[&str],
        expires_at_ms: u64,
    ) -> Result<String> {
        let actions = Actions::READ.union(Actions::SYNC);
        self.delegate_token(
            tenant,
            principal,
            collections,
            actions,
            "read",
            expires_at_ms,
        )
    }

    /// A token for `principal`, a delegate of `tenant`: read, write and sync the
    /// collections named, and nothing else, until `expires_at_ms`. Its writes to any
    /// other collection stay on its device (a sync counts them as `out_of_scope`, and
    /// the node would refuse them). A replica connected
    /// with it syncs before its first [`Weft::collection`](crate::Weft::collection)
    /// call, so the collection's configuration comes from the owner (a delegate may
    /// not configure collections).
    pub fn read_write_token(
        &self,
        tenant: &str,
        principal: &str,
        collections: &[&str],
        expires_at_ms: u64,
    ) -> Result<String> {
        let actions = Actions::READ.union(Actions::SYNC).union(Actions::WRITE);
        self.delegate_token(
            tenant,
            principal,
            collections,
            actions,
            "write",
            expires_at_ms,
        )
    }

    fn delegate_token(
        &self,
        tenant: &str,
        principal: &str,
        collections: &[&str],
        actions: Actions,
        grant: &str,
        expires_at_ms: u64,
    ) -> Result<String> {
        let protocols = collections
            .iter()
            .map(|c| ProtocolName::new(format!("weft:collection/{c}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let claims = Claims {
            tenant: TenantId::new(tenant)?,
            principal: PrincipalId::new(principal)?,
            role: Role::Delegate,
            scope: Scope::ProtocolSet(ProtocolSet::new(protocols)?),
            actions,
            expires_at_ms,
            grant_id: GrantId::new(format!("{grant}-{principal}"))?,
        };
        Ok(Token::issue(&self.key, claims).to_string())
    }

    /// Stops accepting, lets open requests finish, closes subscriptions.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// `expires_at_ms` for a token that lasts `duration` from now (milliseconds since the
/// Unix epoch, as tokens carry them).
pub fn expires_in(duration: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_add(duration).as_millis()).unwrap_or(u64::MAX)
}
