//! `weft status`, `links`, `health` and `dead-letters`: what the engine knows about a
//! store's replication, as tables or JSON. These read the store; only `health --node`
//! and `dead-letters retry` talk to a node.

use std::collections::BTreeSet;

use anyhow::Context as _;
use sync_ledger::DeadLetterFilter;
use sync_transport::Remote as _;
use sync_types::{DeadLetter, HealthSummary, LinkState, ProgressToken, TenantId};

use crate::cli::{DeadLetterArgs, HealthArgs, StatusArgs, StoreArgs};
use crate::cmd::remote::{self, HttpEngine};
use crate::exit::{Exit, coded, usage};
use crate::{kv, out, paths};

fn open(store: &StoreArgs) -> anyhow::Result<HttpEngine> {
    let dir = paths::replica_dir(store.store.clone())?;
    Ok(remote::engine(kv::open_replica(&dir, false)?))
}

fn links_of(engine: &HttpEngine, tenant: Option<&TenantId>) -> anyhow::Result<Vec<LinkState>> {
    Ok(engine
        .links()
        .context("cannot read the links")?
        .into_iter()
        .filter(|l| tenant.is_none_or(|t| l.key.tenant == *t))
        .collect())
}

fn position(t: Option<ProgressToken>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.position.to_string())
}

/// The node the link last reached (of those its endpoint names), if recorded.
fn reached(engine: &HttpEngine, l: &LinkState) -> anyhow::Result<Option<sync_ledger::ReachedNode>> {
    engine
        .replica()
        .ledger()
        .links()
        .reached(&l.key)
        .context("cannot read the node a link reached")
}

fn link_json(engine: &HttpEngine, l: &LinkState) -> anyhow::Result<serde_json::Value> {
    let reached = reached(engine, l)?;
    Ok(serde_json::json!({
        "key": l.key.to_string(),
        "tenant": l.key.tenant.as_str(),
        "node": l.key.endpoint.as_str(),
        "talks_to": reached.as_ref().map(|r| r.node.as_str()),
        "talks_to_since_ms": reached.as_ref().map(|r| r.since_ms),
        "status": l.status.as_str(),
        "connectivity": l.connectivity.as_str(),
        "scope": serde_json::to_value(&l.scope)?,
        "pull_position": l.pull.contiguous_applied.map(|t| t.position),
        "push_position": l.push.contiguous_applied.map(|t| t.position),
        "pending_outbound": engine.pending_outbound(&l.key)?,
        "needs_reconcile": l.needs_reconcile,
        "last_sync_ms": l.last_sync_ms,
        "last_activity_ms": l.last_activity_ms,
        "counters": {
            "messages_pulled": l.counters.messages_pulled,
            "messages_pushed": l.counters.messages_pushed,
            "bytes_pulled": l.counters.bytes_pulled,
            "bytes_pushed": l.counters.bytes_pushed,
            "repairs": l.counters.repairs,
            "failures": l.counters.failures,
        },
    }))
}

fn links_table(engine: &HttpEngine, links: &[LinkState]) -> anyhow::Result<out::Table> {
    let mut t = out::Table::new(&[
        "TENANT",
        "NODE",
        "TALKS TO",
        "STATUS",
        "CONN",
        "PULLED@",
        "PUSHED@",
        "PENDING",
        "LAST SYNC",
    ]);
    for l in links {
        t.row(vec![
            l.key.tenant.to_string(),
            l.key.endpoint.to_string(),
            reached(engine, l)?.map_or_else(|| "-".to_owned(), |r| r.node.to_string()),
            l.status.as_str().to_owned(),
            l.connectivity.as_str().to_owned(),
            position(l.pull.contiguous_applied),
            position(l.push.contiguous_applied),
            engine.pending_outbound(&l.key)?.to_string(),
            out::time(l.last_sync_ms),
        ]);
    }
    Ok(t)
}

fn health_json(h: &HealthSummary) -> serde_json::Value {
    serde_json::json!({
        "healthy": h.healthy,
        "connectivity": h.connectivity.as_str(),
        "failed_messages": h.failed_message_count,
        "closure_failures": h.closure_failure_count,
        "degraded_links": h.degraded_link_count,
        "pending_outbound": h.pending_outbound,
        "last_sync_ms": h.last_sync_ms,
    })
}

fn health_rows(h: &HealthSummary) -> Vec<(&'static str, String)> {
    vec![
        ("healthy", if h.healthy { "yes" } else { "NO" }.to_owned()),
        ("connectivity", h.connectivity.as_str().to_owned()),
        ("failed messages", h.failed_message_count.to_string()),
        ("closure failures", h.closure_failure_count.to_string()),
        ("degraded links", h.degraded_link_count.to_string()),
        ("pending outbound", h.pending_outbound.to_string()),
        ("last sync", out::time(h.last_sync_ms)),
    ]
}

