//! Signed S3 requests on a runtime of this crate's own, for blocking callers.
//!
//! The ledger calls its content backend from synchronous code: on the blocking pool
//! (`spawn_blocking`), on a runtime worker (a node's blob reads), or off any runtime.
//! Each request runs as a task on this crate's runtime (one worker thread: the work is
//! waiting on sockets), and the caller waits for its answer on a channel, which never
//! panics and never needs the caller's runtime. On a worker of a multi-threaded runtime
//! the wait is in `block_in_place`, so the worker's other tasks move to another thread.

use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::S3Config;
use crate::error::S3Error;
use crate::sigv4;

/// Largest error body read (the rest is cut off).
pub(crate) const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// First pause before a retry, in ms; doubled after each attempt.
const RETRY_PAUSE_MS_FIRST: u64 = 50;
/// Longest pause before a retry, in ms.
const RETRY_PAUSE_MS_MAX: u64 = 2_000;
/// How long an idle pooled connection stays open, in ms.
const POOL_IDLE_MS_MAX: u64 = 30_000;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// One request: method, object path (already encoded), query parameters, body.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) op: &'static str,
    pub(crate) method: Method,
    /// `/bucket` or `/bucket/key`, each segment encoded.
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: Bytes,
    /// Largest successful response body accepted.
    pub(crate) body_bytes_max: usize,
    /// The bucket and key, for errors.
    pub(crate) target: String,
}

/// A response with a success status (2xx), or 404.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// A request sent; [`Pending::wait`] for its answer.
pub(crate) struct Pending(mpsc::Receiver<Result<Response, S3Error>>);

impl Pending {
    /// Blocks until the answer is in.
    pub(crate) fn wait(self) -> Result<Response, S3Error> {
        let recv = || {
            self.0.recv().unwrap_or_else(|_| {
                Err(S3Error::Unreachable {
                    op: "request",
                    target: String::new(),
                    reason: "the S3 client shut down".into(),
                })
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(recv)
            }
            // Off a runtime, or on a current-thread one (which then waits: the request
            // runs on this crate's runtime, so it cannot deadlock).
            _ => recv(),
        }
    }
}

/// The HTTP side of the backend: a pooled client on its own runtime.
pub(crate) struct Http {
    /// `Some` until dropped (shut down without waiting, from any context).
    runtime: Option<tokio::runtime::Runtime>,
    client: Client<Connector, Full<Bytes>>,
    config: S3Config,
    /// `host[:port]` as signed and sent.
    host: String,
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Http {
    pub(crate) fn new(config: S3Config) -> Result<Self, S3Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-s3")
            .enable_all()
            .build()
            .map_err(|e| S3Error::Config(format!("cannot start the S3 client's runtime: {e}")))?;
        let https = config.endpoint.starts_with("https://");
        let host = config
            .endpoint
            .split_once("://")
            .map(|(_, h)| h.to_owned())
            .unwrap_or_default();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_time_ms_max)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(https)?);
        let connector = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        }
        .enable_http1()
        .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_MS_MAX))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            runtime: Some(runtime),
            client,
            config,
            host,
        })
    }

    pub(crate) fn config(&self) -> &S3Config {
        &self.config
    }

    /// Sends `req` and waits for the answer.
    pub(crate) fn send(&self, req: Request) -> Result<Response, S3Error> {
        self.start(req).wait()
    }

    /// Sends `req` on the client's runtime; the answer comes through the [`Pending`].
    pub(crate) fn start(&self, req: Request) -> Pending {
        let (tx, rx) = mpsc::sync_channel(1);
        let payload_sha256 = if req.body.is_empty() {
            sigv4::EMPTY_SHA256.to_owned()
        } else {
            sigv4::sha256_hex(&req.body)
        };
        let attempt = Attempt {
            client: self.client.clone(),
            config: self.config.clone(),
            host: self.host.clone(),
            payload_sha256,
            req,
        };
        match &self.runtime {
            Some(rt) => {
                rt.spawn(async move {
                    let _ = tx.send(attempt.run().await);
                });
            }
            None => drop(tx),
        }
        Pending(rx)
    }
}

/// Everything one request needs on the runtime.
struct Attempt {
    client: Client<Connector, Full<Bytes>>,
    config: S3Config,
    host: String,
    payload_sha256: String,
    req: Request,
}

enum Failure {
    /// Worth another attempt.
    Transient(S3Error),
    Final(S3Error),
}

