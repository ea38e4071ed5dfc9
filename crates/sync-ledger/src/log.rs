//! Reading a tenant's event log: pages from a cursor, gap answers, heads.

use std::ops::Bound;

use sync_types::{Cid, Gap, GapReason, Message, ProgressToken, ProtocolName, StreamId, TenantId};

use crate::error::Result;
use crate::layout::{self, Key, LogMeta, StoredEntry, Tn};
use crate::ledger::Ledger;
use crate::store::{KeyRange, Order};

/// Most entries one log page may hold.
pub const LOG_PAGE_ENTRIES_MAX: usize = 10_000;

/// What to read from a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogQuery {
    /// Read entries after this cursor; `None` reads from the start.
    pub after: Option<ProgressToken>,
    /// Only entries of this protocol.
    pub protocol: Option<ProtocolName>,
    /// Most entries to return (clamped to 1..=[`LOG_PAGE_ENTRIES_MAX`]).
    pub limit: usize,
}

impl LogQuery {
    /// Everything after `after`, at most `limit` entries.
    pub fn after(after: Option<ProgressToken>, limit: usize) -> Self {
        Self {
            after,
            protocol: None,
            limit,
        }
    }

    /// Only entries of `protocol`.
    #[must_use]
    pub fn protocol(mut self, protocol: ProtocolName) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

/// One entry of a log page.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogEntry {
    /// Its position, as a cursor.
    pub token: ProgressToken,
    /// The message.
    pub message: Message,
    /// Its inline payload, when stored.
    pub data: Option<Vec<u8>>,
}

impl LogEntry {
    /// The message's cid.
    pub fn cid(&self) -> Cid {
        self.token.cid
    }

    /// The message's protocol.
    pub fn protocol(&self) -> &ProtocolName {
        self.message.protocol()
    }

    /// The entry's position.
    pub fn position(&self) -> u64 {
        self.token.position
    }
}

/// A page of a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogPage {
    /// The entries, in position order (sparse: pruned versions have no entry).
    pub entries: Vec<LogEntry>,
    /// The cursor to read the next page from: the last entry's token, or the query's
    /// cursor when the page is empty.
    pub next: Option<ProgressToken>,
    /// Whether more matching entries follow.
    pub has_more: bool,
    /// The log's newest entry when the page was read (for "caught up" checks).
    pub head: Option<ProgressToken>,
    /// For each entry of the page whose apply pruned versions, its position and the ids
    /// it removed from the tenant's current set (see
    /// [`StoredEntry::pruned`](crate::layout::StoredEntry::pruned)), in position order.
    /// A follower keeps a set of ids (a Merkle tree) current without rebuilding it by
    /// adding every entry's cid and removing these: a pruned version never comes back,
    /// and is always older than the entry that prunes it. Entries written before layout
    /// 4 record nothing, so a follower starts from a cursor taken on layout 4 (or from
    /// the start of the log, which holds only retained versions).
    pub pruned: Vec<(u64, Vec<Cid>)>,
}

/// The answer to a log read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LogRead {
    /// Entries after the cursor.
    Page(LogPage),
    /// The cursor cannot be served; the reader reconciles and resumes from
    /// `latest_available`.
    Gap(Gap),
}

/// The identity and extent of a tenant's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogInfo {
    /// The log instance.
    pub stream_id: StreamId,
    /// The log's epoch.
    pub epoch: u64,
    /// The last position assigned.
    pub head_position: u64,
    /// Cursors below this position get a gap.
    pub compacted_through: u64,
}

impl Ledger {
    /// The identity and extent of a tenant's log, if it has one.
    pub fn log_info(&self, tenant: &TenantId) -> Result<Option<LogInfo>> {
        Ok(self.log_meta(tenant)?.map(|(_, m)| LogInfo {
            stream_id: m.stream_id,
            epoch: m.epoch,
            head_position: m.head,
            compacted_through: m.compacted_through,
        }))
    }

    /// The token of the newest entry of a tenant's log.
    pub fn log_head(&self, tenant: &TenantId) -> Result<Option<ProgressToken>> {
        match self.log_meta(tenant)? {
            Some((tn, meta)) => self.edge_token(tn, &meta, Order::Descending),
            None => Ok(None),
        }
    }

    fn edge_token(
        &self,
        tenant: Tn,
        meta: &LogMeta,
        order: Order,
    ) -> Result<Option<ProgressToken>> {
        let start = layout::log_key(tenant, meta.compacted_through.saturating_add(1));
        let end = layout::log_key(tenant, meta.head);
        let range = KeyRange {
            start: Bound::Included(start),
            end: Bound::Included(end),
        };
        match self.store.first(layout::LOG, range, order)? {
            Some((k, v)) => Ok(Some(self.decode_entry(meta, &k, &v)?.0.token)),
            None => Ok(None),
        }
    }

    /// A log entry and the ids its apply pruned.
    fn decode_entry(
        &self,
        meta: &LogMeta,
        key: &[u8],
        value: &[u8],
    ) -> Result<(LogEntry, Vec<Cid>)> {
        let position = u64::from_be_bytes(layout::key_tail::<8>(layout::LOG, key)?);
        let entry: StoredEntry = layout::dec_entry(key, value)?;
        let read = LogEntry {
            token: ProgressToken {
                stream_id: meta.stream_id,
                epoch: meta.epoch,
                position,
                cid: entry.cid,
            },
            message: entry.message,
            data: entry.data,
        };
        Ok((read, entry.pruned))
    }

