//! Reading a replica: a record's winning version (with its payload when resident), the
//! live records of a protocol, the log since a token, and where a message falls relative
//! to a scope.

use std::collections::BTreeMap;

use sync_ledger::{LogQuery, LogRead};
use sync_types::{
    Cid, Message, ProgressToken, ProtocolName, ProtocolPath, RecordId, Scope, ScopeClass, TenantId,
};

use super::{Record, Replica};
use crate::error::Result;

impl Replica {
    /// The record's winning version; `None` when absent or deleted.
    pub fn get(&self, tenant: &TenantId, record_id: &RecordId) -> Result<Option<Record>> {
        Ok(self
            .get_with_tombstone(tenant, record_id)?
            .filter(|r| !r.deleted))
    }

    /// The record's winning version, including a delete.
    pub fn get_with_tombstone(
        &self,
        tenant: &TenantId,
        record_id: &RecordId,
    ) -> Result<Option<Record>> {
        let ledger = &self.inner.ledger;
        let Some(info) = ledger.record_info(tenant, record_id)? else {
            return Ok(None);
        };
        let Some(winner) = ledger.get_message(tenant, &info.head.winner.cid)? else {
            return Ok(None);
        };
        let (Some(path), Some(context_id)) = (info.path, info.context) else {
            return Ok(None);
        };
        let (author, data_ref, deleted, protocol) = match &winner.message {
            Message::Write(w) => (w.author.clone(), w.data, false, w.protocol.clone()),
            Message::Delete(d) => (d.author.clone(), None, true, d.protocol.clone()),
            Message::Configure(_) => return Ok(None),
        };
        let residency = crate::blob::residency_of(ledger, deleted, data_ref.as_ref())?;
        let data = match (winner.data, data_ref) {
            (Some(d), _) => Some(d),
            (None, Some(r))
                if residency == crate::blob::Residency::Resident
                    && r.size <= crate::blob::RECORD_DATA_BYTES_MAX =>
            {
                Some(ledger.blobs().read(&r.data_cid)?)
            }
            _ => None,
        };
        Ok(Some(Record {
            record_id: *record_id,
            protocol,
            path,
            context_id,
            cid: winner.cid,
            initial: info.head.initial.map(|v| v.cid),
            timestamp: winner.message.timestamp(),
            author,
            deleted,
            data_ref,
            data,
            residency,
        }))
    }

    /// The record of a natural key; `None` when absent or deleted.
    pub fn get_by_key(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        key: &[u8],
    ) -> Result<Option<Record>> {
        self.get(tenant, &RecordId::from_natural_key(tenant, protocol, key))
    }

    /// The live records of a protocol, optionally only at or below `path`, ordered by
    /// record id.
    pub fn list(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: Option<&ProtocolPath>,
    ) -> Result<Vec<Record>> {
        let ledger = &self.inner.ledger;
        let cids: Vec<Cid> = match path {
            Some(path) => ledger.path_cids(tenant, protocol, path)?,
            None => ledger
                .protocol_cids(tenant, protocol)?
                .collect::<std::result::Result<_, _>>()?,
        };
        let mut records = BTreeMap::new();
        for cid in cids {
            let Some(stored) = ledger.get_message(tenant, &cid)? else {
                continue;
            };
            let Some(record_id) = stored.message.record_id() else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = records.entry(record_id)
                && let Some(record) = self.get(tenant, &record_id)?
            {
                slot.insert(record);
            }
        }
        Ok(records.into_values().collect())
    }

    /// A page of the tenant's log after `after` (changes since a token).
    pub fn changes_since(
        &self,
        tenant: &TenantId,
        after: Option<ProgressToken>,
        limit: usize,
    ) -> Result<LogRead> {
        Ok(self
            .inner
            .ledger
            .read_log(tenant, &LogQuery::after(after, limit))?)
    }

    /// Where a message falls relative to `scope`. A projection carries the configures of
    /// its protocols (records need them); a delete is classified by its record's path and
    /// context, from the record's initial write, and is `Unknown` when that is not held.
    pub fn classify(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        message: &Message,
    ) -> Result<ScopeClass> {
        if !matches!(scope, Scope::Projection(_)) {
            return Ok(scope.classify(message.protocol(), None));
        }
        Ok(match message {
            Message::Configure(c) => {
                if scope
                    .protocol_list()
                    .is_some_and(|ps| ps.contains(&&c.protocol))
                {
                    ScopeClass::InScope
                } else {
                    ScopeClass::OutOfScope
                }
            }
            Message::Write(w) => scope.classify(&w.protocol, Some((&w.path, &w.context_id))),
            Message::Delete(d) => {
                let info = self.inner.ledger.record_info(tenant, &d.record_id)?;
                let record = info
                    .as_ref()
                    .and_then(|i| i.path.as_ref().zip(i.context.as_ref()));
                scope.classify(&d.protocol, record)
            }
        })
    }
}
