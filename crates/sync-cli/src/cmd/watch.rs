//! `weft watch`: follow a node live and print changes as they arrive.
//!
//! [`follow`] keeps a replica in step with its node: it syncs once with the engine
//! (catch-up, push, root check), subscribes from the link's pull checkpoint, and applies
//! every event with [`sync_engine::Replica::apply`], moving the pull checkpoint over each
//! applied event (events arrive in log order, so the run stays contiguous). Anything it
//! cannot settle alone (a gap, an event that is not applied, a dropped subscription)
//! sends it back to the engine's one-shot sync, then it resubscribes. The subscription is
//! only an accelerator: the engine's checkpointed sync is what guarantees nothing is
//! missed.
//!
//! Printing is separate: the replica's change feed reports every message that arrived
//! from elsewhere, whichever path applied it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sync_engine::{Change, Origin};
use sync_transport::proto::{CloseReason, LogEntry, LogFilter, SubscribeRequest};
use sync_transport::{Remote as _, SubscriptionItem};
use sync_types::Message;
use tokio::sync::{broadcast, mpsc};

use crate::cli::WatchArgs;
use crate::cmd::remote::Session;
use crate::cmd::sync::sync_once;
use crate::exit::{Exit, classify, coded};
use crate::{kv, out, paths};

/// Reconnection attempts after a connection that worked breaks, with doubling waits
/// from [`RECONNECT_BACKOFF_MS`].
pub(crate) const RECONNECTS_MAX: u32 = 5;
/// The first wait before a reconnection, in ms.
pub(crate) const RECONNECT_BACKOFF_MS: u64 = 250;

/// What [`follow`] reports while it runs.
#[derive(Debug)]
pub(crate) enum FollowEvent {
    /// The subscription replayed what was stored; changes now arrive live.
    Live,
    /// The connection broke; it is retrying.
    Reconnecting(String),
}

/// How one round of [`follow_once`] ended.
enum Next {
    /// Back to the engine's sync, then resubscribe: a gap, an event that did not settle.
    Resync,
    /// Stop following; no retry can help (the node shut down, the token expired).
    Stop(anyhow::Error),
}

/// Keeps `s` in step with its node until an error it cannot recover from. A broken
/// connection or a dropped subscription is retried [`RECONNECTS_MAX`] times with
/// doubling waits, but only after the first connection worked: a node that cannot be
/// reached at all is reported at once. A node shutting down ends it (exit 3).
pub(crate) async fn follow(
    s: Arc<Session>,
    events: mpsc::UnboundedSender<FollowEvent>,
) -> anyhow::Result<Exit> {
    let mut connected_once = false;
    let mut failures = 0u32;
    loop {
        match follow_once(&s, &events, &mut connected_once, &mut failures).await {
            Ok(Next::Resync) => {
                // A short pause, so a flapping node is not hammered.
                tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
            }
            Ok(Next::Stop(e)) => return Err(e),
            Err(e) => {
                let retry = connected_once
                    && classify(&e) == Exit::Unreachable
                    && failures < RECONNECTS_MAX;
                if !retry {
                    return Err(e);
                }
                let _ = events.send(FollowEvent::Reconnecting(crate::exit::describe(&e)));
                let wait = RECONNECT_BACKOFF_MS << failures;
                failures += 1;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

/// One sync and one subscription, until the subscription needs the engine again or
/// must stop (`Ok`), or fails in a way worth retrying (`Err`).
async fn follow_once(
    s: &Arc<Session>,
    events: &mpsc::UnboundedSender<FollowEvent>,
    connected_once: &mut bool,
    failures: &mut u32,
) -> anyhow::Result<Next> {
    let (_, error) = sync_once(s).await?;
    if let Some(e) = error {
        return Err(anyhow::Error::new(e).context(format!("sync with {} failed", s.endpoint)));
    }
    *connected_once = true;
    let from = s.link_state()?.pull.contiguous_applied;
    let mut sub = s
        .remote()?
        .subscribe(SubscribeRequest {
            tenant: s.tenant.clone(),
            scope: s.scope.clone(),
            from,
            filter: LogFilter::default(),
        })
        .await
        .with_context(|| format!("cannot subscribe to {}", s.endpoint))?;
    loop {
        let Some(item) = sub.next().await else {
            return Ok(Next::Resync);
        };
        match item {
            SubscriptionItem::Event(entry) => {
                if !apply_event(s, entry).await? {
                    return Ok(Next::Resync);
                }
            }
            SubscriptionItem::EndOfStored { .. } => {
                *failures = 0;
                let _ = events.send(FollowEvent::Live);
            }
            SubscriptionItem::Gap(gap) => {
                tracing::info!(?gap, "the node cannot serve the checkpoint; reconciling");
                return Ok(Next::Resync);
            }
            SubscriptionItem::Closed(CloseReason::ShuttingDown) => {
                return Ok(Next::Stop(coded(
                    Exit::Unreachable,
                    format!("the node at {} shut down", s.endpoint),
                )));
            }
            SubscriptionItem::Closed(CloseReason::Expired) => {
                return Ok(Next::Stop(coded(
                    Exit::Refused,
                    "the token expired: issue a new one with `weft token issue`",
                )));
            }
            SubscriptionItem::Closed(reason) => {
                return Err(coded(
                    Exit::Unreachable,
                    format!("the subscription to {} closed: {reason:?}", s.endpoint),
                ));
            }
        }
    }
}

/// Applies one event and moves the pull checkpoint over it; `false` when the event was
/// not settled (the engine's sync takes over).
async fn apply_event(s: &Arc<Session>, entry: LogEntry) -> anyhow::Result<bool> {
    let s2 = s.clone();
    let token = entry.token;
    tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        let origin = Origin::Remote(Some(s2.endpoint.clone()));
        let outcomes = s2.replica.apply(
            &s2.tenant,
            vec![(entry.item.message, entry.item.data)],
            origin,
        )?;
        if !outcomes.first().is_some_and(|o| o.is_success()) {
            tracing::debug!(?outcomes, "live event not applied; syncing");
            return Ok(false);
        }
        let mut checkpoint = s2.link_state()?.pull;
        if !checkpoint.accepts_domain(&token) {
            return Ok(false);
        }
        checkpoint.commit(token);
        s2.replica.ledger().links().save_pull_checkpoint(
            &s2.link,
            checkpoint,
            s2.replica.now_ms(),
            sync_ledger::Durability::Buffered,
        )?;
        Ok(true)
    })
    .await
    .context("the apply task failed")?
}

/// A change as `watch` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Printed {
    pub(crate) op: &'static str,
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) cid: String,
    pub(crate) timestamp_ms: u64,
}

