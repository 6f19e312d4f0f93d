//! Fuzzes gzip indexing (checkpoints, window trimming) and decoding: the input, after a fixed gzip header,
//! is taken as deflate data plus trailer. Any bytes give an index or an error, never a panic; and when
//! indexing succeeds, every span must decode from its checkpoint (trimmed window included) to exactly the
//! bytes its digest names.
#![no_main]

use std::io::Read;

use clip_codec::{decode_span, sha256, span_fetch_range, Compression, IndexingReader, SpanRef};
use libfuzzer_sys::fuzz_target;

/// A minimal gzip member header (no name, no extra fields).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

fuzz_target!(|data: &[u8]| {
    let Some((&size, body)) = data.split_first() else { return };
    let span_size = 1024 * (u64::from(size) % 64 + 1);
    let mut blob = HEADER.to_vec();
    blob.extend_from_slice(body);
    let mut reader = IndexingReader::new(&blob[..], Compression::Gzip, span_size);
    let mut out = Vec::new();
    // Cap the output: a tiny input can inflate enormously.
    if reader.by_ref().take(16 << 20).read_to_end(&mut out).is_err() || out.len() >= 16 << 20 {
        return;
    }
    let Ok(summary) = reader.finish() else { return };
    let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
    for (i, span) in summary.spans.iter().enumerate() {
        let range = span_fetch_range(Compression::Gzip, &refs, i, summary.compressed_size);
        let fetched = &blob[range.start as usize..range.end as usize];
        let got = decode_span(Compression::Gzip, &span.checkpoint.as_ref(), range.start, fetched, span.len)
            .expect("an indexed span decodes");
        assert_eq!(sha256(&got), span.digest, "span {i} decodes to other bytes than indexed");
        let start = span.checkpoint.out_offset as usize;
        assert_eq!(got, &out[start..start + got.len()], "span {i}");
    }
});
