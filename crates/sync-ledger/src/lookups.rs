//! The ledger's lookups: messages, records, protocols and their definitions, the
//! ordered cid scans trees are rebuilt from, and the scoped index reads. Every lookup is
//! per tenant: a cid names a message of one tenant, and a lookup that crossed tenants
//! would be one missing check away from a leak.

use std::collections::VecDeque;

use sync_types::merge::RecordHead;
use sync_types::{
    Cid, Configure, ContextId, Message, ProtocolName, ProtocolPath, RecordId, TenantId,
};

use crate::error::{Error, Result};
use crate::layout::{self, Key, RecordRow, StoredEntry, Tn, dec};
use crate::ledger::{Ledger, RecordInfo, StoredMessage};
use crate::store::{KeyRange, Order, Partition, ScanIter, Store};

/// Scoped index entries whose cids are read from the log with one `get_many`.
pub(crate) const INDEX_RESOLVE_RUN: usize = 256;

impl Ledger {
    /// Whether the tenant stores the message.
    pub fn has_message(&self, tenant: &TenantId, cid: &Cid) -> Result<bool> {
        match self.tenant_no(tenant)? {
            Some(tn) => self.has_message_tn(tn, cid),
            None => Ok(false),
        }
    }

    /// [`has_message`](Self::has_message) of each of `cids`, in their order: one batched
    /// read ([`Store::get_many`](crate::Store::get_many), one round trip to a database).
    pub fn has_messages(&self, tenant: &TenantId, cids: &[Cid]) -> Result<Vec<bool>> {
        let Some(tn) = self.tenant_no(tenant)? else {
            return Ok(vec![false; cids.len()]);
        };
        let keys: Vec<Vec<u8>> = cids.iter().map(|c| layout::msg_key(tn, c)).collect();
        Ok(self
            .store
            .get_many(layout::MSG, &keys)?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    /// [`record_info`](Self::record_info) of each of `records`, in their order: one
    /// batched read.
    pub fn record_infos(
        &self,
        tenant: &TenantId,
        records: &[RecordId],
    ) -> Result<Vec<Option<RecordInfo>>> {
        let Some(tn) = self.tenant_no(tenant)? else {
            return Ok(vec![None; records.len()]);
        };
        let keys: Vec<Vec<u8>> = records.iter().map(|r| layout::record_key(tn, r)).collect();
        let values = self.store.get_many(layout::RECORDS, &keys)?;
        keys.iter()
            .zip(values)
            .map(|(key, v)| {
                v.map(|bytes| {
                    let r: RecordRow = dec(layout::RECORDS, key, &bytes)?;
                    Ok(RecordInfo {
                        head: r.head,
                        protocol: r.protocol,
                        path: r.path,
                        context: r.context,
                    })
                })
                .transpose()
            })
            .collect()
    }

    pub(crate) fn has_message_tn(&self, tn: Tn, cid: &Cid) -> Result<bool> {
        Ok(self
            .store
            .get(layout::MSG, &layout::msg_key(tn, cid))?
            .is_some())
    }

    /// A stored message with its inline data and position.
    ///
    /// Lookups are per tenant on purpose: a cid names a message of one tenant, and a
    /// lookup that crossed tenants would be one missing check away from a leak.
    pub fn get_message(&self, tenant: &TenantId, cid: &Cid) -> Result<Option<StoredMessage>> {
        match self.tenant_no(tenant)? {
            Some(tn) => self.get_message_tn(tn, cid),
            None => Ok(None),
        }
    }

    pub(crate) fn get_message_tn(&self, tn: Tn, cid: &Cid) -> Result<Option<StoredMessage>> {
        let key = layout::msg_key(tn, cid);
        let Some(bytes) = self.store.get(layout::MSG, &key)? else {
            return Ok(None);
        };
        let position: u64 = dec(layout::MSG, &key, &bytes)?;
        let log_key = layout::log_key(tn, position);
        let Some(bytes) = self.store.get(layout::LOG, &log_key)? else {
            return Err(Error::Inconsistent(format!(
                "message {cid} is indexed at position {position} but the log has no entry there"
            )));
        };
        let entry: StoredEntry = layout::dec_entry(&log_key, &bytes)?;
        if entry.cid != *cid {
            return Err(Error::Inconsistent(format!(
                "log position {position} holds {} instead of {cid}",
                entry.cid
            )));
        }
        Ok(Some(StoredMessage {
            cid: entry.cid,
            message: entry.message,
            data: entry.data,
            position,
        }))
    }

    pub(crate) fn record_row(&self, tn: Tn, id: &RecordId) -> Result<Option<RecordRow>> {
        let key = layout::record_key(tn, id);
        match self.store.get(layout::RECORDS, &key)? {
            Some(bytes) => Ok(Some(dec(layout::RECORDS, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn record_row_of(&self, tenant: &TenantId, id: &RecordId) -> Result<Option<RecordRow>> {
        match self.tenant_no(tenant)? {
            Some(tn) => self.record_row(tn, id),
            None => Ok(None),
        }
    }

    /// The retained versions of a record (its initial write and winner).
    pub fn record_head(&self, tenant: &TenantId, record: &RecordId) -> Result<Option<RecordHead>> {
        Ok(self.record_row_of(tenant, record)?.map(|r| r.head))
    }

    /// A record's head with its path and context.
    pub fn record_info(&self, tenant: &TenantId, record: &RecordId) -> Result<Option<RecordInfo>> {
        Ok(self.record_row_of(tenant, record)?.map(|r| RecordInfo {
            head: r.head,
            protocol: r.protocol,
            path: r.path,
            context: r.context,
        }))
    }

    /// Whether a `Configure` of the protocol is stored.
    pub fn has_protocol(&self, tenant: &TenantId, protocol: &ProtocolName) -> Result<bool> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(false);
        };
        let prefix = Key::tn(tn).pn(pn).into_vec();
        Ok(self
            .store
            .first(layout::CONFIGS, KeyRange::prefix(&prefix), Order::Ascending)?
            .is_some())
    }

    /// The current definition of a protocol: its newest `Configure` by
    /// `(timestamp, cid)`, with that message's cid.
    pub fn protocol_definition(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
    ) -> Result<Option<(Cid, Configure)>> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(None);
        };
        let prefix = Key::tn(tn).pn(pn).into_vec();
        let Some((key, _)) = self.store.first(
            layout::CONFIGS,
            KeyRange::prefix(&prefix),
            Order::Descending,
        )?
        else {
            return Ok(None);
        };
        let cid = Cid::from_bytes(layout::key_tail::<32>(layout::CONFIGS, &key)?);
        match self.get_message_tn(tn, &cid)? {
            Some(StoredMessage {
                message: Message::Configure(c),
                ..
            }) => Ok(Some((cid, c))),
            _ => Err(Error::Inconsistent(format!(
                "configure index names {cid}, which is not a stored configure"
            ))),
        }
    }

    /// The cids of every stored `Configure` of a protocol, oldest first by
    /// `(timestamp, cid)`.
    pub fn configures(&self, tenant: &TenantId, protocol: &ProtocolName) -> Result<Vec<Cid>> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(Vec::new());
        };
        let prefix = Key::tn(tn).pn(pn).into_vec();
        self.cid_scan(layout::CONFIGS, &prefix)?.collect()
    }

    /// Every stored message cid of the tenant, in ascending cid order (to rebuild a
    /// Merkle tree on open).
    pub fn cids(&self, tenant: &TenantId) -> Result<CidIter<'_>> {
        match self.tenant_no(tenant)? {
            Some(tn) => self.cid_scan(layout::MSG, &Key::tn(tn).into_vec()),
            None => Ok(CidIter::empty()),
        }
    }

