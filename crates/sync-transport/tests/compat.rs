//! Old and new peers together: compression and dense frames (version 2) only when
//! both sides said they read them, and the requests of no echo (`WriteBatchPlaced`, `LogPageKnown`) and the page with the
//! log's extent (`LogPageHead`) falling back to the older calls against a node that does
//! not know them.

// The shared support indexes test-sized buffers with u64 positions (64-bit hosts only).
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::sync::{Arc, Mutex};

use support::*;
use sync_transport::compress;
use sync_transport::frame;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 message read from `tcp`: head lines (lowercase) and body.
async fn read_message(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 65536];
                let n = tcp.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 65536];
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Posts a frame to /v1/rpc with extra headers; returns the status, the response head
/// (lowercase) and the body.
async fn post(addr: std::net::SocketAddr, frame: &[u8], extra: &str) -> (u16, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n{extra}\r\n",
        owner_token(),
        frame.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(frame).await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_message(&mut tcp, &mut buf).await.unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, body)
}

fn page_request() -> Request {
    Request::LogPage(LogPageRequest {
        tenant: tenant(),
        scope: Scope::Full,
        from: None,
        filter: LogFilter::default(),
        limit: 1000,
    })
}

#[tokio::test]
async fn replies_are_compressed_only_for_a_client_that_reads_them() {
    let t = TestServer::start(test_config()).await;
    let items: Vec<MessageData> = (0..200)
        .map(|n| write("notes", n, Some(b"{\"title\":\"a note with some text\"}")))
        .collect();
    t.handler.append(items);
    let request = frame::encode(&page_request());

    // An old client says nothing: it gets the plain frame.
    let (status, head, plain) = post(t.addr(), &request, "").await;
    assert_eq!(status, 200);
    assert!(!head.contains(compress::ENCODING_HEADER));
    let Reply::LogPage(LogPageReply::Page(page)) =
        frame::decode::<Reply>(&plain, usize::MAX).unwrap()
    else {
        panic!("not a page")
    };
    assert_eq!(page.entries.len(), 200);
    // And learns the node reads compressed requests, which it may ignore.
    assert!(head.contains(&format!("{}: lz4", compress::ACCEPT_HEADER)));

    // A new client gets the same frame, compressed.
    let accept = format!("{}: lz4\r\n", compress::ACCEPT_HEADER);
    let (status, head, packed) = post(t.addr(), &request, &accept).await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("{}: lz4", compress::ENCODING_HEADER)));
    assert!(
        packed.len() < plain.len() / 2,
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(compress::decompress(&packed, 1 << 24).unwrap(), plain);

    // A small reply stays plain even for a new client.
    let (_, head, _) = post(t.addr(), &frame::encode(&Request::Health), &accept).await;
    assert!(!head.contains(compress::ENCODING_HEADER));

    // A compressed request is read; a malformed one is a bad frame, and nothing else.
    let big = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: (1000..1100)
            .map(|n| write("notes", n, Some(b"{\"title\":\"pushed compressed\"}")))
            .collect(),
    });
    let packed = compress::compress(&frame::encode(&big)).unwrap();
    let headers = format!("{}: lz4\r\n", compress::ENCODING_HEADER);
    let (status, _, body) = post(t.addr(), &packed, &headers).await;
    assert_eq!(status, 200);
    let Reply::WriteBatch(reply) = frame::decode::<Reply>(&body, usize::MAX).unwrap() else {
        panic!("not a write reply")
    };
    assert_eq!(reply.outcomes.len(), 100);
    let (status, _, body) = post(t.addr(), &packed[..packed.len() / 2], &headers).await;
    assert_eq!(status, 400);
    let error = frame::decode::<ErrorReply>(&body, usize::MAX).unwrap();
    assert_eq!(error.code, ErrorCode::BadFrame);
}

