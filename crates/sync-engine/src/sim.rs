//! Deterministic simulation: replicas and a node over a simulated network, from a seed.
//!
//! [`run`] builds a node and several replicas, all on in-memory stores, connects them
//! through [`SimConnector`] (the real transport stack, in process: frames, tokens, the
//! node's handler) and plays a random workload: writes, updates and deletes on random
//! replicas (some with payloads above the inline limit, which travel as blobs), one-shot
//! syncs, and faults: lost requests, lost responses (the request took effect, the caller
//! saw an error), duplicated requests, latency, partitions, replica restarts with power
//! loss, node restarts, and on blob transfers also cut streams and flipped bytes. Every
//! replica has its own wall clock, skewed by up to half the accepted drift and jumping
//! (often backwards) at random steps; a restart is cold: the replica is opened again
//! from its store alone (no node id, clock state, cache or engine state carried over).
//! The run's conflict policy is drawn from its seed. Then
//! the faults stop, every replica syncs until the roots agree and every record is
//! resident, and [`run`] checks:
//!
//! - every replica and the node hold the same tree root and the same records;
//! - every record is resident, and the blob of each is stored and hashes to its id;
//! - at no step was a record reported resident before its verified blob was stored;
//! - no acknowledged write is lost: its record's winner is the write or a version that
//!   orders after it;
//! - a local write or delete is acknowledged as the record's winner (a write based on
//!   version V that loses to V, or to what V superseded, is the lost write of issue 15),
//!   checked at every write;
//! - a replica restarted cold keeps its node id and reads back every write it
//!   acknowledged before, checked at every restart;
//! - no delete is undone: a deleted record's winner is the delete or a version that
//!   orders after it.
//!
//! Everything runs on one thread with tokio's paused clock, and the workload runs one
//! step at a time (each awaited to completion), so a seed replays the same run exactly.
//! A failure names its seed; `SIM_SEED=<seed> cargo test -p sync-engine --test simulation
//! replay` runs it again.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_ledger::{Durability, Ledger, LogEntry, MemoryStore};
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest,
    HealthReply, LogFilter, LogPageReply, LogPageRequest, ReadMessagesReply, ReadMessagesRequest,
    RootReply, RootRequest, SubscribeRequest, WriteBatchReply, WriteBatchRequest,
};
use sync_transport::{
    BlobDownload, BlobSource, Claims, InProcessClient, Node, Remote, ServerConfig, Subscription,
    Token, TokenKey, TransportError,
};
use sync_types::{
    Clock, DataRef, Endpoint, GrantId, Hlc, INLINE_DATA_BYTES_MAX, PrincipalId, ProgressToken,
    ProtocolName, ProtocolPath, RecordId, Scope, TenantId, TypeRule,
};

use crate::blob::Residency;
use crate::live::{EngineOps, LinkOps};
use crate::machine::{
    Action, EventDecision, LinkConfig, LinkMachine, SubscriptionEnd, SubscriptionId, Timer,
};
use crate::node::ReplicaHandler;
use crate::replica::Replica;
use crate::sync::{Connector, Engine, Identity, InProcessConnector, SyncConfig};

#[path = "sim_clock.rs"]
mod clock;
use clock::DeviceClock;
pub use clock::SimPolicy;

/// Fault rates, in parts per thousand of the chances they get.
#[derive(Clone, Debug)]
pub struct Faults {
    /// A request is lost before the node sees it.
    pub request_loss: u32,
    /// The node handles a request, and the response is lost.
    pub response_loss: u32,
    /// The node receives a request twice.
    pub duplicate: u32,
    /// Largest one-way latency, in milliseconds of virtual time.
    pub latency_ms_max: u64,
    /// Per step: a replica is partitioned from the node, or healed.
    pub partition: u32,
    /// Per step: a replica restarts, losing what was not synced to disk.
    pub replica_restart: u32,
    /// Per step: the node restarts, losing what was not synced to disk.
    pub node_restart: u32,
    /// A blob transfer's byte stream ends early (a cut connection).
    pub blob_cut: u32,
    /// A blob transfer has one byte flipped on the way.
    pub blob_corrupt: u32,
    /// Largest offset of a device's wall clock from the run's time, either way, in
    /// milliseconds (the node's clock has none). Stays after the faults stop: it is
    /// the hardware.
    pub clock_skew_ms_max: u64,
    /// Per step: a replica's clock jumps to a new offset (often backwards).
    pub clock_jump: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            request_loss: 60,
            response_loss: 60,
            duplicate: 60,
            latency_ms_max: 40,
            partition: 40,
            replica_restart: 30,
            node_restart: 15,
            blob_cut: 60,
            blob_corrupt: 60,
            clock_skew_ms_max: sync_types::DRIFT_MS_MAX_DEFAULT / 2,
            clock_jump: 20,
        }
    }
}

/// How the replicas replicate in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMode {
    /// Each replica calls `Engine::sync_once` at random steps.
    Poll,
    /// Each replica's link runs its [`LinkMachine`]: a simulated live feed, push on write,
    /// repair, timers on the virtual clock. Nobody calls `sync_once`: the links must heal
    /// by themselves.
    Live,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the whole run follows from it.
    pub seed: u64,
    /// Poll or live.
    pub mode: SimMode,
    /// Number of replicas (each its own device).
    pub replicas: usize,
    /// Workload steps before the faults stop.
    pub steps: usize,
    /// Distinct record keys (fewer keys, more concurrent edits of one record).
    pub keys: u32,
    /// Of the writes, parts per thousand whose payload is above the inline limit (a blob).
    pub blob_writes: u32,
    /// Fault rates.
    pub faults: Faults,
    /// Give the replicas different scopes: in turn the full scope, a protocol set of one
    /// of the two protocols, and a projection of one path of the other. Each replica
    /// writes only inside its scope, and the checks compare each replica with the node
    /// over its scope, and check it holds nothing outside it.
    pub mixed_scopes: bool,
    /// Most sync rounds (every replica once) after the faults stop; 0 skips settling, so
    /// the checks see the replicas as the faults left them (a test of the checks).
    pub settle_rounds_max: usize,
    /// The conflict policy of every replica; `None` draws one from the seed.
    pub policy: Option<SimPolicy>,
    /// Fixed clock offsets per replica (milliseconds, missing ones drawn); for the
    /// scenario tests.
    pub clock_offsets_ms: Vec<i64>,
}

