//! Weft's wire protocol: versioned frames over HTTP request/reply (hyper) and WebSocket
//! subscriptions (tokio-tungstenite), with capability tokens and input limits.
//!
//! `sync-transport` carries replication between a replica and a server node. It moves
//! typed frames and checks credentials; it does **not** interpret ledger or tree
//! semantics: the node's [`Handler`] does, and SMT diff rounds travel as opaque bytes.
//! It depends on `sync-types` only among Weft crates.
//!
//! # Layers
//!
//! - [`frame`]: pure code over bytes (no tokio): a 12-byte header (magic, version, kind,
//!   body length) and a postcard body through the `sync-types` codec; every decoder
//!   enforces explicit limits and returns a typed [`FrameError`].
//! - [`dense`]: the dense form of the bodies that carry messages (frame version 2):
//!   names sent once per frame, what the receiver recomputes left out.
//! - [`proto`]: the request, reply and subscription types and their limits.
//! - [`token`]: capability tokens: [`Claims`] MAC'd with the node's [`TokenKey`]
//!   (blake3 keyed hash), verified in constant time, with a text form for the CLI.
//! - with the default `net` feature:
//!   - [`node`]: the [`Handler`] trait a node implements, and [`Node`], which puts the
//!     checks, limits and the subscription loop in front of it;
//!   - [`server`]: the hyper HTTP/1.1 server ([`serve`]);
//!   - [`metrics`]: Prometheus metrics of a node at `GET /metrics` (opt-in);
//!   - [`ws`]: WebSocket subscriptions on the same port;
//!   - [`tls`]: TLS for the client (`https://`, `wss://`) and optionally the server;
//!   - [`client`]: the [`Remote`] trait the engine talks through, with [`HttpClient`]
//!     and [`InProcessClient`] (same behaviour, no sockets).
//!
//! Without `net` the crate is frames, types and tokens only, which is what the fuzz
//! targets build.
//!
//! # Invariants
//!
//! - Every decoder enforces explicit limits; a malformed or oversized frame gets a
//!   clear error reply and never crashes or stalls a node.
//! - Every request is checked against its capability token before anything is read or
//!   written; a request beyond the grant is refused (401/403 with a reason), never
//!   narrowed.
//! - Subscriptions read the durable log through the handler; live notifications only
//!   wake them, so a lost notification costs latency, never events. Each subscriber's
//!   queue is bounded, and a subscriber that falls behind is told so and closed.
//!
//! # Example
//!
//! Frames and tokens, without a network:
//!
//! ```
//! use sync_transport::frame;
//! use sync_transport::proto::{Request, RootRequest};
//! use sync_transport::token::{Claims, Token, TokenKey};
//! use sync_types::{Actions, GrantId, PrincipalId, Scope, TenantId};
//!
//! let request = Request::Root(RootRequest {
//!     tenant: TenantId::new("alice")?,
//!     scope: Scope::Full,
//! });
//! let bytes = frame::encode(&request);
//! assert_eq!(&bytes[..4], b"WEFT");
//! assert_eq!(frame::decode::<Request>(&bytes, 1 << 20)?, request);
//!
//! // A truncated frame is a typed error, not a panic.
//! assert!(frame::decode::<Request>(&bytes[..bytes.len() - 1], 1 << 20).is_err());
//!
//! let key = TokenKey::derive(b"node secret");
//! let claims = Claims::owner(
//!     TenantId::new("alice")?,
//!     PrincipalId::new("alice")?,
//!     GrantId::new("laptop")?,
//!     u64::MAX,
//! );
//! let text = Token::issue(&key, claims.clone()).to_string();
//! let token: Token = text.parse()?;
//! let verified = token.verify(&key, 1_700_000_000_000)?;
//! assert!(verified
//!     .authorize(&claims.tenant, Some(&Scope::Full), Actions::WRITE, 0)
//!     .is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod dense;
mod error;
pub mod frame;
pub mod proto;
pub mod token;

#[cfg(feature = "net")]
mod body;
#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod compress;
#[cfg(feature = "net")]
mod config;
#[cfg(feature = "net")]
pub mod connector;
#[cfg(feature = "net")]
pub mod failover;
#[cfg(feature = "net")]
mod limits;
#[cfg(feature = "net")]
pub mod metrics;
#[cfg(feature = "net")]
pub mod node;
#[cfg(feature = "net")]
mod refusal_log;
#[cfg(feature = "net")]
pub mod server;
#[cfg(feature = "net")]
mod tenant_share;
#[cfg(feature = "net")]
pub mod tls;
#[cfg(feature = "net")]
pub mod ws;

pub use error::{HandlerError, TransportError};
pub use frame::FrameError;
pub use token::{AuthError, Claims, Role, Token, TokenError, TokenKey};

#[cfg(feature = "net")]
pub use client::{
    BlobDownload, BlobSource, ClientConfig, HttpClient, InProcessClient, Remote, Subscription,
    SubscriptionItem,
};
#[cfg(feature = "net")]
pub use connector::{CONNECTOR_CLIENTS_MAX, Connector, HttpConnector, InProcessConnector};
#[cfg(feature = "net")]
pub use failover::{FailoverConnector, FailoverRemote};
#[cfg(feature = "net")]
pub use node::{Handler, LogExtentQuery, Node, RequestContext, ServerConfig};
#[cfg(feature = "net")]
pub use server::{ServerHandle, serve, serve_listener};
#[cfg(feature = "net")]
pub use tls::{ClientTls, ServerTls, TlsError};
