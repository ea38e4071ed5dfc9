//! Reading a stored blob one chunk at a time: [`BlobReader`].

use std::io::Read;

use sync_types::Cid;

use crate::error::{Error, Result};
use crate::layout::BlobMeta;

use super::{Blobs, chunk_bytes};

impl<'a> Blobs<'a> {
    /// A reader over a stored blob, from `offset`; it holds one chunk in memory at a
    /// time, so a caller never needs the whole blob in memory.
    pub fn reader(&self, cid: &Cid, offset: u64) -> Result<BlobReader<'a>> {
        let (meta, at) = self.locate(cid)?.ok_or(Error::BlobNotFound(*cid))?;
        let size = meta.size;
        if offset > size {
            return Err(Error::RangeOutOfBounds {
                cid: *cid,
                offset,
                end: offset,
                size,
            });
        }
        Ok(BlobReader {
            blobs: Blobs {
                ledger: self.ledger,
            },
            cid: *cid,
            meta,
            chunks_at: at,
            size,
            offset,
            chunk: Vec::new(),
            at: 0,
        })
    }
}

/// Reads a stored blob one chunk at a time; see [`Blobs::reader`].
pub struct BlobReader<'a> {
    blobs: Blobs<'a>,
    cid: Cid,
    meta: BlobMeta,
    /// The id its chunks are stored under.
    chunks_at: Cid,
    size: u64,
    offset: u64,
    chunk: Vec<u8>,
    at: usize,
}

impl std::fmt::Debug for BlobReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("cid", &self.cid)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobReader<'_> {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.offset >= self.size || out.is_empty() {
                return Ok(0);
            }
            // Read up to the end of the current chunk, so every read is one chunk.
            let len = (chunk_bytes() - self.offset % chunk_bytes()).min(self.size - self.offset);
            self.chunk = self
                .blobs
                .read_located(&self.cid, &self.meta, &self.chunks_at, self.offset, len)
                .map_err(std::io::Error::other)?;
            self.offset += len;
            self.at = 0;
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
