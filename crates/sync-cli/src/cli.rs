//! The command line: every command, its flags, its environment variables and examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sync_types::{Cid, DeadLetterCategory, PrincipalId, ProtocolName, ProtocolPath, TenantId};

/// The exit codes, shown under every `--help` (a macro, so `concat!` can use it).
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0  success
  1  the command ran but did not fully succeed (key not found, write superseded, dead letters left, unhealthy)
  2  usage error (bad flags or values, unreadable config file)
  3  cannot reach the node (wrong address, refused, timeout, shutting down, at its limit)
  4  authorization refused (malformed, forged or expired token, request beyond its grant)
  5  local store error (cannot open, read or write the store, or it is in use)
  6  cannot listen on the address (in use, not permitted)
  130  interrupted (Ctrl-C or SIGTERM during `sync`, after saying what was done)"
    };
}

/// Where the node listens when nothing else says.
pub(crate) const LISTEN_DEFAULT: &str = "127.0.0.1:7700";
/// Where client commands look for the node when nothing else says (see `NodeArgs`).
pub(crate) const NODE_DEFAULT: &str = "http://127.0.0.1:7700";
/// The tenant of client commands when nothing else says.
pub(crate) const TENANT_DEFAULT: &str = "local";

/// Weft: a local-first replication engine. Run a node, write to local replicas, sync
/// them through the node, and inspect replication.
#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    propagate_version = true,
    after_help = concat!("Start here: weft quickstart\n\n", exit_codes!()),
    after_long_help = concat!(
        "Start here:\n",
        "  weft quickstart                     a node and two replicas converging on loopback\n",
        "\n",
        "A five-minute tour (see README.md):\n",
        "  weft serve --data-dir ./node &                 run a node on 127.0.0.1:7700\n",
        "  export WEFT_TENANT=demo\n",
        "  export WEFT_TOKEN=$(weft token issue --key-file ./node/node.key)\n",
        "  weft put --store ./a greeting hello && weft sync --store ./a\n",
        "  weft sync --store ./b && weft get --store ./b greeting\n",
        "\n",
        exit_codes!(),
    )
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Logging of every command (to stderr).
#[derive(Args, Debug, Clone)]
pub(crate) struct LogArgs {
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `sync_engine=debug,warn`
    /// [default: `RUST_LOG`, else `info` for serve (storage internals at `warn`) and
    /// `warn` for the rest]
    #[arg(long, global = true, env = "WEFT_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,
    /// Log format on stderr: human-readable text, or one JSON object per line
    #[arg(
        long,
        global = true,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub(crate) log_format: LogFormat,
}

/// How every command that talks to a node does it.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ClientArgs {
    /// Longest wait for one call to the node, in seconds (a retried call waits up to
    /// this long per attempt) [default: 30]
    #[arg(long, global = true, env = "WEFT_TIMEOUT", value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
    /// Retries of a call that failed for a reason worth retrying (unreachable, timed
    /// out, busy); reads only, writes are retried by the sync itself [default: 2]
    #[arg(long, global = true, env = "WEFT_RETRIES", value_name = "N")]
    pub(crate) retries: Option<u32>,
    /// A PEM file of the certificate authority that issued an https:// node's
    /// certificate, trusted besides the system's
    #[arg(long, global = true, env = "WEFT_TLS_CA", value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// How logs are written.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

