//! The request, reply and subscription types, and their limits.
//!
//! Every request names its tenant, and every read names the scope it asks for; the
//! server checks both against the caller's capability token before the handler sees the
//! request ([`crate::token::Claims::authorize`]). A request beyond the token's grant is
//! refused, never silently narrowed.
//!
//! # Diff rounds are opaque
//!
//! [`DiffRequest::round`] and [`DiffReply::round`] carry `sync-smt` diff messages as
//! opaque bytes (at most [`DIFF_ROUND_BYTES_MAX`]). The transport does not depend on
//! `sync-smt`: the engine encodes the tree's sans-IO session messages on one side and
//! the node decodes them on the other, so the tree's wire format can evolve without
//! this crate.
//!
//! # Log pages
//!
//! A [`LogPageRequest`] reads a tenant's event log after a [`ProgressToken`]
//! (exclusive; `None` reads from the start of the retained log). The reply is a
//! [`LogPage`] (entries with their message and small data inline, the `next` token to
//! resume from, which is a scan high-water mark and may be past the last entry when a
//! filter skipped events, and `has_more`), or a [`Gap`] when the cursor cannot be
//! served. A gap is an answer, not an error.
//!
//! # Blobs
//!
//! Blob bytes are not framed: a [`BlobReadRequest`] is answered with a
//! [`Reply::BlobRead`] head followed by exactly `len` raw bytes, and a
//! [`BlobWriteRequest`] frame is followed by exactly `len` raw bytes of the upload; both
//! stream. Resuming an upload is `BlobStat` (how many bytes the node holds) then a
//! write from that offset.

use serde::{Deserialize, Serialize};
use sync_types::{
    ApplyOutcome, Cid, Gap, HealthSummary, INLINE_DATA_BYTES_MAX, KnownRanges, MISSING_MAX,
    Message, ProgressToken, ProtocolSet, REASON_BYTES_MAX, Scope, TenantId,
};

use crate::frame::{Body, FrameError, FrameKind, check_count, check_len};

/// Most messages in one write batch that every node accepts (nodes before
/// [`BATCH_MESSAGES_WIDE_MAX`] refuse a larger one when they decode it).
pub const BATCH_MESSAGES_MAX: usize = 256;
/// Most messages in one write batch (and outcomes in its reply) that a node accepts when
/// it says so on its replies (the `wide-batch` token of `x-weft-accept-encoding`, see
/// [`WIDE_BATCH_TOKEN`]); a client sends batches above [`BATCH_MESSAGES_MAX`] only to
/// such a node. Larger batches make fewer synced commits on the node: an initial push
/// of 100,000 messages takes about 100 instead of about 390.
pub const BATCH_MESSAGES_WIDE_MAX: usize = 1024;
const _: () = assert!(BATCH_MESSAGES_WIDE_MAX >= BATCH_MESSAGES_MAX);
/// The token a node lists in `x-weft-accept-encoding` when it accepts write batches of
/// up to [`BATCH_MESSAGES_WIDE_MAX`] messages.
pub const WIDE_BATCH_TOKEN: &str = "wide-batch";
/// Most cids in one message read.
pub const READ_CIDS_MAX: usize = 256;
/// Most entries in one log page, and the largest `limit` a page request may ask for.
pub const LOG_PAGE_ENTRIES_MAX: u32 = 1000;
/// Largest opaque diff round, in bytes.
pub const DIFF_ROUND_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest error or close message, in bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = REASON_BYTES_MAX;
/// Most protocol versions a health reply or error may list.
pub const VERSIONS_MAX: usize = 16;

/// A filter on log entries, within the request's scope.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LogFilter {
    /// Only entries of these protocols; `None` for every protocol of the scope.
    pub protocols: Option<ProtocolSet>,
}

/// Asks for the root of the tenant's tree over `scope`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RootRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The message set whose root is asked for.
    pub scope: Scope,
}

/// A tree root.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RootReply {
    /// The root hash (all zeros for an empty set, as `sync-smt` defines it).
    pub root: [u8; 32],
}

/// One round of the SMT diff, as opaque `sync-smt` bytes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DiffRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The message set being compared.
    pub scope: Scope,
    /// The client's diff message (at most [`DIFF_ROUND_BYTES_MAX`] bytes).
    pub round: Vec<u8>,
}

