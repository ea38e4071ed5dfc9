//! Blob content in an S3-compatible object store: [`S3Content`], a
//! [`BlobContent`] of the ledger that keeps every chunk of
//! every blob and upload as an object of one bucket (AWS S3, MinIO, Ceph, moto, …),
//! while the ledger's store keeps what says which blobs exist (metadata, upload states,
//! owners, leases).
//!
//! Objects are named `{prefix}{id in hex}/{index as 10 digits}`, so a ListObjectsV2 of
//! `{prefix}{id}/` returns one id's chunks in index order. The bucket is addressed
//! path-style (`{endpoint}/{bucket}/{key}`), which every S3-compatible server takes.
//! Requests are signed with AWS Signature V4 ([`sigv4`], checked against AWS's
//! published example).
//!
//! - `put_chunk` starts a PUT; up to [`S3Config::puts_in_flight`] (8) of one id run at
//!   once, and
//!   `flush` (which the ledger calls before it commits the upload state that names
//!   them) waits for every one of them. A chunk written again waits for its earlier
//!   write first, so writes of one chunk land in order;
//! - `chunk` is a GET (404: not stored);
//! - `chunks` over a known range GETs each index (a 404 is skipped); to the end, it
//!   lists the id's objects page by page and GETs those in the range. Up to
//!   [`GETS_IN_FLIGHT_MAX`] GETs run ahead of the reader;
//! - `delete_chunks` lists the id's objects and DELETEs each.
//!
//! Everything the server controls is bounded: an object's body by the ledger's chunk
//! size, a list page by [`LIST_BODY_BYTES_MAX`] and its key count, every attempt by a
//! time limit; transient failures (5xx, 429, no answer) are retried with a doubling
//! pause, then surface as [`sync_ledger::Error::Retry`], and every other failure as
//! [`sync_ledger::Error::Backend`] holding an [`S3Error`] with the status and S3's
//! error code.

mod config;
mod error;
mod http;
pub mod sigv4;
mod xml;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use sync_ledger::layout::BLOB_CHUNK_BYTES;
use sync_ledger::store::{Batch, Store};
use sync_ledger::{BlobContent, ChunkIter};
use sync_types::Cid;

pub use config::{
    CONNECT_TIME_MS_DEFAULT, Credentials, LIST_PAGE_KEYS_DEFAULT, PREFIX_BYTES_MAX,
    PUTS_IN_FLIGHT_DEFAULT, PUTS_IN_FLIGHT_MAX, REGION_DEFAULT, REQUEST_TIME_MS_DEFAULT,
    RETRIES_DEFAULT, S3Config,
};
pub use error::S3Error;

use http::{Http, Pending, Request};

/// Largest ListObjectsV2 page body read, in bytes (1,000 keys of up to 1 KiB each, and
/// their XML).
pub const LIST_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Chunk GETs (and DELETEs) a reader or a removal keeps in flight.
pub const GETS_IN_FLIGHT_MAX: usize = 8;
/// Digits of a chunk's index in its object name (`u32::MAX` has 10).
const INDEX_DIGITS: usize = 10;

/// Blob chunks as objects of one S3 bucket; see the crate's documentation.
pub struct S3Content {
    http: Http,
    /// PUTs started and not yet waited for, per id, oldest first, with their index.
    puts: Mutex<HashMap<Cid, VecDeque<(u32, Pending)>>>,
    /// Per id with PUTs being waited for: held while waiting, so a second caller
    /// waiting for the same id's writes waits until the first has seen them land.
    gates: Mutex<HashMap<Cid, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for S3Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Content")
            .field("bucket", &self.http.config().describe())
            .finish_non_exhaustive()
    }
}

