//! gzip round trips: index a generated layer, then decode every span from its checkpoint and fetch range.

mod common;

use std::io::Write;

use clip_codec::{Compression, LayerSummary};
use common::{check_spans, gnu_gzip, gzip, index, index_with, layer_data};

const KIB: u64 = 1024;
const MIB: usize = 1024 * 1024;

fn assert_spans_reach_span_size(summary: &LayerSummary, span_size: u64) {
    let (last, rest) = summary.spans.split_last().unwrap();
    assert!(last.len > 0);
    for span in rest {
        assert!(span.len >= span_size, "span at {} has only {} bytes", span.checkpoint.out_offset, span.len);
    }
}

#[test]
fn single_member_many_small_spans() {
    let original = layer_data(24 * MIB, 1);
    let compressed = gnu_gzip(&original, 6);
    let (out, summary) = index(&compressed, Compression::Gzip, 64 * KIB).unwrap();
    assert!(out == original, "indexing output differs from the original");
    assert!(summary.spans.len() > 80, "only {} spans", summary.spans.len());
    assert_spans_reach_span_size(&summary, 64 * KIB);

    let first = &summary.spans[0].checkpoint;
    // gzip -n writes the minimal 10-byte header.
    assert_eq!((first.out_offset, first.in_offset, first.bits), (0, 10, 0));
    assert!(first.window.is_empty());
    // One member: every later window could be the full 32 KiB, but trimming keeps only what decoding uses.
    let kept: usize = summary.spans[1..].iter().map(|s| s.checkpoint.window.iter().filter(|&&b| b != 0).count()).sum();
    let full = (summary.spans.len() - 1) * 32 * 1024;
    assert!(kept < full * 9 / 10, "trimming kept {kept} of {full} window bytes");
    // Huffman blocks end mid-byte, so the inflatePrime path is exercised.
    let primed = summary.spans.iter().filter(|s| s.checkpoint.bits != 0).count();
    assert!(primed > 10, "only {primed} checkpoints with bits != 0");
    check_spans(Compression::Gzip, &summary, &compressed, &original);
}

#[test]
fn miniz_oxide_output() {
    let original = layer_data(4 * MIB, 8);
    let compressed = gzip(&original, 6);
    let (out, summary) = index(&compressed, Compression::Gzip, 64 * KIB).unwrap();
    assert!(out == original);
    assert!(summary.spans.len() > 10, "only {} spans", summary.spans.len());
    assert!(summary.spans.iter().any(|s| s.checkpoint.bits != 0));
    assert_spans_reach_span_size(&summary, 64 * KIB);
    check_spans(Compression::Gzip, &summary, &compressed, &original);
}

#[test]
fn read_and_input_chunking_do_not_change_the_index() {
    let original = layer_data(6 * MIB, 2);
    let compressed = gnu_gzip(&original, 1);
    let (_, reference) = index(&compressed, Compression::Gzip, 256 * KIB).unwrap();
    // Small reads go through the staging buffer; odd inner chunks split headers and blocks anywhere.
    for (read_size, inner_chunk) in [(1000, 7777), (4096, 65_536), (1 << 20, 333), (31, 1)] {
        let (out, summary) = index_with(&compressed, Compression::Gzip, 256 * KIB, read_size, inner_chunk).unwrap();
        assert!(out == original, "read {read_size}/{inner_chunk}: output differs");
        assert_eq!(summary, reference, "read {read_size}/{inner_chunk}: different index");
    }
    check_spans(Compression::Gzip, &reference, &compressed, &original);
}

#[test]
fn a_span_size_set_between_reads_applies_at_the_same_place_however_the_input_arrives() {
    // An indexer reading a tar sets the span size as it meets each entry; the decoder is ahead of the reads
    // by what it has staged, and that must not depend on how the network cut the compressed stream.
    let original = layer_data(6 * MIB, 3);
    let compressed = gnu_gzip(&original, 6);
    let index_setting_sizes = |read_size: usize, inner_chunk: usize| {
        let inner = common::Trickle { data: &compressed, chunk: inner_chunk };
        let mut reader = clip_codec::IndexingReader::new(inner, Compression::Gzip, 64 * KIB);
        let (mut buf, mut read) = (vec![0u8; read_size], 0usize);
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            read += n;
            // Long spans over the second and fourth MiB, short ones elsewhere.
            reader.set_span_size(if (read / MIB) % 2 == 1 { 512 * KIB } else { 64 * KIB });
        }
        reader.finish().unwrap()
    };
    for read_size in [512, 64 << 10] {
        let reference = index_setting_sizes(read_size, usize::MAX);
        for inner_chunk in [7777, 1000, 333] {
            let summary = index_setting_sizes(read_size, inner_chunk);
            let cuts = |s: &LayerSummary| s.spans.iter().map(|s| s.checkpoint.out_offset).collect::<Vec<_>>();
            assert_eq!(cuts(&summary), cuts(&reference), "reads of {read_size}, input in {inner_chunk}");
            assert!(summary == reference, "reads of {read_size}, input in {inner_chunk}: same cuts, other checkpoints");
        }
        check_spans(Compression::Gzip, &reference, &compressed, &original);
    }
}

#[test]
fn best_compression_and_large_spans() {
    let original = layer_data(8 * MIB, 3);
    let compressed = gnu_gzip(&original, 9);
    let (_, summary) = index(&compressed, Compression::Gzip, 4 * MIB as u64).unwrap();
    assert!(summary.spans.len() >= 2);
    assert_spans_reach_span_size(&summary, 4 * MIB as u64);
    check_spans(Compression::Gzip, &summary, &compressed, &original);
}

