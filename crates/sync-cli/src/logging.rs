//! Structured logs on stderr (tracing), filtered like `RUST_LOG`, as text or JSON.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};
use crate::exit::usage;

/// Installs the global subscriber. The filter is `--log`/`WEFT_LOG`, else `RUST_LOG`,
/// else `default`.
pub(crate) fn init(args: &LogArgs, default: &str) -> anyhow::Result<()> {
    let filter = match (&args.log, std::env::var("RUST_LOG")) {
        (Some(f), _) => f.clone(),
        (None, Ok(f)) if !f.is_empty() => f,
        _ => default.to_owned(),
    };
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| usage(format!("bad log filter {filter:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests running commands in one process) keeps the first subscriber.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
