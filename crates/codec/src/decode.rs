//! Random access: which compressed bytes a span needs ([`span_fetch_range`]) and how to turn them back into
//! the span's uncompressed bytes ([`decode_span`]).

use std::ops::Range;

use crate::error::CodecError;
use crate::{gzip, zstd_frames, CheckpointRef, Compression, SpanRef};

/// Extra compressed bytes fetched past a gzip span's end. Inflating a span never needs bytes past the next
/// checkpoint's byte, but a few spare bytes cost nothing and guard against off-by-one surprises.
const GZIP_FETCH_MARGIN: u64 = 8;

/// The compressed byte range to fetch to decode span `i` of `spans` (all spans of one layer, in order).
///
/// gzip: from `in_offset` (one byte earlier when `bits > 0`, that byte holds the first bits) to just past
/// the next span's `in_offset`, plus a small margin, clipped to `compressed_size`. zstd and none: from
/// `in_offset` to the next span's `in_offset`. The last span runs to `compressed_size`.
///
/// # Panics
/// If `i >= spans.len()` (a caller bug, like slice indexing).
pub fn span_fetch_range(compression: Compression, spans: &[SpanRef], i: usize, compressed_size: u64) -> Range<u64> {
    fetch_range(compression, &spans[i], spans.get(i + 1), compressed_size)
}

/// [`span_fetch_range`] for callers that hold a span and its successor (`None` for the last span) rather
/// than a slice of all spans.
pub fn fetch_range(
    compression: Compression,
    span: &SpanRef,
    next: Option<&SpanRef>,
    compressed_size: u64,
) -> Range<u64> {
    let start = fetch_start(compression, span.in_offset, span.bits);
    let end = match (compression, next) {
        (_, None) => compressed_size,
        (Compression::Gzip, Some(next)) => next.in_offset.saturating_add(1 + GZIP_FETCH_MARGIN).min(compressed_size),
        (Compression::Zstd | Compression::None, Some(next)) => next.in_offset.min(compressed_size),
    };
    start.min(end)..end
}

/// Where a fetch of a span whose checkpoint is at `in_offset` (and `bits` into the byte before, for gzip)
/// starts in the compressed stream: the first byte its decoding reads.
pub fn fetch_start(compression: Compression, in_offset: u64, bits: u8) -> u64 {
    match compression {
        Compression::Gzip if bits > 0 => in_offset.saturating_sub(1),
        _ => in_offset,
    }
}

/// Decode exactly `len` uncompressed bytes starting at `checkpoint`.
///
/// `compressed` holds the blob's bytes from offset `fetch_start` on: normally exactly the range
/// [`span_fetch_range`] returned, though any range that covers it works. The result is not checked against
/// the span's digest; callers compare [`crate::Digest::of`] it with [`crate::Span::digest`].
pub fn decode_span(
    compression: Compression,
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    compressed: &[u8],
    len: u64,
) -> Result<Vec<u8>, CodecError> {
    if len > max_decoded_len(compression, compressed.len() as u64) {
        return Err(CodecError::ImpossibleLength { len, compressed: compressed.len() as u64, compression });
    }
    let too_large = || CodecError::SpanTooLarge { len };
    let size = usize::try_from(len).map_err(|_| too_large())?;
    let mut out = Vec::new();
    out.try_reserve_exact(size).map_err(|_| too_large())?;
    out.resize(size, 0);
    decode_span_into(compression, checkpoint, fetch_start, compressed, &mut out)?;
    Ok(out)
}

/// The most uncompressed bytes `compressed` bytes can decode to, whatever they hold: stored data 1:1;
/// deflate at most 1032:1 (a 258-byte match per 2-bit code); zstd at most 128 KiB per 4-byte RLE block.
/// A span claiming more is refused before anything is allocated for it.
pub fn max_decoded_len(compression: Compression, compressed: u64) -> u64 {
    match compression {
        Compression::None => compressed,
        Compression::Gzip => compressed.saturating_mul(1032),
        Compression::Zstd => compressed.saturating_mul(32 << 10),
    }
}

