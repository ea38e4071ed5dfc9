//! `weft serve --store postgres://…`: a node whose durable state is all in a shared
//! PostgreSQL database, so several node processes serve the same tenants.
//!
//! What a node keeps for itself is only cache: connections, Merkle trees that follow
//! the log (`sync_engine::replica`), blob uploads in progress, subscriptions. Every
//! node announces its commits on the database's `LISTEN`/`NOTIFY` bus (the store sends
//! `pg_notify` inside each commit, [`PgChangeBus`] listens), so a write accepted by one
//! node wakes the subscriptions of all.

use std::sync::Arc;

use anyhow::Context as _;
use sync_engine::Replica;
use sync_ledger::Ledger;
use sync_ledger_pg::{PgChangeBus, PgStore};
use sync_transport::metrics::{Family, Sample};

use crate::exit::{Exit, coded, usage};

/// The schema the node's tables live in unless told otherwise.
pub(crate) const STORE_SCHEMA_DEFAULT: &str = "weft";

/// Whether `store` names a PostgreSQL database (else it is a directory).
pub(crate) fn is_postgres(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// A replica on the shared store, the bus to the other nodes and the store (for its
/// counters).
pub(crate) fn open(
    url: &str,
    schema: &str,
    (tenants_max, keys_max): (usize, usize),
    content: Option<Arc<dyn sync_ledger::BlobContent>>,
) -> anyhow::Result<(Replica, Arc<PgChangeBus>, PgStore)> {
    // The URL may hold a password: never print it.
    let shown = redact(url);
    let store = PgStore::builder(url)
        .schema(schema)
        .open()
        .map_err(|e| match e {
            sync_ledger::Error::Backend(b) if b.to_string().contains("schema name") => {
                usage(format!("bad store schema {schema:?}: {b}"))
            }
            other => coded(
                Exit::Store,
                format!("cannot open the PostgreSQL store {shown} (schema {schema}): {other}"),
            ),
        })?;
    let mut builder = Ledger::builder();
    if let Some(content) = content {
        builder = builder.blob_content(content);
    }
    let ledger = builder
        .open(store.clone())
        .with_context(|| format!("cannot open the ledger in {shown} (schema {schema})"))?;
    let replica = Replica::builder()
        .tree_cache(tenants_max, keys_max)
        .with_ledger(ledger)
        .with_context(|| format!("cannot open the ledger in {shown} (schema {schema})"))?;
    let bus = PgChangeBus::start(url, schema)
        .with_context(|| format!("cannot start the change bus on {shown}"))?;
    Ok((replica, Arc::new(bus), store))
}

/// The leases of the nodes on the shared store: background work (the blob collector)
/// runs on one node at a time.
pub(crate) fn leases(url: &str, schema: &str) -> anyhow::Result<Arc<dyn sync_ledger::Leases>> {
    let leases = sync_ledger_pg::PgLeases::new(url, schema)
        .with_context(|| format!("cannot use the leases of {}", redact(url)))?;
    Ok(Arc::new(leases))
}

/// `url` without its password.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Gauges and counters of a node on a shared store: its bus and its tree cache.
pub(crate) fn metrics(
    replica: Replica,
    bus: Arc<PgChangeBus>,
    store: PgStore,
) -> impl Fn() -> Vec<Family> + Send + Sync + 'static {
    move || {
        let c = bus.counters();
        let f = replica.follow_stats();
        let counter = |name: &str, help: &str, v: u64| {
            Family::counter(name, help, vec![Sample::new(v as f64)])
        };
        vec![
            counter(
                "weft_bus_sent_total",
                "Commits this node announced to the other nodes (each within its commit).",
                store.announced(),
            ),
            counter(
                "weft_bus_heard_total",
                "Announcements heard on the bus, this node's own included.",
                c.heard,
            ),
            counter(
                "weft_bus_reconnects_total",
                "Reconnects of the bus's listener (each wakes every subscription).",
                c.reconnects,
            ),
            Family::gauge(
                "weft_bus_listening",
                "1 while the bus's listener is connected to the database.",
                vec![Sample::new(if c.listening { 1.0 } else { 0.0 })],
            ),
            counter(
                "weft_tree_loads_total",
                "Tenant Merkle trees loaded from a scan of the database.",
                f.loads,
            ),
            counter(
                "weft_tree_followed_entries_total",
                "Log entries the Merkle trees followed.",
                f.entries,
            ),
            counter(
                "weft_tree_evictions_total",
                "Tenant Merkle trees dropped to stay within the cache's bounds.",
                f.evictions,
            ),
            Family::gauge(
                "weft_tree_tenants",
                "Tenants whose Merkle trees this node holds.",
                vec![Sample::new(replica.trees_held() as f64)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://weft:secret@db:5432/weft"),
            "postgres://weft@db:5432/weft"
        );
        assert_eq!(redact("postgres://db/weft"), "postgres://db/weft");
        assert!(is_postgres("postgresql://x") && !is_postgres("./node"));
    }
}