impl SimConfig {
    /// Defaults for `seed`: 3 replicas, 60 steps, 6 keys, default faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            mode: SimMode::Poll,
            replicas: 3,
            steps: 60,
            keys: 6,
            blob_writes: 150,
            faults: Faults::default(),
            mixed_scopes: false,
            settle_rounds_max: 8,
            policy: None,
            clock_offsets_ms: Vec::new(),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Acknowledged writes.
    pub writes: u64,
    /// Acknowledged deletes.
    pub deletes: u64,
    /// Acknowledged writes whose payload is a blob.
    pub blob_writes: u64,
    /// Blob transfers cut short or corrupted.
    pub blob_faults: u64,
    /// One-shot syncs run (with faults on).
    pub syncs: u64,
    /// Requests lost.
    pub requests_lost: u64,
    /// Responses lost.
    pub responses_lost: u64,
    /// Requests duplicated.
    pub duplicated: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Replica restarts.
    pub replica_restarts: u64,
    /// Node restarts.
    pub node_restarts: u64,
    /// Sync rounds (poll) or driver iterations (live) it took to converge after the
    /// faults stopped.
    pub settle_rounds: u64,
    /// Live feeds cut by the network (live mode).
    pub feeds_cut: u64,
    /// Live deliveries duplicated (live mode).
    pub deliveries_duplicated: u64,
    /// Repairs the link machines started (live mode).
    pub repairs: u64,
    /// The run's conflict policy.
    pub policy: Option<SimPolicy>,
    /// Clock jumps, and how many went backwards.
    pub clock_jumps: u64,
    /// Clock jumps backwards.
    pub clock_jumps_back: u64,
    /// Local writes that replaced a version stamped ahead of the writer's wall clock
    /// (the first half of issue 15's lost write).
    pub writes_over_future_versions: u64,
    /// Of those, writes by a replica restarted since it first stored that version (the
    /// whole of it).
    pub writes_over_future_versions_after_restart: u64,
    /// The node's tree root over the full scope at the end of the run (every replica
    /// holds the same over its scope, or the run fails).
    pub root: sync_smt::Hash,
    /// Records the node holds at the end of the run (its winner a write).
    pub records: u64,
    /// Records the node holds deleted at the end of the run (its winner a delete).
    pub tombstones: u64,
    /// A digest (FNV-1a, 64 bits) of every acknowledged write and delete in order: the
    /// replica, the record, the version's id and whether it deletes.
    pub acked_digest: u64,
}

impl SimReport {
    /// Faults injected in the run.
    pub fn faults(&self) -> u64 {
        self.requests_lost
            + self.feeds_cut
            + self.deliveries_duplicated
            + self.responses_lost
            + self.duplicated
            + self.partitions
            + self.replica_restarts
            + self.node_restarts
            + self.blob_faults
            + self.clock_jumps
    }
}

/// A failed run.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "simulation seed {seed} failed: {message} (replay: SIM_SEED={seed} cargo test -p sync-engine --test simulation replay)"
)]
pub struct SimFailure {
    /// The seed that fails.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
}

/// A small deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// Virtual wall time: tokio's (paused) clock plus a fixed base.
#[derive(Debug)]
struct SimClock {
    start: tokio::time::Instant,
    base_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests_lost: AtomicU64,
    responses_lost: AtomicU64,
    duplicated: AtomicU64,
    blob_faults: AtomicU64,
}

/// The simulated network shared by every replica's connector.
#[derive(Debug)]
pub struct SimNet {
    rng: Mutex<SimRng>,
    faults: Mutex<Faults>,
    partitioned: Mutex<HashSet<usize>>,
    counters: Counters,
    nodes: InProcessConnector<ReplicaHandler>,
}

impl SimNet {
    fn draw(&self, per_mille: impl Fn(&Faults) -> u32) -> bool {
        let p = per_mille(&self.faults.lock().unwrap_or_else(|e| e.into_inner()));
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).chance(p)
    }

    fn latency(&self) -> Duration {
        let max = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latency_ms_max;
        Duration::from_millis(
            self.rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .below(max + 1),
        )
    }

    /// Whether a blob transfer of `len` bytes is cut or corrupted, and where.
    fn blob_fault(&self, len: u64) -> Option<BlobFault> {
        if len == 0 {
            return None;
        }
        let fault = if self.draw(|f| f.blob_cut) {
            BlobFault::Cut
        } else if self.draw(|f| f.blob_corrupt) {
            BlobFault::Corrupt
        } else {
            return None;
        };
        let at = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .below(len);
        self.counters.blob_faults.fetch_add(1, Ordering::Relaxed);
        Some(fault(at))
    }

    fn is_partitioned(&self, replica: usize) -> bool {
        self.partitioned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&replica)
    }
}

/// What happens to a blob transfer's bytes.
#[derive(Clone, Copy, Debug)]
enum BlobFault {
    /// The stream ends after this many bytes.
    Cut(u64),
    /// The byte at this offset (in the transfer) is flipped.
    Corrupt(u64),
}

/// A byte stream with `fault` applied.
fn mangle<E: Send + 'static>(
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>>,
    fault: BlobFault,
) -> futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>> {
    use futures_util::StreamExt;
    stream
        .scan(0u64, move |seen, item| {
            let out = match item {
                Ok(piece) => {
                    let start = *seen;
                    let end = start + piece.len() as u64;
                    *seen = end;
                    match fault {
                        BlobFault::Cut(at) if start >= at => None,
                        BlobFault::Cut(at) if end > at => {
                            Some(Ok(piece.slice(..usize::try_from(at - start).unwrap_or(0))))
                        }
                        BlobFault::Corrupt(at) if (start..end).contains(&at) => {
                            let mut v = piece.to_vec();
                            v[usize::try_from(at - start).unwrap_or(0)] ^= 0x20;
                            Some(Ok(bytes::Bytes::from(v)))
                        }
                        _ => Some(Ok(piece)),
                    }
                }
                Err(e) => Some(Err(e)),
            };
            futures_util::future::ready(out)
        })
        .boxed()
}

/// One replica's way onto the simulated network.
#[derive(Debug, Clone)]
pub struct SimConnector {
    net: Arc<SimNet>,
    replica: usize,
}

impl Connector for SimConnector {
    type Remote = SimRemote;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<SimRemote, TransportError> {
        if self.net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        let inner = self.net.nodes.connect(endpoint, token)?;
        Ok(SimRemote {
            inner,
            net: self.net.clone(),
            replica: self.replica,
        })
    }
}

/// A client whose calls cross the simulated network.
#[derive(Clone)]
pub struct SimRemote {
    inner: InProcessClient<ReplicaHandler>,
    net: Arc<SimNet>,
    replica: usize,
}

