//! `weft watch`: replicate live and print changes as they arrive.
//!
//! After one sync with the engine (so an unreachable node or a refused token is
//! reported at once, with its exit code), the tenant's link runs in the engine's live
//! driver ([`sync_engine::live::LiveDriver`] over [`EngineOps`]): it subscribes from the
//! link's pull checkpoint, applies each event as the node announces it, pushes local
//! writes at once, reconnects after a drop (a node restart, a network cut) and repairs
//! by tree diff after a gap. The subscription is only an accelerator: the checkpoints are
//! what guarantee nothing is missed.
//!
//! While it runs, `put`, `get`, `list`, `delete`, `status` and `links` on the same store go
//! through the watch's control socket (`control.rs`): the watch runs them over the
//! replica it holds, and pushes their writes live.
//!
//! Printing is separate: the replica's change feed reports every message that arrived
//! from elsewhere, whichever path applied it, and the engine's events say when the link
//! is live, offline or repairing.

use std::sync::Arc;
use std::time::Duration;

use sync_engine::live::{EngineOps, LiveDriver};
use sync_engine::machine::LinkConfig;
use sync_engine::{Change, Origin};
use sync_types::{Cid, Connectivity, LinkStatus, Message, RecordId, SyncEvent};
use tokio::sync::broadcast;

use crate::cli::WatchArgs;
use crate::cmd::remote::{self, Session};
use crate::cmd::sync::sync_once;
use crate::exit::{Exit, coded};
use crate::{kv, out, paths};

/// Waits before reconnecting a dropped subscription, in ms (the last one repeats).
pub(crate) const RECONNECT_BACKOFF_MS: [u64; 3] = [250, 1_000, 2_000];
/// Longest wait for the driver to persist its links on exit.
const STOP_TIME_MAX: Duration = Duration::from_secs(5);

/// Starts the live driver over the session's links.
pub(crate) fn start_live(s: &Session) -> anyhow::Result<LiveDriver> {
    let links = s
        .engine
        .links()?
        .into_iter()
        .filter(|l| l.key == s.link)
        .collect();
    let config = LinkConfig {
        reconnect_backoff_ms: RECONNECT_BACKOFF_MS.to_vec(),
        ..LinkConfig::default()
    };
    Ok(LiveDriver::start(
        s.replica.clone(),
        Arc::new(EngineOps::new(s.engine.clone())),
        links,
        config,
    ))
}

/// A change as `watch` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Printed {
    pub(crate) op: &'static str,
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) cid: String,
    pub(crate) timestamp_ms: u64,
    /// The full version's HLC (`wall_ms.counter@node`).
    pub(crate) hlc: String,
    /// A put whose value is a blob that has not arrived: printed once it has.
    pub(crate) staged: Option<(RecordId, Cid)>,
}

/// How often `watch` looks whether the blobs of staged puts arrived.
const STAGED_POLL_MS: u64 = 200;
/// Most staged puts `watch` waits for at once; beyond, they print without their value.
const STAGED_LEN_MAX: usize = 1024;
/// How often `weft watch` records the node its link talks to (it changes on failover).
const REACHED_SAVE_MS: u64 = 1_000;

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
            Message::Write(_) => ("put", stored.data.clone()),
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
        let mut staged = None;
        let (key, value) = match data.as_deref().and_then(kv::decode) {
            Some((k, v)) => (k.to_owned(), Some(v.to_vec())),
            // A payload in the blob store: the record's entry knows its key.
            None => match s.replica.get(&s.tenant, &record_id)? {
                Some(r) if r.cid == change.cid => {
                    if r.residency == sync_engine::Residency::Staged {
                        staged = Some((record_id, change.cid));
                    }
                    let e = kv::Entry::of(&s.replica, r)?;
                    let v = e.load_value(&s.replica)?;
                    (e.key, v)
                }
                _ => (record_id.to_string(), data),
            },
        };
        Ok(Some(Self {
            op,
            key,
            value: if op == "delete" { None } else { value },
            cid: change.cid.to_string(),
            timestamp_ms: stored.message.timestamp().wall_ms,
            hlc: stored.message.timestamp().to_string(),
            staged,
        }))
    }

    /// A staged put again, once its blob arrived: `None` while it has not, `Some(None)`
    /// when the version was superseded meanwhile (nothing to print).
    fn arrived(&self, s: &Session) -> anyhow::Result<Option<Option<Self>>> {
        let Some((record_id, cid)) = self.staged else {
            return Ok(Some(None));
        };
        let Some(r) = s.replica.get(&s.tenant, &record_id)? else {
            return Ok(Some(None));
        };
        if r.cid != cid {
            return Ok(Some(None));
        }
        if r.residency != sync_engine::Residency::Resident {
            return Ok(None);
        }
        let e = kv::Entry::of(&s.replica, r)?;
        let value = e.load_value(&s.replica)?;
        Ok(Some(Some(Self {
            key: e.key,
            value,
            staged: None,
            ..self.clone()
        })))
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
            "hlc": self.hlc,
            "timestamp_ms": self.timestamp_ms,
        })
    }
}

