//! The control socket: how `weft put`, `get`, `list`, `delete`, `status` and `links` work on a
//! store that `weft watch` holds open.
//!
//! The storage engine lets one process open a store. While a watch runs, it listens on
//! a Unix domain socket in the store's directory ([`SOCKET_NAME`], owner-only: mode
//! 0600), and a command on that store sends it the command instead of opening the
//! store: the watch runs the same code over the replica it holds, on a thread whose
//! output goes back to the command's process ([`crate::out::capturing`]), and ends with
//! the exit code. A write made so is a local write of the watch's replica, which its
//! live driver pushes at once.
//!
//! # Wire
//!
//! The command sends one request: a 4-byte big-endian length and a JSON [`Request`] (at
//! most [`REQUEST_BYTES_MAX`]), then the `stdin_len` bytes of `put --file -` (at most
//! [`STDIN_BYTES_MAX`]). The watch answers with frames, each a tag byte, a 4-byte
//! big-endian length and that many bytes: `1` stdout, `2` stderr, and last `3`, one
//! byte, the exit code.
//!
//! # Limits and failures
//!
//! A watch runs at most [`CONNECTIONS_MAX`] commands at once and answers the next one
//! busy (exit 5); a request must arrive whole within [`REQUEST_TIME_MS_MAX`]. A socket
//! file whose watch is gone (killed with -9) refuses connections: the command removes
//! it and opens the store itself. A watch that finds a socket file at start does the
//! same check, so a stale file never stops it.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sync_engine::Replica;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;

use crate::cli::{DeleteArgs, GetArgs, ListArgs, PutArgs, StatusArgs};
use crate::exit::{Exit, coded};
use crate::out::{self, Capture, Stream};

/// The socket's file name in the store directory.
pub(crate) const SOCKET_NAME: &str = "weft.sock";
/// Largest request (its JSON), in bytes.
pub(crate) const REQUEST_BYTES_MAX: u32 = 64 * 1024;
/// Largest `put --file -` value sent through the socket, in bytes.
pub(crate) const STDIN_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most commands a watch runs at once for other processes.
pub(crate) const CONNECTIONS_MAX: usize = 4;
/// Longest a request may take to arrive, in ms.
pub(crate) const REQUEST_TIME_MS_MAX: u64 = 10_000;
/// The version of the request format.
const VERSION: u8 = 1;

const TAG_STDOUT: u8 = 1;
const TAG_STDERR: u8 = 2;
const TAG_EXIT: u8 = 3;

/// A command another process asks the watch to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// `weft put`.
    Put(PutArgs),
    /// `weft get`.
    Get(GetArgs),
    /// `weft list`.
    List(ListArgs),
    /// `weft delete`.
    Delete(DeleteArgs),
    /// `weft status`.
    Status(StatusArgs),
    /// `weft links`.
    Links(StatusArgs),
}

/// What a command sends: the parsed command (paths made absolute by the sender), and
/// what the watch's process cannot know of the sender's.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    version: u8,
    command: Forwarded,
    stdout_terminal: bool,
    weft_token: Option<String>,
    stdin_len: u64,
}

// ---------------------------------------------------------------- the store held open

/// The store this process holds open for a watch, so a command it runs for another
/// process opens the same replica.
static HELD: Mutex<Option<(PathBuf, Replica)>> = Mutex::new(None);

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// The replica held open for `dir`, if this process holds it.
pub(crate) fn held(dir: &Path) -> Option<Replica> {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let (path, replica) = held.as_ref()?;
    (*path == canonical(dir)).then(|| replica.clone())
}

// ---------------------------------------------------------------- the command's side

