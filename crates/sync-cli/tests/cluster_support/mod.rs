//! Several `weft serve --store postgres://…` processes on one database, and replicas
//! (in this process, through the engine's public API over HTTP) talking to them.
//!
//! Nodes are real child processes on 127.0.0.1, killed when their guard drops; the
//! database is the test server of `sync-ledger-pg`'s support code (a throwaway cluster,
//! or `WEFT_TEST_PG_URL`), each test in a schema of its own.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sync_engine::Replica;
use sync_engine::live::{EngineOps, LiveDriver};
use sync_engine::machine::LinkConfig;
use sync_engine::sync::{Engine, HttpConnector, Identity};
use sync_transport::proto::RootRequest;
use sync_transport::{
    Claims, ClientConfig, FailoverConnector, HttpClient, Remote as _, Token, TokenKey,
};
use sync_types::{
    Endpoint, GrantId, LinkKey, PrincipalId, ProtocolName, ProtocolPath, Scope, TenantId, TypeRule,
};

#[path = "../../../sync-ledger-pg/tests/support/mod.rs"]
pub mod pg;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
/// Longest wait for anything a test waits for (far beyond what it should take; a
/// failure, not a measurement).
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// The nodes' periodic re-read of the log: long, so a write can only reach another
/// node's subscriptions within a test's wait by a wake-up.
pub const SLOW_POLL_MS: &str = "600000";

/// A key shared by every node of a test.
pub const KEY: [u8; 32] = [7; 32];

/// A temporary directory with the nodes' key file.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub pg_url: String,
    pub schema: String,
}

impl Site {
    pub fn new(label: &str) -> Site {
        Self::on(pg::url(), label)
    }

    /// A site on the server at `pg_url`.
    pub fn on(pg_url: String, label: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("node.key");
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, hex).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Site {
            dir,
            key_file,
            pg_url,
            schema: pg::fresh_schema(label),
        }
    }

    /// Rows of the site's table `weft_<partition>` (asked on a thread of its own: the
    /// `postgres` client must not block a tokio worker).
    pub fn rows(&self, partition: &str) -> i64 {
        self.try_rows(partition)
            .unwrap_or_else(|e| panic!("counting weft_{partition}: {e}"))
    }

    /// [`rows`](Self::rows), or the error (a table not created yet).
    pub fn try_rows(&self, partition: &str) -> Result<i64, postgres::Error> {
        let (url, sql) = (
            self.pg_url.clone(),
            format!(
                "SELECT count(*) FROM \"{}\".\"weft_{partition}\"",
                self.schema
            ),
        );
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            Ok(c.query_one(&sql, &[])?.get(0))
        })
        .join()
        .unwrap()
    }

    /// Starts a node on the shared store; waits until it listens.
    pub fn node(&self, extra: &[&str]) -> NodeProc {
        self.node_at("127.0.0.1:0", extra)
    }

    /// `weft serve` on the shared store with `key_file`, listening on `listen`.
    pub fn serve_command(&self, key_file: &Path, listen: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(WEFT);
        c.args([
            "serve",
            "--store",
            &self.pg_url,
            "--store-schema",
            &self.schema,
        ])
        .arg("--key-file")
        .arg(key_file)
        .args(["--listen", listen, "--blob-gc-interval-ms", "0"])
        .args(extra)
        .current_dir(self.dir.path())
        .env("HOME", self.dir.path())
        .env("XDG_DATA_HOME", self.dir.path().join("xdg"));
        for (k, _) in std::env::vars() {
            if k.starts_with("WEFT_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c
    }

    /// Starts a node listening on `listen`.
    pub fn node_at(&self, listen: &str, extra: &[&str]) -> NodeProc {
        self.spawn(self.serve_command(&self.key_file, listen, extra))
    }

    /// Starts `c` (a `serve_command`); waits until it listens.
    pub fn spawn(&self, mut c: Command) -> NodeProc {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr2 = stderr.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
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
        let url = loop {
            match rx.recv_timeout(WAIT_MAX) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("listening on ") {
                        break u.to_owned();
                    }
                }
                Err(_) => panic!(
                    "the node never listened:\n{}",
                    stderr.lock().unwrap().clone()
                ),
            }
        };
        NodeProc {
            child: Some(child),
            url,
            stderr,
        }
    }
}

