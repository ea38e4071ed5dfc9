//! The `weft` binary against the real world's conditions: a node serving TLS with a
//! private CA, a node that accepts connections and never answers (timeouts and retries
//! from the flags), and the CLI's findings of issue 21 (what a failed command leaves
//! behind, read commands on a missing store, errors that say what happened).

mod cli_support;

use std::net::TcpListener;
use std::time::Duration;

use cli_support::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Writes a CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`node.crt`,
/// `node.key`) into the env's directory.
fn write_pki(env: &Env) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(env.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(env.path("node.crt"), cert.pem()).unwrap();
    std::fs::write(env.path("node.key"), key.serialize_pem()).unwrap();
}

#[test]
fn sync_over_tls_with_the_nodes_ca_and_a_clear_refusal_without_it() {
    let mut env = Env::new();
    write_pki(&env);
    let node = env.serve("node", &["--tls-cert", "node.crt", "--tls-key", "node.key"]);
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    let token = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
    ]);
    env.set("WEFT_TOKEN", token.stdout.trim());
    env.set("WEFT_NODE", &node.url);
    env.set("WEFT_TENANT", "demo");

    env.ok(&["put", "--store", "a", "greeting", "hello over tls"]);
    env.ok(&["sync", "--store", "a", "--tls-ca", "ca.pem"]);
    env.ok(&["sync", "--store", "b", "--tls-ca", "ca.pem"]);
    let got = env.ok(&["get", "--store", "b", "greeting"]);
    assert_eq!(got.stdout.trim(), "hello over tls");

    // Without the CA the node's certificate is not trusted: exit 3, saying why.
    let r = env.fails(3, &["sync", "--store", "c"]);
    assert!(
        r.stderr.contains("certificate is not trusted"),
        "{}",
        r.report()
    );
    // Plain http:// to the TLS node: exit 3 (the node is there, the scheme is wrong),
    // told to use https://.
    let plain = node.url.replace("https://", "http://");
    for args in [
        vec!["sync", "--store", "d", "--node", &plain],
        vec!["health", "--node", &plain],
    ] {
        let r = env.fails(3, &args);
        assert!(
            r.stderr.contains("speaks TLS only") && r.stderr.contains("use an https:// endpoint"),
            "{}",
            r.report()
        );
        assert!(r.stderr.contains("as https://HOST:PORT"), "{}", r.report());
    }
    // A TLS flag without its pair is a usage error.
    env.fails(2, &["serve", "--data-dir", "n2", "--tls-cert", "node.crt"]);
}

/// A node that accepts connections and never answers: `--timeout` and `--retries` bound
/// the wait, and the error states all of it.
#[test]
fn timeout_and_retries_from_the_flags_and_the_whole_wait_in_the_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = std::thread::spawn(move || {
        let mut open = Vec::new();
        for tcp in listener.incoming().take(16) {
            open.push(tcp);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut env = Env::new();
    env.set("WEFT_TENANT", "demo");
    let key = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "k",
        "--create-key",
        "--tenant",
        "demo",
    ]);
    env.set("WEFT_TOKEN", key.stdout.trim());
    let node = format!("http://{addr}");
    let r = env.fails(
        3,
        &[
            "health",
            "--node",
            &node,
            "--timeout",
            "0.3",
            "--retries",
            "1",
        ],
    );
    assert!(
        r.stderr.contains("no answer after 2 attempts over"),
        "{}",
        r.report()
    );
    assert!(r.stderr.contains("(each allowed 0.3 s)"), "{}", r.report());
    env.fails(2, &["health", "--node", &node, "--timeout", "0"]);
    drop(hold);
}

