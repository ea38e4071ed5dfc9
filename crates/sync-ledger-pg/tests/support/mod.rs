//! A PostgreSQL server for the tests: the one named by `WEFT_TEST_PG_URL` (CI starts
//! one), or else a throwaway cluster this process starts itself (initdb in a temporary
//! directory, as the `postgres` user when running as root, on a free port of
//! 127.0.0.1). A watcher process stops the cluster and removes its directory as soon as
//! this process ends, however it ends. Each test opens its own schema, so tests run in
//! parallel. There is no skipping: without PostgreSQL binaries the tests fail and say
//! what to install.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sync_ledger_pg::PgStore;

/// The environment variable naming a server to use instead of a throwaway cluster.
pub const URL_VAR: &str = "WEFT_TEST_PG_URL";

/// The URL of the server the tests use (starting the throwaway cluster on first use).
pub fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => start_cluster(),
    })
    .clone()
}

/// A fresh schema name for one test: unique per process and call.
pub fn fresh_schema(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .take(20)
        .collect();
    format!("t_{label}_{}_{n}", std::process::id())
}

/// Opens a store on `schema` of the test server.
pub fn open(schema: &str) -> PgStore {
    PgStore::builder(url())
        .schema(schema)
        .open()
        .unwrap_or_else(|e| panic!("opening PostgreSQL schema {schema}: {e}"))
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WEFT_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    match versions.pop() {
        Some(dir) => dir,
        None => panic!(
            "no PostgreSQL server binaries: install them (apt-get install -y postgresql), \
             set WEFT_PG_BIN to the directory holding initdb and pg_ctl, or set {URL_VAR} \
             to a server's URL"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program, as `postgres` when we are root (the server refuses to run
/// as root).
fn pg_command(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_cluster() -> String {
    Cluster::start().url
}

/// A throwaway cluster this process started: stopped and removed by a watcher process
/// once this process ends. Its server can be crashed and started again.
pub struct Cluster {
    /// Where to connect.
    pub url: String,
    bin: PathBuf,
    root: bool,
    dir: PathBuf,
    data: PathBuf,
    options: String,
}

impl Cluster {
    /// initdb in a temporary directory and start on a free port of 127.0.0.1.
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("weft-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown of the cluster directory",
            );
        }
        let data = dir.join("data");
        let mut initdb = pg_command(root, &bin.join("initdb"));
        initdb
            .args(["-A", "trust", "-U", "weft", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data);
        run(initdb, "initdb");
        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200 \
             -c fsync=on -c shared_buffers=64MB",
            dir.display()
        );
        let cluster = Cluster {
            url: format!("postgres://weft@127.0.0.1:{port}/postgres"),
            bin,
            root,
            dir,
            data,
            options,
        };
        cluster.start_server();
        cluster.watch();
        cluster
    }

    /// Starts the server (again).
    pub fn start_server(&self) {
        self.start_server_with("");
    }

    /// Starts the server (again) with `extra` server options after the usual ones
    /// (a later `-c` of a setting wins).
    pub fn start_server_with(&self, extra: &str) {
        let options = format!("{} {extra}", self.options);
        let mut start = pg_command(self.root, &self.bin.join("pg_ctl"));
        start
            .args(["-D"])
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "start"]);
        run(start, "pg_ctl start");
    }

    /// Crashes the server: `pg_ctl stop -m immediate` kills every server process
    /// without a checkpoint, so the next start recovers from the WAL.
    pub fn crash_server(&self) {
        let mut stop = pg_command(self.root, &self.bin.join("pg_ctl"));
        stop.args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop -m immediate");
    }

    /// The watcher: stops the cluster and removes it when this process is gone.
    fn watch(&self) {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {run_as}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            run_as = if self.root {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        // Never waited for: it outlives this process by design, and init reaps it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the cluster's watcher process");
    }
}
