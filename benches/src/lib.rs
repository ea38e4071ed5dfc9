//! Benches that span Weft's crates: criterion benches under `benches/` and bench
//! binaries that print tables under `src/bin/`. Results and the exact commands that
//! produced them are recorded in `BENCHMARKS.md` at the repository root.
//!
//! Heavy benches are never part of the test command; `cargo clippy --all-targets`
//! only checks that they compile.

pub mod wire_node;

use sync_engine::{RecordKey, WriteRequest};
use sync_types::{PrincipalId, ProtocolName, ProtocolPath};

/// The write of version `v` of record `n` of issue 19's workload ([`workload_record`]) by
/// `author`, under the protocol `https://example.com/docs` at path `doc`, as the benches
/// configure it.
pub fn workload_write(n: u64, v: u64, author: PrincipalId) -> WriteRequest {
    let (id, json) = workload_record(n, v);
    WriteRequest {
        protocol: ProtocolName::new("https://example.com/docs").expect("a valid protocol"),
        path: ProtocolPath::new("doc").expect("a valid path"),
        key: RecordKey::Natural(id),
        parent: None,
        data: Some(json),
        author,
    }
}

/// A record of issue 19's workload, as `wire_bench`, `store_bench` and `apply_bench`
/// write it: its key and about 200 bytes of JSON (`{_id, type, n, v, title, body,
/// updatedAt}`), `n` the record and `v` its version.
pub fn workload_record(n: u64, v: u64) -> (Vec<u8>, Vec<u8>) {
    let id = format!("doc:{n:08}");
    let json = format!(
        "{{\"_id\":\"{id}\",\"type\":\"note\",\"n\":{n},\"v\":{v},\"title\":\"Note number {n} version {v}\",\"body\":\"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod {n:x}.\",\"updatedAt\":\"2026-12-03T06:{:02}:{:02}.000Z\"}}",
        (n / 60) % 60,
        n % 60
    );
    (id.into_bytes(), json.into_bytes())
}
