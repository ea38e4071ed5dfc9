//! The `weft` binary as its users run it: child processes on 127.0.0.1, in temporary
//! directories, with the environment cleared of `WEFT_*` settings. Every child is killed
//! by a guard when a test ends, passing or not.
//!
//! Covered: the README's tour and config example run line by line, serve, tokens, put
//! on one replica and get on another after syncs, watch receiving a live change, `--json`
//! outputs parsed, every documented exit code, dead letters, metrics, graceful shutdown
//! with an in-flight sync and a live subscription, and the quickstart.

mod cli_support;

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_support::*;
use serde_json::Value;

/// Splits a shell line into words: spaces separate, double quotes group.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap()
}

/// The lines of the README's tour block.
fn tour_lines() -> Vec<String> {
    let text = readme();
    let start = text.find("<!-- tour:start -->").expect("tour start marker");
    let end = text.find("<!-- tour:end -->").expect("tour end marker");
    text[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with("```") && !l.starts_with("<!--")
        })
        .map(str::to_owned)
        .collect()
}

/// The README's TOML config example: the TOML block that sets `listen` (another one
/// is an application's `Cargo.toml`).
fn readme_toml() -> String {
    let text = readme();
    text.split("```toml\n")
        .skip(1)
        .map(|block| &block[..block.find("```").expect("a closed toml block")])
        .find(|block| block.lines().any(|l| l.starts_with("listen")))
        .expect("a toml block with listen")
        .to_owned()
}

// ---- the README ----------------------------------------------------------------------

