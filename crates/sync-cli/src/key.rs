//! The node's token key file: 64 hex characters (32 random bytes), created with mode
//! 0600 when missing, so `weft serve` and `weft token issue` agree on it.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use sync_transport::TokenKey;

use crate::exit::{Exit, coded};

/// Reads the key in `path`.
pub(crate) fn load(path: &Path) -> anyhow::Result<TokenKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        coded(
            Exit::Store,
            format!("cannot read key file {}: {e}", path.display()),
        )
    })?;
    TokenKey::from_hex(&text).map_err(|e| {
        coded(
            Exit::Store,
            format!(
                "key file {} is not a weft key (64 hex characters): {e}",
                path.display()
            ),
        )
    })
}

/// Reads the key in `path`, or creates it (random, mode 0600) when the file does not
/// exist. Returns the key and whether it was created.
pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<(TokenKey, bool)> {
    if path.exists() {
        return Ok((load(path)?, false));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| coded(Exit::Store, format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).context("cannot get random bytes for a new key")?;
    let key = TokenKey::from_bytes(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            writeln!(file, "{}", key.to_hex())
                .and_then(|()| file.sync_all())
                .map_err(|e| {
                    coded(
                        Exit::Store,
                        format!("cannot write key file {}: {e}", path.display()),
                    )
                })?;
            Ok((key, true))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((load(path)?, false)),
        Err(e) => Err(coded(
            Exit::Store,
            format!("cannot create key file {}: {e}", path.display()),
        )),
    }
}

/// The node key for a store: reads the key file (creating it only for a store never
/// served before) and checks that it is the key the store is served with
/// ([`TokenKey::check`], kept in the store), so that a node given another key refuses
/// to start instead of refusing every token the store's other nodes issued. A store
/// served before this check existed takes the first key it is served with.
/// `replace` makes this key the store's.
pub(crate) fn for_store(
    path: &Path,
    ledger: &sync_ledger::Ledger,
    replace: bool,
) -> anyhow::Result<TokenKey> {
    let stored = ledger.token_key_check().map_err(|e| {
        coded(
            Exit::Store,
            format!("cannot read the store's key check: {e}"),
        )
    })?;
    if stored.is_some() && !replace && !path.exists() {
        return Err(coded(
            Exit::Usage,
            format!(
                "key file {} does not exist, and this store is already served with a key: \
                 copy the key file of its other nodes there (or name it with --key-file); \
                 a new key would refuse every token they issued",
                path.display()
            ),
        ));
    }
    let (key, created) = load_or_create(path)?;
    if created {
        tracing::info!(key_file = %path.display(), "created a new node key");
    }
    let check = key.check();
    match stored {
        Some(stored) if stored == check => return Ok(key),
        Some(stored) if !replace => {
            return Err(coded(
                Exit::Usage,
                format!(
                    "key file {} (check {}) is not the key this store is served with \
                     (check {}): tokens issued with either key are refused by nodes using \
                     the other. Use the key file of the store's other nodes (--key-file), \
                     or pass --replace-key to make this key the store's (every token \
                     issued with the old one stops working; give every node the new file)",
                    path.display(),
                    hex(&check),
                    hex(&stored),
                ),
            ));
        }
        Some(_) => tracing::warn!(
            key_file = %path.display(),
            "--replace-key: this key replaces the store's token key; tokens issued with \
             the old key are refused from now on"
        ),
        None => {}
    }
    ledger
        .set_token_key_check(&check)
        .map_err(|e| coded(Exit::Store, format!("cannot store the key check: {e}")))?;
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.to_hex(), again.to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(load(&path).is_err());
    }

    #[test]
    fn a_store_keeps_the_check_of_the_key_it_is_served_with() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sync_ledger::Ledger::in_memory().unwrap();
        let first = dir.path().join("node.key");
        let key = for_store(&first, &ledger, false).unwrap();
        assert_eq!(
            ledger.token_key_check().unwrap(),
            Some(key.check().to_vec())
        );
        // The same key again: accepted.
        assert_eq!(
            for_store(&first, &ledger, false).unwrap().to_hex(),
            key.to_hex()
        );
        // Another key, or a missing file: refused, nothing created or changed.
        let other = dir.path().join("other.key");
        std::fs::write(&other, "cd".repeat(32)).unwrap();
        let e = for_store(&other, &ledger, false).unwrap_err().to_string();
        assert!(
            e.contains("is not the key this store is served with"),
            "{e}"
        );
        let missing = dir.path().join("missing.key");
        assert!(for_store(&missing, &ledger, false).is_err());
        assert!(!missing.exists());
        assert_eq!(
            ledger.token_key_check().unwrap(),
            Some(key.check().to_vec())
        );
        // Replaced on purpose: the new key is the store's, the old one refused.
        let replaced = for_store(&other, &ledger, true).unwrap();
        assert_ne!(replaced.check(), key.check());
        assert!(for_store(&first, &ledger, false).is_err());
    }
}
