//! A real hyper server on 127.0.0.1, exercised by the HTTP client, the in-process
//! client, and raw malformed requests.

// Tests index test-sized buffers with u64 positions; they only run on 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use sync_transport::frame::{self, FrameKind, HEADER_BYTES, Header, PROTOCOL_VERSION};
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every call, through both clients, gives the same answers.
async fn exercise<R: Remote>(remote: &R, handler: &TestHandler, proto: &str) {
    let scope = Scope::Full;
    let batch: Vec<MessageData> = (0..5).map(|n| write(proto, n, Some(b"hello"))).collect();
    let cids: Vec<Cid> = batch.iter().map(|m| m.message.cid()).collect();

    let reply = remote
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: batch.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 5]);
    let again = remote
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: batch[..2].to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(again.outcomes, vec![ApplyOutcome::Duplicate; 2]);

    let read = remote
        .read_messages(ReadMessagesRequest {
            tenant: tenant(),
            scope: scope.clone(),
            cids: vec![cids[0], Cid::from_bytes([0; 32])],
        })
        .await
        .unwrap();
    assert_eq!(read.found, vec![batch[0].clone()]);
    assert_eq!(read.missing, vec![Cid::from_bytes([0; 32])]);

    let LogPageReply::Page(page) = remote
        .log_page(LogPageRequest {
            tenant: tenant(),
            scope: scope.clone(),
            from: None,
            filter: LogFilter {
                protocols: Some(ProtocolSet::new(vec![protocol(proto)]).unwrap()),
            },
            limit: 3,
        })
        .await
        .unwrap()
    else {
        panic!("expected a page");
    };
    assert_eq!(page.entries.len(), 3);
    assert!(page.has_more);
    assert_eq!(page.entries[0].item, batch[0]);

    let root = remote
        .root(RootRequest {
            tenant: tenant(),
            scope: scope.clone(),
        })
        .await
        .unwrap();
    assert_ne!(root.root, [0; 32]);

    let diff = remote
        .diff_round(DiffRequest {
            tenant: tenant(),
            scope: scope.clone(),
            round: vec![1, 2, 3],
        })
        .await
        .unwrap();
    assert_eq!(diff.round, vec![3, 2, 1]);

    let health = remote.health().await.unwrap();
    assert_eq!(
        health.protocol_versions,
        vec![PROTOCOL_VERSION, frame::DENSE_VERSION]
    );
    assert!(health.summary.healthy);

    // Blobs: upload in two parts (a resume), then download a range.
    let salt = proto.len() as u32;
    let blob: Vec<u8> = (0..200_000u32).map(|i| ((i + salt) % 251) as u8).collect();
    let cid = Cid::of_data(&blob);
    let first = remote
        .blob_write(
            BlobWriteRequest {
                tenant: tenant(),
                cid,
                total_size: blob.len() as u64,
                offset: 0,
                len: 70_000,
            },
            client::blob_source_from_bytes(Bytes::copy_from_slice(&blob[..70_000]), 16_384),
        )
        .await
        .unwrap();
    assert_eq!(first.received_bytes, 70_000);
    assert!(!first.complete);
    let stat = remote
        .blob_stat(BlobStatRequest {
            tenant: tenant(),
            scope: scope.clone(),
            cid,
        })
        .await
        .unwrap();
    let resume = stat.received_bytes;
    let done = remote
        .blob_write(
            BlobWriteRequest {
                tenant: tenant(),
                cid,
                total_size: blob.len() as u64,
                offset: resume,
                len: blob.len() as u64 - resume,
            },
            client::blob_source_from_bytes(
                Bytes::copy_from_slice(&blob[resume as usize..]),
                50_000,
            ),
        )
        .await
        .unwrap();
    assert!(done.complete);
    let download = remote
        .blob_read(BlobReadRequest {
            tenant: tenant(),
            scope: scope.clone(),
            cid,
            offset: 1_000,
            len: 150_000,
        })
        .await
        .unwrap();
    assert_eq!(download.head.total_size, blob.len() as u64);
    assert_eq!(download.collect().await.unwrap(), blob[1_000..151_000]);
    // A range past the end is cut to the end.
    let tail = remote
        .blob_read(BlobReadRequest {
            tenant: tenant(),
            scope,
            cid,
            offset: 199_990,
            len: 1_000,
        })
        .await
        .unwrap();
    assert_eq!(tail.head.len, 10);
    assert_eq!(tail.collect().await.unwrap(), blob[199_990..]);
    assert!(handler.calls() > 0);
}

