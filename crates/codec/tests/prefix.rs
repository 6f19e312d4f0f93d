//! [`decode_prefix`]: the compressed bytes from a span's checkpoint up to any point decode to a prefix of
//! the span (byte for byte what the span starts with), the whole range to the whole span; gzip, zstd
//! (multi-frame) and raw alike. Bad bytes are still an error, not a short prefix.

mod common;

use clip_codec::{decode_prefix, span_fetch_range, CodecError, Compression, SpanRef};
use common::*;

fn check_prefixes(compression: Compression, compressed: &[u8], original: &[u8]) {
    let (_, summary) = index(compressed, compression, 64 << 10).unwrap();
    assert!(summary.spans.len() > 3, "{} spans", summary.spans.len());
    let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
    let i = summary.spans.len() / 2;
    let span = &summary.spans[i];
    let range = span_fetch_range(compression, &refs, i, summary.compressed_size);
    let expected = &original[span.checkpoint.out_offset as usize..][..span.len as usize];
    let mut last = 0;
    for eighth in 1..=8u64 {
        let end = range.start + (range.end - range.start) * eighth / 8;
        let fetched = &compressed[range.start as usize..end as usize];
        let mut out = vec![0u8; span.len as usize];
        let got = decode_prefix(compression, &span.checkpoint.as_ref(), range.start, fetched, &mut out).unwrap();
        assert_eq!(out[..got], expected[..got], "{compression:?}: {eighth}/8 of the range");
        assert!(got >= last, "more bytes never decode to less");
        last = got;
    }
    assert_eq!(last, span.len as usize, "{compression:?}: the whole range gives the whole span");
    assert!(last > 0);

    // A flipped byte in the middle of the range is an error (or gives bytes that differ: the caller's
    // digests catch those); it never reads as "ran out of input" with the wrong prefix unnoticed here.
    let mut bad = compressed[range.start as usize..range.end as usize].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let mut out = vec![0u8; span.len as usize];
    match decode_prefix(compression, &span.checkpoint.as_ref(), range.start, &bad, &mut out) {
        Err(CodecError::Truncated { .. }) => panic!("bad input read as short input"),
        Err(_) => {}
        Ok(got) => assert!(got < span.len as usize || out != expected, "{compression:?}: flipped byte unnoticed"),
    }
}

#[test]
fn gzip_prefixes_decode_to_the_span_start() {
    let data = layer_data(1 << 20, 5);
    check_prefixes(Compression::Gzip, &gzip(&data, 6), &data);
}

#[test]
fn zstd_prefixes_decode_to_the_span_start() {
    let data = layer_data(1 << 20, 6);
    let blob: Vec<u8> = data.chunks(16 << 10).flat_map(|c| zstd_frame(c, 3)).collect();
    check_prefixes(Compression::Zstd, &blob, &data);
}

#[test]
fn raw_prefixes_are_the_bytes_themselves() {
    let data = layer_data(1 << 20, 7);
    check_prefixes(Compression::None, &data, &data);
}
