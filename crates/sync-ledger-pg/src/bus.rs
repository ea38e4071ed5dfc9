//! [`PgChangeBus`]: the [`ChangeBus`] of processes sharing a PostgreSQL ledger, over
//! `LISTEN`/`NOTIFY`.
//!
//! The announcements go out with the commits themselves: a [`PgStore`](crate::PgStore)
//! transaction that appends to a tenant's log calls `pg_notify` on the schema's channel
//! just before its `COMMIT`, in the same round trip ([`WriteTxn::announce`]). PostgreSQL
//! delivers it to every listener when the commit becomes visible and drops it when the
//! transaction does not commit, so a rolled-back write wakes nobody, and no thread,
//! connection or round trip of its own stands between a commit and the other nodes.
//! [`ChangeBus::publish`] has nothing left to do here.
//!
//! The bus itself is the **listener**: a thread and a connection of its own (outside the
//! store's pool) holding `LISTEN` on the channel. It takes every notification that has
//! arrived at once, keeps the highest head per tenant (a burst of commits of one tenant
//! wakes its readers once), and hands them to the sinks. After every (re)connect it
//! delivers [`BusNews::Lost`]: notifications sent while it was away are gone, so
//! readers look at the log again.
//!
//! A notification is a hint: PostgreSQL delivers `NOTIFY` only to sessions listening at
//! the moment of the commit and drops nothing it accepted while they stay connected. A
//! lost wake-up costs latency, never a write: readers still re-read the log on their
//! own schedule. The listener reconnects after a failure (a database restart) with a
//! capped back-off.
//!
//! [`WriteTxn::announce`]: sync_ledger::store::WriteTxn::announce

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator as _;
use sync_ledger::{BusNews, BusSink, ChangeBus, Error, Result};
use sync_types::TenantId;

/// Most notifications the listener takes in one go before it wakes the readers (it
/// keeps one head per tenant among them).
const BUS_DRAIN_NOTIFICATIONS_MAX: usize = 4096;
/// How often the listener looks at the stop flag and checks its connection.
const BUS_POLL: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts.
const BUS_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle listener checks that its connection is alive.
const BUS_KEEPALIVE: Duration = Duration::from_secs(2);

/// Counters of a bus, for metrics. (What a node announced is
/// [`PgStore::announced`](crate::PgStore::announced): the store sends it.)
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct BusCounters {
    /// Notifications heard (including this process's own).
    pub heard: u64,
    /// Successful connects of the listener after the first.
    pub reconnects: u64,
    /// Whether the listener is connected now.
    pub listening: bool,
}

/// Log-head announcements between the processes of one PostgreSQL ledger (one
/// schema): see the module documentation. Dropping it stops its thread.
pub struct PgChangeBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    channel: String,
    stop: AtomicBool,
    sinks: RwLock<Vec<BusSink>>,
    heard: AtomicU64,
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
    /// schemas of one database never hear each other. Returns once the thread runs; it
    /// connects on its own and keeps trying while the database is away.
    pub fn start(url: &str, schema: &str) -> Result<PgChangeBus> {
        let config: postgres::Config = url.parse().map_err(Error::backend)?;
        let inner = Arc::new(Inner {
            config,
            channel: channel(schema),
            stop: AtomicBool::new(false),
            sinks: RwLock::new(Vec::new()),
            heard: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        });
        let listener = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("weft-bus-listen".to_owned())
            .spawn(move || listen_loop(listener))
            .map_err(Error::backend)?;
        Ok(PgChangeBus { inner })
    }

    /// The bus's counters.
    pub fn counters(&self) -> BusCounters {
        let i = &self.inner;
        BusCounters {
            heard: i.heard.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
            listening: i.listening.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PgChangeBus {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl ChangeBus for PgChangeBus {
    /// Nothing to do: the [`PgStore`](crate::PgStore) announced the commit within it.
    fn publish(&self, _tenant: &TenantId, _head: u64) {}

    fn subscribe(&self, sink: BusSink) {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }
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

/// The `NOTIFY` channel of the ledger in `schema` (a name of `[a-z0-9_]`, checked when
/// the store opens).
pub(crate) fn channel(schema: &str) -> String {
    format!("weft_changes_{schema}")
}

/// The payload of one announcement: `head:tenant`.
fn payload(tenant: &TenantId, head: u64) -> String {
    format!("{head}:{}", tenant.as_str())
}

/// The statement announcing, on `channel`, that `tenant`'s log reached `head`: sent
/// with the simple protocol just before a `COMMIT`, so its text is quoted here (a
/// tenant id may hold any visible ASCII character, quotes and backslashes included).
pub(crate) fn notify_sql(channel: &str, tenant: &TenantId, head: u64) -> String {
    format!(
        "SELECT pg_notify({}, {})",
        quote(channel),
        quote(&payload(tenant, head))
    )
}

/// `text` as a string constant that means the same whatever
/// `standard_conforming_strings` says: an escape string, with `\` and `'` doubled.
fn quote(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn parse_payload(text: &str) -> Option<BusNews> {
    let (head, tenant) = text.split_once(':')?;
    Some(BusNews::Head {
        tenant: TenantId::new(tenant).ok()?,
        head: head.parse().ok()?,
    })
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
                    // Take what else has arrived (without waiting), one head per tenant.
                    let mut heads: HashMap<TenantId, u64> = HashMap::new();
                    let mut take = |payload: &str| {
                        inner.heard.fetch_add(1, Ordering::Relaxed);
                        if let Some(BusNews::Head { tenant, head }) = parse_payload(payload) {
                            let h = heads.entry(tenant).or_insert(head);
                            *h = (*h).max(head);
                        }
                    };
                    take(note.payload());
                    let mut notifications = client.notifications();
                    let mut more = notifications.iter();
                    let mut failed = false;
                    for _ in 1..BUS_DRAIN_NOTIFICATIONS_MAX {
                        match more.next() {
                            Ok(Some(note)) => take(note.payload()),
                            Ok(None) => break,
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    for (tenant, head) in heads {
                        inner.deliver(BusNews::Head { tenant, head });
                    }
                    if failed {
                        break;
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

    #[test]
    fn quoted_text_keeps_quotes_and_backslashes() {
        assert_eq!(quote("a'b"), "E'a''b'");
        assert_eq!(quote(r"a\'"), r"E'a\\'''");
        let t = TenantId::new(r"x'\").unwrap();
        assert_eq!(
            notify_sql("weft_changes_s", &t, 3),
            r"SELECT pg_notify(E'weft_changes_s', E'3:x''\\')"
        );
    }
}
