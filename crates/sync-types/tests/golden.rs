//! Golden vectors: the ids of fixed sample values, committed so that no change to the
//! canonical encoding, to a dependency or to the codec can alter an id silently.
//!
//! If one of these fails, an id format changed. That breaks every stored message and
//! every link on every replica: bump the version in the canonical encoding instead, and
//! keep these vectors passing for the old version.

use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn notes() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}
fn ts(counter: u32) -> Hlc {
    Hlc {
        wall_ms: 1_700_000_000_000,
        counter,
        node: NodeId(0x0102_0304_0506_0708),
    }
}

fn configure() -> Message {
    let types = vec![
        TypeRule {
            path: ProtocolPath::new("note").unwrap(),
            data_bytes_max: Some(1 << 20),
        },
        TypeRule {
            path: ProtocolPath::new("note/comment").unwrap(),
            data_bytes_max: None,
        },
    ];
    let uses = vec![ProtocolName::new("https://example.com/profile").unwrap()];
    Message::Configure(Configure {
        tenant: tenant(),
        protocol: notes(),
        definition: ProtocolDefinition::new(&notes(), types, uses).unwrap(),
        timestamp: ts(0),
        author: author(),
    })
}

fn record() -> RecordId {
    RecordId::from_natural_key(&tenant(), &notes(), b"groceries")
}

fn initial_write() -> Message {
    Message::Write(Write {
        tenant: tenant(),
        record_id: record(),
        parent_id: None,
        protocol: notes(),
        path: ProtocolPath::new("note").unwrap(),
        context_id: ContextId::root(record()),
        prev: None,
        timestamp: ts(1),
        author: author(),
        data: Some(DataRef::of(b"milk, eggs")),
    })
}

fn child_write() -> Message {
    let child = RecordId::for_new_record(
        &tenant(),
        &notes(),
        &ProtocolPath::new("note/comment").unwrap(),
        &author(),
        &ts(2),
    );
    Message::Write(Write {
        tenant: tenant(),
        record_id: child,
        parent_id: Some(record()),
        protocol: notes(),
        path: ProtocolPath::new("note/comment").unwrap(),
        context_id: ContextId::root(record()).child(child).unwrap(),
        prev: Some(initial_write().cid()),
        timestamp: ts(2),
        author: author(),
        data: None,
    })
}