#[tokio::test]
async fn the_http_client_compresses_and_reads_compressed_frames() {
    let t = TestServer::start(test_config()).await;
    let client = t.client(&owner_token());
    // The first call teaches the client that the node reads compressed requests.
    within(5, client.health()).await.unwrap();
    let items: Vec<MessageData> = (0..200)
        .map(|n| write("notes", n, Some(b"{\"title\":\"a note with some text\"}")))
        .collect();
    let reply = within(
        5,
        client.write_batch_placed(WriteBatchRequest {
            tenant: tenant(),
            messages: items.clone(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.outcomes.len(), 200);
    let LogPageReply::Page(page) = within(
        5,
        client.log_page(LogPageRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
            limit: 1000,
        }),
    )
    .await
    .unwrap() else {
        panic!("gap")
    };
    // The push went dense and compressed, the page came back so: the same messages.
    let back: Vec<MessageData> = page.entries.into_iter().map(|e| e.item).collect();
    assert_eq!(back, items);
}

/// What a fake node speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// A node from before no echo, compression and dense frames.
    Old,
    /// A node from before dense frames that says on its health replies that it reads
    /// them (a newer node replaced by an older one behind the same address).
    OldAfterNew,
}

/// A node from before no echo and compression: it does not know the two new request
/// variants (its decoder answers `BadFrame`, as the real one does), never names an
/// encoding, refuses dense frames as an unsupported version (as its header decoder
/// does), and answers the older calls. It records what it was sent.
async fn old_node(seen: Arc<Mutex<Vec<(String, bool)>>>) -> std::net::SocketAddr {
    fake_node(seen, Speaks::Old).await
}

async fn fake_node(seen: Arc<Mutex<Vec<(String, bool)>>>, speaks: Speaks) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_message(&mut tcp, &mut buf).await {
                    let compressed = head.contains(compress::ENCODING_HEADER);
                    if body[4] != frame::PROTOCOL_VERSION {
                        seen.lock().unwrap().push(("dense".into(), compressed));
                        let e = ErrorReply {
                            code: ErrorCode::UnsupportedVersion,
                            message: format!("unsupported protocol version {}", body[4]),
                            supported_versions: vec![1],
                        };
                        let frame = frame::encode(&e);
                        let head = format!(
                            "HTTP/1.1 400 X\r\ncontent-type: application/x-weft-frame\r\ncontent-length: {}\r\n\r\n",
                            frame.len()
                        );
                        let _ = tcp.write_all(head.as_bytes()).await;
                        let _ = tcp.write_all(&frame).await;
                        continue;
                    }
                    let request = frame::decode::<Request>(&body, usize::MAX).unwrap();
                    let mut advertise = "";
                    let (status, frame) = match request {
                        Request::WriteBatchPlaced(_)
                        | Request::LogPageKnown(_)
                        | Request::LogPageHead(_) => {
                            seen.lock().unwrap().push(("new".into(), compressed));
                            let e = ErrorReply::new(ErrorCode::BadFrame, "unknown variant");
                            (400, frame::encode(&e))
                        }
                        Request::WriteBatch(r) => {
                            seen.lock()
                                .unwrap()
                                .push(("write_batch".into(), compressed));
                            let outcomes = vec![ApplyOutcome::Applied; r.messages.len()];
                            (
                                200,
                                frame::encode(&Reply::WriteBatch(WriteBatchReply { outcomes })),
                            )
                        }
                        Request::LogPage(_) => {
                            seen.lock().unwrap().push(("log_page".into(), compressed));
                            let page = LogPage::default();
                            (
                                200,
                                frame::encode(&Reply::LogPage(LogPageReply::Page(page))),
                            )
                        }
                        Request::Health => {
                            seen.lock().unwrap().push(("health".into(), compressed));
                            if speaks == Speaks::OldAfterNew {
                                advertise = "x-weft-accept-encoding: dense\r\n";
                            }
                            let summary =
                                HealthSummary::new(Connectivity::Online, 0, 0, 0, 0, None);
                            let reply = Reply::Health(HealthReply {
                                protocol_versions: vec![1],
                                summary,
                                connections: 1,
                                subscriptions: 0,
                            });
                            (200, frame::encode(&reply))
                        }
                        _ => (
                            400,
                            frame::encode(&ErrorReply::new(ErrorCode::BadRequest, "no")),
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-weft-frame\r\n{advertise}content-length: {}\r\n\r\n",
                        frame.len()
                    );
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(&frame).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_new_client_falls_back_to_the_older_calls_against_an_old_node() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = old_node(seen.clone()).await;
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let client = HttpClient::new(&endpoint, &owner_token(), client_config()).unwrap();
    let items: Vec<MessageData> = (0..200)
        .map(|n| write("notes", n, Some(b"{\"title\":\"a note with some text\"}")))
        .collect();
    let batch = WriteBatchRequest {
        tenant: tenant(),
        messages: items,
    };
    let reply = within(5, client.write_batch_placed(batch.clone()))
        .await
        .unwrap();
    assert_eq!(reply.outcomes.len(), 200);
    assert_eq!(reply.placed, None);
    let Request::LogPage(page) = page_request() else {
        unreachable!()
    };
    let known = KnownRanges::new(StreamId::from_bytes([1; 16]), 0);
    let LogPageReply::Page(_) = within(
        5,
        client.log_page_known(KnownLogPageRequest { page, known }),
    )
    .await
    .unwrap() else {
        panic!("gap")
    };
    within(5, client.write_batch_placed(batch)).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<&str> = seen.iter().map(|(c, _)| c.as_str()).collect();
    // One refused new request, then the older calls for good.
    assert_eq!(calls, ["new", "write_batch", "log_page", "write_batch"]);
    assert!(
        seen.iter().all(|(_, compressed)| !compressed),
        "nothing compressed for a node that never said it reads it"
    );
}

#[tokio::test]
async fn a_page_with_the_log_head_falls_back_to_a_plain_page_against_an_old_node() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = old_node(seen.clone()).await;
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let client = HttpClient::new(&endpoint, &owner_token(), client_config()).unwrap();
    let Request::LogPage(page) = page_request() else {
        unreachable!()
    };
    let req = HeadLogPageRequest {
        page,
        known: None,
        count_remaining: true,
    };
    for _ in 0..2 {
        let reply = within(5, client.log_page_head(req.clone())).await.unwrap();
        assert!(matches!(reply.reply, LogPageReply::Page(_)));
        assert_eq!(
            reply.extent,
            LogExtent::default(),
            "an old node says nothing of it"
        );
    }
    let calls: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    // One refused new request, then plain pages for good.
    assert_eq!(calls, ["new", "log_page", "log_page"]);
}

#[tokio::test]
async fn a_dense_push_refused_as_an_unsupported_version_is_sent_again_plain() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = fake_node(seen.clone(), Speaks::OldAfterNew).await;
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let client = HttpClient::new(&endpoint, &owner_token(), client_config()).unwrap();
    // The health reply says the node reads dense frames (it did, before a downgrade).
    within(5, client.health()).await.unwrap();
    let batch = WriteBatchRequest {
        tenant: tenant(),
        messages: (0..10)
            .map(|n| write("notes", n, Some(b"{\"title\":\"x\"}")))
            .collect(),
    };
    for _ in 0..2 {
        let reply = within(5, client.write_batch_placed(batch.clone()))
            .await
            .unwrap();
        assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 10]);
    }
    let calls: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    // One dense push refused, then plain frames for good.
    assert_eq!(
        calls,
        ["health", "dense", "new", "write_batch", "write_batch"]
    );
}

