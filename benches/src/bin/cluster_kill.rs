//! The long failover run: three `weft serve --store postgres://…` node processes on one
//! database, three replicas live on them (each names all three nodes, starting with a
//! different one) writing and watching, and `cycles` times (default 50) one node killed
//! with SIGKILL and started again on its address. Checks that nothing acknowledged is
//! lost and that the replicas and the database converge; prints the figures for
//! BENCHMARKS.md.
//!
//! Usage: `cargo build --release -p sync-cli && cargo run --release -p benches --bin
//! cluster_kill [-- <cycles> [<write every ms>]]` (defaults 50 and 100). The node binary is `weft` beside this one
//! (`target/release/weft`), or `WEFT_BIN`. The database is `WEFT_TEST_PG_URL` when set,
//! else a throwaway cluster this process starts (as `sync-ledger-pg`'s tests do).
//!
//! Each cycle: every replica writes a record every 100 ms (by default); after 150 ms node `cycle % 3`
//! is killed; the replica whose first node it was writes a marker at once, and the time
//! until both other replicas show the marker is the cycle's *failover delivery* (the
//! replica's calls fail, it moves to the next node, pushes, and the others' nodes wake
//! their subscriptions); after 300 ms more of writing the node is started again.
//! After each cycle every replica's pull checkpoint must be in the same log and no
//! lower than before. At the end the writers stop, every replica must hold every
//! record written anywhere, a one-shot sync of each must leave nothing unacknowledged,
//! and every replica and every node must have one root.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../crates/sync-ledger-pg/tests/support/mod.rs"]
mod pg;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica};
use sync_transport::proto::RootRequest;
use sync_transport::{
    Claims, ClientConfig, FailoverConnector, HttpClient, Remote as _, Token, TokenKey,
};
use sync_types::*;

type Conn = FailoverConnector<HttpConnector>;

const KEY: [u8; 32] = [9; 32];
/// Each replica's default pause between two writes, in ms: three replicas write 30
/// records a second, well within what the cluster delivers on this loaded machine (at
/// 150 or 600 a second a backlog grows over the cycles, and the failover figures
/// measure the backlog instead of the failover).
const WRITE_EVERY_MS_DEFAULT: u64 = 100;
/// Longest wait for anything (a failure, not a measurement).
const WAIT_MAX: Duration = Duration::from_secs(120);

fn tenant() -> TenantId {
    TenantId::new("chaos").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("bench:notes").unwrap()
}
fn path() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("chaos").unwrap()
}
fn token() -> String {
    let claims = Claims::owner(
        tenant(),
        author(),
        GrantId::new("bench").unwrap(),
        u64::MAX / 2,
    );
    Token::issue(&TokenKey::from_bytes(KEY), claims).to_string()
}

fn weft_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WEFT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().join("weft");
    assert!(
        bin.exists(),
        "no node binary at {}: run `cargo build --release -p sync-cli` first, or set WEFT_BIN",
        bin.display()
    );
    bin
}

