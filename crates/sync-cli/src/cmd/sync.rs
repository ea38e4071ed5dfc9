//! `weft sync`: one pass of the engine over the tenant's link (pull, push, verify),
//! with progress bars on a terminal and a summary.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sync_engine::sync::{LinkReport, SyncConfig};
use sync_ledger::DeadLetterFilter;
use sync_types::{Direction, SyncEvent};
use tokio::sync::broadcast;

use crate::cli::SyncArgs;
use crate::cmd::remote::{self, Session};
use crate::exit::{Exit, coded};
use crate::out;

/// What a sync did, for the summary and `--json`.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) endpoint: String,
    pub(crate) pulled_messages: u64,
    pub(crate) pulled_bytes: u64,
    pub(crate) pushed_messages: u64,
    pub(crate) pushed_bytes: u64,
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
            pulled_messages: r.pulled.messages,
            pulled_bytes: r.pulled.bytes,
            pushed_messages: r.pushed.messages,
            pushed_bytes: r.pushed.bytes,
            converged: r.converged(),
            dead_letters,
            elapsed,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.endpoint,
            "pulled": { "messages": self.pulled_messages, "bytes": self.pulled_bytes },
            "pushed": { "messages": self.pushed_messages, "bytes": self.pushed_bytes },
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
        vec![
            format!(
                "synced with {} in {} ms: {converged}",
                self.endpoint,
                self.elapsed.as_millis()
            ),
            format!(
                "  pulled {} messages ({})",
                self.pulled_messages,
                out::bytes_human(self.pulled_bytes)
            ),
            format!(
                "  pushed {} messages ({})",
                self.pushed_messages,
                out::bytes_human(self.pushed_bytes)
            ),
        ]
    }
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
    let bars = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let pending = s.engine.pending_outbound(&s.link).unwrap_or(0);
        Bars::start(s.replica.events(), pending)
    });
    let moved = Moved::track(s.replica.events());
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
                pulled.0,
                out::bytes_human(pulled.1),
                pushed.0,
                out::bytes_human(pushed.1),
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
    totals: std::sync::Arc<std::sync::Mutex<[(u64, u64); 2]>>,
    task: tokio::task::JoinHandle<()>,
}

impl Moved {
    fn track(events: broadcast::Receiver<SyncEvent>) -> Self {
        let totals = std::sync::Arc::new(std::sync::Mutex::new([(0, 0); 2]));
        let t = totals.clone();
        let task = follow_progress(events, move |direction, moved| {
            let i = usize::from(direction == Direction::Push);
            t.lock().unwrap_or_else(|e| e.into_inner())[i] = moved;
        });
        Self { totals, task }
    }

    /// (messages, bytes) pulled and pushed.
    fn totals(&self) -> ((u64, u64), (u64, u64)) {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        (t[0], t[1])
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Progress bars for messages and bytes each way, fed by the engine's `SyncProgress`
/// events. Each operation (catch-up, push, reconcile) reports running totals from
/// zero, so a value lower than the previous one starts a new operation.
struct Bars {
    task: tokio::task::JoinHandle<()>,
    pull: ProgressBar,
    push: ProgressBar,
}

/// Follows the engine's `SyncProgress` events until the engine goes, calling `on` with
/// the direction and the (messages, bytes) moved that way so far over every operation.
fn follow_progress(
    mut events: broadcast::Receiver<SyncEvent>,
    mut on: impl FnMut(Direction, (u64, u64)) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running = [Running::default(); 2];
        loop {
            match events.recv().await {
                Ok(SyncEvent::SyncProgress {
                    direction,
                    messages,
                    bytes,
                    ..
                }) => {
                    let i = usize::from(direction == Direction::Push);
                    on(direction, running[i].update(messages, bytes));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[derive(Default, Clone, Copy)]
struct Running {
    base_messages: u64,
    base_bytes: u64,
    last_messages: u64,
    last_bytes: u64,
}

impl Running {
    fn update(&mut self, messages: u64, bytes: u64) -> (u64, u64) {
        if messages < self.last_messages || bytes < self.last_bytes {
            self.base_messages += self.last_messages;
            self.base_bytes += self.last_bytes;
        }
        self.last_messages = messages;
        self.last_bytes = bytes;
        self.total()
    }

    fn total(&self) -> (u64, u64) {
        (
            self.base_messages + self.last_messages,
            self.base_bytes + self.last_bytes,
        )
    }
}

impl Bars {
    fn start(events: broadcast::Receiver<SyncEvent>, pending_push: u64) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let pull = multi.add(ProgressBar::new_spinner());
        pull.set_style(
            ProgressStyle::with_template("{spinner} pull {pos} messages, {msg} {elapsed}")
                .expect("a valid template"),
        );
        pull.set_message("0 B");
        let push = multi.add(ProgressBar::new(pending_push));
        push.set_style(
            ProgressStyle::with_template("{bar:30} push {pos}/{len} messages, {msg} {elapsed}")
                .expect("a valid template"),
        );
        push.set_message("0 B");
        pull.enable_steady_tick(Duration::from_millis(100));
        let (pull2, push2) = (pull.clone(), push.clone());
        let task = follow_progress(events, move |direction, (m, b)| {
            let bar = match direction {
                Direction::Pull => &pull2,
                Direction::Push => &push2,
            };
            if bar.length().is_some_and(|l| m > l) {
                bar.set_length(m);
            }
            bar.set_position(m);
            bar.set_message(out::bytes_human(b));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_totals_sum_operations() {
        let mut r = Running::default();
        assert_eq!(r.update(5, 50), (5, 50));
        assert_eq!(r.update(8, 80), (8, 80));
        // A new operation starts from zero.
        assert_eq!(r.update(2, 20), (10, 100));
        assert_eq!(r.update(3, 30), (11, 110));
    }
}
