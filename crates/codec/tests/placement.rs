//! Where checkpoints land in a real gzip tar layer: seldom over documentation and translations.

mod common;

use clip_codec::{Compression, LayerSummary};
use common::{check_spans, gnu_gzip, index, Rng};

const SPAN: u64 = 64 << 10;

/// A tar of `files` (path, size), each file's bytes text-like (so deflate blocks are Huffman-coded and
/// end anywhere); returns the tar and where each entry's header starts and its data ends.
fn layer(files: &[(String, usize)], seed: u64) -> (Vec<u8>, Vec<(u64, u64, String)>) {
    let mut rng = Rng::new(seed);
    let mut builder = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    let mut pos = 0u64;
    for (path, size) in files {
        let mut data = Vec::with_capacity(*size);
        while data.len() < *size {
            // Mostly 4-bit noise, some repeated words: deflate blocks end every 16–64 KiB of output.
            if rng.below(8) != 0 {
                data.extend((0..rng.below(8 << 10)).map(|_| b'a' + rng.below(16) as u8));
            } else {
                data.extend_from_slice(
                    ["def self(os):\n", "import os\n"][rng.below(2)].repeat(rng.below(400)).as_bytes(),
                );
            }
        }
        data.truncate(*size);
        let mut header = tar::Header::new_ustar();
        header.set_size(*size as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, &data[..]).unwrap();
        let end = pos + 512 + (*size as u64).next_multiple_of(512);
        entries.push((pos, end, path.clone()));
        pos = end;
    }
    (builder.into_inner().unwrap(), entries)
}

fn indexed(tar: &[u8], compression: Compression) -> LayerSummary {
    let compressed = match compression {
        Compression::Gzip => gnu_gzip(tar, 6),
        _ => tar.to_vec(),
    };
    let (out, summary) = index(&compressed, compression, SPAN).unwrap();
    assert_eq!(out, tar);
    check_spans(compression, &summary, &compressed, tar);
    summary
}

#[test]
fn documentation_and_translations_get_an_eighth_of_the_checkpoints() {
    let mut files: Vec<(String, usize)> =
        (0..64).map(|i| (format!("usr/share/locale/l{i}/LC_MESSAGES/pkg.mo"), 32 << 10)).collect();
    files.extend((0..64).map(|i| (format!("usr/lib/python3/m{i}.py"), 32 << 10)));
    let (tar, entries) = layer(&files, 11);
    let docs_end = entries[63].1;
    for compression in [Compression::None, Compression::Gzip] {
        let summary = indexed(&tar, compression);
        let starts = summary.spans.iter().map(|s| s.checkpoint.out_offset).skip(1);
        let (in_docs, in_code) = starts.fold((0, 0), |(d, c), at| if at < docs_end { (d + 1, c) } else { (d, c + 1) });
        // 2 MiB each: 32 spans of 64 KiB over the code, 4 of 512 KiB over the translations (a cut comes up to
        // a deflate block later, and the code's first one up to a read later: the size changes once the
        // header of the first code file has been decoded).
        assert!((20..=33).contains(&in_code), "{compression:?}: {in_code} checkpoints over the code");
        assert!((3..=5).contains(&in_docs), "{compression:?}: {in_docs} checkpoints over the translations");
    }
}
