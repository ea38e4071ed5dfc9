//! Reading a replica: a record's winning version (with its payload when resident), the
//! live records of a protocol, the log since a token, and where a message falls relative
//! to a scope.

use std::collections::BTreeMap;

use sync_ledger::{LogQuery, LogRead};
use sync_types::{
    Cid, Direction, Message, ProgressToken, ProtocolName, ProtocolPath, RecordId, RecordPlace,
    Scope, ScopeClass, TenantId,
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
        self.list_records(tenant, protocol, path, false)
    }

    /// [`list`](Self::list), with the deleted records too (their winning version is
    /// the delete: `deleted` is set, no data).
    pub fn list_with_tombstones(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: Option<&ProtocolPath>,
    ) -> Result<Vec<Record>> {
        self.list_records(tenant, protocol, path, true)
    }

    fn list_records(
        &self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: Option<&ProtocolPath>,
        tombstones: bool,
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
                && let Some(record) = self
                    .get_with_tombstone(tenant, &record_id)?
                    .filter(|r| tombstones || !r.deleted)
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

    /// Where `message`, travelling in `direction`, falls relative to `scope`: the scope
    /// gate ([`Scope::gate`]) with this replica's records, so a delete is classified
    /// through its record's initial write when the replica holds it (`Unknown` under a
    /// partial projection when it does not).
    pub fn classify(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        direction: Direction,
        message: &Message,
    ) -> Result<ScopeClass> {
        scope.gate(direction, message, &|record: &RecordId| {
            self.record_place(tenant, record)
        })
    }

    /// Where `record` lives, from its initial write; `None` when the replica does not
    /// hold it.
    pub(crate) fn record_place(
        &self,
        tenant: &TenantId,
        record: &RecordId,
    ) -> Result<Option<RecordPlace>> {
        let info = self.inner.ledger.record_info(tenant, record)?;
        Ok(info.and_then(|i| {
            i.path
                .zip(i.context)
                .map(|(path, context)| RecordPlace { path, context })
        }))
    }
}

impl Replica {
    /// Whether a `Configure` of `protocol` is stored for `tenant` (so a first write
    /// to it needs no configure).
    pub fn has_protocol(&self, tenant: &TenantId, protocol: &ProtocolName) -> Result<bool> {
        Ok(self.inner.ledger.has_protocol(tenant, protocol)?)
    }

    /// Whether the record's winning version is live (`Some(false)`: deleted; `None`:
    /// not held). One row read, no payload.
    pub fn is_live(&self, tenant: &TenantId, record_id: &RecordId) -> Result<Option<bool>> {
        Ok(self
            .inner
            .ledger
            .record_head(tenant, record_id)?
            .filter(|h| h.initial.is_some())
            .map(|h| !h.is_deleted()))
    }
}