impl S3Content {
    /// A backend for `config`'s bucket. Nothing is sent yet: [`check`](Self::check)
    /// that the bucket answers before serving from it.
    pub fn new(mut config: S3Config) -> Result<Self, S3Error> {
        config.validate().map_err(|e| {
            S3Error::Config(format!("bad S3 blob store {}: {e}", config.describe()))
        })?;
        Ok(Self {
            http: Http::new(config)?,
            puts: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &S3Config {
        self.http.config()
    }

    /// Checks that the bucket exists and these credentials may list it (one
    /// ListObjectsV2 of at most one key): a wrong secret, a missing bucket or an
    /// unreachable endpoint is an error naming it.
    pub fn check(&self) -> Result<(), S3Error> {
        self.list_page(&self.config().prefix, None, None, 1)
            .map(|_| ())
    }

    /// Creates the bucket (for tests and first setups); an existing bucket of the same
    /// owner is fine.
    pub fn create_bucket(&self) -> Result<(), S3Error> {
        let c = self.config();
        let body = if c.region == REGION_DEFAULT {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                c.region
            ))
        };
        let r = self.http.send(Request {
            op: "CREATE BUCKET",
            method: Method::PUT,
            path: format!("/{}", c.bucket),
            query: Vec::new(),
            body,
            body_bytes_max: http::ERROR_BODY_BYTES_MAX,
            target: c.bucket.clone(),
        });
        match r {
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// The indexes of `at`'s stored chunks, listed from the bucket.
    pub fn stored_indexes(&self, at: &Cid) -> Result<Vec<u32>, S3Error> {
        self.wait_puts(at)?;
        let prefix = self.id_prefix(at);
        let mut out = Vec::new();
        let mut listing = Listing::new(self, prefix, None);
        while let Some(page) = listing.next_page()? {
            out.extend(page);
        }
        Ok(out)
    }

    /// Every key under the configured prefix, at most `max` (an error beyond).
    pub fn keys(&self, max: usize) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(&self.config().prefix, None, token.as_deref(), 1_000)?;
            keys.extend(page.keys);
            if keys.len() > max {
                return Err(S3Error::Config(format!(
                    "more than {max} keys under {}",
                    self.config().describe()
                )));
            }
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(keys),
            }
        }
    }