/// The node's answer to one diff round, as opaque `sync-smt` bytes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DiffReply {
    /// The node's diff message (at most [`DIFF_ROUND_BYTES_MAX`] bytes).
    pub round: Vec<u8>,
}

/// Reads a page of the tenant's event log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LogPageRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope asked for; entries outside it are skipped.
    pub scope: Scope,
    /// Read after this token (exclusive); `None` from the start of the retained log.
    pub from: Option<ProgressToken>,
    /// A further filter within the scope.
    pub filter: LogFilter,
    /// Most entries to return, 1 to [`LOG_PAGE_ENTRIES_MAX`].
    pub limit: u32,
}

/// A message with its payload when the payload is small enough to travel inline.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageData {
    /// The message.
    pub message: Message,
    /// Its payload, when it has one of at most [`INLINE_DATA_BYTES_MAX`] bytes and the
    /// sender holds it.
    pub data: Option<Vec<u8>>,
}

/// One event of a log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    /// Where the event is in the log.
    pub token: ProgressToken,
    /// The message, with small data inline.
    pub item: MessageData,
}

/// A page of a log.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LogPage {
    /// The entries, in log order.
    pub entries: Vec<LogEntry>,
    /// Where to read the next page from: the scan high-water mark, which may be past the
    /// last entry when the filter skipped events; `None` when the log is empty and
    /// nothing was asked from a token.
    pub next: Option<ProgressToken>,
    /// Whether more entries are already stored after `next`.
    pub has_more: bool,
}

/// The answer to a log page request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // a page is the common answer; a gap is rare
pub enum LogPageReply {
    /// A page.
    Page(LogPage),
    /// The cursor cannot be served; reconcile and resume from `latest_available`.
    Gap(Gap),
}

/// Reads messages by cid.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadMessagesRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope asked for; messages outside it are reported missing.
    pub scope: Scope,
    /// The cids, at most [`READ_CIDS_MAX`].
    pub cids: Vec<Cid>,
}

/// Messages read by cid.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ReadMessagesReply {
    /// The messages found, with small data inline.
    pub found: Vec<MessageData>,
    /// The cids not found (or outside the scope).
    pub missing: Vec<Cid>,
}

/// Writes a batch of messages; answered with one outcome per message, in order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WriteBatchRequest {
    /// The tenant every message must belong to.
    pub tenant: TenantId,
    /// The messages, at most [`BATCH_MESSAGES_MAX`], or [`BATCH_MESSAGES_WIDE_MAX`] to a
    /// node that said it accepts them.
    pub messages: Vec<MessageData>,
}

/// One outcome per message of a [`WriteBatchRequest`], in the same order.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct WriteBatchReply {
    /// The outcomes.
    pub outcomes: Vec<ApplyOutcome>,
}

/// The answer to a [`Request::WriteBatchPlaced`]: one outcome per message, in order,
/// and where the node's log holds the messages this batch added to it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PlacedBatchReply {
    /// The outcomes.
    pub outcomes: Vec<ApplyOutcome>,
    /// The log positions the node gave the messages it applied (`None`: it applied
    /// none, or cannot tell). Capped like any [`KnownRanges`]: positions beyond the cap
    /// are left out, which only costs the client a download.
    pub placed: Option<KnownRanges>,
}

/// A log page that leaves out the entries the caller already holds.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KnownLogPageRequest {
    /// The page asked for, as in [`Request::LogPage`].
    pub page: LogPageRequest,
    /// Positions of the log whose entries the caller holds: the node leaves them out of
    /// the page (its `next` still reaches past them). Ignored when they name another
    /// log instance or epoch.
    pub known: KnownRanges,
}

/// A log page answered with the log's head and, when asked, how much is left after
/// the page ([`Request::LogPageHead`]), so a catch-up knows its total.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HeadLogPageRequest {
    /// The page asked for, as in [`Request::LogPage`].
    pub page: LogPageRequest,
    /// Positions the caller holds, as in [`KnownLogPageRequest::known`]: left out of
    /// the page and of the count.
    pub known: Option<KnownRanges>,
    /// Whether the node counts what is left after the page (a scan of at most
    /// [`LOG_COUNT_ENTRIES_MAX`] entries). A catch-up asks once, with a page of one
    /// entry after its first page, while the pages after it go (older clients asked
    /// with their first page, which then waited for the count).
    pub count_remaining: bool,
}

