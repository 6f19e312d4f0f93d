//! Shared helpers for the codec integration tests: deterministic layer-like data, compressors, indexing and
//! a full span-by-span check against the original bytes.
#![allow(dead_code)]

use std::io::{self, Read, Write};

use clip_codec::{
    decode_span, span_fetch_range, CodecError, Compression, Digest, IndexingReader, LayerSummary, SpanRef,
};

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "usr",
    "lib",
    "python3",
    "site-packages",
    "import",
    "def",
    "return",
    "self",
    "class",
    "the",
    "of",
    "container",
    "layer",
    "\n",
    "    ",
    "=",
    "(",
    ")",
    "{",
    "}",
    "0x",
    "etc/",
    "bin/",
    "README",
    "license",
];

/// `len` bytes resembling a layer: random runs (incompressible), text runs (Huffman-coded blocks, so
/// checkpoints with bits != 0) and zero runs (tar padding).
pub fn layer_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 600_000);
    while out.len() < len {
        match rng.below(6) {
            0 => {
                let start = out.len();
                out.resize(start + 4096 + rng.below(200_000), 0);
                rng.fill(&mut out[start..]);
            }
            1 => out.resize(out.len() + 512 + rng.below(60_000), 0),
            _ => {
                let end = out.len() + 10_000 + rng.below(500_000);
                while out.len() < end {
                    out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
                    if rng.below(4) == 0 {
                        out.push(b' ');
                    }
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// flate2 (miniz_oxide) gzip: a second deflate implementation with different block boundaries.
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// GNU gzip's output (zlib's deflate, as most layer tools use); also much faster than flate2's miniz_oxide
/// in an unoptimized test build.
pub fn gnu_gzip(data: &[u8], level: u32) -> Vec<u8> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .args(["-c", "-n", &format!("-{level}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("these tests need the gzip command (apt-get install gzip)");
    let mut stdin = child.stdin.take().unwrap();
    let output = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(data));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        output
    });
    assert!(output.status.success(), "gzip failed");
    output.stdout
}

/// A zstd frame with a content checksum (so corruption is detected).
pub fn zstd_frame(data: &[u8], level: i32) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A zstd skippable frame holding `payload`.
pub fn zstd_skippable(payload: &[u8]) -> Vec<u8> {
    let mut out = 0x184d_2a53u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A reader that hands out at most `chunk` bytes per read, to move input-buffer boundaries around.
pub struct Trickle<'a> {
    pub data: &'a [u8],
    pub chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Index `compressed` reading `read_size` bytes at a time from an inner reader that gives `inner_chunk`
/// bytes at a time; returns the uncompressed output and the summary.
pub fn index_with(
    compressed: &[u8],
    compression: Compression,
    span_size: u64,
    read_size: usize,
    inner_chunk: usize,
) -> Result<(Vec<u8>, LayerSummary), CodecError> {
    let inner = Trickle { data: compressed, chunk: inner_chunk };
    let mut reader = IndexingReader::new(inner, compression, span_size);
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                assert!(reader.uncompressed_pos() >= out.len() as u64);
                assert!(reader.compressed_pos() <= compressed.len() as u64);
            }
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                let inner = err.into_inner().expect("codec errors are wrapped");
                let codec = inner.downcast::<CodecError>().expect("a CodecError");
                // Once failed, always failed; finish reports the same error.
                assert!(reader.read(&mut buf).is_err());
                assert_eq!(reader.finish().unwrap_err(), *codec);
                return Err(*codec);
            }
        }
    }
    let summary = reader.finish()?;
    Ok((out, summary))
}

pub fn index(
    compressed: &[u8],
    compression: Compression,
    span_size: u64,
) -> Result<(Vec<u8>, LayerSummary), CodecError> {
    index_with(compressed, compression, span_size, 256 * 1024, usize::MAX)
}

/// Checks the summary against the original bytes and decodes every span from its fetch range alone.
pub fn check_spans(compression: Compression, summary: &LayerSummary, compressed: &[u8], original: &[u8]) {
    assert_eq!(summary.uncompressed_size, original.len() as u64);
    assert_eq!(summary.compressed_size, compressed.len() as u64);
    assert!(!summary.spans.is_empty());
    let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
    let mut expected_out = 0;
    for (i, span) in summary.spans.iter().enumerate() {
        let cp = &span.checkpoint;
        assert_eq!(cp.out_offset, expected_out, "span {i} does not start where span {} ended", i.wrapping_sub(1));
        expected_out += span.len;
        let want = &original[cp.out_offset as usize..(cp.out_offset + span.len) as usize];
        assert_eq!(span.digest, Digest::of(want), "digest of span {i}");
        assert_eq!(span.root, clip_format::SpanRoot::of(want), "tree root of span {i}");
        assert!(cp.bits <= 7);
        assert!(cp.window.len() <= 32 * 1024);
        // Windows are trimmed: the output right before the checkpoint with the bytes decoding never uses
        // zeroed (decode_span below proves the rest is enough).
        let before = &original[cp.out_offset as usize - cp.window.len()..cp.out_offset as usize];
        assert!(
            cp.window.iter().zip(before).all(|(&w, &o)| w == o || w == 0),
            "window of span {i} is not (a masked copy of) the output before it"
        );

        let range = span_fetch_range(compression, &refs, i, summary.compressed_size);
        assert!(range.start <= cp.in_offset && range.end <= summary.compressed_size);
        let fetched = &compressed[range.start as usize..range.end as usize];
        let got = decode_span(compression, &cp.as_ref(), range.start, fetched, span.len)
            .unwrap_or_else(|e| panic!("span {i} (out {}, in {}, bits {}): {e}", cp.out_offset, cp.in_offset, cp.bits));
        assert!(got == want, "span {i}: decoded bytes differ from the original");
    }
    assert_eq!(expected_out, original.len() as u64);
}