#[tokio::test]
async fn dense_replies_only_for_a_client_that_reads_them() {
    let t = TestServer::start(test_config()).await;
    let items: Vec<MessageData> = (0..200)
        .map(|n| write("notes", n, Some(b"{\"title\":\"a note with some text\"}")))
        .collect();
    t.handler.append(items.clone());
    let request = frame::encode(&page_request());
    let page = |bytes: &[u8]| match frame::decode::<Reply>(bytes, usize::MAX).unwrap() {
        Reply::LogPage(LogPageReply::Page(p)) => p,
        other => panic!("not a page: {other:?}"),
    };

    // An old client (without a header, or with lz4 only) gets version 1 frames.
    let (_, head, plain) = post(t.addr(), &request, "").await;
    assert_eq!(plain[4], frame::PROTOCOL_VERSION);
    // ...and learns that the node reads dense frames, which it ignores.
    assert!(
        head.contains("x-weft-accept-encoding: lz4, dense"),
        "{head}"
    );
    let lz4_only = format!("{}: lz4\r\n", compress::ACCEPT_HEADER);
    let (_, _, packed) = post(t.addr(), &request, &lz4_only).await;
    assert_eq!(compress::decompress(&packed, 1 << 24).unwrap(), plain);

    // A new client gets the same page, dense (and compressed when it also reads lz4).
    let dense_only = format!("{}: dense\r\n", compress::ACCEPT_HEADER);
    let (status, head, dense) = post(t.addr(), &request, &dense_only).await;
    assert_eq!(status, 200);
    assert!(!head.contains(compress::ENCODING_HEADER));
    assert_eq!(dense[4], frame::DENSE_VERSION);
    assert_eq!(page(&dense), page(&plain));
    assert!(
        dense.len() * 3 < plain.len() * 2,
        "{} vs {}",
        dense.len(),
        plain.len()
    );
    let both = format!("{}: lz4, dense\r\n", compress::ACCEPT_HEADER);
    let (_, head, packed) = post(t.addr(), &request, &both).await;
    assert!(head.contains(&format!("{}: lz4", compress::ENCODING_HEADER)));
    assert_eq!(compress::decompress(&packed, 1 << 24).unwrap(), dense);

    // A new client's dense push is read and applied like a plain one.
    let batch = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: (500..600)
            .map(|n| write("notes", n, Some(b"{\"title\":\"pushed dense\"}")))
            .collect(),
    });
    let (status, _, body) = post(t.addr(), &frame::encode_dense(&batch).unwrap(), "").await;
    assert_eq!(status, 200);
    let Reply::WriteBatch(reply) = frame::decode::<Reply>(&body, usize::MAX).unwrap() else {
        panic!("not a write reply")
    };
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 100]);

    // A node with dense frames and wide batches off speaks like an older one.
    let mut config = test_config();
    config.dense_frames = false;
    config.wide_batches = false;
    let old = TestServer::start(config).await;
    old.handler.append(items);
    let (_, head, body) = post(old.addr(), &request, &dense_only).await;
    assert_eq!(body[4], frame::PROTOCOL_VERSION);
    assert!(head.contains("x-weft-accept-encoding: lz4\r\n"), "{head}");
}

