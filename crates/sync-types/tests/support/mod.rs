//! Proptest strategies for sync-types values, shared by the property tests.

use proptest::collection::vec;
use proptest::prelude::*;
use sync_types::*;

pub(crate) fn tenant() -> impl Strategy<Value = TenantId> {
    "[a-z0-9:._-]{1,24}".prop_map(|s| TenantId::new(s).unwrap())
}

pub(crate) fn protocol() -> impl Strategy<Value = ProtocolName> {
    "[a-z]{1,3}".prop_map(|s| ProtocolName::new(format!("https://ex.com/{s}")).unwrap())
}

pub(crate) fn principal() -> impl Strategy<Value = PrincipalId> {
    "[a-z]{1,8}".prop_map(|s| PrincipalId::new(s).unwrap())
}

pub(crate) fn path() -> impl Strategy<Value = ProtocolPath> {
    vec("[a-c]{1,2}", 1..4).prop_map(|segs| ProtocolPath::new(segs.join("/")).unwrap())
}

pub(crate) fn cid() -> impl Strategy<Value = Cid> {
    any::<[u8; 32]>().prop_map(Cid::from_bytes)
}

pub(crate) fn record_id() -> impl Strategy<Value = RecordId> {
    // A small alphabet of ids, so prefixes and duplicates actually occur.
    (0u8..4).prop_map(|b| RecordId::from_bytes([b; 32]))
}

pub(crate) fn context() -> impl Strategy<Value = ContextId> {
    vec(record_id(), 1..4).prop_map(|c| ContextId::new(c).unwrap())
}

pub(crate) fn hlc() -> impl Strategy<Value = Hlc> {
    (0u64..1_000, 0u32..3, 0u64..3).prop_map(|(wall_ms, counter, node)| Hlc {
        wall_ms,
        counter,
        node: NodeId(node),
    })
}

pub(crate) fn data_ref() -> impl Strategy<Value = DataRef> {
    (cid(), any::<u64>()).prop_map(|(data_cid, size)| DataRef { data_cid, size })
}

/// Valid writes: the context chain matches the path depth and the parent.
pub(crate) fn write() -> impl Strategy<Value = Write> {
    (
        tenant(),
        path(),
        vec(record_id(), 4),
        protocol(),
        proptest::option::of(cid()),
        hlc(),
        principal(),
        proptest::option::of(data_ref()),
    )
        .prop_map(
            |(tenant, path, ids, protocol, prev, timestamp, author, data)| {
                let chain = ids[..path.depth()].to_vec();
                let record_id = *chain.last().unwrap();
                let parent_id = chain.len().checked_sub(2).map(|i| chain[i]);
                Write {
                    tenant,
                    record_id,
                    parent_id,
                    protocol,
                    path,
                    context_id: ContextId::new(chain).unwrap(),
                    prev,
                    timestamp,
                    author,
                    data,
                }
            },
        )
}

pub(crate) fn delete() -> impl Strategy<Value = Delete> {
    (
        tenant(),
        record_id(),
        protocol(),
        proptest::option::of(cid()),
        hlc(),
        principal(),
    )
        .prop_map(
            |(tenant, record_id, protocol, prev, timestamp, author)| Delete {
                tenant,
                record_id,
                protocol,
                prev,
                timestamp,
                author,
            },
        )
}

pub(crate) fn configure() -> impl Strategy<Value = Configure> {
    (
        tenant(),
        protocol(),
        vec((path(), proptest::option::of(0u64..100_000)), 1..5),
        vec(protocol(), 0..3),
        hlc(),
        principal(),
    )
        .prop_map(|(tenant, protocol, rules, uses, timestamp, author)| {
            // Declare every ancestor of every path, so the definition is structural.
            let mut types = Vec::new();
            for (path, data_bytes_max) in rules {
                let mut p = Some(path);
                while let Some(q) = p {
                    p = q.parent();
                    types.push(TypeRule {
                        path: q,
                        data_bytes_max,
                    });
                }
            }
            let uses = uses.into_iter().filter(|u| *u != protocol).collect();
            let definition = ProtocolDefinition::new(&protocol, types, uses).unwrap();
            Configure {
                tenant,
                protocol,
                definition,
                timestamp,
                author,
            }
        })
}

