//! Uncompressed layers: spans at exact multiples of the span size, compressed offset = uncompressed offset.

mod common;

use clip_codec::Compression;
use common::{check_spans, index, index_with, layer_data};

#[test]
fn spans_at_exact_multiples() {
    let original = layer_data(20 * 1024 * 1024 + 12_345, 21);
    let span_size = 64 * 1024;
    let (out, summary) = index(&original, Compression::None, span_size).unwrap();
    assert!(out == original);
    assert_eq!(summary.spans.len(), original.len().div_ceil(span_size as usize));
    for (i, span) in summary.spans.iter().enumerate() {
        let cp = &span.checkpoint;
        assert_eq!(cp.out_offset, i as u64 * span_size);
        assert_eq!(cp.in_offset, cp.out_offset);
        assert!(i + 1 == summary.spans.len() || span.len == span_size);
    }
    assert_eq!(summary.spans.last().unwrap().len, 12_345);
    check_spans(Compression::None, &summary, &original, &original);

    let (out, again) = index_with(&original, Compression::None, span_size, 5000, 777).unwrap();
    assert!(out == original);
    assert_eq!(again, summary);
}

#[test]
fn exact_multiple_has_no_empty_tail_and_empty_layer_has_one_span() {
    let original = layer_data(1024 * 1024, 22);
    let (_, summary) = index(&original, Compression::None, 256 * 1024).unwrap();
    assert_eq!(summary.spans.len(), 4);
    check_spans(Compression::None, &summary, &original, &original);

    let (out, summary) = index(&[], Compression::None, 256 * 1024).unwrap();
    assert!(out.is_empty());
    assert_eq!(summary.spans.len(), 1);
    assert_eq!(summary.spans[0].len, 0);
}