/// Runs the tour exactly as written (on a free port instead of 7700): `export` lines set
/// variables (with `$(weft ...)` replaced by its output), lines ending in `&` run in the
/// background, every other line must exit 0.
#[test]
fn readme_tour_runs() {
    let mut env = Env::new();
    let port = free_port().to_string();
    let mut background: Vec<(String, Background)> = Vec::new();
    let mut node_pid = None;
    for raw in tour_lines() {
        let line = raw.replace("7700", &port);
        if let Some(assignments) = line.strip_prefix("export ") {
            if let Some((k, v)) = assignments.split_once("=$(") {
                let cmd = v.strip_suffix(')').unwrap();
                let w = words(cmd);
                assert_eq!(w[0], "weft", "{line}");
                let args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
                let out = env.ok(&args);
                env.set(k, out.stdout.trim());
            } else {
                for pair in words(assignments) {
                    let (k, v) = pair.split_once('=').unwrap();
                    env.set(k, v);
                }
            }
            continue;
        }
        let (line, bg) = match line.strip_suffix('&') {
            Some(l) => (l.trim().to_owned(), true),
            None => (line, false),
        };
        let w = words(&line);
        assert_eq!(w[0], "weft", "the tour only runs weft: {line}");
        let args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
        if !bg {
            env.ok(&args);
            continue;
        }
        let mut b = env.spawn(&args);
        match args[0] {
            "serve" => {
                b.wait_stdout(|l| l.starts_with("listening on ").then_some(()));
                node_pid = Some(b.pid());
            }
            "watch" => b.wait_stderr("watching tenant"),
            other => panic!("unexpected background command {other}"),
        }
        background.push((args[0].to_owned(), b));
    }
    // The watch printed the note written on A.
    let (_, watch) = background
        .iter_mut()
        .find(|(name, _)| name == "watch")
        .expect("the tour watches");
    watch.wait_stdout(|l| l.contains("note written while B watches").then_some(()));
    // The node shuts down gracefully.
    signal(node_pid.expect("the tour runs a node"), "TERM");
    let (_, node) = background.iter_mut().find(|(n, _)| n == "serve").unwrap();
    let (status, _, stderr) = node.wait();
    assert!(status.success(), "node exit {status}:\n{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

/// The README's config example, with `weft serve --config weft.toml`.
#[test]
fn readme_config_example_serves() {
    let env = Env::new();
    let toml = readme_toml().replace("127.0.0.1:7700", "127.0.0.1:0");
    std::fs::write(env.path("weft.toml"), toml).unwrap();
    let line = "weft serve --config weft.toml";
    assert!(readme().contains(line));
    let w = words(line);
    let args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
    let node = env.serve_with(&args);
    assert!(
        env.path("node/node.key").exists(),
        "key under data_dir from the file"
    );
    assert!(env.path("node/store").is_dir());
    let (code, body) = node.get("/metrics");
    assert_eq!(code, 200, "metrics = true in the example");
    assert!(body.contains("weft_connections_active"));
    let (status, stderr) = node.terminate();
    assert!(status.success(), "node exit {status}:\n{stderr}");
}

/// Every `weft` command in the README's shell blocks is one these tests run.
#[test]
fn every_weft_command_in_the_readme_is_run() {
    let text = readme();
    let tour = tour_lines();
    let mut in_sh = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("```") {
            in_sh = l == "```sh";
            continue;
        }
        if !in_sh || l.starts_with('#') || !l.contains("weft ") {
            continue;
        }
        if l.starts_with("cargo ") || l.starts_with("export PATH") {
            continue;
        }
        assert!(
            tour.iter().any(|t| t == l) || l == "weft serve --config weft.toml",
            "README command not run by a test: {l}"
        );
    }
}

// ---- commands ------------------------------------------------------------------------

#[test]
fn help_for_every_command_has_examples_and_exit_codes() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    assert!(top.stdout.contains("Exit codes"), "{}", top.stdout);
    assert!(top.stdout.contains("quickstart"));
    for cmd in [
        vec!["serve"],
        vec!["token", "issue"],
        vec!["token", "inspect"],
        vec!["put"],
        vec!["get"],
        vec!["list"],
        vec!["delete"],
        vec!["sync"],
        vec!["watch"],
        vec!["status"],
        vec!["links"],
        vec!["health"],
        vec!["dead-letters", "list"],
        vec!["dead-letters", "retry"],
        vec!["dead-letters", "clear"],
        vec!["quickstart"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let r = env.ok(&args);
        assert!(
            r.stdout.contains("Example"),
            "no examples in {cmd:?} --help"
        );
        assert!(
            r.stdout.contains("Exit codes"),
            "no exit codes in {cmd:?} --help"
        );
    }
}

/// serve, token, put on one replica, sync both, get on the other, and the JSON outputs.
#[test]
fn put_on_one_replica_get_on_another_through_a_node() {
    let (env, node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "greeting", "hello"]);
    let put = env
        .ok(&["put", "--store", "a", "count", "3", "--json"])
        .json();
    assert_eq!(put["outcome"], "won", "{put}");
    assert_eq!(put["winner"], Value::Null, "{put}");
    let sync = env.ok(&["sync", "--store", "a", "--json"]).json();
    assert_eq!(
        sync["pushed"]["messages"], 3,
        "configure and two writes: {sync}"
    );
    assert_eq!(sync["converged"], true);
    assert_eq!(sync["dead_letters"], 0);
    let sync = env.ok(&["sync", "--store", "b", "--json"]).json();
    assert_eq!(sync["pulled"]["messages"], 3, "{sync}");

    assert_eq!(env.ok(&["get", "--store", "b", "greeting"]).stdout, "hello");
    let got = env.ok(&["get", "--store", "b", "count", "--json"]).json();
    assert_eq!(got["value"], "3");
    assert_eq!(got["key"], "count");
    let list = env.ok(&["list", "--store", "b", "--json"]).json();
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["count", "greeting"]);

    // A delete travels too.
    env.ok(&["delete", "--store", "b", "count"]);
    env.ok(&["sync", "--store", "b"]);
    env.ok(&["sync", "--store", "a"]);
    env.fails(1, &["get", "--store", "a", "count"]);

    // Inspection, as JSON.
    let status = env.ok(&["status", "--store", "a", "--json"]).json();
    assert_eq!(status["tenants"][0]["tenant"], "demo");
    assert_eq!(status["links"][0]["node"], node.url.as_str());
    assert_eq!(status["links"][0]["pending_outbound"], 0);
    assert_eq!(status["health"]["healthy"], true);
    let links = env.ok(&["links", "--store", "a", "--json"]).json();
    assert_eq!(links.as_array().unwrap().len(), 1);
    assert_eq!(links[0]["connectivity"], "online");
    assert!(links[0]["last_sync_ms"].as_u64().is_some());
    let health = env.ok(&["health", "--store", "a", "--json"]).json();
    assert_eq!(health["healthy"], true);
    let health = env.ok(&["health", "--node", &node.url, "--json"]).json();
    assert_eq!(health["node"], node.url.as_str());
    assert!(health["protocol_versions"].as_array().is_some());
    let letters = env
        .ok(&["dead-letters", "list", "--store", "a", "--json"])
        .json();
    assert_eq!(letters, Value::Array(vec![]));

    // The token, inspected and verified.
    let token = env
        .vars
        .iter()
        .find(|(k, _)| k == "WEFT_TOKEN")
        .unwrap()
        .1
        .clone();
    let t = env
        .ok(&[
            "token",
            "inspect",
            "--key-file",
            "node/node.key",
            "--json",
            &token,
        ])
        .json();
    assert_eq!(t["tenant"], "demo");
    assert_eq!(t["role"], "owner");
    assert_eq!(t["verified"], true);
    assert_eq!(t["actions"], serde_json::json!(["read", "write", "sync"]));
}

