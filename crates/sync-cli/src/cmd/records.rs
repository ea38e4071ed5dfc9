//! `weft put`, `get`, `list`, `delete`: the local replica as a key-value store.

use std::io::{IsTerminal as _, Write as _};

use crate::cli::{DeleteArgs, GetArgs, ListArgs, PutArgs};
use crate::exit::{Exit, coded, usage};
use crate::kv::Kv;
use crate::out;

/// `weft put`.
pub(crate) fn put(args: PutArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, true)?;
    let receipt = match (&args.value, &args.file) {
        (Some(v), _) => kv.put(&args.key, v.as_bytes())?,
        (None, Some(path)) if path.as_os_str() == "-" => {
            kv.put_stream(&args.key, std::io::stdin().lock())?
        }
        (None, Some(path)) => {
            let file = std::fs::File::open(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            kv.put_stream(&args.key, file)?
        }
        (None, None) => return Err(usage("give a value, or --file")),
    };
    if args.json {
        out::json(&serde_json::json!({
            "key": args.key,
            "record_id": receipt.record_id.to_string(),
            "cid": receipt.cid.to_string(),
            "position": receipt.token.map(|t| t.position),
        }))?;
    } else {
        let size = kv
            .get(&args.key)?
            .and_then(|e| e.size())
            .map_or_else(String::new, |n| format!(" ({n} bytes)"));
        out::line(format!(
            "put {}{size} as {}",
            args.key,
            short(&receipt.cid.to_string())
        ))?;
    }
    Ok(Exit::Ok)
}

/// `weft get`: the value's bytes on stdout (a newline is added on a terminal).
pub(crate) fn get(args: GetArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, false)?;
    if args.residency {
        out::line(kv.residency(&args.key)?.as_str())?;
        return Ok(Exit::Ok);
    }
    let Some(entry) = kv.get(&args.key)? else {
        return Err(coded(
            Exit::Failure,
            format!(
                "no value for key {:?} in tenant {} ({})",
                args.key,
                kv.tenant,
                kv.residency(&args.key)?
            ),
        ));
    };
    if args.json {
        out::json(&entry.to_json(&kv.replica)?)?;
        return Ok(Exit::Ok);
    }
    let mut stdout = std::io::stdout().lock();
    if !entry.copy_value(&kv.replica, &mut stdout)? {
        return Err(coded(
            Exit::Failure,
            format!(
                "the value of {:?} is a blob that has not arrived in this replica yet (staged)",
                args.key
            ),
        ));
    }
    let ends_with_newline = entry.value.as_deref().is_some_and(|v| v.ends_with(b"\n"));
    if stdout.is_terminal() && entry.blob.is_none() && !ends_with_newline {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(Exit::Ok)
}

/// `weft list`.
pub(crate) fn list(args: ListArgs) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, false)?;
    let entries = kv.list(args.prefix.as_deref())?;
    if args.json {
        out::json(&serde_json::Value::Array(
            entries
                .iter()
                .map(|e| e.to_json(&kv.replica))
                .collect::<anyhow::Result<_>>()?,
        ))?;
        return Ok(Exit::Ok);
    }
    let mut table = out::Table::new(&["KEY", "UPDATED", "AUTHOR", "RESIDENCY", "VALUE"]);
    for e in &entries {
        table.row(vec![
            e.key.clone(),
            out::time(Some(e.record.timestamp.wall_ms)),
            e.record.author.to_string(),
            e.record.residency.as_str().to_owned(),
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