// Parsed once per run: the size of the largest variant (serve's settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a server node on an embedded store, or one of several on a PostgreSQL database
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft serve                                   store and key under ~/.local/share/weft/node\n",
        "  weft serve --data-dir ./node --listen 0.0.0.0:7700\n",
        "  weft serve --config /etc/weft/weft.toml --log-format json\n",
        "  WEFT_LISTEN=127.0.0.1:0 weft serve          port 0 picks a free port (printed on stdout)\n",
        "  weft serve --store postgres://weft@db/weft --key-file ./node.key   one of several nodes\n",
        "  weft serve --store postgres://weft@db/weft --blob-store 's3://weft-blobs?endpoint=http://minio:9000'\n",
        "\n",
        "Settings come from, highest first: flags, environment variables (WEFT_*), the TOML\n",
        "config file (--config or WEFT_CONFIG), then the defaults. Config file keys:\n",
        "  data_dir, store, store_schema, blob_store, listen, key_file, tls_cert, tls_key, metrics,\n",
        "  [limits] connections_max, connections_per_address_max, requests_per_tenant_max,\n",
        "           first_byte_time_ms_max,\n",
        "           header_read_time_ms_max, subscriptions_max, frame_bytes_max,\n",
        "           request_time_ms_max, shutdown_grace_ms, subscriber_queue_len_max, heartbeat_interval_ms,\n",
        "           heartbeat_timeout_ms, blob_bytes_max, blob_uploads_max,\n",
        "           blob_uploads_per_tenant_max, blob_gc_interval_ms, blob_gc_grace_ms,\n",
        "           store_cache_mib, store_memtable_mib, live_poll_interval_ms,\n",
        "           tree_cache_tenants_max, tree_cache_keys_max\n",
        "\n",
        "A blob upload larger than blob_bytes_max is refused with an error naming the limit;\n",
        "the blob collector removes blobs no live record references (see ARCHITECTURE.md).\n",
        "\n",
        "The node prints `listening on http://ADDR` on stdout once it accepts connections,\n",
        "serves Prometheus metrics at GET /metrics on the same port (unless --no-metrics),\n",
        "and on SIGINT or SIGTERM stops accepting, lets open requests finish within\n",
        "shutdown_grace_ms, closes subscriptions, and exits 0.",
        "\n\n",
        exit_codes!(),
    ))]
    Serve(ServeArgs),

    /// Issue and inspect capability tokens
    #[command(subcommand)]
    Token(TokenCommand),

    /// Write a value under a key in the local replica
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft put greeting hello\n",
        "  weft put --store ./a --tenant demo config --file ./config.json\n",
        "  echo hi | weft put note --file -\n",
        "\n",
        "The first put configures the protocol (default weft:kv, path entry) in the store.",
        "\n\n",
        exit_codes!(),
    ))]
    Put(PutArgs),

    /// Print the value of a key in the local replica
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft get greeting\n",
        "  weft get --store ./b --tenant demo greeting --json\n",
        "  weft get --residency photo   # absent, staged, resident or tombstoned\n",
        "\n",
        "Exits 1 when the key has no value (never written, or deleted).",
        "\n\n",
        exit_codes!(),
    ))]
    Get(GetArgs),

    /// List the keys and values in the local replica
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft list\n",
        "  weft list --prefix user/ --json | jq '.[].key'",
        "\n\n",
        exit_codes!(),
    ))]
    List(ListArgs),

    /// Delete a key in the local replica
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft delete greeting\n",
        "\n",
        "Exits 1 when the key has no value.",
        "\n\n",
        exit_codes!(),
    ))]
    Delete(DeleteArgs),

    /// Replicate the local replica with a node once: pull, push, verify
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft sync --node http://127.0.0.1:7700 --token $TOKEN\n",
        "  WEFT_TOKEN=$TOKEN weft sync --store ./b --tenant demo --json\n",
        "  weft sync --no-blobs   # large values stay staged until a full sync\n",
        "\n",
        "Shows a progress bar each way when stderr is a terminal (bytes, blobs included,\n",
        "against the total the node counts while the first pages go, with the rate, the time\n",
        "left and the messages), and a summary otherwise (blob bytes counted apart). Exits 1 when messages were left in the dead letters or the\n",
        "replicas did not converge, 3 when the node cannot be reached, 4 when it refuses\n",
        "the token.",
        "\n\n",
        exit_codes!(),
    ))]
    Sync(SyncArgs),

    /// Replicate live and print changes as they arrive
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft watch --store ./b --tenant demo\n",
        "  weft watch --json --count 1          exit after the first change\n",
        "\n",
        "Syncs once (exit 3 or 4 at once when the node cannot be reached or refuses the\n",
        "token), then runs the engine's live driver: it subscribes from the replica's pull\n",
        "checkpoint, applies and prints every change as it arrives, pushes local writes at\n",
        "once, and reconnects by itself when the node restarts. Stops on Ctrl-C or SIGTERM.\n",
        "\n",
        "While it runs, `weft put`, `get`, `list`, `delete`, `status` and `links` on the store\n",
        "still work: they go through the watch (a socket in the store directory, weft.sock,\n",
        "owner-only), which runs them over the replica it holds and pushes their writes\n",
        "live. Other commands on that store exit 5 until the watch stops. A socket left by a\n",
        "watch killed with -9 is noticed and removed by the next command.",
        "\n\n",
        exit_codes!(),
    ))]
    Watch(WatchArgs),

    /// Show the local replica: tenants, log heads, links and their checkpoints
    #[command(after_help = concat!("Examples:\n  weft status\n  weft status --store ./a --json", "\n\n", exit_codes!()))]
    Status(StatusArgs),

    /// List the replication links of the local replica
    #[command(after_help = concat!("Examples:\n  weft links\n  weft links --json | jq '.[].status'", "\n\n", exit_codes!()))]
    Links(StatusArgs),

    /// Show replication health of the local replica, or of a node with --node
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft health                                  the local replica's links and dead letters\n",
        "  weft health --node http://127.0.0.1:7700 --token $TOKEN --json\n",
        "\n",
        "Exits 1 when not healthy (dead letters or degraded links).",
        "\n\n",
        exit_codes!(),
    ))]
    Health(HealthArgs),

    /// List, retry or clear messages that failed to replicate
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),

    /// Start a node and two replicas on loopback and show them converge
    #[command(after_help = concat!(
        "Example:\n",
        "  weft quickstart\n",
        "\n",
        "Everything runs in one process in a temporary directory that is removed at the end\n",
        "(keep it with --keep). Prints what happened and the latencies it measured.",
        "\n\n",
        exit_codes!(),
    ))]
    Quickstart(QuickstartArgs),
}

