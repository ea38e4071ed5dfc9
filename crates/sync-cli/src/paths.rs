//! Default locations: the user's data directory (`$XDG_DATA_HOME/weft`, else
//! `~/.local/share/weft`), with `node/` for `weft serve` and `replica/` for the client
//! commands. Computed here rather than with a crate: two environment variables cover the
//! platforms we ship on, and an explicit flag covers the rest.

use std::path::PathBuf;

use crate::exit::usage;

/// `$XDG_DATA_HOME/weft`, or `$HOME/.local/share/weft`.
pub(crate) fn data_home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("weft"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/weft")),
        None => Err(usage(
            "cannot find a data directory (neither XDG_DATA_HOME nor HOME is set): pass --store or --data-dir",
        )),
    }
}

/// The node's data directory: `given`, or the default.
pub(crate) fn node_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => Ok(data_home()?.join("node")),
    }
}

/// The client replica's store: `given`, or the default.
pub(crate) fn replica_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => Ok(data_home()?.join("replica")),
    }
}

/// Where a node keeps its store inside its data directory.
pub(crate) fn node_store(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store")
}

/// Where a node keeps its key inside its data directory.
pub(crate) fn node_key_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("node.key")
}
