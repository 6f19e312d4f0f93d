//! Compressed-chunk digests while a layer streams: [`ChunkHasher`] sits on the compressed blob (before the
//! decompressor) and keeps the bytes it passes until they are cut into chunks; the span sink reports each
//! span as the decoder finishes it ([`ChunkRecorder::span`]: where its fetch starts, and its raw window),
//! which closes the span before it. A span's chunks are [`CHUNK_SIZE`] bytes from where its fetch starts,
//! the last taking the rest up to where the next span's starts (rounded to the nearest chunk, so a span of
//! 2.4 chunks has 2, the second 1.4 long). Together they become the part's [`Chunks`], which lets a store
//! verify a fetched compressed prefix of a span before it inflates it.
//!
//! The decoder reports a span some way after the hasher passed its start (it reads ahead, and a window is
//! trimmed against the data after it); at most [`HELD_MAX`] bytes are kept meanwhile: past that the open
//! span's first whole chunk is closed at once. A span that reports a start the kept bytes no longer reach
//! (it would take a decoder reading megabytes ahead) leaves the layer without chunk digests (its spans are
//! then fetched whole), never with wrong ones.

use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

use clip_format::{ChunkDigest, Chunks, Compression, SpanRoot, CHUNK_SIZE};

/// Compressed bytes kept before the open span's first chunk is closed without waiting for its end.
pub(crate) const HELD_MAX: usize = 8 << 20;

/// The digests recorded so far for one layer, shared by the hasher on the blob and the span sink.
pub(crate) struct ChunkRecorder {
    compression: Compression,
    counts: Vec<u16>,
    chunks: Vec<ChunkDigest>,
    windows: Vec<ChunkDigest>,
    roots: Vec<SpanRoot>,
    /// From index `used` on: the bytes from `at` on that no closed chunk holds yet (the bytes before
    /// `used` are let go in one move once they are half of it, not one chunk at a time).
    held: Vec<u8>,
    used: usize,
    /// Where `held[used..]` starts in the layer.
    at: u64,
    /// Whether a span is open: its start is `at` or before, and its chunks so far are `open_count`.
    open: bool,
    open_count: u64,
    /// The layer's spans cannot be cut right: it gets no chunk digests.
    broken: bool,
}

