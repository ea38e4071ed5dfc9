//! The deterministic simulation (see the `sync_sim` crate): many seeds of replicas and a
//! node over a faulty network (blob transfers cut short and corrupted too), each replica
//! with its own skewed, jumping clock, restarted cold from its store, under a conflict
//! policy drawn per seed; each run checked for convergence, every record resident with a
//! verified blob, no record resident before its blob, no lost acknowledged write, no
//! undone delete, every local write acknowledged as its record's winner, and identity
//! and acknowledged writes kept across restarts.
//!
//! - `cargo test -p sync-sim --test simulation`: the CI run, 550 seeds: 300 poll
//!   (`SIM_SEEDS`), 200 live (`SIM_LIVE_SEEDS`), 25 + 25 with mixed scopes (`SIM_MIXED_SEEDS`).
//! - `SIM_SEEDS=20000 SIM_FIRST_SEED=1000000 cargo test --release -p sync-sim --test simulation many_seeds`:
//!   a longer run.
//! - `SIM_SEED=<seed> cargo test -p sync-sim --test simulation replay`: one seed again
//!   (`SIM_MODE=live` for a live run, `SIM_MIXED=1` for mixed scopes, `SIM_BLOB_WRITES`
//!   as below; `-- --nocapture` shows its report).
//! - `SIM_BLOB_WRITES=<per mille>`: the share of writes whose payload is a blob (150).
//! - `SIM_SCENARIO_SEEDS=<n>`: seeds of issue 15's scenario (10, each run under all four
//!   conflict policies).
//!
//! Every seed runs with skewed and jumping clocks, cold restarts and a drawn conflict
//! policy (`Faults::default`, `SimConfig::policy`).

// The figures of a run are reported on stderr, like a bench table.
#![allow(clippy::print_stderr)]

use sync_sim::{Faults, SimConfig, SimMode, SimPolicy, run_blocking};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seeds that once failed, kept so they are run on every test run.
/// - 158, 236 (poll): a blob download failed verification twice, which removed its
///   wanted entry, so its record stayed staged for good.
/// - 2000326, 2001590 (poll): the same entry wanted again after a failed verification
///   was lost by a power loss that kept the failed transfer's deletion (the two were
///   separate commits); a mismatch now keeps the entry in the commit that deletes.
const REGRESSIONS: &[u64] = &[158, 236, 2_000_326, 2_001_590];

#[test]
fn many_seeds() {
    run_seeds(SimMode::Poll, env_u64("SIM_SEEDS", 300));
}

#[test]
fn many_live_seeds() {
    run_seeds(SimMode::Live, env_u64("SIM_LIVE_SEEDS", 200));
}

/// Replicas with the full scope, a protocol set and a projection, in both modes.
#[test]
fn many_mixed_scope_seeds() {
    // Mixed-scope runs cost about twice a full-scope run (three scopes, projections built
    // on demand), so fewer of them keep the binary within CI's time.
    let count = env_u64("SIM_MIXED_SEEDS", 25);
    run_seeds_with(SimMode::Poll, count, true);
    run_seeds_with(SimMode::Live, count, true);
}

fn run_seeds(mode: SimMode, count: u64) {
    run_seeds_with(mode, count, false);
}

