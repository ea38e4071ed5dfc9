//! Dense frames (frame version [`DENSE_VERSION`]): the bodies that carry messages (a
//! push, a log page, a message read) with what repeats or can be recomputed left out.
//! Pure code over bytes, like [`crate::frame`].
//!
//! A message's encoding here is a wire encoding only: the receiver rebuilds exactly the
//! [`Message`] the sender held, so its canonical bytes and its cid are the same whichever
//! frame version carried it, and it is verified as before. What a dense body leaves out:
//!
//! - names that repeat across a frame (tenant, protocol, path, author, the clock's node
//!   id) go once in per-frame tables ([`Names`]) and messages name them by index;
//! - the data reference of inline data ([`DenseRef::OfInline`]): the receiver hashes the
//!   bytes sent beside the message (`DataRef::of`);
//! - the context of a root record ([`DenseContext::Root`]: the record id alone) and the
//!   parent id (the last ancestor of the context);
//! - in a page, a token's stream, epoch and cid ([`DenseToken::Next`]): the page names
//!   the domain once, positions go as steps from the previous entry, and the cid is the
//!   entry's message's own.
//!
//! Whatever does not fit these forms travels as it is ([`DenseMessage::Plain`],
//! [`DenseRef::Ref`], [`DenseToken::Full`]), so encoding never loses anything. A body
//! the rules cannot rebuild (an index outside its table, a claimed root whose path is
//! not at depth 1, ancestors that do not match the path, "inline" without data, a step
//! without a domain) is refused as a whole with [`FrameError::Dense`]; nothing of it
//! reaches a handler. Tables hold at most [`NAMES_MAX`] names each, and every name is a
//! validated id with its own length limit (`TENANT_ID_BYTES_MAX` and so on).
//!
//! Only bodies that carry messages have a dense form: requests
//! [`Request::WriteBatch`] and [`Request::WriteBatchPlaced`], replies
//! [`Reply::LogPage`], [`Reply::LogPageHead`] (pages, not gaps) and
//! [`Reply::ReadMessages`]. Peers agree on them per request in HTTP headers (see
//! `compress`, with the `net` feature): a peer sends a dense frame only to a peer that
//! said it reads them ([`ACCEPT_TOKEN`]).

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};
use sync_types::{
    Cid, ContextId, DataRef, Delete, Hlc, Message, NodeId, PrincipalId, ProgressToken,
    ProtocolName, ProtocolPath, RecordId, StreamId, TenantId, Write, codec,
};

use crate::frame::FrameError;
use crate::proto::{
    BATCH_MESSAGES_WIDE_MAX, HeadedLogPage, LOG_PAGE_ENTRIES_MAX, LogEntry, LogExtent, LogPage,
    LogPageReply, MessageData, READ_CIDS_MAX, ReadMessagesReply, Reply, Request, WriteBatchRequest,
};

/// The frame version of dense bodies.
pub const DENSE_VERSION: u8 = 2;
/// The token a peer lists in `x-weft-accept-encoding` when it reads dense frames.
pub const ACCEPT_TOKEN: &str = "dense";
/// Most names in one table of a dense frame.
pub const NAMES_MAX: usize = 1024;
/// [`sync_types::INLINE_DATA_BYTES_MAX`] as a length.
const INLINE_BYTES_MAX: usize = 32 * 1024;
const _: () = assert!(INLINE_BYTES_MAX as u64 == sync_types::INLINE_DATA_BYTES_MAX);

/// The names a dense frame's messages refer to by index.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Names {
    /// Tenants.
    pub tenants: Vec<TenantId>,
    /// Protocols.
    pub protocols: Vec<ProtocolName>,
    /// Type paths.
    pub paths: Vec<ProtocolPath>,
    /// Authors.
    pub authors: Vec<PrincipalId>,
    /// Node ids of timestamps.
    pub nodes: Vec<NodeId>,
}

/// A timestamp whose node id is in [`Names::nodes`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseHlc {
    /// Physical time in milliseconds.
    pub wall_ms: u64,
    /// The counter.
    pub counter: u32,
    /// Index into [`Names::nodes`].
    pub node: u32,
}

/// A write's context.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DenseContext {
    /// A root record: the context is the record id alone, and there is no parent.
    Root,
    /// The ancestors, root first (at least one); the parent is the last.
    Below(Vec<RecordId>),
}

