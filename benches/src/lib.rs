//! Benches that span Weft's crates: criterion benches under `benches/` and bench
//! binaries that print tables under `src/bin/`. Results and the exact commands that
//! produced them are recorded in `BENCHMARKS.md` at the repository root.
//!
//! Heavy benches are never part of the test command; `cargo clippy --all-targets`
//! only checks that they compile.
