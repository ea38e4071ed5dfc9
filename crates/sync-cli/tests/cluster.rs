//! Several node processes on one PostgreSQL database (`weft serve --store
//! postgres://…`): any node serves any tenant, a write accepted by one reaches the
//! subscriptions of the others at once, and every node's Merkle trees give the same
//! answer, whichever node took the writes.

// The tests print what they measured (latencies, counts) for the record, not to assert it.
#![allow(clippy::print_stderr)]

mod cluster_support;
#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use cluster_support::*;
use sync_types::{ProtocolSet, Scope};

/// Three nodes, three replicas each live on a different node; every replica writes in
/// turn and every write reaches the other two. The nodes re-read the log on their own
/// only every ten minutes, so within the test's patience a write reaches another node's
/// subscribers only through the bus's wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_fan_every_write_out_to_every_replica_live() {
    let site = Site::new("fanout");
    let poll = ["--live-poll-interval-ms", SLOW_POLL_MS];
    let nodes: Vec<NodeProc> = (0..3).map(|_| site.node(&poll)).collect();
    let t = tenant("fanout");
    let mut reps: Vec<Rep> = nodes.iter().map(|n| Rep::new(&t, &n.url)).collect();
    reps[0].configure();
    reps[0].sync().await;
    for r in &mut reps[1..] {
        r.sync().await;
    }
    for r in &mut reps {
        r.start_live();
    }
    let writes = 30;
    let mut latencies = Vec::new();
    for i in 0..writes {
        let writer = i % 3;
        let key = format!("k{i}");
        let value = format!("written through node {writer}");
        reps[writer].put(&key, &value);
        for (j, r) in reps.iter().enumerate().filter(|(j, _)| *j != writer) {
            let took = until(&format!("{key} on replica {j}"), || {
                r.value(&key).as_deref() == Some(value.as_str())
            })
            .await;
            latencies.push(took);
        }
    }
    latencies.sort();
    eprintln!(
        "cross-node live propagation over {} deliveries: p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // Everything acknowledged, and the same set everywhere: replicas and every node.
    for r in &reps {
        until("nothing pending", || r.pending() == 0).await;
    }
    let root = reps[0].root();
    assert!(reps.iter().all(|r| r.root() == root));
    let token = owner_token(&t);
    for n in &nodes {
        assert_eq!(n.root(&t, &Scope::Full, &token).await, root);
        assert!(n.metric("weft_bus_heard_total") > 0.0);
        assert_eq!(n.metric("weft_bus_listening"), 1.0);
    }
    for r in &mut reps {
        r.stop().await;
    }
}

/// Writes through one node, roots and a reconcile through another: the second node's
/// trees follow the log (overwrites and deletes prune versions, which the log records),
/// stay right when evicted and loaded again (a cache of one tenant with two tenants in
/// use), and a replica that reconciles through it converges with the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diff_through_another_node_gives_the_right_answer() {
    let site = Site::new("trees");
    let a = site.node(&[]);
    let b = site.node(&["--tree-cache-tenants-max", "1"]);
    let (t1, t2) = (tenant("one"), tenant("two"));
    let (tok1, tok2) = (owner_token(&t1), owner_token(&t2));
    let w1 = Rep::new(&t1, &a.url);
    let w2 = Rep::new(&t2, &a.url);
    let only_notes = Scope::ProtocolSet(ProtocolSet::new(vec![notes()]).unwrap());
    w1.configure();
    w2.configure();
    for round in 0..4 {
        for i in 0..20 {
            w1.put(&format!("k{i}"), &format!("v{round}"));
            w2.put(&format!("k{i}"), &format!("w{round}"));
        }
        if round > 0 {
            for i in (round..20).step_by(5) {
                w1.delete(&format!("k{i}"));
            }
        }
        w1.sync().await;
        w2.sync().await;
        // Node B never took a write: its trees follow the log, and with room for one
        // tenant, each question about the other loads it again.
        assert_eq!(
            b.root(&t1, &Scope::Full, &tok1).await,
            w1.root(),
            "round {round}"
        );
        assert_eq!(
            b.root(&t2, &Scope::Full, &tok2).await,
            w2.root(),
            "round {round}"
        );
        assert_eq!(
            b.root(&t1, &only_notes, &tok1).await,
            *w1.replica.root(&t1, &only_notes).unwrap().as_bytes(),
            "round {round}"
        );
    }
    assert!(b.metric("weft_tree_evictions_total") > 0.0);
    assert!(b.metric("weft_tree_followed_entries_total") > 0.0);

    // A replica with writes of its own reconciles through B: both sides end equal.
    let r = Rep::new(&t1, &b.url);
    r.configure();
    r.put("mine", "only here");
    r.put("k1", "a concurrent edit");
    r.sync().await;
    w1.sync().await;
    assert_eq!(w1.value("mine").as_deref(), Some("only here"));
    assert_eq!(r.root(), w1.root());
    assert_eq!(a.root(&t1, &Scope::Full, &tok1).await, r.root());
    assert_eq!(b.root(&t1, &Scope::Full, &tok1).await, r.root());
    let _ = Duration::ZERO;
}