/// A write's data reference.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DenseRef {
    /// No payload.
    None,
    /// The reference of the inline data sent beside the message.
    OfInline,
    /// This reference (a blob, or data that is not sent).
    Ref(DataRef),
}

/// A [`Write`] with its names as indices.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseWrite {
    /// Index into [`Names::tenants`].
    pub tenant: u32,
    /// The record.
    pub record_id: RecordId,
    /// Index into [`Names::protocols`].
    pub protocol: u32,
    /// Index into [`Names::paths`].
    pub path: u32,
    /// The context (and the parent).
    pub context: DenseContext,
    /// The previous version.
    pub prev: Option<Cid>,
    /// When.
    pub timestamp: DenseHlc,
    /// Index into [`Names::authors`].
    pub author: u32,
    /// The payload's reference.
    pub data: DenseRef,
}

/// A [`Delete`] with its names as indices.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseDelete {
    /// Index into [`Names::tenants`].
    pub tenant: u32,
    /// The record.
    pub record_id: RecordId,
    /// Index into [`Names::protocols`].
    pub protocol: u32,
    /// The version the deleter saw last.
    pub prev: Option<Cid>,
    /// When.
    pub timestamp: DenseHlc,
    /// Index into [`Names::authors`].
    pub author: u32,
}

/// A message in a dense frame.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // writes are the common case
pub enum DenseMessage {
    /// A write.
    Write(DenseWrite),
    /// A tombstone.
    Delete(DenseDelete),
    /// A message as it is (a `Configure`, or one the dense forms cannot express).
    Plain(Message),
}

/// A message and its inline data.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseItem {
    /// The message.
    pub message: DenseMessage,
    /// Its inline payload.
    pub data: Option<Vec<u8>>,
}

/// A log position in a dense page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DenseToken {
    /// In the page's domain, this many positions after the previous entry's (the first
    /// entry: after 0), at the entry's own message.
    Next(u64),
    /// The token as it is.
    Full(ProgressToken),
}

/// A log entry in a dense page.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseEntry {
    /// Where it is.
    pub token: DenseToken,
    /// The message.
    pub item: DenseItem,
}

/// A [`LogPage`] in dense form.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DensePage {
    /// The names.
    pub names: Names,
    /// The stream and epoch of [`DenseToken::Next`] entries.
    pub domain: Option<(StreamId, u64)>,
    /// The entries.
    pub entries: Vec<DenseEntry>,
    /// As [`LogPage::next`].
    pub next: Option<ProgressToken>,
    /// As [`LogPage::has_more`].
    pub has_more: bool,
}

/// A write batch in dense form.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DenseBatch {
    /// As [`WriteBatchRequest::tenant`].
    pub tenant: TenantId,
    /// The names.
    pub names: Names,
    /// The messages.
    pub messages: Vec<DenseItem>,
}

/// A dense request body.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DenseRequest {
    /// [`Request::WriteBatch`].
    WriteBatch(DenseBatch),
    /// [`Request::WriteBatchPlaced`].
    WriteBatchPlaced(DenseBatch),
}

/// A dense reply body.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DenseReply {
    /// [`Reply::LogPage`] with a page.
    LogPage(DensePage),
    /// [`Reply::LogPageHead`] with a page.
    LogPageHead(DensePage, LogExtent),
    /// [`Reply::ReadMessages`].
    ReadMessages {
        /// The names.
        names: Names,
        /// The messages found.
        found: Vec<DenseItem>,
        /// The cids not found.
        missing: Vec<Cid>,
    },
}

// ---- encoding ---------------------------------------------------------------------

/// One table being built: each name once, in order of first use.
struct Table<T> {
    names: Vec<T>,
    index: HashMap<T, u32>,
}