/// Most log entries a node scans to count what is left after a page; a longer rest is
/// answered without a count.
pub const LOG_COUNT_ENTRIES_MAX: u64 = 1_000_000;

/// The extent of a log as a page reader sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LogExtent {
    /// The newest entry of the node's log when the page was read; `None` when the log
    /// is empty or the node does not say.
    pub head: Option<ProgressToken>,
    /// What is left after the page, when asked for and counted.
    pub remaining: Option<LogRemaining>,
}

/// The entries of a log after a page through its head that a reader would receive
/// (in its scope and filter, without the positions it holds).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LogRemaining {
    /// Entries.
    pub messages: u64,
    /// Their bytes: each encoded message and its inline data.
    pub bytes: u64,
    /// The sizes of the blobs their messages reference (not inline), which a reader
    /// fetching blobs downloads after the pages.
    pub blob_bytes: u64,
}

/// The answer to a [`Request::LogPageHead`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HeadedLogPage {
    /// The page, or a gap.
    pub reply: LogPageReply,
    /// The log's head and what is left (nothing known with a gap).
    pub extent: LogExtent,
}

/// Asks how much of a blob the node holds.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobStatRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope asked for.
    pub scope: Scope,
    /// The blob.
    pub cid: Cid,
}

/// How much of a blob a node holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobStat {
    /// The blob.
    pub cid: Cid,
    /// Its total size, when known (from a started upload or a stored blob).
    pub size: Option<u64>,
    /// How many bytes from the start the node holds.
    pub received_bytes: u64,
    /// Whether the blob is complete and verified.
    pub complete: bool,
}

/// Downloads a byte range of a complete blob.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobReadRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope asked for.
    pub scope: Scope,
    /// The blob.
    pub cid: Cid,
    /// First byte.
    pub offset: u64,
    /// Most bytes to send; the reply may send fewer at the end of the blob.
    pub len: u64,
}

/// The head of a blob download; exactly `len` raw bytes follow it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobReadHead {
    /// The blob's total size.
    pub total_size: u64,
    /// First byte sent.
    pub offset: u64,
    /// Number of bytes that follow.
    pub len: u64,
}

/// Uploads `len` bytes of a blob at `offset`; exactly `len` raw bytes follow the frame.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobWriteRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The blob: blake3 of its complete bytes, checked by the node when complete.
    pub cid: Cid,
    /// The blob's total size.
    pub total_size: u64,
    /// Where these bytes start; the node accepts only its `received_bytes` (resume).
    pub offset: u64,
    /// How many bytes follow.
    pub len: u64,
}

/// A node's health.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HealthReply {
    /// The protocol versions the node speaks.
    pub protocol_versions: Vec<u8>,
    /// The node's own summary, from its handler.
    pub summary: HealthSummary,
    /// Open connections.
    pub connections: u64,
    /// Open subscriptions.
    pub subscriptions: u64,
}

/// A request frame body.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// A tree root.
    Root(RootRequest),
    /// One diff round.
    Diff(DiffRequest),
    /// A log page.
    LogPage(LogPageRequest),
    /// Messages by cid.
    ReadMessages(ReadMessagesRequest),
    /// A write batch.
    WriteBatch(WriteBatchRequest),
    /// How much of a blob the node holds.
    BlobStat(BlobStatRequest),
    /// A blob download (raw bytes follow the reply).
    BlobRead(BlobReadRequest),
    /// A blob upload (raw bytes follow this frame).
    BlobWrite(BlobWriteRequest),
    /// The node's health.
    Health,
    /// A write batch answered with [`Reply::WriteBatchPlaced`] (where the node's log
    /// holds what it applied). Nodes before it answer `BadFrame`; a client then falls
    /// back to [`Request::WriteBatch`].
    WriteBatchPlaced(WriteBatchRequest),
    /// A log page without the entries the caller holds, answered with
    /// [`Reply::LogPage`]. Nodes before it answer `BadFrame`; a client then falls back
    /// to [`Request::LogPage`].
    LogPageKnown(KnownLogPageRequest),
    /// A log page with the log's head and what is left after it, answered with
    /// [`Reply::LogPageHead`]. Nodes before it answer `BadFrame`; a client then falls
    /// back to [`Request::LogPageKnown`] or [`Request::LogPage`].
    LogPageHead(HeadLogPageRequest),
}

