//! Shared test support: an in-memory handler, message builders, tokens, servers on
//! 127.0.0.1 with port 0, and proptest strategies.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::sync::watch;

pub const KEY: TokenKey = TokenKey::from_bytes([42; 32]);
pub const FAR_FUTURE_MS: u64 = u64::MAX / 2;

pub fn tenant() -> TenantId {
    TenantId::new("alice").unwrap()
}

pub fn protocol(name: &str) -> ProtocolName {
    ProtocolName::new(format!("https://ex.com/{name}")).unwrap()
}

pub fn owner_claims() -> Claims {
    Claims::owner(
        tenant(),
        PrincipalId::new("alice").unwrap(),
        GrantId::new("owner").unwrap(),
        FAR_FUTURE_MS,
    )
}

pub fn delegate_claims(scope: Scope, actions: Actions, expires_at_ms: u64) -> Claims {
    Claims {
        tenant: tenant(),
        principal: PrincipalId::new("bob").unwrap(),
        role: Role::Delegate,
        scope,
        actions,
        expires_at_ms,
        grant_id: GrantId::new("g1").unwrap(),
    }
}

pub fn owner_token() -> Token {
    Token::issue(&KEY, owner_claims())
}

/// The n-th write of the test tenant under `proto`, with `data` inline.
pub fn write(proto: &str, n: u64, data: Option<&[u8]>) -> MessageData {
    let tenant = tenant();
    let protocol = protocol(proto);
    let record_id = RecordId::from_natural_key(&tenant, &protocol, &n.to_be_bytes());
    let message = Message::Write(Write {
        tenant,
        record_id,
        parent_id: None,
        protocol,
        path: ProtocolPath::new("note").unwrap(),
        context_id: ContextId::root(record_id),
        prev: None,
        timestamp: Hlc {
            wall_ms: 1_700_000_000_000 + n,
            counter: 0,
            node: NodeId(1),
        },
        author: PrincipalId::new("alice").unwrap(),
        data: data.map(DataRef::of),
    });
    MessageData {
        message,
        data: data.map(<[u8]>::to_vec),
    }
}

#[derive(Default)]
struct BlobState {
    total: u64,
    bytes: Vec<u8>,
    complete: bool,
}

#[derive(Default)]
struct State {
    log: Vec<LogEntry>,
    messages: HashMap<Cid, MessageData>,
    blobs: HashMap<Cid, BlobState>,
}

/// An in-memory node: a log, a message map and a blob map for one tenant.
pub struct TestHandler {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    /// Calls that reached the handler (after the transport's checks).
    pub calls: AtomicU64,
    pub stream_id: StreamId,
    pub epoch: u64,
    /// Positions at or below this were compacted away.
    pub floor: AtomicU64,
    /// Delay added to every `root` call, to exercise time limits.
    pub root_delay_ms: AtomicU64,
    /// How many messages each write batch that reached the handler held, in order.
    pub batch_lens: Mutex<Vec<usize>>,
    /// While set, log reads fail as `Unavailable` (a database restarting under the node).
    pub log_unavailable: AtomicBool,
    /// While set, blob reads fail as `Unavailable` (an object store that does not answer).
    pub blobs_unavailable: AtomicBool,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: watch::Sender::new(0),
            calls: AtomicU64::new(0),
            stream_id: StreamId::from_bytes([7; 16]),
            epoch: 1,
            floor: AtomicU64::new(0),
            root_delay_ms: AtomicU64::new(0),
            batch_lens: Mutex::default(),
            log_unavailable: AtomicBool::new(false),
            blobs_unavailable: AtomicBool::new(false),
        }
    }
}

impl TestHandler {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    /// Appends messages to the log directly (as a local write would) and notifies.
    pub fn append(&self, items: Vec<MessageData>) -> Vec<ProgressToken> {
        let mut tokens = Vec::new();
        {
            let mut s = self.state.lock().unwrap();
            for item in items {
                let cid = item.message.cid();
                if s.messages.contains_key(&cid) {
                    continue;
                }
                let token = ProgressToken {
                    stream_id: self.stream_id,
                    epoch: self.epoch,
                    position: s.log.len() as u64 + 1,
                    cid,
                };
                s.messages.insert(cid, item.clone());
                s.log.push(LogEntry { token, item });
                tokens.push(token);
            }
        }
        self.changes.send_modify(|v| *v += 1);
        tokens
    }

