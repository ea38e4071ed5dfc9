//! Every limit a peer can run into, checked at the door a peer uses: a value at the limit
//! is accepted, one past it is refused with an error that names what and the limit, both
//! when built in code and when decoded from bytes a peer sent.
//!
//! The decode side matters most: a peer never calls our constructors, it sends bytes, and
//! `#[serde(try_from)]` is what stands between those bytes and a value we trust.

use sync_types::codec::{self, MESSAGE_BYTES_MAX};
use sync_types::{
    Actions, Configure, DecodeError, Delegation, GRANT_ID_BYTES_MAX, GRANTS_MAX, Grant, GrantId,
    Hlc, Message, PATH_DEPTH_MAX, PATH_SEGMENT_BYTES_MAX, PRINCIPAL_ID_BYTES_MAX,
    PROTOCOL_NAME_BYTES_MAX, PROTOCOL_TYPES_MAX, PROTOCOL_USES_MAX, PrincipalId, Projection,
    ProjectionEntry, ProtocolDefinition, ProtocolName, ProtocolPath, ProtocolSet, RecordId,
    SCOPE_PREFIXES_MAX, SCOPE_PROTOCOLS_MAX, Scope, TENANT_ID_BYTES_MAX, TenantId, TypeRule,
    ValidationError,
};

/// The error a decode of `bytes` as `T` gives, which must be an invalid value that is too
/// long: a limit, not some other malformation.
fn refused_as_too_long<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    bytes: &[u8],
    what: &str,
    max: usize,
) {
    match codec::decode::<T>(bytes, MESSAGE_BYTES_MAX) {
        Err(DecodeError::Invalid(ValidationError::TooLong {
            what: w, max: m, ..
        })) => {
            assert!(w.contains(what), "refused for {w:?}, expected {what:?}");
            assert_eq!(m, max, "the error names the limit");
        }
        other => panic!("expected a too-long {what} to be refused, got {other:?}"),
    }
}

fn protocol(i: usize) -> ProtocolName {
    ProtocolName::new(format!("p{i:03}")).unwrap()
}

fn path(s: &str) -> ProtocolPath {
    ProtocolPath::new(s).unwrap()
}

fn grant(i: usize) -> Grant {
    Grant {
        id: GrantId::new(format!("g{i:03}")).unwrap(),
        scope: Scope::Full,
        actions: Actions::READ,
        expires_at_ms: u64::MAX,
    }
}

#[test]
fn string_ids_take_their_limit_and_refuse_one_byte_more() {
    fn check<T>(max: usize, new: fn(String) -> Result<T, ValidationError>)
    where
        T: serde::de::DeserializeOwned + std::fmt::Debug,
    {
        assert!(new("x".repeat(max)).is_ok(), "{max} bytes are allowed");
        assert!(matches!(
            new("x".repeat(max + 1)),
            Err(ValidationError::TooLong { .. })
        ));
        // The same string as a peer sends it: an encoded `String`.
        let bytes = codec::encode(&"x".repeat(max + 1));
        match codec::decode::<T>(&bytes, MESSAGE_BYTES_MAX) {
            Err(DecodeError::Invalid(ValidationError::TooLong { max: m, .. })) => {
                assert_eq!(m, max)
            }
            other => panic!("decoding {} bytes: {other:?}", max + 1),
        }
        assert!(codec::decode::<T>(&codec::encode(&"x".repeat(max)), MESSAGE_BYTES_MAX).is_ok());
    }
    check(TENANT_ID_BYTES_MAX, TenantId::new);
    check(PROTOCOL_NAME_BYTES_MAX, ProtocolName::new);
    check(PRINCIPAL_ID_BYTES_MAX, PrincipalId::new);
    check(GRANT_ID_BYTES_MAX, GrantId::new);
    check(PATH_SEGMENT_BYTES_MAX, ProtocolPath::new);
}

#[test]
fn paths_and_contexts_stop_at_the_depth_limit() {
    let deep = |n: usize| vec!["a"; n].join("/");
    assert_eq!(path(&deep(PATH_DEPTH_MAX)).depth(), PATH_DEPTH_MAX);
    assert!(matches!(
        ProtocolPath::new(deep(PATH_DEPTH_MAX + 1)),
        Err(ValidationError::TooLong {
            max: PATH_DEPTH_MAX,
            ..
        })
    ));
    refused_as_too_long::<ProtocolPath>(
        &codec::encode(&deep(PATH_DEPTH_MAX + 1)),
        "protocol path",
        PATH_DEPTH_MAX,
    );

    let ids = |n: usize| vec![RecordId::from_bytes([7; 32]); n];
    assert!(sync_types::ContextId::new(ids(PATH_DEPTH_MAX)).is_ok());
    refused_as_too_long::<sync_types::ContextId>(
        &codec::encode(&ids(PATH_DEPTH_MAX + 1)),
        "context id",
        PATH_DEPTH_MAX,
    );
}

#[test]
fn a_delegation_holds_at_most_grants_max_grants() {
    let delegate = PrincipalId::new("bob").unwrap();
    let grants = |n: usize| (0..n).map(grant).collect::<Vec<_>>();
    let at_limit = Delegation::new(delegate.clone(), grants(GRANTS_MAX)).unwrap();
    assert_eq!(at_limit.grants().len(), GRANTS_MAX);
    assert!(matches!(
        Delegation::new(delegate.clone(), grants(GRANTS_MAX + 1)),
        Err(ValidationError::TooLong {
            max: GRANTS_MAX,
            ..
        })
    ));
    // A peer's bytes for a delegation are its delegate and grants, in that order.
    refused_as_too_long::<Delegation>(
        &codec::encode(&(delegate.clone(), grants(GRANTS_MAX + 1))),
        "grants",
        GRANTS_MAX,
    );
    let decoded: Delegation = codec::decode(&codec::encode(&at_limit), MESSAGE_BYTES_MAX).unwrap();
    assert_eq!(decoded, at_limit);
}

