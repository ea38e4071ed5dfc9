//! Refusals say what was wrong, over real HTTP on 127.0.0.1: an invalid field inside a
//! frame is named with the rule it broke (the same text the value gives when built by
//! hand, which is what the CLI prints), actions and scopes are named in words, and the
//! `Bearer` scheme is matched without regard to case.

// The shared support indexes test-sized buffers with u64 positions (64-bit hosts only).
#![allow(clippy::cast_possible_truncation)]

mod support;

use support::*;
use sync_transport::frame::{self, HEADER_BYTES};
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// POSTs `frame` to /v1/rpc with `authorization`; returns the status and body.
async fn post(t: &TestServer, authorization: &str, frame: &[u8]) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: {authorization}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        frame.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(frame).await.unwrap();
    let mut out = Vec::new();
    within(5, tcp.read_to_end(&mut out)).await.unwrap();
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an http response")
        + 4;
    let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out[at..].to_vec())
}

fn error_of(body: &[u8]) -> ErrorReply {
    frame::decode::<ErrorReply>(body, usize::MAX).expect("an error frame")
}

/// The frame of `request` with its body bytes edited by `edit` (the header's length
/// follows), for values no constructor would build.
fn edited(request: &Request, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = frame::encode(request);
    let mut body = bytes.split_off(HEADER_BYTES);
    edit(&mut body);
    let len = u32::try_from(body.len()).unwrap();
    bytes[8..12].copy_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

fn replace(body: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = body
        .windows(from.len())
        .position(|w| w == from)
        .expect("the bytes to replace");
    body[at..at + to.len()].copy_from_slice(to);
}

fn bearer() -> String {
    format!("Bearer {}", owner_token())
}

#[tokio::test]
async fn an_invalid_field_in_a_frame_is_named_with_its_rule() {
    let t = TestServer::start(test_config()).await;
    let root = |tenant: &str| {
        Request::Root(RootRequest {
            tenant: TenantId::new(tenant).unwrap(),
            scope: Scope::Full,
        })
    };

    // A tenant with a space: the text `TenantId::new` (and so the CLI) gives.
    let frame = edited(&root("bad_tenant"), |b| {
        replace(b, b"bad_tenant", b"bad tenant");
    });
    let (status, body) = post(&t, &bearer(), &frame).await;
    let e = error_of(&body);
    assert_eq!((status, e.code), (400, ErrorCode::BadFrame));
    let cli = TenantId::new("bad tenant").unwrap_err().to_string();
    assert_eq!(
        cli,
        "tenant id contains the forbidden character ' ' at byte 3"
    );
    assert_eq!(e.message, format!("bad frame body: invalid value: {cli}"));

    // A message path with `..` (the protocol is named so its bytes hold no "note").
    let batch = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: vec![write("p", 1, None)],
    });
    let frame = edited(&batch, |b| replace(b, b"note", b"../n"));
    let (status, body) = post(&t, &bearer(), &frame).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body).message,
        "bad frame body: invalid value: protocol path segment contains the forbidden character '.' at byte 0"
    );

    // An empty protocol-set scope: `Scope::Full` is variant 0 as the last byte; a
    // protocol set (variant 1) of no protocols (length 0) replaces it.
    let frame = edited(&root("alice"), |b| {
        assert_eq!(b.pop(), Some(0));
        b.extend_from_slice(&[1, 0]);
    });
    let (status, body) = post(&t, &bearer(), &frame).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body).message,
        "bad frame body: invalid value: protocol set is empty"
    );

    // The node still serves, and nothing reached the handler.
    assert_eq!(t.handler.calls(), 0);
    let (status, _) = post(&t, &bearer(), &frame::encode(&Request::Health)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn actions_and_scopes_are_named_in_words() {
    let t = TestServer::start(test_config()).await;
    let notes = Scope::protocols(vec![protocol("notes")]).unwrap();
    let reader = Token::issue(
        &KEY,
        delegate_claims(
            notes.clone(),
            Actions::READ.union(Actions::SYNC),
            FAR_FUTURE_MS,
        ),
    );
    let client = t.client(&reader);

    let err = within(
        5,
        client.write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![write("notes", 1, None)],
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(
        err.to_string()
            .ends_with(": token grants read, sync; the request needs write"),
        "{err}"
    );

    let err = within(
        5,
        client.root(RootRequest {
            tenant: tenant(),
            scope: Scope::Full,
        }),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().ends_with(
            ": the requested scope (full) is not covered by the token's scope (protocols https://ex.com/notes)"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    let t = TestServer::start(test_config()).await;
    let health = frame::encode(&Request::Health);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, body) = post(&t, &format!("{scheme} {}", owner_token()), &health).await;
        assert_eq!(status, 200, "{scheme}: {}", String::from_utf8_lossy(&body));
    }
    // Another scheme is still no bearer token.
    let (status, body) = post(&t, &format!("Basic {}", owner_token()), &health).await;
    assert_eq!(status, 401);
    assert_eq!(error_of(&body).message, "missing bearer token");
}
