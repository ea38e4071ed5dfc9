//! `weft put`, `get`, `list`, `delete`: the local replica as a key-value store.

use std::io::{IsTerminal as _, Read as _};

use crate::cli::{DeleteArgs, GetArgs, ListArgs, PutArgs};
use crate::exit::{Exit, coded, usage};
use crate::kv::Kv;
use crate::out;

/// `weft put`.
pub(crate) fn put(args: PutArgs) -> anyhow::Result<Exit> {
    let value = match (&args.value, &args.file) {
        (Some(v), _) => v.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| usage(format!("cannot read the value from stdin: {e}")))?;
            buf
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => return Err(usage("give a value, or --file")),
    };
    let kv = Kv::open(&args.replica, &args.kv, true)?;
    let receipt = kv.put(&args.key, &value)?;
    if args.json {
        out::json(&serde_json::json!({
            "key": args.key,
            "record_id": receipt.record_id.to_string(),
            "cid": receipt.cid.to_string(),
            "position": receipt.token.map(|t| t.position),
        }))?;
    } else {
        out::line(format!(
            "put {} ({} bytes) as {}",
            args.key,
            value.len(),
            short(&receipt.cid.to_string())
        ))?;
    }
    Ok(Exit::Ok)
}

/// `weft get`: the value's bytes on stdout (a newline is added on a terminal).
pub(crate) fn get(args: GetArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, false)?;
    let Some(entry) = kv.get(&args.key)? else {
        return Err(coded(
            Exit::Failure,
            format!("no value for key {:?} in tenant {}", args.key, kv.tenant),
        ));
    };
    if args.json {
        out::json(&entry.to_json())?;
        return Ok(Exit::Ok);
    }
    match &entry.value {
        Some(v) => {
            out::bytes(v)?;
            if std::io::stdout().is_terminal() && !v.ends_with(b"\n") {
                out::bytes(b"\n")?;
            }
            Ok(Exit::Ok)
        }
        None => Err(coded(
            Exit::Failure,
            format!(
                "the value of {:?} is a blob that has not arrived in this replica yet",
                args.key
            ),
        )),
    }
}

/// `weft list`.
pub(crate) fn list(args: ListArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, false)?;
    let entries = kv.list(args.prefix.as_deref())?;
    if args.json {
        out::json(&serde_json::Value::Array(
            entries.iter().map(|e| e.to_json()).collect(),
        ))?;
        return Ok(Exit::Ok);
    }
    let mut table = out::Table::new(&["KEY", "UPDATED", "AUTHOR", "VALUE"]);
    for e in &entries {
        table.row(vec![
            e.key.clone(),
            out::time(Some(e.record.timestamp.wall_ms)),
            e.record.author.to_string(),
            e.value_preview(60),
        ]);
    }
    if table.is_empty() {
        eprintln!("no keys in tenant {} at {}", kv.tenant, kv.dir.display());
    } else {
        table.print()?;
    }
    Ok(Exit::Ok)
}

/// `weft delete`.
pub(crate) fn delete(args: DeleteArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, false)?;
    match kv.delete(&args.key)? {
        Some(receipt) => {
            out::line(format!(
                "deleted {} as {}",
                args.key,
                short(&receipt.cid.to_string())
            ))?;
            Ok(Exit::Ok)
        }
        None => Err(coded(
            Exit::Failure,
            format!("no value for key {:?} in tenant {}", args.key, kv.tenant),
        )),
    }
}

/// The first 12 characters of an id.
pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