impl<T: Clone + Eq + Hash> Table<T> {
    fn new() -> Self {
        Self {
            names: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The index of `name`, added when new; `None` when the table is full.
    fn of(&mut self, name: &T) -> Option<u32> {
        if let Some(&i) = self.index.get(name) {
            return Some(i);
        }
        if self.names.len() >= NAMES_MAX {
            return None;
        }
        let i = u32::try_from(self.names.len()).ok()?;
        self.names.push(name.clone());
        self.index.insert(name.clone(), i);
        Some(i)
    }
}

/// Builds the tables of one frame while its messages are encoded.
struct Encoder {
    tenants: Table<TenantId>,
    protocols: Table<ProtocolName>,
    paths: Table<ProtocolPath>,
    authors: Table<PrincipalId>,
    nodes: Table<NodeId>,
}

impl Encoder {
    fn new() -> Self {
        Self {
            tenants: Table::new(),
            protocols: Table::new(),
            paths: Table::new(),
            authors: Table::new(),
            nodes: Table::new(),
        }
    }

    fn names(self) -> Names {
        Names {
            tenants: self.tenants.names,
            protocols: self.protocols.names,
            paths: self.paths.names,
            authors: self.authors.names,
            nodes: self.nodes.names,
        }
    }

    fn hlc(&mut self, t: Hlc) -> Option<DenseHlc> {
        Some(DenseHlc {
            wall_ms: t.wall_ms,
            counter: t.counter,
            node: self.nodes.of(&t.node)?,
        })
    }

    fn write(&mut self, w: &Write, data: Option<&[u8]>) -> Option<DenseWrite> {
        let chain = w.context_id.chain();
        let (last, ancestors) = chain.split_last()?;
        // Only a write whose context, parent and path agree as `validate` wants them
        // has a dense form; any other travels as it is (and is refused by the
        // receiver's checks as before).
        if *last != w.record_id
            || w.parent_id != ancestors.last().copied()
            || chain.len() != w.path.depth()
        {
            return None;
        }
        let context = if ancestors.is_empty() {
            DenseContext::Root
        } else {
            DenseContext::Below(ancestors.to_vec())
        };
        let data_ref = match (&w.data, data) {
            (None, _) => DenseRef::None,
            (Some(r), Some(d)) if *r == DataRef::of(d) => DenseRef::OfInline,
            (Some(r), _) => DenseRef::Ref(*r),
        };
        Some(DenseWrite {
            tenant: self.tenants.of(&w.tenant)?,
            record_id: w.record_id,
            protocol: self.protocols.of(&w.protocol)?,
            path: self.paths.of(&w.path)?,
            context,
            prev: w.prev,
            timestamp: self.hlc(w.timestamp)?,
            author: self.authors.of(&w.author)?,
            data: data_ref,
        })
    }

    fn delete(&mut self, d: &Delete) -> Option<DenseDelete> {
        Some(DenseDelete {
            tenant: self.tenants.of(&d.tenant)?,
            record_id: d.record_id,
            protocol: self.protocols.of(&d.protocol)?,
            prev: d.prev,
            timestamp: self.hlc(d.timestamp)?,
            author: self.authors.of(&d.author)?,
        })
    }

    fn item(&mut self, item: &MessageData) -> DenseItem {
        let message = match &item.message {
            Message::Write(w) => self.write(w, item.data.as_deref()).map(DenseMessage::Write),
            Message::Delete(d) => self.delete(d).map(DenseMessage::Delete),
            Message::Configure(_) => None,
        };
        DenseItem {
            message: message.unwrap_or_else(|| DenseMessage::Plain(item.message.clone())),
            data: item.data.clone(),
        }
    }

    fn page(mut self, page: &LogPage) -> DensePage {
        let domain = page
            .entries
            .first()
            .map(|e| (e.token.stream_id, e.token.epoch));
        let mut previous = 0u64;
        let entries = page
            .entries
            .iter()
            .map(|e| {
                let t = e.token;
                let next = domain == Some((t.stream_id, t.epoch))
                    && t.position >= previous
                    && t.cid == e.item.message.cid();
                let token = if next {
                    DenseToken::Next(t.position - previous)
                } else {
                    DenseToken::Full(t)
                };
                previous = t.position;
                DenseEntry {
                    token,
                    item: self.item(&e.item),
                }
            })
            .collect();
        DensePage {
            names: self.names(),
            domain,
            entries,
            next: page.next,
            has_more: page.has_more,
        }
    }
}

fn batch(r: &WriteBatchRequest) -> DenseBatch {
    let mut enc = Encoder::new();
    let messages = r.messages.iter().map(|m| enc.item(m)).collect();
    DenseBatch {
        tenant: r.tenant.clone(),
        names: enc.names(),
        messages,
    }
}

/// The dense body (codec envelope) of `request`, when it has a dense form.
pub fn encode_request(request: &Request) -> Option<Vec<u8>> {
    let dense = match request {
        Request::WriteBatch(r) => DenseRequest::WriteBatch(batch(r)),
        Request::WriteBatchPlaced(r) => DenseRequest::WriteBatchPlaced(batch(r)),
        _ => return None,
    };
    Some(codec::encode(&dense))
}

/// The dense body (codec envelope) of `reply`, when it has a dense form.
pub fn encode_reply(reply: &Reply) -> Option<Vec<u8>> {
    let dense = match reply {
        Reply::LogPage(LogPageReply::Page(p)) => DenseReply::LogPage(Encoder::new().page(p)),
        Reply::LogPageHead(HeadedLogPage {
            reply: LogPageReply::Page(p),
            extent,
        }) => DenseReply::LogPageHead(Encoder::new().page(p), *extent),
        Reply::ReadMessages(r) => {
            let mut enc = Encoder::new();
            let found = r.found.iter().map(|m| enc.item(m)).collect();
            DenseReply::ReadMessages {
                names: enc.names(),
                found,
                missing: r.missing.clone(),
            }
        }
        _ => return None,
    };
    Some(codec::encode(&dense))
}

// ---- decoding ---------------------------------------------------------------------

fn bad(reason: String) -> FrameError {
    FrameError::Dense(reason)
}

fn pick<'a, T>(table: &'a [T], i: u32, what: &str, at: usize) -> Result<&'a T, FrameError> {
    table.get(i as usize).ok_or_else(|| {
        bad(format!(
            "message {at}: {what} index {i} is outside the frame's table of {} {what}s",
            table.len()
        ))
    })
}

