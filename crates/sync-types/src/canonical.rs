//! The hand-written canonical encoding used for everything that is hashed.
//!
//! Message ids, scope ids, projection ids and authorization epochs are hashes, so the
//! bytes they hash must never change when a library is upgraded. This writer is the only
//! producer of those bytes; its rules are small enough to read in one sitting:
//!
//! - integers are fixed-width big-endian (`u8`, `u32`, `u64`);
//! - byte strings and UTF-8 strings are a `u32` length followed by the bytes;
//! - an `Option` is a tag byte (`0` none, `1` some) followed by the value;
//! - a list is a `u32` count followed by its items, in the canonical order the type
//!   defines (sorted and deduplicated where the type says so);
//! - every top-level encoding begins with a version or a domain string, so two kinds of
//!   value can never produce the same bytes.
//!
//! The golden vectors in `tests/golden.rs` pin the output.

pub(crate) struct CanonicalWriter {
    buf: Vec<u8>,
}

impl CanonicalWriter {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(256),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Writes a length prefix. Every length we encode is bounded far below `u32::MAX` by
    /// the validated types, so a larger one is a programmer error.
    pub(crate) fn len(&mut self, len: usize) -> &mut Self {
        let len = u32::try_from(len).expect("canonical lengths are bounded by validated types");
        self.u32(len)
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn option<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
                self
            }
        }
    }

    pub(crate) fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.len(items.len());
        for item in items {
            f(self, item);
        }
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// `base64url(SHA-256(bytes))` without padding: the text form of scope ids, projection
/// ids and authorization epochs.
pub(crate) fn sha256_b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}