/// A reply frame body.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // replies are built once and sent
pub enum Reply {
    /// A tree root.
    Root(RootReply),
    /// One diff round.
    Diff(DiffReply),
    /// A log page or a gap.
    LogPage(LogPageReply),
    /// Messages by cid.
    ReadMessages(ReadMessagesReply),
    /// One outcome per written message.
    WriteBatch(WriteBatchReply),
    /// How much of a blob the node holds (after a stat or an upload).
    Blob(BlobStat),
    /// The head of a blob download.
    BlobRead(BlobReadHead),
    /// The node's health.
    Health(HealthReply),
    /// One outcome per written message, and where the log holds them.
    WriteBatchPlaced(PlacedBatchReply),
    /// A log page or a gap, with the log's extent.
    LogPageHead(HeadedLogPage),
}

/// Why a request failed, in an error frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded (HTTP 400).
    BadFrame,
    /// The frame's protocol version is not spoken here (HTTP 400); see
    /// [`ErrorReply::supported_versions`].
    UnsupportedVersion,
    /// The request is larger than allowed (HTTP 413).
    TooLarge,
    /// The credentials are missing, malformed, forged or expired (HTTP 401).
    Unauthenticated,
    /// The credentials do not allow this request (HTTP 403).
    Forbidden,
    /// The thing asked for does not exist (HTTP 404).
    NotFound,
    /// The request is well-formed but cannot be served as asked (HTTP 400).
    BadRequest,
    /// The request took longer than allowed (HTTP 408).
    Timeout,
    /// The node is at a limit (connections, subscriptions); retry later (HTTP 503).
    Overloaded,
    /// The node cannot serve now (shutting down, storage busy); retry later (HTTP 503).
    Unavailable,
    /// A bug or an unexpected failure on the node (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::UnsupportedVersion | ErrorCode::BadRequest => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Timeout => 408,
            ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout | ErrorCode::Overloaded | ErrorCode::Unavailable
        )
    }
}

/// An error frame body.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Why, for humans (at most [`ERROR_MESSAGE_BYTES_MAX`] bytes).
    pub message: String,
    /// The protocol versions this node speaks.
    pub supported_versions: Vec<u8>,
}

impl ErrorReply {
    /// An error reply; the message is cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: sync_types::truncate_reason(message.into()),
            supported_versions: crate::frame::SUPPORTED_VERSIONS.to_vec(),
        }
    }
}

/// Opens a subscription to a tenant's log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope asked for.
    pub scope: Scope,
    /// Replay after this token (exclusive); `None` replays the whole retained log.
    pub from: Option<ProgressToken>,
    /// A further filter within the scope.
    pub filter: LogFilter,
}

/// Why a subscription ended.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CloseReason {
    /// The subscriber did not drain its queue in time; it must resubscribe from its
    /// last applied token.
    Lagged {
        /// The node's per-subscriber queue length.
        queue_len_max: u32,
    },
    /// No frame arrived within the heartbeat timeout.
    HeartbeatTimeout,
    /// The node is shutting down.
    ShuttingDown,
    /// The subscriber's credentials expired.
    Expired,
    /// The cursor became unservable; a [`Notice::Gap`] was sent before.
    Gap,
    /// The node's handler failed, or its notices could not be read.
    Error {
        /// Why (at most [`ERROR_MESSAGE_BYTES_MAX`] bytes).
        message: String,
    },
    /// The connection to the node broke: reset, closed without a `Closing` notice (a
    /// node killed or restarted), or a heartbeat could not be sent. The client's own
    /// verdict, never sent by a node: resubscribe from the last applied token, as after
    /// [`HeartbeatTimeout`](Self::HeartbeatTimeout); nothing about the log is in doubt.
    ConnectionLost {
        /// What broke (at most [`ERROR_MESSAGE_BYTES_MAX`] bytes).
        message: String,
    },
    /// The node cannot read its log for now (its shared store is unreachable or
    /// restarting, or the read timed out): resubscribe later from the last applied
    /// token, to this node or another; nothing about the log is in doubt. Older clients
    /// do not know this reason and treat the frame as a handler error.
    Unavailable {
        /// Why (at most [`ERROR_MESSAGE_BYTES_MAX`] bytes).
        message: String,
    },
}