#[test]
fn delegate_tokens_carry_scope_actions_and_expiry() {
    let env = Env::new();
    let r = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "k.key",
        "--create-key",
        "--tenant",
        "demo",
        "--delegate",
        "phone",
        "--protocol",
        "weft:kv",
        "--actions",
        "read,sync",
        "--expires-in",
        "2h",
    ]);
    assert!(r.stderr.contains("created a new node key"));
    let t = env
        .ok(&[
            "token",
            "inspect",
            "--key-file",
            "k.key",
            "--json",
            r.stdout.trim(),
        ])
        .json();
    assert_eq!(t["role"], "delegate");
    assert_eq!(t["principal"], "phone");
    assert_eq!(t["actions"], serde_json::json!(["read", "sync"]));
    assert_eq!(
        t["scope"],
        serde_json::json!({ "ProtocolSet": ["weft:kv"] })
    );
    assert_eq!(t["expired"], false);
    // A usage error: --protocol needs --delegate.
    env.fails(
        2,
        &["token", "issue", "--key-file", "k.key", "--protocol", "x"],
    );
}

/// A delegate's replica writes as the delegate by default, and the node refuses a
/// version claiming another author: the sync exits 1 and the message is a dead letter.
#[test]
fn a_delegate_writes_as_itself_and_a_forged_author_is_refused() {
    let (mut env, _node) = env_with_node(&[]);
    env.ok(&["put", "--store", "owner", "greeting", "hello"]);
    env.ok(&["sync", "--store", "owner"]);
    let phone = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--delegate",
        "phone",
        "--protocol",
        "weft:kv",
    ]);
    let owner_token = env
        .vars
        .iter()
        .find(|(k, _)| k == "WEFT_TOKEN")
        .unwrap()
        .1
        .clone();
    env.set("WEFT_TOKEN", phone.stdout.trim());
    env.ok(&["sync", "--store", "phone"]);
    env.ok(&["put", "--store", "phone", "greeting", "from the phone"]);
    env.ok(&["sync", "--store", "phone"]);
    env.ok(&["put", "--store", "phone", "--author", "demo", "forged", "x"]);
    let refused = env.fails(1, &["sync", "--store", "phone"]);
    assert!(
        refused.stderr.contains("dead-letters"),
        "{}",
        refused.report()
    );
    let letters = env.ok(&["dead-letters", "list", "--store", "phone"]);
    assert!(
        letters.stdout.contains("unauthorized"),
        "{}",
        letters.report()
    );
    env.set("WEFT_TOKEN", &owner_token);
    env.ok(&["sync", "--store", "owner"]);
    let list = env.ok(&["list", "--store", "owner", "--json"]).json();
    let rows = list.as_array().expect("a JSON list");
    assert_eq!(
        rows.len(),
        1,
        "the forged record never reached the owner: {list}"
    );
    assert_eq!(rows[0]["author"], "phone");
    assert_eq!(rows[0]["key"], "greeting");
}