/// `weft health --node` with several nodes asks the first that answers and says which
/// one did: here the first named is gone.
#[test]
fn health_names_the_node_that_answered() {
    let site = Site::new("health");
    let live = site.node(&[]);
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let t = tenant("health");
    let out = std::process::Command::new(WEFT)
        .args(["health", "--json", "--node"])
        .arg(format!("{gone},{}", live.url))
        .args(["--token", &owner_token(&t)])
        .env_remove("WEFT_NODE")
        .env_remove("WEFT_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["node"], live.url.as_str());
}

/// The store keeps a check of the token key it is served with: a node given another
/// key file (one not copied from the other nodes) refuses to start, a missing key file
/// is not replaced by a new key, and `--replace-key` is how an operator changes keys.
#[test]
fn a_node_with_another_key_refuses_to_start() {
    let site = Site::new("keycheck");
    let first = site.node(&[]);
    let other = site.dir.path().join("other.key");
    std::fs::write(&other, "ab".repeat(32)).unwrap();
    let refused = |key: &Path| {
        let out = site
            .serve_command(key, "127.0.0.1:0", &[])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        stderr
    };
    let stderr = refused(&other);
    assert!(
        stderr.contains("is not the key this store is served with"),
        "{stderr}"
    );
    let missing = site.dir.path().join("missing.key");
    let stderr = refused(&missing);
    assert!(
        stderr.contains("copy the key file of its other nodes"),
        "{stderr}"
    );
    assert!(
        !missing.exists(),
        "a new key was created for a served store"
    );
    // The first node still accepts the tokens of its key.
    let out = std::process::Command::new(WEFT)
        .args(["health", "--json", "--node", &first.url])
        .args(["--token", &owner_token(&tenant("keycheck"))])
        .env_remove("WEFT_NODE")
        .env_remove("WEFT_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(first);
    // An operator replacing the key on purpose: the new key starts, the old one is
    // refused from then on.
    let replaced = site.spawn(site.serve_command(&other, "127.0.0.1:0", &["--replace-key"]));
    drop(replaced);
    let stderr = refused(&site.key_file);
    assert!(
        stderr.contains("is not the key this store is served with"),
        "{stderr}"
    );
}

/// Blobs live in the database: a blob one replica uploads through node A downloads
/// through node B to another replica, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_uploaded_through_one_node_downloads_through_another() {
    let site = Site::new("blobs");
    let (a, b) = (site.node(&[]), site.node(&[]));
    let t = tenant("blobs");
    let writer = Rep::new(&t, &a.url);
    let reader = Rep::new(&t, &b.url);
    writer.configure();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| i.wrapping_mul(2_654_435_761).to_be_bytes()[1])
        .collect();
    let data = writer.replica.write_blob(&bytes[..]).unwrap();
    let id = writer.put_blob("photo", data);
    writer.sync().await;
    assert_eq!(writer.pending(), 0);

    reader.sync().await;
    until("the blob through node B", || {
        reader.replica.residency(&t, &id).unwrap() == sync_engine::blob::Residency::Resident
    })
    .await;
    assert_eq!(
        reader
            .replica
            .read_blob(&data.data_cid, 0, data.size)
            .unwrap(),
        bytes
    );
    assert_eq!(reader.root(), writer.root());
}