impl CloseReason {
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn error(message: impl Into<String>) -> Self {
        CloseReason::Error {
            message: sync_types::truncate_reason(message.into()),
        }
    }

    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        CloseReason::Unavailable {
            message: sync_types::truncate_reason(message.into()),
        }
    }

    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub(crate) fn connection_lost(message: impl Into<String>) -> Self {
        CloseReason::ConnectionLost {
            message: sync_types::truncate_reason(message.into()),
        }
    }
}

/// A frame the node sends on a subscription.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // events are the common notice
pub enum Notice {
    /// A stored or live event.
    Event(LogEntry),
    /// Every stored event up to `cursor` was sent; what follows is live.
    EndOfStored {
        /// The last token read (the request's cursor when nothing matched).
        cursor: Option<ProgressToken>,
    },
    /// The cursor cannot be served; the subscription closes after this.
    Gap(Gap),
    /// The subscription ends, and why.
    Closing(CloseReason),
}

/// [`INLINE_DATA_BYTES_MAX`] as a length.
const INLINE_BYTES_MAX: usize = 32 * 1024;
const _: () = assert!(INLINE_BYTES_MAX as u64 == INLINE_DATA_BYTES_MAX);

fn check_inline(data: &Option<Vec<u8>>) -> Result<(), FrameError> {
    if let Some(d) = data {
        check_len("inline data", d.len(), INLINE_BYTES_MAX)?;
    }
    Ok(())
}

fn check_items(what: &'static str, items: &[MessageData], max: usize) -> Result<(), FrameError> {
    check_count(what, items.len(), max)?;
    items.iter().try_for_each(|i| check_inline(&i.data))
}

fn check_outcome(o: &ApplyOutcome) -> Result<(), FrameError> {
    match o {
        ApplyOutcome::Incomplete { missing } => check_count("missing", missing.len(), MISSING_MAX),
        ApplyOutcome::Invalid { reason } => {
            check_len("invalid reason", reason.len(), REASON_BYTES_MAX)
        }
        _ => Ok(()),
    }
}

fn check_page_limit(limit: u32) -> Result<(), FrameError> {
    if limit == 0 || limit > LOG_PAGE_ENTRIES_MAX {
        return Err(FrameError::OutOfRange {
            what: "log page limit",
            reason: "must be between 1 and LOG_PAGE_ENTRIES_MAX",
        });
    }
    Ok(())
}

fn check_page(page: &LogPage) -> Result<(), FrameError> {
    check_count(
        "log page entries",
        page.entries.len(),
        LOG_PAGE_ENTRIES_MAX as usize,
    )?;
    page.entries
        .iter()
        .try_for_each(|e| check_inline(&e.item.data))
}

impl Body for Request {
    const KIND: FrameKind = FrameKind::Request;
    fn to_dense(&self) -> Option<Vec<u8>> {
        crate::dense::encode_request(self)
    }
    fn from_dense(body: &[u8]) -> Result<Self, FrameError> {
        crate::dense::decode_request(body)
    }
    fn check_limits(&self) -> Result<(), FrameError> {
        match self {
            Request::Diff(r) => check_len("diff round", r.round.len(), DIFF_ROUND_BYTES_MAX),
            Request::LogPage(r) => check_page_limit(r.limit),
            Request::ReadMessages(r) => check_count("read cids", r.cids.len(), READ_CIDS_MAX),
            Request::WriteBatch(r) | Request::WriteBatchPlaced(r) => {
                check_items("write batch", &r.messages, BATCH_MESSAGES_WIDE_MAX)
            }
            Request::LogPageKnown(r) => check_page_limit(r.page.limit),
            Request::LogPageHead(r) => check_page_limit(r.page.limit),
            Request::BlobWrite(r) => {
                let end = r.offset.checked_add(r.len);
                if end.is_none_or(|end| end > r.total_size) {
                    return Err(FrameError::OutOfRange {
                        what: "blob write range",
                        reason: "offset + len exceeds the total size",
                    });
                }
                Ok(())
            }
            Request::BlobRead(r) => {
                if r.offset.checked_add(r.len).is_none() {
                    return Err(FrameError::OutOfRange {
                        what: "blob read range",
                        reason: "offset + len overflows",
                    });
                }
                Ok(())
            }
            Request::Root(_) | Request::BlobStat(_) | Request::Health => Ok(()),
        }
    }
}

