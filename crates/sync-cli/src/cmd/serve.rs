//! `weft serve`: a node on an embedded fjall store, or on a PostgreSQL database that
//! several nodes share (`--store postgres://…`, `shared.rs`).
//!
//! Settings are resolved once, highest first: flags, `WEFT_*` environment variables
//! (clap merges these two), the TOML config file, the defaults. Relative paths in the
//! config file are relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;
use sync_engine::blob::{BLOB_GC_INTERVAL_MS_DEFAULT, BlobGc, GC_GRACE_MS_DEFAULT};
use sync_engine::node::BlobLimits;
use sync_engine::{Replica, ReplicaHandler};
use sync_transport::metrics::{Family, Metrics, Sample};
use sync_transport::{ServerConfig, serve};

use crate::cli::{LISTEN_DEFAULT, ServeArgs};
use crate::exit::{Exit, coded, usage};
use crate::{key, kv, out, paths};

/// The config file's shape.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    store_schema: Option<String>,
    blob_store: Option<String>,
    listen: Option<String>,
    key_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    metrics: Option<bool>,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    connections_max: Option<usize>,
    connections_per_address_max: Option<usize>,
    requests_per_tenant_max: Option<usize>,
    first_byte_time_ms_max: Option<u64>,
    header_read_time_ms_max: Option<u64>,
    subscriptions_max: Option<usize>,
    frame_bytes_max: Option<usize>,
    request_time_ms_max: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    subscriber_queue_len_max: Option<usize>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    blob_bytes_max: Option<u64>,
    blob_uploads_max: Option<usize>,
    blob_uploads_per_tenant_max: Option<usize>,
    blob_gc_interval_ms: Option<u64>,
    blob_gc_grace_ms: Option<u64>,
    store_cache_mib: Option<u64>,
    store_memtable_mib: Option<u64>,
    live_poll_interval_ms: Option<u64>,
    tree_cache_tenants_max: Option<usize>,
    tree_cache_keys_max: Option<usize>,
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) data_dir: PathBuf,
    /// A PostgreSQL URL: the node's state is in that shared database.
    pub(crate) store: Option<String>,
    pub(crate) store_schema: String,
    /// An object store URL: blob content lives in that bucket.
    pub(crate) blob_store: Option<String>,
    pub(crate) listen: String,
    pub(crate) key_file: PathBuf,
    /// `--replace-key`: make the key file's key the store's although it was served with
    /// another.
    pub(crate) replace_key: bool,
    /// The certificate chain and key files: the node serves TLS only.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) metrics: bool,
    /// Limits left unset keep the transport's defaults.
    limits: FileLimits,
}