fn print_pairs(rows: Vec<(&'static str, String)>) -> std::io::Result<()> {
    let mut t = out::Table::new(&["", ""]);
    for (k, v) in rows {
        t.row(vec![k.to_owned(), v]);
    }
    // Skip the empty header row.
    for line in t.render().into_iter().skip(1) {
        out::line(line)?;
    }
    Ok(())
}

/// `weft status`: per tenant the log head, then the links and the health summary.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<Exit> {
    let engine = open(&args.store)?;
    let ledger = engine.replica().ledger();
    let tenants: Vec<TenantId> = ledger
        .tenants()?
        .into_iter()
        .filter(|t| args.store.tenant.as_ref().is_none_or(|f| f == t))
        .collect();
    let links = links_of(&engine, args.store.tenant.as_ref())?;
    let health = engine.health().context("cannot compute health")?;
    if args.json {
        let mut ts = Vec::new();
        for t in &tenants {
            ts.push(serde_json::json!({
                "tenant": t.as_str(),
                "log_position": ledger.log_head(t)?.map(|h| h.position),
            }));
        }
        let mut ls = Vec::new();
        for l in &links {
            ls.push(link_json(&engine, l)?);
        }
        out::json_pretty(&serde_json::json!({
            "tenants": ts,
            "links": ls,
            "health": health_json(&health),
        }))?;
        return Ok(Exit::Ok);
    }
    let mut t = out::Table::new(&["TENANT", "LOG POSITION"]);
    for tenant in &tenants {
        t.row(vec![tenant.to_string(), position(ledger.log_head(tenant)?)]);
    }
    if t.is_empty() {
        out::line("no data in this store yet")?;
    } else {
        t.print()?;
    }
    out::line("")?;
    if links.is_empty() {
        out::line("no links: run `weft sync --node URL --token TOKEN` to create one")?;
    } else {
        links_table(&engine, &links)?.print()?;
    }
    out::line("")?;
    print_pairs(health_rows(&health))?;
    Ok(Exit::Ok)
}

/// `weft links`.
pub(crate) fn links(args: StatusArgs) -> anyhow::Result<Exit> {
    let engine = open(&args.store)?;
    let links = links_of(&engine, args.store.tenant.as_ref())?;
    if args.json {
        let mut ls = Vec::new();
        for l in &links {
            ls.push(link_json(&engine, l)?);
        }
        out::json(&serde_json::Value::Array(ls))?;
    } else if links.is_empty() {
        out::note("no links: run `weft sync --node URL --token TOKEN` to create one");
    } else {
        links_table(&engine, &links)?.print()?;
    }
    Ok(Exit::Ok)
}

/// `weft health`: the local replica's, or a node's with `--node`. Exits 1 when not
/// healthy.
pub(crate) async fn health(args: HealthArgs) -> anyhow::Result<Exit> {
    let (summary, node) = match &args.node {
        Some(node) => {
            let endpoint = remote::parse_endpoint(node)?;
            let token = args
                .token
                .as_deref()
                .ok_or_else(|| usage("--node needs a token: pass --token or set WEFT_TOKEN"))?;
            // Several nodes (a shared store): the first that answers, named in the reply.
            let client = remote::failover_client(&endpoint, token)?;
            let reply = match client.health().await {
                Ok(r) => r,
                Err(e) => {
                    let err = anyhow::Error::new(e)
                        .context(format!("cannot get the health of {endpoint}"));
                    return Err(remote::explain(err, &endpoint));
                }
            };
            (
                reply.summary.clone(),
                Some((client.current_node().clone(), reply)),
            )
        }
        None => {
            let engine = open(&args.store)?;
            (engine.health().context("cannot compute health")?, None)
        }
    };
    if args.json {
        let mut v = health_json(&summary);
        if let Some((endpoint, reply)) = &node {
            v["node"] = endpoint.as_str().into();
            v["connections"] = reply.connections.into();
            v["subscriptions"] = reply.subscriptions.into();
            v["protocol_versions"] = reply.protocol_versions.clone().into();
        }
        out::json(&v)?;
    } else {
        let mut rows = Vec::new();
        if let Some((endpoint, reply)) = &node {
            rows.push(("node", endpoint.to_string()));
            rows.push(("connections", reply.connections.to_string()));
            rows.push(("subscriptions", reply.subscriptions.to_string()));
        }
        rows.extend(health_rows(&summary));
        print_pairs(rows)?;
    }
    if summary.healthy {
        Ok(Exit::Ok)
    } else {
        Err(coded(
            Exit::Failure,
            format!(
                "not healthy: {} failed messages, {} degraded links (see `weft dead-letters list` and `weft links`)",
                summary.failed_message_count, summary.degraded_link_count
            ),
        ))
    }
}

fn filter(args: &DeadLetterArgs) -> anyhow::Result<DeadLetterFilter> {
    Ok(DeadLetterFilter {
        tenant: args.store.tenant.clone(),
        endpoint: match &args.filter.endpoint {
            Some(e) => Some(remote::parse_endpoint(e)?),
            None => None,
        },
        categories: args.filter.categories.clone(),
        protocol: None,
    })
}

