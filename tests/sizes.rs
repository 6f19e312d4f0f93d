//! End to end, sizes a `.clip` file records: they come from the file, so an attacker picks them. Files
//! with valid checksums but a file, layer or span size no image can have (2^63, 2^40, an offset that
//! overflows, a layer of u64::MAX bytes) make `inspect`, `cat` and `extract` fail with a clear "corrupt
//! index" error: never a panic, an abort or an allocation of that size.

mod common;

use std::fs;
use std::path::Path;

use clip_format::{
    mode, write_archive, write_index, ArchiveKind, Compression, Content, DataRef, DataSource, ImageMeta, IndexContents,
    Ino, LayerMeta, NodeSpec, SpanSpec, Timestamp,
};
use clip_testkit::{Compression as LayerCompression, Image, LayerBuilder, OciLayoutBuilder};
use common::{clip, s};

const DATA_LEN: u64 = 4096;

fn node(mode: u32, content: Content) -> NodeSpec {
    NodeSpec { mode, uid: 0, gid: 0, mtime: Timestamp::default(), xattrs: vec![], content }
}

/// A data-carrying archive holding `/f` at `file` of a data section of 4 KiB whose layer records
/// `uncompressed` bytes; checksums valid.
fn v1_archive(file: DataRef, uncompressed: u64) -> Vec<u8> {
    let data = vec![b'x'; DATA_LEN as usize];
    let contents = IndexContents {
        kind: ArchiveKind::DataCarrying,
        meta: ImageMeta {
            source: "/rootfs".into(),
            span_size: 4 << 20,
            layers: vec![LayerMeta {
                media_type: clip_client::DATA_MEDIA_TYPE.into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                size: DATA_LEN,
                diff_id: String::new(),
                uncompressed_size: uncompressed,
                compression: Compression::None,
                first_span: 0,
                span_count: 1,
            }],
            ..ImageMeta::default()
        },
        nodes: vec![
            node(mode::S_IFDIR | 0o755, Content::Dir(vec![(b"f".to_vec(), Ino(2))])),
            node(mode::S_IFREG | 0o644, Content::File(file)),
        ],
        spans: vec![SpanSpec { out_offset: 0, in_offset: 0, bits: 0, digest: [0; 32], window: vec![] }],
    };
    let mut out = Vec::new();
    write_archive(&contents, Some(DataSource { reader: &mut &data[..], len: DATA_LEN }), &mut out).unwrap();
    out
}

/// Runs `clip ARGS` and checks it fails cleanly: exit code 1, an `error:` line containing `needle`, no
/// panic, no abort.
fn fails_cleanly(args: &[&str], needle: &str) -> String {
    let out = clip(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "clip {args:?}:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "clip {args:?}: {:?}\n{stderr}", out.status);
    assert!(stderr.contains("error:") && stderr.contains(needle), "clip {args:?}: expected {needle:?} in:\n{stderr}");
    stderr
}

/// `inspect`, `cat` and `extract` of `file` all fail cleanly with `needle`.
fn all_refuse(file: &Path, needle: &str) {
    let dir = file.parent().unwrap();
    fails_cleanly(&["inspect", s(file)], needle);
    fails_cleanly(&["cat", s(file), "/f"], needle);
    let target = dir.join("extracted");
    let stderr = fails_cleanly(&["extract", s(file), s(&target)], needle);
    println!("{}: {}", file.file_name().unwrap().to_string_lossy(), stderr.trim());
}

#[test]
fn absurd_file_sizes_are_refused_at_open() {
    let cases = [
        ("size-2p63", DataRef { layer: 0, offset: 0, size: 1 << 63 }, DATA_LEN),
        ("size-2p40", DataRef { layer: 0, offset: 0, size: 1 << 40 }, DATA_LEN),
        ("offset-overflows", DataRef { layer: 0, offset: u64::MAX - 10, size: 100 }, DATA_LEN),
        ("no-such-layer", DataRef { layer: 7, offset: 0, size: 10 }, DATA_LEN),
        ("layer-u64-max", DataRef { layer: 0, offset: 0, size: 10 }, u64::MAX),
    ];
    for (name, file, uncompressed) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.clip"));
        fs::write(&path, v1_archive(file, uncompressed)).unwrap();
        all_refuse(&path, "corrupt index");
    }
}

#[test]
fn a_span_claiming_a_terabyte_of_four_kilobytes_fails_without_allocating_it() {
    // Consistent with itself (the file fits its layer, the span covers the layer), but 4 KiB of stored
    // data cannot hold 1 TiB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tera.clip");
    fs::write(&path, v1_archive(DataRef { layer: 0, offset: 0, size: 1 << 40 }, 1 << 40)).unwrap();
    common::clip_ok(&["inspect", s(&path)]);
    fails_cleanly(&["cat", s(&path), "/f"], "more than 4096 stored bytes");
    let stderr = fails_cleanly(&["extract", s(&path), s(&dir.path().join("x"))], "more than 4096 stored bytes");
    println!("{}", stderr.trim());
}

/// An OCI layout with one small image, and its index contents (built in this process, to be tampered with).
fn indexed_layout() -> (OciLayoutBuilder, IndexContents) {
    let mut l = LayerBuilder::new();
    l.file("f", "hello\n");
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::from_tars(vec![l.finish()], LayerCompression::Gzip));
    let reference: clip_source::ImageRef = format!("oci:{}:t", layout.path().display()).parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let contents = rt.block_on(async {
        let (image, source) = clip_source::open(&reference, &Default::default()).await.unwrap();
        clip_indexer::index_image(&image, source, &Default::default()).await.unwrap()
    });
    (layout, contents)
}

#[test]
fn an_absurd_layer_size_is_refused_or_checked_against_the_blob_before_allocating() {
    let (layout, contents) = indexed_layout();
    let dir = tempfile::tempdir().unwrap();
    for (name, size, needle) in [
        ("layer-size-u64-max", u64::MAX, "corrupt index"),
        // Plausible for an index, not for this blob: the last span would read 2^62 bytes.
        ("layer-size-2p62", 1 << 62, "shorter than"),
    ] {
        let mut c = contents.clone();
        c.meta.layers[0].size = size;
        let path = dir.path().join(format!("{name}.clip"));
        let mut bytes = Vec::new();
        write_index(&c, &mut bytes).unwrap();
        fs::write(&path, bytes).unwrap();
        if needle == "corrupt index" {
            all_refuse(&path, needle);
        } else {
            common::clip_ok(&["inspect", s(&path)]);
            fails_cleanly(&["cat", s(&path), "/f"], needle);
            fails_cleanly(&["extract", s(&path), s(&dir.path().join(name))], needle);
        }
    }
    drop(layout);
}
