//! One change feed: every committed change in log order from a token (or from now),
//! then live, as a [`Stream`].
//!
//! The feed reads the replica's log, the same durable log sync uses, so it misses
//! nothing and a stored token resumes it after a restart. It subscribes to the
//! replica's change notifications *before* reading, and treats a notification only as
//! a wake-up to read the log again: a lagging subscriber costs latency, never a change.
//! A superseded version that the log no longer retains is not replayed; the version
//! that replaced it is.

use std::collections::VecDeque;

use futures_util::Stream;
use serde::de::DeserializeOwned;
use sync_ledger::LogRead;
use sync_types::{Message, ProgressToken, RecordId};
use tokio::sync::broadcast;

use crate::codec::{Codec, header};
use crate::error::{Error, Result, blocking};
use crate::store::Weft;

/// Log entries read per page by the feed.
const FEED_PAGE_LEN: usize = 256;

/// Where a feed starts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Since {
    /// From the first change the store holds.
    Start,
    /// From the next change committed after the feed starts.
    Now,
    /// After the change whose [`Change::token`] this is.
    Token(String),
}

/// Whether a change was written on this device or arrived from elsewhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// Written through this store.
    Local,
    /// Received from a node.
    Remote,
}

/// A committed change.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    /// The collection's protocol (`weft:collection/<name>` for [`Weft::collection`]).
    pub protocol: String,
    /// The record's key, when known (a record without a weft header has none).
    pub key: Option<String>,
    /// The record.
    pub record_id: RecordId,
    /// Whether the change is a delete (a tombstone).
    pub deleted: bool,
    /// Where it was written.
    pub source: Source,
    /// Where the feed stands after it: store it, and resume with [`Since::Token`].
    pub token: String,
    /// The encoded value of a write whose payload travels inline; `None` for a delete
    /// or a large value (read it with [`Collection::get`](crate::Collection::get)).
    value: Option<(u8, Vec<u8>)>,
}

impl Change {
    /// The value of a write, decoded as `T`; `None` for a delete or a large value.
    pub fn value<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match &self.value {
            Some((tag, bytes)) => Codec::decode(*tag, bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The raw bytes of a write's value; `None` for a delete or a large value.
    pub fn raw_value(&self) -> Option<&[u8]> {
        self.value.as_ref().map(|(_, v)| v.as_slice())
    }
}

struct FeedState {
    weft: Weft,
    cursor: Option<ProgressToken>,
    buffered: VecDeque<Change>,
    wake: broadcast::Receiver<sync_engine::Change>,
}

impl Weft {
    /// Every committed change from `since`, in log order, then live: the stream waits
    /// for the next commit instead of ending. Local and remote changes alike.
    pub async fn changes(
        &self,
        since: Since,
    ) -> Result<impl Stream<Item = Result<Change>> + Send + 'static> {
        // Subscribed before the log is read, so no commit falls between the two.
        let wake = self.inner.replica.subscribe();
        let cursor = match since {
            Since::Start => None,
            Since::Token(text) => Some(text.parse::<ProgressToken>()?),
            Since::Now => {
                let this = self.clone();
                blocking(move || {
                    let inner = &this.inner;
                    match inner.replica.changes_since(&inner.tenant, None, 1)? {
                        LogRead::Page(page) => Ok(page.head),
                        LogRead::Gap(gap) => Ok(gap.latest_available),
                    }
                })
                .await?
            }
        };
        let state = FeedState {
            weft: self.clone(),
            cursor,
            buffered: VecDeque::new(),
            wake,
        };
        Ok(futures_util::stream::unfold(
            Some(state),
            |state| async move {
                let mut state = state?;
                loop {
                    if let Some(change) = state.buffered.pop_front() {
                        return Some((Ok(change), Some(state)));
                    }
                    let weft = state.weft.clone();
                    let cursor = state.cursor;
                    match blocking(move || read_page(&weft, cursor)).await {
                        Err(e) => return Some((Err(e), None)),
                        Ok((changes, next)) if !changes.is_empty() => {
                            state.cursor = next.or(state.cursor);
                            state.buffered.extend(changes);
                        }
                        Ok((_, next)) => {
                            state.cursor = next.or(state.cursor);
                            // Caught up: wait for the next commit (a lag is only a wake-up).
                            match state.wake.recv().await {
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return None,
                            }
                        }
                    }
                }
            },
        ))
    }
}

/// The changes of one log page after `cursor`, and the cursor after them.
fn read_page(
    weft: &Weft,
    cursor: Option<ProgressToken>,
) -> Result<(Vec<Change>, Option<ProgressToken>)> {
    let inner = &weft.inner;
    let page = match inner
        .replica
        .changes_since(&inner.tenant, cursor, FEED_PAGE_LEN)?
    {
        LogRead::Page(page) => page,
        LogRead::Gap(gap) => {
            return Err(Error::Decode(format!(
                "the feed's token is no longer served by the log ({:?}); start again from Since::Start",
                gap.reason
            )));
        }
    };
    let node = inner.replica.node_id();
    let mut followed = false;
    let mut out = Vec::with_capacity(page.entries.len());
    for entry in &page.entries {
        let Some(record_id) = entry.message.record_id() else {
            continue;
        };
        let (deleted, value) = match (&entry.message, &entry.data) {
            (Message::Delete(_), _) => (true, None),
            (_, Some(bytes)) => (
                false,
                header(bytes)
                    .ok()
                    .map(|h| (h.tag, bytes[h.value_at..].to_vec(), h.key)),
            ),
            _ => (false, None),
        };
        let key = match &value {
            Some((_, _, key)) => Some(key.clone()),
            None => {
                // A delete or a large value: the key index knows the key.
                if !followed {
                    inner.keys.follow(&inner.replica, &inner.tenant)?;
                    followed = true;
                }
                inner.keys.key_of_record(&record_id)?.map(|(_, k)| k)
            }
        };
        out.push(Change {
            protocol: entry.message.protocol().as_str().to_owned(),
            key,
            record_id,
            deleted,
            source: if entry.message.timestamp().node == node {
                Source::Local
            } else {
                Source::Remote
            },
            token: entry.token.to_string(),
            value: value.map(|(tag, v, _)| (tag, v)),
        });
    }
    Ok((out, page.next))
}
