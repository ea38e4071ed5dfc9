//! Dense frames (version 2): every message-carrying body rebuilds to exactly the value
//! that was encoded (same messages, same cids), whatever forms its messages take, and a
//! body the rules cannot rebuild is refused as a whole, over HTTP too, with nothing
//! reaching the handler.

// The shared support indexes test-sized buffers with u64 positions (64-bit hosts only).
#![allow(clippy::cast_possible_truncation)]

mod support;

use support::*;
use sync_transport::dense::*;
use sync_transport::frame::{self, DENSE_VERSION, FrameError, FrameKind, HEADER_BYTES, Header};
use sync_transport::proto::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn path(p: &str) -> ProtocolPath {
    ProtocolPath::new(p).unwrap()
}

fn hlc(n: u64, node: u64) -> Hlc {
    Hlc {
        wall_ms: 1_700_000_000_000 + n,
        counter: (n % 3) as u32,
        node: NodeId(node),
    }
}

/// Messages of every form: roots with inline data, a child, a blob reference, no data,
/// a tombstone, a protocol, other tenants, authors and clock nodes, and a write whose
/// context does not end with its record (invalid, so it travels as it is).
fn mixed() -> Vec<MessageData> {
    let mut items: Vec<MessageData> = (0..20)
        .map(|n| write("notes", n, Some(b"{\"title\":\"a note\",\"n\":1}")))
        .collect();
    let parent = items[0].message.record_id().unwrap();
    let child = RecordId::from_bytes([3; 32]);
    let base = |record_id, tenant: &str, author: &str, node| Write {
        tenant: TenantId::new(tenant).unwrap(),
        record_id,
        parent_id: None,
        protocol: protocol("notes"),
        path: path("note"),
        context_id: ContextId::root(record_id),
        prev: None,
        timestamp: hlc(node, node),
        author: PrincipalId::new(author).unwrap(),
        data: None,
    };
    let comment = Write {
        parent_id: Some(parent),
        path: path("note/comment"),
        context_id: ContextId::new(vec![parent, child]).unwrap(),
        prev: Some(Cid::from_bytes([5; 32])),
        data: Some(DataRef::of(b"child")),
        ..base(child, "alice", "bob", 9)
    };
    items.push(MessageData {
        message: Message::Write(comment),
        data: Some(b"child".to_vec()),
    });
    let blob = Write {
        data: Some(DataRef {
            data_cid: Cid::from_bytes([8; 32]),
            size: 10 << 20,
        }),
        ..base(RecordId::from_bytes([4; 32]), "alice", "alice", 1)
    };
    items.push(MessageData {
        message: Message::Write(blob),
        data: None,
    });
    // Inline data whose reference names other bytes: sent with its reference.
    let lying = Write {
        data: Some(DataRef::of(b"other")),
        ..base(RecordId::from_bytes([6; 32]), "alice", "alice", 1)
    };
    items.push(MessageData {
        message: Message::Write(lying),
        data: Some(b"these".to_vec()),
    });
    items.push(MessageData {
        message: Message::Write(base(RecordId::from_bytes([7; 32]), "carol", "dave", 2)),
        data: None,
    });
    let invalid = Write {
        context_id: ContextId::root(RecordId::from_bytes([1; 32])),
        ..base(RecordId::from_bytes([2; 32]), "alice", "alice", 1)
    };
    items.push(MessageData {
        message: Message::Write(invalid),
        data: None,
    });
    // A root context under a path of depth 2: invalid too, and not a dense root.
    let deep_root = Write {
        path: path("note/comment"),
        ..base(RecordId::from_bytes([9; 32]), "alice", "alice", 1)
    };
    items.push(MessageData {
        message: Message::Write(deep_root),
        data: None,
    });
    items.push(MessageData {
        message: Message::Delete(Delete {
            tenant: tenant(),
            record_id: parent,
            protocol: protocol("notes"),
            prev: Some(Cid::from_bytes([1; 32])),
            timestamp: hlc(30, 1),
            author: PrincipalId::new("alice").unwrap(),
        }),
        data: None,
    });
    let proto = protocol("notes");
    let definition = ProtocolDefinition::new(
        &proto,
        vec![TypeRule {
            path: path("note"),
            data_bytes_max: Some(1000),
        }],
        vec![],
    )
    .unwrap();
    items.push(MessageData {
        message: Message::Configure(Configure {
            tenant: tenant(),
            protocol: proto,
            definition,
            timestamp: hlc(0, 1),
            author: PrincipalId::new("alice").unwrap(),
        }),
        data: None,
    });
    items
}