impl std::fmt::Debug for SimRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRemote")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl SimRemote {
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, TransportError>
    where
        F: Fn(InProcessClient<ReplicaHandler>) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let net = &self.net;
        if net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.request_loss) {
            net.counters.requests_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("request lost".into()));
        }
        let mut reply = f(self.inner.clone()).await;
        if net.draw(|f| f.duplicate) {
            net.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            reply = f(self.inner.clone()).await;
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.response_loss) {
            net.counters.responses_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("response lost".into()));
        }
        reply
    }
}

impl Remote for SimRemote {
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.root(req).await }
        })
        .await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.diff_round(req).await }
        })
        .await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.log_page(req).await }
        })
        .await
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.read_messages(req).await }
        })
        .await
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.write_batch(req).await }
        })
        .await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.blob_stat(req).await }
        })
        .await
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        let mut download = self
            .call(|c| {
                let req = req.clone();
                async move { c.blob_read(req).await }
            })
            .await?;
        if let Some(fault) = self.net.blob_fault(download.head.len) {
            download.bytes = mangle(download.bytes, fault);
        }
        Ok(download)
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        // A stream cannot be replayed, so uploads are not duplicated; the other faults
        // apply, and the bytes may be cut short or corrupted on the way.
        let net = &self.net;
        if net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.request_loss) {
            net.counters.requests_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("request lost".into()));
        }
        let source = match net.blob_fault(req.len) {
            Some(fault) => mangle(source, fault),
            None => source,
        };
        let reply = self.inner.blob_write(req, source).await;
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.response_loss) {
            net.counters.responses_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("response lost".into()));
        }
        reply
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.call(|c| async move { c.health().await }).await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        if self.net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        self.inner.subscribe(req).await
    }
}

fn tenant() -> TenantId {
    TenantId::new("did:sim:tenant").expect("valid")
}
fn kv() -> ProtocolName {
    ProtocolName::new("https://sim.example/kv").expect("valid")
}
fn docs() -> ProtocolName {
    ProtocolName::new("https://sim.example/docs").expect("valid")
}
fn segment(s: &str) -> ProtocolPath {
    ProtocolPath::new(s).expect("valid")
}

/// Where writes go: (protocol, path). Record keys are per target, so a record belongs to
/// exactly one target.
fn targets() -> [(ProtocolName, ProtocolPath); 3] {
    [
        (kv(), segment("entry")),
        (docs(), segment("a")),
        (docs(), segment("b")),
    ]
}

/// The scope of replica `index`.
fn scope_of(index: usize, mixed: bool) -> Scope {
    match (mixed, index % 3) {
        (false, _) | (true, 0) => Scope::Full,
        (true, 1) => Scope::protocols(vec![kv()]).expect("valid"),
        _ => Scope::projection(vec![sync_types::ProjectionEntry {
            protocol: docs(),
            path_prefixes: vec![segment("a")],
            context_prefixes: vec![],
        }])
        .expect("valid"),
    }
}

/// The targets a scope covers.
fn targets_in(scope: &Scope) -> Vec<usize> {
    (0..targets().len())
        .filter(|&t| {
            let (protocol, path) = &targets()[t];
            let context = sync_types::ContextId::root(RecordId::from_bytes([0; 32]));
            scope.classify(protocol, Some((path, &context))) == sync_types::ScopeClass::InScope
        })
        .collect()
}

fn record_of(target: usize, key: u64) -> RecordId {
    RecordId::from_natural_key(&tenant(), &targets()[target].0, &record_key(target, key))
}

fn record_key(target: usize, key: u64) -> Vec<u8> {
    let mut k = vec![u8::try_from(target).expect("few targets")];
    k.extend_from_slice(&key.to_be_bytes());
    k
}
fn author() -> PrincipalId {
    PrincipalId::new("did:sim:author").expect("valid")
}

struct Device {
    store: MemoryStore,
    engine: Engine<SimConnector>,
    live: Option<LiveLink>,
    /// The replica's local changes, which wake its live link (as `LiveSync` does).
    changes: tokio::sync::broadcast::Receiver<crate::replica::Change>,
    /// Cold restarts so far.
    restarts: u64,
}

/// A link run by its machine, with the driver's state simulated: timers on the virtual
/// clock and a live feed read from the node's log.
struct LiveLink {
    machine: LinkMachine,
    timers: BTreeMap<Timer, u64>,
    feed: Option<SimFeed>,
}

struct SimFeed {
    id: SubscriptionId,
    cursor: Option<ProgressToken>,
    buffer: VecDeque<LogEntry>,
    eose: Option<Option<ProgressToken>>,
    eose_sent: bool,
}

/// An acknowledged write or delete: its record and order key, and the replica that
/// wrote it.
#[derive(Clone, Copy, Debug)]
struct Acked {
    record: RecordId,
    order: (Hlc, sync_types::Cid),
    delete: bool,
    device: usize,
}

struct World {
    config: SimConfig,
    rng: SimRng,
    net: Arc<SimNet>,
    clock: Arc<SimClock>,
    endpoint: Endpoint,
    token: String,
    key: TokenKey,
    node_store: MemoryStore,
    node: Replica,
    devices: Vec<Device>,
    acked: Vec<Acked>,
    report: SimReport,
    /// Each device's wall clock; it survives restarts (it is the hardware).
    clocks: Vec<Arc<DeviceClock>>,
    /// Draws for clocks and the policy, apart from the workload's, so adding them left
    /// the workload's draws as they were.
    clock_rng: SimRng,
    policy: SimPolicy,
    /// Per device, the records whose winner it held stamped ahead of its clock, with
    /// its restart count when it first saw them that way.
    future_versions: HashSet<(usize, RecordId, u64)>,
    /// Blobs already verified, per holder (a replica's index, or [`NODE`]); a holder's
    /// entries are forgotten when it restarts.
    verified: HashSet<(usize, sync_types::Cid)>,
}

/// The node's index in [`World::verified`].
const NODE: usize = usize::MAX;

fn fail(seed: u64, message: impl Into<String>) -> SimFailure {
    SimFailure {
        seed,
        message: message.into(),
    }
}

impl World {
    /// Opens a replica from its store alone, as a new process does: the node id and the
    /// clock's high-water mark come from the store (the seed only picks the id of a
    /// store that has none).
    fn open_replica(
        &self,
        store: &MemoryStore,
        node: u64,
        incarnation: u64,
        clock: Arc<dyn Clock + Send + Sync>,
        policy: crate::conflict::ConflictPolicy,
    ) -> Result<Replica, SimFailure> {
        let seed = self.config.seed ^ node.wrapping_mul(0x1000_0000_01b3);
        // Each open draws differently, as a new process would: only the store keeps
        // the replica's identity.
        let fresh = seed ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let ledger = Ledger::builder()
            .seed(seed)
            .open(store.clone())
            .map_err(|e| fail(self.config.seed, format!("open: {e}")))?;
        Replica::builder()
            .clock(clock)
            .durability(Durability::SyncData)
            .conflict_policy(policy)
            .seed(fresh)
            .with_ledger(ledger)
            .map_err(|e| fail(self.config.seed, format!("open replica: {e}")))
    }