    /// Appends without notifying (a lost notification).
    pub fn append_silently(&self, item: MessageData) -> ProgressToken {
        let mut s = self.state.lock().unwrap();
        let cid = item.message.cid();
        let token = ProgressToken {
            stream_id: self.stream_id,
            epoch: self.epoch,
            position: s.log.len() as u64 + 1,
            cid,
        };
        s.messages.insert(cid, item.clone());
        s.log.push(LogEntry { token, item });
        token
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Cid {
        let cid = Cid::of_data(bytes);
        self.state.lock().unwrap().blobs.insert(
            cid,
            BlobState {
                total: bytes.len() as u64,
                bytes: bytes.to_vec(),
                complete: true,
            },
        );
        cid
    }

    pub fn head(&self) -> Option<ProgressToken> {
        self.state.lock().unwrap().log.last().map(|e| e.token)
    }
}

/// What the test node serves under `scope`: the scope gate pulling, without records
/// (a delete under a partial projection is never served).
fn in_scope(scope: &Scope, m: &Message) -> bool {
    let Ok(class) = scope.gate(Direction::Pull, m, &NoInitialWrites);
    class == ScopeClass::InScope
}

impl Handler for TestHandler {
    async fn root(
        &self,
        _ctx: &RequestContext,
        req: RootRequest,
    ) -> Result<RootReply, HandlerError> {
        self.count();
        let delay = self.root_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let s = self.state.lock().unwrap();
        let mut cids: Vec<Cid> = s
            .messages
            .values()
            .filter(|m| in_scope(&req.scope, &m.message))
            .map(|m| m.message.cid())
            .collect();
        cids.sort();
        let mut h = blake3::Hasher::new();
        for c in cids {
            h.update(c.as_bytes());
        }
        Ok(RootReply {
            root: *h.finalize().as_bytes(),
        })
    }

    async fn diff_round(
        &self,
        _ctx: &RequestContext,
        req: DiffRequest,
    ) -> Result<DiffReply, HandlerError> {
        self.count();
        let mut round = req.round;
        round.reverse();
        Ok(DiffReply { round })
    }

    async fn log_page(
        &self,
        _ctx: &RequestContext,
        req: LogPageRequest,
    ) -> Result<LogPageReply, HandlerError> {
        self.count();
        if self.log_unavailable.load(Ordering::SeqCst) {
            return Err(HandlerError::Unavailable(
                "the log's store is restarting".into(),
            ));
        }
        let s = self.state.lock().unwrap();
        let head = s.log.last().map(|e| e.token);
        let floor = self.floor.load(Ordering::SeqCst);
        let start = match req.from {
            None => floor,
            Some(t) => {
                let reason = if t.stream_id != self.stream_id {
                    Some(GapReason::StreamMismatch)
                } else if t.epoch != self.epoch {
                    Some(GapReason::EpochMismatch)
                } else if t.position > s.log.len() as u64 {
                    Some(GapReason::TooNew)
                } else if t.position < floor {
                    Some(GapReason::TooOld)
                } else if t.position > 0 && s.log[t.position as usize - 1].token.cid != t.cid {
                    Some(GapReason::MessageMismatch)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(LogPageReply::Gap(Gap {
                        requested: t,
                        oldest_available: s.log.get(floor as usize).map(|e| e.token),
                        latest_available: head,
                        reason,
                    }));
                }
                t.position
            }
        };
        let mut entries = Vec::new();
        let mut next = req.from;
        let mut i = start as usize;
        while i < s.log.len() && entries.len() < req.limit as usize {
            let e = &s.log[i];
            next = Some(e.token);
            let protocol_ok = req
                .filter
                .protocols
                .as_ref()
                .is_none_or(|p| p.contains(e.item.message.protocol()));
            if protocol_ok && in_scope(&req.scope, &e.item.message) {
                entries.push(e.clone());
            }
            i += 1;
        }
        Ok(LogPageReply::Page(LogPage {
            entries,
            next,
            has_more: i < s.log.len(),
        }))
    }