/// `token issue` signs with the node's key: a missing key file is an error (a new key
/// would make tokens the node refuses), unless `--create-key` asks for one.
#[test]
fn token_issue_refuses_a_missing_key_file_unless_asked_to_create_one() {
    let env = Env::new();
    let r = env.fails(
        5,
        &["token", "issue", "--key-file", "nokey", "--tenant", "demo"],
    );
    assert!(r.stderr.contains("no key file at"), "{}", r.report());
    assert!(r.stderr.contains("--create-key"), "{}", r.report());
    assert!(r.stdout.is_empty(), "{}", r.report());
    assert!(!env.path("nokey").exists());
    let r = env.ok(&["token", "issue", "--key-file", "nokey", "--create-key"]);
    assert!(env.path("nokey").exists());
    // The same key signs the next token without the flag.
    let again = env.ok(&["token", "issue", "--key-file", "nokey"]);
    assert!(!r.stdout.trim().is_empty() && !again.stdout.trim().is_empty());
}

/// Read commands never create a store: not where nothing is, and not inside a node's
/// data directory (which holds a store one level down).
#[test]
fn read_commands_never_create_a_store() {
    let (env, node) = env_with_node(&[]);
    let before = files_under(&env.path("node"));
    for args in [
        vec!["list", "--store", "node"],
        vec!["get", "--store", "node", "k"],
        vec!["status", "--store", "node"],
    ] {
        let r = env.fails(5, &args);
        assert!(r.stderr.contains("no store at"), "{}", r.report());
        assert!(r.stderr.contains("node's data directory"), "{}", r.report());
    }
    assert_eq!(files_under(&env.path("node")), before);
    for args in [
        vec!["list", "--store", "nowhere"],
        vec!["get", "--store", "nowhere", "k"],
        vec!["links", "--store", "nowhere"],
        vec!["dead-letters", "list", "--store", "nowhere"],
    ] {
        let r = env.fails(5, &args);
        assert!(r.stderr.contains("no store at"), "{}", r.report());
    }
    assert!(!env.path("nowhere").exists());
    drop(node);
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A TCP server on 127.0.0.1 that answers every request with `reply` (then closes).
fn fake_server(reply: &'static [u8]) -> String {
    use std::io::{Read as _, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(reply);
            });
        }
    });
    format!("http://{addr}")
}

/// Another web server at the address, and a reply cut mid-body: exit 3 both, each with
/// the words for what happened.
#[test]
fn a_non_weft_server_and_a_cut_reply_are_exit_3_with_the_right_words() {
    let mut env = Env::new();
    env.set("WEFT_TENANT", "demo");
    let token = env.ok(&["token", "issue", "--key-file", "k", "--create-key"]);
    env.set("WEFT_TOKEN", token.stdout.trim());

    let html = fake_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    );
    let r = env.fails(3, &["health", "--node", &html]);
    assert!(r.stderr.contains("not a weft node"), "{}", r.report());
    assert!(
        r.stderr.contains("another program answers"),
        "{}",
        r.report()
    );
    let not_found = fake_server(
        b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
    );
    let r = env.fails(3, &["sync", "--store", "a", "--node", &not_found]);
    assert!(r.stderr.contains("not a weft node"), "{}", r.report());

    let cut = fake_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-weft-frame\r\ncontent-length: 1000\r\n\r\nWEFT",
    );
    let r = env.fails(3, &["health", "--node", &cut, "--retries", "0"]);
    assert!(
        r.stderr
            .contains("the call broke before the node answered in full"),
        "{}",
        r.report()
    );
    assert!(!r.stderr.contains("not a weft node"), "{}", r.report());
}

/// A sync with a mistyped node or a forged token fails before anything is registered:
/// the store's link, its node and its checkpoints stay, so the next plain sync moves
/// nothing again.
#[test]
fn a_failed_sync_changes_no_registration_and_prunes_no_checkpoint() {
    let (env, node) = env_with_node(&[]);
    for n in 0..8 {
        env.ok(&["put", "--store", "a", &format!("k{n}"), "v"]);
    }
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["sync", "--store", "b"]);
    let links_before = env.ok(&["links", "--store", "b", "--json"]).json();

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    env.fails(3, &["sync", "--store", "b", "--node", &nowhere]);
    let forged = env.ok(&["token", "issue", "--key-file", "other.key", "--create-key"]);
    env.fails(
        4,
        &["sync", "--store", "b", "--token", forged.stdout.trim()],
    );

    let links_after = env.ok(&["links", "--store", "b", "--json"]).json();
    assert_eq!(links_before, links_after);
    // The next plain sync goes to the registered node and moves nothing.
    let r = env.ok(&["sync", "--store", "b", "--json"]).json();
    assert_eq!(r["node"], node.url.as_str());
    assert_eq!(r["pulled"]["messages"], 0, "{r}");
    assert_eq!(r["pushed"]["messages"], 0, "{r}");
}

