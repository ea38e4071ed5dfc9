//! WebSocket subscriptions on a real server: replay, end-of-stored-events, live
//! delivery, gaps, heartbeat timeouts both ways, and closing a slow subscriber; and
//! the same behaviour from the in-process client.

// Tests index test-sized buffers with u64 positions; they only run on 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use support::*;
use sync_transport::frame;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sub_req(from: Option<ProgressToken>) -> SubscribeRequest {
    SubscribeRequest {
        tenant: tenant(),
        scope: Scope::Full,
        from,
        filter: LogFilter::default(),
    }
}

async fn next_event(sub: &mut Subscription) -> LogEntry {
    match within(5, sub.next()).await {
        Some(SubscriptionItem::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Replay from a cursor, end-of-stored-events, then live events, including one whose
/// notification was lost (found by the next read of the log).
async fn replay_then_live<R: Remote>(remote: &R, handler: &TestHandler, proto: &str) {
    let tokens = handler.append((0..5).map(|n| write(proto, n, Some(b"x"))).collect());
    let mut sub = within(5, remote.subscribe(sub_req(Some(tokens[1]))))
        .await
        .unwrap();
    for expected in &tokens[2..] {
        assert_eq!(next_event(&mut sub).await.token, *expected);
    }
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::EndOfStored {
            cursor: Some(tokens[4])
        })
    );
    // Live.
    let live = handler.append(vec![write(proto, 100, Some(b"live"))]);
    let e = next_event(&mut sub).await;
    assert_eq!(e.token, live[0]);
    assert_eq!(e.item.data.as_deref(), Some(&b"live"[..]));
    // A write without a notification, then one with: both arrive, in order.
    let silent = handler.append_silently(write(proto, 101, None));
    let loud = handler.append(vec![write(proto, 102, None)]);
    assert_eq!(next_event(&mut sub).await.token, silent);
    assert_eq!(next_event(&mut sub).await.token, loud[0]);
}

#[tokio::test]
async fn subscriptions_replay_then_send_end_of_stored_then_live_events() {
    let t = TestServer::start(test_config()).await;
    within(
        20,
        replay_then_live(&t.client(&owner_token()), &t.handler, "ws"),
    )
    .await;
    within(
        20,
        replay_then_live(&t.in_process(&owner_token()), &t.handler, "local"),
    )
    .await;
}

/// Live subscribers at the same cursor, woken by the same change, share one read of the
/// new page; a subscriber with another filter reads its own; each gets exactly its
/// events, in order.
#[tokio::test]
async fn live_subscribers_share_one_read_of_each_new_page() {
    let t = TestServer::start(test_config()).await;
    let tokens = t
        .handler
        .append((0..3).map(|n| write("shared", n, None)).collect());
    let mut subs = Vec::new();
    for i in 0..6 {
        let req = sub_req(Some(tokens[0]));
        let sub = if i % 2 == 0 {
            within(5, t.client(&owner_token()).subscribe(req)).await
        } else {
            within(5, t.in_process(&owner_token()).subscribe(req)).await
        };
        subs.push(sub.unwrap());
    }
    let other = protocol("other");
    let mut filtered = within(
        5,
        t.client(&owner_token()).subscribe(SubscribeRequest {
            filter: LogFilter {
                protocols: Some(ProtocolSet::new(vec![other]).unwrap()),
            },
            ..sub_req(Some(tokens[0]))
        }),
    )
    .await
    .unwrap();
    for sub in &mut subs {
        assert_eq!(next_event(sub).await.token, tokens[1]);
        assert_eq!(next_event(sub).await.token, tokens[2]);
        assert_eq!(
            within(5, sub.next()).await,
            Some(SubscriptionItem::EndOfStored {
                cursor: Some(tokens[2])
            })
        );
    }
    assert!(matches!(
        within(5, filtered.next()).await,
        Some(SubscriptionItem::EndOfStored { .. })
    ));
    let calls = t.handler.calls();
    // One change: two writes of `shared` and one of `other`.
    let live = t.handler.append(vec![
        write("shared", 10, None),
        write("other", 11, None),
        write("shared", 12, None),
    ]);
    for sub in &mut subs {
        for expected in &live {
            assert_eq!(next_event(sub).await.token, *expected);
        }
    }
    assert_eq!(next_event(&mut filtered).await.token, live[1]);
    assert_eq!(
        t.handler.calls() - calls,
        2,
        "one read for the six subscribers at the same cursor, one for the filtered one"
    );
}

#[tokio::test]
async fn a_subscription_without_cursor_replays_everything() {
    let t = TestServer::start(test_config()).await;
    let tokens = t
        .handler
        .append((0..3).map(|n| write("a", n, None)).collect());
    let mut sub = within(5, t.client(&owner_token()).subscribe(sub_req(None)))
        .await
        .unwrap();
    for expected in &tokens {
        assert_eq!(next_event(&mut sub).await.token, *expected);
    }
    assert!(matches!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::EndOfStored { cursor: Some(c) }) if c == tokens[2]
    ));
}

