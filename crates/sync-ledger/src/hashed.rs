//! A message with its cid, hashed once by this process: what an apply hands down from
//! the checks to the ledger so the message is not hashed again on the way.

use sync_types::{Cid, Message};

/// A message, its inline payload, and its cid as computed by
/// [`HashedMessage::new`] from the message itself (never taken from a peer).
///
/// The apply pipeline hashes every message once when it receives it, checks it under
/// that cid, and hands the same value to [`Ledger::apply_hashed`](crate::Ledger::apply_hashed),
/// which stores it under that cid without hashing it again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HashedMessage {
    cid: Cid,
    message: Message,
    data: Option<Vec<u8>>,
}

impl HashedMessage {
    /// Hashes `message` (its canonical bytes) for its cid.
    pub fn new(message: Message, data: Option<Vec<u8>>) -> Self {
        Self {
            cid: message.cid(),
            message,
            data,
        }
    }

    /// The message's cid.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Its inline payload.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// The message and its payload.
    pub fn into_parts(self) -> (Message, Option<Vec<u8>>) {
        (self.message, self.data)
    }
}
