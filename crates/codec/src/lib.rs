//! Random access into compressed layer streams: gzip (zran checkpoints), zstd (frames) and raw tar.
//!
//! An OCI layer blob is compressed as one stream, which normally can only be read from the start. This crate
//! makes it seekable in two halves:
//!
//! 1. **Indexing** — [`IndexingReader`] wraps the compressed stream while an indexer reads it once from
//!    start to end. Its [`Read`](std::io::Read) yields the uncompressed bytes; meanwhile it records a
//!    [`Checkpoint`] about every `span_size` uncompressed bytes and the SHA-256 of each [`Span`]'s bytes.
//!    [`IndexingReader::finish`] returns them as a [`LayerSummary`].
//! 2. **Decoding** — later, [`span_fetch_range`] says which compressed bytes a span needs (for an HTTP Range
//!    request) and [`decode_span`] turns them back into exactly that span's bytes, starting from its
//!    checkpoint.
//!
//! Per [`Compression`]:
//! - **gzip**: zran-style (zlib's `examples/zran.c`): checkpoints sit at deflate block boundaries and carry
//!   the compressed offset, a bit offset and the (up to) 32 KiB window of output that precedes them in the
//!   same gzip member. Concatenated gzip members work, also when a span crosses a member boundary.
//! - **zstd**: checkpoints sit at frame boundaries (frames are coalesced until a span has `span_size`
//!   bytes); a single-frame layer is one span. Skippable frames are allowed.
//! - **none** (raw tar): checkpoints at exact multiples of `span_size`; compressed and uncompressed offsets
//!   are equal.
//!
//! This crate does no I/O beyond the `Read` it is given, keeps bounded memory (a 64 KiB input buffer, one
//! decompressor and the recorded checkpoints; drain those with [`IndexingReader::take_spans`] for huge
//! layers) and never panics on hostile input. Span digests are SHA-256 [`Digest`]s (callers verify with
//! [`Digest::of`], the same function).
//!
//! ```
//! use std::io::Read;
//! use clip_codec::{decode_span, span_fetch_range, Compression, IndexingReader, SpanRef};
//!
//! let layer = vec![7u8; 10_000]; // an uncompressed "tar"
//! let mut reader = IndexingReader::new(&layer[..], Compression::None, 4096);
//! let mut out = Vec::new();
//! reader.read_to_end(&mut out).unwrap();
//! let summary = reader.finish().unwrap();
//! assert_eq!(summary.spans.len(), 3);
//!
//! let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
//! let range = span_fetch_range(Compression::None, &refs, 1, summary.compressed_size);
//! let fetched = &layer[range.start as usize..range.end as usize];
//! let span = &summary.spans[1];
//! let bytes = decode_span(Compression::None, &span.checkpoint.as_ref(), range.start, fetched, span.len).unwrap();
//! assert_eq!(bytes, &layer[4096..8192]);
//! assert_eq!(clip_codec::Digest::of(&bytes), span.digest);
//! ```

mod decode;
mod error;
mod gzip;
mod gzip_header;
mod input;
mod reader;
mod resume;
mod spans;
mod trim;
mod zlib;
mod zstd_frames;

pub use decode::{
    decode_prefix, decode_span, decode_span_into, fetch_range, fetch_start, max_decoded_len, span_fetch_range,
};
pub use error::CodecError;
pub use reader::IndexingReader;
pub use resume::{gzip_resume_point, ResumePoint};

/// How a layer blob is compressed: the format's type, re-exported so codec users need not name both crates.
pub use clip_format::Compression;
/// A span's SHA-256 digest: the format's type.
pub use clip_format::Digest;

/// A place to resume decompression: everything [`decode_span`] needs besides the compressed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream.
    pub out_offset: u64,
    /// Offset in the compressed blob. gzip: the byte holding the first bit of the next deflate block.
    pub in_offset: u64,
    /// gzip only: how many high bits of the byte at `in_offset - 1` belong to the next block (0..=7).
    pub bits: u8,
    /// gzip only: the uncompressed bytes right before `out_offset` within the same gzip member (at most
    /// 32 KiB; empty at a member's start). Empty for zstd and none.
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// A borrowed view, the form [`decode_span`] takes.
    pub fn as_ref(&self) -> CheckpointRef<'_> {
        CheckpointRef { out_offset: self.out_offset, in_offset: self.in_offset, bits: self.bits, window: &self.window }
    }
}

/// A borrowed [`Checkpoint`], so a store can build one straight from memory-mapped index data without
/// copying the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRef<'a> {
    /// See [`Checkpoint::out_offset`].
    pub out_offset: u64,
    /// See [`Checkpoint::in_offset`].
    pub in_offset: u64,
    /// See [`Checkpoint::bits`].
    pub bits: u8,
    /// See [`Checkpoint::window`].
    pub window: &'a [u8],
}

/// A run of uncompressed bytes that can be decoded on its own from its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Where the span starts.
    pub checkpoint: Checkpoint,
    /// Uncompressed length.
    pub len: u64,
    /// SHA-256 of the span's uncompressed bytes.
    pub digest: Digest,
    /// The root of the digests of its uncompressed bytes' leaves ([`clip_format::SpanRoot`]).
    pub root: clip_format::SpanRoot,
}

impl Span {
    /// The window-less view [`span_fetch_range`] takes.
    pub fn as_ref(&self) -> SpanRef {
        SpanRef {
            out_offset: self.checkpoint.out_offset,
            in_offset: self.checkpoint.in_offset,
            bits: self.checkpoint.bits,
            len: self.len,
        }
    }
}

/// The position of a span without its window or digest: all [`span_fetch_range`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanRef {
    /// See [`Checkpoint::out_offset`].
    pub out_offset: u64,
    /// See [`Checkpoint::in_offset`].
    pub in_offset: u64,
    /// See [`Checkpoint::bits`].
    pub bits: u8,
    /// Uncompressed length of the span.
    pub len: u64,
}

/// What indexing one layer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSummary {
    /// Spans in order; they tile the uncompressed stream without gaps. Spans already drained with
    /// [`IndexingReader::take_spans`] are not repeated here.
    pub spans: Vec<Span>,
    /// Size of the compressed blob.
    pub compressed_size: u64,
    /// Size of the uncompressed stream.
    pub uncompressed_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<IndexingReader<std::fs::File>>();
    }
}
