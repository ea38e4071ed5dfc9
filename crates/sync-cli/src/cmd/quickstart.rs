//! `weft quickstart`: a node and two replicas on loopback, in one process and a
//! temporary directory, showing live propagation and offline edits converging, with the
//! latencies measured on the way. Everything it uses is what the other commands use:
//! the node is `serve`'s, the replicas sync through the engine like `sync`, and B
//! follows the node like `watch`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sync_engine::ReplicaHandler;
use sync_transport::metrics::Metrics;
use sync_transport::{Claims, ServerConfig, Token, serve};
use sync_types::{Clock as _, GrantId, PrincipalId, Scope, SystemClock, TenantId};
use sync_types::{LinkStatus, SyncEvent};
use tokio::sync::broadcast;

use crate::cli::{NodeArgs, QuickstartArgs};
use crate::cmd::remote::Session;
use crate::cmd::sync::sync_once;
use crate::cmd::watch::{Printed, start_live};
use crate::exit::{Exit, coded};
use crate::kv::{self, Kv};
use crate::{key, out};

/// Live writes measured.
const LIVE_WRITES: usize = 5;
/// Longest wait for anything the quickstart expects to happen.
const WAIT_MAX: Duration = Duration::from_secs(20);

fn say(text: impl AsRef<str>) -> std::io::Result<()> {
    out::line(text)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn synced(s: &Session, who: &str) -> anyhow::Result<crate::cmd::sync::Summary> {
    let (summary, error) = sync_once(s).await?;
    match error {
        Some(e) => Err(anyhow::Error::new(e).context(format!("replica {who} could not sync"))),
        None => Ok(summary),
    }
}

/// Writes on a blocking thread (an fsync).
async fn put(kv: &Arc<Kv>, key: &str, value: &str) -> anyhow::Result<()> {
    let (kv, key, value) = (kv.clone(), key.to_owned(), value.to_owned());
    tokio::task::spawn_blocking(move || {
        let receipt = kv.put(&key, value.as_bytes())?;
        anyhow::ensure!(receipt.won(), "the write of {key:?} was superseded at once");
        Ok(())
    })
    .await
    .context("the write task failed")?
}

fn snapshot(kv: &Kv) -> anyhow::Result<Vec<(String, String)>> {
    Ok(kv
        .list(None, false)?
        .into_iter()
        .map(|e| {
            let v = e.value_preview(80);
            (e.key, v)
        })
        .collect())
}

/// Waits until `b` has applied a remote change of `key`.
async fn seen(
    b: &Session,
    changes: &mut broadcast::Receiver<sync_engine::Change>,
    key: &str,
) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    if Printed::of(b, &change)?.is_some_and(|p| p.key == key) {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if b.replica
                        .get_by_key(&b.tenant, &kv_protocol()?, key.as_bytes())?
                        .is_some()
                    {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    anyhow::bail!("replica B stopped reporting changes")
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("{key} did not reach replica B within {WAIT_MAX:?}"))?
}

/// Waits until the session's link reports it is live.
async fn until_live(
    s: &Session,
    events: &mut broadcast::Receiver<SyncEvent>,
) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT_MAX, async {
        loop {
            match events.recv().await {
                Ok(SyncEvent::LinkStatusChanged {
                    link,
                    to: LinkStatus::Live,
                    ..
                }) if link == s.link => {
                    return Ok(());
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    anyhow::bail!("the replica stopped reporting events")
                }
            }
        }
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the link to {} did not go live within {WAIT_MAX:?}",
            s.endpoint
        )
    })?
}

fn kv_protocol() -> anyhow::Result<sync_types::ProtocolName> {
    Ok(sync_types::ProtocolName::new(kv::PROTOCOL_DEFAULT)?)
}

