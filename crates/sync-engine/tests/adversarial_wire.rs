//! Wire-level attacks on a real node (the engine's `ReplicaHandler` behind the hyper
//! server on 127.0.0.1), spoken by hand over TCP: bad frames, sizes and versions,
//! content-length lies, hostile bodies inside well-formed frames, and slow clients.
//! Each test asserts the clear error, that nothing was stored, and that the owner's
//! replica syncing beside the attack is unaffected (`Site::assert_unharmed`).

mod adversary;
mod sync_support;

use std::net::SocketAddr;
use std::time::Duration;

use adversary::*;
use sync_support::*;
use sync_transport::proto::{ErrorCode, ErrorReply, Request, WriteBatchRequest};
use sync_transport::{Remote, ServerConfig, Token, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on anything a test waits for; the node's own limits are far shorter.
const WAIT: Duration = Duration::from_secs(20);

fn owner_bearer() -> String {
    Token::issue(&key(), owner_claims()).to_string()
}

/// Sends `body` as a POST with `declared` as its content length (the real length when
/// `None`), then reads the whole answer: (status, body).
async fn raw_post(addr: SocketAddr, body: &[u8], declared: Option<usize>) -> (u16, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        owner_bearer(),
        declared.unwrap_or(body.len())
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The node may answer and close before it reads an oversized body.
    let _ = tcp.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the node answers or closes");
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> (u16, Vec<u8>) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an http response")
        + 4;
    let head = String::from_utf8_lossy(&out[..end]);
    (head[9..12].parse().unwrap(), out[end..].to_vec())
}

/// A well-formed frame of the owner's batch overwriting the victim with `data`.
fn overwrite_frame(site: &Site, data: &[u8]) -> Vec<u8> {
    let over = write_msg(
        &notes(),
        victim_id(),
        Some(site.victim_head()),
        &alice(),
        data,
    );
    frame::encode(&Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: vec![over],
    }))
}

fn error_of(body: &[u8]) -> ErrorReply {
    frame::decode::<ErrorReply>(body, usize::MAX).expect("an error frame")
}

/// Framing: a cut header, a wrong magic, an unknown version, nonzero reserved bits,
/// trailing garbage and a body shorter than its header says each get a 400 that says
/// what is wrong, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_clear_errors_and_store_nothing() {
    let site = Site::new().await;
    let addr = site.server.local_addr();
    let before = site.log_position();
    let good = overwrite_frame(&site, b"x");
    let mut magic = good.clone();
    magic[0] = b'X';
    let mut version = good.clone();
    version[4] = 99;
    let mut reserved = good.clone();
    reserved[6] = 1;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    let cases: [(&str, Vec<u8>, ErrorCode); 6] = [
        ("cut header", good[..7].to_vec(), ErrorCode::BadFrame),
        ("magic", magic, ErrorCode::BadFrame),
        ("version", version, ErrorCode::UnsupportedVersion),
        ("reserved", reserved, ErrorCode::BadFrame),
        ("trailing", trailing, ErrorCode::BadFrame),
        (
            "cut body",
            good[..good.len() - 3].to_vec(),
            ErrorCode::BadFrame,
        ),
    ];
    for (what, bytes, code) in cases {
        let (status, body) = raw_post(addr, &bytes, None).await;
        let e = error_of(&body);
        assert_eq!((status, e.code), (400, code), "{what}: {}", e.message);
        assert!(!e.message.is_empty(), "{what}");
        if code == ErrorCode::UnsupportedVersion {
            assert_eq!(e.supported_versions, frame::SUPPORTED_VERSIONS.to_vec());
        }
    }
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-bad-frames").await;
}

/// Sizes: a header announcing a body over the node's frame limit is refused (413)
/// before the body is read, and a content length over the limit likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_their_body_is_read() {
    let mut config = ServerConfig::new(key());
    config.frame_bytes_max = 64 * 1024;
    let site = Site::with_config(config).await;
    let addr = site.server.local_addr();
    let before = site.log_position();
    let mut header = frame::encode(&Request::Health)[..12].to_vec();
    header[8..12].copy_from_slice(&(1u32 << 30).to_be_bytes());
    let (status, body) = raw_post(addr, &header, None).await;
    assert_eq!((status, error_of(&body).code), (413, ErrorCode::TooLarge));
    let (status, _) = raw_post(addr, &header, Some(1 << 30)).await;
    assert_eq!(status, 413);
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-oversized").await;
}

