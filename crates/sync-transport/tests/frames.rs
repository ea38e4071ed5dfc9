//! Property tests: every frame type round-trips, arbitrary bytes never panic a decoder,
//! and token text round-trips.

// Tests index test-sized buffers with u64 positions; they only run on 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use proptest::collection::vec;
use proptest::prelude::*;
use sync_transport::frame::{self, Body, FrameError};
use sync_transport::proto::*;
use sync_transport::token::{Claims, Role, Token, TokenKey};
use sync_types::*;

fn tenant() -> impl Strategy<Value = TenantId> {
    "[a-z0-9:._-]{1,24}".prop_map(|s| TenantId::new(s).unwrap())
}

fn protocol() -> impl Strategy<Value = ProtocolName> {
    "[a-z]{1,3}".prop_map(|s| ProtocolName::new(format!("https://ex.com/{s}")).unwrap())
}

fn cid() -> impl Strategy<Value = Cid> {
    any::<[u8; 32]>().prop_map(Cid::from_bytes)
}

fn path() -> impl Strategy<Value = ProtocolPath> {
    vec("[a-c]{1,2}", 1..4).prop_map(|segs| ProtocolPath::new(segs.join("/")).unwrap())
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::Full),
        vec(protocol(), 1..4).prop_map(|p| Scope::protocols(p).unwrap()),
        (protocol(), vec(path(), 0..3)).prop_map(|(protocol, path_prefixes)| {
            Scope::projection(vec![ProjectionEntry {
                protocol,
                path_prefixes,
                context_prefixes: vec![],
            }])
            .unwrap()
        }),
    ]
}

