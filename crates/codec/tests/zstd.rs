//! zstd round trips: single frame, many frames coalesced into spans, skippable frames.

mod common;

use clip_codec::Compression;
use common::{check_spans, index, index_with, layer_data, zstd_frame, zstd_skippable, Rng};

const KIB: u64 = 1024;
const MIB: usize = 1024 * 1024;

#[test]
fn single_frame_is_one_span() {
    let original = layer_data(20 * MIB, 11);
    let compressed = zstd_frame(&original, 3);
    let (out, summary) = index(&compressed, Compression::Zstd, 64 * KIB).unwrap();
    assert!(out == original);
    assert_eq!(summary.spans.len(), 1);
    let cp = &summary.spans[0].checkpoint;
    assert_eq!((cp.out_offset, cp.in_offset, cp.bits, cp.window.len()), (0, 0, 0, 0));
    check_spans(Compression::Zstd, &summary, &compressed, &original);
}

#[test]
fn frames_are_coalesced_into_spans() {
    let original = layer_data(24 * MIB, 12);
    let mut rng = Rng::new(13);
    let mut compressed = Vec::new();
    // (compressed offset, uncompressed offset) of every frame start, skippable ones included.
    let mut frame_starts = Vec::new();
    let mut pos = 0;
    compressed.extend_from_slice(&zstd_skippable(b"leading metadata"));
    while pos < original.len() {
        let len = (5_000 + rng.below(150_000)).min(original.len() - pos);
        if rng.below(5) == 0 {
            frame_starts.push((compressed.len() as u64, pos as u64));
            compressed.extend_from_slice(&zstd_skippable(&vec![0xee; rng.below(3000)]));
        }
        frame_starts.push((compressed.len() as u64, pos as u64));
        compressed.extend_from_slice(&zstd_frame(&original[pos..pos + len], 1 + rng.below(5) as i32));
        pos += len;
    }
    compressed.extend_from_slice(&zstd_skippable(b"trailing"));

    let span_size = 256 * KIB;
    let (out, summary) = index(&compressed, Compression::Zstd, span_size).unwrap();
    assert!(out == original);
    assert!(summary.spans.len() > 50, "only {} spans", summary.spans.len());
    let (last, rest) = summary.spans.split_last().unwrap();
    assert!(last.len > 0);
    for span in rest {
        let cp = &span.checkpoint;
        assert!(span.len >= span_size);
        assert!(
            cp.out_offset == 0 || frame_starts.contains(&(cp.in_offset, cp.out_offset)),
            "{cp:?} is not a frame start"
        );
    }
    check_spans(Compression::Zstd, &summary, &compressed, &original);

    // Small reads and odd inner chunks give the same index.
    let (out, again) = index_with(&compressed, Compression::Zstd, span_size, 3000, 4099).unwrap();
    assert!(out == original);
    assert_eq!(again, summary);
}

#[test]
fn every_frame_can_be_a_span() {
    let original = layer_data(4 * MIB, 14);
    let compressed: Vec<u8> = original.chunks(100_000).flat_map(|c| zstd_frame(c, 3)).collect();
    let (_, summary) = index(&compressed, Compression::Zstd, 64 * KIB).unwrap();
    assert_eq!(summary.spans.len(), original.len().div_ceil(100_000));
    assert!(summary.spans.iter().all(|s| s.checkpoint.out_offset % 100_000 == 0));
    check_spans(Compression::Zstd, &summary, &compressed, &original);
}

#[test]
fn empty_and_tiny_streams() {
    for data in [&b""[..], b"x"] {
        let compressed = zstd_frame(data, 3);
        let (out, summary) = index(&compressed, Compression::Zstd, 64 * KIB).unwrap();
        assert_eq!(out, data);
        check_spans(Compression::Zstd, &summary, &compressed, data);
    }
}