/// A node process; killed with SIGKILL when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn start(dir: &Path, url: &str, schema: &str, listen: &str, n: usize) -> Node {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node{n}.log")))
            .unwrap();
        let mut c = Command::new(weft_bin());
        c.args(["serve", "--store", url, "--store-schema", schema])
            .arg("--key-file")
            .arg(dir.join("node.key"))
            .args(["--listen", listen, "--blob-gc-interval-ms", "0"])
            .current_dir(dir)
            .env("HOME", dir);
        for (k, _) in std::env::vars() {
            if k.starts_with("WEFT_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        // The nodes' own log filter (e.g. `sync_transport=debug,info`), for a run
        // that looks into a stall.
        if let Ok(filter) = std::env::var("CLUSTER_KILL_NODE_LOG") {
            c.args(["--log", &filter]);
        }
        c.stdout(Stdio::piped()).stderr(log);
        let mut child = c.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        let url = url.unwrap_or_else(|| panic!("node {n} never listened (see node{n}.log)"));
        Node { child, url }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn root(&self) -> [u8; 32] {
        let client = HttpClient::with_token_text(
            &Endpoint::new(&self.url).unwrap(),
            &token(),
            ClientConfig::default(),
        )
        .unwrap();
        client
            .root(RootRequest {
                tenant: tenant(),
                scope: Scope::Full,
            })
            .await
            .unwrap()
            .root
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Rep {
    replica: Replica,
    engine: Engine<Conn>,
    link: LinkKey,
    live: Option<LiveSync<Conn>>,
}

fn link_config() -> LinkConfig {
    LinkConfig {
        reconnect_backoff_ms: vec![50, 100, 250],
        repair_backoff_ms: vec![100, 250, 500],
        reconcile_delay_ms: 100,
        ..LinkConfig::default()
    }
}

impl Rep {
    fn new(endpoint: &str) -> Rep {
        let replica = Replica::builder().in_memory().unwrap();
        let engine = Engine::builder(
            replica.clone(),
            FailoverConnector::new(HttpConnector::new(ClientConfig::default())),
        )
        .build();
        let link = engine
            .register_identity(Identity::owner(
                tenant(),
                vec![Endpoint::new(endpoint).unwrap()],
                token(),
            ))
            .unwrap()
            .remove(0);
        Rep {
            replica,
            engine,
            link,
            live: None,
        }
    }

    fn put(&self, key: &str) {
        self.replica
            .put(
                &tenant(),
                &protocol(),
                &path(),
                key.as_bytes(),
                key.as_bytes().to_vec(),
                &author(),
            )
            .unwrap();
    }

    fn has(&self, key: &str) -> bool {
        self.replica
            .get_by_key(&tenant(), &protocol(), key.as_bytes())
            .unwrap()
            .is_some_and(|r| !r.deleted)
    }

    fn root(&self) -> [u8; 32] {
        *self
            .replica
            .root(&tenant(), &Scope::Full)
            .unwrap()
            .as_bytes()
    }

    async fn sync(&self) {
        let report = self.engine.sync_link(&self.link).await;
        assert!(report.error.is_none(), "sync failed: {:?}", report.error);
    }

    fn start_live(&mut self) {
        self.live = Some(LiveSync::start(self.engine.clone(), link_config()).unwrap());
    }

    async fn stop_live(&mut self) {
        if let Some(l) = self.live.take() {
            l.stop(Duration::from_secs(5)).await;
        }
    }

    fn pull_checkpoint(&self) -> Option<ProgressToken> {
        self.engine
            .links()
            .unwrap()
            .into_iter()
            .find(|l| l.key == self.link)
            .and_then(|l| l.pull.contiguous_applied)
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT_MAX, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed()
}

/// Writes `prefix-0`, `prefix-1`, … every `every` until `stop`; returns the keys.
fn writer(
    replica: Replica,
    prefix: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut keys = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}-{}", keys.len());
            replica
                .put(
                    &tenant(),
                    &protocol(),
                    &path(),
                    key.as_bytes(),
                    key.clone().into_bytes(),
                    &author(),
                )
                .unwrap();
            keys.push(key);
            tokio::time::sleep(every).await;
        }
        keys
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cycles = args
        .first()
        .map_or(50, |&c| usize::try_from(c).unwrap_or(usize::MAX));
    let every = Duration::from_millis(args.get(1).copied().unwrap_or(WRITE_EVERY_MS_DEFAULT));
    let url = tokio::task::spawn_blocking(pg::url).await.unwrap();
    let schema = pg::fresh_schema("chaos");
    let dir = tempfile::tempdir().unwrap();
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.path().join("node.key"), hex).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.path().join("node.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let mut nodes: Vec<Node> = (0..3)
        .map(|n| Node::start(dir.path(), &url, &schema, "127.0.0.1:0", n))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let mut reps: Vec<Rep> = (0..3)
        .map(|i| {
            let list: Vec<&str> = (0..3).map(|j| urls[(i + j) % 3].as_str()).collect();
            Rep::new(&list.join(","))
        })
        .collect();
    reps[0]
        .replica
        .configure(
            &tenant(),
            &protocol(),
            vec![TypeRule {
                path: path(),
                data_bytes_max: None,
            }],
            vec![],
            &author(),
        )
        .unwrap();
    for r in &mut reps {
        r.sync().await;
    }
    for r in &mut reps {
        r.start_live();
    }
    let started = Instant::now();
    let mut all_keys: Vec<String> = Vec::new();
    let mut failover = Vec::new();
    let mut restarts = Vec::new();
    let mut last_pull: Vec<Option<ProgressToken>> = vec![None; 3];
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = reps
            .iter()
            .enumerate()
            .map(|(i, r)| {
                writer(
                    r.replica.clone(),
                    format!("c{cycle}-r{i}"),
                    every,
                    stop.clone(),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let victim = cycle % 3;
        let listen = nodes[victim].url.trim_start_matches("http://").to_owned();
        nodes[victim].kill9();
        let marker = format!("marker-{cycle}");
        reps[victim].put(&marker);
        all_keys.push(marker.clone());
        let t0 = Instant::now();
        while !reps.iter().all(|r| r.has(&marker)) {
            if t0.elapsed() > WAIT_MAX {
                for (i, r) in reps.iter().enumerate() {
                    let link = r
                        .engine
                        .links()
                        .unwrap()
                        .into_iter()
                        .find(|l| l.key == r.link)
                        .unwrap();
                    eprintln!(
                        "replica {i}: has the marker {}, pending {}, status {}, connectivity {}, talks to {:?}",
                        r.has(&marker),
                        r.engine.pending_outbound(&r.link).unwrap(),
                        link.status.as_str(),
                        link.connectivity.as_str(),
                        r.engine.connector().reached(&r.link.endpoint),
                    );
                }
                panic!("cycle {cycle}: {marker} never reached every replica");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        failover.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            all_keys.extend(w.await.unwrap());
        }
        for (i, r) in reps.iter().enumerate() {
            if let Some(pull) = r.pull_checkpoint() {
                if let Some(before) = last_pull[i] {
                    assert!(before.same_domain(&pull), "replica {i} changed logs");
                    assert!(pull.position >= before.position, "replica {i} went back");
                }
                last_pull[i] = Some(pull);
            }
        }
        let t0 = Instant::now();
        nodes[victim] = Node::start(dir.path(), &url, &schema, &listen, victim);
        restarts.push(t0.elapsed());
        if (cycle + 1) % 10 == 0 {
            eprintln!(
                "{} cycles, {} writes, {:.0} s",
                cycle + 1,
                all_keys.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Everything everywhere, live.
    let t0 = Instant::now();
    let wanted: HashSet<&String> = all_keys.iter().collect();
    for (i, r) in reps.iter().enumerate() {
        for key in &wanted {
            until(&format!("{key} on replica {i}"), || r.has(key)).await;
        }
    }
    let live_converged = t0.elapsed();
    // Acknowledged by the database: a one-shot sync of each replica leaves nothing
    // pending, and every replica and node has one root.
    for r in &mut reps {
        r.stop_live().await;
        r.sync().await;
        assert_eq!(
            r.engine.pending_outbound(&r.link).unwrap(),
            0,
            "unacknowledged writes"
        );
    }
    let root = reps[0].root();
    for (i, r) in reps.iter().enumerate() {
        assert_eq!(r.root(), root, "replica {i} differs");
    }
    for n in &nodes {
        assert_eq!(n.root().await, root, "node {} differs", n.url);
    }
    failover.sort();
    restarts.sort();
    let pct = |v: &[Duration], per_mille: usize| v[(v.len() - 1) * per_mille / 1000];
    println!(
        "| cycles | writes | run s | failover delivery p50 / p90 / max ms | node restart p50 / max ms | live convergence after the last cycle ms | result |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {cycles} | {} | {:.0} | {} / {} / {} | {} / {} | {} | every write on every replica and in the database; 0 unacknowledged; one root on 3 replicas and 3 nodes |",
        all_keys.len(),
        started.elapsed().as_secs_f64(),
        ms(pct(&failover, 500)),
        ms(pct(&failover, 900)),
        ms(failover[failover.len() - 1]),
        ms(pct(&restarts, 500)),
        ms(restarts[restarts.len() - 1]),
        ms(live_converged),
    );
}