fn matching(engine: &HttpEngine, args: &DeadLetterArgs) -> anyhow::Result<Vec<DeadLetter>> {
    let f = filter(args)?;
    Ok(engine
        .replica()
        .ledger()
        .dead_letters()
        .list(&f)
        .context("cannot read the dead letters")?
        .into_iter()
        .filter(|d| args.filter.cid.is_none_or(|c| c == d.cid))
        .collect())
}

fn letter_json(d: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "cid": d.cid.to_string(),
        "tenant": d.tenant.as_str(),
        "node": d.endpoint.as_str(),
        "protocol": d.protocol.as_ref().map(|p| p.as_str()),
        "category": d.category.as_str(),
        "error_code": d.error_code,
        "error": d.error,
        "attempts": d.attempts,
        "failed_at_ms": d.failed_at_ms,
    })
}

fn print_letters(letters: &[DeadLetter]) -> std::io::Result<()> {
    let mut t = out::Table::new(&[
        "CID", "TENANT", "NODE", "CATEGORY", "ATTEMPTS", "FAILED", "ERROR",
    ]);
    for d in letters {
        t.row(vec![
            crate::cmd::records::short(&d.cid.to_string()).to_owned(),
            d.tenant.to_string(),
            d.endpoint.to_string(),
            d.category.as_str().to_owned(),
            d.attempts.to_string(),
            out::time(Some(d.failed_at_ms)),
            d.error.clone(),
        ]);
    }
    t.print()
}

/// `weft dead-letters list`.
pub(crate) fn dead_letters_list(args: DeadLetterArgs) -> anyhow::Result<Exit> {
    let engine = open(&args.store)?;
    let letters = matching(&engine, &args)?;
    if args.json {
        out::json(&serde_json::Value::Array(
            letters.iter().map(letter_json).collect(),
        ))?;
    } else if letters.is_empty() {
        eprintln!("no dead letters");
    } else {
        print_letters(&letters)?;
    }
    Ok(Exit::Ok)
}

/// `weft dead-letters clear`.
pub(crate) fn dead_letters_clear(args: DeadLetterArgs) -> anyhow::Result<Exit> {
    let engine = open(&args.store)?;
    let ledger = engine.replica().ledger();
    let durability = engine.replica().durability();
    let mut cleared = 0usize;
    for d in matching(&engine, &args)? {
        if ledger
            .dead_letters()
            .clear(&d.tenant, &d.cid, &d.endpoint, durability)?
        {
            cleared += 1;
        }
    }
    if args.json {
        out::json(&serde_json::json!({ "cleared": cleared }))?;
    } else {
        out::line(format!("cleared {cleared} dead letters"))?;
    }
    Ok(Exit::Ok)
}

/// `weft dead-letters retry`: marks the links of the matching letters as needing a
/// reconcile and syncs them. The reconcile compares the trees, so every message one
/// side lacks is sent again whatever its checkpoint says; letters of messages that now
/// went through are cleared by the engine when the roots converge. What is still
/// listed afterwards still fails.
pub(crate) async fn dead_letters_retry(args: DeadLetterArgs) -> anyhow::Result<Exit> {
    let engine = open(&args.store)?;
    let before = matching(&engine, &args)?;
    let targets: BTreeSet<(TenantId, sync_types::Endpoint)> = before
        .iter()
        .map(|d| (d.tenant.clone(), d.endpoint.clone()))
        .collect();
    let links: Vec<LinkState> = engine
        .links()?
        .into_iter()
        .filter(|l| targets.contains(&(l.key.tenant.clone(), l.key.endpoint.clone())))
        .collect();
    let durability = engine.replica().durability();
    let mut errors = Vec::new();
    for l in &links {
        engine
            .replica()
            .ledger()
            .links()
            .set_needs_reconcile(&l.key, true, durability)?;
        let report = engine.sync_link(&l.key).await;
        if let Some(e) = report.error {
            errors.push(
                anyhow::Error::new(e).context(format!("retry with {} failed", l.key.endpoint)),
            );
        }
    }
    let after = matching(&engine, &args)?;
    let still: BTreeSet<_> = after.iter().map(|d| (d.cid, d.endpoint.clone())).collect();
    let through = before
        .iter()
        .filter(|d| !still.contains(&(d.cid, d.endpoint.clone())))
        .count();
    if args.json {
        out::json(&serde_json::json!({
            "retried": before.len(),
            "went_through": through,
            "still_failing": after.iter().map(letter_json).collect::<Vec<_>>(),
        }))?;
    } else {
        out::line(format!(
            "retried {} dead letters: {through} went through, {} still fail",
            before.len(),
            after.len()
        ))?;
        if !after.is_empty() {
            print_letters(&after)?;
        }
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if before.iter().any(|d| {
        !links
            .iter()
            .any(|l| l.key.tenant == d.tenant && l.key.endpoint == d.endpoint)
    }) {
        return Err(coded(
            Exit::Failure,
            "some dead letters belong to links that are no longer registered: clear them with `weft dead-letters clear`",
        ));
    }
    if after.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(coded(
            Exit::Failure,
            format!("{} dead letters still fail", after.len()),
        ))
    }
}