impl ChunkRecorder {
    /// A recorder for a layer compressed with `compression`.
    pub fn new(compression: Compression) -> ChunkRecorder {
        ChunkRecorder {
            compression,
            counts: Vec::new(),
            chunks: Vec::new(),
            windows: Vec::new(),
            roots: Vec::new(),
            held: Vec::new(),
            used: 0,
            at: 0,
            open: false,
            open_count: 0,
            broken: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self.used > self.held.len() / 2 {
            self.held.drain(..self.used);
            self.used = 0;
        }
        self.held.extend_from_slice(bytes);
        while self.held_len() > HELD_MAX as u64 {
            if !self.open {
                // No span reported after this many bytes: none starts in what is held.
                self.broken = true;
                (self.held, self.used) = (Vec::new(), 0);
                return;
            }
            self.close_chunk(CHUNK_SIZE as usize);
        }
    }

    /// How many bytes are held.
    fn held_len(&self) -> u64 {
        (self.held.len() - self.used) as u64
    }

    /// Lets go of the first `len` held bytes.
    fn let_go(&mut self, len: usize) {
        self.used += len;
        self.at += len as u64;
    }

    /// Closes the chunk of the first `len` held bytes of the open span.
    fn close_chunk(&mut self, len: usize) {
        self.chunks.push(ChunkDigest::of(&self.held[self.used..self.used + len]));
        self.let_go(len);
        self.open_count += 1;
    }

    /// Closes the open span at `end` (where the next one starts, or the layer's end): its held bytes up to
    /// there become chunks, the last taking the rest.
    fn close_span(&mut self, end: u64) {
        let Some(rest) = end.checked_sub(self.at).filter(|&r| r <= self.held_len()) else {
            self.broken = true;
            return;
        };
        let chunk = CHUNK_SIZE;
        let mut n = (rest + chunk / 2) / chunk;
        if n == 0 && (rest > 0 || self.open_count == 0) {
            n = 1;
        }
        for i in 0..n {
            let len = if i + 1 == n { rest - i * chunk } else { chunk };
            self.close_chunk(len as usize);
        }
        match u16::try_from(self.open_count) {
            Ok(count) => self.counts.push(count),
            Err(_) => self.broken = true,
        }
        self.open_count = 0;
    }

    /// Records the next span (in span order): its checkpoint (`in_offset`, `bits`), raw window and tree root.
    pub fn span(&mut self, in_offset: u64, bits: u8, window: &[u8], root: SpanRoot) {
        self.windows.push(ChunkDigest::of_window(window));
        self.roots.push(root);
        if self.broken {
            return;
        }
        let start = clip_codec::fetch_start(self.compression, in_offset, bits);
        if self.open {
            self.close_span(start);
        } else {
            // The layer's first span: what comes before it (a gzip header) is in no chunk.
            match start.checked_sub(self.at).filter(|&skip| skip <= self.held_len()) {
                Some(skip) => self.let_go(skip as usize),
                None => self.broken = true,
            }
        }
        self.open = true;
    }

    /// The layer's digests, its last span closed at the layer's end (where the bytes stopped).
    pub fn finish(mut self) -> Chunks {
        if self.open && !self.broken {
            self.close_span(self.at + self.held_len());
        }
        if self.broken {
            // Every span fetched whole: no count, no chunk.
            self.counts = vec![0; self.windows.len()];
            self.chunks.clear();
        }
        Chunks {
            chunk_size: CHUNK_SIZE,
            counts: self.counts,
            chunks: self.chunks,
            windows: self.windows,
            roots: self.roots,
        }
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

    /// Feeds `blob` through a hasher in odd-sized reads, reporting the span starting at `starts[i]` once the
    /// hasher is `lags[i]` bytes past it (as a decoder that reads ahead does).
    fn record(blob: &[u8], starts: &[u64], lags: &[u64]) -> Chunks {
        let shared = Rc::new(RefCell::new(ChunkRecorder::new(Compression::Zstd)));
        let mut hasher = ChunkHasher { inner: blob, chunks: shared.clone() };
        let (mut pos, mut next) = (0u64, 0);
        let mut buf = [0u8; 1000];
        loop {
            let n = hasher.read(&mut buf[..777]).unwrap();
            pos += n as u64;
            while next < starts.len() && (pos >= starts[next] + lags[next] || n == 0) {
                shared.borrow_mut().span(starts[next], 0, if next == 1 { b"window" } else { b"" }, SpanRoot::default());
                next += 1;
            }
            if n == 0 {
                break;
            }
        }
        drop(hasher);
        Rc::into_inner(shared).unwrap().into_inner().finish()
    }

    #[test]
    fn chunks_are_cut_per_span_whatever_the_reads_and_the_decoder_lag() {
        let c = CHUNK_SIZE;
        let blob: Vec<u8> = (0..(6 * c + 100)).map(|i| (i * 7 % 251) as u8).collect();
        // Span 0 from byte 10 (a header before it), 2.4 chunks; span 1 of 0.3 chunks; span 2 the rest (3.3).
        let starts = [10, 10 + 2 * c + 2 * c / 5, 10 + 2 * c + 2 * c / 5 + 3 * c / 10];
        for lag in [0, 100_000, 3 * c] {
            let chunks = record(&blob, &starts, &[lag; 3]);
            let cut = |from: u64, to: u64| ChunkDigest::of(&blob[from as usize..to as usize]);
            let (s0, s1, s2, end) = (starts[0], starts[1], starts[2], blob.len() as u64);
            let expected = vec![
                cut(s0, s0 + c),
                cut(s0 + c, s1),
                cut(s1, s2),
                cut(s2, s2 + c),
                cut(s2 + c, s2 + 2 * c),
                cut(s2 + 2 * c, end),
            ];
            assert_eq!(chunks.counts, vec![2, 1, 3], "lag {lag}");
            assert_eq!(chunks.chunks, expected, "lag {lag}");
            let windows = vec![ChunkDigest::default(), ChunkDigest::of_window(b"window"), ChunkDigest::default()];
            assert_eq!(chunks.windows, windows);
        }
    }

    #[test]
    fn a_span_reported_after_its_bytes_were_let_go_leaves_the_layer_without_chunks() {
        let blob: Vec<u8> = (0..(HELD_MAX as u64 + 4 * CHUNK_SIZE)).map(|i| (i % 253) as u8).collect();
        // The second span is reported long after the hasher passed it: more than HELD_MAX later.
        let chunks = record(&blob, &[0, 100], &[0, HELD_MAX as u64 + 2 * CHUNK_SIZE]);
        assert_eq!(chunks.counts, vec![0, 0]);
        assert!(chunks.chunks.is_empty());
        assert_eq!(chunks.windows.len(), 2);
        // And so is a layer whose first span comes that late.
        let chunks = record(&blob, &[0], &[HELD_MAX as u64 + 2 * CHUNK_SIZE]);
        assert_eq!((chunks.counts, chunks.chunks.len()), (vec![0], 0));
    }
}
