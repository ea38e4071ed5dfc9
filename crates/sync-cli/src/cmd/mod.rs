//! One module per command family; [`run`] dispatches.

mod inspect;
mod quickstart;
mod records;
mod remote;
mod serve;
mod shared;
mod sync;
mod token;
mod watch;

use anyhow::Context as _;

use crate::cli::{Cli, Command, DeadLettersCommand, TokenCommand};
use crate::exit::Exit;
use crate::logging;

/// Runs the command; `Ok` carries the exit code of a command that ran to its end.
pub(crate) fn run(cli: Cli) -> anyhow::Result<Exit> {
    // The storage engine's own info lines (ingestion, flushes) are noise for operators.
    let default_log = match cli.command {
        Command::Serve(_) => "info,fjall=warn,lsm_tree=warn",
        _ => "warn",
    };
    logging::init(&cli.log, default_log)?;
    remote::set_client_config(&cli.client)?;
    match cli.command {
        Command::Token(TokenCommand::Issue(a)) => token::issue(a),
        Command::Token(TokenCommand::Inspect(a)) => token::inspect(a),
        Command::Put(a) => records::put(a),
        Command::Get(a) => records::get(a),
        Command::List(a) => records::list(a),
        Command::Delete(a) => records::delete(a),
        Command::Status(a) => inspect::status(a),
        Command::Links(a) => inspect::links(a),
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

/// The runtime of the commands that talk to the network.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
