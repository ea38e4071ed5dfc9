//! [`PgChangeBus`]: the [`ChangeBus`] of processes sharing a PostgreSQL ledger, over
//! `LISTEN`/`NOTIFY`.
//!
//! Two threads and two connections of its own (outside the store's pool):
//!
//! - the **publisher** takes the heads announced by [`ChangeBus::publish`] (called after
//!   a commit), keeps only the highest per tenant while a `NOTIFY` is in flight, and
//!   sends every waiting tenant in one statement (`pg_notify` over an array), so a burst
//!   of commits of one tenant costs one notification;
//! - the **listener** holds `LISTEN` on the schema's channel and hands each
//!   notification to the sinks. After every (re)connect it delivers [`BusNews::Lost`]:
//!   notifications sent while it was away are gone, so readers look at the log again.
//!
//! A notification is a hint: PostgreSQL delivers `NOTIFY` only to sessions listening
//! at the moment of the commit, drops nothing it accepted while they stay connected,
//! and sends nothing for a transaction that rolled back. A node crash between a commit
//! and its `NOTIFY` loses the wake-up, never the write: readers still re-read the log
//! on their own schedule. Either thread reconnects after a failure (a database restart)
//! with a capped back-off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;
use postgres::{Client, NoTls};
use sync_ledger::{BusNews, BusSink, ChangeBus, Error, Result};
use sync_types::TenantId;

/// Most tenants waiting for their announcement; beyond it new ones are dropped (a
/// reader then finds the change on its next periodic read).
pub const BUS_PENDING_TENANTS_MAX: usize = 65_536;
/// How often the threads look at the stop flag, and the listener checks its connection.
const BUS_POLL: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts.
const BUS_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle listener checks that its connection is alive.
const BUS_KEEPALIVE: Duration = Duration::from_secs(2);

/// Counters of a bus, for metrics.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BusCounters {
    /// Tenants' heads sent with `NOTIFY` (after coalescing).
    pub sent: u64,
    /// Notifications heard (including this process's own).
    pub heard: u64,
    /// Announcements dropped because [`BUS_PENDING_TENANTS_MAX`] tenants were waiting.
    pub dropped: u64,
    /// Successful connects of the listener after the first.
    pub reconnects: u64,
    /// Whether the listener is connected now.
    pub listening: bool,
}

/// Log-head announcements between the processes of one PostgreSQL ledger (one
/// schema): see the module documentation. Dropping it stops its threads.
pub struct PgChangeBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    channel: String,
    pending: Mutex<HashMap<TenantId, u64>>,
    wake: Condvar,
    stop: AtomicBool,
    sinks: RwLock<Vec<BusSink>>,
    sent: AtomicU64,
    heard: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    listening: AtomicBool,
}

impl std::fmt::Debug for PgChangeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeBus")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

