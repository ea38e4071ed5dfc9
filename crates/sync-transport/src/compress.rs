//! Compression of large call bodies (`POST /v1/rpc`), negotiated per request in HTTP
//! headers, so peers that do not know it keep working.
//!
//! - A client that can read compressed replies says so on every call
//!   ([`ACCEPT_HEADER`]: `lz4`). A node compresses a reply only for such a call, and only
//!   when the frame is at least [`COMPRESS_BYTES_MIN`] bytes and compression saves
//!   bytes; it then names the encoding ([`ENCODING_HEADER`]).
//! - A node that can read compressed requests says so on every reply ([`ACCEPT_HEADER`]).
//!   Only after a client has seen that does it compress its large requests (pushes).
//!
//! The encoding is an lz4 block (`lz4_flex`, pure Rust, already in the tree through
//! fjall) after the uncompressed length as a little-endian `u32`; the reader checks that
//! length against its frame limit before it allocates. Measured on this workload's
//! frames (`BENCHMARKS.md`, issue 19): a push of 256 records shrinks 3.5 times with lz4
//! and 4.9 times with zstd -1, a page of 1,000 entries 3.0 and 3.9 times, and zstd
//! compresses about 3 times slower. lz4 because it is pure Rust and already built (zstd
//! is a C library) and already meets the byte target; zstd would save about a
//! quarter more. A frame of one message saves about 25 bytes either way, so frames
//! under [`COMPRESS_BYTES_MIN`] go as they are.
//! Small frames (a single message, a root, a diff round) are sent as they are: below
//! about a kilobyte lz4 saves a few dozen bytes at best.

/// The header naming the encodings a peer reads (`lz4`).
pub const ACCEPT_HEADER: &str = "x-weft-accept-encoding";
/// The header naming the encoding of a body (`lz4`); absent for a plain frame.
pub const ENCODING_HEADER: &str = "x-weft-encoding";
/// The one encoding.
pub const LZ4: &str = "lz4";
/// Smallest frame worth compressing, in bytes.
pub const COMPRESS_BYTES_MIN: usize = 1024;

/// What a client lists in [`ACCEPT_HEADER`]: it reads lz4 bodies and dense frames
/// ([`crate::dense`]).
pub const ACCEPT_VALUE: &str = "lz4, dense";

/// What a node lists in [`ACCEPT_HEADER`] on its replies: lz4 always, dense frames
/// when it serves them, and the
/// [`WIDE_BATCH_TOKEN`](crate::proto::WIDE_BATCH_TOKEN) when it accepts write batches of
/// up to [`BATCH_MESSAGES_WIDE_MAX`](crate::proto::BATCH_MESSAGES_WIDE_MAX) messages.
pub fn node_accepts(dense: bool, wide_batches: bool) -> &'static str {
    match (dense, wide_batches) {
        (true, true) => "lz4, dense, wide-batch",
        (true, false) => ACCEPT_VALUE,
        (false, true) => "lz4, wide-batch",
        (false, false) => LZ4,
    }
}

/// Whether a header value lists `lz4`.
pub fn lists_lz4(value: Option<&[u8]>) -> bool {
    lists(value, LZ4)
}

/// Whether a comma-separated header value lists `token` (ASCII case ignored).
pub fn lists(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `frame` compressed, when it is large enough and compression saves bytes.
pub fn compress(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < COMPRESS_BYTES_MIN {
        return None;
    }
    let out = lz4_flex::block::compress_prepend_size(frame);
    (out.len() < frame.len()).then_some(out)
}

/// Why a compressed body could not be read.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressError {
    /// The stated length exceeds the reader's limit.
    #[error("compressed body states {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The stated length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid lz4 block of the stated length.
    #[error("compressed body is malformed: {0}")]
    Malformed(String),
}

/// The frame in a compressed body, at most `bytes_max` bytes.
pub fn decompress(body: &[u8], bytes_max: usize) -> Result<Vec<u8>, DecompressError> {
    let Some((len, block)) = body.split_first_chunk::<4>() else {
        return Err(DecompressError::Malformed("shorter than its length".into()));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > bytes_max {
        return Err(DecompressError::TooLarge {
            len,
            max: bytes_max,
        });
    }
    let out = lz4_flex::block::decompress(block, len)
        .map_err(|e| DecompressError::Malformed(e.to_string()))?;
    if out.len() != len {
        return Err(DecompressError::Malformed(
            "shorter than its stated length".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_repetitive_frame_round_trips_smaller() {
        let frame: Vec<u8> = b"did:example:alice https://example.com/notes "
            .iter()
            .copied()
            .cycle()
            .take(8192)
            .collect();
        let c = compress(&frame).expect("worth it");
        assert!(c.len() < frame.len() / 4);
        assert_eq!(decompress(&c, 8192).unwrap(), frame);
    }

    #[test]
    fn small_frames_stay_plain() {
        assert_eq!(compress(&[7; COMPRESS_BYTES_MIN - 1]), None);
    }

    #[test]
    fn a_stated_length_over_the_limit_is_refused_before_allocating() {
        let mut body = u32::MAX.to_le_bytes().to_vec();
        body.extend([0; 16]);
        assert!(matches!(
            decompress(&body, 1 << 20),
            Err(DecompressError::TooLarge { .. })
        ));
        assert!(decompress(&[1, 2], 100).is_err());
        let c = compress(&[9; 4096]).unwrap();
        assert!(decompress(&c[..c.len() - 1], 4096).is_err());
        // A stated length larger than the block holds.
        let mut lying = c.clone();
        lying[..4].copy_from_slice(&8192u32.to_le_bytes());
        assert!(decompress(&lying, 1 << 20).is_err());
    }

    #[test]
    fn the_header_lists_lz4_among_others() {
        assert!(lists_lz4(Some(b"zstd, LZ4")));
        assert!(!lists_lz4(Some(b"gzip")));
        assert!(!lists_lz4(None));
        assert!(lists_lz4(Some(ACCEPT_VALUE.as_bytes())));
        assert!(lists(
            Some(ACCEPT_VALUE.as_bytes()),
            crate::dense::ACCEPT_TOKEN
        ));
        assert!(!lists(Some(b"lz4"), crate::dense::ACCEPT_TOKEN));
    }

    #[test]
    fn a_node_lists_what_it_serves() {
        let wide = crate::proto::WIDE_BATCH_TOKEN;
        let dense = crate::dense::ACCEPT_TOKEN;
        for d in [false, true] {
            for w in [false, true] {
                let v = Some(node_accepts(d, w).as_bytes());
                assert!(lists_lz4(v));
                assert_eq!(lists(v, dense), d, "dense {d} wide {w}");
                assert_eq!(lists(v, wide), w, "dense {d} wide {w}");
            }
        }
    }
}