impl Attempt {
    /// Runs the request, retrying transient failures with a doubling pause.
    async fn run(self) -> Result<Response, S3Error> {
        let mut pause = RETRY_PAUSE_MS_FIRST;
        let mut attempt = 0;
        loop {
            let timeout = Duration::from_millis(self.config.request_time_ms_max);
            let result = match tokio::time::timeout(timeout, self.once()).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Transient(self.unreachable(format!(
                    "no answer within {} ms",
                    self.config.request_time_ms_max
                )))),
            };
            match result {
                Ok(r) => return Ok(r),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) if attempt >= self.config.retries_max => return Err(e),
                Err(Failure::Transient(e)) => {
                    tracing::debug!(error = %e, attempt, "S3 request failed, retrying");
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MS_MAX);
                    attempt += 1;
                }
            }
        }
    }

    fn unreachable(&self, reason: String) -> S3Error {
        S3Error::Unreachable {
            op: self.req.op,
            target: self.req.target.clone(),
            reason,
        }
    }

    fn bad(&self, reason: String) -> S3Error {
        S3Error::BadResponse {
            op: self.req.op,
            target: self.req.target.clone(),
            reason,
        }
    }

    /// One attempt: sign (with the time of this attempt), send, read the body within
    /// its limit.
    async fn once(&self) -> Result<Response, Failure> {
        let req = &self.req;
        let pairs: Vec<(&str, &str)> = req
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let query = sigv4::canonical_query(&pairs);
        let amz_date = sigv4::amz_date(SystemTime::now());
        let creds = &self.config.credentials;
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &self.host),
            ("x-amz-content-sha256", &self.payload_sha256),
            ("x-amz-date", &amz_date),
        ];
        if let Some(token) = &creds.session_token {
            headers.push(("x-amz-security-token", token));
        }
        let authorization = sigv4::authorization(
            &sigv4::Scope {
                access_key_id: &creds.access_key_id,
                secret_access_key: &creds.secret_access_key,
                region: &self.config.region,
                service: "s3",
            },
            &sigv4::Request {
                method: req.method.as_str(),
                path: &req.path,
                query: &query,
                headers: &headers,
                payload_sha256: &self.payload_sha256,
                amz_date: &amz_date,
            },
        );
        let mut uri = format!("{}{}", self.config.endpoint, req.path);
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query);
        }
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(&uri)
            .header("authorization", authorization)
            .header("content-length", req.body.len());
        for (k, v) in &headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| Failure::Final(self.bad(format!("cannot build the request: {e}"))))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::Transient(self.unreachable(describe(&e))))?;
        let status = response.status();
        let ok = status.is_success() || status == StatusCode::NOT_FOUND;
        let limit = if status.is_success() {
            req.body_bytes_max
        } else {
            ERROR_BODY_BYTES_MAX
        };
        let body = match Limited::new(response.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                if ok {
                    return Err(Failure::Final(
                        self.bad(format!("the body exceeds the limit of {limit} bytes")),
                    ));
                }
                Bytes::new()
            }
            Err(e) => {
                return Err(Failure::Transient(
                    self.unreachable(format!("the body was cut off: {e}")),
                ));
            }
        };
        // A 404 of an object is an answer (no such chunk); of the bucket it is an error.
        let missing_object = status == StatusCode::NOT_FOUND
            && crate::xml::tag(&body, "Code").as_deref() != Some("NoSuchBucket");
        if status.is_success() || missing_object {
            return Ok(Response { status, body });
        }
        let e = S3Error::Status {
            op: req.op,
            target: req.target.clone(),
            status: status.as_u16(),
            code: crate::xml::tag(&body, "Code").unwrap_or_else(|| "-".into()),
            message: crate::xml::tag(&body, "Message").unwrap_or_else(|| "-".into()),
        };
        Err(if e.is_transient() {
            Failure::Transient(e)
        } else {
            Failure::Final(e)
        })
    }
}

/// A client error with its causes (hyper's own message is only "client error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// rustls with the ring provider and the system's roots (an `http://` endpoint never
/// uses it, and does not need roots).
fn tls_config(https: bool) -> Result<rustls::ClientConfig, S3Error> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(S3Error::Config(
                "an https S3 endpoint needs trusted certificate authorities, and the system \
                 store is empty"
                    .into(),
            ));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| S3Error::Config(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
