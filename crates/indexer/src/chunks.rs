//! Compressed-chunk digests while a layer streams: [`ChunkHasher`] sits on the compressed blob (before the
//! decompressor) and hashes every [`CHUNK_SIZE`] bytes, aligned to the layer's start; the spans' raw windows
//! are hashed as the span sink stores them ([`ChunkRecorder::window`]). Together they become the part's
//! [`Chunks`], which lets a store verify a fetched compressed prefix of a span before it inflates it.

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

use clip_format::{ChunkDigest, Chunks, CHUNK_SIZE};
use sha2::{Digest as _, Sha256};

/// The digests recorded so far for one layer, shared by the hasher on the blob and the span sink.
#[derive(Default)]
pub(crate) struct ChunkRecorder {
    chunks: Vec<ChunkDigest>,
    windows: Vec<ChunkDigest>,
    open: Sha256,
    /// Bytes in the open chunk.
    filled: u64,
}

impl ChunkRecorder {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE - self.filled).min(bytes.len() as u64) as usize;
            self.open.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == CHUNK_SIZE {
                self.close();
            }
        }
    }

    fn close(&mut self) {
        self.chunks.push(ChunkDigest::from_sha256(std::mem::take(&mut self.open).finalize().into()));
        self.filled = 0;
    }

    /// Records the window of the next span (in span order).
    pub fn window(&mut self, raw: &[u8]) {
        self.windows.push(ChunkDigest::of_window(raw));
    }

    /// The layer's digests, its last (short) chunk closed.
    pub fn finish(mut self) -> Chunks {
        if self.filled > 0 {
            self.close();
        }
        Chunks { chunk_size: CHUNK_SIZE, chunks: self.chunks, windows: self.windows }
    }
}

/// A shared [`ChunkRecorder`].
pub(crate) type SharedChunks = Rc<RefCell<ChunkRecorder>>;

/// Hashes the compressed bytes that pass through it into a [`ChunkRecorder`].
pub(crate) struct ChunkHasher<R> {
    pub inner: R,
    pub chunks: SharedChunks,
}

impl<R: Read> Read for ChunkHasher<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.chunks.borrow_mut().feed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_at_layer_aligned_offsets_whatever_the_reads() {
        let blob: Vec<u8> = (0..(2 * CHUNK_SIZE + 100)).map(|i| (i * 7 % 251) as u8).collect();
        let shared = SharedChunks::default();
        let mut hasher = ChunkHasher { inner: &blob[..], chunks: shared.clone() };
        // Odd-sized reads must not move the chunk boundaries.
        let mut buf = [0u8; 1000];
        while hasher.read(&mut buf[..777]).unwrap() > 0 {}
        drop(hasher);
        shared.borrow_mut().window(b"");
        shared.borrow_mut().window(b"window");
        let chunks = Rc::into_inner(shared).unwrap().into_inner().finish();
        let expected: Vec<ChunkDigest> = blob.chunks(CHUNK_SIZE as usize).map(ChunkDigest::of).collect();
        assert_eq!(chunks.chunks, expected);
        assert_eq!(chunks.windows, vec![ChunkDigest::default(), ChunkDigest::of_window(b"window")]);
    }
}
