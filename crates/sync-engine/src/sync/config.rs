//! The engine's tunables and limits.

use std::borrow::Cow;

use sync_transport::proto::{BATCH_MESSAGES_WIDE_MAX, LOG_PAGE_ENTRIES_MAX, READ_CIDS_MAX};

/// Most entries asked for per remote log page (the protocol's maximum).
pub const PAGE_ENTRIES_DEFAULT: u32 = LOG_PAGE_ENTRIES_MAX;
/// Most pages one catch-up reads before it yields (the next call goes on).
pub const CATCH_UP_PAGES_MAX: usize = 100_000;
/// Most local log entries read per push step.
pub const PUSH_READ_ENTRIES_DEFAULT: usize = 1_000;
/// Pages of the remote log a catch-up reads ahead of the one it applies: the next page
/// travels while the replica applies this one, so a long catch-up runs at the speed of
/// the slower of the two, holding at most this many pages besides the one applied. The
/// checkpoint still moves only over applied pages; a page read ahead is dropped when
/// the applied one does not settle whole. One: the next request is known only from the
/// page before it.
pub const PULL_PAGES_AHEAD_MAX: usize = 1;
/// Write batches a push sends ahead of the one being delivered, when they do not depend
/// on it (see `push_core::may_send_ahead`): the node applies one while the next travels.
/// The push checkpoint still moves only over settled batches.
pub const PUSH_BATCHES_AHEAD_MAX: usize = 1;
const _: () = assert!(PULL_PAGES_AHEAD_MAX == 1 && PUSH_BATCHES_AHEAD_MAX == 1);
/// Most bytes (encoded messages and inline data) in one write batch, well under the
/// transport's default frame limit.
pub const PUSH_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most live events applied on the calling task by [`Engine::apply_live_batch`](crate::sync::Engine::apply_live_batch) when
/// the store never blocks; a larger batch goes to the blocking pool, so a task is never
/// held for long.
pub const LIVE_APPLY_INLINE_LEN_MAX: usize = 64;
/// Most passes that supply missing dependencies, per batch.
pub const DEPENDENCY_PASSES_MAX: usize = 8;
/// Pages in a row that may fail to advance the pull checkpoint (repeated pages) before a
/// catch-up gives up.
pub const STALLED_PAGES_MAX: u32 = 3;
/// Default interval of the integrity reconcile, in milliseconds.
pub const INTEGRITY_CHECK_MS_DEFAULT: u64 = 300_000;
/// Most ranges of pulled local positions remembered per endpoint for echo suppression.
pub const ECHO_RANGES_MAX: usize = 65_536;
/// Bytes of a blob moved per request by sync; a transfer resumes from the last range
/// made durable, so this is also the most an interruption costs.
pub const BLOB_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of the first range of a blob upload (see [`BLOB_CHUNK_BYTES`]).
pub const BLOB_PROBE_BYTES: u64 = 64 * 1024;
/// Blob transfers (uploads and downloads) one engine runs at once, over all its links.
pub const BLOB_TRANSFERS_MAX_DEFAULT: usize = 2;
/// Blob transfers (uploads and downloads) one link runs at once.
pub const BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT: usize = 1;
/// Downloads of one blob in one fetch before it is left staged for a later sync: a
/// transfer that fails verification stores nothing and starts over once.
pub const BLOB_FETCH_ATTEMPTS_MAX: u32 = 2;

