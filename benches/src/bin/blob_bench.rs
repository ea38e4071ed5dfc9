//! Blob transfer over loopback HTTP, printed as a markdown table for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin blob_bench [-- <MiB>]` (default 1024).
//!
//! The node runs in this process; the writer and the reader are child processes (this
//! binary again). All three use fjall stores with an 8 MiB block cache and 4 MiB
//! memtables (the store's defaults, 64 MiB and 16 MiB, are sized for message traffic:
//! the cache alone would be most of the memory budget). The writer streams a generated blob into its store
//! (`Replica::write_blob`) and pushes it; the reader syncs until the record is resident.
//! Each phase reports MB/s and the peak RSS growth (VmHWM) of the process doing it; the
//! node's growth is reported for the whole run. Then the reader is killed halfway
//! through a second download and restarted: the resume overhead is the restarted run's
//! time against the remaining bytes at the first run's rate.
//!
//! Last, small-message latency during a transfer: a child process runs two replicas
//! with live links (`LiveSync`) through the node; one writes a record with a blob of
//! the same size, and while that blob goes up to the node and down to the other
//! replica, it writes a small record every 10 ms. The latency of each is from just
//! before its `put` to the moment the other replica's change feed shows it; the window
//! ends when the blob's record is resident on the other replica.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, RecordKey, Replica, ReplicaHandler, Residency, WriteRequest};
use sync_transport::{Claims, ServerConfig, Token, TokenKey, serve};
use sync_types::*;

const CHILD_ENV: &str = "WEFT_BLOB_BENCH_CHILD";
const MIB: u64 = 1024 * 1024;

fn tenant() -> TenantId {
    TenantId::new("did:example:bench").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/files").unwrap()
}
fn path() -> ProtocolPath {
    ProtocolPath::new("file").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:bench").unwrap()
}
fn key() -> TokenKey {
    TokenKey::derive(b"blob bench")
}
fn token() -> String {
    Token::issue(
        &key(),
        Claims::owner(
            tenant(),
            author(),
            GrantId::new("bench").unwrap(),
            4_000_000_000_000,
        ),
    )
    .to_string()
}

struct Pattern {
    at: u64,
    len: u64,
}

impl Read for Pattern {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.len - self.at).map_or(out.len(), |left| out.len().min(left));
        for (i, b) in out[..n].iter_mut().enumerate() {
            let x = self.at + i as u64;
            *b = (x.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0];
        }
        self.at += n as u64;
        Ok(n)
    }
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn configure(r: &Replica) {
    r.configure(
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
}

fn open(dir: &str, node: u64) -> Replica {
    let store = sync_ledger::FjallStore::builder(dir)
        .cache_bytes(8 * MIB)
        .memtable_bytes(4 * MIB)
        .open()
        .unwrap();
    let ledger = sync_ledger::Ledger::open(store).unwrap();
    Replica::builder()
        .node_id(NodeId(node))
        .with_ledger(ledger)
        .unwrap()
}

/// An engine on `r` whose owner identity syncs with `endpoint` (registered once: a
/// restarted child finds it in its ledger).
fn engine_for(r: &Replica, endpoint: &str) -> Engine<Arc<HttpConnector>> {
    let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default())).build();
    if engine.identities().unwrap().is_empty() {
        engine
            .register_identity(Identity::owner(
                tenant(),
                vec![Endpoint::new(endpoint).unwrap()],
                token(),
            ))
            .unwrap();
    }
    engine
}