/// Flags of `weft serve`. Every setting is optional here: what is unset falls back to
/// the config file, then to the default (see `cmd::serve::Settings`).
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// TOML config file
    #[arg(long, env = "WEFT_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory of the node's store and key file [default: $XDG_DATA_HOME/weft/node or
    /// ~/.local/share/weft/node]
    #[arg(long, env = "WEFT_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A PostgreSQL database holding the node's whole durable state, shared by every
    /// node given the same URL, schema and key file: postgres://USER@HOST:PORT/DB
    /// [default: the embedded store in DATA_DIR]
    #[arg(long, env = "WEFT_NODE_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Keep blob content (the chunks) in an S3-compatible bucket instead of the store:
    /// s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT&region=NAME (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never from flags) [default: in the
    /// store]
    #[arg(long, env = "WEFT_BLOB_STORE", value_name = "URL")]
    pub(crate) blob_store: Option<String>,
    /// The PostgreSQL schema of the node's tables [default: weft]
    #[arg(long, env = "WEFT_STORE_SCHEMA", value_name = "NAME")]
    pub(crate) store_schema: Option<String>,
    /// Address to listen on, IP:PORT (port 0 picks a free one) [default: 127.0.0.1:7700]
    #[arg(long, env = "WEFT_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// The node's token key (64 hex characters; created with mode 0600 if missing and
    /// the store has never been served) [default: DATA_DIR/node.key]
    #[arg(long, env = "WEFT_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Make the key file's key the store's token key although the store was served
    /// with another: every token issued with the old key stops working, and every
    /// other node of the store must be given the new key file
    #[arg(long)]
    pub(crate) replace_key: bool,
    /// Serve over TLS only, with this certificate chain (PEM: the node's certificate
    /// first); needs --tls-key
    #[arg(long, env = "WEFT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "WEFT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Do not serve Prometheus metrics at /metrics
    #[arg(long, env = "WEFT_NO_METRICS")]
    pub(crate) no_metrics: bool,
    /// Most open HTTP connections; more are refused with an error naming the limit
    /// [default: 1024]
    #[arg(long, env = "WEFT_CONNECTIONS_MAX", value_name = "N")]
    pub(crate) connections_max: Option<usize>,
    /// Most open HTTP connections from one IP address [default: 64]
    #[arg(long, env = "WEFT_CONNECTIONS_PER_ADDRESS_MAX", value_name = "N")]
    pub(crate) connections_per_address_max: Option<usize>,
    /// Most requests of one tenant in flight at once; more are refused with an error
    /// naming the limit, other tenants unaffected [default: 64]
    #[arg(long, env = "WEFT_REQUESTS_PER_TENANT_MAX", value_name = "N")]
    pub(crate) requests_per_tenant_max: Option<usize>,
    /// A new connection that sends nothing for this long is closed, in ms
    /// [default: 3000]
    #[arg(long, env = "WEFT_FIRST_BYTE_TIME_MS_MAX", value_name = "MS")]
    pub(crate) first_byte_time_ms_max: Option<u64>,
    /// Longest time to receive a request's headers, and to keep an idle connection
    /// open between requests, in ms [default: 30000]
    #[arg(long, env = "WEFT_HEADER_READ_TIME_MS_MAX", value_name = "MS")]
    pub(crate) header_read_time_ms_max: Option<u64>,
    /// Most open subscriptions [default: 4096]
    #[arg(long, env = "WEFT_SUBSCRIPTIONS_MAX", value_name = "N")]
    pub(crate) subscriptions_max: Option<usize>,
    /// Largest request frame body, in bytes [default: 8 MiB]
    #[arg(long, env = "WEFT_FRAME_BYTES_MAX", value_name = "BYTES")]
    pub(crate) frame_bytes_max: Option<usize>,
    /// Longest time for one request, body included, in ms [default: 30000]
    #[arg(long, env = "WEFT_REQUEST_TIME_MS_MAX", value_name = "MS")]
    pub(crate) request_time_ms_max: Option<u64>,
    /// How long open requests get to finish on shutdown, in ms [default: 5000]
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub(crate) shutdown_grace_ms: Option<u64>,
    /// Notices queued per subscriber before it counts as lagging [default: 256]
    #[arg(long, env = "WEFT_SUBSCRIBER_QUEUE_LEN_MAX", value_name = "N")]
    pub(crate) subscriber_queue_len_max: Option<usize>,
    /// Interval between heartbeat pings on a subscription, in ms [default: 15000]
    #[arg(long, env = "WEFT_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub(crate) heartbeat_interval_ms: Option<u64>,
    /// A silent subscription is closed after this long, in ms [default: 45000]
    #[arg(long, env = "WEFT_HEARTBEAT_TIMEOUT_MS", value_name = "MS")]
    pub(crate) heartbeat_timeout_ms: Option<u64>,
    /// Largest blob a tenant may upload, in bytes; larger uploads are refused with an
    /// error naming the limit [default: 4 GiB]
    #[arg(long, env = "WEFT_BLOB_BYTES_MAX", value_name = "BYTES")]
    pub(crate) blob_bytes_max: Option<u64>,
    /// Blob upload requests running at once over all tenants; one holds its slot only
    /// while its connection is open [default: 16]
    #[arg(long, env = "WEFT_BLOB_UPLOADS_MAX", value_name = "N")]
    pub(crate) blob_uploads_max: Option<usize>,
    /// Blob upload requests running at once per tenant [default: 4]
    #[arg(long, env = "WEFT_BLOB_UPLOADS_PER_TENANT_MAX", value_name = "N")]
    pub(crate) blob_uploads_per_tenant_max: Option<usize>,
    /// Interval of the blob garbage collector, in ms; 0 turns it off [default: 60000]
    #[arg(long, env = "WEFT_BLOB_GC_INTERVAL_MS", value_name = "MS")]
    pub(crate) blob_gc_interval_ms: Option<u64>,
    /// How long a blob stays unreferenced before the collector removes it, in ms
    /// [default: 600000]
    #[arg(long, env = "WEFT_BLOB_GC_GRACE_MS", value_name = "MS")]
    pub(crate) blob_gc_grace_ms: Option<u64>,
    /// A live subscription re-reads the log at least this often, even when nothing
    /// woke it, in ms [default: 30000]
    #[arg(long, env = "WEFT_LIVE_POLL_INTERVAL_MS", value_name = "MS")]
    pub(crate) live_poll_interval_ms: Option<u64>,
    /// On a PostgreSQL store: most tenants whose Merkle trees stay in memory, least
    /// recently used dropped first [default: 1024]
    #[arg(long, env = "WEFT_TREE_CACHE_TENANTS_MAX", value_name = "N")]
    pub(crate) tree_cache_tenants_max: Option<usize>,
    /// On a PostgreSQL store: most keys of all Merkle trees in memory [default: 4000000]
    #[arg(long, env = "WEFT_TREE_CACHE_KEYS_MAX", value_name = "N")]
    pub(crate) tree_cache_keys_max: Option<usize>,
    /// The store's block cache, in MiB: the largest share of a node's memory
    /// [default: 64]
    #[arg(long, env = "WEFT_STORE_CACHE_MIB", value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) store_cache_mib: Option<u64>,
    /// Size of each of the store's in-memory tables before it is flushed, in MiB
    /// [default: 16]
    #[arg(long, env = "WEFT_STORE_MEMTABLE_MIB", value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) store_memtable_mib: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Issue a token signed with the node's key (printed on stdout)
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft token issue --key-file ./node/node.key --tenant demo\n",
        "  weft token issue --tenant demo --delegate phone --protocol weft:kv \\\n",
        "      --actions read,sync --expires-in 7d\n",
        "\n",
        "Without --delegate the token is the tenant owner's: every action on the whole tenant.\n",
        "A delegate token covers the --protocol scopes (all when none) and the --actions.",
        "\n\n",
        exit_codes!(),
    ))]
    Issue(IssueArgs),
    /// Show what a token allows, and verify it with --key-file
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft token inspect $WEFT_TOKEN\n",
        "  weft token inspect --key-file ./node/node.key --json $TOKEN\n",
        "\n",
        "With --key-file, exits 4 when the signature does not verify or the token expired.",
        "\n\n",
        exit_codes!(),
    ))]
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub(crate) struct KeyFileArgs {
    /// The node's key file [default: DATA_DIR/node.key]
    #[arg(long, env = "WEFT_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// The node's data directory, to find its key file [default: $XDG_DATA_HOME/weft/node]
    #[arg(long, env = "WEFT_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct IssueArgs {
    #[command(flatten)]
    pub(crate) key: KeyFileArgs,
    /// Create the key file (random, mode 0600) when it does not exist; without this a
    /// missing key file is an error, since a token signed with a new key is refused by
    /// a node that already has one
    #[arg(long)]
    pub(crate) create_key: bool,
    /// The tenant the token is for
    #[arg(long, env = "WEFT_TENANT", default_value = TENANT_DEFAULT)]
    pub(crate) tenant: TenantId,
    /// Issue a delegate token for this principal (default: the owner's token)
    #[arg(long, value_name = "PRINCIPAL")]
    pub(crate) delegate: Option<PrincipalId>,
    /// The principal of an owner token [default: the tenant]
    #[arg(long, value_name = "PRINCIPAL", conflicts_with = "delegate")]
    pub(crate) principal: Option<PrincipalId>,
    /// Limit a delegate to these protocols (repeat; default: the whole tenant)
    #[arg(long = "protocol", value_name = "PROTOCOL", requires = "delegate")]
    pub(crate) protocols: Vec<ProtocolName>,
    /// A delegate's actions, comma-separated: read, write, sync [default: read,write,sync]
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        requires = "delegate",
        value_name = "ACTIONS"
    )]
    pub(crate) actions: Vec<Action>,
    /// Lifetime: a number and a unit (s, m, h, d), or `never` [default: 30d]
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    pub(crate) expires_in: String,
    /// The grant's id, shown in logs [default: derived from the principal and the time]
    #[arg(long, value_name = "ID")]
    pub(crate) grant_id: Option<String>,
}

