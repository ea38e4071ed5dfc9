//! Deterministic simulation of Weft: replicas and a node over a simulated network, from a
//! seed. A test crate (`publish = false`): nothing in the product depends on it, and it
//! uses only `sync-engine`'s public API.
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
//! step at a time (each awaited to completion), so a seed replays the same run. One
//! exception: a push that uploads blobs while it sends its other messages runs two
//! branches at once within a step, and the engine's blocking tasks (`spawn_blocking`, on
//! real threads) decide which branch draws from the network first; such a run may replay
//! with other timestamps (so other version ids and roots) and, in principle, other
//! faults. Runs without blobs replay bit for bit (`tests/replay_digests.rs` checks a
//! sample). A failure names its seed; `SIM_SEED=<seed> cargo test -p sync-sim --test
//! simulation replay` runs it again (`SIM_MODE=live` for a live run).
//!
//! The modules, by concern:
//! - `config`: what a run is given ([`SimConfig`], [`Faults`], [`SimMode`]) and the
//!   generator every draw comes from ([`SimRng`]);
//! - `net`: the simulated network and each replica's connector onto it, with its faults;
//! - `clock`: the virtual time, each device's skewed and jumping wall clock, and the
//!   conflict policies ([`SimPolicy`]);
//! - `world`: the node and the devices, opened, restarted cold and losing power;
//! - `workload`: the records written, each replica's scope, and one step of the run;
//! - `live`: live mode, each link run by its `LinkMachine` on the virtual clock;
//! - `checks`: the checks above, and the outcome the report carries;
//! - `report`: what a run returns ([`SimReport`], [`SimFailure`]);
//! - `runner`: [`run`] and [`run_blocking`]: build, play, settle, check.

#![deny(missing_docs)]

mod checks;
mod clock;
mod config;
mod live;
mod net;
mod report;
mod runner;
mod workload;
mod world;

pub use clock::SimPolicy;
pub use config::{Faults, SimConfig, SimMode, SimRng};
pub use net::{SimConnector, SimNet, SimRemote};
pub use report::{SimFailure, SimReport};
pub use runner::{run, run_blocking};
