//! What a misbehaving or failing server gets: a scripted HTTP server on 127.0.0.1
//! answers each request with the next scripted response, and counts them. Transient
//! failures are retried and then surface as the ledger's `Retry`; client errors are
//! not retried; bodies over their limit, listings that do not move on, and silence
//! are refused with a clear error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sync_blob_s3::{Credentials, S3Config, S3Content, S3Error};
use sync_ledger::store::Durability;
use sync_ledger::store::{Batch, MemoryStore};
use sync_ledger::{BlobContent, Error, Ledger};
use sync_types::Cid;

/// A response: status line's code, body.
type Scripted = (u16, Vec<u8>);

/// Serves `script` in order (the last one again once it runs out; `None`: accept and
/// never answer); returns the endpoint and the request count.
fn server(script: Vec<Option<Scripted>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            match script.get(n).or(script.last()).cloned().flatten() {
                Some((status, body)) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&body);
                }
                None => held.push(conn),
            }
        }
    });
    (endpoint, count)
}

fn content(endpoint: &str, retries: u32) -> S3Content {
    let mut config = S3Config::new(
        endpoint,
        "us-east-1",
        "weft-faults",
        Credentials::new("a", "b"),
    );
    config.retries_max = retries;
    config.request_time_ms_max = 2_000;
    config.list_page_keys = 2;
    S3Content::new(config).unwrap()
}

fn error(code: &str) -> Vec<u8> {
    format!("<Error><Code>{code}</Code><Message>scripted {code}</Message></Error>").into_bytes()
}

fn at() -> Cid {
    Cid::of_data(b"faults")
}

#[test]
fn transient_failures_are_retried_until_one_succeeds() {
    let (endpoint, count) = server(vec![
        Some((503, error("SlowDown"))),
        Some((500, error("InternalError"))),
        Some((200, b"abc".to_vec())),
    ]);
    let got = content(&endpoint, 4)
        .chunk(&MemoryStore::new(), &at(), 0)
        .unwrap();
    assert_eq!(got, Some(b"abc".to_vec()));
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn transient_failures_past_the_retries_are_the_ledgers_retry() {
    let (endpoint, count) = server(vec![Some((503, error("SlowDown")))]);
    let c = content(&endpoint, 2);
    // The PUT runs in the background; the flush before a commit reports it.
    c.put_chunk(
        &MemoryStore::new(),
        &mut Batch::new(),
        &at(),
        0,
        vec![1; 10],
    )
    .unwrap();
    let err = c.flush(&at()).unwrap_err();
    assert!(err.is_retry(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("503") && text.contains("SlowDown"), "{text}");
    assert!(text.contains("weft-faults/"), "names the object: {text}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "the first attempt and two retries"
    );
}

#[test]
fn a_refusal_is_not_retried() {
    let (endpoint, count) = server(vec![Some((403, error("AccessDenied")))]);
    let err = content(&endpoint, 4)
        .chunk(&MemoryStore::new(), &at(), 0)
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn an_object_larger_than_a_chunk_is_refused() {
    let (endpoint, count) = server(vec![Some((200, vec![0; 64 * 1024 + 1]))]);
    let err = content(&endpoint, 4)
        .chunk(&MemoryStore::new(), &at(), 0)
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds the limit of 65536 bytes"),
        "{err}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1, "not retried");
}

#[test]
fn listings_that_do_not_move_on_or_overflow_are_refused() {
    let prefix = format!("{}/", at());
    let page = |keys: &[u32], token: &str| {
        let keys: String = keys
            .iter()
            .map(|i| format!("<Contents><Key>{prefix}{i:010}</Key></Contents>"))
            .collect();
        let more = if token.is_empty() {
            "<IsTruncated>false</IsTruncated>".to_owned()
        } else {
            format!(
                "<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
            )
        };
        Some((
            200,
            format!("<ListBucketResult>{keys}{more}</ListBucketResult>").into_bytes(),
        ))
    };
    let store = MemoryStore::new();

    // The same continuation twice: refused instead of listing forever.
    let (endpoint, _) = server(vec![page(&[0, 1], "t"), page(&[2, 3], "t")]);
    let c = content(&endpoint, 0);
    let e = c.stored_indexes(&at()).unwrap_err();
    assert!(matches!(e, S3Error::BadResponse { .. }), "{e}");
    assert!(e.to_string().contains("continuation"), "{e}");

    // More keys than asked for.
    let (endpoint, _) = server(vec![page(&[0, 1, 2], "")]);
    let e = content(&endpoint, 0).stored_indexes(&at()).unwrap_err();
    assert!(
        e.to_string().contains("3 keys in a page of at most 2"),
        "{e}"
    );

    // Keys out of order.
    let (endpoint, _) = server(vec![page(&[4, 5], "u"), page(&[1], "")]);
    let e = content(&endpoint, 0).stored_indexes(&at()).unwrap_err();
    assert!(e.to_string().contains("out of order"), "{e}");

    // A truncated page without a token.
    let (endpoint, _) = server(vec![Some((
        200,
        b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>".to_vec(),
    ))]);
    let err = content(&endpoint, 0)
        .delete_chunks(&store, &mut Batch::new(), &at())
        .unwrap_err();
    assert!(err.to_string().contains("continuation"), "{err}");
}

#[test]
fn a_server_that_never_answers_is_given_up_on() {
    let (endpoint, count) = server(vec![None]);
    let mut config = S3Config::new(
        endpoint,
        "us-east-1",
        "weft-faults",
        Credentials::new("a", "b"),
    );
    config.retries_max = 1;
    config.request_time_ms_max = 300;
    let err = S3Content::new(config).unwrap().check().unwrap_err();
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("no answer within 300 ms"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A PUT that fails in the background fails the commit that would have named its
/// chunk: nothing of the upload is recorded.
#[test]
fn a_failed_put_fails_the_commit_that_would_name_it() {
    let (endpoint, _) = server(vec![Some((403, error("AccessDenied")))]);
    let ledger = Ledger::builder()
        .blob_content(Arc::new(content(&endpoint, 0)))
        .open_in_memory()
        .unwrap();
    let data = vec![5u8; 20 * 65_536];
    let cid = Cid::of_data(&data);
    let mut up = ledger
        .blobs()
        .upload(&cid, Some(data.len() as u64), 1)
        .unwrap();
    let written = up.write(&data);
    let err = written
        .and_then(|()| up.checkpoint(Durability::SyncData).map(|_| ()))
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    drop(up);
    assert_eq!(
        ledger.blobs().upload_offset(&cid).unwrap(),
        None,
        "no state committed"
    );
}