impl Names {
    fn check(&self) -> Result<(), FrameError> {
        let lens = [
            ("dense tenant table", self.tenants.len()),
            ("dense protocol table", self.protocols.len()),
            ("dense path table", self.paths.len()),
            ("dense author table", self.authors.len()),
            ("dense node table", self.nodes.len()),
        ];
        lens.into_iter()
            .try_for_each(|(what, len)| crate::frame::check_count(what, len, NAMES_MAX))
    }

    fn hlc(&self, t: DenseHlc, at: usize) -> Result<Hlc, FrameError> {
        Ok(Hlc {
            wall_ms: t.wall_ms,
            counter: t.counter,
            node: *pick(&self.nodes, t.node, "node", at)?,
        })
    }

    fn write(&self, w: DenseWrite, data: Option<&[u8]>, at: usize) -> Result<Write, FrameError> {
        let path = pick(&self.paths, w.path, "path", at)?.clone();
        let (chain, parent_id) = match w.context {
            DenseContext::Root => {
                if path.depth() != 1 {
                    return Err(bad(format!(
                        "message {at}: claims a root context, but its path {:?} has depth {}",
                        path.as_str(),
                        path.depth()
                    )));
                }
                (vec![w.record_id], None)
            }
            DenseContext::Below(mut ancestors) => {
                let parent = ancestors.last().copied().ok_or_else(|| {
                    bad(format!(
                        "message {at}: a context below no ancestor (a root is sent as Root)"
                    ))
                })?;
                if ancestors.len() + 1 != path.depth() {
                    return Err(bad(format!(
                        "message {at}: {} ancestors for the path {:?} of depth {}",
                        ancestors.len(),
                        path.as_str(),
                        path.depth()
                    )));
                }
                ancestors.push(w.record_id);
                (ancestors, Some(parent))
            }
        };
        let context_id =
            ContextId::new(chain).map_err(|e| bad(format!("message {at}: bad context: {e}")))?;
        let data_ref = match w.data {
            DenseRef::None => None,
            DenseRef::Ref(r) => Some(r),
            DenseRef::OfInline => Some(DataRef::of(data.ok_or_else(|| {
                bad(format!(
                    "message {at}: its data reference names inline data, but none is sent"
                ))
            })?)),
        };
        Ok(Write {
            tenant: pick(&self.tenants, w.tenant, "tenant", at)?.clone(),
            record_id: w.record_id,
            parent_id,
            protocol: pick(&self.protocols, w.protocol, "protocol", at)?.clone(),
            path,
            context_id,
            prev: w.prev,
            timestamp: self.hlc(w.timestamp, at)?,
            author: pick(&self.authors, w.author, "author", at)?.clone(),
            data: data_ref,
        })
    }