/// A batch of `n` new messages (distinct for each `round`).
fn batch_of(n: u64, round: u64) -> WriteBatchRequest {
    WriteBatchRequest {
        tenant: tenant(),
        messages: (0..n)
            .map(|i| write("notes", round * 1_000_000 + i, Some(b"{\"n\":1}")))
            .collect(),
    }
}

fn batch_lens(t: &TestServer) -> Vec<usize> {
    std::mem::take(&mut *t.handler.batch_lens.lock().unwrap())
}

/// A node from before wide batches (`wide_batches: false`: it refuses a batch above
/// `BATCH_MESSAGES_MAX` when it decodes it and does not list the token): a new client
/// never sends it more than that, and larger batches still arrive whole, in parts, with
/// one outcome per message.
#[tokio::test]
async fn a_new_client_sends_a_node_before_wide_batches_no_more_than_the_old_limit() {
    let mut config = test_config();
    config.wide_batches = false;
    let t = TestServer::start(config).await;
    let client = t.client(&owner_token());
    for round in 0..2 {
        let reply = within(10, client.write_batch_placed(batch_of(600, round)))
            .await
            .unwrap();
        assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 600]);
        assert_eq!(client.batch_messages_max(), BATCH_MESSAGES_MAX);
    }
    let reply = within(10, client.write_batch(batch_of(300, 2)))
        .await
        .unwrap();
    assert_eq!(reply.outcomes.len(), 300);
    assert_eq!(
        batch_lens(&t),
        [256, 256, 88, 256, 256, 88, 256, 44],
        "no batch above the old limit"
    );
    // What such a node does with a larger batch: refuses it whole, storing nothing.
    let calls = t.handler.calls();
    let over = frame::encode(&Request::WriteBatch(batch_of(257, 3)));
    let (status, head, body) = post(t.addr(), &over, "").await;
    assert_eq!(status, 400);
    assert!(!head.contains(WIDE_BATCH_TOKEN), "{head}");
    let e = frame::decode::<ErrorReply>(&body, usize::MAX).unwrap();
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(
        e.message.contains("more than the limit of 256"),
        "{}",
        e.message
    );
    assert_eq!(t.handler.calls(), calls, "the handler saw nothing");
}