/// A running node; killed (SIGKILL) when dropped.
pub struct NodeProc {
    child: Option<Child>,
    pub url: String,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl NodeProc {
    /// kill -9, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The listening address, `HOST:PORT`.
    pub fn authority(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
    }

    /// `GET path`: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let authority = self.authority();
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

    /// A metric's value (the first sample of `name`), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.rsplit_once(' ')?;
                (n == name || n.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// The node's root of `tenant`'s `scope`.
    pub async fn root(&self, tenant: &TenantId, scope: &Scope, token: &str) -> [u8; 32] {
        let client = HttpClient::with_token_text(
            &Endpoint::new(&self.url).unwrap(),
            token,
            ClientConfig::default(),
        )
        .unwrap();
        client
            .root(RootRequest {
                tenant: tenant.clone(),
                scope: scope.clone(),
            })
            .await
            .unwrap()
            .root
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn owner_token(tenant: &TenantId) -> String {
    let claims = Claims::owner(
        tenant.clone(),
        PrincipalId::new(tenant.as_str()).unwrap(),
        GrantId::new("test").unwrap(),
        u64::MAX / 2,
    );
    Token::issue(&TokenKey::from_bytes(KEY), claims).to_string()
}

pub fn notes() -> ProtocolName {
    ProtocolName::new("test:notes").unwrap()
}

pub fn note_path() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}

pub type HttpEngine = Engine<FailoverConnector<HttpConnector>>;

/// A replica in memory with one link to `endpoint` (one node, or several separated by
/// commas).
pub struct Rep {
    pub replica: Replica,
    pub engine: HttpEngine,
    pub tenant: TenantId,
    pub link: LinkKey,
    pub author: PrincipalId,
    driver: Option<LiveDriver>,
}

impl Rep {
    pub fn new(tenant: &TenantId, endpoint: &str) -> Rep {
        Self::over(Replica::builder().in_memory().unwrap(), tenant, endpoint)
    }

    /// A replica on a fjall directory.
    pub fn on_disk(dir: &Path, tenant: &TenantId, endpoint: &str) -> Rep {
        Self::over(Replica::builder().open(dir).unwrap(), tenant, endpoint)
    }

    fn over(replica: Replica, tenant: &TenantId, endpoint: &str) -> Rep {
        let engine = Engine::builder(
            replica.clone(),
            FailoverConnector::new(HttpConnector::new(ClientConfig::default())),
        )
        .build();
        let keys = engine
            .register_identity(Identity::owner(
                tenant.clone(),
                vec![Endpoint::new(endpoint).unwrap()],
                owner_token(tenant),
            ))
            .unwrap();
        Rep {
            replica,
            engine,
            tenant: tenant.clone(),
            link: keys[0].clone(),
            author: PrincipalId::new(tenant.as_str()).unwrap(),
            driver: None,
        }
    }

    pub fn configure(&self) {
        let types = vec![TypeRule {
            path: note_path(),
            data_bytes_max: None,
        }];
        self.replica
            .configure(&self.tenant, &notes(), types, vec![], &self.author)
            .unwrap();
    }

    pub fn put(&self, key: &str, value: &str) {
        let receipt = self
            .replica
            .put(
                &self.tenant,
                &notes(),
                &note_path(),
                key.as_bytes(),
                value.as_bytes().to_vec(),
                &self.author,
            )
            .unwrap();
        assert!(receipt.won());
    }

    /// Writes record `key` whose payload is the stored blob `data`; returns its id.
    pub fn put_blob(&self, key: &str, data: sync_types::DataRef) -> sync_types::RecordId {
        let req = sync_engine::WriteRequest {
            protocol: notes(),
            path: note_path(),
            key: sync_engine::RecordKey::Natural(key.as_bytes().to_vec()),
            parent: None,
            data: None,
            author: self.author.clone(),
        };
        self.replica
            .write_with_blob(&self.tenant, req, data)
            .unwrap()
            .record_id
    }

    pub fn delete(&self, key: &str) {
        let id = sync_types::RecordId::from_natural_key(&self.tenant, &notes(), key.as_bytes());
        self.replica.delete(&self.tenant, id, &self.author).unwrap();
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.replica
            .get_by_key(&self.tenant, &notes(), key.as_bytes())
            .unwrap()
            .filter(|r| !r.deleted)
            .and_then(|r| r.data)
            .map(|d| String::from_utf8(d).unwrap())
    }

    pub fn root(&self) -> [u8; 32] {
        *self
            .replica
            .root(&self.tenant, &Scope::Full)
            .unwrap()
            .as_bytes()
    }

    /// One sync of the link (pull, push, compare roots); panics on failure.
    pub async fn sync(&self) {
        let report = self.engine.sync_link(&self.link).await;
        assert!(report.error.is_none(), "sync failed: {:?}", report.error);
    }

    /// Starts the live driver.
    pub fn start_live(&mut self) {
        let links = self
            .engine
            .links()
            .unwrap()
            .into_iter()
            .filter(|l| l.key == self.link)
            .collect();
        let config = LinkConfig {
            reconnect_backoff_ms: vec![50, 100, 250],
            repair_backoff_ms: vec![100, 250, 500],
            reconcile_delay_ms: 100,
            ..LinkConfig::default()
        };
        self.driver = Some(LiveDriver::start(
            self.replica.clone(),
            Arc::new(EngineOps::new(self.engine.clone())),
            links,
            config,
        ));
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.stop(Duration::from_secs(5)).await;
        }
    }

    /// Repairs the live link ran (a node or database going away should cost a
    /// reconnect, never a repair).
    pub async fn repairs(&self) -> u64 {
        match &self.driver {
            Some(d) => d.states().await.iter().map(|s| s.counters.repairs).sum(),
            None => 0,
        }
    }

    /// Local log entries the node has not acknowledged.
    pub fn pending(&self) -> u64 {
        self.engine.pending_outbound(&self.link).unwrap_or(u64::MAX)
    }
}

/// Waits (polling every millisecond) until `f` holds; panics after [`WAIT_MAX`] with
/// `what`. Returns how long it took.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT_MAX, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed()
}