    fn delete(&self, d: DenseDelete, at: usize) -> Result<Delete, FrameError> {
        Ok(Delete {
            tenant: pick(&self.tenants, d.tenant, "tenant", at)?.clone(),
            record_id: d.record_id,
            protocol: pick(&self.protocols, d.protocol, "protocol", at)?.clone(),
            prev: d.prev,
            timestamp: self.hlc(d.timestamp, at)?,
            author: pick(&self.authors, d.author, "author", at)?.clone(),
        })
    }

    fn item(&self, item: DenseItem, at: usize) -> Result<MessageData, FrameError> {
        // Checked again with the rebuilt value; here before its bytes are hashed.
        if let Some(d) = &item.data {
            crate::frame::check_len("inline data", d.len(), INLINE_BYTES_MAX)?;
        }
        let message = match item.message {
            DenseMessage::Write(w) => Message::Write(self.write(w, item.data.as_deref(), at)?),
            DenseMessage::Delete(d) => Message::Delete(self.delete(d, at)?),
            DenseMessage::Plain(m) => m,
        };
        Ok(MessageData {
            message,
            data: item.data,
        })
    }

    fn items(
        &self,
        items: Vec<DenseItem>,
        what: &'static str,
        max: usize,
    ) -> Result<Vec<MessageData>, FrameError> {
        crate::frame::check_count(what, items.len(), max)?;
        items
            .into_iter()
            .enumerate()
            .map(|(at, i)| self.item(i, at))
            .collect()
    }
}

fn page(p: DensePage) -> Result<LogPage, FrameError> {
    p.names.check()?;
    crate::frame::check_count(
        "log page entries",
        p.entries.len(),
        LOG_PAGE_ENTRIES_MAX as usize,
    )?;
    let mut previous = 0u64;
    let mut entries = Vec::with_capacity(p.entries.len());
    for (at, e) in p.entries.into_iter().enumerate() {
        let item = p.names.item(e.item, at)?;
        let token = match e.token {
            DenseToken::Full(t) => t,
            DenseToken::Next(step) => {
                let (stream_id, epoch) = p.domain.ok_or_else(|| {
                    bad(format!(
                        "entry {at}: a position step in a page without a domain"
                    ))
                })?;
                let position = previous
                    .checked_add(step)
                    .ok_or_else(|| bad(format!("entry {at}: the position step overflows")))?;
                ProgressToken {
                    stream_id,
                    epoch,
                    position,
                    cid: item.message.cid(),
                }
            }
        };
        previous = token.position;
        entries.push(LogEntry { token, item });
    }
    Ok(LogPage {
        entries,
        next: p.next,
        has_more: p.has_more,
    })
}

fn unbatch(b: DenseBatch) -> Result<WriteBatchRequest, FrameError> {
    b.names.check()?;
    Ok(WriteBatchRequest {
        messages: b
            .names
            .items(b.messages, "write batch", BATCH_MESSAGES_WIDE_MAX)?,
        tenant: b.tenant,
    })
}

/// The request in a dense body (codec envelope), rebuilt.
pub fn decode_request(body: &[u8]) -> Result<Request, FrameError> {
    Ok(match codec::decode::<DenseRequest>(body, body.len())? {
        DenseRequest::WriteBatch(b) => Request::WriteBatch(unbatch(b)?),
        DenseRequest::WriteBatchPlaced(b) => Request::WriteBatchPlaced(unbatch(b)?),
    })
}

/// The reply in a dense body (codec envelope), rebuilt.
pub fn decode_reply(body: &[u8]) -> Result<Reply, FrameError> {
    Ok(match codec::decode::<DenseReply>(body, body.len())? {
        DenseReply::LogPage(p) => Reply::LogPage(LogPageReply::Page(page(p)?)),
        DenseReply::LogPageHead(p, extent) => Reply::LogPageHead(HeadedLogPage {
            reply: LogPageReply::Page(page(p)?),
            extent,
        }),
        DenseReply::ReadMessages {
            names,
            found,
            missing,
        } => {
            names.check()?;
            Reply::ReadMessages(ReadMessagesReply {
                found: names.items(found, "read messages found", READ_CIDS_MAX)?,
                missing,
            })
        }
    })
}