#[test]
fn watch_prints_a_live_change() {
    let (env, _node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "before", "1"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["sync", "--store", "b"]);
    let mut watch = env.spawn(&["watch", "--store", "b", "--json", "--count", "1"]);
    watch.wait_stderr("watching tenant demo");
    env.ok(&["put", "--store", "a", "live", "arrived"]);
    env.ok(&["sync", "--store", "a"]);
    let (status, stdout, stderr) = watch.wait();
    assert!(status.success(), "{stderr}");
    let change: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(change["op"], "put");
    assert_eq!(change["key"], "live");
    assert_eq!(change["value"], "arrived");
    // B applied it durably: readable after the watch ended.
    assert_eq!(env.ok(&["get", "--store", "b", "live"]).stdout, "arrived");
}

#[test]
fn dead_letters_list_retry_and_clear() {
    let (env, node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "k", "v"]);
    env.ok(&["sync", "--store", "a"]);
    // Record two dead letters in A's store as the engine would: a push failure of a
    // message both sides now hold, and a closure failure, which convergence never clears.
    {
        let replica = sync_engine::Replica::open(env.path("a")).unwrap();
        let tenant = sync_types::TenantId::new("demo").unwrap();
        let sync_ledger::LogRead::Page(page) = replica.changes_since(&tenant, None, 10).unwrap()
        else {
            panic!("a fresh cursor is not a gap")
        };
        for (entry, category) in page.entries.iter().zip([
            sync_types::DeadLetterCategory::PushExhausted,
            sync_types::DeadLetterCategory::Closure,
        ]) {
            replica
                .ledger()
                .dead_letters()
                .record(
                    sync_types::DeadLetter {
                        cid: entry.cid(),
                        tenant: tenant.clone(),
                        endpoint: sync_types::Endpoint::new(node.url.as_str()).unwrap(),
                        protocol: None,
                        category,
                        error_code: None,
                        error: "test failure".into(),
                        attempts: 1,
                        failed_at_ms: 1,
                    },
                    sync_ledger::Durability::SyncData,
                )
                .unwrap();
        }
    }
    let letters = env
        .ok(&["dead-letters", "list", "--store", "a", "--json"])
        .json();
    assert_eq!(letters.as_array().unwrap().len(), 2, "{letters}");
    // Unhealthy: exit 1, and the table says so.
    let h = env.fails(1, &["health", "--store", "a"]);
    assert!(h.stdout.contains("NO"), "{}", h.report());
    // Retry: the reconcile converges, which clears the push failure but not the closure
    // failure, so one still fails.
    let r = env.fails(1, &["dead-letters", "retry", "--store", "a", "--json"]);
    let v = r.json();
    assert_eq!(v["retried"], 2);
    assert_eq!(v["went_through"], 1);
    assert_eq!(v["still_failing"][0]["category"], "closure");
    env.ok(&[
        "dead-letters",
        "clear",
        "--store",
        "a",
        "--category",
        "closure",
    ]);
    env.ok(&["health", "--store", "a"]);
    assert_eq!(
        env.ok(&["dead-letters", "list", "--store", "a", "--json"])
            .json(),
        Value::Array(vec![])
    );
}

// ---- exit codes ----------------------------------------------------------------------