/// A put whose value travels as a blob is printed by `watch --json` under its key with
/// its value once the blob arrived, not as a record id with a null value.
#[test]
fn watch_prints_a_staged_blob_under_its_key_when_it_arrives() {
    let (env, _node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "before", "1"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["sync", "--store", "b"]);
    let mut watch = env.spawn(&["watch", "--store", "b", "--json", "--count", "1"]);
    watch.wait_stderr("watching tenant demo");
    // Above the inline limit (32 KiB): the value is a blob.
    let big = "x".repeat(100 * 1024);
    std::fs::write(env.path("big.txt"), &big).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.txt"]);
    env.ok(&["sync", "--store", "a"]);
    let (status, stdout, stderr) = watch.wait();
    assert!(status.success(), "{stderr}");
    let change: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(change["op"], "put");
    assert_eq!(change["key"], "big");
    assert_eq!(change["value"].as_str().map(str::len), Some(big.len()));
    assert!(change["hlc"].as_str().unwrap().contains('@'), "{change}");
}

/// `--json` outputs carry the full version (cid and HLC); `delete --json` exists;
/// `list --deleted` shows tombstones under their keys.
#[test]
fn json_versions_delete_json_and_listed_tombstones() {
    let env = Env::new();
    let put = env.ok(&["put", "--store", "a", "--json", "k", "v"]).json();
    let hlc = put["hlc"].as_str().unwrap().to_owned();
    let (wall, rest) = hlc.split_once('.').unwrap();
    assert!(
        wall.parse::<u64>().unwrap() > 0 && rest.contains('@'),
        "{hlc}"
    );
    assert_eq!(put["cid"].as_str().unwrap().len(), 64);
    let got = env.ok(&["get", "--store", "a", "--json", "k"]).json();
    assert_eq!(got["hlc"], hlc.as_str());
    assert_eq!(got["cid"], put["cid"]);
    env.ok(&["put", "--store", "a", "other", "w"]);

    let del = env.ok(&["delete", "--store", "a", "--json", "k"]).json();
    assert_eq!(del["key"], "k");
    assert_eq!(del["outcome"], "won");
    assert_ne!(del["cid"], put["cid"]);
    assert_ne!(del["hlc"], put["hlc"]);

    let live = env.ok(&["list", "--store", "a", "--json"]).json();
    let keys: Vec<&str> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["other"]);
    let all = env
        .ok(&["list", "--store", "a", "--json", "--deleted"])
        .json();
    let k = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "k")
        .unwrap();
    assert_eq!(k["deleted"], true);
    assert_eq!(k["residency"], "tombstoned");
    assert_eq!(k["cid"], del["cid"]);
    assert_eq!(k["hlc"], del["hlc"]);
    let table = env.ok(&["list", "--store", "a", "--deleted"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("k ") && l.contains("tombstoned")),
        "{}",
        table.report()
    );
}

/// Ctrl-C during a sync that is stuck (its node is stopped): the sync says what it did
/// and exits 130; the next sync, with the node back, completes.
#[test]
fn ctrl_c_during_sync_says_what_was_done_and_exits_130() {
    let (env, node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "k", "v"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["put", "--store", "a", "k2", "v2"]);
    signal(node.bg.pid(), "STOP");
    let mut sync = env.spawn(&["sync", "--store", "a"]);
    std::thread::sleep(Duration::from_millis(500));
    signal(sync.pid(), "INT");
    let (status, _, stderr) = sync.wait();
    signal(node.bg.pid(), "CONT");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("weft: interrupted (SIGINT) during the sync with"),
        "{stderr}"
    );
    assert!(stderr.contains("pulled 0 messages"), "{stderr}");
    assert!(
        stderr.contains("`weft sync` continues from there"),
        "{stderr}"
    );
    let r = env.ok(&["sync", "--store", "a", "--json"]).json();
    assert_eq!(r["pushed"]["messages"], 1, "{r}");
}