#[tokio::test]
async fn http_and_in_process_clients_serve_every_call() {
    let t = TestServer::start(test_config()).await;
    within(30, exercise(&t.client(&owner_token()), &t.handler, "http")).await;
    within(
        30,
        exercise(&t.in_process(&owner_token()), &t.handler, "local"),
    )
    .await;
    within(10, t.server.shutdown()).await;
}

/// A blob whose bytes cannot be read for now (its object store down) is refused with a
/// retryable 503 that says why, before any byte of the download is sent, instead of a
/// download whose connection is cut after its head.
#[tokio::test]
async fn a_blob_store_that_does_not_answer_is_a_retryable_refusal() {
    use std::sync::atomic::Ordering;
    let t = TestServer::start(test_config()).await;
    let cid = t.handler.put_blob(&[7u8; 100_000]);
    t.handler.blobs_unavailable.store(true, Ordering::SeqCst);
    let read = |client: HttpClient| async move {
        client
            .blob_read(BlobReadRequest {
                tenant: tenant(),
                scope: Scope::Full,
                cid,
                offset: 0,
                len: 100_000,
            })
            .await
    };
    match within(10, read(t.client(&owner_token()))).await {
        Err(e @ TransportError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::Unavailable, "{e}");
            assert!(e.is_retryable(), "{e}");
            assert!(e.to_string().contains("blob store does not answer"), "{e}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a download started on a blob store that does not answer"),
    }
    t.handler.blobs_unavailable.store(false, Ordering::SeqCst);
    let download = within(10, read(t.client(&owner_token()))).await.unwrap();
    assert_eq!(download.collect().await.unwrap(), vec![7u8; 100_000]);
}

#[tokio::test]
async fn the_http_client_reuses_its_connection() {
    let t = TestServer::start(test_config()).await;
    let client = t.client(&owner_token());
    for _ in 0..20 {
        within(5, client.health()).await.unwrap();
    }
    let health = within(5, client.health()).await.unwrap();
    assert_eq!(
        health.connections, 1,
        "sequential calls share one pooled connection"
    );
}

/// Sends raw bytes as a POST to /v1/rpc and returns (status, body).
async fn raw_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    declared_len: Option<usize>,
) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        owner_token(),
        declared_len.unwrap_or(body.len())
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading an oversized body.
    let _ = tcp.write_all(body).await;
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    let text_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an http response")
        + 4;
    let head = String::from_utf8_lossy(&out[..text_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    (status, out[text_end..].to_vec())
}

fn error_of(body: &[u8]) -> ErrorReply {
    frame::decode::<ErrorReply>(body, usize::MAX).expect("an error frame")
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_server_keeps_serving() {
    let t = TestServer::start(test_config()).await;
    let addr = t.addr();
    let good = frame::encode(&Request::Health);

    // Truncated header.
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &good[..5], None)).await;
    assert_eq!(status, 400);
    let e = error_of(&body);
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert!(e.message.contains("truncated"), "{}", e.message);

    // Wrong magic.
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"HTTP");
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &bad, None)).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).message.contains("bad magic"));

    // Unknown version: the error names the versions the node speaks.
    let mut bad = good.clone();
    bad[4] = 99;
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &bad, None)).await;
    assert_eq!(status, 400);
    let e = error_of(&body);
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    assert_eq!(
        e.supported_versions,
        vec![PROTOCOL_VERSION, frame::DENSE_VERSION]
    );
    assert!(
        e.message.contains("99") && e.message.contains("[1, 2]"),
        "{}",
        e.message
    );

    // A header declaring an oversized body.
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &bad, None)).await;
    assert_eq!(status, 413);
    assert_eq!(error_of(&body).code, ErrorCode::TooLarge);

    // An HTTP body larger than the limit, refused from its content-length alone.
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", b"", Some(1 << 30))).await;
    assert_eq!(status, 413);
    assert_eq!(error_of(&body).code, ErrorCode::TooLarge);

    // A garbage body under a good header.
    let garbage = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let mut bad = Header {
        version: PROTOCOL_VERSION,
        kind: FrameKind::Request,
        body_len: garbage.len() as u32,
    }
    .encode()
    .to_vec();
    bad.extend_from_slice(&garbage);
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &bad, None)).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).message.contains("bad frame body"));

    // A batch declaring a huge element count: postcard finds too few bytes.
    let mut body_bytes = vec![1u8, 4]; // envelope version, Request::WriteBatch
    body_bytes.extend_from_slice(&codec::encode(&tenant())[1..]);
    body_bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // a varint of u32::MAX
    let mut bad = Header {
        version: PROTOCOL_VERSION,
        kind: FrameKind::Request,
        body_len: body_bytes.len() as u32,
    }
    .encode()
    .to_vec();
    bad.extend_from_slice(&body_bytes);
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &bad, None)).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body).code, ErrorCode::BadFrame);

    // A well-formed batch over the element limit.
    let over = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: (0..BATCH_MESSAGES_WIDE_MAX as u64 + 1)
            .map(|n| write("x", n, None))
            .collect(),
    });
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &frame::encode(&over), None)).await;
    assert_eq!(status, 400);
    let e = error_of(&body);
    assert!(
        e.message.contains("more than the limit of 1024"),
        "{}",
        e.message
    );

    // A reply frame sent as a request.
    let wrong = frame::encode(&Reply::Root(RootReply { root: [0; 32] }));
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &wrong, None)).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).message.contains("expected a Request frame"));

    // An unknown route.
    let (status, _) = within(5, raw_post(addr, "/nope", &good, None)).await;
    assert_eq!(status, 404);

    // None of this reached the handler, and the server still serves.
    assert_eq!(t.handler.calls(), 0);
    let (status, body) = within(5, raw_post(addr, "/v1/rpc", &good, None)).await;
    assert_eq!(status, 200);
    assert!(matches!(
        frame::decode::<Reply>(&body, usize::MAX),
        Ok(Reply::Health(_))
    ));
    within(5, t.client(&owner_token()).health()).await.unwrap();
}

