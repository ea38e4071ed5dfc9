//! `weft`: the operator's tool for Weft.
//!
//! It serves a node on an embedded fjall store (`weft serve`), issues and inspects
//! capability tokens (`weft token`), reads and writes a local replica (`weft put`, `get`,
//! `list`, `delete`), replicates it with a node (`weft sync` once, `weft watch` live),
//! inspects replication (`weft status`, `links`, `health`, `dead-letters`), and shows the
//! whole thing in one command (`weft quickstart`).
//!
//! # What it is, and what it is not
//!
//! This is the only crate that knows about humans: tables, progress bars, JSON for
//! scripts, exit codes, and the only one that uses `anyhow` and `clap`. It holds no
//! replication logic: every command is a thin layer over `sync-engine` (the replica, the
//! node handler and the one-shot sync engine) and `sync-transport` (the server, the
//! client and tokens). A command that needs more than a screen of code is a sign that
//! something belongs in a library.
//!
//! # Layout
//!
//! - `main.rs` parses the command line, runs the command, and maps the error to an exit
//!   code ([`exit::Exit`]); a broken pipe on stdout is a normal exit.
//! - `cli.rs` is the clap model: every command with its help and examples.
//! - `cmd/` has one module per command family.
//! - `kv.rs` is the default record layout of `put`/`get`/`list` (protocol `weft:kv`).
//! - `out.rs` prints: tables, JSON, and writes that report a broken pipe as an error
//!   instead of panicking.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran but did not fully succeed (a key not found, a put or delete superseded at once, messages left in dead letters, an unhealthy node) |
//! | 2 | usage error: bad flags or values, an unreadable config file |
//! | 3 | cannot reach the node (wrong address, connection refused, timeout, node shutting down) |
//! | 4 | authorization refused (a malformed, forged or expired token, or a request beyond its grant) |
//! | 5 | local store error (a store that cannot be opened, read or written, or is in use) |
//! | 6 | cannot listen on the address (in use, not permitted) |
//! | 130 | interrupted: Ctrl-C or SIGTERM during `sync` (what was done is printed first) |

// Printing is this crate's job: the workspace lints warn on `print_stdout` and
// `print_stderr` so that libraries do not print, and the CLI is where printing belongs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod cmd;
mod control;
mod exit;
mod key;
mod kv;
mod logging;
mod out;
mod paths;
mod signals;

use std::process::ExitCode;

/// The allocator of every `weft` process. An apply allocates a handful of small keys and
/// values per message, and the store's memtables allocate and free a node per key: with
/// glibc's allocator, allocation was about a quarter of a node's CPU per applied message,
/// and mimalloc cuts the CPU of an apply by 20 to 30% (`BENCHMARKS.md`, "The node's
/// allocator"). Libraries leave the choice to their embedder.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` are successful "errors"; clap prints them.
            let code = if e.use_stderr() {
                exit::Exit::Usage
            } else {
                exit::Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    match cmd::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                return exit::Exit::Ok.into();
            }
            let code = exit::classify(&err);
            eprintln!("weft: error: {}", exit::describe(&err));
            if let Some(hint) = exit::hint(&err) {
                eprintln!("weft: hint: {hint}");
            }
            code.into()
        }
    }
}
