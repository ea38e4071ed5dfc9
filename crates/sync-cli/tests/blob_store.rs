//! `weft serve --blob-store s3://…`: a real node process keeps blob content in a bucket
//! of a real S3-compatible server (moto, signatures checked; see
//! `sync-blob-s3/tests/support`), not in its store; it refuses to start when the bucket
//! does not answer to its credentials, and when its store already holds content. Two
//! nodes on one PostgreSQL database share the bucket.

mod cli_support;
mod cluster_support;
#[path = "../../sync-blob-s3/tests/support/mod.rs"]
mod s3_support;

use cli_support::{Env, Node};
use sync_blob_s3::{S3Config, S3Content};
use sync_ledger::layout;
use sync_ledger::store::{KeyRange, Order, Store as _};

/// An env whose `weft` commands see the test server's credentials.
fn env_for(config: &S3Config) -> Env {
    let mut env = Env::new();
    env.set("AWS_ACCESS_KEY_ID", &config.credentials.access_key_id);
    env.set(
        "AWS_SECRET_ACCESS_KEY",
        &config.credentials.secret_access_key,
    );
    env
}

/// An owner token for tenant `demo` of the node in `data_dir`; WEFT_NODE/TOKEN/TENANT set.
fn connect(env: &mut Env, data_dir: &str, node: &Node) {
    let key_file = format!("{data_dir}/node.key");
    let token = env.ok(&[
        "token",
        "issue",
        "--key-file",
        &key_file,
        "--tenant",
        "demo",
    ]);
    env.set("WEFT_TOKEN", token.stdout.trim());
    env.set("WEFT_NODE", &node.url);
    env.set("WEFT_TENANT", "demo");
}

fn chunk_rows(env: &Env, data_dir: &str) -> usize {
    let store = sync_ledger::FjallStore::open(env.path(data_dir).join("store")).unwrap();
    store
        .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
        .unwrap()
        .count()
}

fn get(env: &Env, store: &str, key: &str) -> Vec<u8> {
    use base64::Engine as _;
    let got = env.ok(&["get", "--store", store, key, "--json"]).json();
    base64::engine::general_purpose::STANDARD
        .decode(got["value_base64"].as_str().unwrap())
        .unwrap()
}

/// A value above the inline limit travels as a blob: uploaded through the node into the
/// bucket (under the configured prefix), downloaded back by another replica, also
/// after a restart; the node's store holds none of it. The blob store is set in the
/// config file.
#[test]
fn a_node_keeps_blob_content_in_the_bucket_and_serves_it_back() {
    let mut config = s3_support::bucket("node");
    config.prefix = "nodes/a/".into();
    let mut env = env_for(&config);
    std::fs::write(
        env.path("weft.toml"),
        format!(
            "data_dir = \"node\"\nblob_store = \"{}\"\n",
            s3_support::url(&config)
        ),
    )
    .unwrap();
    let serve = ["serve", "--config", "weft.toml", "--listen", "127.0.0.1:0"];
    let node = env.serve_with(&serve);
    connect(&mut env, "node", &node);

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(env.path("big.bin"), &big).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.bin"]);
    env.ok(&["sync", "--store", "a"]);
    env.ok(&["sync", "--store", "b"]);
    assert!(get(&env, "b", "big") == big, "the value came back intact");

    // In the bucket, under the prefix: 300,000 bytes are 5 chunks of 64 KiB.
    let content = S3Content::new(config.clone()).unwrap();
    let keys = content.keys(1_000).unwrap();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("nodes/a/")), "{keys:?}");
    assert!(keys[4].ends_with("/0000000004"), "{keys:?}");

    // A restarted node serves it from the bucket; its store never held a chunk.
    let (status, _) = node.terminate();
    assert!(status.success());
    assert_eq!(chunk_rows(&env, "node"), 0, "no chunk in the node's store");
    let node = env.serve_with(&serve);
    env.set("WEFT_NODE", &node.url);
    env.ok(&["sync", "--store", "c"]);
    assert!(
        get(&env, "c", "big") == big,
        "served from the bucket after a restart"
    );
    let (status, err) = node.terminate();
    assert!(status.success(), "{err}");
    assert!(
        err.contains(&config.bucket),
        "the log names the bucket: {err}"
    );
}