impl Body for Reply {
    const KIND: FrameKind = FrameKind::Reply;
    fn to_dense(&self) -> Option<Vec<u8>> {
        crate::dense::encode_reply(self)
    }
    fn from_dense(body: &[u8]) -> Result<Self, FrameError> {
        crate::dense::decode_reply(body)
    }
    fn check_limits(&self) -> Result<(), FrameError> {
        match self {
            Reply::Diff(r) => check_len("diff round", r.round.len(), DIFF_ROUND_BYTES_MAX),
            Reply::LogPage(LogPageReply::Page(p))
            | Reply::LogPageHead(HeadedLogPage {
                reply: LogPageReply::Page(p),
                ..
            }) => check_page(p),
            Reply::ReadMessages(r) => {
                check_items("read messages found", &r.found, READ_CIDS_MAX)?;
                check_count("read messages missing", r.missing.len(), READ_CIDS_MAX)
            }
            Reply::WriteBatch(WriteBatchReply { outcomes })
            | Reply::WriteBatchPlaced(PlacedBatchReply { outcomes, .. }) => {
                check_count("write outcomes", outcomes.len(), BATCH_MESSAGES_WIDE_MAX)?;
                outcomes.iter().try_for_each(check_outcome)
            }
            Reply::Health(h) => {
                check_count("protocol versions", h.protocol_versions.len(), VERSIONS_MAX)
            }
            Reply::Root(_)
            | Reply::LogPage(LogPageReply::Gap(_))
            | Reply::LogPageHead(HeadedLogPage {
                reply: LogPageReply::Gap(_),
                ..
            })
            | Reply::Blob(_)
            | Reply::BlobRead(_) => Ok(()),
        }
    }
}

impl Body for ErrorReply {
    const KIND: FrameKind = FrameKind::Error;
    fn check_limits(&self) -> Result<(), FrameError> {
        check_len("error message", self.message.len(), ERROR_MESSAGE_BYTES_MAX)?;
        check_count(
            "supported versions",
            self.supported_versions.len(),
            VERSIONS_MAX,
        )
    }
}

impl Body for SubscribeRequest {
    const KIND: FrameKind = FrameKind::Subscribe;
    fn check_limits(&self) -> Result<(), FrameError> {
        Ok(())
    }
}

impl Body for Notice {
    const KIND: FrameKind = FrameKind::Notice;
    fn check_limits(&self) -> Result<(), FrameError> {
        match self {
            Notice::Event(e) => check_inline(&e.item.data),
            Notice::Closing(
                CloseReason::Error { message }
                | CloseReason::ConnectionLost { message }
                | CloseReason::Unavailable { message },
            ) => check_len("close message", message.len(), ERROR_MESSAGE_BYTES_MAX),
            _ => Ok(()),
        }
    }
}

/// The actions a request needs from the caller's grant, and the scope it asks for.
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) fn request_needs(
    request: &Request,
) -> Option<(&TenantId, Option<&Scope>, sync_types::Actions)> {
    use sync_types::Actions;
    Some(match request {
        Request::Root(r) => (&r.tenant, Some(&r.scope), Actions::READ),
        Request::Diff(r) => (&r.tenant, Some(&r.scope), Actions::SYNC),
        Request::LogPage(r) => (&r.tenant, Some(&r.scope), Actions::READ),
        Request::LogPageKnown(r) => (&r.page.tenant, Some(&r.page.scope), Actions::READ),
        Request::LogPageHead(r) => (&r.page.tenant, Some(&r.page.scope), Actions::READ),
        Request::ReadMessages(r) => (&r.tenant, Some(&r.scope), Actions::READ),
        // Writes are checked per message against the grant's scope (out-of-scope
        // messages are answered `Unauthorized`), so only the action is checked here.
        Request::WriteBatch(r) | Request::WriteBatchPlaced(r) => (&r.tenant, None, Actions::WRITE),
        Request::BlobStat(r) => (&r.tenant, Some(&r.scope), Actions::READ),
        Request::BlobRead(r) => (&r.tenant, Some(&r.scope), Actions::READ),
        Request::BlobWrite(r) => (&r.tenant, None, Actions::WRITE),
        Request::Health => return None,
    })
}
