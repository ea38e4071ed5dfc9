//! The node of `wire_bench`, in a process of its own: a `ReplicaHandler` over a fjall
//! replica behind a counting TCP proxy, driven over stdin (`bytes` answers `received
//! sent`, as seen from the node). The `wire_node` binary runs it with the allocator of
//! the `weft` binary; `wire_bench --serve` runs it in a copy of the bench's own process
//! when `wire_node` was not built.

// The node's address and counters go to the parent on stdout, by design.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sync_engine::{Replica, ReplicaHandler};
use sync_transport::{ServerConfig, TokenKey, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Buffer of each direction of a proxied connection.
const PROXY_BUFFER_BYTES: usize = 64 * 1024;

/// The key the node verifies tokens with, and the bench signs them with.
pub fn key() -> TokenKey {
    TokenKey::derive(b"wire bench")
}

/// Copies `from` to `to`, adding every byte to `counter`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; PROXY_BUFFER_BYTES];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The node role: serve a fjall replica behind a counting proxy; answer `bytes` with
/// `received sent` (as seen from the node).
pub fn serve_node(dir: &str, plain_wire: bool, wide_batches: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = Replica::open(dir).unwrap();
        let server = serve(
            Arc::new(ReplicaHandler::new(r.clone())),
            ServerConfig {
                dense_frames: !plain_wire,
                wide_batches,
                ..ServerConfig::new(key())
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let inner = server.local_addr();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outer = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        {
            let (received, sent) = (received.clone(), sent.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(upstream) = TcpStream::connect(inner).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::spawn(pump(cr, uw, received.clone()));
                    tokio::spawn(pump(ur, cw, sent.clone()));
                }
            });
        }
        println!("listening {outer}");
        let mut lines = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
            if line == "bytes" {
                let _keep_serving = &server;
                println!(
                    "{} {}",
                    received.load(Ordering::Relaxed),
                    sent.load(Ordering::Relaxed)
                );
            }
        }
    });
}
