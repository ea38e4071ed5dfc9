//! Failures of a node and of the database under live replicas: a replica names several
//! nodes of one shared store (`http://a,http://b,http://c`), keeps one link with one
//! pair of checkpoints, and moves to the next node when its node goes.

// The tests print what they measured (latencies, counts) for the record, not to assert it.
#![allow(clippy::print_stderr)]

mod cluster_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_support::*;
use sync_engine::Replica;
use sync_types::{PrincipalId, Scope, TenantId};

/// Writes `prefix-0`, `prefix-1`, … every few ms until `stop`; returns the keys written.
fn writer(
    replica: Replica,
    tenant: TenantId,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let author = PrincipalId::new(tenant.as_str()).unwrap();
        let mut keys = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}-{}", keys.len());
            replica
                .put(
                    &tenant,
                    &notes(),
                    &note_path(),
                    key.as_bytes(),
                    key.clone().into_bytes(),
                    &author,
                )
                .unwrap();
            keys.push(key);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        keys
    })
}

/// Everything every replica wrote is on every replica (live), then acknowledged by a
/// node (a one-shot sync of each replica with its driver stopped, which pushes from the
/// push checkpoint), and every replica and every node have one root. The drivers run
/// again afterwards.
async fn converged(reps: &mut [Rep], keys: &[String], nodes: &[&NodeProc], tenant: &TenantId) {
    for (i, r) in reps.iter().enumerate() {
        for key in keys {
            until(&format!("{key} on replica {i}"), || {
                r.value(key).as_deref() == Some(key.as_str())
            })
            .await;
        }
    }
    for (i, r) in reps.iter_mut().enumerate() {
        r.stop().await;
        tokio::time::timeout(WAIT_MAX, r.sync())
            .await
            .unwrap_or_else(|_| panic!("replica {i}: the sync never ended"));
        assert_eq!(r.pending(), 0, "replica {i}: unacknowledged writes");
        r.start_live();
    }
    let root = reps[0].root();
    for (i, r) in reps.iter().enumerate() {
        assert_eq!(r.root(), root, "replica {i}");
    }
    let token = owner_token(tenant);
    for n in nodes {
        assert_eq!(n.root(tenant, &Scope::Full, &token).await, root);
    }
}

/// Three nodes; each replica names all three, starting with a different one. In each
/// of three cycles a node is killed with SIGKILL while all replicas write and watch,
/// then started again on its address. Every write reaches every replica and the
/// database, and each replica's link keeps its checkpoints (same log, positions only
/// moving forward) across the moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_to_another_node_when_theirs_is_killed() {
    let site = Site::new("failover");
    let mut nodes: Vec<NodeProc> = (0..3).map(|_| site.node(&[])).collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let t = tenant("failover");
    let mut reps: Vec<Rep> = (0..3)
        .map(|i| {
            let list: Vec<&str> = (0..3).map(|j| urls[(i + j) % 3].as_str()).collect();
            Rep::new(&t, &list.join(","))
        })
        .collect();
    reps[0].configure();
    reps[0].sync().await;
    for r in &mut reps {
        r.sync().await;
        r.start_live();
    }
    let mut all_keys = Vec::new();
    let mut last_pull = vec![None; 3];
    for cycle in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = reps
            .iter()
            .enumerate()
            .map(|(i, r)| {
                writer(
                    r.replica.clone(),
                    t.clone(),
                    format!("c{cycle}-r{i}"),
                    stop.clone(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let victim = cycle % 3;
        let listen = nodes[victim].authority().to_owned();
        nodes[victim].kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            all_keys.extend(w.await.unwrap());
        }
        // The replicas whose first node is dead carry on through the others.
        let alive: Vec<&NodeProc> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, n)| n)
            .collect();
        converged(&mut reps, &all_keys, &alive, &t).await;
        for (i, r) in reps.iter().enumerate() {
            let state = r
                .engine
                .links()
                .unwrap()
                .into_iter()
                .find(|l| l.key == r.link)
                .unwrap();
            let pull = state.pull.contiguous_applied.expect("pulled something");
            if let Some(before) = last_pull[i] {
                let before: sync_types::ProgressToken = before;
                assert!(before.same_domain(&pull), "replica {i} changed logs");
                assert!(pull.position >= before.position, "replica {i} went back");
            }
            last_pull[i] = Some(pull);
        }
        nodes[victim] = site.node_at(&listen, &[]);
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    converged(&mut reps, &all_keys, &all, &t).await;
    eprintln!(
        "{} writes over 3 kill -9 cycles, all converged",
        all_keys.len()
    );
    for r in &mut reps {
        r.stop().await;
    }
}

/// The database crashes (`pg_ctl stop -m immediate`) and comes back while replicas
/// write live through two nodes: the nodes reconnect (their pools, their bus), the
/// replicas retry and resume without a repair, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_during_live_sync_loses_nothing() {
    let cluster = pg::Cluster::start();
    let site = Site::on(cluster.url.clone(), "pgrestart");
    let nodes: Vec<NodeProc> = (0..2).map(|_| site.node(&[])).collect();
    let t = tenant("pgrestart");
    let mut reps: Vec<Rep> = nodes.iter().map(|n| Rep::new(&t, &n.url)).collect();
    reps[0].configure();
    reps[0].sync().await;
    for r in &mut reps {
        r.sync().await;
        r.start_live();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = reps
        .iter()
        .enumerate()
        .map(|(i, r)| writer(r.replica.clone(), t.clone(), format!("r{i}"), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.crash_server();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_server();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut keys = Vec::new();
    for w in writers {
        keys.extend(w.await.unwrap());
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    converged(&mut reps, &keys, &all, &t).await;
    // A write after the restart still reaches the other node's replica live.
    reps[1].put("after", "the restart");
    until("the write after the restart", || {
        reps[0].value("after").as_deref() == Some("the restart")
    })
    .await;
    // The nodes told subscribers they could not read their log for now: the links
    // reconnected from their checkpoints and never ran a repair.
    for r in &reps {
        assert_eq!(
            r.repairs().await,
            0,
            "a database restart sent a link to repair: {}",
            nodes
                .iter()
                .map(|n| n.stderr())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
    for n in &nodes {
        until("the bus listens again", || {
            n.metric("weft_bus_listening") == 1.0
        })
        .await;
        assert!(
            n.metric("weft_bus_reconnects_total") >= 1.0,
            "{}",
            n.stderr()
        );
    }
    for r in &mut reps {
        r.stop().await;
    }
}
