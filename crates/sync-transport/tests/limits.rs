//! Connection limits on a real server on 127.0.0.1: connections that send nothing are
//! closed after `first_byte_time_ms_max` and stop holding their slot, one address
//! cannot take more than `connections_per_address_max` slots, and a refused client is
//! told which limit it met.

// The shared support indexes test-sized buffers with u64 positions (64-bit hosts only).
#![allow(clippy::cast_possible_truncation)]

mod support;

use support::*;
use sync_transport::frame;
use sync_transport::proto::*;
use sync_transport::ws::SUBSCRIBE_HEADER_BYTES_MAX;
use sync_transport::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `n` connections that send nothing. The node admits connections in the order
/// they were accepted, so these hold their slots before any connection opened after
/// them is admitted.
async fn idle_connections(t: &TestServer, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(t.addr()).await.unwrap());
    }
    out
}

fn refusal(err: &TransportError) -> (u16, ErrorCode, String) {
    match err {
        TransportError::Refused {
            status,
            code,
            message,
            ..
        } => (*status, *code, message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn idle_connections_hold_their_slots_only_until_the_first_byte_limit() {
    let mut config = test_config();
    config.connections_max = 3;
    config.connections_per_address_max = 3;
    // Long enough that the idle connections still hold their slots when the client
    // comes (it connects right after them), short enough for a quick test.
    config.first_byte_time_ms_max = 1_000;
    let t = TestServer::start(config).await;
    let client = t.client(&owner_token());

    let mut idle = idle_connections(&t, 3).await;
    // While they hold every slot, a well-behaved client is told which limit it met.
    let err = within(5, client.health()).await.unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            503,
            ErrorCode::Overloaded,
            "the node is at its limit of 3 connections".to_owned()
        )
    );
    assert!(err.is_retryable());

    // The silent connections are closed by the node (well before the 10 s bound of
    // the test, the limit being 1 s), without a reply...
    for c in &mut idle {
        let mut buf = Vec::new();
        within(10, c.read_to_end(&mut buf)).await.unwrap();
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    }
    // ...and their slots are free by the time they see the close.
    within(5, client.health()).await.unwrap();
}

#[tokio::test]
async fn one_address_is_capped_below_the_node_limit() {
    let mut config = test_config();
    config.connections_max = 10;
    config.connections_per_address_max = 2;
    config.first_byte_time_ms_max = 60_000;
    let t = TestServer::start(config).await;
    let _idle = idle_connections(&t, 2).await;

    let err = within(5, t.client(&owner_token()).health())
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            503,
            ErrorCode::Overloaded,
            "the node is at its limit of 2 connections from one address".to_owned()
        )
    );
}

#[tokio::test]
async fn a_refused_raw_request_reads_the_whole_503_with_the_limit() {
    let mut config = test_config();
    config.connections_max = 1;
    config.first_byte_time_ms_max = 60_000;
    let t = TestServer::start(config).await;
    let _idle = idle_connections(&t, 1).await;

    // A request with a body: the refusal is read completely, not cut by a reset.
    let mut c = TcpStream::connect(t.addr()).await.unwrap();
    let body = vec![0u8; 32 * 1024];
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let _ = c.write_all(&body).await;
    let mut buf = Vec::new();
    within(10, c.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let reply: ErrorReply = frame::decode(&buf[at..], usize::MAX).unwrap();
    assert_eq!(reply.code, ErrorCode::Overloaded);
    assert_eq!(reply.message, "the node is at its limit of 1 connections");
}

/// Sends a WebSocket upgrade for `/v1/subscribe` with `header` as the subscribe frame and
/// answers the node's status line and error reply.
async fn raw_subscribe(t: &TestServer, header: &str) -> (String, ErrorReply) {
    let mut c = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "GET /v1/subscribe HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {}\r\nx-weft-subscribe: {header}\r\n\r\n",
        owner_token()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The node answers and keeps the connection open: read until the reply is whole.
    loop {
        let n = within(10, c.read(&mut chunk)).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(
                n > 0,
                "closed before the head: {}",
                String::from_utf8_lossy(&buf)
            );
            continue;
        };
        if let Ok(reply) = frame::decode::<ErrorReply>(&buf[at + 4..], usize::MAX) {
            let status = String::from_utf8_lossy(&buf[..at])
                .lines()
                .next()
                .unwrap()
                .to_owned();
            return (status, reply);
        }
        assert!(n > 0, "closed mid-reply: {}", String::from_utf8_lossy(&buf));
    }
}

#[tokio::test]
async fn a_subscribe_header_past_its_limit_is_refused_before_it_is_decoded() {
    let t = TestServer::start(test_config()).await;
    let (status, reply) = raw_subscribe(&t, &"A".repeat(SUBSCRIBE_HEADER_BYTES_MAX + 1)).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert_eq!(reply.code, ErrorCode::TooLarge);
    assert!(
        reply
            .message
            .contains(&SUBSCRIBE_HEADER_BYTES_MAX.to_string()),
        "{}",
        reply.message
    );
    // At the limit the length passes and the content is judged: not a frame.
    let (status, reply) = raw_subscribe(&t, &"A".repeat(SUBSCRIBE_HEADER_BYTES_MAX)).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert_eq!(reply.code, ErrorCode::BadFrame);
}
