//! Hostile and broken input: truncation, corruption, garbage and misuse give errors, never panics.

mod common;

use std::io::{self, Read};

use clip_codec::{decode_span, span_fetch_range, CheckpointRef, CodecError, Compression, IndexingReader, SpanRef};
use common::{gzip, index, index_with, layer_data, zstd_frame, Rng};

const KIB: u64 = 1024;

fn small_gzip() -> (Vec<u8>, Vec<u8>) {
    let original = layer_data(400_000, 31);
    let compressed = gzip(&original, 6);
    (original, compressed)
}

#[test]
fn truncated_gzip_is_an_error_everywhere() {
    let (_, compressed) = small_gzip();
    let len = compressed.len();
    for cut in [0, 1, 5, 9, 10, 11, 100, len / 3, len / 2, len - 9, len - 8, len - 4, len - 1] {
        let result = index(&compressed[..cut], Compression::Gzip, 16 * KIB);
        assert!(
            matches!(result, Err(CodecError::UnexpectedEof { .. })),
            "cut at {cut}: {:?}",
            result.map(|(_, s)| s.spans.len())
        );
    }
}

#[test]
fn corrupted_gzip_is_an_error() {
    let (_, compressed) = small_gzip();
    let mut rng = Rng::new(32);
    // Positions in the deflate data, the trailer's CRC and ISIZE.
    let mut positions: Vec<usize> = (0..40).map(|_| 10 + rng.below(compressed.len() - 18)).collect();
    positions.extend([compressed.len() - 8, compressed.len() - 1]);
    for pos in positions {
        let mut bad = compressed.clone();
        bad[pos] ^= 1 << rng.below(8);
        let result = index(&bad, Compression::Gzip, 16 * KIB);
        assert!(
            matches!(
                result,
                Err(CodecError::Inflate { .. } | CodecError::Crc { .. } | CodecError::UnexpectedEof { .. })
            ),
            "flip at {pos}: {:?}",
            result.map(|(_, s)| s.spans.len())
        );
    }
    let mut bad = compressed.clone();
    bad[1] = 0x8c;
    assert!(matches!(index(&bad, Compression::Gzip, KIB), Err(CodecError::GzipHeader { offset: 0, .. })));
    let mut bad = compressed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x10;
    assert!(matches!(index(&bad, Compression::Gzip, KIB), Err(CodecError::Crc { member_offset: 0 })));
}

#[test]
fn data_after_the_last_gzip_member_is_rejected() {
    let (_, compressed) = small_gzip();
    for tail in [&b"garbage"[..], &[0u8; 16], &[0x1f]] {
        let mut bad = compressed.clone();
        bad.extend_from_slice(tail);
        let result = index(&bad, Compression::Gzip, 16 * KIB);
        assert!(
            matches!(result, Err(CodecError::GzipHeader { .. } | CodecError::UnexpectedEof { .. })),
            "tail {tail:?}"
        );
        let expected_offset = compressed.len() as u64;
        if let Err(CodecError::GzipHeader { offset, .. }) = result {
            assert_eq!(offset, expected_offset);
        }
    }
    // Not gzip at all.
    assert!(index(b"plain tar bytes", Compression::Gzip, KIB).is_err());
}

#[test]
fn broken_zstd_is_an_error() {
    let original = layer_data(500_000, 33);
    let compressed = zstd_frame(&original, 3);
    let len = compressed.len();
    for cut in [1, 4, 10, len / 2, len - 4, len - 1] {
        assert!(index(&compressed[..cut], Compression::Zstd, 16 * KIB).is_err(), "cut at {cut}");
    }
    let mut rng = Rng::new(34);
    for _ in 0..30 {
        let mut bad = compressed.clone();
        let pos = rng.below(len);
        bad[pos] ^= 1 << rng.below(8);
        // The frame carries a content checksum, so any change is caught.
        assert!(index(&bad, Compression::Zstd, 16 * KIB).is_err(), "flip at {pos}");
    }
    assert!(matches!(index(b"definitely not zstd", Compression::Zstd, KIB), Err(CodecError::Zstd { offset: 0, .. })));
}