/// An action a delegate may be granted.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read messages, roots and logs.
    Read,
    /// Write messages.
    Write,
    /// Replicate (diff rounds, subscriptions).
    Sync,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The token text, or `-` to read it from stdin [default: WEFT_TOKEN]
    #[arg(value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// Verify the signature with this key file
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which local replica and tenant a command works on.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReplicaArgs {
    /// The replica's store directory [default: $XDG_DATA_HOME/weft/replica or
    /// ~/.local/share/weft/replica]
    #[arg(long, env = "WEFT_STORE", value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
    /// The tenant
    #[arg(long, env = "WEFT_TENANT", default_value = TENANT_DEFAULT)]
    pub(crate) tenant: TenantId,
}

/// The record layout of `put`, `get`, `list`, `delete` and `watch`.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct KvArgs {
    /// The protocol records are written under (configured on first use)
    #[arg(long, env = "WEFT_PROTOCOL", default_value = crate::kv::PROTOCOL_DEFAULT)]
    pub(crate) protocol: ProtocolName,
    /// The record type path within the protocol
    #[arg(long, env = "WEFT_PATH", default_value = crate::kv::PATH_DEFAULT)]
    pub(crate) path: ProtocolPath,
    /// Who writes [default: the principal of the store's token for the tenant, else of
    /// WEFT_TOKEN, else the tenant]
    #[arg(long, env = "WEFT_AUTHOR", value_name = "PRINCIPAL")]
    pub(crate) author: Option<PrincipalId>,
}

