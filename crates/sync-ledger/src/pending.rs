//! The state of one apply between its reads and its commit: the batch being built, the
//! record rows and retained versions read up front, and the numbers it interns. Every
//! read goes through the apply's [`WriteTxn`], so on a shared store it sees what the
//! tenant lock orders.

use std::borrow::Cow;
use std::collections::HashMap;

use sync_types::merge::{MergeDecision, Version, VersionKind, merge_one};
use sync_types::{Cid, Message, ProgressToken, ProtocolName, RecordId};

use crate::error::{Error, Result};
use crate::layout::{self, EntryRef, LogMeta, Pn, RecordRow, StoredEntry, Tn, dec, enc};
use crate::ledger::{Ledger, LedgerOutcome, protocol_mismatch};
use crate::store::{Batch, WriteTxn};

/// A stored version as a pruning needs it: its position, its message (borrowed from the
/// apply's input when this batch stored it), and the ids its entry recorded as pruned
/// (carried on when it is pruned in turn).
pub(crate) type Stored<'a> = (u64, Cow<'a, Message>, Vec<Cid>);

/// A message the apply stores: its cid (hashed once, by [`HashedMessage::new`]), the
/// message and its inline payload, borrowed from the caller.
///
/// [`HashedMessage::new`]: crate::HashedMessage::new
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) cid: Cid,
    pub(crate) message: &'a Message,
    pub(crate) data: Option<&'a [u8]>,
}

pub(crate) struct Pending<'a> {
    pub(crate) ledger: &'a Ledger,
    /// Every read of the apply goes through it, so on a shared store it sees what the
    /// tenant lock orders (and holds one connection, not two).
    pub(crate) txn: Box<dyn WriteTxn + 'a>,
    pub(crate) tn: Tn,
    /// Whether this batch interns the tenant (nothing of it is stored yet).
    pub(crate) tenant_new: bool,
    pub(crate) batch: Batch,
    /// Record rows read from the store before the merge, in key order (see
    /// [`Ledger::apply`]); `None` for records not stored yet. Taken on first use.
    pub(crate) loaded: HashMap<RecordId, Option<RecordRow>>,
    /// Retained versions of the loaded records, read up front on a shared store so a
    /// pruning costs no round trip: cid -> (position, message).
    pub(crate) retained: HashMap<Cid, Stored<'a>>,
    pub(crate) records: HashMap<RecordId, RecordRow>,
    /// Messages stored by this batch: cid -> (position, message).
    pub(crate) added: HashMap<Cid, Stored<'a>>,
    pub(crate) new_protocols: HashMap<ProtocolName, Pn>,
    pub(crate) next_protocol: Option<u32>,
}