fn run_seeds_with(mode: SimMode, count: u64, mixed_scopes: bool) {
    let first = env_u64("SIM_FIRST_SEED", 0);
    let mut faults = 0;
    let mut writes = 0;
    let mut blob_writes = 0;
    let blob_share = u32::try_from(env_u64("SIM_BLOB_WRITES", 150)).unwrap_or(150);
    let mut failures = Vec::new();
    let mut policies = std::collections::BTreeMap::new();
    let (mut jumps_back, mut over_future, mut over_future_restarted) = (0, 0, 0);
    for seed in REGRESSIONS.iter().copied().chain(first..first + count) {
        match run_blocking(SimConfig {
            mode,
            mixed_scopes,
            blob_writes: blob_share,
            ..SimConfig::new(seed)
        }) {
            Ok(report) => {
                *policies.entry(format!("{:?}", report.policy)).or_insert(0) += 1;
                jumps_back += report.clock_jumps_back;
                over_future += report.writes_over_future_versions;
                over_future_restarted += report.writes_over_future_versions_after_restart;
                faults += report.faults();
                writes += report.writes + report.deletes;
                blob_writes += report.blob_writes;
            }
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    eprintln!(
        "{mode:?} (mixed scopes: {mixed_scopes}): {count} seeds from {first}: {writes} acknowledged writes ({blob_writes} with blobs), {faults} faults injected ({jumps_back} clocks jumped back), {over_future} writes over a version stamped ahead of the writer's clock ({over_future_restarted} after a restart), policies {policies:?}, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        count == 0 || faults > count,
        "the runs must actually inject faults"
    );
    assert!(
        count < 10 || blob_share == 0 || blob_writes > 0,
        "the runs must actually write blobs"
    );
    assert!(
        count < 50 || (jumps_back > 0 && over_future > 0 && policies.len() == 4),
        "the runs must actually jump clocks back, write over versions from fast clocks, and draw every policy"
    );
}

/// Issue 15's lost write, in the simulation: two replicas, one clock 30 s ahead and one
/// 30 s behind, few records and many cold restarts, so the slow replica often edits a
/// version from the fast one, restarts, and edits it again. Every run must pass (each
/// write is checked to win at once) and the runs must include that sequence.
#[test]
fn edits_over_a_fast_clocks_versions_survive_cold_restarts() {
    let mut after_restart = 0;
    let count = env_u64("SIM_SCENARIO_SEEDS", 10);
    for seed in 0..count {
        for policy in SimPolicy::ALL {
            let config = SimConfig {
                replicas: 2,
                keys: 2,
                clock_offsets_ms: vec![30_000, -30_000],
                policy: Some(policy),
                faults: Faults {
                    replica_restart: 120,
                    clock_jump: 0,
                    ..Faults::default()
                },
                ..SimConfig::new(3_000_000 + seed)
            };
            let report = run_blocking(config).unwrap_or_else(|f| panic!("{f}"));
            assert!(report.replica_restarts > 0, "{report:?}");
            after_restart += report.writes_over_future_versions_after_restart;
        }
    }
    assert!(
        after_restart > 0,
        "no run edited a fast clock's version again after a restart"
    );
}

#[test]
fn a_seed_replays_exactly() {
    for mode in [SimMode::Poll, SimMode::Live] {
        let a = run_blocking(SimConfig {
            mode,
            ..SimConfig::new(42)
        })
        .unwrap();
        let b = run_blocking(SimConfig {
            mode,
            ..SimConfig::new(42)
        })
        .unwrap();
        assert_eq!(a, b);
        assert!(a.faults() > 0 && a.writes > 0, "{a:?}");
    }
}

#[test]
fn replay() {
    // Without SIM_SEED this replays seed 7, so the test always does something.
    let seed = env_u64("SIM_SEED", 7);
    let mode = if std::env::var("SIM_MODE").as_deref() == Ok("live") {
        SimMode::Live
    } else {
        SimMode::Poll
    };
    let mixed_scopes = std::env::var_os("SIM_MIXED").is_some();
    let blob_writes = u32::try_from(env_u64("SIM_BLOB_WRITES", 150)).unwrap_or(150);
    match run_blocking(SimConfig {
        mode,
        mixed_scopes,
        blob_writes,
        ..SimConfig::new(seed)
    }) {
        Ok(report) => eprintln!("{report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn the_checks_catch_replicas_that_did_not_converge() {
    // Without the settling syncs, some seeds must leave replicas apart, and the checks
    // must say so: otherwise they could not catch a real failure either.
    let caught = (0..20u64)
        .filter(|&seed| {
            let config = SimConfig {
                settle_rounds_max: 0,
                ..SimConfig::new(seed)
            };
            run_blocking(config).is_err_and(|f| f.message.contains("records differ"))
        })
        .count();
    assert!(caught > 0, "no unsettled run was reported");
}