    /// Every stored message cid of one protocol of the tenant, in **log order** (the
    /// per-protocol log index serves this and filtered log pages alike; sort the cids
    /// when an order by cid is needed).
    pub fn protocol_cids(&self, tenant: &TenantId, protocol: &ProtocolName) -> Result<CidIter<'_>> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(CidIter::empty());
        };
        self.value_cid_scan(layout::LOG_BY_PROTOCOL, tn, Key::tn(tn).pn(pn).into_vec())
    }

    /// The cids of stored writes and deletes whose record path equals `path` or lies
    /// below it (segment-wise), in log order per path.
    pub fn path_cids(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: &ProtocolPath,
    ) -> Result<Vec<Cid>> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(Vec::new());
        };
        let mut exact = Key::tn(tn).pn(pn).into_vec();
        exact.extend_from_slice(path.as_str().as_bytes());
        let mut below = exact.clone();
        exact.push(0);
        below.push(b'/');
        let mut out = Vec::new();
        for prefix in [exact, below] {
            for cid in self.value_cid_scan(layout::BY_PATH, tn, prefix)? {
                out.push(cid?);
            }
        }
        Ok(out)
    }

    /// The cids of stored writes and deletes whose record context equals `context` or
    /// lies below it: the retained versions of the context's own record, then its
    /// descendants in log order.
    pub fn context_cids(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        context: &ContextId,
    ) -> Result<Vec<Cid>> {
        let Some((tn, pn)) = self.names_of(tenant, protocol)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        // The record itself: its row names its versions; it belongs to this scope if
        // its context is this one and its messages are of this protocol.
        if let Some(row) = self.record_row(tn, &context.record())?
            && row.context.as_ref() == Some(context)
        {
            for cid in row.head.retained() {
                let stored = self.get_message_tn(tn, &cid)?.ok_or_else(|| {
                    Error::Inconsistent(format!("retained version {cid} is not stored"))
                })?;
                if stored.message.protocol() == protocol {
                    out.push(cid);
                }
            }
        }
        let mut k = Key::tn(tn).pn(pn);
        for r in context.chain() {
            k = k.bytes(r.as_bytes());
        }
        for cid in self.value_cid_scan(layout::BY_CONTEXT, tn, k.into_vec())? {
            out.push(cid?);
        }
        Ok(out)
    }

    /// The cids of the scoped index entries under `prefix` (`log_by_protocol`,
    /// `by_path`, `by_context`: keys ending with the message's log position), in key
    /// order. An entry of layout 5 and later has no value ([`layout::INDEX_VALUE`]): its
    /// cid is read from the log entry at its position, [`INDEX_RESOLVE_RUN`] entries per
    /// `get_many`. An older entry holds its cid. An entry whose log entry is gone (its
    /// message was pruned after the scan began) is left out, as a scan begun a moment
    /// later would leave it out.
    fn value_cid_scan(&self, partition: Partition, tn: Tn, prefix: Vec<u8>) -> Result<CidIter<'_>> {
        let scan = self
            .store
            .scan_prefix(partition, &prefix, Order::Ascending)?;
        Ok(CidIter {
            inner: Box::new(IndexCids {
                store: &*self.store,
                partition,
                tn,
                scan,
                ready: VecDeque::new(),
                done: false,
            }),
        })
    }

    fn cid_scan(&self, partition: Partition, prefix: &[u8]) -> Result<CidIter<'_>> {
        let plen = prefix.len();
        let iter = self
            .store
            .scan_prefix(partition, prefix, Order::Ascending)?;
        Ok(CidIter {
            inner: Box::new(iter.map(move |kv| {
                let (k, _) = kv?;
                if k.len() < plen + 32 {
                    return Err(Error::CorruptKey {
                        partition: partition.name(),
                        reason: "key too short for a cid",
                    });
                }
                Ok(Cid::from_bytes(layout::key_tail::<32>(partition, &k)?))
            })),
        })
    }
}

