//! A ledger's store damaged behind its back (values flipped, cut short, deleted, moved
//! to other keys), then every call of the ledger: each may fail, none may panic. The
//! damage and the calls are `sync-ledger`'s own (`tests/damage_support`), which its
//! test suite runs with a few hundred random cases.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/sync-ledger/tests/common/mod.rs"]
mod common;
#[path = "../../crates/sync-ledger/tests/damage_support/mod.rs"]
mod damage;

fuzz_target!(|data: &[u8]| {
    let (store, fixture) = damage::populated();
    damage::damage(&store, data);
    damage::exercise(&store, &fixture);
});