/// Content-length lies: a body shorter than announced (the client then closes) and one
/// longer than announced store nothing; the node answers or closes and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_lies_store_nothing() {
    let site = Site::new().await;
    let addr = site.server.local_addr();
    let before = site.log_position();
    let good = overwrite_frame(&site, b"lie");
    // Shorter than announced, then the write side closes.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        owner_bearer(),
        good.len() + 100
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&good).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("closed");
    if !out.is_empty() {
        let (status, _) = parse_response(&out);
        assert!((400..500).contains(&status), "{status}");
    }
    // Longer than announced: the frame is cut where the length says, so it is bad.
    let (status, body) = raw_post(addr, &good, Some(good.len() - 3)).await;
    assert_eq!((status, error_of(&body).code), (400, ErrorCode::BadFrame));
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-lies").await;
}

/// A slow client: headers that never finish and a body that never comes are cut by
/// the node's time limits while an honest replica syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_sync() {
    let mut config = ServerConfig::new(key());
    config.header_read_time_ms_max = 300;
    config.request_time_ms_max = 300;
    let site = Site::with_config(config).await;
    let addr = site.server.local_addr();
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"POST /v1/rpc HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/rpc HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n",
        owner_bearer()
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    site.assert_unharmed("during-slow-clients").await;
    let before = site.log_position();
    for tcp in [&mut slow_head, &mut slow_body] {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
            .await
            .expect("the node closes a stalled connection")
            .unwrap();
    }
    assert_eq!(site.log_position(), before);
}

/// Hostile bodies inside well-formed frames: the owner's batch for the tenant carrying
/// a message whose inline data does not match its reference, one whose payload breaks
/// its type's path, and a batch over the (wide) batch limit; each is answered per message or
/// refused whole, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_in_good_frames_are_refused_one_by_one() {
    let site = Site::new().await;
    let owner = site.client(owner_claims());
    let before = site.log_position();
    let mut mismatched = write_msg(
        &notes(),
        victim_id(),
        Some(site.victim_head()),
        &alice(),
        b"a",
    );
    mismatched.data = Some(b"b".to_vec());
    let fresh = sync_types::RecordId::from_natural_key(&tenant(), &notes(), b"fresh");
    let mut undeclared = write_msg(&notes(), fresh, None, &alice(), b"x");
    let sync_types::Message::Write(w) = &mut undeclared.message else {
        unreachable!()
    };
    w.path = sync_types::ProtocolPath::new("undeclared").unwrap();
    let outcomes = send(&owner, vec![mismatched, undeclared]).await;
    assert!(
        invalid_reason(&outcomes[0]).contains("does not match"),
        "{outcomes:?}"
    );
    assert!(
        invalid_reason(&outcomes[1]).contains("not declared"),
        "{outcomes:?}"
    );
    // One message over the wide batch limit, by hand (the client would split it): in
    // the plain frame and the dense one, each refused whole with the limit named.
    let too_many = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: (0..=sync_transport::proto::BATCH_MESSAGES_WIDE_MAX)
            .map(|i| {
                let id =
                    sync_types::RecordId::from_natural_key(&tenant(), &notes(), &i.to_be_bytes());
                write_msg(&notes(), id, None, &alice(), b"x")
            })
            .collect(),
    });
    for bytes in [
        frame::encode(&too_many),
        frame::encode_dense(&too_many).expect("a write batch has a dense form"),
    ] {
        let (status, body) = raw_post(site.server.local_addr(), &bytes, None).await;
        assert_eq!(status, 400);
        let e = frame::decode::<ErrorReply>(&body, usize::MAX).unwrap();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert!(
            e.message
                .contains("write batch holds 1025 elements, more than the limit of 1024"),
            "{}",
            e.message
        );
    }
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-hostile-bodies").await;
}