/// [`decode_span`] into a caller-provided buffer: fills all of `out` (whose length is the span length).
pub fn decode_span_into(
    compression: Compression,
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    compressed: &[u8],
    out: &mut [u8],
) -> Result<(), CodecError> {
    if out.is_empty() {
        return Ok(());
    }
    match compression {
        Compression::Gzip => gzip::decode(checkpoint, fetch_start, compressed, out),
        Compression::Zstd => zstd_frames::decode(checkpoint, fetch_start, compressed, out),
        Compression::None => {
            let start = checkpoint_start(checkpoint, fetch_start, compressed)?;
            let available = &compressed[start..];
            if available.len() < out.len() {
                // What there is, for [`decode_prefix`].
                out[..available.len()].copy_from_slice(available);
                return Err(CodecError::Truncated { expected: out.len() as u64, got: available.len() as u64 });
            }
            out.copy_from_slice(&available[..out.len()]);
            Ok(())
        }
    }
}

/// Decodes from `checkpoint` as much of `out` as `compressed` (the blob's bytes from `fetch_start` on, a
/// prefix of a span's range: see [`fetch_range`]) holds; returns how many bytes of `out` now hold output
/// (`out.len()` when the bytes reach that far). Running out of input is not an error here, bad input is.
/// zstd yields output a block (up to 128 KiB) at a time, gzip and raw byte for byte.
pub fn decode_prefix(
    compression: Compression,
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    compressed: &[u8],
    out: &mut [u8],
) -> Result<usize, CodecError> {
    match decode_span_into(compression, checkpoint, fetch_start, compressed, out) {
        Ok(()) => Ok(out.len()),
        Err(CodecError::Truncated { got, .. }) => Ok(usize::try_from(got).unwrap_or(0).min(out.len())),
        Err(e) => Err(e),
    }
}

/// Where `checkpoint` starts inside `fetched` (the blob's bytes from `fetch_start` on), or
/// [`CodecError::CheckpointRange`] when it is not inside them.
pub(crate) fn checkpoint_start(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    fetched: &[u8],
) -> Result<usize, CodecError> {
    checkpoint
        .in_offset
        .checked_sub(fetch_start)
        .and_then(|rel| usize::try_from(rel).ok())
        .filter(|&rel| rel <= fetched.len())
        .ok_or_else(|| checkpoint_range(checkpoint, fetch_start, fetched))
}

/// The error for a checkpoint that the fetched bytes cannot resume from.
pub(crate) fn checkpoint_range(checkpoint: &CheckpointRef<'_>, fetch_start: u64, fetched: &[u8]) -> CodecError {
    CodecError::CheckpointRange {
        in_offset: checkpoint.in_offset,
        bits: checkpoint.bits,
        fetch_start,
        fetched: fetched.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(in_offset: u64, bits: u8) -> SpanRef {
        SpanRef { out_offset: 0, in_offset, bits, len: 0 }
    }

    #[test]
    fn gzip_range_includes_the_primed_byte_and_a_margin() {
        let spans = [span(10, 0), span(100, 3), span(200, 0)];
        assert_eq!(span_fetch_range(Compression::Gzip, &spans, 0, 300), 10..109);
        assert_eq!(span_fetch_range(Compression::Gzip, &spans, 1, 300), 99..209);
        assert_eq!(span_fetch_range(Compression::Gzip, &spans, 2, 300), 200..300);
        // Clipped to the blob.
        assert_eq!(span_fetch_range(Compression::Gzip, &spans, 1, 203), 99..203);
    }

    #[test]
    fn zstd_and_raw_ranges_end_at_the_next_checkpoint() {
        let spans = [span(0, 0), span(100, 0)];
        for compression in [Compression::Zstd, Compression::None] {
            assert_eq!(span_fetch_range(compression, &spans, 0, 150), 0..100);
            assert_eq!(span_fetch_range(compression, &spans, 1, 150), 100..150);
        }
    }

    #[test]
    fn raw_decode_checks_the_range() {
        let data = b"0123456789";
        let cp = CheckpointRef { out_offset: 4, in_offset: 4, bits: 0, window: &[] };
        assert_eq!(decode_span(Compression::None, &cp, 2, &data[2..], 3).unwrap(), b"456");
        assert!(matches!(
            decode_span(Compression::None, &cp, 5, &data[5..], 3),
            Err(CodecError::CheckpointRange { .. })
        ));
        assert!(matches!(
            decode_span(Compression::None, &cp, 0, &data[..6], 3),
            Err(CodecError::Truncated { expected: 3, got: 2 })
        ));
    }
}
