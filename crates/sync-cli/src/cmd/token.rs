//! `weft token issue` and `weft token inspect`.

use std::io::Read as _;

use sync_transport::{Claims, Role, Token};
use sync_types::{Actions, Clock as _, GrantId, PrincipalId, Scope, SystemClock};

use crate::cli::{Action, InspectArgs, IssueArgs, KeyFileArgs};
use crate::exit::{Exit, coded, usage};
use crate::{key, out, paths};

/// Parses a lifetime: a number and a unit (`s`, `m`, `h`, `d`), or `never`. In ms.
pub(crate) fn parse_lifetime(text: &str) -> anyhow::Result<Option<u64>> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    let bad = || {
        usage(format!(
            "bad duration {text:?}: expected a number and a unit (s, m, h, d) such as 30d, or `never`"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).map(Some).ok_or_else(bad)
}

fn key_path(args: &KeyFileArgs) -> anyhow::Result<std::path::PathBuf> {
    match &args.key_file {
        Some(p) => Ok(p.clone()),
        None => Ok(paths::node_key_file(&paths::node_dir(
            args.data_dir.clone(),
        )?)),
    }
}

/// The claims `args` ask for, at `now_ms`.
pub(crate) fn claims(args: &IssueArgs, now_ms: u64) -> anyhow::Result<Claims> {
    let expires_at_ms = match parse_lifetime(&args.expires_in)? {
        Some(ms) => now_ms.saturating_add(ms),
        None => u64::MAX,
    };
    let grant_id = match &args.grant_id {
        Some(id) => GrantId::new(id.as_str())?,
        None => GrantId::new(format!("cli-{now_ms}"))?,
    };
    Ok(match &args.delegate {
        None => {
            let principal = match &args.principal {
                Some(p) => p.clone(),
                None => PrincipalId::new(args.tenant.as_str())?,
            };
            Claims::owner(args.tenant.clone(), principal, grant_id, expires_at_ms)
        }
        Some(delegate) => {
            let scope = if args.protocols.is_empty() {
                Scope::Full
            } else {
                Scope::protocols(args.protocols.clone())?
            };
            let actions = if args.actions.is_empty() {
                Actions::ALL
            } else {
                args.actions
                    .iter()
                    .fold(Actions::NONE, |a, x| a.union(action_bits(*x)))
            };
            Claims {
                tenant: args.tenant.clone(),
                principal: delegate.clone(),
                role: Role::Delegate,
                scope,
                actions,
                expires_at_ms,
                grant_id,
            }
        }
    })
}

fn action_bits(a: Action) -> Actions {
    match a {
        Action::Read => Actions::READ,
        Action::Write => Actions::WRITE,
        Action::Sync => Actions::SYNC,
    }
}

/// `weft token issue`.
pub(crate) fn issue(args: IssueArgs) -> anyhow::Result<Exit> {
    let path = key_path(&args.key)?;
    if !args.create_key && !path.exists() {
        return Err(coded(
            Exit::Store,
            format!(
                "no key file at {}: give the node's key file (--key-file, --data-dir), or \
                 --create-key to make a new one for a new node",
                path.display()
            ),
        ));
    }
    let (key, created) = key::load_or_create(&path)?;
    if created {
        eprintln!(
            "weft: created a new node key at {} (start the node with the same key file)",
            path.display()
        );
    }
    let claims = claims(&args, SystemClock.now_ms())?;
    out::line(Token::issue(&key, claims).to_string())?;
    Ok(Exit::Ok)
}

/// A scope for humans.
pub(crate) fn describe_scope(scope: &Scope) -> String {
    match scope {
        Scope::Full => "full".to_owned(),
        Scope::ProtocolSet(set) => format!(
            "protocols {}",
            set.protocols()
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Scope::Projection(p) => format!(
            "projection of {}",
            p.entries()
                .iter()
                .map(|e| e.protocol.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Actions for humans: `read,write,sync`.
pub(crate) fn describe_actions(a: Actions) -> String {
    let names: Vec<&str> = [
        (Actions::READ, "read"),
        (Actions::WRITE, "write"),
        (Actions::SYNC, "sync"),
    ]
    .into_iter()
    .filter(|(bit, _)| a.contains(*bit))
    .map(|(_, n)| n)
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

/// Reads token text from an argument, `-` (stdin) or `WEFT_TOKEN`.
fn token_text(arg: Option<String>) -> anyhow::Result<String> {
    let text = match arg.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| usage(format!("cannot read the token from stdin: {e}")))?;
            s
        }
        Some(t) => t.to_owned(),
        None => std::env::var("WEFT_TOKEN").map_err(|_| {
            usage("no token: pass one as an argument, `-` for stdin, or set WEFT_TOKEN")
        })?,
    };
    Ok(text.trim().to_owned())
}

/// `weft token inspect`.
pub(crate) fn inspect(args: InspectArgs) -> anyhow::Result<Exit> {
    let text = token_text(args.token)?;
    let token: Token = text
        .parse()
        .map_err(|e| coded(Exit::Refused, format!("not a valid token: {e}")))?;
    let claims = token.unverified_claims().clone();
    let now = SystemClock.now_ms();
    let verdict = match &args.key_file {
        None => None,
        Some(path) => {
            let key = key::load(path)?;
            Some(
                token
                    .verify(&key, now)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        }
    };
    let expired = now >= claims.expires_at_ms;
    if args.json {
        let mut v = serde_json::json!({
            "tenant": claims.tenant.as_str(),
            "principal": claims.principal.as_str(),
            "role": match claims.role { Role::Owner => "owner", Role::Delegate => "delegate" },
            "scope": serde_json::to_value(&claims.scope)?,
            "actions": describe_actions(claims.actions).split(',').collect::<Vec<_>>(),
            "expires_at_ms": claims.expires_at_ms,
            "expired": expired,
            "grant_id": claims.grant_id.as_str(),
        });
        v["verified"] = match &verdict {
            None => serde_json::Value::Null,
            Some(Ok(())) => true.into(),
            Some(Err(_)) => false.into(),
        };
        out::json_pretty(&v)?;
    } else {
        let expires = if claims.expires_at_ms == u64::MAX {
            "never".to_owned()
        } else {
            let t = out::time(Some(claims.expires_at_ms));
            if expired { format!("{t} (expired)") } else { t }
        };
        let mut t = out::Table::new(&["FIELD", "VALUE"]);
        for (k, v) in [
            ("tenant", claims.tenant.to_string()),
            ("principal", claims.principal.to_string()),
            (
                "role",
                match claims.role {
                    Role::Owner => "owner".to_owned(),
                    Role::Delegate => "delegate".to_owned(),
                },
            ),
            ("scope", describe_scope(&claims.scope)),
            ("actions", describe_actions(claims.actions)),
            ("expires", expires),
            ("grant", claims.grant_id.to_string()),
            (
                "signature",
                match &verdict {
                    None => "not checked (pass --key-file)".to_owned(),
                    Some(Ok(())) => "valid".to_owned(),
                    Some(Err(e)) => format!("INVALID: {e}"),
                },
            ),
        ] {
            t.row(vec![k.to_owned(), v]);
        }
        t.print()?;
    }
    match verdict {
        Some(Err(e)) => Err(coded(Exit::Refused, format!("token does not verify: {e}"))),
        _ => Ok(Exit::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("30d").unwrap(), Some(30 * 86_400_000));
        assert_eq!(parse_lifetime("90s").unwrap(), Some(90_000));
        assert_eq!(parse_lifetime("never").unwrap(), None);
        for bad in ["", "d", "10", "10y", "-1h", "99999999999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn actions_describe() {
        assert_eq!(describe_actions(Actions::ALL), "read,write,sync");
        assert_eq!(
            describe_actions(Actions::READ.union(Actions::SYNC)),
            "read,sync"
        );
        assert_eq!(describe_actions(Actions::NONE), "none");
    }
}