/// Stored cids in ascending order; each item is a `Result` because the scan reads
/// storage as it goes.
pub struct CidIter<'a> {
    inner: Box<dyn Iterator<Item = Result<Cid>> + 'a>,
}

impl CidIter<'_> {
    fn empty() -> Self {
        CidIter {
            inner: Box::new(std::iter::empty()),
        }
    }
}

impl Iterator for CidIter<'_> {
    type Item = Result<Cid>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl std::fmt::Debug for CidIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CidIter")
    }
}

/// The cids of a scoped index scan (see `Ledger::value_cid_scan`).
struct IndexCids<'a> {
    store: &'a dyn Store,
    partition: Partition,
    tn: Tn,
    scan: ScanIter<'a>,
    ready: VecDeque<Cid>,
    done: bool,
}

impl IndexCids<'_> {
    /// Reads the next run of index entries and queues their cids.
    fn fill(&mut self) -> Result<()> {
        // `None` for an entry whose cid is in the log at the next of `log_keys`.
        let mut slots: Vec<Option<Cid>> = Vec::with_capacity(INDEX_RESOLVE_RUN);
        let mut log_keys = Vec::new();
        while slots.len() < INDEX_RESOLVE_RUN {
            let Some(kv) = self.scan.next() else {
                self.done = true;
                break;
            };
            let (k, v) = kv?;
            if v == layout::INDEX_VALUE {
                let pos = u64::from_be_bytes(layout::key_tail::<8>(self.partition, &k)?);
                log_keys.push(layout::log_key(self.tn, pos));
                slots.push(None);
            } else {
                slots.push(Some(dec(self.partition, &k, &v)?));
            }
        }
        let found = if log_keys.is_empty() {
            Vec::new()
        } else {
            self.store.get_many(layout::LOG, &log_keys)?
        };
        if found.len() != log_keys.len() {
            return Err(Error::Inconsistent(format!(
                "get_many answered {} of {} keys",
                found.len(),
                log_keys.len()
            )));
        }
        let mut resolved = log_keys.iter().zip(found);
        for slot in slots {
            match slot {
                Some(cid) => self.ready.push_back(cid),
                None => {
                    if let Some((key, Some(value))) = resolved.next() {
                        self.ready.push_back(layout::entry_cid(key, &value)?);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Iterator for IndexCids<'_> {
    type Item = Result<Cid>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cid) = self.ready.pop_front() {
                return Some(Ok(cid));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
