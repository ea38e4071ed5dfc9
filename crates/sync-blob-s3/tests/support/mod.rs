//! An S3-compatible server for the tests: the one named by `WEFT_TEST_S3_URL` (with
//! credentials from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`), or else moto's
//! server started by this process on a free port of 127.0.0.1, with authentication on:
//! the first three requests (unauthenticated, as moto allows with
//! `INITIAL_NO_AUTH_ACTION_COUNT=3`) create an IAM user, its access key and a policy
//! allowing everything, and every request after them must carry a valid SigV4
//! signature of that key. A watcher process stops moto as soon as this process ends,
//! however it ends. Each test uses its own bucket. There is no skipping: without moto
//! the tests fail and say what to install.
//!
//! Also used by sync-cli's tests (`#[path]`), so it names nothing of this crate's tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sync_blob_s3::{Credentials, S3Config, S3Content};

/// The environment variable naming a server to use instead of moto.
pub const URL_VAR: &str = "WEFT_TEST_S3_URL";
/// The environment variable naming moto's `moto_server` program.
pub const MOTO_VAR: &str = "WEFT_TEST_MOTO_SERVER";
/// The region every test bucket is in.
pub const REGION: &str = "us-east-1";
/// How long moto gets to start answering.
const START_TIME_MAX: Duration = Duration::from_secs(90);

/// An S3-compatible server and credentials it accepts.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Keys valid on it.
    pub credentials: Credentials,
}

/// The server the tests use (starting moto on first use).
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Server {
            endpoint: url.trim_end_matches('/').to_owned(),
            credentials: Credentials::from_env()
                .unwrap_or_else(|e| panic!("{URL_VAR} is set, so its credentials must be: {e}")),
        },
        _ => start_moto(),
    })
}

/// A fresh bucket name for one test: unique per process and call.
pub fn fresh_bucket(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(30)
        .collect();
    format!("weft-{label}-{}-{n}", std::process::id())
}

/// The configuration of a new, empty bucket of the test server (created).
pub fn bucket(label: &str) -> S3Config {
    let s = server();
    let config = S3Config::new(
        s.endpoint.clone(),
        REGION,
        fresh_bucket(label),
        s.credentials.clone(),
    );
    S3Content::new(config.clone())
        .and_then(|c| c.create_bucket())
        .unwrap_or_else(|e| panic!("creating test bucket {}: {e}", config.bucket));
    config
}

/// `s3://BUCKET?endpoint=…&region=…` for `config`, as `weft serve --blob-store` takes.
pub fn url(config: &S3Config) -> String {
    let prefix = config.prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{prefix}")
    };
    format!(
        "s3://{}{path}?endpoint={}&region={}",
        config.bucket, config.endpoint, config.region
    )
}

fn moto_program() -> PathBuf {
    if let Ok(p) = std::env::var(MOTO_VAR)
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    // The workspace root is two levels above each crate's manifest.
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/moto-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn start_moto() -> Server {
    let program = moto_program();
    let port = free_port();
    let log = tempfile::Builder::new()
        .prefix("weft-moto-")
        .suffix(".log")
        .tempfile()
        .expect("a log file")
        .into_temp_path()
        .keep()
        .expect("keeping the log file");
    let out = std::fs::File::create(&log).expect("the log file");
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("the log file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run moto's server ({}): {e}. Install it with \
                 `python3 -m venv target/moto-venv && target/moto-venv/bin/pip install \
                 'moto[server]'` at the workspace root, set {MOTO_VAR} to a moto_server \
                 program, or set {URL_VAR} to an S3-compatible server's URL",
                program.display()
            )
        });
    watch(child.id(), &log);
    // The child is the watcher's to stop; it must outlive this handle.
    std::mem::forget(child);
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed() < START_TIME_MAX,
            "moto did not answer on {addr} within {START_TIME_MAX:?}; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The three unauthenticated actions moto allows.
    iam(&addr, "Action=CreateUser&UserName=weft&Version=2010-05-08");
    let created = iam(
        &addr,
        "Action=CreateAccessKey&UserName=weft&Version=2010-05-08",
    );
    let field = |name: &str| {
        let (open, close) = (format!("<{name}>"), format!("</{name}>"));
        let start = created
            .find(&open)
            .unwrap_or_else(|| panic!("moto's CreateAccessKey answered: {created}"))
            + open.len();
        let end = created[start..].find(&close).expect("a closed element") + start;
        created[start..end].to_owned()
    };
    let credentials = Credentials::new(field("AccessKeyId"), field("SecretAccessKey"));
    iam(
        &addr,
        "Action=PutUserPolicy&UserName=weft&PolicyName=all&Version=2010-05-08&PolicyDocument=\
         %7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow\
         %22%2C%22Action%22%3A%22%2A%22%2C%22Resource%22%3A%22%2A%22%7D%5D%7D",
    );
    Server {
        endpoint: format!("http://{addr}"),
        credentials,
    }
}

/// One IAM query-API call (form-encoded POST), unsigned: moto takes the first few
/// before it checks signatures. Returns the body; panics on a non-200 answer.
fn iam(addr: &str, form: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to moto");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).expect("writing to moto");
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("reading moto's answer");
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "moto refused {form}: {answer}"
    );
    answer
}

/// The watcher: stops moto (and removes its log) once this process is gone.
fn watch(moto: u32, log: &std::path::Path) {
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill {moto} 2>/dev/null; \
         sleep 1; kill -9 {moto} 2>/dev/null; rm -f '{log}'",
        pid = std::process::id(),
        log = log.display(),
    );
    // Never waited for: it outlives this process by design, and init reaps it.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto's watcher process");
}
