//! TLS end to end on 127.0.0.1 with certificates made in the test (rcgen): calls and a
//! subscription over `https://` / `wss://` with the app's CA, a client that does not
//! trust the CA refused with a clear, non-retryable error, and plain `http://` to a TLS
//! node (and `https://` to a plain one) failing with words that say so.

// The shared support module indexes test buffers with u64 positions (64-bit hosts only).
#![allow(clippy::cast_possible_truncation)]

mod support;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::*;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a node certificate for 127.0.0.1 and localhost that it signed.
fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let node_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = node_params.signed_by(&node_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: node_key.serialize_pem(),
    }
}

async fn tls_server(pki: &Pki) -> TestServer {
    let mut config = test_config();
    config.tls =
        Some(ServerTls::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap());
    TestServer::start(config).await
}

fn endpoint(scheme: &str, server: &TestServer) -> Endpoint {
    Endpoint::new(format!("{scheme}://{}", server.addr())).unwrap()
}

fn client(endpoint: &Endpoint, tls: ClientTls) -> HttpClient {
    let config = ClientConfig {
        tls,
        ..client_config()
    };
    HttpClient::new(endpoint, &owner_token(), config).unwrap()
}

#[tokio::test]
async fn calls_and_subscriptions_work_over_tls_with_the_apps_ca() {
    let pki = pki();
    let server = tls_server(&pki).await;
    let remote = client(
        &endpoint("https", &server),
        ClientTls::with_ca_only(pki.ca_pem.as_bytes()),
    );

    let batch: Vec<MessageData> = (0..3).map(|n| write("notes", n, Some(b"hi"))).collect();
    let reply = within(
        10,
        remote.write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: batch.clone(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; 3]);
    assert_eq!(server.handler.calls(), 1);

    // The subscription goes over wss:// to the same port and replays what was written.
    let mut sub = within(
        10,
        remote.subscribe(SubscribeRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
        }),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        match within(10, sub.next()).await {
            Some(SubscriptionItem::Event(e)) => seen.push(e.item.message.cid()),
            Some(SubscriptionItem::EndOfStored { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let written: Vec<Cid> = batch.iter().map(|m| m.message.cid()).collect();
    assert_eq!(seen, written);
}

#[tokio::test]
async fn a_client_without_the_ca_is_refused_clearly_and_nothing_is_stored() {
    let pki = pki();
    let server = tls_server(&pki).await;
    // A different CA: the node's certificate does not chain to it.
    let other = self::pki();
    let remote = client(
        &endpoint("https", &server),
        ClientTls::with_ca_only(other.ca_pem.as_bytes()),
    );
    let err = within(
        10,
        remote.write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![write("notes", 0, None)],
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("certificate is not trusted"),
        "{err}"
    );
    assert_eq!(server.handler.calls(), 0);

    let err = within(
        10,
        remote.subscribe(SubscribeRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn plain_http_to_a_tls_node_is_told_to_use_https() {
    let pki = pki();
    let server = tls_server(&pki).await;
    let remote = client(&endpoint("http", &server), ClientTls::default());
    let err = within(10, remote.health()).await.unwrap_err();
    assert!(
        err.to_string().contains("use an https:// endpoint"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.handler.calls(), 0);
}

#[tokio::test]
async fn https_to_a_plain_node_fails_as_tls() {
    let pki = pki();
    let server = TestServer::start(test_config()).await;
    let remote = client(
        &endpoint("https", &server),
        ClientTls::with_ca_only(pki.ca_pem.as_bytes()),
    );
    let err = within(10, remote.health()).await.unwrap_err();
    assert!(matches!(err, TransportError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("did not answer in TLS"), "{err}");
}

#[test]
fn bad_pem_is_a_clear_error() {
    let pki = pki();
    let err = ServerTls::from_pem(b"not pem", pki.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    let err = ServerTls::from_pem(pki.cert_pem.as_bytes(), b"").unwrap_err();
    assert!(err.to_string().contains("no usable private key"), "{err}");
    // A key that is not the certificate's.
    let other = self::pki();
    let err = ServerTls::from_pem(pki.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}