fn token(position: u64, cid: Cid) -> ProgressToken {
    ProgressToken {
        stream_id: StreamId::from_bytes([7; 16]),
        epoch: 1,
        position,
        cid,
    }
}

/// A page of `items` at sparse positions; entry 3 names another epoch and entry 5
/// another message than its own, so they travel as full tokens.
fn page_of(items: Vec<MessageData>) -> LogPage {
    let entries: Vec<LogEntry> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut t = token(10 + 3 * i as u64, item.message.cid());
            if i == 3 {
                t.epoch = 2;
            }
            if i == 5 {
                t.cid = Cid::from_bytes([9; 32]);
            }
            LogEntry { token: t, item }
        })
        .collect();
    let next = entries.last().map(|e| e.token);
    LogPage {
        entries,
        next,
        has_more: true,
    }
}

fn round_trip<T: frame::Body + PartialEq + std::fmt::Debug>(value: &T) -> (usize, usize) {
    let plain = frame::encode(value);
    let dense = frame::encode_dense(value).expect("has a dense form");
    assert_eq!(dense[4], DENSE_VERSION);
    assert_eq!(&frame::decode::<T>(&dense, usize::MAX).unwrap(), value);
    (plain.len(), dense.len())
}

#[test]
fn every_message_carrying_body_rebuilds_exactly() {
    let items = mixed();
    let cids: Vec<Cid> = items.iter().map(|i| i.message.cid()).collect();
    let batch = WriteBatchRequest {
        tenant: tenant(),
        messages: items.clone(),
    };
    round_trip(&Request::WriteBatch(batch.clone()));
    round_trip(&Request::WriteBatchPlaced(batch.clone()));
    let Request::WriteBatch(back) = frame::decode::<Request>(
        &frame::encode_dense(&Request::WriteBatch(batch)).unwrap(),
        usize::MAX,
    )
    .unwrap() else {
        panic!("not a batch")
    };
    let back: Vec<Cid> = back.messages.iter().map(|i| i.message.cid()).collect();
    assert_eq!(back, cids, "the same messages, so the same ids");

    let page = page_of(items.clone());
    round_trip(&Reply::LogPage(LogPageReply::Page(page.clone())));
    round_trip(&Reply::LogPageHead(HeadedLogPage {
        reply: LogPageReply::Page(page),
        extent: LogExtent {
            head: Some(token(99, Cid::from_bytes([1; 32]))),
            remaining: None,
        },
    }));
    round_trip(&Reply::ReadMessages(ReadMessagesReply {
        found: items,
        missing: vec![Cid::from_bytes([2; 32])],
    }));
    round_trip(&Reply::LogPage(LogPageReply::Page(LogPage::default())));
}

#[test]
fn only_message_carrying_bodies_have_a_dense_form() {
    let gap = Gap {
        requested: token(1, Cid::from_bytes([1; 32])),
        oldest_available: None,
        latest_available: None,
        reason: GapReason::TooOld,
    };
    assert_eq!(
        frame::encode_dense(&Reply::LogPage(LogPageReply::Gap(gap))),
        None
    );
    assert_eq!(frame::encode_dense(&Request::Health), None);
    assert_eq!(
        frame::encode_dense(&ErrorReply::new(ErrorCode::BadFrame, "x")),
        None
    );
    // A version 2 header on a body without a dense form is refused, not guessed at.
    let mut f = frame::encode(&Request::Health);
    f[4] = DENSE_VERSION;
    let err = frame::decode::<Request>(&f, usize::MAX).unwrap_err();
    assert!(matches!(err, FrameError::Body(_)), "{err}");
    let mut f = frame::encode(&ErrorReply::new(ErrorCode::BadFrame, "x"));
    f[4] = DENSE_VERSION;
    let err = frame::decode::<ErrorReply>(&f, usize::MAX).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad dense frame: Error frames have no dense form"
    );
}

