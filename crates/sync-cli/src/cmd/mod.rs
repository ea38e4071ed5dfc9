//! One module per command family; [`run`] dispatches.

mod blob_store;
pub(crate) mod inspect;
mod quickstart;
pub(crate) mod records;
mod remote;
mod serve;
mod shared;
mod sync;
mod token;
mod watch;

use anyhow::Context as _;

use crate::cli::{Cli, Command, DeadLettersCommand, TokenCommand};
use crate::control::{self, Forwarded};
use crate::exit::Exit;
use crate::logging;
use crate::paths;

/// Runs the command; `Ok` carries the exit code of a command that ran to its end.
pub(crate) fn run(cli: Cli) -> anyhow::Result<Exit> {
    // The storage engine's own info lines (ingestion, flushes) are noise for operators.
    let default_log = match cli.command {
        Command::Serve(_) => "info,fjall=warn,lsm_tree=warn,postgres=warn",
        _ => "warn",
    };
    logging::init(&cli.log, default_log)?;
    remote::set_client_config(&cli.client)?;
    match cli.command {
        Command::Token(TokenCommand::Issue(a)) => token::issue(a),
        Command::Token(TokenCommand::Inspect(a)) => token::inspect(a),
        Command::Put(mut a) => {
            let dir = through_watch(&mut a.replica.store)?;
            if let Some(file) = a.file.as_mut().filter(|f| f.as_os_str() != "-") {
                *file = control::absolute(file);
            }
            match control::forward(&dir, Forwarded::Put(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::Put(a)) => records::put(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::Get(mut a) => {
            let dir = through_watch(&mut a.replica.store)?;
            match control::forward(&dir, Forwarded::Get(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::Get(a)) => records::get(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::List(mut a) => {
            let dir = through_watch(&mut a.replica.store)?;
            match control::forward(&dir, Forwarded::List(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::List(a)) => records::list(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::Delete(mut a) => {
            let dir = through_watch(&mut a.replica.store)?;
            match control::forward(&dir, Forwarded::Delete(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::Delete(a)) => records::delete(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::Status(mut a) => {
            let dir = through_watch(&mut a.store.store)?;
            match control::forward(&dir, Forwarded::Status(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::Status(a)) => inspect::status(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::Links(mut a) => {
            let dir = through_watch(&mut a.store.store)?;
            match control::forward(&dir, Forwarded::Links(a))? {
                Ok(exit) => Ok(exit),
                Err(Forwarded::Links(a)) => inspect::links(a),
                Err(_) => unreachable!("given back as sent"),
            }
        }
        Command::DeadLetters(DeadLettersCommand::List(a)) => inspect::dead_letters_list(a),
        Command::DeadLetters(DeadLettersCommand::Clear(a)) => inspect::dead_letters_clear(a),
        Command::Serve(a) => runtime()?.block_on(serve::run(a)),
        Command::Sync(a) => runtime()?.block_on(sync::run(a)),
        Command::Watch(a) => runtime()?.block_on(watch::run(a)),
        Command::Health(a) => runtime()?.block_on(inspect::health(a)),
        Command::DeadLetters(DeadLettersCommand::Retry(a)) => {
            runtime()?.block_on(inspect::dead_letters_retry(a))
        }
        Command::Quickstart(a) => runtime()?.block_on(quickstart::run(a)),
    }
}

/// The store directory of a command that may go through a watch's control socket,
/// made absolute in `store` (the watch runs in another directory).
fn through_watch(store: &mut Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let dir = control::absolute(&paths::replica_dir(store.take())?);
    *store = Some(dir.clone());
    Ok(dir)
}

/// The runtime of the commands that talk to the network.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