#[test]
fn finish_before_the_end_is_an_error() {
    let (_, compressed) = small_gzip();
    let mut reader = IndexingReader::new(&compressed[..], Compression::Gzip, 16 * KIB);
    let mut buf = vec![0u8; 50_000];
    reader.read_exact(&mut buf).unwrap();
    assert!(matches!(reader.finish(), Err(CodecError::Incomplete { .. })));
}

/// Fails every `every`-th call with a transient error.
struct Flaky<'a> {
    data: &'a [u8],
    calls: usize,
    every: usize,
}

impl Read for Flaky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls % self.every == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "flaky"));
        }
        let n = buf.len().min(self.data.len()).min(10_000);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn reader_errors_pass_through_and_can_be_retried() {
    let (original, compressed) = small_gzip();
    let (_, reference) = index(&compressed, Compression::Gzip, 16 * KIB).unwrap();
    let flaky = Flaky { data: &compressed, calls: 0, every: 3 };
    let mut reader = IndexingReader::new(flaky, Compression::Gzip, 16 * KIB);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 40_000];
    let mut failures = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
                failures += 1;
            }
        }
    }
    assert!(failures > 3);
    assert!(out == original);
    assert_eq!(reader.finish().unwrap(), reference);
}

#[test]
fn decode_span_with_too_little_data_or_a_wrong_range() {
    let (original, compressed) = small_gzip();
    let zstd: Vec<u8> = original.chunks(50_000).flat_map(|c| zstd_frame(c, 3)).collect();
    for (compression, blob) in [(Compression::Gzip, &compressed), (Compression::Zstd, &zstd)] {
        let (_, summary) = index(blob, compression, 64 * KIB).unwrap();
        assert!(summary.spans.len() > 2);
        let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
        let span = &summary.spans[1];
        let cp = span.checkpoint.as_ref();
        let range = span_fetch_range(compression, &refs, 1, summary.compressed_size);
        let fetched = &blob[range.start as usize..range.end as usize];

        let short = &fetched[..fetched.len() / 2];
        let err = decode_span(compression, &cp, range.start, short, span.len).unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { expected, got } if expected == span.len && got < span.len),
            "{err}"
        );

        let err = decode_span(compression, &cp, cp.in_offset + 1, &fetched[2..], span.len).unwrap_err();
        assert!(matches!(err, CodecError::CheckpointRange { .. }), "{err}");

        let bad_bits = CheckpointRef { bits: 9, ..cp };
        assert!(decode_span(compression, &bad_bits, range.start, fetched, span.len).is_err());
    }
}

#[test]
fn decode_span_never_panics_on_garbage() {
    let (original, compressed) = small_gzip();
    let mut rng = Rng::new(35);
    for round in 0..300 {
        let mut data = if round % 2 == 0 {
            compressed[rng.below(compressed.len())..].to_vec()
        } else {
            let mut d = vec![0u8; rng.below(5000)];
            rng.fill(&mut d);
            d
        };
        if !data.is_empty() && round % 3 == 0 {
            let pos = rng.below(data.len());
            data[pos] ^= 0x55;
        }
        let window = &original[..rng.below(40_000)];
        let cp = CheckpointRef {
            out_offset: 0,
            in_offset: rng.below(data.len() + 2) as u64,
            bits: rng.below(9) as u8,
            window,
        };
        let len = rng.below(100_000) as u64;
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            if let Ok(out) = decode_span(compression, &cp, 0, &data, len) {
                assert_eq!(out.len() as u64, len);
            }
        }
    }
    assert!(matches!(
        decode_span(
            Compression::Gzip,
            &CheckpointRef { out_offset: 0, in_offset: 0, bits: 0, window: &[] },
            0,
            &[],
            u64::MAX
        ),
        Err(CodecError::ImpossibleLength { .. } | CodecError::SpanTooLarge { .. } | CodecError::Truncated { .. })
    ));
}

#[test]
fn small_reads_of_a_broken_stream_fail_consistently() {
    let (_, compressed) = small_gzip();
    let mut bad = compressed.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 64].fill(0xff);
    let result = index_with(&bad, Compression::Gzip, 16 * KIB, 100, 999);
    assert!(matches!(result, Err(CodecError::Inflate { .. } | CodecError::Crc { .. })));
}
