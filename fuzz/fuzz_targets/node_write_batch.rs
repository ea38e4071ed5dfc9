//! Hostile but well-framed write batches through a whole node: the transport's checks,
//! the node's handler and the replica's apply, over the in-process transport (which
//! encodes and decodes every frame). Every naming field of every message is drawn from
//! the input; afterwards nothing outside the sender's grant may be stored. The draws and
//! the check are `sync-engine`'s own (`tests/hostile_batch_support`), which its test
//! suite runs as a proptest; a crash found here is added to that proptest's regressions.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/sync-engine/tests/hostile_batch_support/mod.rs"]
mod hostile;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = hostile::run(data) {
        panic!("{e}");
    }
});