    async fn read_messages(
        &self,
        _ctx: &RequestContext,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, HandlerError> {
        self.count();
        let s = self.state.lock().unwrap();
        let mut reply = ReadMessagesReply::default();
        for cid in req.cids {
            match s.messages.get(&cid) {
                Some(m) if in_scope(&req.scope, &m.message) => reply.found.push(m.clone()),
                _ => reply.missing.push(cid),
            }
        }
        Ok(reply)
    }

    async fn apply(
        &self,
        _ctx: &RequestContext,
        _tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<Vec<ApplyOutcome>, HandlerError> {
        self.count();
        self.batch_lens.lock().unwrap().push(messages.len());
        let mut outcomes = Vec::new();
        let mut fresh = Vec::new();
        {
            let s = self.state.lock().unwrap();
            for m in messages {
                if s.messages.contains_key(&m.message.cid())
                    || fresh.iter().any(|f: &MessageData| f.message == m.message)
                {
                    outcomes.push(ApplyOutcome::Duplicate);
                } else {
                    outcomes.push(ApplyOutcome::Applied);
                    fresh.push(m);
                }
            }
        }
        if !fresh.is_empty() {
            self.append(fresh);
        }
        Ok(outcomes)
    }

    async fn blob_stat(
        &self,
        _ctx: &RequestContext,
        req: BlobStatRequest,
    ) -> Result<BlobStat, HandlerError> {
        self.count();
        let s = self.state.lock().unwrap();
        Ok(match s.blobs.get(&req.cid) {
            Some(b) => BlobStat {
                cid: req.cid,
                size: Some(b.total),
                received_bytes: b.bytes.len() as u64,
                complete: b.complete,
            },
            None => BlobStat {
                cid: req.cid,
                size: None,
                received_bytes: 0,
                complete: false,
            },
        })
    }

    async fn blob_read(
        &self,
        _ctx: &RequestContext,
        req: &BlobReadRequest,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, HandlerError> {
        if self.blobs_unavailable.load(Ordering::SeqCst) {
            return Err(HandlerError::Unavailable(
                "the blob store does not answer".into(),
            ));
        }
        let s = self.state.lock().unwrap();
        let b = s
            .blobs
            .get(&req.cid)
            .ok_or_else(|| HandlerError::NotFound("no such blob".into()))?;
        let start = offset as usize;
        let end = (start + len as usize).min(b.bytes.len());
        Ok(Bytes::copy_from_slice(&b.bytes[start..end]))
    }

    async fn blob_write(
        &self,
        _ctx: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: Bytes,
    ) -> Result<BlobStat, HandlerError> {
        let mut s = self.state.lock().unwrap();
        let b = s.blobs.entry(req.cid).or_insert_with(|| BlobState {
            total: req.total_size,
            ..BlobState::default()
        });
        if b.complete {
            return Ok(BlobStat {
                cid: req.cid,
                size: Some(b.total),
                received_bytes: b.total,
                complete: true,
            });
        }
        if offset != b.bytes.len() as u64 {
            return Err(HandlerError::BadRequest(format!(
                "upload must resume at {}",
                b.bytes.len()
            )));
        }
        b.bytes.extend_from_slice(&chunk);
        if b.bytes.len() as u64 == b.total {
            if Cid::of_data(&b.bytes) != req.cid {
                b.bytes.clear();
                return Err(HandlerError::BadRequest("blob hash mismatch".into()));
            }
            b.complete = true;
        }
        Ok(BlobStat {
            cid: req.cid,
            size: Some(b.total),
            received_bytes: b.bytes.len() as u64,
            complete: b.complete,
        })
    }

    async fn health(&self) -> Result<HealthSummary, HandlerError> {
        self.count();
        Ok(HealthSummary::new(Connectivity::Online, 0, 0, 0, 0, None))
    }

    fn changes(&self, _tenant: &TenantId) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// A config with short limits so tests finish quickly.
pub fn test_config() -> ServerConfig {
    let mut c = ServerConfig::new(KEY);
    c.request_time_ms_max = 5_000;
    c.header_read_time_ms_max = 2_000;
    c.write_stall_ms_max = 2_000;
    c.transfer_idle_ms_max = 2_000;
    c.heartbeat_interval_ms = 200;
    c.heartbeat_timeout_ms = 1_000;
    c.subscriber_stall_ms_max = 300;
    c.shutdown_grace_ms = 1_000;
    c.live_poll_interval_ms = 60_000;
    c
}

pub struct TestServer {
    pub handler: Arc<TestHandler>,
    pub server: ServerHandle<TestHandler>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        let handler = Arc::new(TestHandler::default());
        let server = serve(handler.clone(), config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self { handler, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(format!("http://{}", self.addr())).unwrap()
    }

    pub fn client(&self, token: &Token) -> HttpClient {
        HttpClient::new(&self.endpoint(), token, client_config()).unwrap()
    }

    pub fn in_process(&self, token: &Token) -> InProcessClient<TestHandler> {
        InProcessClient::new(self.server.node().clone(), token)
    }
}

pub fn client_config() -> ClientConfig {
    ClientConfig {
        request_time_ms_max: 5_000,
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 1_000,
        retries_max: 1,
        ..ClientConfig::default()
    }
}

/// Bounds a test step, so a bug shows as a failure and not a hang.
pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test step timed out")
}