impl Settings {
    /// Merges flags and environment (`args`) over the config file over the defaults.
    pub(crate) fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let data_dir = paths::node_dir(args.data_dir.or(file.data_dir))?;
        let key_file = args
            .key_file
            .or(file.key_file)
            .unwrap_or_else(|| paths::node_key_file(&data_dir));
        let l = file.limits;
        let store = args.store.or(file.store);
        if let Some(store) = &store
            && !super::shared::is_postgres(store)
        {
            return Err(usage(format!(
                "bad store {:?}: expected postgres://USER@HOST:PORT/DB (the embedded store lives in --data-dir)",
                super::shared::redact(store)
            )));
        }
        let blob_store = args.blob_store.or(file.blob_store);
        if let Some(url) = &blob_store
            && !super::blob_store::is_s3(url)
        {
            return Err(usage(format!(
                "bad blob store {url:?}: expected s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT&region=NAME"
            )));
        }
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(usage(
                    "TLS needs both a certificate (--tls-cert) and its key (--tls-key)",
                ));
            }
        };
        Ok(Self {
            store,
            blob_store,
            tls,
            store_schema: args
                .store_schema
                .or(file.store_schema)
                .unwrap_or_else(|| super::shared::STORE_SCHEMA_DEFAULT.to_owned()),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| LISTEN_DEFAULT.to_owned()),
            metrics: !args.no_metrics && file.metrics.unwrap_or(true),
            limits: FileLimits {
                connections_max: args.connections_max.or(l.connections_max),
                connections_per_address_max: args
                    .connections_per_address_max
                    .or(l.connections_per_address_max),
                requests_per_tenant_max: args.requests_per_tenant_max.or(l.requests_per_tenant_max),
                first_byte_time_ms_max: args.first_byte_time_ms_max.or(l.first_byte_time_ms_max),
                header_read_time_ms_max: args.header_read_time_ms_max.or(l.header_read_time_ms_max),
                subscriptions_max: args.subscriptions_max.or(l.subscriptions_max),
                frame_bytes_max: args.frame_bytes_max.or(l.frame_bytes_max),
                request_time_ms_max: args.request_time_ms_max.or(l.request_time_ms_max),
                shutdown_grace_ms: args.shutdown_grace_ms.or(l.shutdown_grace_ms),
                subscriber_queue_len_max: args
                    .subscriber_queue_len_max
                    .or(l.subscriber_queue_len_max),
                heartbeat_interval_ms: args.heartbeat_interval_ms.or(l.heartbeat_interval_ms),
                heartbeat_timeout_ms: args.heartbeat_timeout_ms.or(l.heartbeat_timeout_ms),
                blob_bytes_max: args.blob_bytes_max.or(l.blob_bytes_max),
                blob_uploads_max: args.blob_uploads_max.or(l.blob_uploads_max),
                blob_uploads_per_tenant_max: args
                    .blob_uploads_per_tenant_max
                    .or(l.blob_uploads_per_tenant_max),
                blob_gc_interval_ms: args.blob_gc_interval_ms.or(l.blob_gc_interval_ms),
                blob_gc_grace_ms: args.blob_gc_grace_ms.or(l.blob_gc_grace_ms),
                store_cache_mib: args.store_cache_mib.or(l.store_cache_mib),
                store_memtable_mib: args.store_memtable_mib.or(l.store_memtable_mib),
                live_poll_interval_ms: args.live_poll_interval_ms.or(l.live_poll_interval_ms),
                tree_cache_tenants_max: args.tree_cache_tenants_max.or(l.tree_cache_tenants_max),
                tree_cache_keys_max: args.tree_cache_keys_max.or(l.tree_cache_keys_max),
            },
            data_dir,
            key_file,
            replace_key: args.replace_key,
        })
    }

    /// The transport's configuration: its defaults, with the limits that were set.
    fn server_config(&self, key: sync_transport::TokenKey) -> ServerConfig {
        let mut c = ServerConfig::new(key);
        let l = &self.limits;
        if let Some(v) = l.connections_max {
            c.connections_max = v;
        }
        if let Some(v) = l.connections_per_address_max {
            c.connections_per_address_max = v;
        }
        if let Some(v) = l.requests_per_tenant_max {
            c.requests_per_tenant_max = v;
        }
        if let Some(v) = l.first_byte_time_ms_max {
            c.first_byte_time_ms_max = v;
        }
        if let Some(v) = l.header_read_time_ms_max {
            c.header_read_time_ms_max = v;
        }
        if let Some(v) = l.subscriptions_max {
            c.subscriptions_max = v;
        }
        if let Some(v) = l.frame_bytes_max {
            c.frame_bytes_max = v;
        }
        if let Some(v) = l.request_time_ms_max {
            c.request_time_ms_max = v;
        }
        if let Some(v) = l.shutdown_grace_ms {
            c.shutdown_grace_ms = v;
        }
        if let Some(v) = l.subscriber_queue_len_max {
            c.subscriber_queue_len_max = v;
        }
        if let Some(v) = l.heartbeat_interval_ms {
            c.heartbeat_interval_ms = v;
        }
        if let Some(v) = l.heartbeat_timeout_ms {
            c.heartbeat_timeout_ms = v;
        }
        if let Some(v) = l.live_poll_interval_ms {
            c.live_poll_interval_ms = v;
        }
        c
    }

    /// The node's blob upload limits: the defaults, with the limits that were set.
    fn blob_limits(&self) -> BlobLimits {
        let mut b = BlobLimits::default();
        if let Some(v) = self.limits.blob_bytes_max {
            b.blob_bytes_max = v;
        }
        if let Some(v) = self.limits.blob_uploads_max {
            b.uploads_max = v;
        }
        if let Some(v) = self.limits.blob_uploads_per_tenant_max {
            b.uploads_per_tenant_max = v;
        }
        b
    }

    /// The store's block cache and memtable sizes in bytes (`None`: the defaults).
    fn store_sizes(&self) -> (Option<u64>, Option<u64>) {
        let bytes = |mib: Option<u64>| mib.map(|m| m.saturating_mul(1 << 20));
        (
            bytes(self.limits.store_cache_mib),
            bytes(self.limits.store_memtable_mib),
        )
    }

    /// The tree cache's bounds on a shared store: tenants, keys.
    fn tree_cache(&self) -> (usize, usize) {
        (
            self.limits
                .tree_cache_tenants_max
                .unwrap_or(sync_engine::replica::TREE_CACHE_TENANTS_DEFAULT),
            self.limits
                .tree_cache_keys_max
                .unwrap_or(sync_engine::replica::TREE_CACHE_KEYS_DEFAULT),
        )
    }

    /// The blob collector's interval (`None`: off) and grace period, in ms.
    fn blob_gc(&self) -> (Option<u64>, u64) {
        let interval = self
            .limits
            .blob_gc_interval_ms
            .unwrap_or(BLOB_GC_INTERVAL_MS_DEFAULT);
        (
            (interval > 0).then_some(interval),
            self.limits.blob_gc_grace_ms.unwrap_or(GC_GRACE_MS_DEFAULT),
        )
    }
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    let mut config: FileConfig = toml::from_str(&text)
        .map_err(|e| usage(format!("bad config file {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut config.data_dir,
        &mut config.key_file,
        &mut config.tls_cert,
        &mut config.tls_key,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(config)
}

async fn resolve_listen(listen: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(listen).await.map_err(|e| {
        usage(format!(
            "bad listen address {listen:?} (expected IP:PORT such as 127.0.0.1:7700): {e}"
        ))
    })?;
    addrs
        .next()
        .ok_or_else(|| usage(format!("listen address {listen:?} resolves to nothing")))
}

/// Gauges the transport cannot know: each tenant's log head.
fn log_positions(replica: Replica) -> impl Fn() -> Vec<Family> + Send + Sync + 'static {
    move || {
        let ledger = replica.ledger();
        let mut heads = Vec::new();
        for tenant in ledger.tenants().unwrap_or_default() {
            if let Ok(Some(head)) = ledger.log_head(&tenant) {
                heads.push(Sample::new(head.position as f64).label("tenant", tenant.as_str()));
            }
        }
        vec![
            Family::gauge(
                "weft_tenants",
                "Tenants with data on this node.",
                vec![Sample::new(heads.len() as f64)],
            ),
            Family::gauge(
                "weft_log_position",
                "Position of the newest entry in each tenant's log.",
                heads,
            ),
        ]
    }
}

/// `weft_node_info{node="…"} 1`: the address this node listens on, set once it is
/// bound, so the metrics of the nodes of one shared store say which node they are.
fn node_info(
    name: Arc<std::sync::OnceLock<String>>,
) -> impl Fn() -> Vec<Family> + Send + Sync + 'static {
    move || {
        let samples = name
            .get()
            .map(|n| vec![Sample::new(1.0).label("node", n.as_str())])
            .unwrap_or_default();
        vec![Family::gauge(
            "weft_node_info",
            "This node, by the address it listens on (nodes of one shared store differ by it).",
            samples,
        )]
    }
}