#[test]
fn a_page_of_the_workload_is_much_denser() {
    let items: Vec<MessageData> = (0..1000)
        .map(|n| {
            let json = format!(
                "{{\"_id\":\"doc:{n:08}\",\"type\":\"note\",\"n\":{n},\"title\":\"Note {n}\"}}"
            );
            write("docs", n, Some(json.as_bytes()))
        })
        .collect();
    let entries: Vec<LogEntry> = items
        .iter()
        .enumerate()
        .map(|(i, item)| LogEntry {
            token: token(i as u64 + 1, item.message.cid()),
            item: item.clone(),
        })
        .collect();
    let json: usize = items.iter().map(|i| i.data.as_ref().unwrap().len()).sum();
    let (plain, dense) = round_trip(&Reply::LogPage(LogPageReply::Page(LogPage {
        entries,
        next: None,
        has_more: false,
    })));
    let (plain_overhead, dense_overhead) = ((plain - json) / 1000, (dense - json) / 1000);
    // Around each record: tenant, protocol, path, author, the context, the data
    // reference and the token's stream, epoch and cid are gone; the record id, the
    // timestamp, and a few bytes of tags and indices remain.
    assert!(
        dense_overhead * 3 < plain_overhead,
        "{dense_overhead} vs {plain_overhead} bytes a record"
    );
}