/// A tenant's share of in-flight requests: a download its client stops reading holds
/// one of the tenant's slots until its connection goes; at the limit the tenant is refused with a 503 naming it,
/// while another tenant's requests and the owner's other tenant are served, and the
/// slot comes back when the download's connection goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_every_request_slot() {
    // Above what one engine sends at once (a push, its small-message lane, a blob).
    const SHARE: usize = 4;
    let mut config = ServerConfig::new(key());
    config.requests_per_tenant_max = SHARE;
    let site = Site::with_config(config).await;
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    put(&site.owner, "big", &big);
    site.assert_unharmed("with-a-blob").await;
    let cid = sync_types::Cid::of_data(&big);
    let read = frame::encode(&Request::BlobRead(sync_transport::proto::BlobReadRequest {
        tenant: tenant(),
        scope: sync_types::Scope::Full,
        cid,
        offset: 0,
        len: big.len() as u64,
    }));
    // Downloads the client stops reading, one per slot of the tenant's share.
    let mut stalled = Vec::new();
    for _ in 0..SHARE {
        let mut tcp = TcpStream::connect(site.server.local_addr()).await.unwrap();
        let head = format!(
            "POST /v1/blob/read HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
            owner_bearer(),
            read.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&read).await.unwrap();
        let mut first = [0u8; 12];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "the download started");
        stalled.push(tcp);
    }

    // The tenant's slots are taken: its next call is refused, naming the limit.
    let owner = site.client(owner_claims());
    let refused = owner
        .root(sync_transport::proto::RootRequest {
            tenant: tenant(),
            scope: sync_types::Scope::Full,
        })
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("limit of 4 requests in flight per tenant"),
        "{text}"
    );
    assert!(refused.is_retryable(), "an overload is retried: {text}");
    // Another tenant is served meanwhile.
    let mut eve = owner_claims();
    eve.tenant = sync_types::TenantId::new("did:example:eve").unwrap();
    site.client(eve)
        .root(sync_transport::proto::RootRequest {
            tenant: sync_types::TenantId::new("did:example:eve").unwrap(),
            scope: sync_types::Scope::Full,
        })
        .await
        .expect("another tenant has its own share");
    drop(stalled);
    let mut served = false;
    for _ in 0..200 {
        if owner
            .root(sync_transport::proto::RootRequest {
                tenant: tenant(),
                scope: sync_types::Scope::Full,
            })
            .await
            .is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served,
        "the slot came back when the download's connection went"
    );
    site.assert_unharmed("after-share").await;
}

/// Connection starvation without a token (F6), against a real node: idle connections
/// take every slot; a replica's sync meanwhile is told which limit it met (a retryable
/// 503), and once the idle ones pass the first-byte limit and are closed, the replica
/// syncs. Nothing of the idle connections is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_the_node_only_until_the_first_byte_limit() {
    let mut config = ServerConfig::new(key());
    config.connections_max = 4;
    config.connections_per_address_max = 4;
    config.first_byte_time_ms_max = 1_000;
    let site = Site::with_config(config).await;
    let before = site.log_position();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(site.server.local_addr()).await.unwrap());
    }
    let reader = replica(3);
    let reader_engine = engine(&reader, http(), vec![site.endpoint.clone()], fast_config());
    let first = reader_engine.sync_once().await;
    let refused = first.links[0].error.as_ref().map(ToString::to_string);
    if let Some(text) = &refused {
        assert!(text.contains("the node is at its limit of"), "{text}");
    }
    // The idle connections are closed by the first-byte limit (or refused at once, if
    // the site's pooled connections still held slots when they came).
    for tcp in &mut idle {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
            .await
            .expect("closed after the first-byte limit")
            .unwrap();
    }
    sync_until_quiet(&reader_engine, 3).await;
    assert_eq!(get(&reader, VICTIM).as_deref(), Some(VICTIM_DATA));
    assert_eq!(site.log_position(), before);
}