impl<'a> Pending<'a> {
    fn record(&mut self, id: &RecordId) -> Result<Option<RecordRow>> {
        if let Some(row) = self.records.get(id) {
            return Ok(Some(row.clone()));
        }
        if self.tenant_new {
            return Ok(None);
        }
        match self.loaded.remove(id) {
            Some(row) => Ok(row),
            None => {
                let key = layout::record_key(self.tn, id);
                match self.txn.get(layout::RECORDS, &key)? {
                    Some(bytes) => Ok(Some(dec(layout::RECORDS, &key, &bytes)?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// Whether a configure is stored (configures are never pruned, so the batch's own
    /// additions are exactly `added`).
    pub(crate) fn has_message(&mut self, cid: &Cid) -> Result<bool> {
        if self.added.contains_key(cid) {
            return Ok(true);
        }
        if self.tenant_new {
            return Ok(false);
        }
        Ok(self
            .txn
            .get(layout::MSG, &layout::msg_key(self.tn, cid))?
            .is_some())
    }

    /// The protocol's number, interning it in this batch when it is new.
    fn protocol(&mut self, p: &ProtocolName) -> Result<Pn> {
        if let Some(n) = self.new_protocols.get(p) {
            return Ok(*n);
        }
        if let Some(n) = self.ledger.cached_protocol(self.tn, p) {
            return Ok(n);
        }
        if !self.tenant_new {
            let key = layout::name_protocol_key(self.tn, p);
            if let Some(v) = self.txn.get(layout::NAMES, &key)? {
                let n = Pn(dec(layout::NAMES, &key, &v)?);
                self.ledger.cache_protocol(self.tn, p, n);
                return Ok(n);
            }
        }
        let next = match self.next_protocol {
            Some(n) => n,
            None if self.tenant_new => 0,
            None => counter(&mut *self.txn, &layout::next_protocol_key(self.tn))?,
        };
        let after = next.checked_add(1).ok_or(Error::LimitExceeded {
            what: "protocols of a tenant",
            len: usize::MAX,
            max: u32::MAX as usize,
        })?;
        self.next_protocol = Some(after);
        let n = Pn(next);
        self.batch.put(
            layout::NAMES,
            layout::name_protocol_key(self.tn, p),
            enc(&n.0),
        );
        self.batch.put(
            layout::NAMES,
            layout::next_protocol_key(self.tn),
            enc(&after),
        );
        self.new_protocols.insert(p.clone(), n);
        Ok(n)
    }

    pub(crate) fn store_message(
        &mut self,
        meta: &mut LogMeta,
        entry: Entry<'a>,
        pruned: Vec<Cid>,
        row: Option<&RecordRow>,
    ) -> Result<ProgressToken> {
        let pn = self.protocol(entry.message.protocol())?;
        // Positions are never reused; a head at the last one (only a damaged store has
        // one) refuses appends rather than wrapping to 0.
        meta.head = meta.head.checked_add(1).ok_or_else(|| {
            Error::Inconsistent("the log's head is at the last position there is".into())
        })?;
        let pos = meta.head;
        for (p, k, v) in layout::index_entries(self.tn, pn, pos, &entry.cid, entry.message, row) {
            self.batch.put(p, k, v);
        }
        self.batch.put(
            layout::LOG,
            layout::log_key(self.tn, pos),
            layout::enc_entry_ref(&EntryRef {
                cid: &entry.cid,
                message: entry.message,
                data: entry.data,
                pruned: &pruned,
            }),
        );
        let token = ProgressToken {
            stream_id: meta.stream_id,
            epoch: meta.epoch,
            position: pos,
            cid: entry.cid,
        };
        self.added
            .insert(entry.cid, (pos, Cow::Borrowed(entry.message), pruned));
        Ok(token)
    }

    /// Deletes a pruned version with its index and log entries; returns the ids its
    /// entry had recorded as pruned, which the pruning entry carries on.
    fn prune(&mut self, cid: &Cid, row: &RecordRow) -> Result<Vec<Cid>> {
        let found = match self.added.remove(cid) {
            Some(found) => Some(found),
            None => match self.retained.remove(cid) {
                Some(found) => Some(found),
                None => {
                    let mut one = read_messages(&mut *self.txn, self.tn, &[*cid])?;
                    one.remove(cid)
                }
            },
        };
        let (pos, message, inherited) = found
            .ok_or_else(|| Error::Inconsistent(format!("retained version {cid} is not stored")))?;
        let pn = self.protocol(message.protocol())?;
        for (p, k, _) in layout::index_entries(self.tn, pn, pos, cid, &message, Some(row)) {
            self.batch.delete(p, k);
        }
        self.batch
            .delete(layout::LOG, layout::log_key(self.tn, pos));
        Ok(inherited)
    }
}

impl Ledger {
    pub(crate) fn merge_entry<'a>(
        meta: &mut LogMeta,
        pending: &mut Pending<'a>,
        entry: Entry<'a>,
    ) -> Result<LedgerOutcome> {
        let (record_id, prev, kind, write) = match entry.message {
            Message::Write(w) => (w.record_id, w.prev, VersionKind::Write, Some(w)),
            Message::Delete(d) => (d.record_id, d.prev, VersionKind::Delete, None),
            Message::Configure(_) => unreachable!("configure is handled by the caller"),
        };
        let version = Version {
            cid: entry.cid,
            timestamp: entry.message.timestamp(),
            prev,
            kind,
        };
        let row = pending.record(&record_id)?;
        if let Some(row) = &row
            && row.protocol != *entry.message.protocol()
        {
            return Ok(LedgerOutcome::Refused {
                reason: protocol_mismatch(&record_id, &row.protocol, entry.message.protocol()),
            });
        }
        Ok(match merge_one(row.as_ref().map(|r| &r.head), &version) {
            MergeDecision::Duplicate => LedgerOutcome::Duplicate,
            MergeDecision::Superseded { conflict } => LedgerOutcome::Superseded { conflict },
            MergeDecision::Accepted {
                head,
                pruned,
                conflict,
            } => {
                let mut new_row = row.unwrap_or(RecordRow {
                    head,
                    protocol: entry.message.protocol().clone(),
                    path: None,
                    context: None,
                });
                new_row.head = head;
                if let Some(w) = write
                    && new_row.path.is_none()
                {
                    new_row.path = Some(w.path.clone());
                    new_row.context = Some(w.context_id.clone());
                }
                // What a follower of the log removes from its current set when it reads
                // this entry: the versions pruned now, then what their deleted entries
                // had recorded, newest first and bounded.
                let mut removed = pruned.clone();
                let mut inherited = Vec::new();
                for cid in &pruned {
                    inherited.extend(pending.prune(cid, &new_row)?);
                }
                for cid in inherited {
                    if removed.len() == layout::PRUNED_IDS_MAX {
                        break;
                    }
                    if !removed.contains(&cid) {
                        removed.push(cid);
                    }
                }
                let token = pending.store_message(meta, entry, removed, Some(&new_row))?;
                pending.records.insert(record_id, new_row);
                LedgerOutcome::Applied {
                    token,
                    pruned,
                    conflict,
                }
            }
        })
    }
}

/// A stored allocation counter (0 when absent), read in `txn`.
pub(crate) fn counter(txn: &mut dyn WriteTxn, key: &[u8]) -> Result<u32> {
    match txn.get(layout::NAMES, key)? {
        Some(v) => dec(layout::NAMES, key, &v),
        None => Ok(0),
    }
}

/// The stored messages among `cids` with their positions, in two batched reads (their
/// positions, then their log entries).
pub(crate) fn read_messages(
    txn: &mut dyn WriteTxn,
    tn: Tn,
    cids: &[Cid],
) -> Result<HashMap<Cid, Stored<'static>>> {
    let keys: Vec<Vec<u8>> = cids.iter().map(|c| layout::msg_key(tn, c)).collect();
    let positions = txn.get_many(layout::MSG, &keys)?;
    let mut found = Vec::with_capacity(cids.len());
    for ((cid, key), pos) in cids.iter().zip(&keys).zip(positions) {
        if let Some(bytes) = pos {
            let pos: u64 = dec(layout::MSG, key, &bytes)?;
            found.push((*cid, pos));
        }
    }
    let log_keys: Vec<Vec<u8>> = found.iter().map(|(_, p)| layout::log_key(tn, *p)).collect();
    let entries = txn.get_many(layout::LOG, &log_keys)?;
    let mut out = HashMap::with_capacity(found.len());
    for (((cid, pos), key), entry) in found.into_iter().zip(&log_keys).zip(entries) {
        let Some(bytes) = entry else {
            return Err(Error::Inconsistent(format!(
                "message {cid} is indexed at position {pos} but the log has no entry there"
            )));
        };
        let entry: StoredEntry = layout::dec_entry(key, &bytes)?;
        if entry.cid != cid {
            return Err(Error::Inconsistent(format!(
                "log position {pos} holds {} instead of {cid}",
                entry.cid
            )));
        }
        out.insert(cid, (pos, Cow::Owned(entry.message), entry.pruned));
    }
    Ok(out)
}