/// A dense frame around a hand-built body.
fn dense_frame<T: serde::Serialize>(kind: FrameKind, body: &T) -> Vec<u8> {
    let payload = codec::encode(body);
    let mut out = Header {
        version: DENSE_VERSION,
        kind,
        body_len: payload.len() as u32,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(&payload);
    out
}

fn names() -> Names {
    Names {
        tenants: vec![tenant()],
        protocols: vec![protocol("notes")],
        paths: vec![path("note"), path("note/comment")],
        authors: vec![PrincipalId::new("alice").unwrap()],
        nodes: vec![NodeId(1)],
    }
}

fn dense_write() -> DenseWrite {
    DenseWrite {
        tenant: 0,
        record_id: RecordId::from_bytes([1; 32]),
        protocol: 0,
        path: 0,
        context: DenseContext::Root,
        prev: None,
        timestamp: DenseHlc {
            wall_ms: 1,
            counter: 0,
            node: 0,
        },
        author: 0,
        data: DenseRef::OfInline,
    }
}

fn push_of(names: Names, writes: Vec<DenseWrite>) -> Vec<u8> {
    let messages = writes
        .into_iter()
        .map(|w| DenseItem {
            message: DenseMessage::Write(w),
            data: Some(b"{}".to_vec()),
        })
        .collect();
    dense_frame(
        FrameKind::Request,
        &DenseRequest::WriteBatchPlaced(DenseBatch {
            tenant: tenant(),
            names,
            messages,
        }),
    )
}

/// Malformed dense pushes and what each is refused with.
fn malformed() -> Vec<(Vec<u8>, &'static str)> {
    let mut cases = Vec::new();
    let w = |f: fn(&mut DenseWrite)| {
        let mut w = dense_write();
        f(&mut w);
        vec![dense_write(), w]
    };
    cases.push((
        push_of(names(), w(|w| w.protocol = 5)),
        "bad dense frame: message 1: protocol index 5 is outside the frame's table of 1 protocols",
    ));
    cases.push((
        push_of(names(), w(|w| w.author = 1)),
        "bad dense frame: message 1: author index 1 is outside the frame's table of 1 authors",
    ));
    cases.push((
        push_of(names(), w(|w| w.timestamp.node = 9)),
        "bad dense frame: message 1: node index 9 is outside the frame's table of 1 nodes",
    ));
    cases.push((
        push_of(names(), w(|w| w.path = 1)),
        "bad dense frame: message 1: claims a root context, but its path \"note/comment\" has depth 2",
    ));
    cases.push((
        push_of(names(), w(|w| w.context = DenseContext::Below(vec![]))),
        "bad dense frame: message 1: a context below no ancestor (a root is sent as Root)",
    ));
    cases.push((
        push_of(
            names(),
            w(|w| w.context = DenseContext::Below(vec![RecordId::from_bytes([2; 32])])),
        ),
        "bad dense frame: message 1: 1 ancestors for the path \"note\" of depth 1",
    ));
    let mut no_data = dense_frame(
        FrameKind::Request,
        &DenseRequest::WriteBatch(DenseBatch {
            tenant: tenant(),
            names: names(),
            messages: vec![DenseItem {
                message: DenseMessage::Write(dense_write()),
                data: None,
            }],
        }),
    );
    cases.push((
        std::mem::take(&mut no_data),
        "bad dense frame: message 0: its data reference names inline data, but none is sent",
    ));
    let mut big = names();
    big.nodes = (0..=NAMES_MAX as u64).map(NodeId).collect();
    cases.push((
        push_of(big, vec![dense_write()]),
        "dense node table holds 1025 elements, more than the limit of 1024",
    ));
    let too_big = dense_frame(
        FrameKind::Request,
        &DenseRequest::WriteBatch(DenseBatch {
            tenant: tenant(),
            names: names(),
            messages: vec![DenseItem {
                message: DenseMessage::Write(dense_write()),
                data: Some(vec![b' '; 32 * 1024 + 1]),
            }],
        }),
    );
    cases.push((
        too_big,
        "inline data is 32769 bytes, more than the limit of 32768",
    ));
    cases.push((
        push_of(names(), vec![dense_write(); BATCH_MESSAGES_WIDE_MAX + 1]),
        "write batch holds 1025 elements, more than the limit of 1024",
    ));
    cases
}

#[test]
fn a_malformed_dense_body_is_refused_with_its_reason() {
    for (frame_bytes, reason) in malformed() {
        let err = frame::decode::<Request>(&frame_bytes, usize::MAX).unwrap_err();
        assert_eq!(err.to_string(), reason);
    }
    // The same pushes with the faults taken out decode.
    let good = push_of(names(), vec![dense_write(); 3]);
    let Request::WriteBatchPlaced(b) = frame::decode::<Request>(&good, usize::MAX).unwrap() else {
        panic!("not a placed batch")
    };
    assert_eq!(b.messages.len(), 3);
    assert_eq!(
        b.messages[0].message,
        Message::Write(Write {
            tenant: tenant(),
            record_id: RecordId::from_bytes([1; 32]),
            parent_id: None,
            protocol: protocol("notes"),
            path: path("note"),
            context_id: ContextId::root(RecordId::from_bytes([1; 32])),
            prev: None,
            timestamp: Hlc {
                wall_ms: 1,
                counter: 0,
                node: NodeId(1),
            },
            author: PrincipalId::new("alice").unwrap(),
            data: Some(DataRef::of(b"{}")),
        })
    );
}

#[test]
fn a_malformed_dense_page_is_refused() {
    let entry = |token| DenseEntry {
        token,
        item: DenseItem {
            message: DenseMessage::Write(dense_write()),
            data: Some(b"{}".to_vec()),
        },
    };
    let page = |domain, entries| {
        dense_frame(
            FrameKind::Reply,
            &DenseReply::LogPage(DensePage {
                names: names(),
                domain,
                entries,
                next: None,
                has_more: false,
            }),
        )
    };
    let err = frame::decode::<Reply>(&page(None, vec![entry(DenseToken::Next(1))]), usize::MAX)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad dense frame: entry 0: a position step in a page without a domain"
    );
    let domain = Some((StreamId::from_bytes([7; 16]), 1));
    let overflow = page(
        domain,
        vec![
            entry(DenseToken::Next(u64::MAX)),
            entry(DenseToken::Next(1)),
        ],
    );
    assert_eq!(
        frame::decode::<Reply>(&overflow, usize::MAX)
            .unwrap_err()
            .to_string(),
        "bad dense frame: entry 1: the position step overflows"
    );
    // A step from a full token continues from its position; the cid is the message's.
    let Reply::LogPage(LogPageReply::Page(p)) = frame::decode::<Reply>(
        &page(
            domain,
            vec![
                entry(DenseToken::Full(token(40, Cid::from_bytes([1; 32])))),
                entry(DenseToken::Next(2)),
            ],
        ),
        usize::MAX,
    )
    .unwrap() else {
        panic!("not a page")
    };
    assert_eq!(
        p.entries[1].token,
        token(42, p.entries[1].item.message.cid())
    );
}

