//! Blob transfers in separate processes: peak memory while a blob larger than the memory
//! budget moves through a node, and a download killed with kill -9 at random points that
//! resumes and completes with the right hash.
//!
//! The tests re-run their own binary as a replica (the role is selected by an environment
//! variable), like `sync_crash.rs`. The node runs in the parent on a fjall store.

// The child's stdout is its channel to the parent.
#![allow(clippy::print_stdout)]

mod sync_support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use sync_engine::blob::Residency;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, RecordKey, Replica, ReplicaHandler, WriteRequest};
use sync_support::*;
use sync_transport::{ServerConfig, serve};
use sync_types::*;

const CHILD_ENV: &str = "WEFT_BLOB_PROCESS_CHILD";
/// The memory budget of a process moving a blob, in bytes.
const PEAK_GROWTH_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The blob of the memory test: larger than the budget, so holding it would fail.
const MEMORY_BLOB_BYTES: u64 = 96 * 1024 * 1024;
/// The blob of the kill test.
const RESUME_BLOB_BYTES: u64 = 24 * 1024 * 1024;
/// Block cache of a child's store, in bytes.
const STORE_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Memtable size of a child's store, in bytes.
const STORE_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Downloads killed before the one that completes.
const KILLS: usize = 3;

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

fn pattern_cid(len: u64) -> Cid {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut Pattern { at: 0, len }, &mut h).unwrap();
    Cid::from_bytes(*h.finalize().as_bytes())
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn child_engine(dir: &str, endpoint: &str, node: u64) -> (Replica, Engine<Arc<HttpConnector>>) {
    // The store's own buffers are sized for the budget: its block cache and memtables
    // are memory by design, the blob path must add nothing proportional to the blob.
    let store = sync_ledger::FjallStore::builder(dir)
        .cache_bytes(STORE_CACHE_BYTES)
        .memtable_bytes(STORE_MEMTABLE_BYTES)
        .open()
        .unwrap();
    let ledger = sync_ledger::Ledger::open(store).unwrap();
    let r = Replica::builder()
        .node_id(NodeId(node))
        .with_ledger(ledger)
        .unwrap();
    let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default()))
        .config(fast_config())
        .build();
    if engine.identities().unwrap().is_empty() {
        engine
            .register_identity(Identity::owner(
                tenant(),
                vec![Endpoint::new(endpoint).unwrap()],
                owner_token(&key()),
            ))
            .unwrap();
    }
    configure(&r);
    (r, engine)
}