/// Runs the node until SIGINT or SIGTERM.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<Exit> {
    let settings = Settings::resolve(args)?;
    let addr = resolve_listen(&settings.listen).await?;
    // A node on PostgreSQL keeps nothing on disk but its key file.
    if settings.store.is_none() {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            coded(
                Exit::Store,
                format!(
                    "cannot create data directory {}: {e}",
                    settings.data_dir.display()
                ),
            )
        })?;
    }
    // Blob content in a bucket: checked before anything else is opened.
    let blob_store = match &settings.blob_store {
        Some(url) => {
            let content = super::blob_store::open(url)?;
            super::blob_store::check(content.clone()).await?;
            Some(content)
        }
        None => None,
    };
    let content = blob_store
        .clone()
        .map(|c| c as Arc<dyn sync_ledger::BlobContent>);
    let (replica, bus, store) = match &settings.store {
        Some(url) => {
            let (replica, bus, pg) =
                super::shared::open(url, &settings.store_schema, settings.tree_cache(), content)?;
            let shown = format!(
                "{} (schema {})",
                super::shared::redact(url),
                settings.store_schema
            );
            (replica, Some((bus, pg)), shown)
        }
        None => {
            let store = paths::node_store(&settings.data_dir);
            let (cache_bytes, memtable_bytes) = settings.store_sizes();
            let replica = kv::open_node_replica(&store, cache_bytes, memtable_bytes, content)?;
            (replica, None, store.display().to_string())
        }
    };
    let blobs_shown = match &blob_store {
        Some(content) => {
            super::blob_store::refuse_content_in_store(replica.ledger(), &store)?;
            content.config().describe()
        }
        None => "in the store".to_owned(),
    };
    let key = key::for_store(&settings.key_file, replica.ledger(), settings.replace_key)?;
    let mut config = settings.server_config(key);
    if let Some((cert, key)) = &settings.tls {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
        };
        config.tls = Some(
            sync_transport::ServerTls::from_pem(&read(cert)?, &read(key)?)
                .map_err(|e| usage(format!("{e} ({}, {})", cert.display(), key.display())))?,
        );
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let node_name = Arc::new(std::sync::OnceLock::new());
    if settings.metrics {
        let metrics = Arc::new(Metrics::new());
        metrics.add_source(node_info(node_name.clone()));
        metrics.add_source(log_positions(replica.clone()));
        if let Some((bus, pg)) = &bus {
            metrics.add_source(super::shared::metrics(
                replica.clone(),
                bus.clone(),
                pg.clone(),
            ));
        }
        config.metrics = Some(metrics);
    }
    let grace_ms = config.shutdown_grace_ms;
    let mut signals = crate::signals::ShutdownSignals::new()?;
    let mut handler = ReplicaHandler::new(replica.clone()).with_blob_limits(settings.blob_limits());
    if let Some((bus, _)) = bus {
        handler = handler.with_bus(bus);
    }
    let handler = Arc::new(handler);
    // Dropping the task (on shutdown) stops the collector.
    let gc = match settings.blob_gc() {
        (Some(interval_ms), grace_ms) => {
            let mut gc = BlobGc::new(replica.clone()).grace_ms(grace_ms);
            // Several nodes on one store: one collects at a time.
            if let Some(url) = &settings.store {
                gc = gc.leases(super::shared::leases(url, &settings.store_schema)?);
            }
            Some(gc.spawn(interval_ms))
        }
        (None, _) => None,
    };
    let server = serve(handler, config, addr).await.map_err(|e| {
        coded(
            Exit::Listen,
            format!("cannot listen on {addr}: {}", describe_bind_error(&e)),
        )
    })?;
    let local = server.local_addr();
    let _ = node_name.set(format!("{scheme}://{local}"));
    tracing::info!(
        address = %local,
        store = %store,
        blobs = %blobs_shown,
        key_file = %settings.key_file.display(),
        metrics = settings.metrics,
        "node started"
    );
    out::line(format!("listening on {scheme}://{local}"))?;

    let signal = signals.recv().await?;
    tracing::info!(signal, grace_ms, "shutting down: finishing open requests");
    server.shutdown().await;
    drop(gc);
    replica
        .ledger()
        .persist(replica.durability())
        .context("cannot flush the store on shutdown")?;
    tracing::info!("node stopped");
    Ok(Exit::Ok)
}

