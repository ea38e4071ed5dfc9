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
}
