//! Message builders shared by the ledger's integration tests.
#![allow(dead_code, unreachable_pub)]

use sync_ledger::{Durability, Ledger, LedgerOutcome, LogQuery, LogRead};
use sync_types::*;

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn protocol(name: &str) -> ProtocolName {
    ProtocolName::new(name).unwrap()
}

pub fn at(wall_ms: u64) -> Hlc {
    Hlc {
        wall_ms,
        counter: 0,
        node: NodeId(1),
    }
}

pub fn author() -> PrincipalId {
    PrincipalId::new("did:example:author").unwrap()
}

pub fn configure(t: &TenantId, p: &ProtocolName, ts: u64) -> Message {
    let rule = |path: &str| TypeRule {
        path: ProtocolPath::new(path).unwrap(),
        data_bytes_max: None,
    };
    Message::Configure(Configure {
        tenant: t.clone(),
        protocol: p.clone(),
        definition: ProtocolDefinition::new(p, vec![rule("note"), rule("note/comment")], vec![])
            .unwrap(),
        timestamp: at(ts),
        author: author(),
    })
}

pub fn record(t: &TenantId, p: &ProtocolName, key: &str) -> RecordId {
    RecordId::from_natural_key(t, p, key.as_bytes())
}

/// A root `note` write with inline data.
pub fn write(
    t: &TenantId,
    p: &ProtocolName,
    key: &str,
    prev: Option<Cid>,
    ts: u64,
    data: &[u8],
) -> (Message, Option<Vec<u8>>) {
    let record_id = record(t, p, key);
    let m = Message::Write(Write {
        tenant: t.clone(),
        record_id,
        parent_id: None,
        protocol: p.clone(),
        path: ProtocolPath::new("note").unwrap(),
        context_id: ContextId::root(record_id),
        prev,
        timestamp: at(ts),
        author: author(),
        data: Some(DataRef::of(data)),
    });
    (m, Some(data.to_vec()))
}

/// A `note/comment` write under the root record `parent_key`.
pub fn comment(t: &TenantId, p: &ProtocolName, parent_key: &str, key: &str, ts: u64) -> Message {
    let parent = record(t, p, parent_key);
    let record_id = record(t, p, key);
    Message::Write(Write {
        tenant: t.clone(),
        record_id,
        parent_id: Some(parent),
        protocol: p.clone(),
        path: ProtocolPath::new("note/comment").unwrap(),
        context_id: ContextId::root(parent).child(record_id).unwrap(),
        prev: None,
        timestamp: at(ts),
        author: author(),
        data: None,
    })
}

pub fn delete(t: &TenantId, p: &ProtocolName, key: &str, prev: Option<Cid>, ts: u64) -> Message {
    Message::Delete(Delete {
        tenant: t.clone(),
        record_id: record(t, p, key),
        protocol: p.clone(),
        prev,
        timestamp: at(ts),
        author: author(),
    })
}

pub fn apply_one(ledger: &Ledger, m: Message, data: Option<Vec<u8>>) -> LedgerOutcome {
    let t = m.tenant().clone();
    let mut out = ledger.apply(&t, [(m, data)], Durability::SyncData).unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0).outcome
}

/// The whole log of a tenant, read in pages of `page`.
pub fn read_all(
    ledger: &Ledger,
    t: &TenantId,
    protocol: Option<&ProtocolName>,
    page: usize,
) -> Vec<sync_ledger::LogEntry> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let mut q = LogQuery::after(cursor, page);
        if let Some(p) = protocol {
            q = q.protocol(p.clone());
        }
        let LogRead::Page(page) = ledger.read_log(t, &q).unwrap() else {
            panic!("reading forward from own tokens never gaps")
        };
        out.extend(page.entries);
        cursor = page.next;
        if !page.has_more {
            return out;
        }
    }
}
