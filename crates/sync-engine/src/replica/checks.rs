//! The apply pipeline's checks: what a message must satisfy on its own
//! ([`check_alone`]) and against committed state ([`Replica::check_against_store`]:
//! hard dependencies, protocol rules, and a record's fixed protocol, path and context).

use std::collections::HashMap;
use std::sync::Arc;

use sync_ledger::{Ledger, RecordInfo, RecordRows, protocol_mismatch};
use sync_types::{
    ContextId, DataRef, Dependency, INLINE_DATA_BYTES_MAX, Message, ProtocolDefinition,
    ProtocolName, RecordId, TenantId,
};

use super::Replica;
use crate::error::Result;

impl Replica {
    /// Checks a message's hard dependencies and protocol rules against committed state.
    pub(super) fn check_against_store(
        &self,
        tenant: &TenantId,
        message: &Message,
        definitions: &mut Definitions,
    ) -> Result<Check> {
        let ledger = &self.inner.ledger;
        let mut missing = Vec::new();
        match message {
            Message::Configure(c) => {
                for used in &c.definition.uses {
                    if !ledger.has_protocol(tenant, used)? {
                        missing.push(Dependency::Protocol(used.clone()));
                    }
                }
            }
            Message::Write(w) => {
                match definitions.get(ledger, tenant, &w.protocol)? {
                    None => missing.push(Dependency::Protocol(w.protocol.clone())),
                    Some(definition) => {
                        let Some(rule) = definition.rule(&w.path) else {
                            return Ok(Check::Invalid(format!(
                                "path {} is not declared by protocol {}",
                                w.path, w.protocol
                            )));
                        };
                        if let (Some(max), Some(data)) = (rule.data_bytes_max, w.data)
                            && data.size > max
                        {
                            return Ok(Check::Invalid(format!(
                                "payload of {} bytes exceeds the type's limit of {max}",
                                data.size
                            )));
                        }
                    }
                }
                if let Some(parent) = w.parent_id {
                    match definitions.record_info(ledger, tenant, &parent)? {
                        Some(info) if info.protocol != w.protocol => {
                            return Ok(Check::Invalid(format!(
                                "parent record {parent} belongs to protocol {}, not {}",
                                info.protocol, w.protocol
                            )));
                        }
                        Some(info) if info.head.initial.is_some() => {
                            let chain = w.context_id.chain();
                            if info.path != w.path.parent()
                                || info.context.as_ref().map(ContextId::chain)
                                    != Some(&chain[..chain.len() - 1])
                            {
                                return Ok(Check::Invalid(
                                    "the parent's path or context does not match".into(),
                                ));
                            }
                        }
                        _ => missing.push(Dependency::Record(parent)),
                    }
                }
                let info = definitions.record_info(ledger, tenant, &w.record_id)?;
                if let Some(info) = &info
                    && info.protocol != w.protocol
                {
                    return Ok(Check::Invalid(protocol_mismatch(
                        &w.record_id,
                        &info.protocol,
                        &w.protocol,
                    )));
                }
                match info.filter(|info| info.head.initial.is_some()) {
                    Some(info)
                        if info.path.as_ref() != Some(&w.path)
                            || info.context.as_ref() != Some(&w.context_id) =>
                    {
                        return Ok(Check::Invalid(
                            "a version cannot move its record to another path or context".into(),
                        ));
                    }
                    Some(_) => {}
                    None if w.prev.is_some() => missing.push(Dependency::Record(w.record_id)),
                    None => {}
                }
            }
            Message::Delete(d) => {
                if !ledger.has_protocol(tenant, &d.protocol)? {
                    missing.push(Dependency::Protocol(d.protocol.clone()));
                }
                match definitions.record_info(ledger, tenant, &d.record_id)? {
                    Some(info) if info.protocol != d.protocol => {
                        return Ok(Check::Invalid(protocol_mismatch(
                            &d.record_id,
                            &info.protocol,
                            &d.protocol,
                        )));
                    }
                    Some(info) if info.head.initial.is_some() => {}
                    _ => missing.push(Dependency::Record(d.record_id)),
                }
            }
        }
        Ok(if missing.is_empty() {
            Check::Ready
        } else {
            Check::Missing(missing)
        })
    }
}

/// Protocol definitions read during one apply call: a batch of writes of one protocol
/// reads its definition once. Forgotten when a configure of the protocol is committed.
#[derive(Default)]
pub(super) struct Definitions(
    HashMap<ProtocolName, Option<Arc<ProtocolDefinition>>>,
    /// Record rows read ahead for a batch ([`set_records`](Self::set_records)), valid
    /// until they are handed to the commit ([`take_records`](Self::take_records)).
    Option<RecordRows>,
);

impl Definitions {
    /// Rows read ahead in one batched read (one round trip to a shared store instead of
    /// one per message), for the checks before the next commit.
    pub(super) fn set_records(&mut self, rows: RecordRows) {
        self.1 = Some(rows);
    }

    /// The rows read ahead, for the commit: after it they are stale, and the checks read
    /// the committed rows.
    pub(super) fn take_records(&mut self) -> Option<RecordRows> {
        self.1.take()
    }

    /// A record's row: read ahead, or read now.
    fn record_info(
        &self,
        ledger: &Ledger,
        tenant: &TenantId,
        record: &RecordId,
    ) -> Result<Option<RecordInfo>> {
        match self.1.as_ref().and_then(|rows| rows.info(record)) {
            Some(found) => Ok(found),
            None => Ok(ledger.record_info(tenant, record)?),
        }
    }

    pub(super) fn get(
        &mut self,
        ledger: &Ledger,
        tenant: &TenantId,
        protocol: &ProtocolName,
    ) -> Result<Option<Arc<ProtocolDefinition>>> {
        if let Some(found) = self.0.get(protocol) {
            return Ok(found.clone());
        }
        let found = ledger
            .protocol_definition(tenant, protocol)?
            .map(|(_, c)| Arc::new(c.definition));
        self.0.insert(protocol.clone(), found.clone());
        Ok(found)
    }

    pub(super) fn forget(&mut self, protocol: &ProtocolName) {
        self.0.remove(protocol);
    }
}

pub(super) enum Check {
    Ready,
    Missing(Vec<Dependency>),
    Invalid(String),
}

/// Checks what a message must satisfy on its own.
pub(super) fn check_alone(
    tenant: &TenantId,
    message: &Message,
    data: Option<&[u8]>,
) -> std::result::Result<(), String> {
    if message.tenant() != tenant {
        return Err(format!(
            "message of tenant {} sent to tenant {tenant}",
            message.tenant()
        ));
    }
    message.validate().map_err(|e| e.to_string())?;
    if let Some(data) = data {
        let Message::Write(w) = message else {
            return Err("only writes carry data".into());
        };
        if data.len() as u64 > INLINE_DATA_BYTES_MAX {
            return Err(format!(
                "inline data of {} bytes exceeds {INLINE_DATA_BYTES_MAX}",
                data.len()
            ));
        }
        if w.data != Some(DataRef::of(data)) {
            return Err("inline data does not match the message's data reference".into());
        }
    }
    Ok(())
}
