//! `weft serve --blob-store s3://BUCKET[/PREFIX]?endpoint=…&region=…`: blob content
//! (the chunks) in an S3-compatible bucket instead of the node's store, so the nodes of
//! a shared PostgreSQL store keep large blobs out of the database. Everything else
//! about blobs (which exist, uploads in progress and their owners, the collector's
//! leases) stays in the store.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`, never from flags or the config file. The node checks the bucket
//! answers before it starts.

use std::sync::Arc;

use sync_blob_s3::{Credentials, S3Config, S3Content};
use sync_ledger::layout;
use sync_ledger::store::{KeyRange, Order};

use crate::exit::{Exit, coded, usage};

/// Whether `url` names an object store (else it is not a blob store at all).
pub(crate) fn is_s3(url: &str) -> bool {
    url.starts_with("s3://")
}

/// The backend for `url`, not yet contacted: a bad URL or missing credentials is a
/// usage error.
pub(crate) fn open(url: &str) -> anyhow::Result<Arc<S3Content>> {
    if !is_s3(url) {
        return Err(usage(format!(
            "bad blob store {url:?}: expected s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT&region=NAME"
        )));
    }
    let credentials = Credentials::from_env().map_err(|e| usage(e.to_string()))?;
    let config = S3Config::from_url(url, credentials).map_err(|e| usage(e.to_string()))?;
    let content = S3Content::new(config).map_err(|e| usage(e.to_string()))?;
    Ok(Arc::new(content))
}

/// Checks the bucket answers to these credentials (off the runtime's workers).
pub(crate) async fn check(content: Arc<S3Content>) -> anyhow::Result<()> {
    let shown = content.config().describe();
    let checked = tokio::task::spawn_blocking(move || content.check())
        .await
        .map_err(|e| coded(Exit::Store, format!("cannot check the blob store: {e}")))?;
    checked.map_err(|e| {
        coded(
            Exit::Store,
            format!("cannot use the blob store {shown}: {e}"),
        )
    })
}

/// Refuses a store that already holds blob content of its own: its blobs would be
/// read from the bucket, where they are not (there is no migration).
pub(crate) fn refuse_content_in_store(
    ledger: &sync_ledger::Ledger,
    shown: &str,
) -> anyhow::Result<()> {
    let held = ledger
        .store()
        .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
        .map_err(|e| coded(Exit::Store, format!("cannot read the store {shown}: {e}")))?
        .next()
        .is_some();
    if held {
        return Err(usage(format!(
            "the store {shown} holds blob content of its own, so it cannot keep its blobs in \
             an object store (--blob-store): serve it without --blob-store, or start a new store"
        )));
    }
    Ok(())
}