fn progress() -> impl Strategy<Value = ProgressToken> {
    (any::<[u8; 16]>(), any::<u64>(), any::<u64>(), cid()).prop_map(|(s, epoch, position, cid)| {
        ProgressToken {
            stream_id: StreamId::from_bytes(s),
            epoch,
            position,
            cid,
        }
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        tenant(),
        protocol(),
        path(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::option::of(cid()),
    )
        .prop_map(|(tenant, protocol, path, rid, wall_ms, prev)| {
            let record_id = RecordId::from_bytes(rid);
            let chain = vec![record_id; path.depth()];
            let parent_id = (chain.len() > 1).then_some(record_id);
            Message::Write(Write {
                tenant,
                record_id,
                parent_id,
                protocol,
                path,
                context_id: ContextId::new(chain).unwrap(),
                prev,
                timestamp: Hlc {
                    wall_ms,
                    counter: 0,
                    node: NodeId(3),
                },
                author: PrincipalId::new("a").unwrap(),
                data: None,
            })
        })
}

fn item() -> impl Strategy<Value = MessageData> {
    (message(), proptest::option::of(vec(any::<u8>(), 0..64)))
        .prop_map(|(message, data)| MessageData { message, data })
}

fn entry() -> impl Strategy<Value = LogEntry> {
    (progress(), item()).prop_map(|(token, item)| LogEntry { token, item })
}

fn gap() -> impl Strategy<Value = Gap> {
    (
        progress(),
        proptest::option::of(progress()),
        proptest::option::of(progress()),
        prop_oneof![
            Just(GapReason::TooOld),
            Just(GapReason::TooNew),
            Just(GapReason::EpochMismatch),
            Just(GapReason::StreamMismatch),
            Just(GapReason::MessageMismatch),
        ],
    )
        .prop_map(
            |(requested, oldest_available, latest_available, reason)| Gap {
                requested,
                oldest_available,
                latest_available,
                reason,
            },
        )
}

fn filter() -> impl Strategy<Value = LogFilter> {
    proptest::option::of(vec(protocol(), 1..3)).prop_map(|p| LogFilter {
        protocols: p.map(|p| ProtocolSet::new(p).unwrap()),
    })
}

fn outcome() -> impl Strategy<Value = ApplyOutcome> {
    prop_oneof![
        Just(ApplyOutcome::Applied),
        Just(ApplyOutcome::Duplicate),
        Just(ApplyOutcome::Superseded),
        Just(ApplyOutcome::Deferred),
        Just(ApplyOutcome::Unauthorized),
        ".{0,40}".prop_map(ApplyOutcome::invalid),
        vec(cid().prop_map(Dependency::Blob), 0..4)
            .prop_map(|missing| ApplyOutcome::Incomplete { missing }),
    ]
}

fn blob_stat() -> impl Strategy<Value = BlobStat> {
    (
        cid(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(cid, size, received_bytes, complete)| BlobStat {
            cid,
            size,
            received_bytes,
            complete,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (tenant(), scope())
            .prop_map(|(tenant, scope)| Request::Root(RootRequest { tenant, scope })),
        (tenant(), scope(), vec(any::<u8>(), 0..64)).prop_map(|(tenant, scope, round)| {
            Request::Diff(DiffRequest {
                tenant,
                scope,
                round,
            })
        }),
        (
            tenant(),
            scope(),
            proptest::option::of(progress()),
            filter(),
            1u32..=LOG_PAGE_ENTRIES_MAX
        )
            .prop_map(|(tenant, scope, from, filter, limit)| Request::LogPage(
                LogPageRequest {
                    tenant,
                    scope,
                    from,
                    filter,
                    limit
                }
            )),
        (tenant(), scope(), vec(cid(), 0..8)).prop_map(|(tenant, scope, cids)| {
            Request::ReadMessages(ReadMessagesRequest {
                tenant,
                scope,
                cids,
            })
        }),
        (tenant(), vec(item(), 0..4)).prop_map(|(tenant, messages)| Request::WriteBatch(
            WriteBatchRequest { tenant, messages }
        )),
        (tenant(), scope(), cid()).prop_map(|(tenant, scope, cid)| Request::BlobStat(
            BlobStatRequest { tenant, scope, cid }
        )),
        (tenant(), scope(), cid(), 0u64..1 << 40, 0u64..1 << 40).prop_map(
            |(tenant, scope, cid, offset, len)| {
                Request::BlobRead(BlobReadRequest {
                    tenant,
                    scope,
                    cid,
                    offset,
                    len,
                })
            }
        ),
        (tenant(), cid(), 0u64..1 << 40, 0u64..1 << 20, 0u64..1 << 20).prop_map(
            |(tenant, cid, total, a, b)| {
                let offset = a.min(total);
                let len = b.min(total - offset);
                Request::BlobWrite(BlobWriteRequest {
                    tenant,
                    cid,
                    total_size: total,
                    offset,
                    len,
                })
            }
        ),
        Just(Request::Health),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|root| Reply::Root(RootReply { root })),
        vec(any::<u8>(), 0..64).prop_map(|round| Reply::Diff(DiffReply { round })),
        (
            vec(entry(), 0..4),
            proptest::option::of(progress()),
            any::<bool>()
        )
            .prop_map(
                |(entries, next, has_more)| Reply::LogPage(LogPageReply::Page(LogPage {
                    entries,
                    next,
                    has_more
                }))
            ),
        gap().prop_map(|g| Reply::LogPage(LogPageReply::Gap(g))),
        (vec(item(), 0..4), vec(cid(), 0..4))
            .prop_map(|(found, missing)| Reply::ReadMessages(ReadMessagesReply { found, missing })),
        vec(outcome(), 0..8).prop_map(|outcomes| Reply::WriteBatch(WriteBatchReply { outcomes })),
        blob_stat().prop_map(Reply::Blob),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(total_size, offset, len)| {
            Reply::BlobRead(BlobReadHead {
                total_size,
                offset,
                len,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(connections, subscriptions, ok)| {
            Reply::Health(HealthReply {
                protocol_versions: vec![1],
                summary: HealthSummary::new(Connectivity::Online, u64::from(!ok), 0, 0, 3, Some(5)),
                connections,
                subscriptions,
            })
        }),
    ]
}

fn close_reason() -> impl Strategy<Value = CloseReason> {
    prop_oneof![
        any::<u32>().prop_map(|queue_len_max| CloseReason::Lagged { queue_len_max }),
        Just(CloseReason::HeartbeatTimeout),
        Just(CloseReason::ShuttingDown),
        Just(CloseReason::Expired),
        Just(CloseReason::Gap),
        ".{0,40}".prop_map(|message| CloseReason::Error { message }),
        ".{0,40}".prop_map(|message| CloseReason::ConnectionLost { message }),
        ".{0,40}".prop_map(|message| CloseReason::Unavailable { message }),
    ]
}

fn notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        entry().prop_map(Notice::Event),
        proptest::option::of(progress()).prop_map(|cursor| Notice::EndOfStored { cursor }),
        gap().prop_map(Notice::Gap),
        close_reason().prop_map(Notice::Closing),
    ]
}

fn round_trips<T: Body + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = frame::encode(value);
    prop_assert_eq!(&frame::decode::<T>(&bytes, usize::MAX).unwrap(), value);
    // Every strict prefix is a clean error.
    for cut in [0, 1, 11, 12, bytes.len() / 2, bytes.len() - 1] {
        if cut < bytes.len() {
            prop_assert!(frame::decode::<T>(&bytes[..cut], usize::MAX).is_err());
        }
    }
    // Trailing bytes are refused.
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert_eq!(
        frame::decode::<T>(&longer, usize::MAX),
        Err(FrameError::TrailingBytes(1))
    );
    // A limit below the body is refused from the header alone.
    let body_len = bytes.len() - frame::HEADER_BYTES;
    if body_len > 0 {
        prop_assert!(
            matches!(
                frame::decode::<T>(&bytes, body_len - 1),
                Err(FrameError::TooLarge { .. })
            ),
            "expected TooLarge for limit {}",
            body_len - 1
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(r in request()) {
        round_trips(&r)?;
    }

    #[test]
    fn replies_round_trip(r in reply()) {
        round_trips(&r)?;
    }

    #[test]
    fn notices_round_trip(n in notice()) {
        round_trips(&n)?;
    }

    #[test]
    fn subscribe_requests_and_errors_round_trip(
        tenant in tenant(),
        scope in scope(),
        from in proptest::option::of(progress()),
        filter in filter(),
        message in ".{0,60}",
    ) {
        round_trips(&SubscribeRequest { tenant, scope, from, filter })?;
        round_trips(&ErrorReply::new(ErrorCode::BadFrame, message))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in vec(any::<u8>(), 0..512)) {
        let _ = frame::decode::<Request>(&bytes, 1 << 20);
        let _ = frame::decode::<Reply>(&bytes, 1 << 20);
        let _ = frame::decode::<Notice>(&bytes, 1 << 20);
        let _ = bytes.iter().map(|&b| b as char).collect::<String>().parse::<Token>();
    }

    #[test]
    fn arbitrary_bodies_under_a_valid_header_never_panic(body in vec(any::<u8>(), 0..512), kind in 1u8..=5) {
        let mut bytes = frame::Header {
            version: frame::PROTOCOL_VERSION,
            kind: frame::FrameKind::from_u8(kind).unwrap(),
            body_len: body.len() as u32,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(&body);
        if let Ok(r) = frame::decode::<Request>(&bytes, 1 << 20) {
            // Whatever decodes re-encodes to an equal value.
            prop_assert_eq!(frame::decode::<Request>(&frame::encode(&r), 1 << 20).unwrap(), r);
        }
        let _ = frame::decode::<Reply>(&bytes, 1 << 20);
        let _ = frame::decode::<Notice>(&bytes, 1 << 20);
    }

    #[test]
    fn tokens_round_trip_and_any_changed_byte_is_refused(
        tenant in tenant(),
        scope in scope(),
        bits in 0u8..8,
        expires_at_ms in 1u64..u64::MAX,
        flip in any::<usize>(),
    ) {
        let key = TokenKey::from_bytes([5; 32]);
        let claims = Claims {
            tenant,
            principal: PrincipalId::new("p").unwrap(),
            role: Role::Delegate,
            scope,
            actions: Actions::try_from(bits).unwrap(),
            expires_at_ms,
            grant_id: GrantId::new("g").unwrap(),
        };
        let text = Token::issue(&key, claims.clone()).to_string();
        let parsed: Token = text.parse().unwrap();
        prop_assert_eq!(parsed.verify(&key, 0).unwrap(), &claims);
        // Change one character of the claims or MAC part: it no longer parses or verifies.
        let mut chars: Vec<char> = text.chars().collect();
        let i = 6 + flip % (chars.len() - 6);
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let changed: String = chars.into_iter().collect();
        if changed != text
            && let Ok(t) = changed.parse::<Token>()
        {
            prop_assert!(t.verify(&key, 0).is_err());
        }
    }
}

#[test]
fn limits_are_checked_on_decode() {
    let big = Request::ReadMessages(ReadMessagesRequest {
        tenant: TenantId::new("t").unwrap(),
        scope: Scope::Full,
        cids: vec![Cid::from_bytes([0; 32]); READ_CIDS_MAX + 1],
    });
    assert_eq!(
        frame::decode::<Request>(&frame::encode(&big), usize::MAX),
        Err(FrameError::TooMany {
            what: "read cids",
            len: READ_CIDS_MAX + 1,
            max: READ_CIDS_MAX
        })
    );
    let zero = Request::LogPage(LogPageRequest {
        tenant: TenantId::new("t").unwrap(),
        scope: Scope::Full,
        from: None,
        filter: LogFilter::default(),
        limit: 0,
    });
    assert!(matches!(
        frame::decode::<Request>(&frame::encode(&zero), usize::MAX),
        Err(FrameError::OutOfRange { .. })
    ));
    let long = "x".repeat(ERROR_MESSAGE_BYTES_MAX + 1);
    for fat in [
        CloseReason::Error {
            message: long.clone(),
        },
        CloseReason::Unavailable {
            message: long.clone(),
        },
    ] {
        assert!(matches!(
            frame::decode::<Notice>(&frame::encode(&Notice::Closing(fat)), usize::MAX),
            Err(FrameError::TooLong { .. })
        ));
    }
    let inline = Reply::ReadMessages(ReadMessagesReply {
        found: vec![MessageData {
            message: Message::Delete(Delete {
                tenant: TenantId::new("t").unwrap(),
                record_id: RecordId::from_bytes([1; 32]),
                protocol: ProtocolName::new("p").unwrap(),
                prev: None,
                timestamp: Hlc {
                    wall_ms: 0,
                    counter: 0,
                    node: NodeId(0),
                },
                author: PrincipalId::new("a").unwrap(),
            }),
            data: Some(vec![0; INLINE_DATA_BYTES_MAX as usize + 1]),
        }],
        missing: vec![],
    });
    assert!(matches!(
        frame::decode::<Reply>(&frame::encode(&inline), usize::MAX),
        Err(FrameError::TooLong {
            what: "inline data",
            ..
        })
    ));
    let overflow = Request::BlobWrite(BlobWriteRequest {
        tenant: TenantId::new("t").unwrap(),
        cid: Cid::from_bytes([0; 32]),
        total_size: 10,
        offset: 5,
        len: 6,
    });
    assert!(matches!(
        frame::decode::<Request>(&frame::encode(&overflow), usize::MAX),
        Err(FrameError::OutOfRange { .. })
    ));
}

/// The limits a frame's own fields carry, each at its bound (accepted) and one past it
/// (refused on decode with the field named), in the requests a client sends and in the
/// replies a node sends back: a hostile node is a peer too.
#[test]
fn each_field_limit_holds_in_requests_and_replies() {
    fn refused<T: Body + std::fmt::Debug>(value: &T, field: &str) {
        match frame::decode::<T>(&frame::encode(value), usize::MAX) {
            Err(FrameError::TooLong { what, .. } | FrameError::TooMany { what, .. }) => {
                assert_eq!(what, field)
            }
            other => panic!("{field} past its limit: {other:?}"),
        }
    }
    fn accepted<T: Body + PartialEq + std::fmt::Debug>(value: &T) {
        assert_eq!(
            frame::decode::<T>(&frame::encode(value), usize::MAX).as_ref(),
            Ok(value)
        );
    }
    let diff = |len: usize| {
        Request::Diff(DiffRequest {
            tenant: TenantId::new("t").unwrap(),
            scope: Scope::Full,
            round: vec![7; len],
        })
    };
    accepted(&diff(DIFF_ROUND_BYTES_MAX));
    refused(&diff(DIFF_ROUND_BYTES_MAX + 1), "diff round");
    let diff_reply = |len: usize| {
        Reply::Diff(DiffReply {
            round: vec![7; len],
        })
    };
    accepted(&diff_reply(DIFF_ROUND_BYTES_MAX));
    refused(&diff_reply(DIFF_ROUND_BYTES_MAX + 1), "diff round");

    let error = |versions: usize| ErrorReply {
        code: ErrorCode::BadFrame,
        message: "no".into(),
        supported_versions: vec![1; versions],
    };
    accepted(&error(VERSIONS_MAX));
    refused(&error(VERSIONS_MAX + 1), "supported versions");

    let outcomes = |n: usize, outcome: ApplyOutcome| {
        Reply::WriteBatch(WriteBatchReply {
            outcomes: vec![outcome; n],
        })
    };
    accepted(&outcomes(BATCH_MESSAGES_WIDE_MAX, ApplyOutcome::Applied));
    refused(
        &outcomes(BATCH_MESSAGES_WIDE_MAX + 1, ApplyOutcome::Applied),
        "write outcomes",
    );
    let missing = |n: usize| ApplyOutcome::Incomplete {
        missing: vec![Dependency::Record(RecordId::from_bytes([2; 32])); n],
    };
    accepted(&outcomes(1, missing(MISSING_MAX)));
    refused(&outcomes(1, missing(MISSING_MAX + 1)), "missing");
    let invalid = |n: usize| ApplyOutcome::Invalid {
        reason: "x".repeat(n),
    };
    accepted(&outcomes(1, invalid(REASON_BYTES_MAX)));
    refused(
        &outcomes(1, invalid(REASON_BYTES_MAX + 1)),
        "invalid reason",
    );
}