/// The child roles: `push|dir|endpoint|len` writes a streamed blob and pushes it;
/// `pull|dir|endpoint|cid` syncs until the record is resident, printing its download
/// offset as it goes. Both print their peak memory growth and the blob's hash.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (role, dir, endpoint) = (parts[0], parts[1], parts[2]);
    let rt = runtime();
    let (r, engine) = child_engine(dir, endpoint, if role == "push" { 1 } else { 2 });
    let baseline = peak_rss_bytes();
    let cid = rt.block_on(async {
        if role == "push" {
            let len: u64 = parts[3].parse().unwrap();
            let data = r.write_blob(Pattern { at: 0, len }).unwrap();
            let req = WriteRequest {
                protocol: notes(),
                path: note(),
                key: RecordKey::Natural(b"big".to_vec()),
                parent: None,
                data: None,
                author: alice(),
            };
            r.write_with_blob(&tenant(), req, data).unwrap();
            sync_until_quiet(&engine, 4).await;
            data.data_cid
        } else {
            let cid =
                Cid::from_bytes(<[u8; 32]>::try_from(hex_decode(parts[3]).as_slice()).unwrap());
            let watcher = r.clone();
            std::thread::spawn(move || {
                loop {
                    let offset = watcher
                        .ledger()
                        .blobs()
                        .upload_offset(&cid)
                        .unwrap()
                        .unwrap_or(0);
                    println!("offset {offset}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            });
            let id = RecordId::from_natural_key(&tenant(), &notes(), b"big");
            for _ in 0..20 {
                let report = engine.sync_once().await;
                assert!(report.is_ok(), "{report:?}");
                if r.residency(&tenant(), &id).unwrap() == Residency::Resident {
                    break;
                }
            }
            assert_eq!(r.residency(&tenant(), &id).unwrap(), Residency::Resident);
            cid
        }
    });
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut r.blob_reader(&cid, 0).unwrap(), &mut h).unwrap();
    println!("hash {}", hex(h.finalize().as_bytes()));
    println!("growth {}", peak_rss_bytes().saturating_sub(baseline));
    println!("done");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn spawn(
    test: &str,
    spec: String,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// What a child that ran to the end reported: the blob's hash and its memory growth.
fn finish(
    mut child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
) -> (String, u64) {
    let (mut hash, mut growth, mut done) = (None, None, false);
    for line in lines {
        let line = line.unwrap();
        let line = line.rsplit(" ... ").next().unwrap_or_default().to_string();
        if let Some(h) = line.strip_prefix("hash ") {
            hash = Some(h.to_string());
        } else if let Some(g) = line.strip_prefix("growth ") {
            growth = Some(g.parse().unwrap());
        } else if line == "done" {
            done = true;
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(done, "the child did not finish");
    (hash.unwrap(), growth.unwrap())
}

struct NodeProcess {
    _dir: tempfile::TempDir,
    endpoint: String,
    node: Replica,
    _server: sync_transport::server::ServerHandle<ReplicaHandler>,
}

fn node(rt: &tokio::runtime::Runtime) -> NodeProcess {
    let dir = tempfile::tempdir().unwrap();
    let node = Replica::builder()
        .node_id(NodeId(100))
        .open(dir.path())
        .unwrap();
    configure(&node);
    let server = rt
        .block_on(serve(
            Arc::new(ReplicaHandler::new(node.clone())),
            ServerConfig::new(key()),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    NodeProcess {
        _dir: dir,
        endpoint: format!("http://{}", server.local_addr()),
        node,
        _server: server,
    }
}

const MEMORY_TEST: &str = "a_blob_larger_than_the_memory_budget_moves_within_it";

#[test]
fn a_blob_larger_than_the_memory_budget_moves_within_it() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let rt = runtime();
    let n = node(&rt);
    let expected = hex(pattern_cid(MEMORY_BLOB_BYTES).as_bytes());

    let a = tempfile::tempdir().unwrap();
    let (child, lines) = spawn(
        MEMORY_TEST,
        format!(
            "push|{}|{}|{MEMORY_BLOB_BYTES}",
            a.path().display(),
            n.endpoint
        ),
    );
    let (hash, growth) = finish(child, lines);
    println!("writer: peak rss growth {growth} bytes for a {MEMORY_BLOB_BYTES}-byte blob");
    assert_eq!(hash, expected);
    assert!(
        growth < PEAK_GROWTH_BYTES_MAX,
        "the writer grew by {growth} bytes moving {MEMORY_BLOB_BYTES}"
    );
    let cid = pattern_cid(MEMORY_BLOB_BYTES);
    assert!(n.node.ledger().blobs().has(&cid).unwrap());

    let b = tempfile::tempdir().unwrap();
    let (child, lines) = spawn(
        MEMORY_TEST,
        format!("pull|{}|{}|{expected}", b.path().display(), n.endpoint),
    );
    let (hash, growth) = finish(child, lines);
    println!("reader: peak rss growth {growth} bytes for a {MEMORY_BLOB_BYTES}-byte blob");
    assert_eq!(hash, expected);
    assert!(
        growth < PEAK_GROWTH_BYTES_MAX,
        "the reader grew by {growth} bytes moving {MEMORY_BLOB_BYTES}"
    );
}

const RESUME_TEST: &str = "a_download_killed_at_random_points_resumes_and_completes";

#[test]
fn a_download_killed_at_random_points_resumes_and_completes() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let rt = runtime();
    let n = node(&rt);
    let cid = pattern_cid(RESUME_BLOB_BYTES);
    let expected = hex(cid.as_bytes());
    // The writer runs in this process: only the download is killed.
    let a = replica(1);
    configure(&a);
    let data = a
        .write_blob(Pattern {
            at: 0,
            len: RESUME_BLOB_BYTES,
        })
        .unwrap();
    let req = WriteRequest {
        protocol: notes(),
        path: note(),
        key: RecordKey::Natural(b"big".to_vec()),
        parent: None,
        data: None,
        author: alice(),
    };
    a.write_with_blob(&tenant(), req, data).unwrap();
    let ea = engine(
        &a,
        Arc::new(HttpConnector::default()),
        vec![Endpoint::new(&n.endpoint).unwrap()],
        fast_config(),
    );
    rt.block_on(sync_until_quiet(&ea, 4));

    // A failing run prints its seed; WEFT_BLOB_KILL_SEED replays it.
    let seed = std::env::var("WEFT_BLOB_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            d.as_secs() ^ u64::from(d.subsec_nanos()) << 20
        });
    println!("kill points seed {seed}");
    let mut rng = seed | 1;
    let b = tempfile::tempdir().unwrap();
    let spec = format!("pull|{}|{}|{expected}", b.path().display(), n.endpoint);
    let mut durable = 0u64;
    for kill in 0..KILLS {
        // A random point in the part still to download.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = durable + 1 + rng % (RESUME_BLOB_BYTES - durable) / 2;
        let (mut child, lines) = spawn(RESUME_TEST, spec.clone());
        for line in lines {
            let line = line.unwrap();
            let line = line.rsplit(" ... ").next().unwrap_or_default();
            if let Some(o) = line.strip_prefix("offset ") {
                let seen: u64 = o.parse().unwrap();
                if seen >= target {
                    child.kill().unwrap(); // SIGKILL
                    break;
                }
            }
        }
        child.wait().unwrap();
        // What the killed download left is kept, never less than before.
        let r = Replica::builder()
            .node_id(NodeId(2))
            .open(b.path())
            .unwrap();
        let offset = r.ledger().blobs().upload_offset(&cid).unwrap().unwrap_or(0);
        assert!(
            !r.ledger().blobs().has(&cid).unwrap(),
            "kill {kill} landed after the end"
        );
        assert!(
            offset >= durable,
            "kill {kill}: offset went back from {durable} to {offset}"
        );
        // The child goes on downloading between printing an offset and the kill landing,
        // so more than the last offset it printed may be stored: only going back is wrong.
        durable = offset;
        r.close().unwrap();
    }
    assert!(durable > 0, "no kill left anything to resume from");
    let (child, lines) = spawn(RESUME_TEST, spec);
    let (hash, _) = finish(child, lines);
    assert_eq!(hash, expected, "the resumed download has the right hash");
}