/// Which node a command talks to, with which token.
#[derive(Args, Debug, Clone)]
pub(crate) struct NodeArgs {
    /// The node's address, http://HOST:PORT [default: the node of the last sync of this
    /// store and tenant, else http://127.0.0.1:7700]
    #[arg(long, env = "WEFT_NODE", value_name = "URL")]
    pub(crate) node: Option<String>,
    /// The capability token (see `weft token issue`) [default: the token of the last
    /// sync of this store and tenant]
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// Read the token from this file, again whenever the node refuses it or it is about
    /// to expire (for a long `watch` whose token is rotated)
    #[arg(
        long,
        env = "WEFT_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Args, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) kv: KvArgs,
    /// The key
    pub(crate) key: String,
    /// The value (or use --file)
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) value: Option<String>,
    /// Read the value from a file, `-` for stdin
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Print the receipt as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) kv: KvArgs,
    /// The key
    pub(crate) key: String,
    /// Print the record as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// Print only whether the value is here: absent, staged (its blob has not arrived),
    /// resident or tombstoned (deleted); exits 0 for every one
    #[arg(long, conflicts_with = "json")]
    pub(crate) residency: bool,
}

#[derive(Args, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) kv: KvArgs,
    /// Only keys starting with this
    #[arg(long, value_name = "PREFIX")]
    pub(crate) prefix: Option<String>,
    /// Also list deleted keys (tombstones; residency `tombstoned`)
    #[arg(long)]
    pub(crate) deleted: bool,
    /// Print JSON (an array of records)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) kv: KvArgs,
    /// The key
    pub(crate) key: String,
    /// Print the receipt as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    /// Print the report as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not download blobs: pulled values above the inline limit stay staged (see
    /// `weft get --residency`) until a sync without this flag
    #[arg(long)]
    pub(crate) no_blobs: bool,
}