pub(crate) fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        write().prop_map(Message::Write),
        delete().prop_map(Message::Delete),
        configure().prop_map(Message::Configure),
    ]
}

pub(crate) fn projection_entry() -> impl Strategy<Value = ProjectionEntry> {
    (protocol(), vec(path(), 0..3), vec(context(), 0..3)).prop_map(
        |(protocol, path_prefixes, context_prefixes)| ProjectionEntry {
            protocol,
            path_prefixes,
            context_prefixes,
        },
    )
}

pub(crate) fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::Full),
        vec(protocol(), 1..4).prop_map(|p| Scope::protocols(p).unwrap()),
        vec(projection_entry(), 1..4).prop_map(|e| Scope::projection(e).unwrap()),
    ]
}

pub(crate) fn authorization() -> impl Strategy<Value = Authorization> {
    let grant = ("[a-z]{1,4}", scope(), 0u8..8, any::<u64>()).prop_map(
        |(id, scope, bits, expires_at_ms)| Grant {
            id: GrantId::new(id).unwrap(),
            scope,
            actions: Actions::try_from(bits).unwrap(),
            expires_at_ms,
        },
    );
    prop_oneof![
        Just(Authorization::Owner),
        (principal(), vec(grant, 1..3)).prop_filter_map(
            "grant ids must be unique",
            |(d, mut g)| {
                g.sort_by(|a, b| a.id.cmp(&b.id));
                g.dedup_by(|a, b| a.id == b.id);
                Delegation::new(d, g).ok().map(Authorization::Delegate)
            }
        ),
    ]
}

pub(crate) fn token() -> impl Strategy<Value = ProgressToken> {
    (any::<[u8; 16]>(), any::<u64>(), any::<u64>(), cid()).prop_map(|(s, epoch, position, cid)| {
        ProgressToken {
            stream_id: StreamId::from_bytes(s),
            epoch,
            position,
            cid,
        }
    })
}

pub(crate) fn endpoint() -> impl Strategy<Value = Endpoint> {
    (1u16..u16::MAX).prop_map(|port| Endpoint::new(format!("http://127.0.0.1:{port}")).unwrap())
}

pub(crate) fn link_status() -> impl Strategy<Value = LinkStatus> {
    proptest::sample::select(LinkStatus::ALL.to_vec())
}

pub(crate) fn link_state() -> impl Strategy<Value = LinkState> {
    (
        tenant(),
        endpoint(),
        scope(),
        authorization(),
        link_status(),
        proptest::option::of(token()),
        proptest::option::of(token()),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(tenant, endpoint, scope, auth, status, pull, push, dirty, at)| {
                let mut link = LinkState::new(tenant, endpoint, scope, auth);
                link.status = status;
                link.pull.reset(pull);
                link.push.reset(push);
                link.needs_reconcile = dirty;
                link.last_activity_ms = at;
                link.counters.messages_pulled = at.unwrap_or(0);
                link
            },
        )
}

pub(crate) fn apply_outcome() -> impl Strategy<Value = ApplyOutcome> {
    prop_oneof![
        Just(ApplyOutcome::Applied),
        Just(ApplyOutcome::Duplicate),
        Just(ApplyOutcome::Superseded),
        Just(ApplyOutcome::Deferred),
        Just(ApplyOutcome::Unauthorized),
        ".{0,40}".prop_map(ApplyOutcome::invalid),
        vec(
            prop_oneof![
                protocol().prop_map(Dependency::Protocol),
                record_id().prop_map(Dependency::Record),
                cid().prop_map(Dependency::Blob),
            ],
            0..4
        )
        .prop_map(|missing| ApplyOutcome::Incomplete { missing }),
    ]
}

pub(crate) fn dead_letter() -> impl Strategy<Value = DeadLetter> {
    (
        cid(),
        tenant(),
        endpoint(),
        proptest::option::of(protocol()),
        proptest::sample::select(DeadLetterCategory::ALL.to_vec()),
        proptest::option::of("[0-9]{3}"),
        ".{0,30}",
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                cid,
                tenant,
                endpoint,
                protocol,
                category,
                error_code,
                error,
                attempts,
                failed_at_ms,
            )| DeadLetter {
                cid,
                tenant,
                endpoint,
                protocol,
                category,
                error_code,
                error,
                attempts,
                failed_at_ms,
            },
        )
}
