//! A replica killed with kill -9 in the middle of a sync restarts and converges without
//! losing an acknowledged write.
//!
//! The test re-runs its own binary as the replica (the child role is selected by an
//! environment variable): the child writes records on a fjall store, printing `ack <n>`
//! after each write returns, and syncs with a node over HTTP in a loop, printing
//! `syncing` before each sync. The parent serves the node, kills the child right after
//! it announced a sync (so the kill lands inside one), reopens the store, syncs to
//! quiescence and checks every acknowledged write on both sides.

// The child's stdout is its channel to the parent: one line per acknowledged write.
#![allow(clippy::print_stdout)]

mod sync_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_support::*;
use sync_transport::{ServerConfig, serve};
use sync_types::*;

const CHILD_ENV: &str = "WEFT_SYNC_CRASH_CHILD";
const TEST_NAME: &str = "a_replica_killed_mid_sync_restarts_and_converges";
/// Writes between two syncs in the child.
const WRITES_PER_ROUND: usize = 40;
/// Syncs the child starts before it is killed (the kill lands in the last one).
const ROUNDS_BEFORE_KILL: usize = 4;

#[test]
fn a_replica_killed_mid_sync_restarts_and_converges() {
    match std::env::var(CHILD_ENV) {
        Ok(spec) => child(&spec),
        Err(_) => parent(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn child(spec: &str) {
    let (dir, endpoint) = spec.split_once('|').expect("dir|endpoint");
    let endpoint = Endpoint::new(endpoint).unwrap();
    runtime().block_on(async {
        let r = Replica::builder().node_id(NodeId(1)).open(dir).unwrap();
        let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default())).build();
        engine
            .register_identity(Identity::owner(
                tenant(),
                vec![endpoint],
                owner_token(&key()),
            ))
            .unwrap();
        configure(&r);
        let mut n = 0usize;
        loop {
            for _ in 0..WRITES_PER_ROUND {
                put(&r, &format!("k{n}"), format!("value {n}").as_bytes());
                // The write returned: it is acknowledged.
                println!("ack {n}");
                n += 1;
            }
            println!("syncing");
            let report = engine.sync_once().await;
            assert!(report.is_ok(), "{report:?}");
            println!("synced");
        }
    });
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = replica(100);
    let server = rt
        .block_on(serve(
            Arc::new(ReplicaHandler::new(node.clone())),
            ServerConfig::new(key()),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let endpoint = format!("http://{}", server.local_addr());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{endpoint}", dir.path().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let mut syncs = 0;
    let mut completed_syncs = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        // With --nocapture the harness prints "test <name> ... " before the first line.
        let line = line.rsplit(" ... ").next().unwrap_or_default();
        if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse::<usize>().unwrap());
        } else if line == "synced" {
            completed_syncs += 1;
        } else if line == "syncing" {
            syncs += 1;
            if syncs == ROUNDS_BEFORE_KILL {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    // Lines the child printed before it died are acknowledgements too.
    for line in lines {
        let Ok(line) = line else { break };
        let line = line.rsplit(" ... ").next().unwrap_or_default();
        if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse::<usize>().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    assert!(completed_syncs >= ROUNDS_BEFORE_KILL - 1);
    assert_eq!(acked.len(), ROUNDS_BEFORE_KILL * WRITES_PER_ROUND);

    // Restart on the same store: the registration, links and checkpoints are there.
    rt.block_on(async {
        let r = Replica::builder()
            .node_id(NodeId(1))
            .open(dir.path())
            .unwrap();
        let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default())).build();
        assert_eq!(engine.identities().unwrap().len(), 1);
        for &n in &acked {
            assert_eq!(
                get(&r, &format!("k{n}")),
                Some(format!("value {n}").into_bytes()),
                "acknowledged write {n} lost by the replica"
            );
        }
        sync_until_quiet(&engine, 4).await;
        for &n in &acked {
            assert_eq!(
                get(&node, &format!("k{n}")),
                Some(format!("value {n}").into_bytes()),
                "acknowledged write {n} never reached the node"
            );
        }
        assert_eq!(root(&r), root(&node));
        assert_eq!(records(&r), records(&node));
        assert!(engine.dead_letters().unwrap().is_empty());
        let health = engine.health().unwrap();
        assert!(health.healthy, "{health:?}");
        assert_eq!(health.pending_outbound, 0);
    });
    drop(server);
}
