//! Wide write batches, negotiated: a push sends a node batches of up to
//! `BATCH_MESSAGES_WIDE_MAX` messages once its replies said it takes them, and never
//! more than `BATCH_MESSAGES_MAX` to a node from before (one with
//! `ServerConfig::wide_batches` off, which refuses a larger batch as the old ones do).
//! Batches are counted by the node's own metrics (`weft_requests_total`, kind
//! `write_batch`).

mod sync_support;

use std::sync::Arc;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_support::*;
use sync_transport::metrics::{Metrics, RequestKind};
use sync_transport::{ClientConfig, ServerConfig, ServerHandle, serve};
use sync_types::*;

/// Messages the tests push (with the protocol's configure): three pages of the push's
/// local reads (1,000 entries each by default).
const RECORDS: usize = 2_500;

struct HttpNode {
    replica: Replica,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    _server: ServerHandle<ReplicaHandler>,
}

async fn http_node(wide_batches: bool) -> HttpNode {
    let replica = replica(100);
    let metrics = Arc::new(Metrics::new());
    let mut config = ServerConfig::new(key());
    config.metrics = Some(metrics.clone());
    config.wide_batches = wide_batches;
    let server = serve(
        Arc::new(ReplicaHandler::new(replica.clone())),
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    HttpNode {
        replica,
        metrics,
        endpoint,
        _server: server,
    }
}

fn http_engine(r: &Replica, node: &HttpNode) -> Engine<Arc<HttpConnector>> {
    let e = Engine::builder(
        r.clone(),
        Arc::new(HttpConnector::new(ClientConfig::default())),
    )
    .config(fast_config())
    .seed(7)
    .build();
    e.register_identity(Identity::owner(
        tenant(),
        vec![node.endpoint.clone()],
        owner_token(&key()),
    ))
    .unwrap();
    e
}

/// A replica holding the configure and `RECORDS` notes, and its engine's push to
/// `node` run alone (no pull before it: the push's first request is the client's first).
async fn push_records(node: &HttpNode) -> Replica {
    let a = replica(1);
    configure(&a);
    for i in 0..RECORDS {
        put(&a, &format!("n{i}"), format!("{{\"n\":{i}}}").as_bytes());
    }
    let e = http_engine(&a, node);
    let out = e.push(&link(&e)).await.unwrap();
    assert!(out.reached_head, "{out:?}");
    assert_eq!(out.dead_lettered, 0, "{out:?}");
    assert_eq!(out.sent.messages, RECORDS as u64 + 1, "{out:?}");
    assert_eq!(records(&a), records(&node.replica));
    assert_eq!(root(&a), root(&node.replica));
    a
}

fn write_batches(node: &HttpNode) -> u64 {
    node.metrics.requests(RequestKind::WriteBatch, 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_node_before_wide_batches_sends_no_more_than_the_old_limit() {
    let node = http_node(false).await;
    push_records(&node).await;
    // Every batch at most 256 (the node refuses more, and nothing was refused): each
    // page of 1,000 local entries in four, the last 501 in two.
    assert_eq!(node.metrics.requests(RequestKind::WriteBatch, 400), 0);
    assert_eq!(write_batches(&node), 4 + 4 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_node_that_takes_wide_batches_sends_them_after_its_first_reply() {
    let node = http_node(true).await;
    push_records(&node).await;
    // The first page goes in batches of 256 (nothing learned yet); once a reply said
    // the node takes wide batches, each page of the push's reads is one batch.
    assert_eq!(node.metrics.requests(RequestKind::WriteBatch, 400), 0);
    assert_eq!(write_batches(&node), 4 + 1 + 1);
}

/// Wide batches of the largest inline payloads still fit the node's frame limit: a push
/// splits by bytes too (`PUSH_BATCH_BYTES_MAX`, half the default frame limit), so 300
/// records of 32 KiB each (9.4 MiB, more than a frame may hold) go in several batches,
/// none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_batches_of_the_largest_inline_payloads_are_split_by_bytes() {
    const BIG: usize = 300;
    let payload = vec![b'x'; 32 * 1024];
    assert_eq!(payload.len() as u64, INLINE_DATA_BYTES_MAX);
    let node = http_node(true).await;
    let a = replica(1);
    configure(&a);
    for i in 0..BIG {
        let mut data = payload.clone();
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        put(&a, &format!("big{i}"), &data);
    }
    let e = http_engine(&a, &node);
    // Learn first that the node takes wide batches, so only bytes bound the batches.
    let report = e.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(records(&a), records(&node.replica));
    let refused: u64 = [400, 413]
        .iter()
        .map(|&s| node.metrics.requests(RequestKind::WriteBatch, s))
        .sum();
    assert_eq!(refused, 0);
    let total = (BIG * payload.len()) as u64;
    let bytes_max = sync_engine::sync::PUSH_BATCH_BYTES_MAX as u64;
    assert!(
        write_batches(&node) >= total.div_ceil(bytes_max),
        "{} batches for {total} bytes",
        write_batches(&node)
    );
    assert!(bytes_max < sync_transport::frame::FRAME_BYTES_MAX_DEFAULT as u64);
}
