//! Hostile but well-framed write batches against a node, and the check that nothing
//! outside the sender's grant was stored. Shared by the proptest in
//! `tests/hostile_batch.rs` and the fuzz target `fuzz/fuzz_targets/node_write_batch.rs`,
//! which include this file, so a fuzz finding replays as a plain test.
//!
//! The input bytes are read as draws (an exhausted input reads zeros): first the grant
//! of the attacker's token, then up to [`MESSAGES_MAX`] messages whose every field that
//! names something (tenant, protocol, record, prev, parent, path, context, author, data
//! reference) is drawn from what the node holds, from near misses, or from nothing. The
//! batch goes through the whole node (`Node::write_batch`, then `ReplicaHandler`, then
//! the replica's apply) over the in-process transport, which encodes and decodes every
//! frame. [`run`] then checks, from the node's log, that every message the batch stored
//! lies in the grant, names the protocol of its record, and (for a delegate) has the
//! delegate as author.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use sync_engine::{Replica, ReplicaHandler};
use sync_ledger::LogRead;
use sync_transport::proto::{MessageData, WriteBatchRequest};
use sync_transport::{Claims, InProcessClient, Node, Remote, Role, ServerConfig, Token, TokenKey};
use sync_types::*;

/// Most messages in one drawn batch.
pub const MESSAGES_MAX: usize = 8;
/// The node's (fixed) wall clock.
const NOW_MS: u64 = 1_700_000_000_000;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn eve() -> TenantId {
    TenantId::new("did:example:eve").unwrap()
}
fn protocol(name: &str) -> ProtocolName {
    ProtocolName::new(format!("https://example.com/{name}")).unwrap()
}
fn principal(name: &str) -> PrincipalId {
    PrincipalId::new(format!("did:example:{name}")).unwrap()
}
fn path(p: &str) -> ProtocolPath {
    ProtocolPath::new(p).unwrap()
}

/// Reads draws from the input; zeros once it is exhausted.
struct Draw<'a>(&'a [u8]);

impl Draw<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

/// The node before the attack: notes (with comments) and evil protocols, notes records
/// with a comment under the first, and an evil record.
struct Setup {
    node: Replica,
    records: Vec<RecordId>,
    head: u64,
}

fn setup() -> Setup {
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let node = Replica::builder()
        .node_id(NodeId(100))
        .seed(100)
        .clock(clock)
        .in_memory()
        .unwrap();
    let t = tenant();
    let alice = principal("alice");
    let types = vec![
        TypeRule {
            path: path("note"),
            data_bytes_max: Some(64),
        },
        TypeRule {
            path: path("note/comment"),
            data_bytes_max: None,
        },
    ];
    for p in ["notes", "evil"] {
        node.configure(&t, &protocol(p), types.clone(), vec![], &alice)
            .unwrap();
    }
    let mut records = Vec::new();
    for key in ["n0", "n1"] {
        let r = node
            .put(
                &t,
                &protocol("notes"),
                &path("note"),
                key.as_bytes(),
                vec![1],
                &alice,
            )
            .unwrap();
        records.push(r.record_id);
    }
    let comment = node
        .write(
            &t,
            sync_engine::WriteRequest {
                protocol: protocol("notes"),
                path: path("note/comment"),
                key: sync_engine::replica::RecordKey::Natural(b"c0".to_vec()),
                parent: Some(records[0]),
                data: Some(vec![2]),
                author: alice.clone(),
            },
        )
        .unwrap();
    records.push(comment.record_id);
    let evil = node
        .put(
            &t,
            &protocol("evil"),
            &path("note"),
            b"e0",
            vec![3],
            &principal("mallory"),
        )
        .unwrap();
    records.push(evil.record_id);
    let head = node.ledger().log_head(&t).unwrap().unwrap().position;
    Setup {
        node,
        records,
        head,
    }
}

fn grant(d: &mut Draw<'_>, records: &[RecordId]) -> Claims {
    let notes_thread = Scope::projection(vec![ProjectionEntry {
        protocol: protocol("notes"),
        path_prefixes: vec![],
        context_prefixes: vec![ContextId::root(records[1])],
    }])
    .unwrap();
    let (who, role, scope, actions) = match d.u8() % 6 {
        0 => (
            "mallory",
            Role::Delegate,
            Scope::protocols(vec![protocol("evil")]).unwrap(),
            Actions::ALL,
        ),
        1 => (
            "mallory",
            Role::Delegate,
            Scope::projection(vec![ProjectionEntry::whole(protocol("evil"))]).unwrap(),
            Actions::ALL,
        ),
        2 => (
            "bob",
            Role::Delegate,
            Scope::protocols(vec![protocol("notes")]).unwrap(),
            Actions::ALL,
        ),
        3 => ("bob", Role::Delegate, notes_thread, Actions::ALL),
        4 => (
            "alice",
            Role::Owner,
            Scope::Full,
            Actions::READ.union(Actions::SYNC),
        ),
        _ => ("alice", Role::Owner, Scope::Full, Actions::ALL),
    };
    Claims {
        tenant: tenant(),
        principal: principal(who),
        role,
        scope,
        actions,
        expires_at_ms: u64::MAX,
        grant_id: GrantId::new("fuzz").unwrap(),
    }
}