/// Posts raw bytes to /v1/rpc; the status and body of the answer.
async fn post(addr: std::net::SocketAddr, frame: &[u8]) -> (u16, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        owner_token(),
        frame.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(frame).await.unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&all[9..12]).parse().unwrap();
    (status, all[end + 4..].to_vec())
}

#[tokio::test]
async fn a_node_refuses_a_malformed_dense_push_and_stores_nothing() {
    let t = TestServer::start(test_config()).await;
    for (frame_bytes, reason) in malformed() {
        let (status, body) = within(5, post(t.addr(), &frame_bytes)).await;
        assert_eq!(status, 400, "{reason}");
        let e = frame::decode::<ErrorReply>(&body, usize::MAX).unwrap();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert!(e.message.contains(reason), "{} vs {reason}", e.message);
    }
    assert_eq!(t.handler.calls(), 0, "nothing reached the handler");
    assert_eq!(t.handler.head(), None, "nothing was stored");
    // A well-formed dense push is applied.
    let (status, body) = within(5, post(t.addr(), &push_of(names(), vec![dense_write()]))).await;
    assert_eq!(status, 200);
    assert!(body.len() > HEADER_BYTES);
    assert!(t.handler.head().is_some());
}

/// What the `frame_decode` fuzz target checks, on `bytes`: a value that decodes is
/// within limits and re-encodes, plain and dense, to frames that decode to it.
fn check_round_trip<T: frame::Body + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> bool {
    let Ok(value) = frame::decode::<T>(bytes, frame::FRAME_BYTES_MAX_DEFAULT) else {
        return false;
    };
    value.check_limits().unwrap();
    assert_eq!(
        frame::decode::<T>(&frame::encode(&value), usize::MAX).unwrap(),
        value
    );
    if let Some(dense) = frame::encode_dense(&value) {
        assert_eq!(frame::decode::<T>(&dense, usize::MAX).unwrap(), value);
    }
    true
}

#[test]
fn mutated_dense_frames_decode_to_values_that_round_trip_or_are_refused() {
    let items = mixed();
    let seeds = [
        frame::encode_dense(&Request::WriteBatchPlaced(WriteBatchRequest {
            tenant: tenant(),
            messages: items.clone(),
        }))
        .unwrap(),
        frame::encode_dense(&Reply::LogPage(LogPageReply::Page(page_of(items)))).unwrap(),
    ];
    // A fixed xorshift sequence: the same mutations on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut decoded = 0;
    for seed in &seeds {
        for _ in 0..500 {
            let mut bytes = seed.clone();
            for _ in 0..1 + next() % 3 {
                let at = HEADER_BYTES + (next() as usize) % (bytes.len() - HEADER_BYTES);
                bytes[at] = next() as u8;
            }
            if check_round_trip::<Request>(&bytes) || check_round_trip::<Reply>(&bytes) {
                decoded += 1;
            }
        }
    }
    // Some mutations change only values (an id byte, a timestamp) and still decode.
    assert!(decoded > 0);
}
