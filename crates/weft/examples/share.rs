//! A delegated read-only share: the owner gives a friend a token that reads one
//! collection and nothing else; the friend's replica receives that collection, never
//! the others, and the node refuses the friend's writes.
//!
//! `cargo run -p weft --example share`

// An example's output is what it shows.
#![allow(clippy::print_stdout)]

use weft::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Recipe {
    name: String,
    minutes: u32,
}

#[tokio::main]
async fn main() -> weft::Result<()> {
    let node = LocalNode::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        TokenKey::derive(b"share example"),
    )
    .await?;
    let owner = Weft::builder("alice").in_memory().await?;
    owner
        .connect(&node.url(), &node.owner_token("alice", "alice", u64::MAX)?)
        .await?;
    let recipes = owner.collection::<Recipe>("recipes").await?;
    let diary = owner.collection::<String>("diary").await?;
    recipes
        .put(
            "pancakes",
            &Recipe {
                name: "Pancakes".into(),
                minutes: 20,
            },
        )
        .await?;
    recipes
        .put(
            "risotto",
            &Recipe {
                name: "Risotto".into(),
                minutes: 40,
            },
        )
        .await?;
    diary.put("2026-12-03", &"private".to_string()).await?;
    owner.sync().await?;

    // Bob's token: read and sync the recipes, for a week.
    let week_ms = 7 * 24 * 3600 * 1000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let share = node.read_only_token("alice", "bob", &["recipes"], now_ms + week_ms)?;
    let friend = Weft::builder("alice").in_memory().await?;
    friend.connect(&node.url(), &share).await?;
    friend.sync().await?;

    let shared = friend.collection_in::<Recipe>(
        recipes.protocol().clone(),
        weft::types::ProtocolPath::new(weft::COLLECTION_PATH)?,
    );
    for entry in shared.query(Query::all()).await?.entries {
        println!(
            "bob reads: {} ({} min)",
            entry.value.name, entry.value.minutes
        );
    }
    assert_eq!(shared.count().await?, 2);
    let diary_arrived = friend
        .replica()
        .has_protocol(friend.tenant(), diary.protocol())?;
    println!("bob's replica holds the diary: {diary_arrived}");
    assert!(!diary_arrived);

    // Bob edits locally; the node refuses it, and the sync error says which link and why.
    shared
        .put(
            "pancakes",
            &Recipe {
                name: "Pancakes".into(),
                minutes: 1,
            },
        )
        .await?;
    match friend.sync().await {
        Err(weft::Error::Sync(failed)) => println!("bob's sync refused: {}", failed.reason),
        other => panic!("a read-only share must not write: {other:?}"),
    }
    owner.sync().await?;
    assert_eq!(
        recipes.get("pancakes").await?.expect("kept").value.minutes,
        20
    );
    println!("alice still reads pancakes at 20 min");

    node.shutdown().await;
    Ok(())
}
