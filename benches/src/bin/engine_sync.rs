//! End-to-end sync of the engine over loopback HTTP, printed as markdown tables for
//! BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin engine_sync [-- --quick]`
//!
//! - initial sync: a node (a child process of this binary, on fjall) holds 100,000
//!   small records; an empty replica (fjall, synced commits) runs `sync_once`; messages
//!   per second, MB/s of message bytes, and the replica process's peak RSS (VmHWM,
//!   reset before the phase through /proc/self/clear_refs);
//! - incremental sync: the node gains 100 records, the replica (already holding 10,000
//!   or 1,000,000 records) runs `sync_once`; median of 5 rounds;
//! - replica open time with 1,000,000 messages (ledger open and tree index rebuild).
//!
//! `--quick` divides the sizes by 10.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Origin, Replica, ReplicaHandler};
use sync_transport::{Claims, ServerConfig, Token, TokenKey, serve};
use sync_types::*;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;
const APPLY_BATCH: usize = 1_000;
const INCREMENTAL_CHANGES: usize = 100;
const INCREMENTAL_ROUNDS: usize = 5;

fn tenant() -> TenantId {
    TenantId::new("did:example:bench").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:bench").unwrap()
}
fn key() -> TokenKey {
    TokenKey::derive(b"engine sync bench")
}

/// The node's records: a configure, then initial writes of 64-byte payloads with
/// timestamps in the past (so no replica defers them as too far ahead).
struct Generator {
    next: u64,
    base_ms: u64,
}

impl Generator {
    fn new() -> Self {
        let now = SystemClock.now_ms();
        Self {
            next: 0,
            base_ms: now - 10_000_000,
        }
    }

    fn configure(&self) -> (Message, Option<Vec<u8>>) {
        let p = protocol();
        let definition = ProtocolDefinition::new(
            &p,
            vec![TypeRule {
                path: ProtocolPath::new("note").unwrap(),
                data_bytes_max: None,
            }],
            vec![],
        )
        .unwrap();
        let m = Message::Configure(Configure {
            tenant: tenant(),
            protocol: p,
            definition,
            timestamp: Hlc {
                wall_ms: self.base_ms - 1,
                counter: 0,
                node: NodeId(9),
            },
            author: author(),
        });
        (m, None)
    }

    fn records(&mut self, n: usize) -> Vec<(Message, Option<Vec<u8>>)> {
        (0..n)
            .map(|_| {
                let i = self.next;
                self.next += 1;
                let record_id =
                    RecordId::from_natural_key(&tenant(), &protocol(), &i.to_be_bytes());
                let mut data = format!("record {i:>12} ").into_bytes();
                data.resize(64, b'.');
                let m = Message::Write(Write {
                    tenant: tenant(),
                    record_id,
                    parent_id: None,
                    protocol: protocol(),
                    path: ProtocolPath::new("note").unwrap(),
                    context_id: ContextId::root(record_id),
                    prev: None,
                    timestamp: Hlc {
                        wall_ms: self.base_ms + i / 8,
                        counter: (i % 8) as u32,
                        node: NodeId(9),
                    },
                    author: author(),
                    data: Some(DataRef::of(&data)),
                });
                (m, Some(data))
            })
            .collect()
    }
}

fn apply_all(r: &Replica, items: Vec<(Message, Option<Vec<u8>>)>) {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<_> = items.by_ref().take(APPLY_BATCH).collect();
        let out = r.apply(&tenant(), batch, Origin::Remote(None)).unwrap();
        assert!(out.iter().all(ApplyOutcome::is_success));
    }
}

/// The node role: preload `count` records, serve, and add records on request.
fn serve_node(dir: &str, count: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = Replica::open(dir).unwrap();
        let mut generator = Generator::new();
        apply_all(&r, vec![generator.configure()]);
        apply_all(&r, generator.records(count));
        let server = serve(
            Arc::new(ReplicaHandler::new(r.clone())),
            ServerConfig::new(key()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        println!("listening {}", server.local_addr());
        let mut lines = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
            if let Some(n) = line.strip_prefix("add ") {
                apply_all(&r, generator.records(n.parse().unwrap()));
                println!("ok");
            }
        }
    });
}

struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start(count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--serve",
                &dir.path().display().to_string(),
                &count.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = stdout.next().unwrap().unwrap();
        let addr = line.strip_prefix("listening ").unwrap().to_owned();
        Self {
            child,
            stdin,
            stdout,
            endpoint: Endpoint::new(format!("http://{addr}")).unwrap(),
            _dir: dir,
        }
    }

    fn add(&mut self, n: usize) {
        writeln!(self.stdin, "add {n}").unwrap();
        assert_eq!(self.stdout.next().unwrap().unwrap(), "ok");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine(r: &Replica, endpoint: &Endpoint) -> Engine<Arc<HttpConnector>> {
    let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default())).build();
    if engine.identities().unwrap().is_empty() {
        let token = Token::issue(
            &key(),
            Claims::owner(
                tenant(),
                author(),
                GrantId::new("bench").unwrap(),
                FAR_FUTURE_MS,
            ),
        );
        engine
            .register_identity(Identity::owner(
                tenant(),
                vec![endpoint.clone()],
                token.to_string(),
            ))
            .unwrap();
    }
    engine
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Timed {
    elapsed: Duration,
    messages: u64,
    bytes: u64,
}

async fn sync(engine: &Engine<Arc<HttpConnector>>) -> Timed {
    let start = Instant::now();
    let report = engine.sync_once().await;
    let elapsed = start.elapsed();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.links.iter().all(|l| l.converged() == Some(true)));
    Timed {
        elapsed,
        messages: report.pulled().messages,
        bytes: report.pulled().bytes,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn incremental(
    node: &mut NodeProcess,
    engine: &Engine<Arc<HttpConnector>>,
) -> (Duration, u64) {
    let mut times = Vec::new();
    let mut messages = 0;
    for _ in 0..INCREMENTAL_ROUNDS {
        node.add(INCREMENTAL_CHANGES);
        let t = sync(engine).await;
        assert_eq!(t.messages, INCREMENTAL_CHANGES as u64);
        messages = t.messages;
        times.push(t.elapsed);
    }
    times.sort();
    (times[times.len() / 2], messages)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve_node(&args[2], args[3].parse().unwrap());
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let initial = 100_000 / scale;
    let small = 10_000 / scale;
    let large = 1_000_000 / scale;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Initial sync.
        let node = NodeProcess::start(initial);
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path()).unwrap();
        let e = engine(&r, &node.endpoint);
        reset_peak_rss();
        let t = sync(&e).await;
        let hwm = peak_rss_mb();
        assert_eq!(t.messages, initial as u64 + 1);
        println!("### Initial sync over loopback HTTP\n");
        println!("| records | time (s) | messages/s | MB/s | replica peak RSS (MB) |");
        println!("|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.0} |\n",
            initial,
            t.elapsed.as_secs_f64(),
            t.messages as f64 / t.elapsed.as_secs_f64(),
            t.bytes as f64 / 1e6 / t.elapsed.as_secs_f64(),
            hwm
        );
        drop(e);
        drop(r);
        drop(node);

        // Incremental syncs at two store sizes.
        let mut rows = Vec::new();
        let mut reopen = None;
        for size in [small, large] {
            let mut node = NodeProcess::start(size);
            let dir = tempfile::tempdir().unwrap();
            let r = Replica::open(dir.path()).unwrap();
            let e = engine(&r, &node.endpoint);
            let first = sync(&e).await;
            let (median, messages) = incremental(&mut node, &e).await;
            rows.push((size, first, median, messages));
            if size == large {
                drop(e);
                // A clean close flushes the tables, so the reopen below measures the open
                // and the tree rebuild, not a journal replay.
                r.close().unwrap();
                let start = Instant::now();
                let r = Replica::open(dir.path()).unwrap();
                let open = start.elapsed();
                assert_eq!(
                    r.ledger().log_info(&tenant()).unwrap().unwrap().head_position,
                    (large + 1 + INCREMENTAL_ROUNDS * INCREMENTAL_CHANGES) as u64
                );
                reopen = Some(open);
            }
        }
        println!("### Incremental sync of {INCREMENTAL_CHANGES} new records\n");
        println!(
            "| records held | initial sync (s) | incremental sync, median of {INCREMENTAL_ROUNDS} (ms) | messages |"
        );
        println!("|---:|---:|---:|---:|");
        for (size, first, median, messages) in &rows {
            println!(
                "| {} | {:.2} | {:.1} | {} |",
                size,
                first.elapsed.as_secs_f64(),
                ms(*median),
                messages
            );
        }
        let ratio = ms(rows[1].2) / ms(rows[0].2);
        println!("\nratio {} / {}: {:.2}x\n", rows[1].0, rows[0].0, ratio);
        if let Some(open) = reopen {
            println!("### Replica open\n");
            println!("| messages | open time (s) |");
            println!("|---:|---:|");
            println!("| {} | {:.2} |", large, open.as_secs_f64());
        }
    });
}
