//! The facade as an application uses it: typed records under natural keys, queries over
//! the key index, transactions, the change feed across a restart, and sync with a real
//! node on 127.0.0.1, including a read-only share that cannot write.

use std::time::Duration;

use futures_util::StreamExt;
use weft::prelude::*;

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Photo {
    caption: String,
    likes: u32,
}

async fn node() -> LocalNode {
    LocalNode::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        TokenKey::derive(b"test node"),
    )
    .await
    .unwrap()
}

fn key_str(i: u32) -> String {
    format!("k{i:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_with_each_codec_and_raw_bytes() {
    let db = Weft::builder("alice").in_memory().await.unwrap();
    let json = db.collection::<Photo>("photos").await.unwrap();
    let compact = db
        .collection::<Photo>("photos")
        .await
        .unwrap()
        .with_codec(Codec::Postcard);
    let p = Photo {
        caption: "sea".into(),
        likes: 3,
    };
    json.put("a", &p).await.unwrap();
    compact.put("b", &p).await.unwrap();
    // Either handle reads what either wrote: the codec travels in the header.
    assert_eq!(compact.get("a").await.unwrap().unwrap().value, p);
    assert_eq!(json.get("b").await.unwrap().unwrap().value, p);
    let raw = json.get_raw("a").await.unwrap().unwrap();
    assert_eq!(raw.value, br#"{"caption":"sea","likes":3}"#.to_vec());
    json.put_raw("bytes", b"\x00\x01").await.unwrap();
    assert_eq!(
        json.get_raw("bytes").await.unwrap().unwrap().value,
        b"\x00\x01"
    );
    assert!(matches!(
        json.get("bytes").await,
        Err(weft::Error::Decode(_))
    ));
    assert!(matches!(
        json.put("", &p).await,
        Err(weft::Error::BadKey(_))
    ));
    assert!(json.get("missing").await.unwrap().is_none());
    json.delete("a").await.unwrap();
    assert!(json.get("a").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_copied_under_another_key_is_refused() {
    let db = Weft::builder("alice").in_memory().await.unwrap();
    let photos = db.collection::<Photo>("photos").await.unwrap();
    // A header naming key "a", written through the replica as the record of key "b".
    let mut payload = vec![b'W', 1, 1, 1, 0, b'a'];
    payload.extend_from_slice(br#"{"caption":"x","likes":0}"#);
    db.replica()
        .put(
            db.tenant(),
            photos.protocol(),
            &weft::types::ProtocolPath::new(weft::COLLECTION_PATH).unwrap(),
            b"b",
            payload,
            &db.author(),
        )
        .unwrap();
    let err = photos.get("b").await.unwrap_err();
    assert!(
        matches!(err, weft::Error::KeyMismatch { ref key, .. } if key == "a"),
        "{err}"
    );
    // The index does not list it under the key it claims either.
    assert!(photos.query(Query::all()).await.unwrap().entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_page_through_a_range_in_either_order_and_counts_follow_deletes() {
    let db = Weft::builder("alice").in_memory().await.unwrap();
    let c = db.collection::<u32>("numbers").await.unwrap();
    let other = db.collection::<u32>("other").await.unwrap();
    let mut tx = Transaction::new();
    for i in 0..100u32 {
        tx.put(&c, &key_str(i), &i);
    }
    tx.put(&other, "k050", &0);
    db.commit(tx).await.unwrap();

    // Forward, pages of 7, from k010 up to (not including) k040.
    let mut keys = Vec::new();
    let mut query = Query::range("k010", "k040").limit(7);
    loop {
        let page = c.query(query.clone()).await.unwrap();
        assert!(page.entries.len() <= 7);
        keys.extend(page.entries.iter().map(|e| e.key.clone()));
        match page.next {
            Some(cursor) => query = Query::range("k010", "k040").limit(7).after(cursor),
            None => break,
        }
    }
    assert_eq!(keys, (10..40).map(key_str).collect::<Vec<_>>());

    // Reverse, by prefix.
    let page = c
        .query(Query::prefix("k09").reverse().limit(3))
        .await
        .unwrap();
    let got: Vec<_> = page
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("k099".into(), 99),
            ("k098".into(), 98),
            ("k097".into(), 97)
        ]
    );
    let rest = c
        .query(Query::prefix("k09").reverse().after(page.next.unwrap()))
        .await
        .unwrap();
    assert_eq!(rest.entries.len(), 7);
    assert_eq!(rest.entries[6].key, "k090");
    assert!(rest.next.is_none());

    assert_eq!(c.count().await.unwrap(), 100);
    assert_eq!(other.count().await.unwrap(), 1);
    c.delete("k050").await.unwrap();
    c.put("k050", &5000).await.unwrap();
    c.delete("k051").await.unwrap();
    assert_eq!(c.count().await.unwrap(), 99);
    let page = c.query(Query::range("k049", "k053")).await.unwrap();
    let got: Vec<_> = page
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("k049".into(), 49),
            ("k050".into(), 5000),
            ("k052".into(), 52)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_stale_expectation_writes_nothing() {
    let db = Weft::builder("alice").in_memory().await.unwrap();
    let c = db.collection::<u32>("numbers").await.unwrap();
    let first = c.put("x", &1).await.unwrap();
    c.put("x", &2).await.unwrap();
    let mut tx = Transaction::new();
    tx.put(&c, "y", &10);
    tx.put_if(&c, "x", &3, Expected::Version(first.cid));
    let err = db.commit(tx).await.unwrap_err();
    assert!(
        matches!(
            err,
            weft::Error::Engine(engine::Error::BatchItem { index: 1, .. })
        ),
        "{err}"
    );
    assert!(c.get("y").await.unwrap().is_none());
    assert_eq!(c.get("x").await.unwrap().unwrap().value, 2);
    assert_eq!(c.count().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_resumes_from_a_stored_token_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token;
    {
        let db = Weft::open(dir.path(), "alice").await.unwrap();
        let c = db.collection::<String>("notes").await.unwrap();
        c.put("one", &"1".to_string()).await.unwrap();
        c.put("two", &"2".to_string()).await.unwrap();
        c.delete("one").await.unwrap();
        let mut feed = Box::pin(db.changes(Since::Start).await.unwrap());
        let mut seen = Vec::new();
        // The configure of the collection is not a record change: three changes.
        for _ in 0..3 {
            let ch = feed.next().await.unwrap().unwrap();
            seen.push((ch.key.clone().unwrap(), ch.deleted, ch.source));
            if ch.key.as_deref() == Some("two") {
                assert_eq!(ch.value::<String>().unwrap().as_deref(), Some("2"));
            }
        }
        assert_eq!(
            seen,
            vec![
                ("one".into(), false, Source::Local),
                ("two".into(), false, Source::Local),
                ("one".into(), true, Source::Local),
            ]
        );
        // Stop after "two": the app stored this token.
        let mut again = Box::pin(db.changes(Since::Start).await.unwrap());
        again.next().await.unwrap().unwrap();
        token = again.next().await.unwrap().unwrap().token;
        drop((feed, again));
        db.close().await.unwrap();
    }
    let db = Weft::open(dir.path(), "alice").await.unwrap();
    let c = db.collection::<String>("notes").await.unwrap();
    let mut feed = Box::pin(db.changes(Since::Token(token)).await.unwrap());
    // What came after the token, then what is written after the restart, live.
    let ch = feed.next().await.unwrap().unwrap();
    assert_eq!((ch.key.as_deref(), ch.deleted), (Some("one"), true));
    let writer = c.clone();
    tokio::spawn(async move { writer.put("three", &"3".to_string()).await.unwrap() });
    let ch = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("a live change")
        .unwrap()
        .unwrap();
    assert_eq!(ch.key.as_deref(), Some("three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_reach_queries_and_the_feed_as_remote() {
    let node = node().await;
    let token = node.owner_token("alice", "alice", u64::MAX).unwrap();
    let a = Weft::builder("alice").in_memory().await.unwrap();
    let b = Weft::builder("alice").in_memory().await.unwrap();
    a.connect(&node.url(), &token).await.unwrap();
    b.connect(&node.url(), &token).await.unwrap();
    let on_a = a.collection::<u32>("numbers").await.unwrap();
    let mut tx = Transaction::new();
    for i in 0..20u32 {
        tx.put(&on_a, &key_str(i), &i);
    }
    a.commit(tx).await.unwrap();
    a.sync().await.unwrap();
    let mut feed = Box::pin(b.changes(Since::Start).await.unwrap());
    b.sync().await.unwrap();
    let on_b = b.collection::<u32>("numbers").await.unwrap();
    assert_eq!(on_b.count().await.unwrap(), 20);
    let page = on_b.query(Query::prefix("k01").limit(3)).await.unwrap();
    assert_eq!(page.entries[0].key, "k010");
    assert_eq!(page.entries[0].author, "alice");

    on_a.delete("k005").await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(on_b.count().await.unwrap(), 19);
    assert!(on_b.get("k005").await.unwrap().is_none());
    let mut changes = Vec::new();
    while changes.len() < 21 {
        let ch = feed.next().await.unwrap().unwrap();
        changes.push(ch);
    }
    assert!(changes.iter().all(|c| c.source == Source::Remote));
    let last = changes.last().unwrap();
    assert_eq!((last.key.as_deref(), last.deleted), (Some("k005"), true));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_share_receives_the_collection_and_cannot_write_to_it() {
    let node = node().await;
    let owner = Weft::builder("alice").in_memory().await.unwrap();
    owner
        .connect(
            &node.url(),
            &node.owner_token("alice", "alice", u64::MAX).unwrap(),
        )
        .await
        .unwrap();
    let album = owner.collection::<Photo>("album").await.unwrap();
    let diary = owner.collection::<String>("diary").await.unwrap();
    album
        .put(
            "beach",
            &Photo {
                caption: "beach".into(),
                likes: 1,
            },
        )
        .await
        .unwrap();
    diary
        .put("secret", &"not shared".to_string())
        .await
        .unwrap();
    owner.sync().await.unwrap();

    let guest = Weft::builder("alice").in_memory().await.unwrap();
    let share = node
        .read_only_token("alice", "bob", &["album"], u64::MAX)
        .unwrap();
    guest.connect(&node.url(), &share).await.unwrap();
    assert_eq!(guest.author().as_str(), "bob");
    guest.sync().await.unwrap();
    let seen = guest.collection_in::<Photo>(
        album.protocol().clone(),
        weft::types::ProtocolPath::new(weft::COLLECTION_PATH).unwrap(),
    );
    assert_eq!(seen.get("beach").await.unwrap().unwrap().value.likes, 1);
    // Only the shared collection arrived.
    assert!(
        !guest
            .replica()
            .has_protocol(guest.tenant(), diary.protocol())
            .unwrap()
    );

    // The guest edits locally; the node refuses it and the sync says which link failed.
    seen.put(
        "beach",
        &Photo {
            caption: "vandalised".into(),
            likes: 0,
        },
    )
    .await
    .unwrap();
    let err = guest.sync().await.unwrap_err();
    let weft::Error::Sync(failed) = &err else {
        panic!("{err}")
    };
    assert_eq!(failed.link.as_ref().unwrap().endpoint.as_str(), node.url());
    assert!(failed.reason.contains("needs write"), "{err}");
    // Nothing of it is stored on the node: the owner still reads the original.
    owner.sync().await.unwrap();
    assert_eq!(
        album.get("beach").await.unwrap().unwrap().value.caption,
        "beach"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_index_survives_a_restart_and_catches_up_with_writes_it_did_not_see() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Weft::open(dir.path(), "alice").await.unwrap();
        let c = db.collection::<u32>("numbers").await.unwrap();
        let other = db.collection::<u32>("other").await.unwrap();
        for i in 0..10u32 {
            c.put(&key_str(i), &i).await.unwrap();
            // Interleaved with another collection's writes, which its feed leaves out.
            other.put(&key_str(i), &i).await.unwrap();
        }
        assert_eq!(c.count().await.unwrap(), 10);
        // Written after the index last followed, then the store closes.
        c.put(&key_str(10), &10).await.unwrap();
        c.delete(&key_str(0)).await.unwrap();
        db.close().await.unwrap();
    }
    let db = Weft::open(dir.path(), "alice").await.unwrap();
    let c = db.collection::<u32>("numbers").await.unwrap();
    let mut feed = Box::pin(c.changes(Since::Start).await.unwrap());
    assert_eq!(c.count().await.unwrap(), 10);
    let page = c.query(Query::all().limit(2)).await.unwrap();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["k001", "k002"]);
    let last = c.query(Query::all().reverse().limit(1)).await.unwrap();
    assert_eq!(last.entries[0].key, "k010");
    // The collection's feed has its twelve changes, none of the other collection's.
    let mut n = 0;
    while n < 12 {
        let ch = feed.next().await.unwrap().unwrap();
        assert_eq!(ch.protocol, c.protocol().as_str());
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_is_listed_once_its_blob_has_arrived() {
    let node = node().await;
    let token = node.owner_token("alice", "alice", u64::MAX).unwrap();
    let a = Weft::builder("alice").in_memory().await.unwrap();
    // B is on a metered network: it syncs records but not their blobs.
    let lazy = engine::SyncConfig {
        blob_fetch: false,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let b = Weft::builder("alice")
        .sync_config(lazy)
        .open(dir.path())
        .await
        .unwrap();
    a.connect(&node.url(), &token).await.unwrap();
    b.connect(&node.url(), &token).await.unwrap();
    let big = Photo {
        caption: "big".into(),
        likes: 7,
    };
    let on_a = a.collection::<Photo>("album").await.unwrap();
    // A caption over the inline limit makes the payload a blob.
    let mut large = big.clone();
    large.caption = "x".repeat(100 * 1024);
    on_a.put("large", &large).await.unwrap();
    on_a.put("small", &big).await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();

    let on_b = b.collection::<Photo>("album").await.unwrap();
    // The record is here, its value is not: the index lists what it can name.
    match on_b.get("large").await {
        Err(weft::Error::NotArrived { size, .. }) => assert!(size > 100 * 1024),
        other => panic!("expected NotArrived, got {other:?}"),
    }
    assert_eq!(on_b.count().await.unwrap(), 1);
    // Collections are handles on the store too: the last one closes it.
    drop(on_b);
    b.close().await.unwrap();

    // Back on a free network, after a restart: the blob arrives, the record is listed.
    let eager = engine::SyncConfig {
        blob_fetch_detached: false,
        ..Default::default()
    };
    let b = Weft::builder("alice")
        .sync_config(eager)
        .open(dir.path())
        .await
        .unwrap();
    b.sync().await.unwrap();
    let on_b = b.collection::<Photo>("album").await.unwrap();
    assert_eq!(on_b.count().await.unwrap(), 2);
    let page = on_b.query(Query::all()).await.unwrap();
    assert_eq!(page.entries[0].key, "large");
    assert_eq!(page.entries[0].value.caption.len(), 100 * 1024);
    assert_eq!(page.entries[0].residency, Residency::Resident);
    node.shutdown().await;
}

/// Two devices create the same key while apart, and one of them deletes it; a third
/// device receives the versions in either order. Its key index must agree with its
/// records whatever the order: the index skips reading a record when it follows the
/// record's first initial write, and must not keep a record listed that a later entry
/// (or an earlier one it already followed) has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_a_delete_index_the_same_in_either_arrival_order() {
    for a_first in [true, false] {
        let node = node().await;
        let token = node.owner_token("alice", "alice", u64::MAX).unwrap();
        let a = Weft::builder("alice").in_memory().await.unwrap();
        let b = Weft::builder("alice").in_memory().await.unwrap();
        let c = Weft::builder("alice").in_memory().await.unwrap();
        for db in [&a, &b, &c] {
            db.connect(&node.url(), &token).await.unwrap();
        }
        let on_a = a.collection::<u32>("numbers").await.unwrap();
        let on_b = b.collection::<u32>("numbers").await.unwrap();
        let on_c = c.collection::<u32>("numbers").await.unwrap();
        // Neither has seen the other's create: both are initial writes.
        on_a.put("shared", &1).await.unwrap();
        on_a.put("only-a", &1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        on_b.put("shared", &2).await.unwrap();
        on_b.delete("shared").await.unwrap();
        on_b.put("only-b", &2).await.unwrap();
        if a_first {
            a.sync().await.unwrap();
            b.sync().await.unwrap();
        } else {
            b.sync().await.unwrap();
            a.sync().await.unwrap();
        }
        c.sync().await.unwrap();

        let live = on_c.get("shared").await.unwrap().is_some();
        let listed: Vec<String> = on_c
            .query(Query::all().limit(10))
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut expected = vec!["only-a".to_string(), "only-b".to_string()];
        if live {
            expected.push("shared".into());
            expected.sort();
        }
        assert_eq!(listed, expected, "a first: {a_first}");
        assert_eq!(on_c.count().await.unwrap(), expected.len() as u64);
        // A and B converge on the same answer after they exchange everything.
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        assert_eq!(on_a.get("shared").await.unwrap().is_some(), live);
        assert_eq!(on_b.get("shared").await.unwrap().is_some(), live);
        assert_eq!(on_a.count().await.unwrap(), expected.len() as u64);
        assert_eq!(on_b.count().await.unwrap(), expected.len() as u64);
        node.shutdown().await;
    }
}

/// A read-write share: the delegate writes to the collection it was given (the owner
/// sees the write under the delegate's name), and its write to a collection it was not
/// given stays on the delegate's own device: the sync counts it out of scope, and the
/// owner's record is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_share_writes_its_collection_and_nothing_else() {
    let node = node().await;
    let owner = Weft::builder("alice").in_memory().await.unwrap();
    let expires = weft::expires_in(Duration::from_secs(600));
    owner
        .connect(
            &node.url(),
            &node.owner_token("alice", "alice", expires).unwrap(),
        )
        .await
        .unwrap();
    let list = owner.collection::<String>("groceries").await.unwrap();
    let diary = owner.collection::<String>("diary").await.unwrap();
    list.put("milk", &"2 litres".to_string()).await.unwrap();
    diary
        .put("secret", &"not shared".to_string())
        .await
        .unwrap();
    owner.sync().await.unwrap();

    let guest = Weft::builder("alice").in_memory().await.unwrap();
    let share = node
        .read_write_token("alice", "bob", &["groceries"], expires)
        .unwrap();
    guest.connect(&node.url(), &share).await.unwrap();
    guest.sync().await.unwrap();
    let on_guest = guest.collection::<String>("groceries").await.unwrap();
    assert_eq!(
        on_guest.get("milk").await.unwrap().unwrap().value,
        "2 litres"
    );
    on_guest.put("eggs", &"a dozen".to_string()).await.unwrap();
    guest.sync().await.unwrap();
    owner.sync().await.unwrap();
    let eggs = list.get("eggs").await.unwrap().unwrap();
    assert_eq!(
        (eggs.value.as_str(), eggs.author.as_str()),
        ("a dozen", "bob")
    );

    // The diary was not shared: the guest's write to it stays on the guest.
    let forged = guest.collection::<String>("diary").await.unwrap();
    forged
        .put("secret", &"overwritten".to_string())
        .await
        .unwrap();
    // The link's scope is the groceries: the push leaves the diary out and says so.
    let report = guest.sync().await.unwrap();
    let push = report.links[0].push.as_ref().unwrap();
    assert!(push.out_of_scope >= 1, "{push:?}");
    assert_eq!(push.sent.messages, 0);
    owner.sync().await.unwrap();
    let secret = diary.get("secret").await.unwrap().unwrap();
    assert_eq!(
        (secret.value.as_str(), secret.author.as_str()),
        ("not shared", "alice")
    );
    assert_eq!(diary.count().await.unwrap(), 1);
    node.shutdown().await;
}

#[test]
fn expires_in_is_now_plus_the_duration_in_epoch_milliseconds() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let now = u64::try_from(now).unwrap();
    let at = weft::expires_in(Duration::from_secs(60));
    assert!((now + 60_000..now + 70_000).contains(&at), "{now} {at}");
    assert_eq!(weft::expires_in(Duration::MAX), u64::MAX);
}