/// `weft quickstart`.
pub(crate) async fn run(args: QuickstartArgs) -> anyhow::Result<Exit> {
    let begun = Instant::now();
    // Declared first, so it is removed after everything that uses it is dropped.
    let dir = tempfile::Builder::new()
        .prefix("weft-quickstart-")
        .tempdir()
        .map_err(|e| {
            coded(
                Exit::Store,
                format!("cannot create a temporary directory: {e}"),
            )
        })?;
    let root = dir.path().to_path_buf();
    say(format!(
        "Weft quickstart: one node and two replicas (A and B) on loopback, in {}",
        root.display()
    ))?;
    say("")?;

    // 1. The node, on a free loopback port, with metrics.
    let (node_key, _) = key::load_or_create(&root.join("node/node.key"))?;
    let node_store = kv::open_replica(&root.join("node/store"), true)?;
    let metrics = Arc::new(Metrics::new());
    let mut config = ServerConfig::new(node_key.clone());
    config.metrics = Some(metrics.clone());
    config.shutdown_grace_ms = 1_000;
    let server = serve(
        Arc::new(ReplicaHandler::new(node_store.clone())),
        config,
        "127.0.0.1:0".parse().expect("a valid address"),
    )
    .await
    .map_err(|e| coded(Exit::Listen, format!("cannot listen on 127.0.0.1: {e}")))?;
    let url = format!("http://{}", server.local_addr());
    let tenant = TenantId::new("quickstart")?;
    let claims = Claims::owner(
        tenant.clone(),
        PrincipalId::new(tenant.as_str())?,
        GrantId::new("quickstart")?,
        SystemClock.now_ms() + 3_600_000,
    );
    let token = Token::issue(&node_key, claims).to_string();
    say(format!(
        "1. Node listening on {url} (Prometheus metrics at {url}/metrics)."
    ))?;
    say(format!(
        "   Issued an owner token for tenant {tenant}: {}…",
        &token[..24.min(token.len())]
    ))?;

    let node = NodeArgs {
        node: Some(url.clone()),
        token: Some(token),
        token_file: None,
    };
    let a = Arc::new(
        Session::over(
            kv::open_replica(&root.join("a"), true)?,
            tenant.clone(),
            &node,
        )
        .await?,
    );
    let b = Arc::new(
        Session::over(
            kv::open_replica(&root.join("b"), true)?,
            tenant.clone(),
            &node,
        )
        .await?,
    );
    let kv_a = Arc::new(Kv::over(a.replica.clone(), tenant.clone())?);
    let kv_b = Arc::new(Kv::over(b.replica.clone(), tenant.clone())?);

    // 2. A writes and pushes; 3. B pulls.
    for (k, v) in [
        ("greeting", "hello from A"),
        ("color", "red"),
        ("count", "3"),
    ] {
        put(&kv_a, k, v).await?;
    }
    let s = synced(&a, "A").await?;
    say(format!(
        "2. Replica A wrote 3 keys and synced: pushed {} messages in {} ms.",
        s.pushed_messages,
        s.elapsed.as_millis()
    ))?;
    let s = synced(&b, "B").await?;
    say(format!(
        "3. Replica B synced: pulled {} messages in {} ms. B now holds:",
        s.pulled_messages,
        s.elapsed.as_millis()
    ))?;
    for (k, v) in snapshot(&kv_b)? {
        say(format!("     {k} = {v}"))?;
    }

    // 4. Live: both replicas run the engine's live driver; A writes one key at a time,
    //    with no explicit sync.
    let mut b_changes = b.replica.subscribe();
    let mut a_events = a.replica.events();
    let mut b_events = b.replica.events();
    let live_a = start_live(&a)?;
    let mut live_b = start_live(&b)?;
    until_live(&a, &mut a_events).await?;
    until_live(&b, &mut b_events).await?;
    say(format!(
        "4. Both replicas now replicate live (subscription plus push on write). A writes {LIVE_WRITES} keys:"
    ))?;
    let mut live = Vec::with_capacity(LIVE_WRITES);
    for i in 1..=LIVE_WRITES {
        let k = format!("live-{i}");
        let t0 = Instant::now();
        put(&kv_a, &k, &format!("live write {i}")).await?;
        seen(&b, &mut b_changes, &k).await?;
        let took = t0.elapsed();
        live.push(took);
        say(format!(
            "     {k}: written on A, applied on B {} later",
            ms(took)
        ))?;
    }

    // 5. B goes offline; both sides edit, including the same key.
    live_b.stop(WAIT_MAX).await;
    say("5. B goes offline (its driver stops). While it is:")?;
    put(&kv_b, "color", "green").await?;
    put(&kv_b, "from-b", "written on B while offline").await?;
    say("     B sets color = green and adds from-b (no node to talk to)")?;
    put(&kv_a, "color", "blue").await?;
    put(&kv_a, "from-a", "written on A while B was offline").await?;
    say("     A sets color = blue and adds from-a (pushed live to the node)")?;
    let (na, nb) = (kv_a.list(None, false)?.len(), kv_b.list(None, false)?.len());
    let root_a = a.replica.root(&tenant, &Scope::Full)?;
    let root_b = b.replica.root(&tenant, &Scope::Full)?;
    say(format!(
        "     now A holds {na} keys and B {nb}; their roots differ ({:.12} vs {:.12})",
        root_a.to_string(),
        root_b.to_string()
    ))?;

    // 6. B comes back: its link opens from its checkpoints, pulls A's edits and pushes
    //    its own, which reach A through A's subscription.
    let t0 = Instant::now();
    live_b = start_live(&b)?;
    let converge = tokio::time::timeout(WAIT_MAX, async {
        loop {
            let ra = a.replica.root(&tenant, &Scope::Full)?;
            let rb = b.replica.root(&tenant, &Scope::Full)?;
            let rn = node_store.root(&tenant, &Scope::Full)?;
            if ra == rb && rb == rn {
                return anyhow::Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .map_err(|_| {
        coded(
            Exit::Failure,
            format!("the replicas did not converge within {WAIT_MAX:?}"),
        )
    })??;
    live_b.stop(WAIT_MAX).await;
    live_a.stop(WAIT_MAX).await;
    let (snap_a, snap_b) = (snapshot(&kv_a)?, snapshot(&kv_b)?);
    let root_a = a.replica.root(&tenant, &Scope::Full)?;
    let root_b = b.replica.root(&tenant, &Scope::Full)?;
    let root_node = node_store.root(&tenant, &Scope::Full)?;
    say("6. B comes back online: its link reopens from its checkpoints, with no explicit sync.")?;
    if snap_a != snap_b || root_a != root_b || root_a != root_node {
        return Err(coded(
            Exit::Failure,
            "the replicas did not converge (this is a bug: please report it)",
        ));
    }
    let color = snap_a
        .iter()
        .find(|(k, _)| k == "color")
        .map_or("?", |(_, v)| v.as_str());
    say(format!(
        "     A, B and the node converged in {}: {} keys each, same root {:.12}.",
        ms(converge),
        snap_a.len(),
        root_a.to_string()
    ))?;
    say(format!(
        "     color = {color} on both: concurrent edits resolve to the same winner everywhere (the later write)."
    ))?;
    say("")?;

    // 7. What was measured.
    let mut sorted = live.clone();
    sorted.sort();
    let requests: u64 = metrics
        .render(0, 0)
        .lines()
        .filter(|l| l.starts_with("weft_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let mut t = out::Table::new(&["MEASURED", "VALUE"]);
    t.row(vec![
        "live write on A -> applied on B (min / median / max)".into(),
        format!(
            "{} / {} / {}",
            ms(sorted[0]),
            ms(sorted[sorted.len() / 2]),
            ms(sorted[sorted.len() - 1])
        ),
    ]);
    t.row(vec![
        "B back online -> A, B and the node converged".into(),
        ms(converge),
    ]);
    t.row(vec![
        "requests served by the node".into(),
        requests.to_string(),
    ]);
    t.row(vec!["whole quickstart".into(), ms(begun.elapsed())]);
    t.print()?;
    say("")?;

    // Clean up: stop the node, close the stores, remove the directory.
    server.shutdown().await;
    drop((kv_a, kv_b, a, b, node_store));
    if args.keep {
        let kept = dir.keep();
        say(format!("Kept {} (node/, a/, b/).", kept.display()))?;
    } else {
        dir.close().map_err(|e| {
            coded(
                Exit::Store,
                format!("cannot remove {}: {e}", root.display()),
            )
        })?;
        say(format!("Stopped the node and removed {}.", root.display()))?;
    }
    say(
        "Next: the five-minute tour in README.md runs the same steps with `weft serve`, `weft sync` and `weft watch`.",
    )?;
    Ok(Exit::Ok)
}
