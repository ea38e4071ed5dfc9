//! Capability tokens at the server: missing, malformed, forged, expired and
//! out-of-scope credentials are refused with 401 or 403 and a reason, and nothing
//! reaches the handler.

// Tests index test-sized buffers with u64 positions; they only run on 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

mod support;

use support::*;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;

fn notes() -> Scope {
    Scope::protocols(vec![protocol("notes")]).unwrap()
}

fn root_req(scope: Scope) -> RootRequest {
    RootRequest {
        tenant: tenant(),
        scope,
    }
}

fn refused(err: &TransportError) -> (u16, ErrorCode, String) {
    match err {
        TransportError::Refused {
            status,
            code,
            message,
            ..
        } => (*status, *code, message.clone()),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn bad_credentials_get_401_and_touch_nothing() {
    let t = TestServer::start(test_config()).await;
    let endpoint = t.endpoint();
    let forged = Token::issue(&TokenKey::from_bytes([1; 32]), owner_claims());
    let expired = Token::issue(&KEY, delegate_claims(Scope::Full, Actions::ALL, 1));
    let cases: Vec<(String, &str)> = vec![
        (forged.to_string(), "does not verify"),
        (expired.to_string(), "expired"),
        ("weft1.garbage".to_owned(), "malformed token"),
        ("nope.a.b".to_owned(), "unknown token format"),
    ];
    for (text, reason) in cases {
        let http = HttpClient::with_token_text(&endpoint, &text, client_config()).unwrap();
        let local = InProcessClient::with_token_text(t.server.node().clone(), text.clone());
        for err in [
            within(5, http.root(root_req(Scope::Full)))
                .await
                .unwrap_err(),
            within(5, local.root(root_req(Scope::Full)))
                .await
                .unwrap_err(),
            within(
                5,
                http.write_batch(WriteBatchRequest {
                    tenant: tenant(),
                    messages: vec![write("notes", 1, None)],
                }),
            )
            .await
            .unwrap_err(),
        ] {
            let (status, code, message) = refused(&err);
            assert_eq!(
                (status, code),
                (401, ErrorCode::Unauthenticated),
                "{message}"
            );
            assert!(
                message.contains(reason),
                "{message} should mention {reason}"
            );
            assert!(!err.is_retryable());
        }
        let sub = within(
            5,
            http.subscribe(SubscribeRequest {
                tenant: tenant(),
                scope: Scope::Full,
                from: None,
                filter: LogFilter::default(),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(refused(&sub).0, 401);
    }
    // A request without any Authorization header.
    let mut tcp = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(
        b"POST /v1/rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within(5, tcp.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("missing bearer token"), "{text}");

    assert_eq!(t.handler.calls(), 0, "nothing was read or written");
}

#[tokio::test]
async fn requests_beyond_the_grant_get_403_and_are_not_narrowed() {
    let t = TestServer::start(test_config()).await;
    let reader = Token::issue(&KEY, delegate_claims(notes(), Actions::READ, FAR_FUTURE_MS));
    let http = t.client(&reader);
    let local = t.in_process(&reader);

    // Inside the grant: served.
    within(5, http.root(root_req(notes()))).await.unwrap();
    within(5, local.root(root_req(notes()))).await.unwrap();
    let served = t.handler.calls();

    // A wider scope: refused, not cut down to the grant.
    for err in [
        within(5, http.root(root_req(Scope::Full)))
            .await
            .unwrap_err(),
        within(5, local.root(root_req(Scope::Full)))
            .await
            .unwrap_err(),
    ] {
        let (status, code, message) = refused(&err);
        assert_eq!((status, code), (403, ErrorCode::Forbidden));
        assert!(message.contains("scope"), "{message}");
    }
    // Another tenant.
    let err = within(
        5,
        http.root(RootRequest {
            tenant: TenantId::new("eve").unwrap(),
            scope: notes(),
        }),
    )
    .await
    .unwrap_err();
    let (status, _, message) = refused(&err);
    assert_eq!(status, 403);
    assert!(message.contains("tenant"), "{message}");
    // An action the grant lacks: writes, diffs, subscriptions.
    let err = within(
        5,
        http.write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![write("notes", 1, None)],
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused(&err).0, 403);
    let err = within(
        5,
        http.diff_round(DiffRequest {
            tenant: tenant(),
            scope: notes(),
            round: vec![],
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused(&err).0, 403);
    let err = within(
        5,
        http.subscribe(SubscribeRequest {
            tenant: tenant(),
            scope: notes(),
            from: None,
            filter: LogFilter::default(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused(&err).0, 403);

    assert_eq!(
        t.handler.calls(),
        served,
        "refused requests never reach the handler"
    );
}

#[tokio::test]
async fn out_of_scope_messages_in_a_batch_are_unauthorized_one_by_one() {
    let t = TestServer::start(test_config()).await;
    let writer = Token::issue(
        &KEY,
        delegate_claims(notes(), Actions::WRITE.union(Actions::READ), FAR_FUTURE_MS),
    );
    let mut other_tenant = write("notes", 9, None);
    if let Message::Write(w) = &mut other_tenant.message {
        w.tenant = TenantId::new("eve").unwrap();
    }
    let batch = vec![
        write("notes", 1, None),
        write("secrets", 2, None),
        other_tenant,
        write("notes", 3, None),
    ];
    for remote_reply in [
        within(
            5,
            t.client(&writer).write_batch(WriteBatchRequest {
                tenant: tenant(),
                messages: batch.clone(),
            }),
        )
        .await
        .unwrap(),
        within(
            5,
            t.in_process(&writer).write_batch(WriteBatchRequest {
                tenant: tenant(),
                messages: batch.clone(),
            }),
        )
        .await
        .unwrap(),
    ] {
        let o = &remote_reply.outcomes;
        assert_eq!(o.len(), 4);
        assert!(o[0].is_success());
        assert_eq!(o[1], ApplyOutcome::Unauthorized);
        assert!(matches!(o[2], ApplyOutcome::Invalid { .. }));
        assert!(o[3].is_success());
    }
    // Only the in-scope messages were stored.
    let read = within(
        5,
        t.in_process(&writer).read_messages(ReadMessagesRequest {
            tenant: tenant(),
            scope: notes(),
            cids: batch.iter().map(|m| m.message.cid()).collect(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(read.found.len(), 2);
}