/// A node on a fresh fjall directory, configured, serving on a loopback port (the
/// directory lives as long as the returned handle to it).
fn start_node(
    rt: &tokio::runtime::Runtime,
    node: u64,
) -> (
    tempfile::TempDir,
    sync_transport::ServerHandle<ReplicaHandler>,
) {
    let dir = tempfile::tempdir().unwrap();
    let replica = open(&dir.path().display().to_string(), node);
    configure(&replica);
    let server = rt
        .block_on(serve(
            Arc::new(ReplicaHandler::new(replica.clone())),
            ServerConfig::new(key()),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    (dir, server)
}

fn record() -> RecordId {
    RecordId::from_natural_key(&tenant(), &protocol(), b"big")
}

/// `latency|dirA|dirB|endpoint|bytes`: see the module docs; prints
/// `latency <count> <p50 us> <p99 us> <max us> <window ms>`.
fn latency_child(parts: &[&str]) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use sync_engine::live::LiveSync;
    use sync_engine::machine::LinkConfig;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes: u64 = parts[4].parse().unwrap();
    rt.block_on(async {
        let a = open(parts[1], 3);
        let b = open(parts[2], 4);
        let live = |r: &Replica| {
            let engine = engine_for(r, parts[3]);
            configure(r);
            LiveSync::start(engine, LinkConfig::default()).unwrap()
        };
        let live_a = live(&a);
        let live_b = live(&b);
        let arrivals: Arc<Mutex<HashMap<Cid, Instant>>> = Arc::default();
        let mut changes = b.subscribe();
        let seen = arrivals.clone();
        let watcher = tokio::spawn(async move {
            while let Ok(change) = changes.recv().await {
                seen.lock().unwrap().insert(change.cid, Instant::now());
            }
        });
        let small = |i: usize| {
            let t = Instant::now();
            let cid = a
                .put(
                    &tenant(),
                    &protocol(),
                    &path(),
                    format!("small{i}").as_bytes(),
                    vec![7; 64],
                    &author(),
                )
                .unwrap()
                .cid;
            (cid, t)
        };
        let wait_all = |sent: &[(Cid, Instant)], limit: std::time::Duration| {
            let deadline = Instant::now() + limit;
            let arrivals = arrivals.clone();
            let sent = sent.to_vec();
            async move {
                while Instant::now() < deadline {
                    let all = {
                        let got = arrivals.lock().unwrap();
                        sent.iter().all(|(c, _)| got.contains_key(c))
                    };
                    if all {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        // Warm up connections and subscriptions.
        let warm: Vec<_> = (0..20).map(|i| small(1_000_000 + i)).collect();
        wait_all(&warm, std::time::Duration::from_secs(60)).await;

        let data = a.write_blob(Pattern { at: 0, len: bytes }).unwrap();
        let req = WriteRequest {
            protocol: protocol(),
            path: path(),
            key: RecordKey::Natural(b"big".to_vec()),
            parent: None,
            data: None,
            author: author(),
        };
        let start = Instant::now();
        a.write_with_blob(&tenant(), req, data).unwrap();
        let mut sent = Vec::new();
        let deadline = start + std::time::Duration::from_secs(300);
        while b.residency(&tenant(), &record()).unwrap() != Residency::Resident {
            assert!(Instant::now() < deadline, "the blob never arrived");
            sent.push(small(sent.len()));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let window = start.elapsed();
        wait_all(&sent, std::time::Duration::from_secs(60)).await;
        let got = arrivals.lock().unwrap().clone();
        let mut lat: Vec<u128> = sent
            .iter()
            .map(|(c, t)| {
                got.get(c)
                    .map_or(u128::MAX, |at| at.saturating_duration_since(*t).as_micros())
            })
            .collect();
        lat.sort_unstable();
        // Nearest rank: index (n - 1) * p, rounded, in integers.
        let q = |per_mille: usize| lat[((lat.len() - 1) * per_mille + 500) / 1000];
        println!(
            "latency {} {} {} {} {}",
            lat.len(),
            q(500),
            q(990),
            lat[lat.len() - 1],
            window.as_millis()
        );
        watcher.abort();
        live_a.stop(std::time::Duration::from_secs(5)).await;
        live_b.stop(std::time::Duration::from_secs(5)).await;
    });
}

/// `push|dir|endpoint|bytes` or `pull|dir|endpoint`; prints `phase <name> <ms>` lines
/// and `growth <bytes>`.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    if parts[0] == "latency" {
        return latency_child(&parts);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = open(parts[1], if parts[0] == "push" { 1 } else { 2 });
    let engine = engine_for(&r, parts[2]);
    configure(&r);
    let baseline = peak_rss_bytes();
    rt.block_on(async {
        if parts[0] == "push" {
            let len: u64 = parts[3].parse().unwrap();
            let t = Instant::now();
            let data = r.write_blob(Pattern { at: 0, len }).unwrap();
            println!("phase write {}", t.elapsed().as_millis());
            let req = WriteRequest {
                protocol: protocol(),
                path: path(),
                key: RecordKey::Natural(b"big".to_vec()),
                parent: None,
                data: None,
                author: author(),
            };
            r.write_with_blob(&tenant(), req, data).unwrap();
            let t = Instant::now();
            let report = engine.sync_once().await;
            assert!(report.is_ok(), "{report:?}");
            println!("phase push {}", t.elapsed().as_millis());
        } else {
            let t = Instant::now();
            for _ in 0..10 {
                let report = engine.sync_once().await;
                assert!(report.is_ok(), "{report:?}");
                if r.residency(&tenant(), &record()).unwrap() == Residency::Resident {
                    break;
                }
            }
            assert_eq!(
                r.residency(&tenant(), &record()).unwrap(),
                Residency::Resident
            );
            println!("phase pull {}", t.elapsed().as_millis());
        }
    });
    println!("growth {}", peak_rss_bytes().saturating_sub(baseline));
}

struct Run {
    phases: Vec<(String, u64)>,
    growth: u64,
}

fn run(spec: String, kill_after_ms: Option<u64>) -> Option<Run> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut phases = Vec::new();
    let mut growth = 0;
    if let Some(after_ms) = kill_after_ms {
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        return None;
    }
    for line in lines {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["phase", name, ms] => phases.push(((*name).to_string(), ms.parse().unwrap())),
            ["growth", g] => growth = g.parse().unwrap(),
            ["latency", rest @ ..] => {
                for (i, v) in rest.iter().enumerate() {
                    phases.push((format!("latency{i}"), v.parse().unwrap()));
                }
            }
            _ => {}
        }
    }
    assert!(child.wait().unwrap().success());
    Some(Run { phases, growth })
}

fn mb_s(bytes: u64, ms: u64) -> f64 {
    bytes as f64 / 1e6 / (ms.max(1) as f64 / 1e3)
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let bytes = mib * MIB;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_node_dir, server) = start_node(&rt, 100);
    let node_baseline = peak_rss_bytes();
    let ep = format!("http://{}", server.local_addr());

    let a = tempfile::tempdir().unwrap();
    let push = run(format!("push|{}|{ep}|{bytes}", a.path().display()), None).unwrap();
    let b = tempfile::tempdir().unwrap();
    let pull = run(format!("pull|{}|{ep}", b.path().display()), None).unwrap();
    let node_growth = peak_rss_bytes().saturating_sub(node_baseline);

    // Resume: kill a fresh reader halfway through (by the first run's time), restart.
    let pull_ms = pull.phases[0].1;
    let c = tempfile::tempdir().unwrap();
    let spec = format!("pull|{}|{ep}", c.path().display());
    run(spec.clone(), Some(pull_ms / 2));
    let resumed = run(spec, None).unwrap();

    let ms = |r: &Run, name: &str| r.phases.iter().find(|(n, _)| n == name).unwrap().1;
    println!("| phase | blob | time | MB/s | peak RSS growth of the process |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, ms: u64, growth: u64| {
        println!(
            "| {name} | {mib} MiB | {:.2} s | {:.0} | {:.1} MiB |",
            ms as f64 / 1e3,
            mb_s(bytes, ms),
            growth as f64 / MIB as f64
        );
    };
    row(
        "write_blob (stream into the store)",
        ms(&push, "write"),
        push.growth,
    );
    row("push to the node", ms(&push, "push"), push.growth);
    row("pull from the node", ms(&pull, "pull"), pull.growth);
    println!(
        "| node (whole run) | {mib} MiB | | | {:.1} MiB |",
        node_growth as f64 / MIB as f64
    );
    let resumed_ms = ms(&resumed, "pull");
    println!(
        "\nresume: killed at {:.2} s of a {:.2} s download; the restarted run took {:.2} s ({:.0}% of a full download)",
        pull_ms as f64 / 2e3,
        pull_ms as f64 / 1e3,
        resumed_ms as f64 / 1e3,
        100.0 * resumed_ms as f64 / pull_ms.max(1) as f64
    );

    // Small-message latency while a blob of the same size goes up and down, through a
    // fresh node (the first one holds the first run's record and blob).
    let (_node2_dir, server2) = start_node(&rt, 101);
    let ep2 = format!("http://{}", server2.local_addr());
    let (la, lb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lat = run(
        format!(
            "latency|{}|{}|{ep2}|{bytes}",
            la.path().display(),
            lb.path().display()
        ),
        None,
    )
    .unwrap();
    let v = |i: usize| ms(&lat, &format!("latency{i}"));
    println!(
        "\nsmall-message latency during a {mib} MiB transfer ({:.1} s from the write to resident on the other replica): {} small writes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v(4) as f64 / 1e3,
        v(0),
        v(1) as f64 / 1e3,
        v(2) as f64 / 1e3,
        v(3) as f64 / 1e3
    );
}