#[tokio::test]
async fn a_stale_cursor_gets_a_gap_and_the_subscription_closes() {
    let t = TestServer::start(test_config()).await;
    let tokens = t
        .handler
        .append((0..3).map(|n| write("g", n, None)).collect());
    let mut stale = tokens[0];
    stale.epoch = 99;
    for remote_sub in [
        within(5, t.client(&owner_token()).subscribe(sub_req(Some(stale))))
            .await
            .unwrap(),
        within(
            5,
            t.in_process(&owner_token()).subscribe(sub_req(Some(stale))),
        )
        .await
        .unwrap(),
    ] {
        let mut sub = remote_sub;
        match within(5, sub.next()).await {
            Some(SubscriptionItem::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::EpochMismatch);
                assert_eq!(gap.requested, stale);
                assert_eq!(gap.latest_available, Some(tokens[2]));
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        assert_eq!(
            within(5, sub.next()).await,
            Some(SubscriptionItem::Closed(CloseReason::Gap))
        );
        assert_eq!(within(5, sub.next()).await, None);
    }
    // The log page call answers the same gap.
    let page = t
        .client(&owner_token())
        .log_page(LogPageRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: Some(stale),
            filter: LogFilter::default(),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(matches!(page, LogPageReply::Gap(g) if g.reason == GapReason::EpochMismatch));
}

/// A node whose log cannot be read for now (its database restarting) tells the
/// subscriber to come back later, not that the node broke: the client sees
/// `Unavailable`, which costs a reconnect and not a repair.
#[tokio::test]
async fn a_node_that_cannot_read_its_log_closes_as_unavailable() {
    use std::sync::atomic::Ordering;
    let t = TestServer::start(test_config()).await;
    let first = t.handler.append(vec![write("u", 0, None)]);
    for n in 0..2u64 {
        t.handler.log_unavailable.store(false, Ordering::SeqCst);
        let mut sub = if n == 0 {
            within(5, t.client(&owner_token()).subscribe(sub_req(None))).await
        } else {
            within(5, t.in_process(&owner_token()).subscribe(sub_req(None))).await
        }
        .unwrap();
        assert_eq!(next_event(&mut sub).await.token, first[0]);
        // The second subscription also replays the write the first round added.
        if n == 1 {
            next_event(&mut sub).await;
        }
        assert!(matches!(
            within(5, sub.next()).await,
            Some(SubscriptionItem::EndOfStored { .. })
        ));
        // The next read of the log, woken by a write, fails.
        t.handler.log_unavailable.store(true, Ordering::SeqCst);
        t.handler.append(vec![write("u", 1 + n, None)]);
        match within(5, sub.next()).await {
            Some(SubscriptionItem::Closed(CloseReason::Unavailable { message })) => {
                assert!(message.contains("restarting"), "{message}");
            }
            other => panic!("expected an unavailable close, got {other:?}"),
        }
        assert_eq!(within(5, sub.next()).await, None);
    }
}

/// Opens a subscription with a raw socket and returns it after the 101 response.
async fn raw_subscribe(addr: std::net::SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let mut tcp = socket.connect(addr).await.unwrap();
    let sub =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(frame::encode(&sub_req(None)));
    let head = format!(
        "GET /v1/subscribe HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {}\r\nx-weft-subscribe: {sub}\r\n\r\n",
        owner_token()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(5, tcp.read_exact(&mut byte)).await.unwrap();
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "accept key per RFC 6455: {text}"
    );
    tcp
}

/// Reads raw WebSocket frames until the server closes, returning the decoded notices.
async fn read_notices(tcp: &mut TcpStream) -> Vec<Notice> {
    let mut all = Vec::new();
    let _ = within(20, tcp.read_to_end(&mut all)).await;
    let mut notices = Vec::new();
    let mut i = 0;
    while i + 2 <= all.len() {
        let opcode = all[i] & 0x0f;
        let mut len = u64::from(all[i + 1] & 0x7f);
        let mut at = i + 2;
        if len == 126 {
            len = u64::from(u16::from_be_bytes([all[at], all[at + 1]]));
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(all[at..at + 8].try_into().unwrap());
            at += 8;
        }
        let end = at + len as usize;
        if end > all.len() {
            break;
        }
        if opcode == 2 {
            notices.push(frame::decode::<Notice>(&all[at..end], usize::MAX).unwrap());
        }
        i = end;
    }
    notices
}

#[tokio::test]
async fn a_silent_subscriber_is_closed_by_the_heartbeat_timeout() {
    let t = TestServer::start(test_config()).await;
    let mut tcp = raw_subscribe(t.addr(), None).await;
    assert_eq!(t.server.node().subscriptions(), 1);
    // Never answer pings: the server gives up after heartbeat_timeout_ms.
    let notices = read_notices(&mut tcp).await;
    assert!(matches!(notices.first(), Some(Notice::EndOfStored { .. })));
    assert_eq!(
        notices.last(),
        Some(&Notice::Closing(CloseReason::HeartbeatTimeout))
    );
    within(5, async {
        while t.server.node().subscriptions() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_answering_subscriber_stays_open_past_the_heartbeat_timeout() {
    let t = TestServer::start(test_config()).await;
    let mut sub = within(5, t.client(&owner_token()).subscribe(sub_req(None)))
        .await
        .unwrap();
    assert!(matches!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::EndOfStored { .. })
    ));
    // Three heartbeat timeouts pass; pings and pongs keep both sides open.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let live = t.handler.append(vec![write("hb", 1, None)]);
    assert_eq!(next_event(&mut sub).await.token, live[0]);
}

#[tokio::test]
async fn the_client_ends_a_subscription_when_the_node_goes_silent() {
    // A fake node that completes the WebSocket handshake and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Hold the socket without reading (so pings go unanswered) until the client leaves.
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(ws);
    });
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let client = HttpClient::new(&endpoint, &owner_token(), client_config()).unwrap();
    let mut sub = within(5, client.subscribe(sub_req(None))).await.unwrap();
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::Closed(CloseReason::HeartbeatTimeout))
    );
    fake.abort();
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_told_it_lagged_and_closed() {
    let mut config = test_config();
    config.subscriber_queue_len_max = 4;
    config.subscriber_stall_ms_max = 200;
    // Keep the socket from being dropped for a stalled write before the lag is seen.
    config.write_stall_ms_max = 10_000;
    config.heartbeat_timeout_ms = 30_000;
    let t = TestServer::start(config).await;
    // Enough data to fill the socket buffers and the queue.
    let data = vec![7u8; 30_000];
    for chunk in 0..10u64 {
        t.handler.append(
            (0..100)
                .map(|n| write("big", chunk * 100 + n, Some(&data)))
                .collect(),
        );
    }
    // A small receive buffer, and no reading for a while.
    let mut tcp = raw_subscribe(t.addr(), Some(4096)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let notices = read_notices(&mut tcp).await;
    assert_eq!(
        notices.last(),
        Some(&Notice::Closing(CloseReason::Lagged { queue_len_max: 4 })),
        "got {} notices, last {:?}",
        notices.len(),
        notices.last()
    );
    assert!(
        notices.len() < 1_000,
        "the backlog was dropped, not delivered"
    );
    within(5, async {
        while t.server.node().subscriptions() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_in_process_subscriber_that_stops_reading_is_told_it_lagged() {
    let mut config = test_config();
    config.subscriber_queue_len_max = 4;
    config.subscriber_stall_ms_max = 100;
    let t = TestServer::start(config).await;
    t.handler
        .append((0..50).map(|n| write("lag", n, None)).collect());
    let mut sub = within(5, t.in_process(&owner_token()).subscribe(sub_req(None)))
        .await
        .unwrap();
    // Read one, then stop reading for longer than the stall limit.
    next_event(&mut sub).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::Closed(CloseReason::Lagged {
            queue_len_max: 4
        }))
    );
    assert_eq!(within(5, sub.next()).await, None);
    assert_eq!(t.server.node().subscriptions(), 0);
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused() {
    let mut config = test_config();
    config.subscriptions_max = 1;
    let t = TestServer::start(config).await;
    let client = t.client(&owner_token());
    let _first = within(5, client.subscribe(sub_req(None))).await.unwrap();
    let err = within(5, client.subscribe(sub_req(None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    assert!(err.is_retryable());
}

/// A subscription whose token expires while it is open is closed with `Expired` at its
/// next read, and delivers nothing written after the expiry: the grant is checked for
/// the whole life of a subscription, not only when it opens.
async fn closed_when_the_token_expires<R: Remote>(
    remote: &R,
    handler: &TestHandler,
    clock: &ManualClock,
    proto: &str,
) {
    let before = handler.append(vec![write(proto, 0, None)]);
    let mut sub = within(5, remote.subscribe(sub_req(before.first().copied())))
        .await
        .unwrap();
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::EndOfStored {
            cursor: before.first().copied()
        })
    );
    // Still valid: a live write arrives.
    let live = handler.append(vec![write(proto, 1, None)]);
    assert_eq!(next_event(&mut sub).await.token, live[0]);
    // The token expires; the next write wakes the subscription, which closes instead.
    clock.advance(10_000);
    handler.append(vec![write(proto, 2, Some(b"after expiry"))]);
    assert_eq!(
        within(5, sub.next()).await,
        Some(SubscriptionItem::Closed(CloseReason::Expired))
    );
}

#[tokio::test]
async fn a_subscription_is_closed_when_its_token_expires() {
    let start = 1_800_000_000_000;
    let clock = Arc::new(ManualClock::new(start));
    let mut config = test_config();
    config.clock = clock.clone();
    let t = TestServer::start(config).await;
    let expiring = |grant: &str| {
        let mut claims = delegate_claims(Scope::Full, Actions::ALL, start + 5_000);
        claims.grant_id = GrantId::new(grant).unwrap();
        Token::issue(&KEY, claims)
    };
    within(
        20,
        closed_when_the_token_expires(&t.client(&expiring("ws")), &t.handler, &clock, "ws"),
    )
    .await;
    clock.set(start);
    within(
        20,
        closed_when_the_token_expires(
            &t.in_process(&expiring("local")),
            &t.handler,
            &clock,
            "local",
        ),
    )
    .await;
}