/// `weft watch`.
pub(crate) async fn run(args: WatchArgs) -> anyhow::Result<Exit> {
    let mut signals = crate::signals::ShutdownSignals::new()?;
    let dir = paths::replica_dir(args.replica.store.clone())?;
    let replica = kv::open_replica(&dir, true)?;
    // Subscribe to the change and event feeds before anything can change.
    let mut changes = replica.subscribe();
    let mut events = replica.events();
    // Other commands on this store go through the watch from here on.
    let _control = match crate::control::serve(&dir, replica.clone()) {
        Ok(server) => Some(server),
        Err(e) => {
            eprintln!(
                "weft: warning: no control socket ({e:#}): other commands cannot use {} while this watch runs",
                dir.display()
            );
            None
        }
    };
    let s = Session::over(replica, args.replica.tenant.clone(), &args.node).await?;
    let (_, error) = sync_once(&s).await?;
    if let Some(e) = error {
        let err = anyhow::Error::new(e).context(format!("sync with {} failed", s.endpoint));
        return Err(remote::explain(err, &s.endpoint));
    }
    if args.count == Some(0) {
        return Ok(Exit::Ok);
    }
    let driver = start_live(&s)?;
    let result = watch(&s, &args, &mut changes, &mut events, &mut signals).await;
    driver.stop(STOP_TIME_MAX).await;
    result
}

async fn watch(
    s: &Session,
    args: &WatchArgs,
    changes: &mut broadcast::Receiver<Change>,
    events: &mut broadcast::Receiver<SyncEvent>,
    signals: &mut crate::signals::ShutdownSignals,
) -> anyhow::Result<Exit> {
    let mut printed = 0u64;
    let mut announced = false;
    let mut offline = false;
    // Puts whose blob is still on its way, printed when it arrives.
    let mut staged: Vec<Printed> = Vec::new();
    let mut poll = tokio::time::interval(Duration::from_millis(STAGED_POLL_MS));
    // The node the link talks to may change (failover): recorded for `weft status`.
    let mut reached = tokio::time::interval(Duration::from_millis(REACHED_SAVE_MS));
    loop {
        tokio::select! {
            _ = reached.tick() => remote::save_reached(s),
            _ = poll.tick(), if !staged.is_empty() => {
                let mut waiting = Vec::with_capacity(staged.len());
                for p in staged.drain(..) {
                    match p.arrived(s)? {
                        None => waiting.push(p),
                        Some(None) => {}
                        Some(Some(p)) => {
                            print(&p, args.json)?;
                            printed += 1;
                            if args.count.is_some_and(|n| printed >= n) {
                                return Ok(Exit::Ok);
                            }
                        }
                    }
                }
                staged = waiting;
            }
            event = events.recv() => match event {
                Ok(SyncEvent::LinkStatusChanged { link, to, .. }) if link == s.link => match to {
                    LinkStatus::Live if !announced => {
                        announced = true;
                        eprintln!("watching tenant {} at {} (Ctrl-C to stop)", s.tenant, s.endpoint);
                    }
                    LinkStatus::Repairing => eprintln!("weft: link needs repair; reconciling with {}", s.endpoint),
                    LinkStatus::DegradedPoll => eprintln!("weft: {} keeps failing; polling it", s.endpoint),
                    LinkStatus::TerminalIncomplete => {
                        return Err(coded(
                            Exit::Failure,
                            "the link cannot complete its scope (see `weft dead-letters list`)",
                        ));
                    }
                    _ => {}
                },
                Ok(SyncEvent::ConnectivityChanged { link, to, .. }) if link == s.link => match to {
                    Connectivity::Offline if !offline => {
                        offline = true;
                        eprintln!("weft: lost the connection to {}; reconnecting", s.endpoint);
                    }
                    Connectivity::Online if offline => {
                        offline = false;
                        eprintln!("weft: reconnected to {}", s.endpoint);
                    }
                    _ => {}
                },
                _ => {}
            },
            change = changes.recv() => {
                let change = match change {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("weft: {n} changes were applied too fast to print");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(Exit::Ok),
                };
                if let Some(p) = Printed::of(s, &change)? {
                    if p.staged.is_some() && staged.len() < STAGED_LEN_MAX {
                        staged.push(p);
                        continue;
                    }
                    print(&p, args.json)?;
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        return Ok(Exit::Ok);
                    }
                }
            }
            signal = signals.recv() => {
                signal?;
                return Ok(Exit::Ok);
            }
        }
    }
}

fn print(p: &Printed, json: bool) -> anyhow::Result<()> {
    if json {
        out::json(&p.to_json())?;
    } else {
        out::line(p.line())?;
    }
    Ok(())
}
