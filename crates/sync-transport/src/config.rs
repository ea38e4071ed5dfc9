//! [`ServerConfig`]: the limits and settings of a node, shared by the hyper server and
//! the in-process transport. Every limit has its unit last; `weft serve` sets them from
//! flags, environment and its config file.

use std::sync::Arc;

use sync_types::{Clock, SystemClock};

use crate::frame::FRAME_BYTES_MAX_DEFAULT;
use crate::token::TokenKey;

/// Default share of one tenant in a node's in-flight requests.
pub const REQUESTS_PER_TENANT_MAX_DEFAULT: usize = 64;

/// Limits and settings of a node, shared by the hyper server and the in-process
/// transport. Every limit has its unit last.
#[derive(Clone)]
pub struct ServerConfig {
    /// The key tokens are verified with.
    pub key: TokenKey,
    /// The clock tokens' expiries are checked against. Default: the system clock.
    pub clock: Arc<dyn Clock + Send + Sync>,
    /// Largest frame body accepted. Default [`FRAME_BYTES_MAX_DEFAULT`].
    pub frame_bytes_max: usize,
    /// Most open HTTP connections; more are answered 503 (an `Overloaded` error that
    /// names the limit) and closed. Default 1024.
    pub connections_max: usize,
    /// Most open HTTP connections from one IP address; more are answered like
    /// `connections_max`. Default 64.
    pub connections_per_address_max: usize,
    /// Most requests of one tenant in flight at once (calls and blob downloads; uploads
    /// and subscriptions have their own limits); one more is answered 503 naming the
    /// limit, and other tenants are not affected. Default
    /// [`REQUESTS_PER_TENANT_MAX_DEFAULT`].
    pub requests_per_tenant_max: usize,
    /// Longest time a new connection may stay silent before its first byte; then it is
    /// closed without a reply. Default 3 000.
    pub first_byte_time_ms_max: u64,
    /// Most open subscriptions; more are answered 503. Default 4096.
    pub subscriptions_max: usize,
    /// Longest time for one request/reply call, body read included. Default 30 000.
    pub request_time_ms_max: u64,
    /// Longest time to receive a request's headers, and to wait idle on a kept-alive
    /// connection. Default 30 000.
    pub header_read_time_ms_max: u64,
    /// Longest time a write to a client may make no progress before the connection is
    /// dropped (a client that stops reading). Default 30 000.
    pub write_stall_ms_max: u64,
    /// Longest gap between two chunks of a blob transfer. Default 30 000.
    pub transfer_idle_ms_max: u64,
    /// Bytes read from the handler per blob chunk. Default 256 KiB.
    pub blob_chunk_bytes: u32,
    /// Interval between heartbeat pings on a subscription. Default 15 000.
    pub heartbeat_interval_ms: u64,
    /// A subscription that receives nothing (not even a pong) for this long is closed.
    /// Default 45 000.
    pub heartbeat_timeout_ms: u64,
    /// Notices queued per subscriber. Default 256.
    pub subscriber_queue_len_max: usize,
    /// A subscriber whose queue stays full this long is told it lagged and closed.
    /// Default 5 000.
    pub subscriber_stall_ms_max: u64,
    /// Entries read per log page by a subscription. Default 100.
    pub subscription_page_len: u32,
    /// A live subscription re-reads the log this often even without a notification.
    /// Default 30 000.
    pub live_poll_interval_ms: u64,
    /// On graceful shutdown, how long open connections get to finish. Default 5 000.
    pub shutdown_grace_ms: u64,
    /// Where the HTTP server counts requests and serves `GET /metrics`; `None` (the
    /// default) counts nothing and has no `/metrics` route. See [`crate::metrics`].
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Serve over TLS only (see [`crate::tls`]); `None` (the default) serves plain
    /// HTTP, for a node behind a TLS terminator or on a private network.
    pub tls: Option<crate::tls::ServerTls>,
    /// Answer the message-carrying calls of clients that read dense frames with them,
    /// and tell clients this node reads them (see [`crate::dense`]). Default `true`;
    /// `false` speaks like a node from before dense frames (for measuring, and for
    /// tests of old peers).
    pub dense_frames: bool,
    /// Accept write batches of up to
    /// [`BATCH_MESSAGES_WIDE_MAX`](crate::proto::BATCH_MESSAGES_WIDE_MAX) messages and
    /// tell clients so (the `wide-batch` token). Default `true`; `false` refuses batches
    /// above [`BATCH_MESSAGES_MAX`](crate::proto::BATCH_MESSAGES_MAX) and says nothing,
    /// like a node from before wide batches (for tests of old peers).
    pub wide_batches: bool,
}

impl ServerConfig {
    /// Defaults around `key`.
    pub fn new(key: TokenKey) -> Self {
        Self {
            key,
            clock: Arc::new(SystemClock),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max: 1024,
            connections_per_address_max: 64,
            requests_per_tenant_max: REQUESTS_PER_TENANT_MAX_DEFAULT,
            first_byte_time_ms_max: 3_000,
            subscriptions_max: 4096,
            request_time_ms_max: 30_000,
            header_read_time_ms_max: 30_000,
            write_stall_ms_max: 30_000,
            transfer_idle_ms_max: 30_000,
            blob_chunk_bytes: 256 * 1024,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            subscriber_queue_len_max: 256,
            subscriber_stall_ms_max: 5_000,
            subscription_page_len: 100,
            live_poll_interval_ms: 30_000,
            shutdown_grace_ms: 5_000,
            metrics: None,
            tls: None,
            dense_frames: true,
            wide_batches: true,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("connections_max", &self.connections_max)
            .field(
                "connections_per_address_max",
                &self.connections_per_address_max,
            )
            .field("requests_per_tenant_max", &self.requests_per_tenant_max)
            .field("subscriptions_max", &self.subscriptions_max)
            .field("request_time_ms_max", &self.request_time_ms_max)
            .field("tls", &self.tls.is_some())
            .field("dense_frames", &self.dense_frames)
            .field("wide_batches", &self.wide_batches)
            .field("subscriber_queue_len_max", &self.subscriber_queue_len_max)
            .finish_non_exhaustive()
    }
}
