//! `weft sync`: one pass of the engine over the tenant's link (pull, push, verify),
//! with progress bars on a terminal and a summary.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sync_engine::sync::{LinkReport, SyncConfig};
use sync_ledger::DeadLetterFilter;
use sync_types::{Direction, LinkKey, SyncEvent};
use tokio::sync::broadcast;

use crate::cli::SyncArgs;
use crate::cmd::remote::{self, Session};
use crate::exit::{Exit, coded};
use crate::out;

/// What a sync did, for the summary and `--json`.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) endpoint: String,
    /// The node of the endpoint that answered (it may name several).
    pub(crate) talks_to: Option<String>,
    pub(crate) pulled_messages: u64,
    /// Bytes of messages and inline data.
    pub(crate) pulled_bytes: u64,
    pub(crate) pulled_blob_bytes: u64,
    pub(crate) pushed_messages: u64,
    pub(crate) pushed_bytes: u64,
    pub(crate) pushed_blob_bytes: u64,
    pub(crate) converged: Option<bool>,
    pub(crate) dead_letters: u64,
    pub(crate) elapsed: Duration,
}

impl Summary {
    fn of(s: &Session, r: &LinkReport, elapsed: Duration) -> anyhow::Result<Self> {
        let dead_letters = s.replica.ledger().dead_letters().count(&DeadLetterFilter {
            tenant: Some(s.tenant.clone()),
            endpoint: Some(s.endpoint.clone()),
            ..DeadLetterFilter::default()
        })?;
        Ok(Self {
            endpoint: s.endpoint.to_string(),
            talks_to: s
                .replica
                .ledger()
                .links()
                .reached(&s.link)?
                .map(|r| r.node.to_string()),
            pulled_messages: r.pulled.messages,
            pulled_bytes: r.pulled.bytes,
            pulled_blob_bytes: r.pulled.blob_bytes,
            pushed_messages: r.pushed.messages,
            pushed_bytes: r.pushed.bytes,
            pushed_blob_bytes: r.pushed.blob_bytes,
            converged: r.converged(),
            dead_letters,
            elapsed,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.endpoint,
            "talks_to": self.talks_to,
            "pulled": traffic_json(self.pulled_messages, self.pulled_bytes, self.pulled_blob_bytes),
            "pushed": traffic_json(self.pushed_messages, self.pushed_bytes, self.pushed_blob_bytes),
            "converged": self.converged,
            "dead_letters": self.dead_letters,
            "elapsed_ms": u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn lines(&self) -> Vec<String> {
        let converged = match self.converged {
            Some(true) => "converged (roots equal)",
            Some(false) => "NOT converged (roots differ)",
            None => "roots not compared",
        };
        // With several nodes in the endpoint, name the one that answered.
        let with = match &self.talks_to {
            Some(node) if *node != self.endpoint => format!("{node} (of {})", self.endpoint),
            _ => self.endpoint.clone(),
        };
        vec![
            format!(
                "synced with {with} in {} ms: {converged}",
                self.elapsed.as_millis()
            ),
            format!(
                "  pulled {}",
                moved_human(
                    self.pulled_messages,
                    self.pulled_bytes,
                    self.pulled_blob_bytes
                )
            ),
            format!(
                "  pushed {}",
                moved_human(
                    self.pushed_messages,
                    self.pushed_bytes,
                    self.pushed_blob_bytes
                )
            ),
        ]
    }
}

/// A direction's traffic for `--json`: `bytes` counts everything that moved, blobs
/// included; `message_bytes` and `blob_bytes` split it.
fn traffic_json(messages: u64, message_bytes: u64, blob_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "messages": messages,
        "bytes": message_bytes + blob_bytes,
        "message_bytes": message_bytes,
        "blob_bytes": blob_bytes,
    })
}

/// "3 messages (1.1 KiB)", and the blob bytes when blobs moved:
/// "3 messages (200.0 MiB: 1.1 KiB of messages, 200.0 MiB of blobs)".
fn moved_human(messages: u64, message_bytes: u64, blob_bytes: u64) -> String {
    if blob_bytes == 0 {
        return format!("{messages} messages ({})", out::bytes_human(message_bytes));
    }
    format!(
        "{messages} messages ({}: {} of messages, {} of blobs)",
        out::bytes_human(message_bytes + blob_bytes),
        out::bytes_human(message_bytes),
        out::bytes_human(blob_bytes)
    )
}

/// Runs the session's link once and summarises it. An error stops the command unless
/// part of the link's work was done first, in which case the summary is still returned
/// with the error.
pub(crate) async fn sync_once(
    s: &Session,
) -> anyhow::Result<(Summary, Option<sync_engine::Error>)> {
    let started = Instant::now();
    let mut report = s.engine.sync_link(&s.link).await;
    remote::save_reached(s);
    let summary = Summary::of(s, &report, started.elapsed())?;
    Ok((summary, report.error.take()))
}

/// `weft sync`.
pub(crate) async fn run(args: SyncArgs) -> anyhow::Result<Exit> {
    // From here on a SIGINT or SIGTERM is noticed (at the latest once the sync runs)
    // instead of killing the process without a word.
    let mut signals = crate::signals::ShutdownSignals::new()?;
    let config = SyncConfig {
        blob_fetch: !args.no_blobs,
        ..SyncConfig::default()
    };
    let s = Session::open(&args.replica, &args.node, config).await?;
    let bars = (!args.json && std::io::stderr().is_terminal())
        .then(|| Bars::start(s.replica.events(), s.link.clone()));
    let moved = Moved::track(s.replica.events(), s.link.clone());
    let (summary, error) = tokio::select! {
        done = sync_once(&s) => done?,
        signal = signals.recv() => {
            let signal = signal?;
            if let Some(bars) = bars {
                bars.finish().await;
            }
            let (pulled, pushed) = moved.totals();
            eprintln!(
                "weft: interrupted ({signal}) during the sync with {}: pulled {} messages ({}), pushed {} messages ({}); what arrived is stored, and `weft sync` continues from there",
                s.endpoint,
                pulled.messages,
                out::bytes_human(pulled.bytes),
                pushed.messages,
                out::bytes_human(pushed.bytes),
            );
            return Ok(Exit::Interrupted);
        }
    };
    if let Some(bars) = bars {
        bars.finish().await;
    }
    if let Some(e) = error {
        let err = anyhow::Error::new(e).context(format!("sync with {} failed", s.endpoint));
        return Err(remote::explain(err, &s.endpoint));
    }
    if args.json {
        out::json(&summary.to_json())?;
    } else {
        for l in summary.lines() {
            out::line(l)?;
        }
    }
    if summary.dead_letters > 0 {
        return Err(coded(
            Exit::Failure,
            format!(
                "{} messages could not be replicated with {}: see `weft dead-letters list`",
                summary.dead_letters, summary.endpoint
            ),
        ));
    }
    if summary.converged == Some(false) {
        return Err(coded(
            Exit::Failure,
            "the replica and the node still differ after the sync: run `weft sync` again, and see `weft status`",
        ));
    }
    Ok(Exit::Ok)
}

/// Messages and bytes moved so far each way, from the engine's `SyncProgress` events,
/// for what an interrupted sync says it did.
struct Moved {
    totals: std::sync::Arc<std::sync::Mutex<[Progress; 2]>>,
    task: tokio::task::JoinHandle<()>,
}

impl Moved {
    fn track(events: broadcast::Receiver<SyncEvent>, link: LinkKey) -> Self {
        let totals = std::sync::Arc::new(std::sync::Mutex::new([Progress::default(); 2]));
        let t = totals.clone();
        let task = follow_progress(events, link, move |direction, p| {
            let i = usize::from(direction == Direction::Push);
            t.lock().unwrap_or_else(|e| e.into_inner())[i] = p;
        });
        Self { totals, task }
    }

