//! Window trimming: keep only the bytes of a gzip checkpoint's 32 KiB window that decoding actually uses.
//!
//! After a checkpoint, deflate can copy from the window only while fewer than 32 KiB have been produced
//! (a back-reference reaches at most 32 KiB). So the first 32 KiB of output after the checkpoint decide which
//! window bytes matter; on typical layers most do not. Bytes that no output depends on are zeroed and a
//! leading unreferenced run is dropped (a dictionary is right-aligned, so distances stay the same), which
//! makes the stored, zstd-compressed window several times smaller.
//!
//! Which bytes are referenced is found without instrumenting zlib: every output byte is either a literal or
//! an exact copy of one earlier byte, so it comes from exactly one window position or none, and how the
//! stream decodes does not depend on the window's values. Decoding once with the whole window inverted
//! shows which output bytes come from the window; decoding with window byte `j` replaced by the low byte
//! of `j`, and once more by its high byte, spells out each such byte's source position. That is four
//! inflates of at most 32 KiB each per checkpoint, a fraction of a millisecond.

use crate::gzip::decode;
use crate::zlib::WINDOW_SIZE;
use crate::CheckpointRef;

/// The part of `checkpoint.window` that decoding `out_len` bytes from it needs: unreferenced bytes zeroed,
/// unreferenced leading bytes removed. `data` holds the compressed bytes from `fetch_start` on, enough to
/// produce `out_len` bytes (at most 32 KiB are looked at). `None` if the bytes do not decode; the caller
/// then keeps the whole window.
pub(crate) fn trim_window(
    checkpoint: &CheckpointRef<'_>,
    fetch_start: u64,
    data: &[u8],
    out_len: u64,
) -> Option<Vec<u8>> {
    let window = checkpoint.window;
    if window.is_empty() {
        return Some(Vec::new());
    }
    let out_len = usize::try_from(out_len).map_or(WINDOW_SIZE, |n| n.min(WINDOW_SIZE));
    let run = |window: &[u8]| -> Option<Vec<u8>> {
        let mut out = vec![0u8; out_len];
        decode(&CheckpointRef { window, ..*checkpoint }, fetch_start, data, &mut out).ok()?;
        Some(out)
    };
    let base = run(window)?;
    let inverted: Vec<u8> = window.iter().map(|b| !b).collect();
    let from_window: Vec<usize> =
        base.iter().zip(run(&inverted)?).enumerate().filter(|(_, (a, b))| *a != b).map(|(i, _)| i).collect();

    let mut source = vec![0usize; from_window.len()];
    if !from_window.is_empty() {
        for shift in [0, 8] {
            let labels: Vec<u8> = (0..window.len()).map(|j| (j >> shift) as u8).collect();
            let out = run(&labels)?;
            for (src, &i) in source.iter_mut().zip(&from_window) {
                *src |= usize::from(out[i]) << shift;
            }
        }
    }

    let mut used = vec![false; window.len()];
    for &j in &source {
        *used.get_mut(j)? = true;
    }
    let first = used.iter().position(|&u| u).unwrap_or(window.len());
    let trimmed: Vec<u8> = window[first..].iter().zip(&used[first..]).map(|(&b, &u)| if u { b } else { 0 }).collect();
    tracing::trace!(window = window.len(), kept = trimmed.len(), referenced = source.len(), "window trimmed");
    Some(trimmed)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use crate::{decode_span, span_fetch_range, Compression, IndexingReader, SpanRef};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Text-like data with long-distance repeats, so windows are referenced but not entirely.
    fn sample(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma\n", "delta ", "epsilon ", "zeta\n", "eta ", "theta "];
        let mut seed = 0x1234_5678u32;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let w = words[(seed >> 16) as usize % words.len()];
            out.extend_from_slice(w.as_bytes());
            if seed % 7 == 0 {
                out.extend_from_slice(format!("{seed:x}").as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn trimmed_windows_decode_every_span_and_are_smaller() {
        let data = sample(3 << 20);
        let blob = gzip(&data);
        let mut reader = IndexingReader::new(&blob[..], Compression::Gzip, 256 * 1024);
        std::io::copy(&mut reader.by_ref(), &mut std::io::sink()).unwrap();
        let summary = reader.finish().unwrap();
        assert!(summary.spans.len() > 5, "{} spans", summary.spans.len());
        let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
        let mut full = 0;
        let mut kept = 0;
        for (i, span) in summary.spans.iter().enumerate() {
            let range = span_fetch_range(Compression::Gzip, &refs, i, summary.compressed_size);
            let fetched = &blob[range.start as usize..range.end as usize];
            let cp = span.checkpoint.as_ref();
            let out = decode_span(Compression::Gzip, &cp, range.start, fetched, span.len).unwrap();
            let start = span.checkpoint.out_offset as usize;
            assert_eq!(out, &data[start..start + span.len as usize], "span {i}");
            if i > 0 {
                full += 32 * 1024;
                kept += span.checkpoint.window.iter().filter(|&&b| b != 0).count();
            }
        }
        assert!(kept < full, "no window byte was dropped ({kept} of {full} kept)");
    }

    #[test]
    fn a_window_the_output_never_uses_is_emptied() {
        // Random bytes after the checkpoint cannot reference the (text) window.
        let mut data = sample(64 * 1024);
        let mut seed = 7u64;
        data.extend((0..64 * 1024).map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        }));
        let blob = gzip(&data);
        let mut reader = IndexingReader::new(&blob[..], Compression::Gzip, 64 * 1024);
        std::io::copy(&mut reader.by_ref(), &mut std::io::sink()).unwrap();
        let summary = reader.finish().unwrap();
        let late: Vec<_> = summary.spans.iter().filter(|s| s.checkpoint.out_offset >= 64 * 1024).collect();
        assert!(!late.is_empty());
        for span in late {
            let kept = span.checkpoint.window.iter().filter(|&&b| b != 0).count();
            assert!(kept < 32 * 1024 / 100, "random data kept {kept} window bytes at {}", span.checkpoint.out_offset);
        }
    }

    #[test]
    fn a_flood_of_empty_blocks_keeps_the_window_whole_and_memory_bounded() {
        // 500 KB of empty stored blocks (sync flushes) right where a checkpoint falls due: trimming gives up
        // on that window instead of buffering the flood, and every span still decodes.
        let data = sample(256 * 1024);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data[..100 * 1024]).unwrap();
        for _ in 0..100_000 {
            enc.flush().unwrap();
        }
        enc.write_all(&data[100 * 1024..]).unwrap();
        let blob = enc.finish().unwrap();
        assert!(blob.len() > 500_000);
        let mut reader = IndexingReader::new(&blob[..], Compression::Gzip, 64 * 1024);
        std::io::copy(&mut reader.by_ref(), &mut std::io::sink()).unwrap();
        let summary = reader.finish().unwrap();
        let refs: Vec<SpanRef> = summary.spans.iter().map(|s| s.as_ref()).collect();
        let mut whole = 0;
        for (i, span) in summary.spans.iter().enumerate() {
            let range = span_fetch_range(Compression::Gzip, &refs, i, summary.compressed_size);
            let fetched = &blob[range.start as usize..range.end as usize];
            let out =
                decode_span(Compression::Gzip, &span.checkpoint.as_ref(), range.start, fetched, span.len).unwrap();
            let start = span.checkpoint.out_offset as usize;
            assert_eq!(out, &data[start..start + span.len as usize], "span {i}");
            let w = &span.checkpoint.window;
            whole += usize::from(w.len() == 32 * 1024 && w[..] == data[start - w.len()..start]);
        }
        assert!(whole >= 1, "no checkpoint in the flood kept its whole window");
    }
}