/// `--token-file` is read again when the engine connects and refreshes: a `watch` whose
/// token expired goes on, after the node restarts, with the token now in the file.
#[test]
fn watch_takes_a_rotated_token_from_its_token_file() {
    let mut env = Env::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = env.serve_with(&["serve", "--data-dir", "node", "--listen", &listen]);
    let long = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
    ]);
    // Long enough that the watch connects and receives "one" with it on a loaded
    // machine (2 s was not, under a full test run), short enough to wait out.
    let short_issued = std::time::Instant::now();
    let short = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
        "--expires-in",
        "8s",
    ]);
    env.set("WEFT_NODE", &node.url);
    env.set("WEFT_TENANT", "demo");
    std::fs::write(env.path("tok"), short.stdout.trim()).unwrap();
    let mut watch = env.spawn(&[
        "watch",
        "--store",
        "b",
        "--token-file",
        "tok",
        "--json",
        "--count",
        "2",
    ]);
    watch.wait_stderr("watching tenant demo");
    let write = |key: &str| {
        env.ok(&["put", "--store", "a", key, "v"]);
        env.ok(&["sync", "--store", "a", "--token", long.stdout.trim()]);
    };
    write("one");
    watch.wait_stdout(|l| l.contains("\"one\"").then_some(()));
    // The short token expires; the file gets a new one; the node restarts, so the
    // watch must connect again.
    std::fs::write(env.path("tok"), long.stdout.trim()).unwrap();
    std::thread::sleep(Duration::from_millis(8_500).saturating_sub(short_issued.elapsed()));
    let (status, _) = node.terminate();
    assert!(status.success());
    let _node = env.serve_with(&["serve", "--data-dir", "node", "--listen", &listen]);
    write("two");
    let (status, stdout, stderr) = watch.wait();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("\"two\""), "{stdout}\n{stderr}");
}

/// The sync summary counts blob bytes both ways: a value above the inline limit is a
/// blob, and neither its upload nor its download is reported as a few KiB.
#[test]
fn sync_summaries_count_blob_bytes() {
    let (env, _node) = env_with_node(&[]);
    let big = "y".repeat(3 * 1024 * 1024);
    std::fs::write(env.path("big.txt"), &big).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.txt"]);
    let pushed = env.ok(&["sync", "--store", "a", "--json"]).json();
    // The stored value is the file in the CLI's value encoding: a few bytes more.
    let blob = pushed["pushed"]["blob_bytes"].as_u64().unwrap();
    assert!(
        (big.len() as u64..big.len() as u64 + 64).contains(&blob),
        "{pushed}"
    );
    assert!(pushed["pushed"]["bytes"].as_u64().unwrap() > big.len() as u64);
    let pulled = env.ok(&["sync", "--store", "b", "--json"]).json();
    assert_eq!(pulled["pulled"]["blob_bytes"], blob, "{pulled}");
    assert_eq!(
        pulled["pulled"]["bytes"].as_u64().unwrap(),
        pulled["pulled"]["message_bytes"].as_u64().unwrap() + blob
    );
    // Without --json: the human summary says the blob's size, not the message's bytes.
    std::fs::write(env.path("big2.txt"), "z".repeat(3 * 1024 * 1024)).unwrap();
    env.ok(&["put", "--store", "a", "big2", "--file", "big2.txt"]);
    env.ok(&["sync", "--store", "a"]);
    let summary = env.ok(&["sync", "--store", "b"]).stdout;
    assert!(
        summary.contains("pulled 1 messages (3.0 MiB:") && summary.contains("3.0 MiB of blobs"),
        "{summary}"
    );
}
