//! The CLI on a live replica: while `weft watch` holds a store, `put`, `get`, `list`,
//! `delete` and `status` on it go through the watch's control socket, its writes are
//! pushed live, the socket keeps to its limits, and a watch killed with -9 leaves a
//! store the plain commands use again.

mod cli_support;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;

use cli_support::*;

/// The frames a control socket answered: (stdout, stderr, exit code).
fn read_frames(stream: &mut UnixStream) -> (Vec<u8>, String, Option<u8>) {
    let (mut out, mut err, mut code) = (Vec::new(), String::new(), None);
    let mut head = [0u8; 5];
    while stream.read_exact(&mut head).is_ok() {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut bytes = vec![0u8; len];
        stream.read_exact(&mut bytes).unwrap();
        match head[0] {
            1 => out.extend(bytes),
            2 => err.push_str(&String::from_utf8_lossy(&bytes)),
            3 => code = bytes.first().copied(),
            t => panic!("unknown frame tag {t}"),
        }
    }
    (out, err, code)
}

#[test]
fn commands_work_on_a_store_a_watch_holds_and_its_writes_go_out_live() {
    let (env, _node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "first", "1"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["sync", "--store", "b"]);
    // b prints the first change that reaches it live.
    let mut watch_b = env.spawn(&["watch", "--store", "b", "--json", "--count", "1"]);
    watch_b.wait_stderr("watching tenant demo");
    let mut watch_a = env.spawn(&["watch", "--store", "a"]);
    watch_a.wait_stderr("watching tenant demo");

    // The socket is the owner's only.
    let socket = env.path("a/weft.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Writes and reads on the store the watch holds (a plain open would exit 5).
    let put = env
        .ok(&["put", "--store", "a", "live", "hello", "--json"])
        .json();
    assert_eq!(put["outcome"], "won", "{put}");
    assert!(put["hlc"].as_str().unwrap().contains('@'), "{put}");
    assert_eq!(env.ok(&["get", "--store", "a", "live"]).stdout, "hello");
    let got = env.ok(&["get", "--store", "a", "live", "--json"]).json();
    assert_eq!(got["key"], "live", "{got}");
    let list = env.ok(&["list", "--store", "a", "--json"]).json();
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["first", "live"], "{list}");
    let status = env.ok(&["status", "--store", "a", "--json"]).json();
    assert!(status.to_string().contains("demo"), "{status}");
    // Failures keep their exit codes and words.
    let missing = env.fails(1, &["get", "--store", "a", "nope"]);
    assert!(
        missing.stderr.contains("no value for key \"nope\""),
        "{}",
        missing.report()
    );
    // A value from stdin, and a file named relative to this command's directory.
    std::fs::write(env.path("v.txt"), "from a file").unwrap();
    env.ok(&["put", "--store", "a", "file", "--file", "v.txt"]);
    assert_eq!(
        env.ok(&["get", "--store", "a", "file"]).stdout,
        "from a file"
    );
    let mut c = env.command(&["put", "--store", "a", "piped", "--file", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        env.ok(&["get", "--store", "a", "piped"]).stdout,
        "from stdin"
    );
    let deleted = env.ok(&["delete", "--store", "a", "file", "--json"]).json();
    assert_eq!(deleted["outcome"], "won", "{deleted}");

    // A command that does not go through the watch says who holds the store.
    let links = env.ok(&["links", "--store", "a", "--json"]).json();
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");
    let held = env.fails(5, &["dead-letters", "list", "--store", "a"]);
    assert!(
        held.stderr.contains("weft watch") && held.stderr.contains("go through it"),
        "{}",
        held.report()
    );

    // The first put went out live: b printed it without a sync.
    let (status, stdout, stderr) = watch_b.wait();
    assert!(status.success(), "{stderr}");
    let change: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(change["key"], "live", "{change}");
    assert_eq!(change["value"], "hello", "{change}");

    // kill -9: the socket file stays behind, and plain commands open the store again.
    signal(watch_a.pid(), "KILL");
    watch_a.wait();
    assert!(socket.exists(), "a killed watch leaves its socket file");
    env.ok(&["put", "--store", "a", "after", "2"]);
    assert_eq!(env.ok(&["get", "--store", "a", "after"]).stdout, "2");
    assert_eq!(env.ok(&["get", "--store", "a", "live"]).stdout, "hello");
    assert!(!socket.exists(), "the stale socket file was removed");
    // A new watch starts over the stale file's place.
    let again = env.spawn(&["watch", "--store", "a"]);
    again.wait_stderr("watching tenant demo");
    assert_eq!(env.ok(&["get", "--store", "a", "after"]).stdout, "2");
}

#[test]
fn the_control_socket_refuses_what_is_beyond_its_limits() {
    let (env, _node) = env_with_node(&[]);
    env.ok(&["put", "--store", "a", "k", "v"]);
    let watch = env.spawn(&["watch", "--store", "a"]);
    watch.wait_stderr("watching tenant demo");
    let socket = env.path("a/weft.sock");

    // A request longer than the limit is refused before it is read.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&(1u32 << 24).to_be_bytes()).unwrap();
    let (out, err, code) = read_frames(&mut s);
    assert!(out.is_empty());
    assert!(err.contains("at most 65536"), "{err}");
    assert_eq!(code, Some(2));

    // Something that is not a request is refused, and nothing is written.
    let mut s = UnixStream::connect(&socket).unwrap();
    let junk = br#"{"version":1,"command":{"Put":{"nope":1}}}"#;
    s.write_all(&u32::try_from(junk.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(junk).unwrap();
    let (_, err, code) = read_frames(&mut s);
    assert!(err.contains("refused the command"), "{err}");
    assert_eq!(code, Some(2));
    let list = env.ok(&["list", "--store", "a", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // A value from stdin larger than the socket takes is refused with what to do.
    let mut c = env.command(&["put", "--store", "a", "huge", "--file", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..65 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--file PATH"), "{stderr}");
    assert_eq!(env.run(&["get", "--store", "a", "huge"]).code, 1);
    drop(watch);
}
