//! The workload of issue 19, end to end: what a sync costs in time and in bytes on the
//! wire. Printed as a markdown table for BENCHMARKS.md.
//!
//! Usage:
//!
//! ```text
//! cargo run --release -p benches --bin wire_bench -- --n 100000
//! cargo run --release -p benches --bin wire_bench -- --n 10000 --live 500 --hog
//! ```
//!
//! Options: `--n N` (records A writes, default 100,000), `--live N` (live writes, default
//! 1,000), `--hog` (a child process keeps one core busy during the live phase),
//! `--dump-frames DIR` (writes sample push and page frames there, to measure
//! compressors on them), `--plain-wire` (the node neither sends nor invites dense
//! frames, as a node from before them: the "before" of the dense wire),
//! `--narrow-batches` (the node takes write batches of at most `BATCH_MESSAGES_MAX`,
//! 256, and does not list `wide-batch`, as a node from before wide batches: the
//! "before" of the negotiated push batch limit), `--rounds K` (after the d rounds, K
//! more rounds of d = 100, with the median and spread of each side, and each round's
//! wall-clock start and end on stderr, to line up with `strace -tt` or `perf` output).
//!
//! The node is a child process of this binary (a `ReplicaHandler` over a fjall replica,
//! its own tokio runtime). In front of it, in the same child, a counting TCP proxy: every
//! byte the node sends or receives (HTTP heads, bodies and WebSocket frames) passes
//! through it and is counted, and the parent reads the counters between phases. Replicas
//! A and B are fjall stores with synced commits in this process, each an `Engine` over
//! `HttpConnector` pointed at the proxy.
//!
//! Each step also gives the CPU time (user and system, all threads, to the 10 ms clock
//! tick) the node's process and this one (A and B) spent during it, from
//! `/proc/PID/stat`: on a machine shared with other work the wall time varies, the CPU
//! much less.
//!
//! Phases: A writes N records of ~200 bytes of JSON (`{_id, type, n, v, title, body,
//! updatedAt}`) with `Replica::write_batch` (1,000 per commit); A syncs (its push); the empty B syncs until it
//! holds all; A syncs again (what it downloads is the echo of its upload); then rounds
//! of d = 1, 10, 100 changed records (A syncs, then B syncs); then live: A and B run by
//! `LiveSync`, one write at a time on A, latency until B's store reports it.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]
// `--rounds` prints each round's wall-clock span on stderr, apart from the tables.
#![allow(clippy::print_stderr)]
// Counts and durations are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::wire_node::{key, serve_node};
use benches::{workload_record, workload_write};
use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Origin, Replica, WriteBatch};
use sync_transport::{Claims, Token};
use sync_types::*;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;
/// Longest wait for one live write to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Records per commit of A's write phase.
const WRITE_BATCH_RECORDS: u64 = 1_000;

fn tenant() -> TenantId {
    TenantId::new("did:example:wire").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/docs").unwrap()
}
fn doc() -> ProtocolPath {
    ProtocolPath::new("doc").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:wire").unwrap()
}

struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

/// Bytes through the node's sockets: (received by the node, sent by the node).
#[derive(Clone, Copy, Default)]
struct Wire {
    up: u64,
    down: u64,
}

impl Wire {
    fn since(self, before: Wire) -> Wire {
        Wire {
            up: self.up - before.up,
            down: self.down - before.down,
        }
    }
    fn total(self) -> u64 {
        self.up + self.down
    }
}

impl NodeProcess {
    fn start(plain_wire: bool, narrow_batches: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wire = if plain_wire { "plain" } else { "dense" };
        let batches = if narrow_batches { "narrow" } else { "wide" };
        let (mut command, _) = node_command();
        let mut child = command
            .args([&dir.path().display().to_string(), wire, batches])
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

    fn wire(&mut self) -> Wire {
        writeln!(self.stdin, "bytes").unwrap();
        let line = self.stdout.next().unwrap().unwrap();
        let (up, down) = line.split_once(' ').unwrap();
        Wire {
            up: up.parse().unwrap(),
            down: down.parse().unwrap(),
        }
    }
}

/// The command that starts the node, and what runs it: the `wire_node` binary next to
/// this one (the allocator of `weft`), else this binary with `--serve` (this process's
/// allocator).
fn node_command() -> (Command, &'static str) {
    let exe = std::env::current_exe().unwrap();
    let node = exe.with_file_name(format!("wire_node{}", std::env::consts::EXE_SUFFIX));
    if node.exists() {
        (Command::new(node), "wire_node (mimalloc, as `weft serve`)")
    } else {
        let mut c = Command::new(exe);
        c.arg("--serve");
        (
            c,
            "wire_bench --serve (this binary's allocator; build wire_node for weft's)",
        )
    }
}

/// This process's allocator.
const CLIENT_ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc (--features mimalloc)"
} else {
    "the system's"
};

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process that keeps one core busy until killed.
struct Hog(Child);