fn delete() -> Message {
    Message::Delete(Delete {
        tenant: tenant(),
        record_id: record(),
        protocol: notes(),
        prev: Some(initial_write().cid()),
        timestamp: ts(3),
        author: author(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn canonical_bytes_of_a_delete() {
    // The whole layout, byte for byte, of the simplest message.
    assert_eq!(
        hex(&delete().canonical_bytes()),
        "0103000000116469643a6578616d706c653a616c6963657dcc45c1186eb6ccc090489491183526930d511475ba7b216cf63ceecb3b1a6f0000001968747470733a2f2f6578616d706c652e636f6d2f6e6f746573017e90af0f828615a9fd4384a17409b2c3114ece0f1169719a40343c06f05a10750000018bcfe56800000000030102030405060708000000116469643a6578616d706c653a616c696365"
    );
}

#[test]
fn message_cids() {
    assert_eq!(
        record().to_string(),
        "7dcc45c1186eb6ccc090489491183526930d511475ba7b216cf63ceecb3b1a6f"
    );
    assert_eq!(
        configure().cid().to_string(),
        "7dd231cdae53c184aa2b6f3835937b7a96036e04e24a473c8ede4cf4bca456bc"
    );
    assert_eq!(
        initial_write().cid().to_string(),
        "7e90af0f828615a9fd4384a17409b2c3114ece0f1169719a40343c06f05a1075"
    );
    assert_eq!(
        child_write().cid().to_string(),
        "8f00023589db1622adc756a62d1c9c3f12bc855847856ed0127356c4359a0f05"
    );
    assert_eq!(
        delete().cid().to_string(),
        "ddccc3ecbc22822f2b4db560648a7dd74830a4e228a5e88bbfc9dfcb6b80e6c1"
    );
    assert_eq!(
        Cid::of_data(b"milk, eggs").to_string(),
        "f328f0a5fc1102774e4fa60bff0c08ce29e9ad765e681255bf036cf8e747eae7"
    );
}

fn projection() -> Scope {
    Scope::projection(vec![
        ProjectionEntry {
            protocol: notes(),
            path_prefixes: vec![ProtocolPath::new("note/comment").unwrap()],
            context_prefixes: vec![ContextId::root(record())],
        },
        ProjectionEntry::whole(ProtocolName::new("https://example.com/profile").unwrap()),
    ])
    .unwrap()
}

fn protocol_set() -> Scope {
    Scope::protocols(vec![
        notes(),
        ProtocolName::new("https://example.com/profile").unwrap(),
    ])
    .unwrap()
}

#[test]
fn scope_ids() {
    assert_eq!(
        scope_id(&Scope::Full).as_str(),
        "-2FWD1BS0_xaIiXw79tTmUQUqF0QTs2QvQWoUVAr_IU"
    );
    assert_eq!(
        scope_id(&protocol_set()).as_str(),
        "XzjquAu4i40v-9h2lZVew691wyf4ZCSPZaEDEMUEIM0"
    );
    assert_eq!(
        scope_id(&projection()).as_str(),
        "KAWr6Nc-_meZGqOHaFrqPX88Fkggb99TrJvLgUzH8NU"
    );
}

#[test]
fn projection_ids() {
    assert_eq!(
        projection_id(&tenant(), &Scope::Full).as_str(),
        "P3T4s_kCSXa5idbLN4WOxxT2yHVRfzlcDwckpi1M5uk"
    );
    assert_eq!(
        projection_id(&tenant(), &protocol_set()).as_str(),
        "sNi-eRYOUuDfl_mnodGLTdajryvk8rpqSCwCnsd-zGE"
    );
    assert_eq!(
        projection_id(&tenant(), &projection()).as_str(),
        "vZdTpPXPdf5GiJzjE0RyotnLKpA6xKGyrB0gQ5XyTi4"
    );
}

#[test]
fn authorization_epochs() {
    let delegate = Authorization::Delegate(
        Delegation::new(
            PrincipalId::new("did:example:phone").unwrap(),
            vec![
                Grant {
                    id: GrantId::new("grant-2").unwrap(),
                    scope: projection(),
                    actions: Actions::READ,
                    expires_at_ms: 1_800_000_000_000,
                },
                Grant {
                    id: GrantId::new("grant-1").unwrap(),
                    scope: protocol_set(),
                    actions: Actions::READ.union(Actions::WRITE).union(Actions::SYNC),
                    expires_at_ms: 1_800_000_000_000,
                },
            ],
        )
        .unwrap(),
    );
    assert_eq!(
        authorization_epoch(&Authorization::Owner).as_str(),
        "RdtxInDiV8dfNuMPikTSnIxkCzZyRghq0Iz2JagsXCg"
    );
    assert_eq!(
        authorization_epoch(&delegate).as_str(),
        "qkwoDZWcwWpT42I67gXjE69l5EWjSKB91iNmSRHNC7s"
    );
}

#[test]
fn codec_envelope_of_a_progress_token() {
    // The wire and disk codec is pinned too: postcard 1.x promises a stable format, and
    // this vector holds it to that promise for one of our types.
    let token = ProgressToken {
        stream_id: StreamId::from_bytes([0xab; 16]),
        epoch: 2,
        position: 300,
        cid: Cid::from_bytes([0x11; 32]),
    };
    assert_eq!(
        hex(&codec::encode(&token)),
        "01abababababababababababababababab02ac021111111111111111111111111111111111111111111111111111111111111111"
    );
}
