//! Sync of a 1% projection of a tenant against a full sync of the same tenant, over
//! loopback HTTP, printed as a markdown table for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin projection_bench [-- RECORDS]` (default
//! 100,000 records; 1 in 100 is a `star` record, the rest `note` records).
//!
//! A node (in this process, on fjall) holds the records. One empty replica syncs the
//! full scope, another a projection of the `star` path; the table gives time, messages
//! and message bytes pulled for each.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Origin, Replica, ReplicaHandler};
use sync_transport::{Claims, ServerConfig, Token, TokenKey, serve};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:bench").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:bench").unwrap()
}
fn path(s: &str) -> ProtocolPath {
    ProtocolPath::new(s).unwrap()
}

/// The node's messages: a configure, then 64-byte records, every 100th a `star`.
fn messages(n: u64) -> Vec<(Message, Option<Vec<u8>>)> {
    let base_ms = SystemClock.now_ms() - 10_000_000;
    let ts = |i: u64| Hlc {
        wall_ms: base_ms + i / 8,
        counter: u32::try_from(i % 8).unwrap(),
        node: NodeId(9),
    };
    let p = protocol();
    let types = ["note", "star"]
        .map(|s| TypeRule {
            path: path(s),
            data_bytes_max: None,
        })
        .to_vec();
    let configure = Message::Configure(Configure {
        tenant: tenant(),
        protocol: p.clone(),
        definition: ProtocolDefinition::new(&p, types, vec![]).unwrap(),
        timestamp: Hlc {
            wall_ms: base_ms - 1,
            counter: 0,
            node: NodeId(9),
        },
        author: author(),
    });
    let mut out = vec![(configure, None)];
    for i in 0..n {
        let record_id = RecordId::from_natural_key(&tenant(), &p, &i.to_be_bytes());
        let mut data = format!("record {i:>12} ").into_bytes();
        data.resize(64, b'.');
        let m = Message::Write(Write {
            tenant: tenant(),
            record_id,
            parent_id: None,
            protocol: p.clone(),
            path: path(if i % 100 == 0 { "star" } else { "note" }),
            context_id: ContextId::root(record_id),
            prev: None,
            timestamp: ts(i),
            author: author(),
            data: Some(DataRef::of(&data)),
        });
        out.push((m, Some(data)));
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let node = Replica::builder()
        .durability(sync_ledger::Durability::Buffered)
        .open(dirs[0].path())
        .unwrap();
    for chunk in messages(records).chunks(1_000) {
        let out = node
            .apply(&tenant(), chunk.to_vec(), Origin::Remote(None))
            .unwrap();
        assert!(out.iter().all(ApplyOutcome::is_success));
    }
    let key = TokenKey::derive(b"projection bench");
    let server = serve(
        Arc::new(ReplicaHandler::new(node.clone())),
        ServerConfig::new(key.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    let token = Token::issue(
        &key,
        Claims::owner(tenant(), author(), GrantId::new("g").unwrap(), u64::MAX),
    )
    .to_string();
    let stars = Scope::projection(vec![ProjectionEntry {
        protocol: protocol(),
        path_prefixes: vec![path("star")],
        context_prefixes: vec![],
    }])
    .unwrap();

    println!("### Projection sync: {records} records, 1% in the projection\n");
    println!(
        "| scope | time (s) | messages pulled | message bytes pulled | replica root = node root over the scope |"
    );
    println!("|---|---:|---:|---:|---|");
    for (name, scope, dir) in [
        ("full", Scope::Full, &dirs[1]),
        ("projection (star)", stars, &dirs[2]),
    ] {
        let replica = Replica::open(dir.path()).unwrap();
        let engine =
            Engine::builder(replica.clone(), HttpConnector::new(Default::default())).build();
        engine
            .register_identity(Identity {
                scope: scope.clone(),
                ..Identity::owner(tenant(), vec![endpoint.clone()], token.clone())
            })
            .unwrap();
        let started = Instant::now();
        let report = engine.sync_once().await;
        let elapsed = started.elapsed();
        assert!(report.is_ok(), "{report:?}");
        let pulled = report.pulled();
        let same =
            replica.root(&tenant(), &scope).unwrap() == node.root(&tenant(), &scope).unwrap();
        println!(
            "| {name} | {:.2} | {} | {} | {same} |",
            elapsed.as_secs_f64(),
            pulled.messages,
            pulled.bytes
        );
    }
    server.shutdown().await;
}