impl Hog {
    fn start() -> Self {
        Hog(Command::new(std::env::current_exe().unwrap())
            .arg("--spin")
            .spawn()
            .unwrap())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spin() {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

// ---- the replicas -----------------------------------------------------------------

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

fn configure(r: &Replica) {
    let types = vec![TypeRule {
        path: doc(),
        data_bytes_max: None,
    }];
    r.configure(&tenant(), &protocol(), types, vec![], &author())
        .unwrap();
}

fn put(r: &Replica, n: u64, v: u64) -> Cid {
    let (id, json) = workload_record(n, v);
    r.put(&tenant(), &protocol(), &doc(), &id, json, &author())
        .unwrap()
        .cid
}

/// One measured step: time, bytes on the wire, messages the engine counted.
struct Step {
    label: String,
    elapsed: Duration,
    wire: Wire,
    pulled: u64,
    pushed: u64,
    /// CPU time spent meanwhile by the node's process and by this one (A and B).
    cpu: Cpu,
}

/// CPU time (user and system, all threads) of the node's process and of this one.
#[derive(Clone, Copy, Default)]
struct Cpu {
    node: Duration,
    client: Duration,
}

impl Cpu {
    fn now(node: &NodeProcess) -> Self {
        Cpu {
            node: process_cpu(&node.child.id().to_string()),
            client: process_cpu("self"),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            node: self.node.saturating_sub(before.node),
            client: self.client.saturating_sub(before.client),
        }
    }

    fn plus(self, other: Cpu) -> Cpu {
        Cpu {
            node: self.node + other.node,
            client: self.client + other.client,
        }
    }
}

/// Clock ticks a second of `/proc/PID/stat`'s times (`CLK_TCK`, 100 on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user and system) of process `pid` (or `self`) so far, from
/// `/proc/PID/stat`, to the clock tick; zero where there is no such file.
fn process_cpu(pid: &str) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces) start
    // at the state, field 3; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

async fn sync(
    label: impl Into<String>,
    node: &mut NodeProcess,
    e: &Engine<Arc<HttpConnector>>,
) -> Step {
    let before = node.wire();
    let cpu = Cpu::now(node);
    let start = Instant::now();
    let report = e.sync_once().await;
    let elapsed = start.elapsed();
    assert!(report.is_ok(), "{report:?}");
    Step {
        label: label.into(),
        elapsed,
        wire: node.wire().since(before),
        pulled: report.pulled().messages,
        pushed: report.pushed().messages,
        cpu: Cpu::now(node).since(cpu),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn row(s: &Step) {
    println!(
        "| {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
        s.label,
        s.elapsed.as_secs_f64() * 1e3,
        s.pushed,
        s.pulled,
        kib(s.wire.up),
        kib(s.wire.down),
        kib(s.wire.total()),
        s.cpu.node.as_secs_f64() * 1e3,
        s.cpu.client.as_secs_f64() * 1e3,
    );
}

/// Nearest-rank percentile.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `rounds` rounds of d = 100 (A writes 100 changes, A syncs, B syncs); prints the
/// median and spread of each side, and each round's wall-clock span on stderr.
async fn repeated_rounds(
    node: &mut NodeProcess,
    ea: &Engine<Arc<HttpConnector>>,
    eb: &Engine<Arc<HttpConnector>>,
    ra: &Replica,
    n: u64,
    rounds: u64,
) {
    let d = 100u64;
    let (mut a, mut b, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let epoch_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    };
    for r in 0..rounds {
        for i in 0..d {
            put(ra, i * (n / d).max(1) % n.max(1), 10 + r);
        }
        let start = epoch_us();
        let sa = sync("A", node, ea).await;
        let mid = epoch_us();
        let sb = sync("B", node, eb).await;
        eprintln!("round {r} A {start} {mid} B {mid} {}", epoch_us());
        assert_eq!(sb.pulled, d);
        a.push(sa.elapsed);
        b.push(sb.elapsed);
        both.push(sa.elapsed + sb.elapsed);
    }
    for v in [&mut a, &mut b, &mut both] {
        v.sort_unstable();
    }
    let ms = |v: &[Duration], q: f64| pct(v, q).as_secs_f64() * 1e3;
    println!(
        "
{rounds} more rounds of d = {d}: p10 / median / p90 (ms)
"
    );
    println!(
        "| | p10 | median | p90 |
|---|---:|---:|---:|"
    );
    for (label, v) in [("A syncs", &a), ("B syncs", &b), ("round", &both)] {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            ms(v, 0.1),
            ms(v, 0.5),
            ms(v, 0.9)
        );
    }
}

/// Live writes on A, each timed until B's store reports it.
async fn live(
    a: Engine<Arc<HttpConnector>>,
    b: Engine<Arc<HttpConnector>>,
    ra: &Replica,
    rb: &Replica,
    writes: u64,
    base: u64,
) -> Vec<Duration> {
    let mut changes = rb.subscribe();
    let la = LiveSync::start(a, LinkConfig::default()).unwrap();
    let lb = LiveSync::start(b, LinkConfig::default()).unwrap();
    let mut samples = Vec::new();
    // Warm-up writes, not counted.
    let warmup = 20;
    for i in 0..writes + warmup {
        let start = Instant::now();
        let cid = put(ra, base + i, 1);
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(c)) if c.cid == cid && matches!(c.origin, Origin::Remote(_)) => {
                    if i >= warmup {
                        samples.push(start.elapsed());
                    }
                    break;
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => panic!("live write {i} did not arrive"),
            }
        }
    }
    let _ = la.stop(Duration::from_secs(5)).await;
    let _ = lb.stop(Duration::from_secs(5)).await;
    samples.sort_unstable();
    samples
}

/// Where the bytes of one record go in a push (a `MessageData`) and in a pull page (a
/// `LogEntry`), by field, in the codec's encoding (postcard, without the envelope byte).
fn breakdown(r: &Replica) {
    let sync_ledger::LogRead::Page(page) = r.changes_since(&tenant(), None, 2).unwrap() else {
        return;
    };
    let Some(e) = page
        .entries
        .iter()
        .find(|e| matches!(e.message, Message::Write(_)))
    else {
        return;
    };
    let Message::Write(w) = &e.message else {
        return;
    };
    let len = |v: &dyn erased::Len| v.len();
    let rows: Vec<(&str, usize)> = vec![
        ("tenant", len(&w.tenant)),
        ("record_id", len(&w.record_id)),
        ("parent_id", len(&w.parent_id)),
        ("protocol", len(&w.protocol)),
        ("path", len(&w.path)),
        ("context_id", len(&w.context_id)),
        ("prev", len(&w.prev)),
        ("timestamp", len(&w.timestamp)),
        ("author", len(&w.author)),
        ("data ref (cid, size)", len(&w.data)),
        ("inline data (the JSON)", len(&e.data)),
        ("log position token (pull only)", len(&e.token)),
    ];
    let item = sync_transport::proto::MessageData {
        message: e.message.clone(),
        data: e.data.clone(),
    };
    let entry = sync_transport::proto::LogEntry {
        token: e.token,
        item: item.clone(),
    };
    println!("\nBytes of one record on the wire, by field (postcard):\n");
    println!("| field | bytes |");
    println!("|---|---:|");
    for (name, n) in rows {
        println!("| {name} | {n} |");
    }
    println!(
        "| **MessageData (push)** | **{}** |\n| **LogEntry (pull)** | **{}** |",
        codec::encoded_len(&item) - 1,
        codec::encoded_len(&entry) - 1
    );
}

/// Bytes a record takes in a push of 256 messages and in a page of 1,000 entries, in
/// plain (version 1) and dense (version 2) frames, before compression.
fn dense_sizes(r: &Replica) {
    use sync_transport::frame;
    use sync_transport::proto::{
        LogEntry, LogPage, LogPageReply, MessageData, Reply, Request, WriteBatchRequest,
    };
    let sync_ledger::LogRead::Page(page) = r.changes_since(&tenant(), None, 1000).unwrap() else {
        return;
    };
    let entries: Vec<LogEntry> = page
        .entries
        .iter()
        .map(|e| LogEntry {
            token: e.token,
            item: MessageData {
                message: e.message.clone(),
                data: e.data.clone(),
            },
        })
        .collect();
    let n_push = entries.len().min(256);
    let push = Request::WriteBatch(WriteBatchRequest {
        tenant: tenant(),
        messages: entries[..n_push].iter().map(|e| e.item.clone()).collect(),
    });
    let n_page = entries.len();
    let next = entries.last().map(|e| e.token);
    let page = Reply::LogPage(LogPageReply::Page(LogPage {
        entries,
        next,
        has_more: true,
    }));
    let per = |bytes: usize, n: usize| bytes as f64 / n.max(1) as f64;
    println!("\nBytes a record in whole frames (before compression):\n");
    println!("| frame | plain (v1) | dense (v2) |");
    println!("|---|---:|---:|");
    println!(
        "| push of {n_push} | {:.1} | {:.1} |",
        per(frame::encode(&push).len(), n_push),
        per(frame::encode_dense(&push).map_or(0, |f| f.len()), n_push)
    );
    println!(
        "| page of {n_page} | {:.1} | {:.1} |",
        per(frame::encode(&page).len(), n_page),
        per(frame::encode_dense(&page).map_or(0, |f| f.len()), n_page)
    );
}

/// Writes sample frames of `r`'s log to `dir` (for measuring compressors on them): a
/// push of 1 and of 256 messages, a pull page of 1 and of 1,000 entries.
fn dump_frames(r: &Replica, dir: &str) {
    use sync_transport::proto::{
        LogEntry, LogPage, MessageData, Reply, Request, WriteBatchRequest,
    };
    let sync_ledger::LogRead::Page(page) = r.changes_since(&tenant(), None, 1000).unwrap() else {
        return;
    };
    std::fs::create_dir_all(dir).unwrap();
    let items: Vec<MessageData> = page
        .entries
        .iter()
        .map(|e| MessageData {
            message: e.message.clone(),
            data: e.data.clone(),
        })
        .collect();
    for n in [1usize, 256] {
        let frame = sync_transport::frame::encode(&Request::WriteBatch(WriteBatchRequest {
            tenant: tenant(),
            messages: items[..n.min(items.len())].to_vec(),
        }));
        std::fs::write(format!("{dir}/push-{n}.frame"), frame).unwrap();
    }
    for n in [1usize, 1000] {
        let entries: Vec<LogEntry> = page.entries[..n.min(page.entries.len())]
            .iter()
            .zip(&items)
            .map(|(e, item)| LogEntry {
                token: e.token,
                item: item.clone(),
            })
            .collect();
        let next = entries.last().map(|e| e.token);
        let frame = sync_transport::frame::encode(&Reply::LogPage(
            sync_transport::proto::LogPageReply::Page(LogPage {
                entries,
                next,
                has_more: true,
            }),
        ));
        std::fs::write(format!("{dir}/page-{n}.frame"), frame).unwrap();
    }
}

/// Encoded lengths of values of different types behind one trait object.
mod erased {
    pub(super) trait Len {
        fn len(&self) -> usize;
    }
    impl<T: serde::Serialize> Len for T {
        fn len(&self) -> usize {
            sync_types::codec::encoded_len(self) - 1
        }
    }
}

struct Options {
    n: u64,
    live: u64,
    hog: bool,
    dump: Option<String>,
    plain_wire: bool,
    narrow_batches: bool,
    rounds: u64,
}

fn options() -> Options {
    let mut o = Options {
        n: 100_000,
        live: 1_000,
        hog: false,
        dump: None,
        plain_wire: false,
        narrow_batches: false,
        rounds: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => o.n = it.next().and_then(|v| v.parse().ok()).expect("--n N"),
            "--live" => o.live = it.next().and_then(|v| v.parse().ok()).expect("--live N"),
            "--hog" => o.hog = true,
            "--plain-wire" => o.plain_wire = true,
            "--narrow-batches" => o.narrow_batches = true,
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds K"),
            "--dump-frames" => o.dump = Some(it.next().expect("--dump-frames DIR")),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => return serve_node(&args[2], args[3] == "plain", args[4] == "wide"),
        Some("--spin") => return spin(),
        _ => {}
    }
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut node = NodeProcess::start(o.plain_wire, o.narrow_batches);
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A's records are written with the batch write API, 1,000 per synced commit.
        let ra = Replica::open(da.path()).unwrap();
        configure(&ra);
        let start = Instant::now();
        let mut n = 0;
        while n < o.n {
            let mut batch = WriteBatch::new();
            for i in n..(n + WRITE_BATCH_RECORDS).min(o.n) {
                batch.write(workload_write(i, 0, author()));
            }
            n += batch.len() as u64;
            ra.write_batch(&tenant(), batch).unwrap();
        }
        let write_time = start.elapsed();
        ra.close().unwrap();
        let ra = Replica::open(da.path()).unwrap();
        let rb = Replica::open(db.path()).unwrap();
        let ea = engine(&ra, &node.endpoint);
        let eb = engine(&rb, &node.endpoint);
        let payload: u64 = (0..o.n).map(|n| workload_record(n, 0).1.len() as u64).sum();

        let mut steps = Vec::new();
        let push = sync("A pushes N", &mut node, &ea).await;
        let pull = sync("empty B pulls until it holds all", &mut node, &eb).await;
        assert_eq!(pull.pulled, o.n + 1);
        let initial = Step {
            label: "initial sync (A pushes, then B pulls)".into(),
            elapsed: push.elapsed + pull.elapsed,
            wire: Wire {
                up: push.wire.up + pull.wire.up,
                down: push.wire.down + pull.wire.down,
            },
            pulled: pull.pulled,
            pushed: push.pushed,
            cpu: push.cpu.plus(pull.cpu),
        };
        let echo = sync("A's next sync (echo)", &mut node, &ea).await;
        let echo_share = echo.wire.total() as f64 / push.wire.total().max(1) as f64;
        steps.extend([push, pull, initial, echo]);
        for (v, d) in (1u64..).zip([1u64, 10, 100]) {
            for n in 0..d {
                put(&ra, n * (o.n / d).max(1) % o.n.max(1), v);
            }
            let sa = sync(format!("d = {d}: A syncs"), &mut node, &ea).await;
            let sb = sync(format!("d = {d}: B syncs"), &mut node, &eb).await;
            assert_eq!(sb.pulled, d);
            steps.push(Step {
                label: format!("d = {d}: round (A then B)"),
                elapsed: sa.elapsed + sb.elapsed,
                wire: Wire {
                    up: sa.wire.up + sb.wire.up,
                    down: sa.wire.down + sb.wire.down,
                },
                pulled: sb.pulled,
                pushed: sa.pushed,
                cpu: sa.cpu.plus(sb.cpu),
            });
            steps.extend([sa, sb]);
        }

        if o.rounds > 0 {
            repeated_rounds(&mut node, &ea, &eb, &ra, o.n, o.rounds).await;
        }

        let hog = o.hog.then(Hog::start);
        let samples = live(ea, eb, &ra, &rb, o.live, o.n).await;
        drop(hog);

        println!(
            "node process: {}; A and B's process allocates with {CLIENT_ALLOCATOR}\n",
            node_command().1
        );
        println!(
            "N = {} records, {:.1} MiB of JSON ({:.0} bytes a record); A wrote them in batches of {WRITE_BATCH_RECORDS} in {:.1} s\n",
            o.n,
            mib(payload),
            payload as f64 / o.n.max(1) as f64,
            write_time.as_secs_f64()
        );
        println!(
            "| step | time (ms) | pushed | pulled | up (KiB) | down (KiB) | wire (KiB) | node CPU (ms) | A+B CPU (ms) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in &steps {
            row(s);
        }
        println!(
            "\ninitial sync: {:.2} s, {:.1} MiB on the wire, {:.0} bytes a record (push {:.0}, pull {:.0}); A's next sync moved {:.2}% of its upload's bytes",
            steps[2].elapsed.as_secs_f64(),
            mib(steps[2].wire.total()),
            initial_per_record(&steps, o.n),
            steps[0].wire.total() as f64 / o.n.max(1) as f64,
            steps[1].wire.total() as f64 / o.n.max(1) as f64,
            echo_share * 100.0
        );
        println!(
            "\nlive A -> node -> B{}: {} writes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if o.hog { " (one core kept busy)" } else { "" },
            samples.len(),
            pct(&samples, 0.5).as_secs_f64() * 1e3,
            pct(&samples, 0.99).as_secs_f64() * 1e3,
            samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        breakdown(&ra);
        dense_sizes(&ra);
        if let Some(dir) = &o.dump {
            dump_frames(&ra, dir);
        }
    });
}

fn initial_per_record(steps: &[Step], n: u64) -> f64 {
    steps[2].wire.total() as f64 / n.max(1) as f64
}
