//! How a collection's records are stored: a small versioned header carrying the natural
//! key and the encoding, then the value.
//!
//! ```text
//! b'W' | version (1) | codec (0 raw, 1 json, 2 postcard) | key length (u16 LE) | key | value
//! ```
//!
//! The record id is derived from the key (`RecordId::from_natural_key`), but a hash
//! cannot be read back; the header is how a record's key travels with it, to other
//! devices too. A read checks that the header's key derives the record's id, so a
//! payload copied under another key is refused instead of returned under the wrong
//! name.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The header's first byte.
const MAGIC: u8 = b'W';
/// The header's format version.
const HEADER_VERSION: u8 = 1;
/// Bytes before the key.
const HEADER_FIXED_BYTES: usize = 5;
/// Longest natural key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest header: what a reader fetches from a blob to learn a record's key.
pub(crate) const HEADER_BYTES_MAX: usize = HEADER_FIXED_BYTES + KEY_BYTES_MAX;

/// How a collection encodes its values.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Codec {
    /// JSON (`serde_json`): readable, and what other languages read most easily.
    #[default]
    Json,
    /// postcard: compact binary.
    Postcard,
}

impl Codec {
    pub(crate) fn tag(self) -> u8 {
        match self {
            Codec::Json => 1,
            Codec::Postcard => 2,
        }
    }

    pub(crate) fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string())),
            Codec::Postcard => postcard::to_stdvec(value).map_err(|e| Error::Encode(e.to_string())),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(tag: u8, bytes: &[u8]) -> Result<T> {
        match tag {
            1 => serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string())),
            2 => postcard::from_bytes(bytes).map_err(|e| Error::Decode(e.to_string())),
            0 => Err(Error::Decode(
                "the record holds raw bytes: read it with get_raw".into(),
            )),
            other => Err(Error::Decode(format!("unknown codec {other}"))),
        }
    }
}

/// The tag of raw bytes.
pub(crate) const RAW: u8 = 0;

/// A payload: the header for `key` and `codec` tag, then `value`.
pub(crate) fn frame(key: &str, tag: u8, value: &[u8]) -> Result<Vec<u8>> {
    check_key(key)?;
    let mut out = Vec::with_capacity(HEADER_FIXED_BYTES + key.len() + value.len());
    out.push(MAGIC);
    out.push(HEADER_VERSION);
    out.push(tag);
    // check_key bounds the length to KEY_BYTES_MAX, which fits a u16.
    out.extend_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    Ok(out)
}

/// A payload's parts: key, codec tag, and the offset where the value starts.
pub(crate) struct Header {
    pub(crate) key: String,
    pub(crate) tag: u8,
    pub(crate) value_at: usize,
}

/// Reads a payload's header (the payload may be cut after the header).
pub(crate) fn header(payload: &[u8]) -> Result<Header> {
    let bad = |why: &str| Error::Decode(format!("not a weft collection record: {why}"));
    if payload.len() < HEADER_FIXED_BYTES || payload[0] != MAGIC {
        return Err(bad("no header"));
    }
    if payload[1] != HEADER_VERSION {
        return Err(bad(&format!("header version {}", payload[1])));
    }
    let len = usize::from(u16::from_le_bytes([payload[3], payload[4]]));
    if len > KEY_BYTES_MAX {
        return Err(bad("key too long"));
    }
    let end = HEADER_FIXED_BYTES + len;
    let key = payload
        .get(HEADER_FIXED_BYTES..end)
        .ok_or_else(|| bad("cut key"))?;
    let key = std::str::from_utf8(key)
        .map_err(|_| bad("key is not UTF-8"))?
        .to_owned();
    Ok(Header {
        key,
        tag: payload[2],
        value_at: end,
    })
}

/// Checks a natural key: 1 to [`KEY_BYTES_MAX`] bytes.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Error::BadKey(format!(
            "a key is 1 to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_payload_gives_back_its_key_codec_and_value() {
        let framed = frame("todo/1", Codec::Postcard.tag(), b"value").unwrap();
        let h = header(&framed).unwrap();
        assert_eq!(h.key, "todo/1");
        assert_eq!(h.tag, 2);
        assert_eq!(&framed[h.value_at..], b"value");
    }

    #[test]
    fn foreign_and_cut_payloads_are_refused() {
        assert!(header(b"hello world").is_err());
        let framed = frame("abc", 1, b"").unwrap();
        assert!(header(&framed[..6]).is_err(), "key cut short");
        let mut other = framed.clone();
        other[1] = 9;
        assert!(header(&other).is_err(), "unknown version");
        assert!(frame("", 1, b"").is_err());
        assert!(frame(&"k".repeat(KEY_BYTES_MAX + 1), 1, b"").is_err());
    }
}