#[tokio::test]
async fn a_stalled_client_is_disconnected_while_others_are_served() {
    let mut config = test_config();
    config.header_read_time_ms_max = 300;
    config.request_time_ms_max = 300;
    let t = TestServer::start(config).await;

    // Half a request line, then silence.
    let mut slow_head = TcpStream::connect(t.addr()).await.unwrap();
    slow_head
        .write_all(b"POST /v1/rpc HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    // Full headers, a body that never comes.
    let mut slow_body = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n",
        owner_token()
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();

    // Others are served meanwhile.
    within(5, t.client(&owner_token()).health()).await.unwrap();

    let mut buf = Vec::new();
    within(5, slow_head.read_to_end(&mut buf)).await.unwrap();
    let mut buf = Vec::new();
    within(5, slow_body.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn a_slow_handler_is_cut_at_the_request_time_limit() {
    let mut config = test_config();
    config.request_time_ms_max = 200;
    let t = TestServer::start(config).await;
    t.handler
        .root_delay_ms
        .store(5_000, std::sync::atomic::Ordering::SeqCst);
    let err = within(
        5,
        t.client(&owner_token()).root(RootRequest {
            tenant: tenant(),
            scope: Scope::Full,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Timeout));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let mut config = test_config();
    config.connections_max = 2;
    let t = TestServer::start(config).await;
    let _a = TcpStream::connect(t.addr()).await.unwrap();
    let _b = TcpStream::connect(t.addr()).await.unwrap();
    // Give the accept loop time to take both slots.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(t.addr()).await.unwrap();
    let mut buf = Vec::new();
    within(5, c.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body_at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let reply = error_of(&buf[body_at..]);
    assert_eq!(reply.code, ErrorCode::Overloaded);
    assert_eq!(reply.message, "the node is at its limit of 2 connections");
    let err = within(5, t.client(&owner_token()).health())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
}

#[tokio::test]
async fn an_unreachable_node_is_a_retryable_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let client = HttpClient::new(&endpoint, &owner_token(), client_config()).unwrap();
    let err = within(10, client.health()).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable(_)), "{err}");
    assert!(err.is_retryable());
    assert!(
        HttpClient::new(
            &Endpoint::new("https://x/a/path").unwrap(),
            &owner_token(),
            client_config()
        )
        .is_err()
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_subscriptions_and_stops_accepting() {
    let t = TestServer::start(test_config()).await;
    let addr = t.addr();
    let client = t.client(&owner_token());
    let mut sub = within(
        5,
        client.subscribe(SubscribeRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
        }),
    )
    .await
    .unwrap();
    assert!(matches!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::EndOfStored { .. })
    ));
    let handler = t.handler.clone();
    within(10, t.server.shutdown()).await;
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::Closed(CloseReason::ShuttingDown))
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    drop(handler);
}