/// A node that takes wide batches says so on every reply; its client sends at most the
/// old limit until it has seen that (the first call on a fresh client), and batches of
/// up to `BATCH_MESSAGES_WIDE_MAX` after.
#[tokio::test]
async fn a_node_gets_wide_batches_once_it_said_it_takes_them() {
    let t = TestServer::start(test_config()).await;
    let client = t.client(&owner_token());
    assert_eq!(client.batch_messages_max(), BATCH_MESSAGES_MAX);
    within(10, client.write_batch_placed(batch_of(600, 0)))
        .await
        .unwrap();
    assert_eq!(client.batch_messages_max(), BATCH_MESSAGES_WIDE_MAX);
    let reply = within(10, client.write_batch_placed(batch_of(600, 1)))
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 600]);
    let n = BATCH_MESSAGES_WIDE_MAX as u64 + 476;
    let reply = within(10, client.write_batch(batch_of(n, 2)))
        .await
        .unwrap();
    assert_eq!(reply.outcomes.len() as u64, n);
    assert_eq!(
        batch_lens(&t),
        [256, 256, 88, 600, BATCH_MESSAGES_WIDE_MAX, 476],
        "parts of the old limit before the node said more, one batch after"
    );
    // The in-process client asks its node directly.
    assert_eq!(
        t.in_process(&owner_token()).batch_messages_max(),
        BATCH_MESSAGES_WIDE_MAX
    );
    // Above the wide limit a node refuses the batch whole.
    let calls = t.handler.calls();
    let over = frame::encode(&Request::WriteBatch(batch_of(
        BATCH_MESSAGES_WIDE_MAX as u64 + 1,
        3,
    )));
    let (status, _, body) = post(t.addr(), &over, "").await;
    assert_eq!(status, 400);
    let e = frame::decode::<ErrorReply>(&body, usize::MAX).unwrap();
    assert!(
        e.message.contains("more than the limit of 1024"),
        "{}",
        e.message
    );
    assert_eq!(t.handler.calls(), calls, "the handler saw nothing");
}

/// A node replaced by one from before wide batches at the same address, after its
/// client learned it takes them: the wide batch it is sent is refused whole as a bad
/// frame, and the client sends it again in parts of the old limit (not falling back to
/// the older calls), and stays at the old limit.
#[tokio::test]
async fn a_wide_batch_refused_by_a_replaced_node_is_sent_again_in_parts() {
    let t = TestServer::start(test_config()).await;
    let addr = t.addr();
    let client = t.client(&owner_token());
    within(10, client.write_batch_placed(batch_of(10, 0)))
        .await
        .unwrap();
    assert_eq!(client.batch_messages_max(), BATCH_MESSAGES_WIDE_MAX);
    within(10, t.server.shutdown()).await;
    let mut config = test_config();
    config.wide_batches = false;
    let handler = Arc::new(TestHandler::default());
    let old = serve(handler.clone(), config, addr).await.unwrap();
    let reply = within(10, client.write_batch_placed(batch_of(600, 1)))
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 600]);
    assert_eq!(client.batch_messages_max(), BATCH_MESSAGES_MAX);
    assert_eq!(*handler.batch_lens.lock().unwrap(), [256, 256, 88]);
    within(10, old.shutdown()).await;
}
