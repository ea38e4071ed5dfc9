//! An offline-first to-do list on two devices: each writes while offline, then both
//! sync through a node this example starts on 127.0.0.1, and live sync carries the
//! next change by itself.
//!
//! `cargo run -p weft --example todo`

// An example's output is what it shows.
#![allow(clippy::print_stdout)]

use futures_util::StreamExt;
use weft::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Todo {
    title: String,
    done: bool,
}

#[tokio::main]
async fn main() -> weft::Result<()> {
    let node = LocalNode::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        TokenKey::derive(b"todo example"),
    )
    .await?;
    let token = node.owner_token("alice", "alice", u64::MAX)?;
    let dir = tempfile::tempdir()?;
    let laptop = Weft::open(dir.path().join("laptop"), "alice").await?;
    let phone = Weft::open(dir.path().join("phone"), "alice").await?;
    laptop.connect(&node.url(), &token).await?;
    phone.connect(&node.url(), &token).await?;

    // Offline: each device adds its own items.
    let on_laptop = laptop.collection::<Todo>("todos").await?;
    let on_phone = phone.collection::<Todo>("todos").await?;
    on_laptop
        .put(
            "1-milk",
            &Todo {
                title: "Buy milk".into(),
                done: false,
            },
        )
        .await?;
    on_laptop
        .put(
            "2-taxes",
            &Todo {
                title: "File taxes".into(),
                done: false,
            },
        )
        .await?;
    on_phone
        .put(
            "3-call-mum",
            &Todo {
                title: "Call mum".into(),
                done: false,
            },
        )
        .await?;

    // Back online: both sync, and both hold all three.
    laptop.sync().await?;
    phone.sync().await?;
    laptop.sync().await?;
    for (name, device) in [("laptop", &on_laptop), ("phone", &on_phone)] {
        let page = device.query(Query::all()).await?;
        println!("{name}:");
        for entry in &page.entries {
            let mark = if entry.value.done { "x" } else { " " };
            println!("  [{mark}] {} ({})", entry.value.title, entry.key);
        }
        assert_eq!(page.entries.len(), 3);
    }

    // Live: the laptop ticks an item off; the phone's feed shows it arrive.
    let mut feed = Box::pin(phone.changes(Since::Now).await?);
    laptop.start_live().await?;
    phone.start_live().await?;
    let milk = on_laptop.get("1-milk").await?.expect("synced");
    on_laptop
        .put_if(
            "1-milk",
            &Todo {
                done: true,
                ..milk.value
            },
            Expected::Version(milk.version),
        )
        .await?;
    let change = feed.next().await.expect("the feed is live")?;
    let todo: Todo = change.value()?.expect("a write");
    println!(
        "phone saw {:?} change {:?}: done = {}",
        change.source, change.key, todo.done
    );
    assert!(todo.done);

    let status = phone.status().await?;
    println!("phone: sync healthy = {}", status.healthy);
    laptop.close().await?;
    phone.close().await?;
    node.shutdown().await;
    Ok(())
}