    /// What was pulled and pushed.
    fn totals(&self) -> (Progress, Progress) {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        (t[0], t[1])
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction of a sync as its last `SyncProgress` event told it: what moved (bytes
/// with blobs) and the totals as far as known.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Progress {
    messages: u64,
    bytes: u64,
    messages_total: Option<u64>,
    bytes_total: Option<u64>,
}

/// Follows the engine's `SyncProgress` events of `link` until the engine goes, calling
/// `on` with the direction and its progress. A one-shot sync of a link is one operation
/// per direction, so its counts only grow.
fn follow_progress(
    mut events: broadcast::Receiver<SyncEvent>,
    link: LinkKey,
    mut on: impl FnMut(Direction, Progress) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(SyncEvent::SyncProgress {
                    link: l,
                    direction,
                    messages,
                    bytes,
                    messages_total,
                    bytes_total,
                }) if l == link => {
                    on(
                        direction,
                        Progress {
                            messages,
                            bytes,
                            messages_total,
                            bytes_total,
                        },
                    );
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Progress bars each way, fed by the engine's `SyncProgress` events: bytes (blobs
/// included) against the total as soon as it is known, with the rate and the time
/// left, and the messages beside them.
struct Bars {
    task: tokio::task::JoinHandle<()>,
    pull: ProgressBar,
    push: ProgressBar,
}

/// A bar's look while its total is unknown (a node before totals).
const SPINNER_TEMPLATE: &str =
    "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}), {msg} messages, {elapsed}";
/// A bar's look with a total.
const BAR_TEMPLATE: &str =
    "{bar:30} {prefix} {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left), {msg} messages";

impl Bars {
    fn start(events: broadcast::Receiver<SyncEvent>, link: LinkKey) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bar = |prefix: &'static str| {
            let bar = multi.add(ProgressBar::no_length());
            bar.set_style(
                ProgressStyle::with_template(SPINNER_TEMPLATE).expect("a valid template"),
            );
            bar.set_prefix(prefix);
            bar.set_message("0");
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        };
        let (pull, push) = (bar("pull"), bar("push"));
        let (pull2, push2) = (pull.clone(), push.clone());
        let task = follow_progress(events, link, move |direction, p| {
            let bar = match direction {
                Direction::Pull => &pull2,
                Direction::Push => &push2,
            };
            if let Some(total) = p.bytes_total {
                if bar.length().is_none() {
                    bar.set_style(
                        ProgressStyle::with_template(BAR_TEMPLATE).expect("a valid template"),
                    );
                }
                bar.set_length(total);
            }
            bar.set_position(p.bytes);
            bar.set_message(match p.messages_total {
                Some(total) => format!("{}/{total}", p.messages),
                None => p.messages.to_string(),
            });
        });
        Self { task, pull, push }
    }

    /// Clears the bars: the summary that follows says the same, and a cleared bar never
    /// shares a line with it.
    async fn finish(self) {
        // Let events already sent reach the bars before they go.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.task.abort();
        self.pull.finish_and_clear();
        self.push.finish_and_clear();
    }
}