#[derive(Args, Debug)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) replica: ReplicaArgs,
    #[command(flatten)]
    pub(crate) kv: KvArgs,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    /// Print one JSON object per change
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit after this many changes have been printed
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

/// Which store an inspecting command reads, and which tenant's part of it.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoreArgs {
    /// The replica's store directory [default: $XDG_DATA_HOME/weft/replica or
    /// ~/.local/share/weft/replica]
    #[arg(long, env = "WEFT_STORE", value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
    /// Only this tenant [default: every tenant in the store]
    #[arg(long, env = "WEFT_TENANT")]
    pub(crate) tenant: Option<TenantId>,
}

#[derive(Args, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Ask this node instead of the local replica
    #[arg(long, value_name = "URL")]
    pub(crate) node: Option<String>,
    /// The capability token, for --node
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeadLettersCommand {
    /// List dead letters
    #[command(after_help = concat!("Examples:\n  weft dead-letters list\n  weft dead-letters list --category push_permanent --json", "\n\n", exit_codes!()))]
    List(DeadLetterArgs),
    /// Retry dead letters with their nodes (a reconcile of their links); the ones that
    /// go through are cleared
    #[command(after_help = concat!(
        "Examples:\n",
        "  weft dead-letters retry\n",
        "  weft dead-letters retry --category push_exhausted --json\n",
        "\n",
        "Uses the node address and token of the last `weft sync` of each tenant.\n",
        "Exits 1 when some still fail, 3 when a node cannot be reached.",
        "\n\n",
        exit_codes!(),
    ))]
    Retry(DeadLetterArgs),
    /// Remove dead letters without retrying them
    #[command(after_help = concat!("Examples:\n  weft dead-letters clear --category pull_processing\n  weft dead-letters clear --cid <CID>", "\n\n", exit_codes!()))]
    Clear(DeadLetterArgs),
}

#[derive(Args, Debug)]
pub(crate) struct DeadLetterArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) filter: DeadLetterFilterArgs,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DeadLetterFilterArgs {
    /// Only this category (repeat): push_permanent, push_exhausted, pull_processing,
    /// pull_scope_rejected, closure
    #[arg(long = "category", value_name = "CATEGORY")]
    pub(crate) categories: Vec<DeadLetterCategory>,
    /// Only failures with this node
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// Only this message
    #[arg(long, value_name = "CID")]
    pub(crate) cid: Option<Cid>,
}

#[derive(Args, Debug)]
pub(crate) struct QuickstartArgs {
    /// Keep the temporary directory (its path is printed)
    #[arg(long)]
    pub(crate) keep: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_model_is_consistent() {
        Cli::command().debug_assert();
    }
}
