//! `weft put`, `get`, `list`, `delete`: the local replica as a key-value store.

use std::io::Write as _;

use crate::cli::{DeleteArgs, GetArgs, ListArgs, PutArgs};
use crate::exit::{Exit, coded, usage};
use crate::kv::Kv;
use crate::out;
use sync_engine::{Receipt, WriteOutcome};

/// `weft put`.
pub(crate) fn put(args: PutArgs) -> anyhow::Result<Exit> {
    put_from(args, std::io::stdin().lock())
}

/// `weft put`, reading `--file -` from `stdin`.
pub(crate) fn put_from(args: PutArgs, stdin: impl std::io::Read) -> anyhow::Result<Exit> {
    let kv = Kv::open(&args.replica, &args.kv, true)?;
    let receipt = match (&args.value, &args.file) {
        (Some(v), _) => kv.put(&args.key, v.as_bytes())?,
        (None, Some(path)) if path.as_os_str() == "-" => kv.put_stream(&args.key, stdin)?,
        (None, Some(path)) => {
            let file = std::fs::File::open(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            kv.put_stream(&args.key, file)?
        }
        (None, None) => return Err(usage("give a value, or --file")),
    };
    if args.json {
        out::json(&receipt_json(&kv, &args.key, &receipt)?)?;
    } else {
        let size = kv
            .get(&args.key)?
            .and_then(|e| e.size())
            .map_or_else(String::new, |n| format!(" ({n} bytes)"));
        out::line(format!(
            "put {}{size} as {}{}",
            args.key,
            short(&receipt.cid.to_string()),
            outcome_note(&receipt)
        ))?;
    }
    check_won("put", &args.key, &receipt)?;
    Ok(Exit::Ok)
}

/// A write's receipt as JSON, with the full version: cid and HLC.
fn receipt_json(kv: &Kv, key: &str, receipt: &Receipt) -> anyhow::Result<serde_json::Value> {
    let hlc = kv
        .replica
        .ledger()
        .get_message(&kv.tenant, &receipt.cid)?
        .map(|m| m.message.timestamp().to_string());
    Ok(serde_json::json!({
        "key": key,
        "record_id": receipt.record_id.to_string(),
        "cid": receipt.cid.to_string(),
        "hlc": hlc,
        "position": receipt.token.map(|t| t.position),
        "outcome": outcome_name(receipt),
        "winner": superseded_by(receipt).map(|w| w.to_string()),
    }))
}

/// `"won"` or `"superseded"`, for JSON output.
fn outcome_name(receipt: &Receipt) -> &'static str {
    match receipt.outcome {
        WriteOutcome::Won => "won",
        WriteOutcome::Superseded { .. } => "superseded",
    }
}

fn superseded_by(receipt: &Receipt) -> Option<sync_types::Cid> {
    match receipt.outcome {
        WriteOutcome::Won => None,
        WriteOutcome::Superseded { winner } => Some(winner),
    }
}

/// What a human reads after the receipt line.
fn outcome_note(receipt: &Receipt) -> String {
    match superseded_by(receipt) {
        None => String::new(),
        Some(w) => format!(", superseded by {}", short(&w.to_string())),
    }
}

/// A write that did not become its record's winning version is stored but never read:
/// the command did not do what was asked (exit 1).
fn check_won(what: &str, key: &str, receipt: &Receipt) -> anyhow::Result<()> {
    match superseded_by(receipt) {
        None => Ok(()),
        Some(winner) => Err(coded(
            Exit::Failure,
            format!(
                "the {what} of {key:?} was superseded at once by version {winner}: it is stored, but reads return the other version"
            ),
        )),
    }
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
    let mut stdout = out::stdout();
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
    let entries = kv.list(args.prefix.as_deref(), args.deleted)?;
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
        out::note(format!(
            "no keys in tenant {} at {}",
            kv.tenant,
            kv.dir.display()
        ));
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
            if args.json {
                out::json(&receipt_json(&kv, &args.key, &receipt)?)?;
            } else {
                out::line(format!(
                    "deleted {} as {}{}",
                    args.key,
                    short(&receipt.cid.to_string()),
                    outcome_note(&receipt)
                ))?;
            }
            check_won("delete", &args.key, &receipt)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::{Cid, RecordId};

    fn receipt(outcome: WriteOutcome) -> Receipt {
        Receipt {
            record_id: RecordId::from_bytes([1; 32]),
            cid: Cid::from_bytes([2; 32]),
            token: None,
            outcome,
        }
    }

    #[test]
    fn a_superseded_write_is_printed_and_exits_1() {
        let won = receipt(WriteOutcome::Won);
        assert!(check_won("put", "k", &won).is_ok());
        assert_eq!(outcome_note(&won), "");
        assert_eq!(outcome_name(&won), "won");
        let winner = Cid::from_bytes([3; 32]);
        let lost = receipt(WriteOutcome::Superseded { winner });
        assert_eq!(outcome_name(&lost), "superseded");
        assert!(outcome_note(&lost).starts_with(", superseded by "));
        let err = check_won("put", "k", &lost).unwrap_err();
        assert_eq!(crate::exit::classify(&err), Exit::Failure);
        assert!(err.to_string().contains(&winner.to_string()));
    }
}