#[test]
fn concatenated_members_with_spans_across_boundaries() {
    let original = layer_data(20 * MIB, 4);
    // Irregular member sizes, including an empty and a one-byte member.
    let cuts = [0, 1_000_000, 1_000_000, 1_000_001, 3_333_333, 3_400_000, 9_000_000, 20 * MIB];
    let mut compressed = Vec::new();
    let mut member_starts = Vec::new();
    let mut member_out_starts = Vec::new();
    for pair in cuts.windows(2) {
        member_starts.push(compressed.len() as u64);
        member_out_starts.push(pair[0] as u64);
        compressed.extend_from_slice(&gnu_gzip(&original[pair[0]..pair[1]], 6));
    }
    let (out, summary) = index(&compressed, Compression::Gzip, 64 * KIB).unwrap();
    assert!(out == original);
    assert_spans_reach_span_size(&summary, 64 * KIB);
    check_spans(Compression::Gzip, &summary, &compressed, &original);

    // Windows never reach back into the previous member.
    for span in &summary.spans {
        let cp = &span.checkpoint;
        let member_out = member_out_starts.iter().rev().find(|&&m| m <= cp.out_offset).unwrap();
        assert!(cp.window.len() as u64 <= cp.out_offset - member_out);
    }
    // Some span's compressed range contains the start of a later member, so decoding crossed a trailer
    // and a header.
    let crossing = summary
        .spans
        .windows(2)
        .filter(|w| member_starts.iter().any(|&m| w[0].checkpoint.in_offset < m && m < w[1].checkpoint.in_offset));
    assert!(crossing.count() >= 3);
}

/// A gzip member with every optional header field, built by hand around raw deflate data.
fn member_with_header_fields(data: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 0x78, 0x56, 0x34, 0x12, 0, 3];
    let extra = b"Ap\x04\x00clip";
    out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    out.extend_from_slice(extra);
    out.extend_from_slice(name);
    out.push(0);
    out.extend_from_slice(b"generated by the clip-codec tests\0");
    let mut crc = flate2::Crc::new();
    crc.update(&out);
    out.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
    let mut deflate = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(6));
    deflate.write_all(data).unwrap();
    let mut out = deflate.finish().unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn optional_header_fields() {
    let original = layer_data(3 * MIB, 5);
    let mut compressed = member_with_header_fields(&original[..MIB], b"layer.tar");
    compressed.extend_from_slice(&member_with_header_fields(&original[MIB..], "ünïcode-name".as_bytes()));
    let (out, summary) = index(&compressed, Compression::Gzip, 64 * KIB).unwrap();
    assert!(out == original);
    assert!(summary.spans[0].checkpoint.in_offset > 10, "header fields were not skipped");
    check_spans(Compression::Gzip, &summary, &compressed, &original);
}

#[test]
fn tiny_spans_and_tiny_layers() {
    let original = layer_data(2 * MIB, 6);
    let compressed = gzip(&original, 6);
    // span_size 1 = a checkpoint at every block boundary.
    let (_, summary) = index(&compressed, Compression::Gzip, 1).unwrap();
    assert!(summary.spans.len() > 3, "{} spans", summary.spans.len());
    check_spans(Compression::Gzip, &summary, &compressed, &original);

    for data in [&b""[..], b"x", b"hello world"] {
        let compressed = gzip(data, 6);
        let (out, summary) = index(&compressed, Compression::Gzip, 64 * KIB).unwrap();
        assert_eq!(out, data);
        assert_eq!(summary.spans.len(), 1);
        check_spans(Compression::Gzip, &summary, &compressed, data);
    }
}

#[test]
fn a_resume_point_inside_a_span_decodes_from_near_where_it_is_asked_for() {
    let original = layer_data(8 * MIB, 7);
    let compressed = gnu_gzip(&original, 6);
    let (_, summary) = index(&compressed, Compression::Gzip, 4 * MIB as u64).unwrap();
    let refs: Vec<_> = summary.spans.iter().map(|s| s.as_ref()).collect();
    let span = &summary.spans[0];
    let fetch = clip_codec::span_fetch_range(Compression::Gzip, &refs, 0, compressed.len() as u64);
    let data = &compressed[fetch.start as usize..fetch.end as usize];
    let cp = &span.checkpoint;
    let checkpoint = clip_codec::CheckpointRef {
        out_offset: cp.out_offset,
        in_offset: cp.in_offset,
        bits: cp.bits,
        window: &cp.window,
    };
    let (from, to) = (3 * MIB as u64, 3 * MIB as u64 + 100 * KIB);
    let point = clip_codec::gzip_resume_point(&checkpoint, fetch.start, data, span.len, from, to).unwrap().unwrap();
    assert!(point.out_offset <= from && from - point.out_offset < 256 * KIB, "resumes at {}", point.out_offset);
    assert!(point.in_offset > fetch.start + (fetch.end - fetch.start) / 2, "past the middle of the span's bytes");
    assert!(point.window.len() <= 32 * KIB as usize);
    // Its own compressed bytes, from where it starts to `in_end`, decode to the original bytes up to `to`.
    let start = clip_codec::fetch_start(Compression::Gzip, point.in_offset, point.bits);
    assert!(point.in_end < fetch.end, "only what reaches `to` is needed");
    let own = &compressed[start as usize..point.in_end as usize];
    let resume = clip_codec::CheckpointRef {
        out_offset: point.out_offset,
        in_offset: point.in_offset,
        bits: point.bits,
        window: &point.window,
    };
    let got = clip_codec::decode_span(Compression::Gzip, &resume, start, own, to - point.out_offset).unwrap();
    assert!(got == original[point.out_offset as usize..to as usize], "bytes decoded from the resume point differ");
    // Nothing at or before the span's start to resume from.
    assert_eq!(clip_codec::gzip_resume_point(&checkpoint, fetch.start, data, span.len, 0, to).unwrap(), None);
}