/// A wrong secret, a missing bucket, missing credentials or a bad URL: the node does
/// not start, says why, and has stored nothing.
#[test]
fn a_node_refuses_to_start_on_a_bucket_it_cannot_use() {
    let config = s3_support::bucket("refuse");
    let url = s3_support::url(&config);
    let mut env = env_for(&config);
    let serve = |env: &Env, code: i32, url: &str| {
        env.fails(
            code,
            &[
                "serve",
                "--data-dir",
                "node",
                "--listen",
                "127.0.0.1:0",
                "--blob-store",
                url,
            ],
        )
        .stderr
    };

    let mut wrong = config.credentials.secret_access_key.clone();
    wrong.push('x');
    env.set("AWS_SECRET_ACCESS_KEY", &wrong);
    let err = serve(&env, 5, &url);
    assert!(
        err.contains("cannot use the blob store") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(err.contains("403") && err.contains(&config.bucket), "{err}");
    assert!(
        err.contains("check --blob-store") && !err.contains("weft store directory"),
        "the hint is about the bucket, not the store: {err}"
    );
    assert!(!err.contains(&wrong), "the secret is never printed: {err}");
    assert!(!env.path("node/store").exists(), "no store was opened");
    assert!(
        S3Content::new(config.clone())
            .unwrap()
            .keys(10)
            .unwrap()
            .is_empty(),
        "nothing in the bucket"
    );

    env.set(
        "AWS_SECRET_ACCESS_KEY",
        &config.credentials.secret_access_key,
    );
    let missing = url.replacen(&config.bucket, "weft-no-such-bucket", 1);
    let err = serve(&env, 5, &missing);
    assert!(err.contains("NoSuchBucket"), "{err}");

    env.set("AWS_SECRET_ACCESS_KEY", "");
    let err = serve(&env, 2, &url);
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");

    env.set(
        "AWS_SECRET_ACCESS_KEY",
        &config.credentials.secret_access_key,
    );
    let err = serve(&env, 2, &format!("s3://{}?endpoint=ftp://x", config.bucket));
    assert!(err.contains("endpoint"), "{err}");
    let err = serve(&env, 2, "gs://bucket");
    assert!(err.contains("expected s3://BUCKET"), "{err}");
}

/// A store that keeps blob content of its own cannot switch to a bucket: its blobs
/// would be looked for where they are not.
#[test]
fn a_store_with_content_of_its_own_is_not_moved_to_a_bucket() {
    let config = s3_support::bucket("switch");
    let mut env = env_for(&config);
    let node = env.serve("node", &[]);
    connect(&mut env, "node", &node);
    std::fs::write(env.path("big.bin"), vec![9u8; 100_000]).unwrap();
    env.ok(&["put", "--store", "a", "big", "--file", "big.bin"]);
    env.ok(&["sync", "--store", "a"]);
    let (status, _) = node.terminate();
    assert!(status.success());
    assert!(chunk_rows(&env, "node") > 0);

    let url = s3_support::url(&config);
    let r = env.fails(
        2,
        &[
            "serve",
            "--data-dir",
            "node",
            "--listen",
            "127.0.0.1:0",
            "--blob-store",
            &url,
        ],
    );
    assert!(
        r.stderr.contains("holds blob content of its own"),
        "{}",
        r.report()
    );
}

/// Two nodes on one PostgreSQL database, one bucket: a blob a replica uploads through
/// node A downloads through node B, byte for byte; its chunks are objects of the
/// bucket, and the database holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_on_one_database_share_the_bucket() {
    use cluster_support::{Rep, Site, tenant, until};

    let site = Site::new("s3blobs");
    let config = s3_support::bucket("cluster");
    let url = s3_support::url(&config);
    let node = || {
        let mut c = site.serve_command(&site.key_file, "127.0.0.1:0", &["--blob-store", &url]);
        c.env("AWS_ACCESS_KEY_ID", &config.credentials.access_key_id)
            .env(
                "AWS_SECRET_ACCESS_KEY",
                &config.credentials.secret_access_key,
            );
        site.spawn(c)
    };
    let (a, b) = (node(), node());
    let t = tenant("s3blobs");
    let writer = Rep::new(&t, &a.url);
    let reader = Rep::new(&t, &b.url);
    writer.configure();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: u32| i.wrapping_mul(2_654_435_761).to_be_bytes()[1])
        .collect();
    let data = writer.replica.write_blob(&bytes[..]).unwrap();
    let id = writer.put_blob("photo", data);
    writer.sync().await;
    assert_eq!(writer.pending(), 0);

    reader.sync().await;
    until("the blob through node B", || {
        reader.replica.residency(&t, &id).unwrap() == sync_engine::blob::Residency::Resident
    })
    .await;
    let got = reader
        .replica
        .read_blob(&data.data_cid, 0, data.size)
        .unwrap();
    assert!(got == bytes, "the blob came back intact");
    // 3 MiB and 17 bytes are 49 chunks of 64 KiB, all in the bucket.
    let keys =
        tokio::task::spawn_blocking(move || S3Content::new(config).unwrap().keys(1_000).unwrap())
            .await
            .unwrap();
    assert_eq!(keys.len(), 49, "{keys:?}");
    assert_eq!(site.rows("blob_chunks"), 0, "no chunk in the database");
    assert_eq!(
        site.rows("blob_meta"),
        1,
        "which blobs exist stays in the database"
    );
}