/// Sends `command` to the watch holding the store in `dir`, if one does, copying its
/// output here, and returns its exit code; the command back when no watch holds the
/// store (no socket, or a stale one, now removed): the caller opens the store itself.
pub(crate) fn forward(dir: &Path, command: Forwarded) -> anyhow::Result<Result<Exit, Forwarded>> {
    use std::io::IsTerminal as _;
    let path = dir.join(SOCKET_NAME);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(Err(command));
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Its watch is gone (killed before it could remove the file): the store is
            // free, or held by something else, which opening it will say.
            use std::os::unix::fs::FileTypeExt as _;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(Err(command));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(command)),
        Err(e) => {
            return Err(coded(
                Exit::Store,
                format!(
                    "the store {} is held by a `weft watch`, and its control socket {} cannot be reached: {e}",
                    dir.display(),
                    path.display()
                ),
            ));
        }
    };
    let stdin = match &command {
        Forwarded::Put(a) if a.file.as_ref().is_some_and(|f| f.as_os_str() == "-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .take(STDIN_BYTES_MAX + 1)
                .read_to_end(&mut buf)
                .context("cannot read the value from stdin")?;
            if buf.len() as u64 > STDIN_BYTES_MAX {
                return Err(coded(
                    Exit::Usage,
                    format!(
                        "a value from stdin is at most {STDIN_BYTES_MAX} bytes while `weft watch` holds the store: write it to a file and pass --file PATH"
                    ),
                ));
            }
            buf
        }
        _ => Vec::new(),
    };
    let request = Request {
        version: VERSION,
        command,
        stdout_terminal: std::io::stdout().is_terminal(),
        weft_token: std::env::var("WEFT_TOKEN").ok(),
        stdin_len: stdin.len() as u64,
    };
    let body = serde_json::to_vec(&request)?;
    let lost = |e: std::io::Error| {
        coded(
            Exit::Store,
            format!(
                "the `weft watch` holding {} went away during the command: {e}",
                dir.display()
            ),
        )
    };
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= REQUEST_BYTES_MAX)
        .ok_or_else(|| {
            coded(
                Exit::Usage,
                "the command is too large for the control socket",
            )
        })?;
    stream.write_all(&len.to_be_bytes()).map_err(lost)?;
    stream.write_all(&body).map_err(lost)?;
    stream.write_all(&stdin).map_err(lost)?;
    loop {
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).map_err(lost)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > out::CAPTURE_CHUNK_BYTES {
            return Err(coded(
                Exit::Store,
                "the control socket answered a frame larger than a weft watch sends",
            ));
        }
        let mut bytes = vec![0u8; len];
        stream.read_exact(&mut bytes).map_err(lost)?;
        match head[0] {
            TAG_STDOUT => out::stdout().write_all(&bytes)?,
            TAG_STDERR => {
                let _ = std::io::stderr().lock().write_all(&bytes);
            }
            TAG_EXIT => return Ok(Ok(exit_of(bytes.first().copied().unwrap_or(1)))),
            _ => {
                return Err(coded(
                    Exit::Store,
                    "the control socket answered something this weft does not read",
                ));
            }
        }
    }
}

fn exit_of(code: u8) -> Exit {
    match code {
        0 => Exit::Ok,
        2 => Exit::Usage,
        3 => Exit::Unreachable,
        4 => Exit::Refused,
        5 => Exit::Store,
        6 => Exit::Listen,
        130 => Exit::Interrupted,
        _ => Exit::Failure,
    }
}

/// `path` made absolute against the current directory.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

// ---------------------------------------------------------------- the watch's side

/// The control socket of a watch: removed, and the store no longer lent, when dropped.
pub(crate) struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Serves commands for the store in `dir`, which this process holds open as `replica`.
pub(crate) fn serve(dir: &Path, replica: Replica) -> anyhow::Result<Server> {
    let path = dir.join(SOCKET_NAME);
    if std::fs::symlink_metadata(&path).is_ok() {
        match UnixStream::connect(&path) {
            // This process holds the store, so whatever answers there is not a watch
            // of it (a copied directory?): leave it be rather than steal its socket.
            Ok(_) => anyhow::bail!("{} is in use by another process", path.display()),
            Err(_) => std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?,
        }
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some((canonical(dir), replica));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let permit = slots.clone().try_acquire_owned();
            tokio::spawn(async move {
                let result = match permit {
                    Ok(_permit) => serve_one(stream).await,
                    Err(_) => busy(stream).await.map_err(anyhow::Error::from),
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "a command through the control socket failed");
                }
            });
        }
    });
    Ok(Server { path, task })
}

