//! Blob upload and download through the ledger, with content in the store (fjall on a
//! temporary directory) and in an S3-compatible bucket (moto's server, started as the
//! tests start it, or the server of `WEFT_TEST_S3_URL`), printed as a markdown table
//! for BENCHMARKS.md.
//!
//! Usage: `cargo bench -p sync-blob-s3 --bench s3_vs_store [-- <MiB>]` (default 64).
//!
//! Per backend: `Blobs::put` of a generated blob (hashed while it streams, each 64 KiB
//! chunk written, SyncData at the end; on S3 with one PUT in flight and with eight), a
//! streamed read (`Blobs::reader`, one chunk per
//! read), and reads in 4 MiB ranges (`Blobs::read_range`, what a node serves a
//! download with; on S3 up to 8 GETs in flight). Moto is a Python server: its figures
//! bound what this client does, not what S3 or MinIO would. The last two rows go
//! through a proxy that adds 10 ms to every request, as a store across a network would.

// A bench binary's output is its result: it prints a table on stdout by design.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_blob_s3::S3Content;
use sync_ledger::Ledger;
use sync_ledger::store::Durability;
use sync_types::Cid;

const MIB: usize = 1024 * 1024;
const RANGE_BYTES: u64 = 4 * 1024 * 1024;
/// The round trip added to each request by the proxy, in ms (a remote object store).
const DELAY_MS: u64 = 10;

/// A TCP proxy on 127.0.0.1 to `endpoint` (`http://HOST:PORT`) that holds each new
/// connection `delay_ms` before passing it on. Moto closes a connection after each
/// response, so every request pays the delay once, as a round trip to a remote store.
fn delaying_proxy(endpoint: &str, delay_ms: u64) -> String {
    let upstream = endpoint.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c_in, mut s_out) =
                    (conn.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, conn);
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    format!("http://{addr}")
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64);
    // Not compressible, not constant: an xorshift stream.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..mib * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let cid = Cid::of_data(&data);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{mib} MiB blob, 64 KiB chunks; load average before: {}",
        load.trim()
    );
    println!();
    println!("| content | upload MiB/s | streamed read MiB/s | 4 MiB ranges MiB/s |");
    println!("|---|---:|---:|---:|");
    // PUTs in flight (0: content in the store), and the delay added to each request.
    for (puts, delay_ms) in [(0, 0), (1, 0), (8, 0), (1, DELAY_MS), (8, DELAY_MS)] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = Ledger::builder();
        let name = if puts > 0 {
            let mut config = support::bucket("bench");
            config.puts_in_flight = puts;
            if delay_ms > 0 {
                config.endpoint = delaying_proxy(&config.endpoint, delay_ms);
            }
            let content = S3Content::new(config).unwrap();
            builder = builder.blob_content(Arc::new(content));
            format!("S3 bucket (moto), +{delay_ms} ms a request, {puts} PUT(s) in flight")
        } else {
            "in the store (fjall)".to_owned()
        };
        let ledger = builder.open_fjall(dir.path()).unwrap();
        let blobs = ledger.blobs();
        let rate = |t: Instant| (mib as f64) / t.elapsed().as_secs_f64();

        let t = Instant::now();
        blobs.put(&cid, &data[..], Durability::SyncData, 1).unwrap();
        let up = rate(t);

        let t = Instant::now();
        let mut back = Vec::with_capacity(data.len());
        blobs
            .reader(&cid, 0)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        let streamed = rate(t);
        assert!(back == data, "the streamed read returned the blob");

        let t = Instant::now();
        let mut offset = 0u64;
        let mut same = true;
        while offset < data.len() as u64 {
            let len = RANGE_BYTES.min(data.len() as u64 - offset);
            let got = blobs.read_range(&cid, offset, len).unwrap();
            let (a, b) = (usize::try_from(offset), usize::try_from(offset + len));
            same &= got[..] == data[a.unwrap()..b.unwrap()];
            offset += len;
        }
        let ranges = rate(t);
        assert!(same, "the ranges returned the blob");
        println!("| {name} | {up:.1} | {streamed:.1} | {ranges:.1} |");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!("load average after: {}", load.trim());
}