/// Two nodes never write one upload: while a tenant's upload of a blob streams into
/// node A, the same upload sent to node B is refused (retry later), and once A's
/// request ends the blob is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_in_progress_on_one_node_is_refused_by_another() {
    use futures_util::StreamExt as _;
    use sync_transport::proto::{BlobStatRequest, BlobWriteRequest};
    use sync_transport::{ClientConfig, HttpClient, Remote as _};

    let site = Site::new("upload_owner");
    let (a, b) = (site.node(&[]), site.node(&[]));
    let t = tenant("uploads");
    let token = owner_token(&t);
    let client = |url: &str| {
        HttpClient::with_token_text(
            &sync_types::Endpoint::new(url).unwrap(),
            &token,
            ClientConfig::default(),
        )
        .unwrap()
    };
    let (to_a, to_b) = (client(&a.url), client(&b.url));
    let bytes: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i % 251).to_le_bytes()[0])
        .collect();
    let cid = sync_types::Cid::of_data(&bytes);
    let whole = BlobWriteRequest {
        tenant: t.clone(),
        cid,
        total_size: bytes.len() as u64,
        offset: 0,
        len: bytes.len() as u64,
    };

    // A's request sends its first 200 KiB, then waits for the test.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let source = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let upload_a = tokio::spawn({
        let req = whole.clone();
        async move { to_a.blob_write(req, source).await }
    });
    tx.send(Ok(bytes::Bytes::copy_from_slice(&bytes[..200 * 1024])))
        .await
        .unwrap();
    // The table appears with the first claim.
    until("node A owns the upload", || {
        site.try_rows("blob_owners").is_ok_and(|n| n == 1)
    })
    .await;

    // The same upload through B: refused, nothing written by B.
    let refused = to_b
        .blob_write(
            whole.clone(),
            futures_util::stream::iter([Ok(bytes::Bytes::from(bytes.clone()))]).boxed(),
        )
        .await;
    let err = refused.expect_err("B must not write A's upload");
    assert!(
        err.to_string().contains("already uploading"),
        "refused for another reason: {err}"
    );

    // A's request goes on to the end: the blob is stored, whole.
    tx.send(Ok(bytes::Bytes::copy_from_slice(&bytes[200 * 1024..])))
        .await
        .unwrap();
    drop(tx);
    let stat = upload_a.await.unwrap().unwrap();
    assert!(stat.complete);
    assert_eq!(stat.received_bytes, bytes.len() as u64);
    let stat_a = client(&a.url)
        .blob_stat(BlobStatRequest {
            tenant: t.clone(),
            cid,
            scope: Scope::Full,
        })
        .await
        .unwrap();
    assert!(stat_a.complete, "A's uploader may read what it uploaded");
    assert_eq!(
        site.rows("blob_owners"),
        0,
        "the finished upload gave its row back"
    );
}