#[test]
fn exit_codes_mean_what_the_help_says() {
    let (env, node) = env_with_node(&[]);

    // 2: usage errors.
    env.fails(2, &["put"]);
    env.fails(2, &["frobnicate"]);
    env.fails(2, &["sync", "--store", "a", "--node", "ftp://example.com"]);
    env.fails(2, &["put", "--tenant", "bad^tenant", "k", "v"]);
    env.fails(
        2,
        &["serve", "--data-dir", "n2", "--listen", "not-an-address"],
    );
    std::fs::write(env.path("bad.toml"), "listen = [").unwrap();
    let r = env.fails(2, &["serve", "--config", "bad.toml"]);
    assert!(r.stderr.contains("bad config file"), "{}", r.report());

    // 1: the command ran but did not succeed.
    env.ok(&["put", "--store", "a", "k", "v"]);
    env.fails(1, &["get", "--store", "a", "missing"]);
    env.fails(1, &["delete", "--store", "a", "missing"]);

    // 3: cannot reach the node (nothing listens on a freed port).
    let dead = format!("http://127.0.0.1:{}", free_port());
    let r = env.fails(3, &["sync", "--store", "a", "--node", &dead]);
    assert!(r.stderr.contains("weft: hint:"), "{}", r.report());
    env.fails(3, &["health", "--node", &dead]);

    // 4: authorization refused: a token from another key, a malformed one, a
    // delegate without write access pushing.
    let other = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "other.key",
        "--create-key",
        "--tenant",
        "demo",
    ]);
    let r = env.fails(
        4,
        &[
            "sync",
            "--store",
            "a",
            "--node",
            &node.url,
            "--token",
            other.stdout.trim(),
        ],
    );
    assert!(r.stderr.contains("another node's key"), "{}", r.report());
    env.fails(4, &["sync", "--store", "a", "--token", "weft1.garbage.x"]);
    env.fails(
        4,
        &[
            "token",
            "inspect",
            "--key-file",
            "node/node.key",
            other.stdout.trim(),
        ],
    );
    let reader = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
        "--delegate",
        "reader",
        "--actions",
        "read,sync",
    ]);
    env.fails(
        4,
        &["sync", "--store", "a", "--token", reader.stdout.trim()],
    );

    // 5: the store cannot be opened: a file, or a store another process holds.
    std::fs::write(env.path("not-a-dir"), "x").unwrap();
    env.fails(5, &["put", "--store", "not-a-dir", "k", "v"]);
    env.fails(5, &["list", "--store", "never-written"]);
    env.ok(&["sync", "--store", "b"]);
    let watch = env.spawn(&["watch", "--store", "b"]);
    watch.wait_stderr("watching tenant");
    // Reads and writes go through the watch (its control socket); a sync does not.
    env.ok(&["list", "--store", "b"]);
    let r = env.fails(5, &["sync", "--store", "b"]);
    assert!(r.stderr.contains("another weft process"), "{}", r.report());
    drop(watch);

    // 6: the address is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let r = env.fails(6, &["serve", "--data-dir", "n3", "--listen", &addr]);
    assert!(
        r.stderr.contains("address already in use"),
        "{}",
        r.report()
    );

    // 0: a closed stdout is a normal end.
    for i in 0..50 {
        env.ok(&["put", "--store", "c", &format!("key-{i:02}"), "some value"]);
    }
    let mut c = env.command(&["list", "--store", "c"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

// ---- the node ------------------------------------------------------------------------

#[test]
fn metrics_count_requests_outcomes_and_log_positions() {
    let (env, node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "k", "v"]);
    env.ok(&["sync", "--store", "a"]);
    let (code, body) = node.get("/metrics");
    assert_eq!(code, 200);
    for needle in [
        "# TYPE weft_requests_total counter",
        "weft_requests_total{kind=\"write_batch\",status=\"200\"}",
        "weft_request_duration_seconds_bucket{kind=\"log_page\",le=\"+Inf\"}",
        "weft_apply_outcomes_total{outcome=\"applied\"} 2",
        "weft_log_position{tenant=\"demo\"} 2",
        "weft_subscriptions_active 0",
        "weft_tenants 1",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
    let received: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("weft_received_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(received > 0);

    let quiet = env.serve("node2", &["--no-metrics"]);
    assert_eq!(quiet.get("/metrics").0, 404);
}

#[test]
fn serve_takes_env_over_config_and_logs_json() {
    let mut env = Env::new();
    std::fs::write(
        env.path("weft.toml"),
        "data_dir = \"from-file\"\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    env.set("WEFT_LISTEN", "127.0.0.1:0");
    env.set("WEFT_CONFIG", "weft.toml");
    let node = env.serve_with(&["serve", "--log-format", "json"]);
    assert!(env.path("from-file/node.key").exists());
    let (status, stderr) = node.terminate();
    assert!(status.success(), "node exit {status}:\n{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "node started"),
        "{stderr}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(env.path("from-file/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// SIGTERM while a sync uploads a large value and a watch is subscribed: the node lets
/// open requests finish or refuses cleanly and exits 0; the sync either completed or
/// says the node is unreachable (exit 3); the watch reports the lost connection, and
/// when the node is back on the same address it reconnects by itself and receives what
/// follows; everything converges intact.
#[test]
fn graceful_shutdown_with_an_in_flight_sync() {
    let (env, node) = env_with_node(&["--shutdown-grace-ms", "5000"]);
    env.ok(&["put", "--store", "b", "hello", "b"]);
    env.ok(&["sync", "--store", "b"]);
    let mut watch = env.spawn(&["watch", "--store", "b"]);
    watch.wait_stderr("watching tenant");

    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(env.path("big.bin"), &big).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.bin"]);
    let open = |node: &Node| -> u64 {
        let (_, body) = node.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("weft_connections_active "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = open(&node);
    let mut sync = env.spawn(&["sync", "--store", "a"]);
    // Wait until the sync holds a connection to the node (or has already finished).
    let deadline = Instant::now() + COMMAND_TIME_MAX;
    while open(&node) <= before && !sync.exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let address = node.url.strip_prefix("http://").unwrap().to_owned();
    let (status, stderr) = node.terminate();
    assert!(status.success(), "node exit {status}:\n{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    let (sync_status, _, sync_err) = sync.wait();
    assert!(
        matches!(sync_status.code(), Some(0 | 3)),
        "sync exit {sync_status}:\n{sync_err}"
    );
    watch.wait_stderr("lost the connection");
    assert!(
        !watch.exited(),
        "the watch keeps going:\n{}",
        watch.stderr()
    );

    // The node comes back on the same address and store; the watch reconnects.
    let _node = env.serve_with(&["serve", "--data-dir", "node", "--listen", &address]);
    watch.wait_stderr("reconnected");
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["put", "--store", "a", "after", "restart"]);
    env.ok(&["sync", "--store", "a"]);
    watch.wait_stdout(|l| l.contains("after restart").then_some(()));

    // The watch ends cleanly on SIGTERM; the node holds the large value intact (a fresh
    // replica gets it), and B's change arrived.
    signal(watch.pid(), "TERM");
    let (watch_status, watch_out, watch_err) = watch.wait();
    assert!(watch_status.success(), "{watch_err}");
    assert!(watch_out.contains("after restart"), "{watch_out}");
    env.ok(&["sync", "--store", "c"]);
    let got = env.ok(&["get", "--store", "c", "big", "--json"]).json();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(got["value_base64"].as_str().unwrap())
        .unwrap();
    assert!(bytes == big, "the value arrived intact");
    assert_eq!(env.ok(&["get", "--store", "b", "after"]).stdout, "restart");
    assert_eq!(env.ok(&["get", "--store", "a", "hello"]).stdout, "b");
}

#[test]
fn quickstart_completes_and_cleans_up() {
    let env = Env::new();
    let r = env.ok(&["quickstart"]);
    for needle in [
        "Node listening on http://127.0.0.1:",
        "applied on B",
        "converged",
        "min / median / max",
        "Stopped the node and removed",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            r.report()
        );
    }
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("weft-quickstart-")
        })
        .collect();
    assert!(left.is_empty(), "the quickstart left {left:?}");
}

/// `get --residency`, `get` and `list` show whether a value is here: a value above the
/// inline limit pulled with `sync --no-blobs` is staged until a full sync; a deleted one
/// is tombstoned.
#[test]
fn residency_is_shown_by_get_and_list() {
    let (env, _node) = env_with_node(&[]);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(env.path("big.bin"), &big).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.bin"]);
    env.ok(&["put", "--store", "a", "small", "hello"]);
    env.ok(&["sync", "--store", "a"]);
    let residency = |store: &str, key: &str| {
        env.ok(&["get", "--store", store, key, "--residency"])
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(residency("a", "big"), "resident");
    assert_eq!(residency("a", "nothing"), "absent");

    env.ok(&["sync", "--store", "b", "--no-blobs"]);
    assert_eq!(residency("b", "big"), "staged");
    assert_eq!(residency("b", "small"), "resident");
    let r = env.fails(1, &["get", "--store", "b", "big"]);
    assert!(r.stderr.contains("(staged)"), "{}", r.report());
    let got = env.ok(&["get", "--store", "b", "big", "--json"]).json();
    assert_eq!(got["residency"], "staged");
    let list = env.ok(&["list", "--store", "b"]).stdout;
    let row = |text: &str| {
        list.lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no row with {text}:\n{list}"))
            .to_owned()
    };
    assert!(list.lines().next().unwrap().contains("RESIDENCY"), "{list}");
    // The key of a value that has not arrived is in its blob: the row shows the record.
    assert!(row("(blob not yet received)").contains("staged"), "{list}");
    assert!(row("small").contains("resident"), "{list}");

    env.ok(&["sync", "--store", "b"]);
    assert_eq!(residency("b", "big"), "resident");
    assert!(
        env.ok(&["list", "--store", "b"])
            .stdout
            .lines()
            .any(|l| l.starts_with("big") && l.contains("resident"))
    );
    let got = env.ok(&["get", "--store", "b", "big", "--json"]).json();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(got["value_base64"].as_str().unwrap())
        .unwrap();
    assert!(bytes == big, "the value arrived intact");

    env.ok(&["delete", "--store", "b", "big"]);
    assert_eq!(residency("b", "big"), "tombstoned");
    let r = env.fails(1, &["get", "--store", "b", "big"]);
    assert!(r.stderr.contains("(tombstoned)"), "{}", r.report());
}

/// `serve --blob-bytes-max` refuses a larger blob with an error naming the limit; the
/// message referencing it is not stored either, and a value within the limit goes
/// through.
#[test]
fn serve_refuses_blobs_over_its_upload_limit() {
    // A node with a small store, as a memory-bound deployment runs it.
    let (env, _node) = env_with_node(&[
        "--blob-bytes-max",
        "100000",
        "--store-cache-mib",
        "8",
        "--store-memtable-mib",
        "4",
    ]);
    std::fs::write(env.path("big.bin"), vec![7u8; 150_000]).unwrap();
    std::fs::write(env.path("fits.bin"), vec![8u8; 90_000]).unwrap();
    env.ok(&["put", "--store", "a", "fits", "--file", "fits.bin"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["put", "--store", "a", "big", "--file", "big.bin"]);
    let r = env.run(&["sync", "--store", "a"]);
    assert_ne!(r.code, 0, "{}", r.report());
    assert_eq!(r.code, 4, "refused: {}", r.report());
    assert!(
        r.stderr
            .contains("exceeds tenant demo's upload limit of 100000 bytes"),
        "{}",
        r.report()
    );
    assert!(r.stderr.contains("--blob-bytes-max"), "{}", r.report());
    assert!(!r.stderr.contains("panicked"), "{}", r.report());
    env.ok(&["sync", "--store", "b"]);
    assert_eq!(
        env.ok(&["get", "--store", "b", "fits", "--residency"])
            .stdout
            .trim(),
        "resident"
    );
    assert_eq!(
        env.ok(&["get", "--store", "b", "big", "--residency"])
            .stdout
            .trim(),
        "absent"
    );
}

#[test]
fn a_node_at_its_connection_limit_says_so_with_exit_3() {
    let (env, node) = env_with_node(&[
        "--connections-max",
        "2",
        "--connections-per-address-max",
        "2",
        "--first-byte-time-ms-max",
        "60000",
    ]);
    let authority = node.url.strip_prefix("http://").unwrap();
    // Two connections that send nothing take both slots (the node accepts in order,
    // so they are admitted before the sync's connection).
    let _idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(authority).unwrap())
        .collect();
    let r = env.fails(3, &["sync", "--store", "a"]);
    assert!(
        r.stderr
            .contains("the node is at its limit of 2 connections"),
        "{}",
        r.report()
    );
    assert!(!r.stderr.contains("did not answer"), "{}", r.report());
    assert!(r.stderr.contains("--connections-max"), "{}", r.report());
    // The node logs the refusal with the peer's address.
    node.bg
        .wait_stderr("refused: the node is at its limit of 2 connections");
    assert!(node.bg.stderr().contains("peer=127.0.0.1:"));
}

#[test]
fn the_node_logs_refused_requests_with_tenant_and_peer() {
    let (env, node) = env_with_node(&["--first-byte-time-ms-max", "200"]);
    // A connection that sends nothing is closed and logged (commands, which send at
    // once, are not affected by the short limit).
    let authority = node.url.strip_prefix("http://").unwrap();
    let mut silent = TcpStream::connect(authority).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    silent.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "closed without a reply");
    node.bg
        .wait_stderr("refused: closed a connection that sent nothing within 200 ms");

    let reader = env.ok(&[
        "token",
        "issue",
        "--key-file",
        "node/node.key",
        "--tenant",
        "demo",
        "--delegate",
        "reader",
        "--actions",
        "read,sync",
    ]);
    env.ok(&["put", "--store", "a", "k", "v"]);
    let r = env.fails(
        4,
        &["sync", "--store", "a", "--token", reader.stdout.trim()],
    );
    assert!(
        r.stderr
            .contains("token grants read, sync; the request needs write"),
        "{}",
        r.report()
    );
    node.bg
        .wait_stderr("refused: token grants read, sync; the request needs write");
    let log = node.bg.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the request needs write"))
        .unwrap();
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("tenant=\"demo\""), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

/// A link used only by `weft sync` is not `initializing` forever; a watch whose node is
/// killed reconnects (a dropped connection is not a fault to repair), the link stays
/// healthy, and one converged `weft sync` after the node is back leaves it polling.
#[test]
fn one_shot_syncs_leave_links_healthy() {
    let (env, node) = env_with_node(&[]);
    let status = |store: &str| {
        env.ok(&["links", "--store", store, "--json"]).json()[0]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Sync only.
    env.ok(&["put", "--store", "a", "k", "v"]);
    let r = env.ok(&["sync", "--store", "a"]);
    assert!(
        r.stdout.contains("converged (roots equal)"),
        "{}",
        r.report()
    );
    assert_eq!(status("a"), "polling");
    env.ok(&["health", "--store", "a"]);

    // B watches; the node is killed; the watch says it lost the connection and is
    // reconnecting, not that the link needs repair; stopped, it leaves B healthy.
    env.ok(&["sync", "--store", "b"]);
    let mut watch = env.spawn(&["watch", "--store", "b"]);
    watch.wait_stderr("watching tenant");
    let address = node.url.strip_prefix("http://").unwrap().to_owned();
    signal(node.bg.pid(), "KILL");
    watch.wait_stderr("lost the connection");
    signal(watch.pid(), "TERM");
    let (watch_status, _, watch_err) = watch.wait();
    assert!(watch_status.success(), "{watch_err}");
    assert!(!watch_err.contains("needs repair"), "{watch_err}");
    assert_ne!(status("b"), "repairing");
    env.ok(&["health", "--store", "b"]);
    drop(node);

    // The node restarts; one converged sync, and the link is healthy and says so (its
    // status stays what the watch set: `live` is left to the live driver).
    let _node = env.serve_with(&["serve", "--data-dir", "node", "--listen", &address]);
    let r = env.ok(&["sync", "--store", "b"]);
    assert!(
        r.stdout.contains("converged (roots equal)"),
        "{}",
        r.report()
    );
    assert_eq!(status("b"), "live");
    env.ok(&["health", "--store", "b"]);
    assert_eq!(env.ok(&["get", "--store", "b", "k"]).stdout, "v");
}