fn describe_bind_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_beat_the_config_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weft.toml");
        std::fs::write(
            &file,
            "data_dir = \"node\"\nlisten = \"127.0.0.1:9000\"\nmetrics = false\n[limits]\nconnections_max = 7\nconnections_per_address_max = 3\nrequests_per_tenant_max = 5\nfirst_byte_time_ms_max = 250\nshutdown_grace_ms = 100\nblob_bytes_max = 1000\nblob_uploads_per_tenant_max = 3\nblob_gc_interval_ms = 0\nstore_cache_mib = 8\nstore_memtable_mib = 2\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9001".into()),
            shutdown_grace_ms: Some(200),
            store_memtable_mib: Some(4),
            first_byte_time_ms_max: Some(500),
            header_read_time_ms_max: Some(900),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9001", "the flag wins");
        assert_eq!(s.data_dir, dir.path().join("node"), "relative to the file");
        assert_eq!(s.key_file, dir.path().join("node/node.key"));
        assert!(!s.metrics);
        let c = s.server_config(sync_transport::TokenKey::from_bytes([1; 32]));
        assert_eq!(c.connections_max, 7, "from the file");
        assert_eq!(c.connections_per_address_max, 3, "from the file");
        assert_eq!(c.requests_per_tenant_max, 5, "from the file");
        assert_eq!(c.first_byte_time_ms_max, 500, "the flag wins");
        assert_eq!(c.header_read_time_ms_max, 900, "the flag");
        assert_eq!(c.shutdown_grace_ms, 200, "the flag wins");
        assert_eq!(c.subscriptions_max, 4096, "the default");
        assert_eq!(s.blob_limits().blob_bytes_max, 1000, "from the file");
        assert_eq!(s.blob_limits().uploads_per_tenant_max, 3, "from the file");
        assert_eq!(s.blob_limits().uploads_max, 16, "the default");
        assert_eq!(s.blob_gc(), (None, GC_GRACE_MS_DEFAULT), "0 turns it off");
        assert_eq!(
            s.store_sizes(),
            (Some(8 << 20), Some(4 << 20)),
            "cache from the file, memtable from the flag"
        );

        std::fs::write(&file, "blob_store = \"s3://weft-blobs?region=eu-west-1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let s = Settings::resolve(args).unwrap();
        assert_eq!(
            s.blob_store.as_deref(),
            Some("s3://weft-blobs?region=eu-west-1")
        );
        let args = ServeArgs {
            config: Some(file.clone()),
            blob_store: Some("/var/blobs".into()),
            ..ServeArgs::default()
        };
        let err = Settings::resolve(args).unwrap_err();
        assert_eq!(
            crate::exit::classify(&err),
            Exit::Usage,
            "the flag wins, and is checked"
        );

        std::fs::write(&file, "listen = 5\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let err = Settings::resolve(args).unwrap_err();
        assert_eq!(crate::exit::classify(&err), Exit::Usage);
        std::fs::write(&file, "lsiten = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        assert!(format!("{:#}", Settings::resolve(args).unwrap_err()).contains("lsiten"));
    }
}