#[test]
fn a_protocol_set_holds_at_most_scope_protocols_max() {
    let names = |n: usize| (0..n).map(protocol).collect::<Vec<_>>();
    assert_eq!(
        ProtocolSet::new(names(SCOPE_PROTOCOLS_MAX))
            .unwrap()
            .protocols()
            .len(),
        SCOPE_PROTOCOLS_MAX
    );
    assert!(matches!(
        ProtocolSet::new(names(SCOPE_PROTOCOLS_MAX + 1)),
        Err(ValidationError::TooLong {
            max: SCOPE_PROTOCOLS_MAX,
            ..
        })
    ));
    refused_as_too_long::<ProtocolSet>(
        &codec::encode(&names(SCOPE_PROTOCOLS_MAX + 1)),
        "protocol set",
        SCOPE_PROTOCOLS_MAX,
    );
    // Duplicates do not count twice: the limit is on distinct protocols.
    let mut twice = names(SCOPE_PROTOCOLS_MAX);
    twice.extend(names(SCOPE_PROTOCOLS_MAX));
    assert!(ProtocolSet::new(twice).is_ok());
}

#[test]
fn a_projection_is_bounded_in_protocols_and_prefixes() {
    let entry = |p: usize, prefixes: usize| ProjectionEntry {
        protocol: protocol(p),
        path_prefixes: (0..prefixes).map(|i| path(&format!("t{i:03}"))).collect(),
        context_prefixes: Vec::new(),
    };
    // Prefixes of one protocol.
    assert!(Projection::new(vec![entry(0, SCOPE_PREFIXES_MAX)]).is_ok());
    assert!(matches!(
        Projection::new(vec![entry(0, SCOPE_PREFIXES_MAX + 1)]),
        Err(ValidationError::TooLong {
            max: SCOPE_PREFIXES_MAX,
            ..
        })
    ));
    // Two entries of one protocol merge: their union is held to the same limit.
    let half = SCOPE_PREFIXES_MAX / 2 + 1;
    let mut other_half = entry(0, 0);
    other_half.path_prefixes = (0..half).map(|i| path(&format!("u{i:03}"))).collect();
    assert!(matches!(
        Projection::new(vec![entry(0, half), other_half]),
        Err(ValidationError::TooLong {
            max: SCOPE_PREFIXES_MAX,
            ..
        })
    ));
    refused_as_too_long::<Projection>(
        &codec::encode(&vec![entry(0, SCOPE_PREFIXES_MAX + 1)]),
        "projection path prefixes",
        SCOPE_PREFIXES_MAX,
    );
    // Protocols.
    let many = |n: usize| (0..n).map(|p| entry(p, 1)).collect::<Vec<_>>();
    assert!(Projection::new(many(SCOPE_PROTOCOLS_MAX)).is_ok());
    refused_as_too_long::<Projection>(
        &codec::encode(&many(SCOPE_PROTOCOLS_MAX + 1)),
        "projection",
        SCOPE_PROTOCOLS_MAX,
    );
}

#[test]
fn a_protocol_definition_is_bounded_in_types_and_uses() {
    let name = ProtocolName::new("notes").unwrap();
    let types = |n: usize| {
        (0..n)
            .map(|i| TypeRule {
                path: path(&format!("t{i:03}")),
                data_bytes_max: None,
            })
            .collect::<Vec<_>>()
    };
    let uses = |n: usize| (0..n).map(protocol).collect::<Vec<_>>();
    assert!(ProtocolDefinition::new(&name, types(PROTOCOL_TYPES_MAX), vec![]).is_ok());
    assert!(matches!(
        ProtocolDefinition::new(&name, types(PROTOCOL_TYPES_MAX + 1), vec![]),
        Err(ValidationError::TooLong {
            max: PROTOCOL_TYPES_MAX,
            ..
        })
    ));
    assert!(ProtocolDefinition::new(&name, types(1), uses(PROTOCOL_USES_MAX)).is_ok());
    assert!(matches!(
        ProtocolDefinition::new(&name, types(1), uses(PROTOCOL_USES_MAX + 1)),
        Err(ValidationError::TooLong {
            max: PROTOCOL_USES_MAX,
            ..
        })
    ));

    // A peer's `Configure` with one `uses` too many: `decode_message` refuses it.
    let definition = ProtocolDefinition {
        types: types(1),
        uses: uses(PROTOCOL_USES_MAX + 1),
    };
    let configure = Message::Configure(Configure {
        tenant: TenantId::new("t").unwrap(),
        protocol: name,
        definition,
        timestamp: Hlc::ZERO,
        author: PrincipalId::new("alice").unwrap(),
    });
    match codec::decode_message(&codec::encode(&configure), MESSAGE_BYTES_MAX) {
        Err(DecodeError::Invalid(ValidationError::TooLong { max, .. })) => {
            assert_eq!(max, PROTOCOL_USES_MAX)
        }
        other => panic!("expected the configure to be refused, got {other:?}"),
    }
}

#[test]
fn a_message_larger_than_its_limit_is_refused_before_it_is_parsed() {
    let bytes = vec![0u8; MESSAGE_BYTES_MAX + 1];
    assert!(matches!(
        codec::decode_message(&bytes, MESSAGE_BYTES_MAX),
        Err(DecodeError::TooLarge { len, max: MESSAGE_BYTES_MAX }) if len == MESSAGE_BYTES_MAX + 1
    ));
}
