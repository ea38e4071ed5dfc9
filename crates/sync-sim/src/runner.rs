//! Running a simulation: build the world, play the steps, settle without faults, check.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_engine::Replica;
use sync_engine::sync::InProcessConnector;
use sync_ledger::MemoryStore;
use sync_transport::{Claims, Token, TokenKey};
use sync_types::{Clock, Endpoint, GrantId, TypeRule};

use crate::clock::{DeviceClock, SimClock};
use crate::net::{Counters, SimNet};
use crate::report::fail;
use crate::workload::{author, docs, kv, scope_of, targets, tenant};
use crate::world::World;
use crate::{SimConfig, SimFailure, SimMode, SimPolicy, SimReport, SimRng};

impl World {
    pub(crate) async fn settle(&mut self) -> Result<(), SimFailure> {
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
    pub(crate) async fn settle_live(&mut self) -> Result<(), SimFailure> {
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