/// Tunables of the engine; every limit has its unit last.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Entries asked for per remote log page. Default [`PAGE_ENTRIES_DEFAULT`].
    pub page_entries: u32,
    /// Pages one catch-up reads at most. Default [`CATCH_UP_PAGES_MAX`].
    pub catch_up_pages_max: usize,
    /// Local log entries read per push step. Default [`PUSH_READ_ENTRIES_DEFAULT`].
    pub push_read_entries: usize,
    /// Messages per write batch, at most: a push sends no more than its remote says its
    /// node takes ([`Remote::batch_messages_max`](sync_transport::Remote::batch_messages_max):
    /// [`BATCH_MESSAGES_MAX`](sync_transport::proto::BATCH_MESSAGES_MAX) until the node
    /// said it takes more). Default [`BATCH_MESSAGES_WIDE_MAX`].
    pub push_batch_messages: usize,
    /// Bytes per write batch. Default [`PUSH_BATCH_BYTES_MAX`].
    pub push_batch_bytes_max: usize,
    /// Cids per message read. Default [`READ_CIDS_MAX`].
    pub read_batch_cids: usize,
    /// Passes supplying missing dependencies. Default [`DEPENDENCY_PASSES_MAX`].
    pub dependency_passes_max: usize,
    /// Wait before each push attempt, in milliseconds; after the last attempt fails the
    /// messages are dead-lettered `push_exhausted` and the link needs a reconcile.
    /// Default `[0, 250, 1000, 2000]`.
    pub push_retry_backoff_ms: Vec<u64>,
    /// A link is reconciled at least this often by `sync_once`. Default
    /// [`INTEGRITY_CHECK_MS_DEFAULT`].
    pub integrity_check_ms: u64,
    /// Compare roots at the end of every `sync_once` for full and protocol-set scopes
    /// (cheap: both roots are cached), and diff when they differ. Projection scopes
    /// build their trees on demand and are compared only when a reconcile is due.
    /// Default true.
    pub verify_roots: bool,
    /// Blob transfers running at once over all links (a semaphore); the rest wait.
    /// Default [`BLOB_TRANSFERS_MAX_DEFAULT`].
    pub blob_transfers_max: usize,
    /// Blob transfers running at once on one link (a semaphore per link, taken before
    /// the engine's); the rest wait. Default [`BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT`].
    pub blob_transfers_per_link_max: usize,
    /// Whether sync downloads the blobs of staged records at all. When false, pulled
    /// records whose payload is a blob stay [staged](crate::blob::Residency::Staged)
    /// until a sync with it set (an application on a metered network, say). Default
    /// true.
    pub blob_fetch: bool,
    /// Whether [`Engine::catch_up`](crate::sync::Engine::catch_up) and [`Engine::reconcile`](crate::sync::Engine::reconcile) fetch the blobs of the
    /// records they staged in a detached task instead of before returning, so that a
    /// large download never delays the next catch-up of small messages (the live
    /// driver's case). [`Engine::sync_link`](crate::sync::Engine::sync_link) always waits for them. Default true.
    pub blob_fetch_detached: bool,
}

impl SyncConfig {
    /// This config with at most `max` messages per write batch (what the remote takes).
    pub(crate) fn with_batch_messages_max(&self, max: usize) -> Cow<'_, Self> {
        if self.push_batch_messages <= max {
            return Cow::Borrowed(self);
        }
        let mut narrower = self.clone();
        narrower.push_batch_messages = max;
        Cow::Owned(narrower)
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            page_entries: PAGE_ENTRIES_DEFAULT,
            catch_up_pages_max: CATCH_UP_PAGES_MAX,
            push_read_entries: PUSH_READ_ENTRIES_DEFAULT,
            push_batch_messages: BATCH_MESSAGES_WIDE_MAX,
            push_batch_bytes_max: PUSH_BATCH_BYTES_MAX,
            read_batch_cids: READ_CIDS_MAX,
            dependency_passes_max: DEPENDENCY_PASSES_MAX,
            push_retry_backoff_ms: vec![0, 250, 1_000, 2_000],
            integrity_check_ms: INTEGRITY_CHECK_MS_DEFAULT,
            verify_roots: true,
            blob_transfers_max: BLOB_TRANSFERS_MAX_DEFAULT,
            blob_transfers_per_link_max: BLOB_TRANSFERS_PER_LINK_MAX_DEFAULT,
            blob_fetch: true,
            blob_fetch_detached: true,
        }
    }
}