/// A request in flight when the node shuts down finishes and is answered (within
/// `shutdown_grace_ms`), and one whose handler outlives the grace is cut: shutdown is
/// graceful and bounded.
#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_within_the_grace() {
    for (delay_ms, answered) in [(300, true), (5_000, false)] {
        let mut config = test_config();
        config.shutdown_grace_ms = 1_000;
        config.request_time_ms_max = 30_000;
        let t = TestServer::start(config).await;
        t.handler
            .root_delay_ms
            .store(delay_ms, std::sync::atomic::Ordering::SeqCst);
        let client = t.client(&owner_token());
        let request = tokio::spawn(async move {
            client
                .root(RootRequest {
                    tenant: tenant(),
                    scope: Scope::Full,
                })
                .await
        });
        // Shut down once the request reached the handler.
        within(5, async {
            while t.handler.calls() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let started = std::time::Instant::now();
        within(10, t.server.shutdown()).await;
        let result = within(10, request).await.unwrap();
        if answered {
            assert!(
                result.is_ok(),
                "a {delay_ms} ms request was cut: {result:?}"
            );
        } else {
            assert!(
                result.is_err(),
                "a {delay_ms} ms request outlived the grace"
            );
            assert!(
                started.elapsed() < Duration::from_millis(delay_ms),
                "shutdown waited for the handler"
            );
        }
    }
}

#[tokio::test]
async fn upload_errors_are_reported_and_leave_a_resumable_blob() {
    let t = TestServer::start(test_config()).await;
    let client = t.client(&owner_token());
    let blob = vec![9u8; 10_000];
    let cid = Cid::of_data(&blob);
    // Declares 10 000 bytes but sends 4 000.
    let err = within(
        5,
        client.blob_write(
            BlobWriteRequest {
                tenant: tenant(),
                cid,
                total_size: 10_000,
                offset: 0,
                len: 10_000,
            },
            client::blob_source_from_bytes(Bytes::copy_from_slice(&blob[..4_000]), 1_000),
        ),
    )
    .await
    .unwrap_err();
    // The client's body is shorter than its content-length, so either side may notice.
    assert!(!matches!(err, TransportError::UnexpectedReply(_)), "{err}");
    let stat = within(
        5,
        client.blob_stat(BlobStatRequest {
            tenant: tenant(),
            scope: Scope::Full,
            cid,
        }),
    )
    .await
    .unwrap();
    assert!(!stat.complete);
    assert!(stat.received_bytes <= 4_000);
    // Bytes that do not hash to the cid are refused at completion.
    let wrong = vec![1u8; 10];
    let err = within(
        5,
        client.blob_write(
            BlobWriteRequest {
                tenant: tenant(),
                cid: Cid::from_bytes([3; 32]),
                total_size: 10,
                offset: 0,
                len: 10,
            },
            client::blob_source_from_bytes(Bytes::from(wrong), 4),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    // A download of an incomplete blob is a 404.
    let err = within(
        5,
        client.blob_read(BlobReadRequest {
            tenant: tenant(),
            scope: Scope::Full,
            cid,
            offset: 0,
            len: 10,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[test]
fn header_bytes_is_twelve() {
    assert_eq!(HEADER_BYTES, 12);
}

/// A node that accepts connections and never answers: the call is tried as often as
/// configured, each attempt bounded by the configured time, and the error states the
/// whole wait, not the last attempt's.
#[tokio::test]
async fn a_black_holed_node_times_out_after_every_attempt_and_says_how_long() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = accepted.clone();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open.push(tcp);
        }
    });
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let config = ClientConfig {
        request_time_ms_max: 200,
        retries_max: 2,
        retry_backoff_ms: 10,
        ..client_config()
    };
    let client = HttpClient::new(&endpoint, &owner_token(), config).unwrap();
    let err = within(10, client.health()).await.unwrap_err();
    let TransportError::Timeout {
        ms,
        attempts,
        waited_ms,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((ms, attempts), (200, 3));
    // Three attempts of 200 ms each and two backoffs happened before it gave up.
    assert!(waited_ms >= 3 * 200 + 10 + 20, "{waited_ms}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.starts_with("no answer after 3 attempts over "),
        "{text}"
    );
    assert!(text.ends_with("(each allowed 0.2 s)"), "{text}");
    // Each attempt reached the node: the pool opened a connection per stuck call.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    hold.abort();
}
