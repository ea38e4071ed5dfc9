//! The harness of the tests that run the `weft` binary: child processes on 127.0.0.1,
//! in temporary directories, with the environment cleared of `WEFT_*` settings. Every
//! child is killed by a guard when a test ends, passing or not.

// Each test file uses a different part of the harness.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
/// Longest a command may take before the test fails (generous: CI machines are slow).
pub const COMMAND_TIME_MAX: Duration = Duration::from_secs(60);

// ---- harness -------------------------------------------------------------------------

/// A temporary working directory with its own data home.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            dir,
            vars: Vec::new(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_owned(), v.to_owned()));
    }

    /// A `weft` command in the directory, with only this env's `WEFT_*` variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(WEFT);
        c.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("WEFT_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.env("XDG_DATA_HOME", self.path("xdg"))
            .env("HOME", self.path("home"))
            .env("TMPDIR", self.dir.path());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// Runs `weft args` to its end.
    pub fn run(&self, args: &[&str]) -> Run {
        run_command(self.command(args), args)
    }

    /// Runs and expects exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "weft {args:?} failed:\n{}", r.report());
        r
    }

    /// Runs and expects `code`.
    pub fn fails(&self, code: i32, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code,
            code,
            "weft {args:?}: wrong exit code:\n{}",
            r.report()
        );
        assert!(
            r.stderr.contains("weft: error:") || code == 2,
            "no error line for weft {args:?}:\n{}",
            r.report()
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.report());
        r
    }

    /// Starts `weft serve` on a free port; waits until it listens.
    pub fn serve(&self, data_dir: &str, extra: &[&str]) -> Node {
        let mut args = vec!["serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.serve_with(&args)
    }

    pub fn serve_with(&self, args: &[&str]) -> Node {
        let mut bg = self.spawn(args);
        let url = bg.wait_stdout(|l| l.strip_prefix("listening on ").map(str::to_owned));
        Node { bg, url }
    }

    /// Starts a long-running command; its output is collected by threads.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr2 = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = BufReader::new(err);
            while r.read_line(&mut s).unwrap_or(0) > 0 {
                stderr2.lock().unwrap().push_str(&s);
                s.clear();
            }
        });
        Background {
            child: Some(child),
            lines: rx,
            stdout: Vec::new(),
            stderr,
            what: format!("{args:?}"),
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Run {
    pub fn report(&self) -> String {
        format!(
            "weft {}\nexit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.report()))
    }
}

pub fn run_command(mut c: Command, args: &[&str]) -> Run {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output: Output = match rx.recv_timeout(COMMAND_TIME_MAX) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            signal(pid, "KILL");
            panic!("weft {args:?} did not finish within {COMMAND_TIME_MAX:?}");
        }
    };
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        what: format!("{args:?}"),
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// A running child; killed when dropped.
pub struct Background {
    pub child: Option<Child>,
    pub lines: mpsc::Receiver<String>,
    pub stdout: Vec<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub what: String,
}

impl Background {
    /// Waits for a stdout line `f` accepts.
    pub fn wait_stdout<T>(&mut self, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + COMMAND_TIME_MAX;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = f(&line);
                    self.stdout.push(line);
                    if let Some(t) = found {
                        return t;
                    }
                }
                Err(_) => panic!(
                    "{}: the expected line never came\n--- stdout\n{}\n--- stderr\n{}",
                    self.what,
                    self.stdout.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits until stderr contains `text`.
    pub fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + COMMAND_TIME_MAX;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}: stderr never showed {text:?}:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the exit; the collected stdout and stderr.
    pub fn wait(&mut self) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + COMMAND_TIME_MAX;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit:\n{}", self.what, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader threads end at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        std::thread::sleep(Duration::from_millis(50));
        (status, self.stdout.join("\n"), self.stderr())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `weft serve`.
pub struct Node {
    pub bg: Background,
    pub url: String,
}

impl Node {
    /// SIGTERM, and the exit status with stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        signal(self.bg.pid(), "TERM");
        let (status, _, err) = self.bg.wait();
        (status, err)
    }

    /// `GET path` on the node: status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let authority = self.url.strip_prefix("http://").unwrap();
        let mut s = TcpStream::connect(authority).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An env with a node, an owner token for tenant `demo`, and WEFT_NODE/TOKEN/TENANT set.
pub fn env_with_node(extra: &[&str]) -> (Env, Node) {
    let mut env = Env::new();
    let node = env.serve("node", extra);
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
    (env, node)
}