async fn frame(stream: &mut tokio::net::UnixStream, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut head = [tag, 0, 0, 0, 0];
    head[1..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&head).await?;
    stream.write_all(bytes).await
}

async fn busy(mut stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let text = format!(
        "weft: error: the `weft watch` holding this store runs {CONNECTIONS_MAX} commands already; try again\n"
    );
    frame(&mut stream, TAG_STDERR, text.as_bytes()).await?;
    frame(&mut stream, TAG_EXIT, &[Exit::Store as u8]).await
}

/// Reads one request (within the limits), runs it on a blocking thread and sends its
/// output as it comes, then its exit code.
async fn serve_one(mut stream: tokio::net::UnixStream) -> anyhow::Result<()> {
    let read = async {
        let len = stream.read_u32().await?;
        if len > REQUEST_BYTES_MAX {
            anyhow::bail!("a request of {len} bytes (at most {REQUEST_BYTES_MAX})");
        }
        let mut body = vec![0u8; len as usize];
        stream.read_exact(&mut body).await?;
        let request: Request = serde_json::from_slice(&body)?;
        if request.version != VERSION {
            anyhow::bail!(
                "request version {} (this watch reads {VERSION})",
                request.version
            );
        }
        if request.stdin_len > STDIN_BYTES_MAX {
            anyhow::bail!(
                "a value of {} bytes (at most {STDIN_BYTES_MAX})",
                request.stdin_len
            );
        }
        let mut stdin = vec![0u8; usize::try_from(request.stdin_len)?];
        stream.read_exact(&mut stdin).await?;
        Ok((request, stdin))
    };
    let (request, stdin) =
        match tokio::time::timeout(Duration::from_millis(REQUEST_TIME_MS_MAX), read).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let text = format!("weft: error: the watch refused the command: {e}\n");
                frame(&mut stream, TAG_STDERR, text.as_bytes()).await?;
                frame(&mut stream, TAG_EXIT, &[Exit::Usage as u8]).await?;
                return Ok(());
            }
            Err(_) => anyhow::bail!("no whole request within {REQUEST_TIME_MS_MAX} ms"),
        };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let capture = Capture {
        tx,
        stdout_terminal: request.stdout_terminal,
        weft_token: request.weft_token,
    };
    let job = tokio::task::spawn_blocking(move || {
        out::capturing(capture, || run(request.command, stdin))
    });
    while let Some((s, bytes)) = rx.recv().await {
        let tag = match s {
            Stream::Stdout => TAG_STDOUT,
            Stream::Stderr => TAG_STDERR,
        };
        frame(&mut stream, tag, &bytes).await?;
    }
    let exit = job.await.unwrap_or(Exit::Failure);
    frame(&mut stream, TAG_EXIT, &[exit as u8]).await?;
    Ok(())
}

/// Runs a forwarded command as `main` would, its error printed as `main` prints it.
fn run(command: Forwarded, stdin: Vec<u8>) -> Exit {
    use crate::cmd::{inspect, records};
    let result = match command {
        Forwarded::Put(a) => records::put_from(a, std::io::Cursor::new(stdin)),
        Forwarded::Get(a) => records::get(a),
        Forwarded::List(a) => records::list(a),
        Forwarded::Delete(a) => records::delete(a),
        Forwarded::Status(a) => inspect::status(a),
        Forwarded::Links(a) => inspect::links(a),
    };
    match result {
        Ok(exit) => exit,
        Err(err) if crate::exit::is_broken_pipe(&err) => Exit::Ok,
        Err(err) => {
            out::note(format!("weft: error: {}", crate::exit::describe(&err)));
            if let Some(hint) = crate::exit::hint(&err) {
                out::note(format!("weft: hint: {hint}"));
            }
            crate::exit::classify(&err)
        }
    }
}
