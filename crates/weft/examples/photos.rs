//! A photo album with blobs and residency: photos above the inline limit travel as
//! blobs, separately from their records; another device sees each record at once and
//! its photo when the blob has arrived (`Residency`).
//!
//! `cargo run -p weft --example photos`

// An example's output is what it shows.
#![allow(clippy::print_stdout)]

use weft::prelude::*;

/// A photo's bytes and what the album shows about it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Photo {
    caption: String,
    jpeg: Vec<u8>,
}

fn fake_jpeg(seed: u8, len: usize) -> Vec<u8> {
    // A repeating pattern of 251 values, offset by the seed.
    (0..len)
        .map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap_or(0)))
        .collect()
}

#[tokio::main]
async fn main() -> weft::Result<()> {
    let node = LocalNode::start_in_memory(
        "127.0.0.1:0".parse().unwrap(),
        TokenKey::derive(b"photos example"),
    )
    .await?;
    let token = node.owner_token("alice", "alice", u64::MAX)?;
    let dir = tempfile::tempdir()?;
    let camera = Weft::open(dir.path().join("camera"), "alice").await?;
    let tablet = Weft::open(dir.path().join("tablet"), "alice").await?;
    camera.connect(&node.url(), &token).await?;
    tablet.connect(&node.url(), &token).await?;

    // Binary values: postcard, so a photo is its bytes, not a JSON list of numbers.
    let album = camera
        .collection::<Photo>("album")
        .await?
        .with_codec(Codec::Postcard);
    let shots = [
        ("2026-12-01-beach", 300 * 1024),
        ("2026-12-02-forest", 200 * 1024),
    ];
    for (i, (key, len)) in shots.iter().enumerate() {
        let photo = Photo {
            caption: key[11..].to_string(),
            jpeg: fake_jpeg(u8::try_from(i).unwrap_or(0), *len),
        };
        album.put(key, &photo).await?;
    }
    let local = album.get("2026-12-01-beach").await?.expect("written");
    println!(
        "camera: {} ({} bytes, {:?})",
        local.key,
        local.value.jpeg.len(),
        local.residency
    );
    assert_eq!(local.residency, Residency::Resident);

    camera.sync().await?;
    tablet.sync().await?;
    let on_tablet = tablet.collection::<Photo>("album").await?;
    let page = on_tablet.query(Query::prefix("2026-12-")).await?;
    for entry in &page.entries {
        println!(
            "tablet: {} \"{}\" {} bytes, {:?}",
            entry.key,
            entry.value.caption,
            entry.value.jpeg.len(),
            entry.residency
        );
        assert_eq!(entry.residency, Residency::Resident);
    }
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0].value.jpeg, fake_jpeg(0, 300 * 1024));

    // Deleting a photo is a tombstone on every device; its blob is collected later.
    album.delete("2026-12-02-forest").await?;
    camera.sync().await?;
    tablet.sync().await?;
    assert!(on_tablet.get("2026-12-02-forest").await?.is_none());
    println!(
        "tablet: {} photo(s) after the delete",
        on_tablet.count().await?
    );
    assert_eq!(on_tablet.count().await?, 1);

    camera.close().await?;
    tablet.close().await?;
    node.shutdown().await;
    Ok(())
}