/// One drawn message; every naming field is drawn on its own.
fn message(d: &mut Draw<'_>, node: &Replica, records: &[RecordId]) -> MessageData {
    let tenant = if d.u8().is_multiple_of(8) {
        eve()
    } else {
        tenant()
    };
    let proto = d.pick(&["notes", "evil", "other"]);
    let proto = protocol(proto);
    let author = principal(d.pick(&["alice", "mallory", "bob"]));
    let timestamp = Hlc {
        wall_ms: NOW_MS - u64::from(d.u8()) * 1000,
        counter: u32::from(d.u8()),
        node: NodeId(7),
    };
    let fresh = RecordId::from_natural_key(&tenant, &proto, &[d.u8()]);
    let mut pool = records.to_vec();
    pool.push(fresh);
    let record = d.pick(&pool);
    let heads: Vec<Option<Cid>> = records
        .iter()
        .map(|r| {
            node.ledger()
                .record_head(&self::tenant(), r)
                .ok()
                .flatten()
                .map(|h| h.winner.cid)
        })
        .collect();
    let mut prevs = vec![None];
    prevs.extend(heads);
    let prev = d.pick(&prevs);
    let kind = d.u8() % 4;
    let message = match kind {
        0 => {
            let limit = match d.u8() % 3 {
                0 => None,
                n => Some(u64::from(n) * 16),
            };
            let types = vec![
                TypeRule {
                    path: path("note"),
                    data_bytes_max: limit,
                },
                TypeRule {
                    path: path("note/comment"),
                    data_bytes_max: None,
                },
            ];
            Message::Configure(Configure {
                tenant,
                protocol: proto.clone(),
                definition: ProtocolDefinition::new(&proto, types, vec![]).unwrap(),
                timestamp,
                author,
            })
        }
        1 => Message::Delete(Delete {
            tenant,
            record_id: record,
            protocol: proto,
            prev,
            timestamp,
            author,
        }),
        _ => {
            let parent = if d.u8().is_multiple_of(2) {
                None
            } else {
                Some(d.pick(records))
            };
            let p = path(d.pick(&["note", "note/comment", "elsewhere"]));
            let context = match (parent, d.u8() % 3) {
                (Some(parent), 0 | 1) => node
                    .ledger()
                    .record_info(&self::tenant(), &parent)
                    .ok()
                    .flatten()
                    .and_then(|i| i.context)
                    .and_then(|c| c.child(record).ok())
                    .unwrap_or_else(|| ContextId::root(record)),
                (_, 2) => ContextId::root(d.pick(records)),
                _ => ContextId::root(record),
            };
            let data = vec![d.u8(); usize::from(d.u8() % 100)];
            let data_ref = if d.u8().is_multiple_of(8) {
                DataRef::of(b"something else")
            } else {
                DataRef::of(&data)
            };
            let message = Message::Write(Write {
                tenant,
                record_id: record,
                parent_id: parent,
                protocol: proto,
                path: p,
                context_id: context,
                prev,
                timestamp,
                author,
                data: Some(data_ref),
            });
            return MessageData {
                message,
                data: Some(data),
            };
        }
    };
    MessageData {
        message,
        data: None,
    }
}

/// Sends the batch drawn from `input` to a fresh node; `Err` names a message the node
/// stored although the grant does not allow it.
pub fn run(input: &[u8]) -> Result<(), String> {
    let Setup {
        node,
        records,
        head,
    } = setup();
    let mut d = Draw(input);
    let claims = grant(&mut d, &records);
    let count = 1 + usize::from(d.u8()) % MESSAGES_MAX;
    let messages: Vec<MessageData> = (0..count)
        .map(|_| message(&mut d, &node, &records))
        .collect();
    let key = TokenKey::derive(b"hostile batches");
    let mut config = ServerConfig::new(key.clone());
    config.clock = Arc::new(ManualClock::new(NOW_MS));
    let server = Node::new(Arc::new(ReplicaHandler::new(node.clone())), config);
    let client = InProcessClient::new(server, &Token::issue(&key, claims.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = WriteBatchRequest {
        tenant: tenant(),
        messages,
    };
    let answered = runtime.block_on(client.write_batch(request));
    if let Ok(reply) = &answered
        && reply.outcomes.len() != count
    {
        return Err(format!(
            "{} outcomes for {count} messages",
            reply.outcomes.len()
        ));
    }
    check_stored(&node, &claims, head)
}

/// Every message stored after position `head` is in the grant, names its record's
/// protocol, and is the delegate's own.
fn check_stored(node: &Replica, claims: &Claims, head: u64) -> Result<(), String> {
    if node
        .ledger()
        .log_head(&eve())
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err("a message of another tenant was stored".into());
    }
    let t = tenant();
    let LogRead::Page(page) = node
        .changes_since(&t, None, 1000)
        .map_err(|e| e.to_string())?
    else {
        return Err("the node's log has a gap".into());
    };
    let writes = claims.actions.contains(Actions::WRITE);
    for entry in page.entries.iter().filter(|e| e.token.position > head) {
        let m = &entry.message;
        if !writes {
            return Err(format!("{} stored without the write action", entry.cid()));
        }
        if claims.role == Role::Delegate && *m.author() != claims.principal {
            return Err(format!(
                "{} stored under another author {}",
                entry.cid(),
                m.author()
            ));
        }
        let class = match m {
            Message::Configure(c) => {
                if claims.scope.covers_protocol(&c.protocol) {
                    ScopeClass::InScope
                } else {
                    ScopeClass::OutOfScope
                }
            }
            Message::Write(_) | Message::Delete(_) => {
                let record = m.record_id().expect("versions name a record");
                let info = node
                    .ledger()
                    .record_info(&t, &record)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{} stored without its record", entry.cid()))?;
                if info.protocol != *m.protocol() {
                    return Err(format!(
                        "{} names {} but its record belongs to {}",
                        entry.cid(),
                        m.protocol(),
                        info.protocol
                    ));
                }
                let place = info.path.as_ref().zip(info.context.as_ref());
                claims.scope.classify(&info.protocol, place)
            }
        };
        if class != ScopeClass::InScope {
            return Err(format!(
                "{} stored outside the grant ({class:?})",
                entry.cid()
            ));
        }
    }
    Ok(())
}
