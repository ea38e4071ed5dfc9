//! A node's metrics, rendered in the Prometheus text exposition format at `GET /metrics`.
//!
//! Opt-in: a node counts and serves metrics only when its
//! [`ServerConfig::metrics`](crate::ServerConfig::metrics) holds a [`Metrics`]. The
//! registry is a handful of atomics and one small map, written by the server on every
//! request; rendering is hand-written text (no client library). What the transport does
//! not know (log positions, store sizes) comes from sources added with
//! [`Metrics::add_source`], which the node's owner registers.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `weft_requests_total` | counter | `kind`, `status` | requests served, by kind (`root`, `diff`, `log_page`, `read_messages`, `write_batch`, `blob_stat`, `health`, `blob_read`, `blob_write`, `subscribe`, `metrics`, `other`) and HTTP status |
//! | `weft_request_duration_seconds` | histogram | `kind` | time from the request's arrival to its reply head (a blob download's body streams after it) |
//! | `weft_apply_outcomes_total` | counter | `outcome` | outcome of every message in write batches (`applied`, `duplicate`, `superseded`, `deferred`, `incomplete`, `invalid`, `unauthorized`) |
//! | `weft_received_bytes_total` | counter | | HTTP request body bytes with a declared length (WebSocket traffic is not counted) |
//! | `weft_sent_bytes_total` | counter | | HTTP reply body bytes with a known length |
//! | `weft_subscriptions_active` | gauge | | open live subscriptions |
//! | `weft_connections_active` | gauge | | open HTTP connections |
//!
//! ```
//! use sync_transport::metrics::{Family, Metrics, Sample};
//!
//! let metrics = Metrics::new();
//! metrics.add_source(|| {
//!     vec![Family::gauge(
//!         "weft_log_position",
//!         "head of each tenant's log",
//!         vec![Sample::new(42.0).label("tenant", "alice")],
//!     )]
//! });
//! let text = metrics.render(0, 0);
//! assert!(text.contains("weft_log_position{tenant=\"alice\"} 42"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sync_types::ApplyOutcome;

use crate::proto::Request;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a request asked for, as the `kind` label.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum RequestKind {
    /// A tree root.
    Root,
    /// A diff round.
    Diff,
    /// A page of the log.
    LogPage,
    /// Messages by cid.
    ReadMessages,
    /// A batch of writes.
    WriteBatch,
    /// A blob's state.
    BlobStat,
    /// The node's health.
    Health,
    /// A blob download.
    BlobRead,
    /// A blob upload.
    BlobWrite,
    /// A WebSocket subscription.
    Subscribe,
    /// The metrics themselves.
    Metrics,
    /// Anything else (an unknown route, an undecodable request).
    Other,
}

const KINDS: usize = 12;

impl RequestKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Root => "root",
            RequestKind::Diff => "diff",
            RequestKind::LogPage => "log_page",
            RequestKind::ReadMessages => "read_messages",
            RequestKind::WriteBatch => "write_batch",
            RequestKind::BlobStat => "blob_stat",
            RequestKind::Health => "health",
            RequestKind::BlobRead => "blob_read",
            RequestKind::BlobWrite => "blob_write",
            RequestKind::Subscribe => "subscribe",
            RequestKind::Metrics => "metrics",
            RequestKind::Other => "other",
        }
    }

    /// The kind of a decoded request.
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Root(_) => RequestKind::Root,
            Request::Diff(_) => RequestKind::Diff,
            Request::LogPage(_) | Request::LogPageKnown(_) | Request::LogPageHead(_) => {
                RequestKind::LogPage
            }
            Request::ReadMessages(_) => RequestKind::ReadMessages,
            Request::WriteBatch(_) | Request::WriteBatchPlaced(_) => RequestKind::WriteBatch,
            Request::BlobStat(_) => RequestKind::BlobStat,
            Request::Health => RequestKind::Health,
            Request::BlobRead(_) => RequestKind::BlobRead,
            Request::BlobWrite(_) => RequestKind::BlobWrite,
        }
    }

    const ALL: [RequestKind; KINDS] = [
        RequestKind::Root,
        RequestKind::Diff,
        RequestKind::LogPage,
        RequestKind::ReadMessages,
        RequestKind::WriteBatch,
        RequestKind::BlobStat,
        RequestKind::Health,
        RequestKind::BlobRead,
        RequestKind::BlobWrite,
        RequestKind::Subscribe,
        RequestKind::Metrics,
        RequestKind::Other,
    ];
}

/// One latency histogram: a count per bucket (the last one is `+Inf`), the sum in
/// microseconds, and the count.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a family counts up or goes up and down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetricType {
    /// Only grows.
    Counter,
    /// Any value.
    Gauge,
}

/// One labelled value of a [`Family`].
#[derive(Clone, PartialEq, Debug)]
pub struct Sample {
    /// Label names and values.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample without labels.
    pub fn new(value: f64) -> Self {
        Self {
            labels: Vec::new(),
            value,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }
}

/// A metric family from a source: a name, its help, its type and its samples.
#[derive(Clone, PartialEq, Debug)]
pub struct Family {
    /// The metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Counter or gauge.
    pub kind: MetricType,
    /// The values.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A gauge family.
    pub fn gauge(name: impl Into<String>, help: impl Into<String>, samples: Vec<Sample>) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: MetricType::Gauge,
            samples,
        }
    }

    /// A counter family.
    pub fn counter(name: impl Into<String>, help: impl Into<String>, samples: Vec<Sample>) -> Self {
        Self {
            kind: MetricType::Counter,
            ..Self::gauge(name, help, samples)
        }
    }
}

type Source = Box<dyn Fn() -> Vec<Family> + Send + Sync>;