    fn puts(&self) -> std::sync::MutexGuard<'_, HashMap<Cid, VecDeque<(u32, Pending)>>> {
        // The map stays consistent whatever panicked while holding it.
        self.puts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` holding `at`'s gate (see [`S3Content::gates`]).
    fn gated<T>(&self, at: &Cid, f: impl FnOnce() -> T) -> T {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
            gates.entry(*at).or_default().clone()
        };
        let out = {
            let _held = gate.lock().unwrap_or_else(PoisonError::into_inner);
            f()
        };
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(at);
        }
        out
    }

    /// Waits for every PUT of `at` started so far; the first failure, if any. A
    /// caller arriving while another waits for them waits until they landed too.
    fn wait_puts(&self, at: &Cid) -> Result<(), S3Error> {
        self.gated(at, || {
            let queued = self.puts().remove(at).unwrap_or_default();
            let mut first = Ok(());
            for (_, pending) in queued {
                if let Err(e) = pending.wait()
                    && first.is_ok()
                {
                    first = Err(e);
                }
            }
            first
        })
    }

    fn id_prefix(&self, at: &Cid) -> String {
        format!("{}{}/", self.config().prefix, sigv4::hex(at.as_bytes()))
    }

    fn key(&self, at: &Cid, index: u32) -> String {
        format!("{}{index:0INDEX_DIGITS$}", self.id_prefix(at))
    }

    fn object(&self, op: &'static str, method: Method, key: &str, body: Bytes) -> Request {
        let bucket = &self.config().bucket;
        Request {
            op,
            method,
            path: format!("/{bucket}/{}", sigv4::uri_encode(key, false)),
            query: Vec::new(),
            body,
            // A chunk is never larger: anything larger is not ours.
            body_bytes_max: BLOB_CHUNK_BYTES,
            target: format!("{bucket}/{key}"),
        }
    }

    fn start_get(&self, at: &Cid, index: u32) -> Pending {
        self.http
            .start(self.object("GET", Method::GET, &self.key(at, index), Bytes::new()))
    }

    /// One ListObjectsV2 page of the keys under `prefix`.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<Page, S3Error> {
        let bucket = &self.config().bucket;
        let mut query = vec![
            ("list-type".to_owned(), "2".to_owned()),
            ("prefix".to_owned(), prefix.to_owned()),
            ("max-keys".to_owned(), max_keys.to_string()),
        ];
        if let Some(t) = token {
            query.push(("continuation-token".to_owned(), t.to_owned()));
        } else if let Some(s) = start_after {
            query.push(("start-after".to_owned(), s.to_owned()));
        }
        let target = format!("{bucket}/{prefix}");
        let r = self.http.send(Request {
            op: "LIST",
            method: Method::GET,
            path: format!("/{bucket}"),
            query,
            body: Bytes::new(),
            body_bytes_max: LIST_BODY_BYTES_MAX,
            target: target.clone(),
        })?;
        let bad = |reason: String| S3Error::BadResponse {
            op: "LIST",
            target: target.clone(),
            reason,
        };
        if r.status != StatusCode::OK {
            return Err(bad(format!("status {}", r.status)));
        }
        let keys = xml::tags(&r.body, "Key");
        if keys.len() > max_keys as usize {
            return Err(bad(format!(
                "{} keys in a page of at most {max_keys}",
                keys.len()
            )));
        }
        let truncated = xml::tag(&r.body, "IsTruncated").as_deref() == Some("true");
        let next = match (truncated, xml::tag(&r.body, "NextContinuationToken")) {
            (false, _) => None,
            (true, Some(t)) if Some(t.as_str()) != token && !t.is_empty() => Some(t),
            (true, _) => return Err(bad("a truncated page without a new continuation".into())),
        };
        Ok(Page { keys, next })
    }
}

/// One page of a listing.
struct Page {
    keys: Vec<String>,
    /// The continuation token, when there is more.
    next: Option<String>,
}

/// The chunk indexes under one id's prefix, a page at a time, checked to ascend.
struct Listing<'s> {
    content: &'s S3Content,
    prefix: String,
    start_after: Option<String>,
    token: Option<String>,
    done: bool,
    last: Option<u32>,
}

impl<'s> Listing<'s> {
    fn new(content: &'s S3Content, prefix: String, start_after: Option<String>) -> Self {
        Self {
            content,
            prefix,
            start_after,
            token: None,
            done: false,
            last: None,
        }
    }

    fn next_page(&mut self) -> Result<Option<Vec<u32>>, S3Error> {
        if self.done {
            return Ok(None);
        }
        let page = self.content.list_page(
            &self.prefix,
            self.start_after.as_deref(),
            self.token.as_deref(),
            self.content.config().list_page_keys,
        )?;
        self.done = page.next.is_none();
        self.token = page.next;
        let mut indexes = Vec::with_capacity(page.keys.len());
        for key in &page.keys {
            // Objects of other shapes under the prefix are not chunks.
            let Some(index) = key
                .strip_prefix(&self.prefix)
                .filter(|d| d.len() == INDEX_DIGITS)
                .and_then(|d| d.parse::<u32>().ok())
            else {
                continue;
            };
            if self.last.is_some_and(|l| index <= l) {
                return Err(S3Error::BadResponse {
                    op: "LIST",
                    target: format!("{}/{}", self.content.config().bucket, self.prefix),
                    reason: format!("key {key} is listed out of order"),
                });
            }
            self.last = Some(index);
            indexes.push(index);
        }
        Ok(Some(indexes))
    }
}

/// Where a chunk reader's indexes come from.
enum Source<'s> {
    /// `next..=last`, every index asked for (a missing one answers 404).
    Range { next: u64, last: u32 },
    /// What the bucket lists from `first` on.
    Listed { listing: Listing<'s>, first: u32 },
}

/// Chunks of one id, with up to [`GETS_IN_FLIGHT_MAX`] GETs ahead of the reader.
struct Chunks<'s> {
    content: &'s S3Content,
    at: Cid,
    source: Source<'s>,
    listed: VecDeque<u32>,
    in_flight: VecDeque<(u32, Pending)>,
    failed: bool,
}

impl Chunks<'_> {
    fn next_index(&mut self) -> Result<Option<u32>, S3Error> {
        loop {
            if let Some(i) = self.listed.pop_front() {
                return Ok(Some(i));
            }
            match &mut self.source {
                Source::Range { next, last } => {
                    if *next > u64::from(*last) {
                        return Ok(None);
                    }
                    let i = u32::try_from(*next).unwrap_or(u32::MAX);
                    *next += 1;
                    return Ok(Some(i));
                }
                Source::Listed { listing, first } => match listing.next_page()? {
                    Some(page) => self.listed.extend(page.into_iter().filter(|i| i >= first)),
                    None => return Ok(None),
                },
            }
        }
    }

    fn fill(&mut self) -> Result<(), S3Error> {
        while self.in_flight.len() < GETS_IN_FLIGHT_MAX {
            match self.next_index()? {
                Some(i) => self
                    .in_flight
                    .push_back((i, self.content.start_get(&self.at, i))),
                None => break,
            }
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<(u32, Vec<u8>)>, S3Error> {
        loop {
            self.fill()?;
            let Some((index, pending)) = self.in_flight.pop_front() else {
                return Ok(None);
            };
            let r = pending.wait()?;
            if r.status == StatusCode::NOT_FOUND {
                continue;
            }
            return Ok(Some((index, Vec::from(r.body))));
        }
    }
}

impl Iterator for Chunks<'_> {
    type Item = sync_ledger::Result<(u32, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(item) => item.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e.into()))
            }
        }
    }
}

impl BlobContent for S3Content {
    fn put_chunk(
        &self,
        _store: &dyn Store,
        _batch: &mut Batch,
        at: &Cid,
        index: u32,
        bytes: Vec<u8>,
    ) -> sync_ledger::Result<()> {
        let key = self.key(at, index);
        let mut req = self.object("PUT", Method::PUT, &key, Bytes::from(bytes));
        req.body_bytes_max = http::ERROR_BODY_BYTES_MAX;
        // Earlier writes of this chunk land first, and the oldest PUTs past the limit
        // are waited for (one writer per id: the ledger's uploads are exclusive).
        self.gated(at, || {
            let waits: Vec<Pending> = {
                let mut puts = self.puts();
                let queue = puts.entry(*at).or_default();
                let mut waits = Vec::new();
                let mut kept = VecDeque::with_capacity(queue.len());
                for (i, p) in queue.drain(..) {
                    if i == index {
                        waits.push(p);
                    } else {
                        kept.push_back((i, p));
                    }
                }
                while kept.len() >= self.config().puts_in_flight {
                    if let Some((_, p)) = kept.pop_front() {
                        waits.push(p);
                    }
                }
                *queue = kept;
                waits
            };
            for pending in waits {
                pending.wait()?;
            }
            let pending = self.http.start(req);
            self.puts()
                .entry(*at)
                .or_default()
                .push_back((index, pending));
            Ok::<(), S3Error>(())
        })?;
        Ok(())
    }

    fn flush(&self, at: &Cid) -> sync_ledger::Result<()> {
        Ok(self.wait_puts(at)?)
    }

    fn chunk(
        &self,
        _store: &dyn Store,
        at: &Cid,
        index: u32,
    ) -> sync_ledger::Result<Option<Vec<u8>>> {
        // Reads see this process's writes.
        self.wait_puts(at)?;
        let r = self.start_get(at, index).wait()?;
        Ok((r.status != StatusCode::NOT_FOUND).then(|| Vec::from(r.body)))
    }

    fn chunks<'s>(
        &'s self,
        _store: &'s dyn Store,
        at: &Cid,
        first: u32,
        last: Option<u32>,
    ) -> sync_ledger::Result<ChunkIter<'s>> {
        self.wait_puts(at)?;
        let source = match last {
            Some(last) => Source::Range {
                next: u64::from(first),
                last,
            },
            None => {
                let start_after = first.checked_sub(1).map(|i| self.key(at, i));
                Source::Listed {
                    listing: Listing::new(self, self.id_prefix(at), start_after),
                    first,
                }
            }
        };
        Ok(Box::new(Chunks {
            content: self,
            at: *at,
            source,
            listed: VecDeque::new(),
            in_flight: VecDeque::new(),
            failed: false,
        }))
    }

    fn delete_chunks(
        &self,
        _store: &dyn Store,
        _batch: &mut Batch,
        at: &Cid,
    ) -> sync_ledger::Result<()> {
        // Writes still in flight land first, or one could land after its deletion
        // (whether they failed does not matter: what landed is listed).
        let _ = self.wait_puts(at);
        // Listed whole first: deleting under a listing in progress may skip keys.
        let indexes = self.stored_indexes(at)?;
        let mut in_flight: VecDeque<Pending> = VecDeque::new();
        for index in indexes {
            if in_flight.len() >= GETS_IN_FLIGHT_MAX
                && let Some(p) = in_flight.pop_front()
            {
                p.wait()?;
            }
            let key = self.key(at, index);
            let mut req = self.object("DELETE", Method::DELETE, &key, Bytes::new());
            req.body_bytes_max = http::ERROR_BODY_BYTES_MAX;
            in_flight.push_back(self.http.start(req));
        }
        for p in in_flight {
            p.wait()?;
        }
        Ok(())
    }
}