impl Printed {
    /// The change for a message that arrived from elsewhere, `None` for configures and
    /// other tenants.
    pub(crate) fn of(s: &Session, change: &Change) -> anyhow::Result<Option<Self>> {
        if change.tenant != s.tenant || !matches!(change.origin, Origin::Remote(_)) {
            return Ok(None);
        }
        let Some(record_id) = change.record_id else {
            return Ok(None);
        };
        let ledger = s.replica.ledger();
        let Some(stored) = ledger.get_message(&s.tenant, &change.cid)? else {
            // Superseded already by a later version.
            return Ok(None);
        };
        let (op, data) = match &stored.message {
            Message::Write(w) => match (&stored.data, w.data) {
                (Some(d), _) => ("put", Some(d.clone())),
                (None, Some(r)) if ledger.blobs().has(&r.data_cid)? => {
                    ("put", Some(ledger.blobs().read(&r.data_cid)?))
                }
                (None, _) => ("put", None),
            },
            Message::Delete(_) => {
                // The key lives in the payloads; the initial write is always retained.
                let initial = s
                    .replica
                    .get_with_tombstone(&s.tenant, &record_id)?
                    .and_then(|r| r.initial);
                let data = match initial {
                    Some(cid) => ledger.get_message(&s.tenant, &cid)?.and_then(|m| m.data),
                    None => None,
                };
                ("delete", data)
            }
            Message::Configure(_) => return Ok(None),
        };
        let (key, value) = match data.as_deref().and_then(kv::decode) {
            Some((k, v)) => (k.to_owned(), Some(v.to_vec())),
            None => (record_id.to_string(), data),
        };
        Ok(Some(Self {
            op,
            key,
            value: if op == "delete" { None } else { value },
            cid: change.cid.to_string(),
            timestamp_ms: stored.message.timestamp().wall_ms,
        }))
    }

    fn line(&self) -> String {
        match &self.value {
            Some(v) => format!("{:<6} {} {}", self.op, self.key, String::from_utf8_lossy(v)),
            None => format!("{:<6} {}", self.op, self.key),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "op": self.op,
            "key": self.key,
            "value": self.value.as_deref().map(String::from_utf8_lossy),
            "cid": self.cid,
            "timestamp_ms": self.timestamp_ms,
        })
    }
}

/// `weft watch`.
pub(crate) async fn run(args: WatchArgs) -> anyhow::Result<Exit> {
    let dir = paths::replica_dir(args.replica.store.clone())?;
    let replica = kv::open_replica(&dir, true)?;
    // Subscribe to the change feed before anything can change.
    let mut changes = replica.subscribe();
    let s = Arc::new(Session::over(
        replica,
        args.replica.tenant.clone(),
        &args.node,
    )?);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut follower = tokio::spawn(follow(s.clone(), tx));
    let mut printed = 0u64;
    if args.count == Some(0) {
        return Ok(Exit::Ok);
    }
    let mut announced = false;
    loop {
        tokio::select! {
            done = &mut follower => {
                return done.context("the follower task failed")?;
            }
            event = rx.recv() => match event {
                Some(FollowEvent::Live) if !announced => {
                    announced = true;
                    eprintln!(
                        "watching tenant {} at {} (Ctrl-C to stop)",
                        s.tenant, s.endpoint
                    );
                }
                Some(FollowEvent::Reconnecting(why)) => {
                    eprintln!("weft: connection lost ({why}); reconnecting");
                }
                _ => {}
            },
            change = changes.recv() => {
                let change = match change {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("weft: {n} changes were applied too fast to print");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => continue,
                };
                if let Some(p) = Printed::of(&s, &change)? {
                    if args.json {
                        out::json(&p.to_json())?;
                    } else {
                        out::line(p.line())?;
                    }
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        follower.abort();
                        return Ok(Exit::Ok);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => {
                follower.abort();
                return Ok(Exit::Ok);
            }
        }
    }
}