/// `weft status` shows which of the nodes a link names it talks to: the one that
/// answered its last sync, here the second named (the first is gone), then, once that
/// one is killed, the third. Each node's metrics say which node they are.
#[test]
fn status_shows_the_node_a_link_talks_to() {
    let site = Site::new("status");
    let a = site.node(&[]);
    let mut b = site.node(&[]);
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let t = tenant("status");
    let store = site.dir.path().join("replica");
    let nodes = format!("{gone},{},{}", b.url, a.url);
    let weft = |args: &[&str]| {
        let out = std::process::Command::new(WEFT)
            .args(args)
            .arg("--store")
            .arg(&store)
            .env("WEFT_NODE", &nodes)
            .env("WEFT_TOKEN", owner_token(&t))
            .env("WEFT_TENANT", t.as_str())
            .env("HOME", site.dir.path())
            .env("XDG_DATA_HOME", site.dir.path().join("xdg"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "weft {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let talks_to = |weft: &dyn Fn(&[&str]) -> String| {
        let v: serde_json::Value = serde_json::from_str(&weft(&["status", "--json"])).unwrap();
        let link = v["links"].as_array().unwrap().first()?.clone();
        assert_eq!(link["node"], nodes.as_str());
        link["talks_to"].as_str().map(str::to_owned)
    };
    weft(&["put", "greeting", "hello"]);
    assert_eq!(talks_to(&weft), None, "no link yet");
    weft(&["sync"]);
    assert_eq!(talks_to(&weft).as_deref(), Some(b.url.as_str()));
    let table = weft(&["status"]);
    assert!(table.contains("TALKS TO"), "{table}");
    assert!(table.contains(&b.url), "{table}");

    b.kill9();
    weft(&["put", "greeting", "again"]);
    // The sync's summary names the node that answered, too.
    let summary = weft(&["sync"]);
    assert!(
        summary.starts_with(&format!("synced with {} (of {nodes})", a.url)),
        "{summary}"
    );
    assert_eq!(talks_to(&weft).as_deref(), Some(a.url.as_str()));
    assert!(weft(&["status"]).contains(&a.url));

    // The node's own metrics name it, so two nodes' metrics are told apart.
    let (_, metrics) = a.get("/metrics");
    assert!(
        metrics.contains(&format!("weft_node_info{{node=\"{}\"}} 1", a.url)),
        "{metrics}"
    );
}

/// A node's apply of a pushed batch reads what it checks (held messages, record rows)
/// in batched reads: a batch of 500 messages sends the database as many statements as
/// a batch of 10 (each check was a round trip per message before).
#[test]
fn a_pushed_batch_costs_a_node_the_same_statements_for_10_and_500_messages() {
    use sync_engine::{Origin, Replica};
    use sync_types::ApplyOutcome;

    let schema = pg::fresh_schema("push_statements");
    let store = sync_ledger_pg::PgStore::builder(pg::url())
        .schema(&schema)
        .open()
        .unwrap();
    let replica = Replica::builder()
        .with_ledger(sync_ledger::Ledger::open(store.clone()).unwrap())
        .unwrap();
    let t = tenant("counted");
    let p = common::protocol("test:counted");
    let pushed = |batch: Vec<(sync_types::Message, Option<Vec<u8>>)>| {
        let before = store.statements_sent();
        let out = replica.apply(&t, batch, Origin::Remote(None)).unwrap();
        assert!(out.iter().all(|o| *o == ApplyOutcome::Applied), "{out:?}");
        store.statements_sent() - before
    };
    // The tenant, the protocol and a first record exist before counting.
    pushed(vec![(common::configure(&t, &p, 1), None)]);
    pushed(vec![common::write(&t, &p, "first", None, 2, b"x")]);
    let mut counts = Vec::new();
    for (phase, n) in [10usize, 500].into_iter().enumerate() {
        let ts = 10 * (phase as u64 + 1);
        let batch = (0..n)
            .map(|i| common::write(&t, &p, &format!("n{n}-{i}"), None, ts, b"pushed"))
            .collect();
        counts.push((n, pushed(batch)));
    }
    eprintln!("statements per pushed batch (messages, statements): {counts:?}");
    assert_eq!(counts[0].1, counts[1].1, "{counts:?}");
}