    /// Reads a page of a tenant's log after a cursor.
    ///
    /// A cursor is served when it names this log (stream id and epoch), is not below
    /// the compaction floor, is not beyond the head, and (when its entry is still
    /// stored) names the message at its position; otherwise the answer is a
    /// [`Gap`] naming the oldest and latest available tokens. A protocol filter reads
    /// the per-protocol index, not the whole log.
    pub fn read_log(&self, tenant: &TenantId, query: &LogQuery) -> Result<LogRead> {
        let limit = query.limit.clamp(1, LOG_PAGE_ENTRIES_MAX);
        let Some((tn, meta)) = self.log_meta(tenant)? else {
            return Ok(match query.after {
                // A cursor into a log that does not exist here comes from another log.
                Some(requested) => LogRead::Gap(Gap {
                    requested,
                    oldest_available: None,
                    latest_available: None,
                    reason: GapReason::StreamMismatch,
                }),
                None => LogRead::Page(LogPage {
                    entries: Vec::new(),
                    next: None,
                    has_more: false,
                    head: None,
                    pruned: Vec::new(),
                }),
            });
        };
        let start_after = match query.after {
            None => meta.compacted_through,
            Some(token) => {
                if let Some(reason) = self.check_cursor(tn, &meta, &token)? {
                    return Ok(LogRead::Gap(Gap {
                        requested: token,
                        oldest_available: self.edge_token(tn, &meta, Order::Ascending)?,
                        latest_available: self.edge_token(tn, &meta, Order::Descending)?,
                        reason,
                    }));
                }
                token.position
            }
        };
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut pruned = Vec::new();
        let mut has_more = false;
        let first = start_after.saturating_add(1);
        match &query.protocol {
            None => {
                let range = KeyRange {
                    start: Bound::Included(layout::log_key(tn, first)),
                    end: Bound::Included(layout::log_key(tn, meta.head)),
                };
                // Borrowed entries: no copy of each key and value before decoding.
                self.store
                    .scan_with(layout::LOG, range, Order::Ascending, &mut |k, v| {
                        if entries.len() == limit {
                            has_more = true;
                            return Ok(false);
                        }
                        let (entry, removed) = self.decode_entry(&meta, k, v)?;
                        if !removed.is_empty() {
                            pruned.push((entry.position(), removed));
                        }
                        entries.push(entry);
                        Ok(true)
                    })?;
            }
            Some(protocol) => {
                // A protocol never applied has no entries.
                if let Some(pn) = self.protocol_no(tn, protocol)? {
                    let range = KeyRange {
                        start: Bound::Included(Key::tn(tn).pn(pn).u64(first).into_vec()),
                        end: Bound::Included(Key::tn(tn).pn(pn).u64(meta.head).into_vec()),
                    };
                    for kv in self
                        .store
                        .scan(layout::LOG_BY_PROTOCOL, range, Order::Ascending)?
                    {
                        let (k, _) = kv?;
                        if entries.len() == limit {
                            has_more = true;
                            break;
                        }
                        let position =
                            u64::from_be_bytes(layout::key_tail::<8>(layout::LOG_BY_PROTOCOL, &k)?);
                        let log_key = layout::log_key(tn, position);
                        // The entry may have been pruned since the index was scanned.
                        if let Some(v) = self.store.get(layout::LOG, &log_key)? {
                            let (entry, removed) = self.decode_entry(&meta, &log_key, &v)?;
                            if !removed.is_empty() {
                                pruned.push((entry.position(), removed));
                            }
                            entries.push(entry);
                        }
                    }
                }
            }
        }
        let next = entries.last().map(|e| e.token).or(query.after);
        Ok(LogRead::Page(LogPage {
            entries,
            next,
            has_more,
            head: self.edge_token(tn, &meta, Order::Descending)?,
            pruned,
        }))
    }

    fn check_cursor(
        &self,
        tenant: Tn,
        meta: &LogMeta,
        token: &ProgressToken,
    ) -> Result<Option<GapReason>> {
        if token.stream_id != meta.stream_id {
            return Ok(Some(GapReason::StreamMismatch));
        }
        if token.epoch != meta.epoch {
            return Ok(Some(GapReason::EpochMismatch));
        }
        if token.position < meta.compacted_through {
            return Ok(Some(GapReason::TooOld));
        }
        if token.position > meta.head {
            return Ok(Some(GapReason::TooNew));
        }
        if token.position == 0 {
            return Ok(None);
        }
        let key = layout::log_key(tenant, token.position);
        if let Some(v) = self.store.get(layout::LOG, &key)? {
            let entry: StoredEntry = layout::dec_entry(&key, &v)?;
            if entry.cid != token.cid {
                return Ok(Some(GapReason::MessageMismatch));
            }
        }
        Ok(None)
    }

    /// How many entries of a tenant's log (of one protocol, if given) lie after
    /// `after` (for "pending outbound" counts). Scans the entries counted.
    pub fn count_log_after(
        &self,
        tenant: &TenantId,
        after: u64,
        protocol: Option<&ProtocolName>,
    ) -> Result<u64> {
        let Some((tn, meta)) = self.log_meta(tenant)? else {
            return Ok(0);
        };
        let first = after.saturating_add(1);
        let (partition, start, end) = match protocol {
            None => (
                layout::LOG,
                layout::log_key(tn, first),
                layout::log_key(tn, meta.head),
            ),
            Some(p) => {
                let Some(pn) = self.protocol_no(tn, p)? else {
                    return Ok(0);
                };
                (
                    layout::LOG_BY_PROTOCOL,
                    Key::tn(tn).pn(pn).u64(first).into_vec(),
                    Key::tn(tn).pn(pn).u64(meta.head).into_vec(),
                )
            }
        };
        let range = KeyRange {
            start: Bound::Included(start),
            end: Bound::Included(end),
        };
        let mut n = 0u64;
        for kv in self.store.scan(partition, range, Order::Ascending)? {
            kv?;
            n += 1;
        }
        Ok(n)
    }
}