impl PgChangeBus {
    /// Starts the bus of the ledger in `schema` of the database at `url` (the store's
    /// URL and schema): its channel is named after the schema, so ledgers in other
    /// schemas of one database never hear each other. Returns once the threads run;
    /// they connect on their own and keep trying while the database is away.
    pub fn start(url: &str, schema: &str) -> Result<PgChangeBus> {
        let config: postgres::Config = url.parse().map_err(Error::backend)?;
        let inner = Arc::new(Inner {
            config,
            channel: format!("weft_changes_{schema}"),
            pending: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            sinks: RwLock::new(Vec::new()),
            sent: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        });
        let spawn = |name: &str, f: fn(Arc<Inner>)| {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || f(inner))
                .map(drop)
                .map_err(Error::backend)
        };
        spawn("weft-bus-publish", publish_loop)?;
        spawn("weft-bus-listen", listen_loop)?;
        Ok(PgChangeBus { inner })
    }

    /// The bus's counters.
    pub fn counters(&self) -> BusCounters {
        let i = &self.inner;
        BusCounters {
            sent: i.sent.load(Ordering::Relaxed),
            heard: i.heard.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
            listening: i.listening.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PgChangeBus {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.wake.notify_all();
    }
}

impl ChangeBus for PgChangeBus {
    fn publish(&self, tenant: &TenantId, head: u64) {
        let mut pending = lock(&self.inner.pending);
        let full = pending.len() >= BUS_PENDING_TENANTS_MAX;
        match pending.get_mut(tenant) {
            Some(h) => *h = (*h).max(head),
            None if full => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => {
                pending.insert(tenant.clone(), head);
            }
        }
        drop(pending);
        self.inner.wake.notify_one();
    }

    fn subscribe(&self, sink: BusSink) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `backoff` (in steps, so a stop is noticed) and doubles it up to the cap.
    fn pause(&self, backoff: &mut Duration) {
        let until = std::time::Instant::now() + *backoff;
        while !self.stopped() && std::time::Instant::now() < until {
            std::thread::sleep(BUS_POLL.min(*backoff));
        }
        *backoff = (*backoff * 2).min(BUS_BACKOFF_MAX);
    }

    fn deliver(&self, news: BusNews) {
        let sinks: Vec<BusSink> = self.sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
        for sink in sinks {
            sink(news.clone());
        }
    }
}

/// The payload of one announcement: `head:tenant`.
fn payload(tenant: &TenantId, head: u64) -> String {
    format!("{head}:{}", tenant.as_str())
}

fn parse_payload(text: &str) -> Option<BusNews> {
    let (head, tenant) = text.split_once(':')?;
    Some(BusNews::Head {
        tenant: TenantId::new(tenant).ok()?,
        head: head.parse().ok()?,
    })
}

fn publish_loop(inner: Arc<Inner>) {
    let mut client: Option<Client> = None;
    let mut backoff = Duration::from_millis(50);
    while !inner.stopped() {
        let batch: HashMap<TenantId, u64> = {
            let mut pending = lock(&inner.pending);
            if pending.is_empty() {
                pending = inner
                    .wake
                    .wait_timeout(pending, BUS_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::take(&mut *pending)
        };
        if batch.is_empty() {
            continue;
        }
        let payloads: Vec<String> = batch.iter().map(|(t, h)| payload(t, *h)).collect();
        let sent = match client.as_mut() {
            Some(c) => c
                .execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&inner.channel, &payloads],
                )
                .is_ok(),
            None => false,
        };
        if sent {
            inner.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            backoff = Duration::from_millis(50);
            continue;
        }
        // Not sent: put the heads back (a newer one may have come meanwhile), then
        // connect again, pausing only after a failed connect.
        {
            let mut pending = lock(&inner.pending);
            for (tenant, head) in batch {
                let h = pending.entry(tenant).or_insert(head);
                *h = (*h).max(head);
            }
        }
        client = None;
        match inner.config.connect(NoTls) {
            Ok(c) => client = Some(c),
            Err(_) => inner.pause(&mut backoff),
        }
    }
}

fn listen_loop(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_once = false;
    while !inner.stopped() {
        let mut client = match inner.config.connect(NoTls) {
            Ok(c) => c,
            Err(_) => {
                inner.pause(&mut backoff);
                continue;
            }
        };
        let channel = inner.channel.replace('"', "");
        if client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .is_err()
        {
            inner.pause(&mut backoff);
            continue;
        }
        backoff = Duration::from_millis(50);
        if connected_once {
            inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        connected_once = true;
        inner.listening.store(true, Ordering::Relaxed);
        // Whatever was sent while nobody listened is gone: readers look again.
        inner.deliver(BusNews::Lost);
        let mut idle = Duration::ZERO;
        while !inner.stopped() {
            let next = client.notifications().timeout_iter(BUS_POLL).next();
            match next {
                Ok(Some(note)) => {
                    idle = Duration::ZERO;
                    inner.heard.fetch_add(1, Ordering::Relaxed);
                    if let Some(news) = parse_payload(note.payload()) {
                        inner.deliver(news);
                    }
                }
                Err(_) => break,
                Ok(None) => {
                    idle += BUS_POLL;
                    if client.is_closed() {
                        break;
                    }
                    if idle >= BUS_KEEPALIVE {
                        idle = Duration::ZERO;
                        if client.batch_execute("").is_err() {
                            break;
                        }
                    }
                }
            }
        }
        inner.listening.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_ignored() {
        let t = TenantId::new("acme:eu").unwrap();
        assert_eq!(
            parse_payload(&payload(&t, 42)),
            Some(BusNews::Head {
                tenant: t,
                head: 42
            })
        );
        assert_eq!(parse_payload("x:acme"), None);
        assert_eq!(parse_payload("12"), None);
        assert_eq!(parse_payload("12:"), None);
    }
}
