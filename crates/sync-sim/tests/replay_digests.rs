//! Replay digests: a fixed sample of simulation seeds (12 poll, 12 live, 2 + 2 with mixed
//! scopes, without blobs), each run's observable outcome compared with the values committed in
//! `tests/replay_digests.txt`. A change meant to keep behaviour (a refactor) must leave
//! every line as it is: the same writes acknowledged, the same faults injected, the same
//! rounds to settle, the same final tree root.
//!
//! - `cargo test -p sync-sim --test replay_digests`: the check.
//! - `SIM_DIGESTS_WRITE=1 cargo test -p sync-sim --test replay_digests`: writes the
//!   file again from the current behaviour, for a change that alters runs on purpose
//!   (the commit then says why the runs changed).
//!
//! A line that differs names its seed and how to replay it (the `replay` test of
//! `tests/simulation.rs`).
//!
//! The sample runs without blobs (`blob_writes: 0`), so that every run replays bit for
//! bit. With blobs, a push uploads them while it sends its other messages (concurrent
//! branches of one step), and the engine's blocking tasks (`spawn_blocking`, on real
//! threads) decide which branch draws from the network's generator first: such a run
//! replays the same steps, writes and faults, but its versions may carry other
//! timestamps, so its root and version ids differ from one run to the next (seed 10 in
//! poll mode does, about half the time). Without blobs every step is sequential.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sync_sim::{SimConfig, SimMode, SimReport, run_blocking};

/// The sample: (mode, mixed scopes, seeds).
const SAMPLE: &[(SimMode, bool, std::ops::Range<u64>)] = &[
    (SimMode::Poll, false, 0..12),
    (SimMode::Live, false, 0..12),
    (SimMode::Poll, true, 0..2),
    (SimMode::Live, true, 0..2),
];

fn digests_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/replay_digests.txt")
}

/// The name of a run: its mode, scopes and seed.
fn run_name(mode: SimMode, mixed: bool, seed: u64) -> String {
    let mode = match mode {
        SimMode::Poll => "poll",
        SimMode::Live => "live",
    };
    let scopes = if mixed { "mixed" } else { "full" };
    format!("{mode}/{scopes}/{seed}")
}

/// How to replay a run.
fn replay_command(mode: SimMode, mixed: bool, seed: u64) -> String {
    let mode = match mode {
        SimMode::Poll => "poll",
        SimMode::Live => "live",
    };
    let mixed = if mixed { " SIM_MIXED=1" } else { "" };
    format!(
        "SIM_SEED={seed} SIM_MODE={mode}{mixed} SIM_BLOB_WRITES=0 cargo test -p sync-sim --test simulation -- --exact replay --nocapture"
    )
}

/// A run's outcome as `name=value` fields, in a fixed order.
fn fields(r: &SimReport) -> Vec<(&'static str, String)> {
    vec![
        (
            "policy",
            r.policy
                .map_or_else(|| "none".to_owned(), |p| format!("{p:?}")),
        ),
        ("writes", r.writes.to_string()),
        ("deletes", r.deletes.to_string()),
        ("blob_writes", r.blob_writes.to_string()),
        ("syncs", r.syncs.to_string()),
        ("requests_lost", r.requests_lost.to_string()),
        ("responses_lost", r.responses_lost.to_string()),
        ("duplicated", r.duplicated.to_string()),
        ("blob_faults", r.blob_faults.to_string()),
        ("partitions", r.partitions.to_string()),
        ("replica_restarts", r.replica_restarts.to_string()),
        ("node_restarts", r.node_restarts.to_string()),
        ("clock_jumps", r.clock_jumps.to_string()),
        ("clock_jumps_back", r.clock_jumps_back.to_string()),
        ("feeds_cut", r.feeds_cut.to_string()),
        ("deliveries_duplicated", r.deliveries_duplicated.to_string()),
        ("repairs", r.repairs.to_string()),
        (
            "over_future",
            format!(
                "{}/{}",
                r.writes_over_future_versions, r.writes_over_future_versions_after_restart
            ),
        ),
        ("settle_rounds", r.settle_rounds.to_string()),
        ("records", r.records.to_string()),
        ("tombstones", r.tombstones.to_string()),
        ("acked", format!("{:016x}", r.acked_digest)),
        ("root", r.root.to_hex()),
    ]
}

fn line(fields: &[(&'static str, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The committed lines: run name to its fields.
fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, rest)| (name.to_owned(), rest.to_owned()))
        .collect()
}

/// The fields of `expected` and `got` that differ, as `name: expected -> got`.
fn differences(expected: &str, got: &str) -> Vec<String> {
    let split = |s: &str| -> BTreeMap<String, String> {
        s.split(' ')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let (expected, got) = (split(expected), split(got));
    let mut names: Vec<&String> = expected.keys().chain(got.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(none)", String::as_str).to_owned();
            format!("{k}: {} -> {}", show(expected.get(k)), show(got.get(k)))
        })
        .collect()
}

#[test]
fn a_sample_of_seeds_replays_to_the_committed_outcomes() {
    let mut runs = Vec::new();
    for (mode, mixed, seeds) in SAMPLE {
        for seed in seeds.clone() {
            let report = run_blocking(SimConfig {
                mode: *mode,
                mixed_scopes: *mixed,
                blob_writes: 0,
                ..SimConfig::new(seed)
            })
            .unwrap_or_else(|failure| panic!("{failure}"));
            runs.push((*mode, *mixed, seed, line(&fields(&report))));
        }
    }
    if std::env::var_os("SIM_DIGESTS_WRITE").is_some() {
        let mut text = String::from(
            "# The outcome of each run of the replay sample (tests/replay_digests.rs).\n\
             # Regenerate: SIM_DIGESTS_WRITE=1 cargo test -p sync-sim --test replay_digests\n",
        );
        for (mode, mixed, seed, fields) in &runs {
            text.push_str(&format!("{} {fields}\n", run_name(*mode, *mixed, *seed)));
        }
        std::fs::write(digests_file(), text).expect("write the digests file");
        return;
    }
    let text = std::fs::read_to_string(digests_file()).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (SIM_DIGESTS_WRITE=1 writes it)",
            digests_file().display()
        )
    });
    let mut expected = parse(&text);
    let mut failures = Vec::new();
    for (mode, mixed, seed, got) in &runs {
        let name = run_name(*mode, *mixed, *seed);
        match expected.remove(&name) {
            None => failures.push(format!("{name}: no committed outcome")),
            Some(want) if want != *got => failures.push(format!(
                "{name}: seed {seed} replays differently: {}\n  replay: {}",
                differences(&want, got).join(", "),
                replay_command(*mode, *mixed, *seed)
            )),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        failures.push(format!("{name}: committed, but not in the sample"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs differ from {} (if the change is meant to alter runs, \
         SIM_DIGESTS_WRITE=1 writes the file again):\n{}",
        failures.len(),
        runs.len(),
        digests_file().display(),
        failures.join("\n")
    );
}