/// The registry of a node's metrics. Share it with `Arc`.
pub struct Metrics {
    requests: Mutex<BTreeMap<(RequestKind, u16), u64>>,
    latency: [Histogram; KINDS],
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    sources: Mutex<Vec<Source>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Default::default(),
            outcomes: Mutex::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            sources: Mutex::default(),
        }
    }

    /// Adds a source of families rendered after the built-in ones (called on every
    /// scrape; keep it cheap).
    pub fn add_source(&self, source: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        lock(&self.sources).push(Box::new(source));
    }

    /// Records a served request.
    pub fn record_request(
        &self,
        kind: RequestKind,
        status: u16,
        elapsed: Duration,
        bytes_in: Option<u64>,
        bytes_out: Option<u64>,
    ) {
        *lock(&self.requests).entry((kind, status)).or_default() += 1;
        self.latency[kind as usize].observe(elapsed);
        self.bytes_in
            .fetch_add(bytes_in.unwrap_or(0), Ordering::Relaxed);
        self.bytes_out
            .fetch_add(bytes_out.unwrap_or(0), Ordering::Relaxed);
    }

    /// Records the outcomes of a write batch.
    pub fn record_outcomes(&self, outcomes: &[ApplyOutcome]) {
        let mut map = lock(&self.outcomes);
        for o in outcomes {
            *map.entry(o.as_str()).or_default() += 1;
        }
    }

    /// Requests served so far of `kind` with `status`.
    pub fn requests(&self, kind: RequestKind, status: u16) -> u64 {
        lock(&self.requests)
            .get(&(kind, status))
            .copied()
            .unwrap_or(0)
    }

    /// The exposition text, with the node's open `connections` and `subscriptions`.
    pub fn render(&self, connections: u64, subscriptions: u64) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "weft_requests_total",
            "Requests served, by kind and HTTP status.",
            "counter",
        );
        for ((kind, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "weft_requests_total{{kind=\"{}\",status=\"{status}\"}} {n}",
                kind.as_str()
            );
        }
        header(
            &mut out,
            "weft_request_duration_seconds",
            "Time from a request's arrival to its reply head, by kind.",
            "histogram",
        );
        for kind in RequestKind::ALL {
            let h = &self.latency[kind as usize];
            let count = h.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let k = kind.as_str();
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weft_request_duration_seconds_bucket{{kind=\"{k}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[LATENCY_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_bucket{{kind=\"{k}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_sum{{kind=\"{k}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "weft_request_duration_seconds_count{{kind=\"{k}\"}} {cumulative}"
            );
        }
        header(
            &mut out,
            "weft_apply_outcomes_total",
            "Outcomes of messages received in write batches.",
            "counter",
        );
        for (outcome, n) in lock(&self.outcomes).iter() {
            let _ = writeln!(
                out,
                "weft_apply_outcomes_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        for (name, help, value) in [
            (
                "weft_received_bytes_total",
                "HTTP request body bytes received.",
                self.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "weft_sent_bytes_total",
                "HTTP reply body bytes sent.",
                self.bytes_out.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
        for (name, help, value) in [
            (
                "weft_subscriptions_active",
                "Open live subscriptions.",
                subscriptions,
            ),
            (
                "weft_connections_active",
                "Open HTTP connections.",
                connections,
            ),
        ] {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        let families: Vec<Family> = lock(&self.sources).iter().flat_map(|s| s()).collect();
        for family in families {
            let kind = match family.kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
            };
            header(&mut out, &family.name, &family.help, kind);
            for sample in family.samples {
                out.push_str(&family.name);
                if !sample.labels.is_empty() {
                    out.push('{');
                    for (i, (name, value)) in sample.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", sample.value);
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_sources() {
        let m = Metrics::new();
        m.record_request(
            RequestKind::WriteBatch,
            200,
            Duration::from_millis(3),
            Some(100),
            Some(40),
        );
        m.record_request(
            RequestKind::Root,
            401,
            Duration::from_secs(20),
            None,
            Some(10),
        );
        m.record_outcomes(&[
            ApplyOutcome::Applied,
            ApplyOutcome::Applied,
            ApplyOutcome::Duplicate,
        ]);
        m.add_source(|| {
            vec![Family::gauge(
                "weft_log_position",
                "head",
                vec![Sample::new(7.0).label("tenant", "a\"b")],
            )]
        });
        let text = m.render(2, 1);
        assert!(text.contains("weft_requests_total{kind=\"write_batch\",status=\"200\"} 1"));
        assert!(text.contains("weft_requests_total{kind=\"root\",status=\"401\"} 1"));
        assert!(text.contains(
            "weft_request_duration_seconds_bucket{kind=\"write_batch\",le=\"0.0025\"} 0"
        ));
        assert!(
            text.contains(
                "weft_request_duration_seconds_bucket{kind=\"write_batch\",le=\"0.005\"} 1"
            )
        );
        assert!(text.contains("weft_request_duration_seconds_bucket{kind=\"root\",le=\"10\"} 0"));
        assert!(text.contains("weft_request_duration_seconds_bucket{kind=\"root\",le=\"+Inf\"} 1"));
        assert!(text.contains("weft_apply_outcomes_total{outcome=\"applied\"} 2"));
        assert!(text.contains("weft_received_bytes_total 100"));
        assert!(text.contains("weft_sent_bytes_total 50"));
        assert!(text.contains("weft_subscriptions_active 1"));
        assert!(text.contains("weft_connections_active 2"));
        assert!(text.contains("weft_log_position{tenant=\"a\\\"b\"} 7"));
        assert_eq!(m.requests(RequestKind::Root, 401), 1);
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
