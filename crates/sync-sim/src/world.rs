//! The world of a run: the node and the devices (each a replica, its engine, its store
//! and its live link), opened, restarted cold and losing power.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use sync_engine::live::{EngineOps, LinkOps};
use sync_engine::machine::{LinkConfig, LinkMachine, SubscriptionId, Timer};
use sync_engine::sync::{Engine, Identity, SyncConfig};
use sync_engine::{ConflictPolicy, Replica, ReplicaHandler};
use sync_ledger::{Durability, Ledger, LogEntry, MemoryStore};
use sync_transport::{Node, ServerConfig, TokenKey};
use sync_types::{Clock, Endpoint, ProgressToken, RecordId};

use crate::clock::{DeviceClock, SimClock};
use crate::net::SimNet;
use crate::report::fail;
use crate::workload::{Acked, scope_of, tenant};
use crate::{Faults, SimConfig, SimConnector, SimFailure, SimMode, SimPolicy, SimReport, SimRng};

pub(crate) struct Device {
    pub(crate) store: MemoryStore,
    pub(crate) engine: Engine<SimConnector>,
    pub(crate) live: Option<LiveLink>,
    /// The replica's local changes, which wake its live link (as `LiveSync` does).
    pub(crate) changes: tokio::sync::broadcast::Receiver<sync_engine::Change>,
    /// Cold restarts so far.
    pub(crate) restarts: u64,
}

/// A link run by its machine, with the driver's state simulated: timers on the virtual
/// clock and a live feed read from the node's log.
pub(crate) struct LiveLink {
    pub(crate) machine: LinkMachine,
    pub(crate) timers: BTreeMap<Timer, u64>,
    pub(crate) feed: Option<SimFeed>,
    /// News the engine's operations reported for the link (the driver owns it, as
    /// `LiveDriver` does), handed to the machine in order.
    pub(crate) news: Arc<std::sync::Mutex<VecDeque<(sync_engine::link_news::LinkNews, u64)>>>,
}

pub(crate) struct SimFeed {
    pub(crate) id: SubscriptionId,
    pub(crate) cursor: Option<ProgressToken>,
    pub(crate) buffer: VecDeque<LogEntry>,
    pub(crate) eose: Option<Option<ProgressToken>>,
    pub(crate) eose_sent: bool,
}

pub(crate) struct World {
    pub(crate) config: SimConfig,
    pub(crate) rng: SimRng,
    pub(crate) net: Arc<SimNet>,
    pub(crate) clock: Arc<SimClock>,
    pub(crate) endpoint: Endpoint,
    pub(crate) token: String,
    pub(crate) key: TokenKey,
    pub(crate) node_store: MemoryStore,
    pub(crate) node: Replica,
    pub(crate) devices: Vec<Device>,
    pub(crate) acked: Vec<Acked>,
    pub(crate) report: SimReport,
    /// Each device's wall clock; it survives restarts (it is the hardware).
    pub(crate) clocks: Vec<Arc<DeviceClock>>,
    /// Draws for clocks and the policy, apart from the workload's, so adding them left
    /// the workload's draws as they were.
    pub(crate) clock_rng: SimRng,
    pub(crate) policy: SimPolicy,
    /// Per device, the records whose winner it held stamped ahead of its clock, with
    /// its restart count when it first saw them that way.
    pub(crate) future_versions: HashSet<(usize, RecordId, u64)>,
    /// Blobs already verified, per holder (a replica's index, or [`NODE`]); a holder's
    /// entries are forgotten when it restarts.
    pub(crate) verified: HashSet<(usize, sync_types::Cid)>,
}

/// The node's index in [`World::verified`].
pub(crate) const NODE: usize = usize::MAX;

impl World {
    /// Opens a replica from its store alone, as a new process does: the node id and the
    /// clock's high-water mark come from the store (the seed only picks the id of a
    /// store that has none).
    pub(crate) fn open_replica(
        &self,
        store: &MemoryStore,
        node: u64,
        incarnation: u64,
        clock: Arc<dyn Clock + Send + Sync>,
        policy: ConflictPolicy,
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

    pub(crate) fn start_node(&mut self) -> Result<(), SimFailure> {
        self.node = self.open_replica(
            &self.node_store.clone(),
            1_000,
            self.report.node_restarts,
            self.clock.clone(),
            ConflictPolicy::LastWriterWins,
        )?;
        let mut config = ServerConfig::new(self.key.clone());
        config.clock = self.clock.clone();
        let node = Node::new(Arc::new(ReplicaHandler::new(self.node.clone())), config);
        self.net.nodes.insert(self.endpoint.clone(), node);
        Ok(())
    }

    pub(crate) fn open_device(
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
                let config = LinkConfig {
                    jitter_seed: self.config.seed ^ index as u64,
                    ..LinkConfig::default()
                };
                let news = Arc::new(std::sync::Mutex::new(VecDeque::new()));
                let sink = news.clone();
                EngineOps::new(engine.clone()).own(
                    &link.key,
                    Arc::new(move |n, at_ms| {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back((n, at_ms));
                        true
                    }),
                );
                let mut machine = LinkMachine::new(link, config);
                let head = engine.replica().ledger().log_head(&tenant()).ok().flatten();
                machine.set_local_head(head);
                machine.handle_start(self.clock.now_ms());
                Some(LiveLink {
                    machine,
                    timers: BTreeMap::new(),
                    feed: None,
                    news,
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

    pub(crate) fn restart_device(&mut self, index: usize) -> Result<(), SimFailure> {
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
    pub(crate) fn jump_clock(&mut self, index: usize) {
        let skew = i64::try_from(self.config.faults.clock_skew_ms_max).unwrap_or(i64::MAX / 4);
        let span = u64::try_from(skew.saturating_mul(2)).unwrap_or(0) + 1;
        let offset = i64::try_from(self.clock_rng.below(span)).unwrap_or(0) - skew;
        self.report.clock_jumps += 1;
        if self.clocks[index].jump_to(offset) {
            self.report.clock_jumps_back += 1;
        }
    }

    pub(crate) fn restart_node(&mut self) -> Result<(), SimFailure> {
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

    pub(crate) fn stop_faults(&self) {
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
}