    fn start_node(&mut self) -> Result<(), SimFailure> {
        self.node = self.open_replica(
            &self.node_store.clone(),
            1_000,
            self.report.node_restarts,
            self.clock.clone(),
            crate::conflict::ConflictPolicy::LastWriterWins,
        )?;
        let mut config = ServerConfig::new(self.key.clone());
        config.clock = self.clock.clone();
        let node = Node::new(Arc::new(ReplicaHandler::new(self.node.clone())), config);
        self.net.nodes.insert(self.endpoint.clone(), node);
        Ok(())
    }

    fn open_device(
        &self,
        index: usize,
        store: MemoryStore,
        incarnation: u64,
    ) -> Result<Device, SimFailure> {
        let replica = self.open_replica(
            &store,
            index as u64 + 1,
            incarnation,
            self.clocks[index].clone(),
            self.policy.policy(),
        )?;
        let changes = replica.subscribe();
        let connector = SimConnector {
            net: self.net.clone(),
            replica: index,
        };
        // Blob downloads run inside the step that stages their records (not detached),
        // so a step still runs to completion and a seed replays exactly.
        let engine = Engine::builder(replica, connector)
            .config(SyncConfig {
                blob_fetch_detached: false,
                ..SyncConfig::default()
            })
            .seed(self.config.seed ^ ((index as u64) << 8))
            .build();
        // A restarted replica finds its identity in its ledger.
        let registered = engine
            .identities()
            .map_err(|e| fail(self.config.seed, format!("identities: {e}")))?;
        if registered.is_empty() {
            let identity = Identity {
                scope: scope_of(index, self.config.mixed_scopes),
                ..Identity::owner(tenant(), vec![self.endpoint.clone()], self.token.clone())
            };
            engine
                .register_identity(identity)
                .map_err(|e| fail(self.config.seed, format!("register: {e}")))?;
        }
        let live = match self.config.mode {
            SimMode::Poll => None,
            SimMode::Live => {
                let link = engine
                    .links()
                    .map_err(|e| fail(self.config.seed, format!("links: {e}")))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| fail(self.config.seed, "no link"))?;
                let config = EngineOps::<SimConnector>::link_config(LinkConfig {
                    jitter_seed: self.config.seed ^ index as u64,
                    ..LinkConfig::default()
                });
                let mut machine = LinkMachine::new(link, config);
                let head = engine.replica().ledger().log_head(&tenant()).ok().flatten();
                machine.set_local_head(head);
                machine.handle_start(self.clock.now_ms());
                Some(LiveLink {
                    machine,
                    timers: BTreeMap::new(),
                    feed: None,
                })
            }
        };
        Ok(Device {
            store,
            engine,
            live,
            changes,
            restarts: incarnation,
        })
    }

    fn restart_device(&mut self, index: usize) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        let store = self.devices[index].store.clone();
        let node_before = self.devices[index].engine.replica().node_id();
        let restarts = self.devices[index].restarts + 1;
        // Drop the old replica before its store "loses power".
        let placeholder = self.open_device(index, MemoryStore::new(), u64::MAX)?;
        drop(std::mem::replace(&mut self.devices[index], placeholder));
        let keep = self.rng.below(store.unsynced_batches() as u64 + 1);
        store.simulate_power_loss(usize::try_from(keep).unwrap_or(usize::MAX));
        self.devices[index] = self.open_device(index, store, restarts)?;
        self.verified.retain(|(holder, _)| *holder != index);
        self.report.replica_restarts += 1;
        // The same device: the same id, and every write it acknowledged reads back (it
        // or a version that orders after it), since acknowledged writes are synced.
        let replica = self.devices[index].engine.replica().clone();
        if replica.node_id() != node_before {
            return Err(fail(
                seed,
                format!(
                    "replica {index} came back from a restart as node {:?}, not {node_before:?}",
                    replica.node_id()
                ),
            ));
        }
        for a in self.acked.iter().filter(|a| a.device == index) {
            let head = replica
                .ledger()
                .record_head(&tenant(), &a.record)
                .map_err(|e| fail(seed, e.to_string()))?;
            if head.is_none_or(|h| h.winner.order_key() < a.order) {
                return Err(fail(
                    seed,
                    format!(
                        "replica {index} does not read back its acknowledged {} {} of record {} after a restart",
                        if a.delete { "delete" } else { "write" },
                        a.order.1,
                        a.record
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A device's clock jumps to a new offset, often backwards.
    fn jump_clock(&mut self, index: usize) {
        let skew = i64::try_from(self.config.faults.clock_skew_ms_max).unwrap_or(i64::MAX / 4);
        let span = u64::try_from(skew.saturating_mul(2)).unwrap_or(0) + 1;
        let offset = i64::try_from(self.clock_rng.below(span)).unwrap_or(0) - skew;
        self.report.clock_jumps += 1;
        if self.clocks[index].jump_to(offset) {
            self.report.clock_jumps_back += 1;
        }
    }

    fn restart_node(&mut self) -> Result<(), SimFailure> {
        self.net.nodes.remove(&self.endpoint);
        self.node = Replica::in_memory().map_err(|e| fail(self.config.seed, e.to_string()))?;
        let keep = self
            .rng
            .below(self.node_store.unsynced_batches() as u64 + 1);
        self.node_store
            .simulate_power_loss(usize::try_from(keep).unwrap_or(usize::MAX));
        self.report.node_restarts += 1;
        self.start_node()?;
        self.verified.retain(|(holder, _)| *holder != NODE);
        Ok(())
    }

    fn write(&mut self, index: usize) -> Result<Option<ProgressToken>, SimFailure> {
        let seed = self.config.seed;
        let mine = targets_in(&scope_of(index, self.config.mixed_scopes));
        let target = mine[usize::try_from(self.rng.below(mine.len() as u64)).unwrap_or(0)];
        let (protocol, path) = targets()[target].clone();
        let key = self.rng.below(u64::from(self.config.keys));
        let replica = self.devices[index].engine.replica().clone();
        let record = record_of(target, key);
        let delete = self.rng.chance(200) && matches!(replica.get(&tenant(), &record), Ok(Some(_)));
        // The version this write replaces, to check the write orders after it.
        let replaced = replica
            .ledger()
            .record_head(&tenant(), &record)
            .ok()
            .flatten()
            .map(|h| h.winner);
        let restarts = self.devices[index].restarts;
        if let Some(v) = replaced
            && v.timestamp.wall_ms > self.clocks[index].now_ms()
        {
            self.report.writes_over_future_versions += 1;
            let earlier = (0..restarts).any(|r| self.future_versions.contains(&(index, record, r)));
            self.report.writes_over_future_versions_after_restart += u64::from(earlier);
            self.future_versions.insert((index, record, restarts));
        }
        let blob = !delete && self.rng.chance(self.config.blob_writes);
        let result = if delete {
            replica.delete(&tenant(), record, &author())
        } else {
            // A blob is just above the inline limit, up to a few store chunks; half are
            // streamed with `write_blob`, half given whole to `put` (which stores them as
            // blobs). (The draws stay in this order: seeds replay.)
            let (value, streamed) = if blob {
                let len = INLINE_DATA_BYTES_MAX + 1 + self.rng.below(160 * 1024);
                let mut value = format!("r{index} v{} ", self.rng.next_u64()).into_bytes();
                let fill = u8::try_from(self.rng.below(256)).unwrap_or(0);
                value.resize(usize::try_from(len).unwrap_or(0), fill);
                (value, self.rng.chance(500))
            } else {
                (
                    format!("r{index} v{}", self.rng.next_u64()).into_bytes(),
                    false,
                )
            };
            if streamed {
                replica.write_blob(value.as_slice()).and_then(|data| {
                    let req = crate::replica::WriteRequest {
                        protocol: protocol.clone(),
                        path: path.clone(),
                        key: crate::replica::RecordKey::Natural(record_key(target, key)),
                        parent: None,
                        data: None,
                        author: author(),
                    };
                    replica.write_with_blob(&tenant(), req, data)
                })
            } else {
                replica.put(
                    &tenant(),
                    &protocol,
                    &path,
                    &record_key(target, key),
                    value,
                    &author(),
                )
            }
        };
        let Ok(receipt) = result else {
            return Ok(None);
        };
        if let crate::replica::WriteOutcome::Superseded { winner } = receipt.outcome {
            return Err(fail(
                seed,
                format!(
                    "replica {index}'s {} {} of record {record} was superseded at once by {winner} (it replaced {:?})",
                    if delete { "delete" } else { "write" },
                    receipt.cid,
                    replaced.map(|v| v.cid)
                ),
            ));
        }
        let Some(stored) = replica
            .ledger()
            .get_message(&tenant(), &receipt.cid)
            .map_err(|e| fail(seed, e.to_string()))?
        else {
            return Err(fail(
                seed,
                format!("acknowledged {} is not stored", receipt.cid),
            ));
        };
        let order = (stored.message.timestamp(), receipt.cid);
        if replaced.is_some_and(|v| v.order_key() >= order) {
            return Err(fail(
                seed,
                format!(
                    "replica {index}'s version {} does not order after the one it replaced",
                    receipt.cid
                ),
            ));
        }
        self.acked.push(Acked {
            record,
            order,
            delete,
            device: index,
        });
        if delete {
            self.report.deletes += 1;
        } else {
            self.report.writes += 1;
            self.report.blob_writes += u64::from(blob);
        }
        Ok(receipt.token)
    }

    fn ops(&self, index: usize) -> EngineOps<SimConnector> {
        EngineOps::new(self.devices[index].engine.clone())
    }

    /// Executes a live link's actions, feeding results back, until it has none left.
    async fn drive(&mut self, index: usize) {
        let ops = self.ops(index);
        let replica = self.devices[index].engine.replica().clone();
        loop {
            self.wake_on_local_changes(index);
            let Some(live) = self.devices[index].live.as_mut() else {
                return;
            };
            let Some(action) = live.machine.poll_action() else {
                return;
            };
            let state = live.machine.state().clone();
            match action {
                Action::Persist(state) => {
                    let _ = replica.ledger().links().save(&state, Durability::Buffered);
                }
                Action::Emit(event) => {
                    if matches!(event, sync_types::SyncEvent::RepairStarted { .. }) {
                        self.report.repairs += 1;
                    }
                }
                Action::ArmTimer { timer, at_ms } => {
                    live.timers.insert(timer, at_ms);
                }
                Action::CancelTimer(timer) => {
                    live.timers.remove(&timer);
                }
                Action::OpenSubscription { id, from } => {
                    live.feed = Some(SimFeed {
                        id,
                        cursor: from,
                        buffer: VecDeque::new(),
                        eose: None,
                        eose_sent: false,
                    });
                }
                Action::CloseSubscription => live.feed = None,
                Action::Push { ticket, after } => {
                    let result = ops.push(state, after).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.machine.handle_push_result(now, ticket, result);
                    }
                }
                Action::CatchUp { ticket, after } => {
                    let result = ops.catch_up(state, after).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.machine.handle_catch_up_result(now, ticket, result);
                    }
                }
                Action::Reconcile { ticket } => {
                    let result = ops.reconcile(state).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.machine.handle_reconcile_result(now, ticket, result);
                    }
                }
            }
        }
    }

    /// Fires the live link's timers that are due.
    async fn fire_timers(&mut self, index: usize) {
        let now = self.clock.now_ms();
        let Some(live) = self.devices[index].live.as_mut() else {
            return;
        };
        let due: Vec<Timer> = live
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            live.timers.remove(&timer);
            live.machine.handle_timer(now, timer);
        }
        self.drive(index).await;
    }

    fn end_feed(&mut self, index: usize, id: SubscriptionId, end: SubscriptionEnd) {
        let now = self.clock.now_ms();
        if let Some(live) = self.devices[index].live.as_mut() {
            live.machine.handle_subscription_end(now, id, end);
        }
    }

    /// Moves the live feed on, as the node's subscription loop would: reads the node's log
    /// after the feed's cursor, delivers a few entries (duplicating some, completing their
    /// applies out of order), sends end-of-stored-events, or cuts the feed.
    async fn deliver(&mut self, index: usize) {
        let Some(live) = self.devices[index].live.as_ref() else {
            return;
        };
        let Some(feed) = live.feed.as_ref() else {
            return;
        };
        let (id, cursor, need_page) = (feed.id, feed.cursor, feed.buffer.is_empty());
        let scope = live.machine.state().scope.clone();
        let cut_per_mille = self
            .net
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_loss
            / 2;
        if self.rng.chance(cut_per_mille) || self.net.is_partitioned(index) {
            self.report.feeds_cut += 1;
            // Some cuts are errors reported by the node (a handler failure, revoked
            // credentials), which send the link to repair rather than a reconnect.
            let end = if self.rng.chance(333) {
                SubscriptionEnd::Error("node reported an error".into())
            } else {
                SubscriptionEnd::Disconnected
            };
            self.end_feed(index, id, end);
            self.drive(index).await;
            return;
        }
        if need_page {
            let request = LogPageRequest {
                tenant: tenant(),
                scope,
                from: cursor,
                filter: LogFilter::default(),
                limit: 4,
            };
            let reply = match self.devices[index]
                .engine
                .connector()
                .connect(&self.endpoint, Some(&self.token))
            {
                Ok(remote) => remote.log_page(request).await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(LogPageReply::Page(page)) => {
                    let live = self.devices[index].live.as_mut();
                    if let Some(feed) = live.and_then(|l| l.feed.as_mut()).filter(|f| f.id == id) {
                        feed.buffer
                            .extend(page.entries.into_iter().map(|e| LogEntry {
                                token: e.token,
                                message: e.item.message,
                                data: e.item.data,
                            }));
                        feed.cursor = page.next.or(feed.cursor);
                        if !page.has_more && !feed.eose_sent {
                            feed.eose = Some(page.next);
                        }
                    }
                }
                Ok(LogPageReply::Gap(gap)) => self.end_feed(index, id, SubscriptionEnd::Gap(gap)),
                Err(_) => {
                    self.report.feeds_cut += 1;
                    self.end_feed(index, id, SubscriptionEnd::Disconnected);
                }
            }
            self.drive(index).await;
        }
        let ops = self.ops(index);
        let mut done = Vec::new();
        // Half the rounds apply each delivery at once; the others queue them and apply
        // them in one batch at the end, as the live driver does with the events that
        // arrive together (duplicates may then share a batch).
        let batched = self.rng.chance(500);
        let mut queued: Vec<(crate::delivery::Ordinal, LogEntry)> = Vec::new();
        for _ in 0..self.rng.below(4) + 1 {
            let Some(feed) = self.devices[index]
                .live
                .as_mut()
                .and_then(|l| l.feed.as_mut())
            else {
                break;
            };
            if feed.id != id {
                break;
            }
            let Some(entry) = feed.buffer.pop_front() else {
                break;
            };
            let copies = if self.rng.chance(80) {
                self.report.deliveries_duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let now = self.clock.now_ms();
                let Some(live) = self.devices[index].live.as_mut() else {
                    return;
                };
                let class = ops.classify(live.machine.state(), &entry);
                if let EventDecision::Apply(ordinal) =
                    live.machine.handle_event(now, id, entry.token, class)
                {
                    if batched {
                        queued.push((ordinal, entry.clone()));
                    } else {
                        let state = live.machine.state().clone();
                        done.push((ordinal, ops.apply(state, entry.clone()).await));
                    }
                }
            }
        }
        if !queued.is_empty()
            && let Some(live) = self.devices[index].live.as_ref()
        {
            let state = live.machine.state().clone();
            let (ordinals, entries): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
            let results = ops.apply_batch(state, entries).await;
            assert_eq!(results.len(), ordinals.len(), "one result per live event");
            done.extend(ordinals.into_iter().zip(results));
        }
        for i in (1..done.len()).rev() {
            let j = usize::try_from(self.rng.below(i as u64 + 1)).unwrap_or(0);
            done.swap(i, j);
        }
        let now = self.clock.now_ms();
        if let Some(live) = self.devices[index].live.as_mut() {
            for (ordinal, result) in done {
                live.machine.handle_applied(now, id, ordinal, result);
            }
            if let Some(feed) = live
                .feed
                .as_mut()
                .filter(|f| f.id == id && f.buffer.is_empty())
                && let Some(cursor) = feed.eose.take()
            {
                feed.eose_sent = true;
                live.machine.handle_eose(now, id, cursor);
            }
        }
        self.drive(index).await;
    }

    async fn local_write(&mut self, index: usize) -> Result<(), SimFailure> {
        if self.write(index)?.is_some() {
            // The write's change wakes the link, as every local change does.
            self.drive(index).await;
        }
        Ok(())
    }

    /// Hands the replica's local changes (writes, and versions a conflict policy wrote)
    /// to its live link, as `LiveSync` does with the replica's change feed.
    fn wake_on_local_changes(&mut self, index: usize) {
        use tokio::sync::broadcast::error::TryRecvError;
        let now = self.clock.now_ms();
        let device = &mut self.devices[index];
        loop {
            let head = match device.changes.try_recv() {
                Ok(change) if change.origin == crate::replica::Origin::Local => change.token,
                Ok(_) => continue,
                Err(TryRecvError::Lagged(_)) => {
                    match device.engine.replica().ledger().log_head(&tenant()) {
                        Ok(Some(head)) => head,
                        _ => continue,
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            };
            if let Some(live) = device.live.as_mut() {
                live.machine.handle_local_write(now, head);
            }
        }
    }

    fn stop_faults(&self) {
        self.net
            .partitioned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.net.faults.lock().unwrap_or_else(|e| e.into_inner()) = Faults {
            request_loss: 0,
            response_loss: 0,
            duplicate: 0,
            partition: 0,
            replica_restart: 0,
            node_restart: 0,
            latency_ms_max: 0,
            blob_cut: 0,
            blob_corrupt: 0,
            clock_skew_ms_max: self.config.faults.clock_skew_ms_max,
            clock_jump: 0,
        };
    }

    /// Checks that every record a holder (a replica's index, or [`NODE`]) reports
    /// resident has its blob stored, of the announced size and hashing to its id: a
    /// record is never resident before its verified blob. Returns the staged records.
    fn check_residency(&mut self, holder: usize) -> Result<Vec<RecordId>, SimFailure> {
        let seed = self.config.seed;
        let (replica, scope) = match holder {
            NODE => (self.node.clone(), Scope::Full),
            i => (
                self.devices[i].engine.replica().clone(),
                scope_of(i, self.config.mixed_scopes),
            ),
        };
        let who = match holder {
            NODE => "the node".to_owned(),
            i => format!("replica {i}"),
        };
        let mut staged = Vec::new();
        for target in targets_in(&scope) {
            for k in 0..self.config.keys {
                let record = record_of(target, u64::from(k));
                let Some(rec) = replica
                    .get_with_tombstone(&tenant(), &record)
                    .map_err(|e| fail(seed, e.to_string()))?
                else {
                    continue;
                };
                let blob = rec.data_ref.filter(|d| !d.is_inline());
                match (rec.residency, blob) {
                    (Residency::Staged, _) => staged.push(record),
                    (Residency::Resident, Some(data))
                        if !self.verified.contains(&(holder, data.data_cid)) =>
                    {
                        let bytes = replica
                            .read_blob(&data.data_cid, 0, data.size)
                            .map_err(|e| {
                                fail(
                                    seed,
                                    format!(
                                        "{who} reports record {record} resident, but its blob {} cannot be read: {e}",
                                        data.data_cid
                                    ),
                                )
                            })?;
                        if DataRef::of(&bytes) != data {
                            return Err(fail(
                                seed,
                                format!(
                                    "{who} reports record {record} resident, but its blob {} does not verify",
                                    data.data_cid
                                ),
                            ));
                        }
                        self.verified.insert((holder, data.data_cid));
                    }
                    _ => {}
                }
            }
        }
        Ok(staged)
    }

    /// The staged records of each holder, for a failure message.
    fn staged_summary(&mut self) -> Result<String, SimFailure> {
        let mut out = String::new();
        for holder in (0..self.devices.len()).chain([NODE]) {
            let staged = self.check_residency(holder)?;
            if !staged.is_empty() {
                let who = match holder {
                    NODE => "the node".to_owned(),
                    i => format!("replica {i}"),
                };
                out.push_str(&format!("; {who} has staged records {staged:?}"));
                let replica = match holder {
                    NODE => self.node.clone(),
                    i => self.devices[i].engine.replica().clone(),
                };
                for r in &staged {
                    let rec = replica.get_with_tombstone(&tenant(), r).ok().flatten();
                    if let Some(d) = rec.and_then(|r| r.data_ref) {
                        out.push_str(&format!(
                            " (blob {}: wanted at {:?}, on the node: {:?})",
                            d.data_cid,
                            replica.ledger().blobs().upload_offset(&d.data_cid),
                            self.node.ledger().blobs().has(&d.data_cid)
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`check_residency`](Self::check_residency) on every replica and the node; returns
    /// whether any record is staged.
    fn check_all_residency(&mut self) -> Result<bool, SimFailure> {
        let mut any_staged = false;
        for holder in (0..self.devices.len()).chain([NODE]) {
            any_staged |= !self.check_residency(holder)?.is_empty();
        }
        Ok(any_staged)
    }

    /// Whether every replica holds exactly what the node holds in its scope, with every
    /// blob arrived.
    fn converged(&mut self) -> Result<bool, SimFailure> {
        if self.check_all_residency()? {
            return Ok(false);
        }
        let seed = self.config.seed;
        let err = |e: crate::Error| fail(seed, e.to_string());
        for (i, d) in self.devices.iter().enumerate() {
            let scope = scope_of(i, self.config.mixed_scopes);
            let replica = d.engine.replica();
            let mine = replica.root(&tenant(), &scope).map_err(err)?;
            if mine != self.node.root(&tenant(), &scope).map_err(err)?
                || mine != replica.root(&tenant(), &Scope::Full).map_err(err)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn step(&mut self) -> Result<(), SimFailure> {
        let n = self.devices.len();
        let index = usize::try_from(self.rng.below(n as u64)).unwrap_or(0);
        let faults = self.config.faults.clone();
        let roll = self.rng.below(1000);
        if roll < 450 {
            self.local_write(index).await?;
        } else if roll < 800 {
            match self.config.mode {
                SimMode::Poll => {
                    self.devices[index].engine.sync_once().await;
                    self.report.syncs += 1;
                }
                SimMode::Live => {
                    self.fire_timers(index).await;
                    self.deliver(index).await;
                }
            }
        } else if self.rng.chance(faults.partition * 5) {
            let mut partitioned = self
                .net
                .partitioned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !partitioned.remove(&index) {
                partitioned.insert(index);
                self.report.partitions += 1;
            }
        } else if self.rng.chance(faults.replica_restart * 5) {
            self.restart_device(index)?;
            self.drive(index).await;
        } else if self.rng.chance(faults.node_restart * 5) {
            self.restart_node()?;
        } else if self.clock_rng.chance(faults.clock_jump * 5) {
            self.jump_clock(index);
        }
        tokio::time::sleep(Duration::from_millis(self.rng.below(200))).await;
        self.check_all_residency()?;
        Ok(())
    }

    async fn settle(&mut self) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        if self.config.settle_rounds_max == 0 {
            // No settling: the checks then see the replicas as the faults left them.
            return Ok(());
        }
        self.stop_faults();
        if self.config.mode == SimMode::Live {
            return self.settle_live().await;
        }
        for round in 1..=self.config.settle_rounds_max {
            for device in &self.devices {
                device.engine.sync_once().await;
            }
            if self.converged()? {
                self.report.settle_rounds = round as u64;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let staged = self.staged_summary()?;
        Err(fail(
            seed,
            format!(
                "roots still differ or records are staged after {} sync rounds without faults{staged}",
                self.config.settle_rounds_max
            ),
        ))
    }

    /// Live links settle by themselves: the loop only runs their timers and feeds, for up
    /// to 20 virtual minutes (several degraded polls and integrity reconciles).
    async fn settle_live(&mut self) -> Result<(), SimFailure> {
        let deadline = self.clock.now_ms() + 20 * 60 * 1000;
        let mut iterations = 0u64;
        while self.clock.now_ms() < deadline {
            iterations += 1;
            for i in 0..self.devices.len() {
                self.drive(i).await;
                self.fire_timers(i).await;
                self.deliver(i).await;
            }
            if self.converged()? {
                self.report.settle_rounds = iterations;
                return Ok(());
            }
            let next_timer = self
                .devices
                .iter()
                .filter_map(|d| d.live.as_ref()?.timers.values().min().copied())
                .min()
                .unwrap_or(u64::MAX);
            let wait = next_timer.saturating_sub(self.clock.now_ms()).clamp(1, 250);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        Err(fail(
            self.config.seed,
            format!(
                "live links did not converge within 20 virtual minutes without faults{}",
                self.staged_summary()?
            ),
        ))
    }

    fn check(&mut self) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        let records = |r: &Replica,
                       scope: &Scope|
         -> Result<Vec<(RecordId, sync_types::Cid, bool)>, SimFailure> {
            let mut out = Vec::new();
            for target in targets_in(scope) {
                for k in 0..self.config.keys {
                    let record = record_of(target, u64::from(k));
                    if let Some(rec) = r
                        .get_with_tombstone(&tenant(), &record)
                        .map_err(|e| fail(seed, e.to_string()))?
                    {
                        out.push((record, rec.cid, rec.deleted));
                    }
                }
            }
            Ok(out)
        };
        for (i, d) in self.devices.iter().enumerate() {
            let scope = scope_of(i, self.config.mixed_scopes);
            let expected = records(&self.node, &scope)?;
            let got = records(d.engine.replica(), &scope)?;
            if got != expected {
                return Err(fail(
                    seed,
                    format!("replica {i} records differ from the node's: {got:?} vs {expected:?}"),
                ));
            }
        }
        for holder in (0..self.devices.len()).chain([NODE]) {
            let staged = self.check_residency(holder)?;
            if !staged.is_empty() {
                return Err(fail(
                    seed,
                    format!(
                        "{} still has staged records (blobs that never arrived): {staged:?}",
                        if holder == NODE {
                            "the node".to_owned()
                        } else {
                            format!("replica {holder}")
                        }
                    ),
                ));
            }
        }
        if !self.converged()? {
            return Err(fail(
                seed,
                "a replica's tree differs from the node's over its scope, or it holds messages outside its scope",
            ));
        }
        let ledger = self.node.ledger();
        for a in &self.acked {
            let head = ledger
                .record_head(&tenant(), &a.record)
                .map_err(|e| fail(seed, e.to_string()))?
                .ok_or_else(|| {
                    fail(
                        seed,
                        format!(
                            "acknowledged {} of record {} is lost: no record",
                            if a.delete { "delete" } else { "write" },
                            a.record
                        ),
                    )
                })?;
            if head.winner.order_key() < a.order {
                return Err(fail(
                    seed,
                    format!(
                        "acknowledged {} {} of record {} lost: the winner {} orders before it",
                        if a.delete { "delete" } else { "write" },
                        a.order.1,
                        a.record,
                        head.winner.cid
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl World {
    /// Fills in the report's outcome of the run: the node's root, its records and
    /// tombstones, and the digest of the acknowledged writes.
    fn outcome(&mut self) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        self.report.root = self
            .node
            .root(&tenant(), &Scope::Full)
            .map_err(|e| fail(seed, e.to_string()))?;
        for target in targets_in(&Scope::Full) {
            for k in 0..self.config.keys {
                let record = record_of(target, u64::from(k));
                match self
                    .node
                    .get_with_tombstone(&tenant(), &record)
                    .map_err(|e| fail(seed, e.to_string()))?
                {
                    Some(rec) if rec.deleted => self.report.tombstones += 1,
                    Some(_) => self.report.records += 1,
                    None => {}
                }
            }
        }
        let mut digest = Fnv64::default();
        for a in &self.acked {
            digest.write(&(a.device as u64).to_le_bytes());
            digest.write(a.record.as_bytes());
            digest.write(a.order.1.as_bytes());
            digest.write(&[u8::from(a.delete)]);
        }
        self.report.acked_digest = digest.0;
        Ok(())
    }
}

/// FNV-1a, 64 bits: a digest stable across builds and platforms.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Runs one simulation; see the module docs.
pub async fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    let seed = config.seed;
    let clock = Arc::new(SimClock {
        start: tokio::time::Instant::now(),
        base_ms: 1_700_000_000_000,
    });
    let key = TokenKey::derive(&seed.to_be_bytes());
    let token = Token::issue(
        &key,
        Claims::owner(
            tenant(),
            author(),
            GrantId::new("sim").expect("valid"),
            u64::MAX,
        ),
    )
    .to_string();
    let net = Arc::new(SimNet {
        rng: Mutex::new(SimRng::new(seed ^ 0x5eed)),
        faults: Mutex::new(config.faults.clone()),
        partitioned: Mutex::default(),
        counters: Counters::default(),
        nodes: InProcessConnector::new(),
    });
    let mut clock_rng = SimRng::new(seed ^ 0xc10c_c10c);
    let policy = config.policy.unwrap_or_else(|| {
        SimPolicy::ALL[usize::try_from(clock_rng.below(SimPolicy::ALL.len() as u64)).unwrap_or(0)]
    });
    let skew = i64::try_from(config.faults.clock_skew_ms_max).unwrap_or(i64::MAX / 4);
    let clocks = (0..config.replicas)
        .map(|i| {
            let span = u64::try_from(skew.saturating_mul(2)).unwrap_or(0) + 1;
            let drawn = i64::try_from(clock_rng.below(span)).unwrap_or(0) - skew;
            let offset = config.clock_offsets_ms.get(i).copied().unwrap_or(drawn);
            let base: Arc<dyn Clock + Send + Sync> = clock.clone();
            Arc::new(DeviceClock::new(base, offset))
        })
        .collect();
    let mut world = World {
        rng: SimRng::new(seed),
        clock_rng,
        clocks,
        policy,
        future_versions: HashSet::new(),
        endpoint: Endpoint::new("http://node.sim").expect("valid"),
        node: Replica::in_memory().map_err(|e| fail(seed, e.to_string()))?,
        node_store: MemoryStore::new(),
        devices: Vec::new(),
        acked: Vec::new(),
        verified: HashSet::new(),
        report: SimReport {
            seed,
            policy: Some(policy),
            ..SimReport::default()
        },
        token,
        key,
        net,
        clock,
        config,
    };
    world.start_node()?;
    for i in 0..world.config.replicas {
        let device = world.open_device(i, MemoryStore::new(), 0)?;
        let scope = scope_of(i, world.config.mixed_scopes);
        for protocol in [kv(), docs()] {
            if scope
                .protocol_list()
                .is_some_and(|ps| !ps.contains(&&protocol))
            {
                continue;
            }
            let types = targets()
                .into_iter()
                .filter(|(p, _)| *p == protocol)
                .map(|(_, path)| TypeRule {
                    path,
                    data_bytes_max: None,
                })
                .collect();
            device
                .engine
                .replica()
                .configure(&tenant(), &protocol, types, vec![], &author())
                .map_err(|e| fail(seed, format!("configure: {e}")))?;
        }
        world.devices.push(device);
    }
    for _ in 0..world.config.steps {
        world.step().await?;
    }
    world.settle().await?;
    world.check()?;
    world.outcome()?;
    let c = &world.net.counters;
    world.report.requests_lost = c.requests_lost.load(Ordering::Relaxed);
    world.report.responses_lost = c.responses_lost.load(Ordering::Relaxed);
    world.report.duplicated = c.duplicated.load(Ordering::Relaxed);
    world.report.blob_faults = c.blob_faults.load(Ordering::Relaxed);
    Ok(world.report)
}

/// Runs one simulation on a fresh single-threaded runtime with a paused clock.
pub fn run_blocking(config: SimConfig) -> Result<SimReport, SimFailure> {
    let seed = config.seed;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| fail(seed, format!("runtime: {e}")))?;
    runtime.block_on(run(config))
}
