//! End to end, sizes a `.clip` file records: they come from the file, so an attacker picks them. Files
//! with valid checksums but a file, layer or span size no image can have (2^63, 2^40, an offset that
//! overflows, a layer of u64::MAX bytes) make `inspect`, `cat` and `extract` fail with a clear "corrupt
//! index" error: never a panic, an abort or an allocation of that size. And `extract` streams file data:
//! its memory does not grow with the size of the files it writes.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;

use clip_format::{
    mode, write_archive, write_index, ArchiveKind, Compression, Content, DataRef, DataSource, Digest, ImageMeta,
    IndexContents, Ino, LayerIndex, LayerMeta, NodeSpec, SpanId, SpanSpec, Timestamp, WindowRef, Windows,
};
use clip_testkit::{Compression as LayerCompression, Image, LayerBuilder, OciLayoutBuilder};
use common::{clip_fails, s};

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
                media_type: clip_image::DATA_MEDIA_TYPE.into(),
                digest: Digest::default(),
                size: DATA_LEN,
                diff_id: None,
                uncompressed_size: uncompressed,
                compression: Compression::None,
                first_span: SpanId(0),
                span_count: 1,
            }],
            ..ImageMeta::default()
        },
        nodes: vec![
            node(mode::S_IFDIR | 0o755, Content::Dir(vec![(b"f".to_vec(), Ino(2))])),
            node(mode::S_IFREG | 0o644, Content::File(file)),
        ],
        spans: vec![SpanSpec {
            out_offset: 0,
            in_offset: 0,
            bits: 0,
            digest: Digest::default(),
            window: WindowRef::default(),
        }],
        windows: Windows::new(),
        chunks: None,
        tree: None,
    };
    let mut out = Vec::new();
    write_archive(&contents, Some(DataSource { reader: &mut &data[..], len: DATA_LEN }), &mut out).unwrap();
    out
}

/// `inspect`, `cat` and `extract` of `file` all fail cleanly with `needle`.
fn all_refuse(file: &Path, needle: &str) {
    let dir = file.parent().unwrap();
    clip_fails(&["inspect", s(file)], needle);
    clip_fails(&["cat", s(file), "/f"], needle);
    let target = dir.join("extracted");
    let stderr = clip_fails(&["extract", s(file), s(&target)], needle);
    println!("{}: {}", file.file_name().unwrap().to_string_lossy(), stderr.trim());
}

#[test]
fn absurd_file_sizes_are_refused_at_open() {
    let cases = [
        ("size-2p63", DataRef { layer: LayerIndex(0), offset: 0, size: 1 << 63 }, DATA_LEN),
        ("size-2p40", DataRef { layer: LayerIndex(0), offset: 0, size: 1 << 40 }, DATA_LEN),
        ("offset-overflows", DataRef { layer: LayerIndex(0), offset: u64::MAX - 10, size: 100 }, DATA_LEN),
        ("no-such-layer", DataRef { layer: LayerIndex(7), offset: 0, size: 10 }, DATA_LEN),
        ("layer-u64-max", DataRef { layer: LayerIndex(0), offset: 0, size: 10 }, u64::MAX),
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
    fs::write(&path, v1_archive(DataRef { layer: LayerIndex(0), offset: 0, size: 1 << 40 }, 1 << 40)).unwrap();
    common::clip_ok(&["inspect", s(&path)]);
    clip_fails(&["cat", s(&path), "/f"], "more than 4096 stored bytes");
    let stderr = clip_fails(&["extract", s(&path), s(&dir.path().join("x"))], "more than 4096 stored bytes");
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
        clip_indexer::index_image(&image, source, &Default::default()).await.unwrap().0
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
        // Chunk digests are written for the layer's real size only.
        c.chunks = None;
        let path = dir.path().join(format!("{name}.clip"));
        let mut bytes = Vec::new();
        write_index(&c, &mut bytes).unwrap();
        fs::write(&path, bytes).unwrap();
        if needle == "corrupt index" {
            all_refuse(&path, needle);
        } else {
            common::clip_ok(&["inspect", s(&path)]);
            clip_fails(&["cat", s(&path), "/f"], needle);
            clip_fails(&["extract", s(&path), s(&dir.path().join(name))], needle);
        }
    }
    drop(layout);
}

/// Waits for process `pid` (a child of this process) and returns its exit code and peak resident memory in
/// bytes (`ru_maxrss` from `wait4`: this child's own, not that of other tests' children).
fn wait_peak_rss(pid: u32) -> (Option<i32>, u64) {
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: wait4 only writes through the two pointers, both to locals that outlive the call; a zeroed
    // rusage is a valid value of the plain C struct.
    let reaped = unsafe { nix::libc::wait4(pid as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(reaped, pid as i32, "wait4: {}", std::io::Error::last_os_error());
    // SAFETY: zero-initialized above and filled by wait4.
    let usage = unsafe { usage.assume_init() };
    let code = nix::libc::WIFEXITED(status).then(|| nix::libc::WEXITSTATUS(status));
    (code, usage.ru_maxrss as u64 * 1024)
}

/// Archives a tree holding one file of `len` bytes, extracts it with `clip extract` and returns the
/// extract's peak resident memory in bytes (after checking the file came out right).
#[allow(clippy::zombie_processes)] // reaped by `wait_peak_rss`, with wait4 rather than `Child::wait`
fn extract_peak_rss(dir: &Path, len: usize) -> u64 {
    let root = dir.join(format!("rootfs-{len}"));
    fs::create_dir(&root).unwrap();
    common::write_pattern(&root.join("big"), len);
    let archive = dir.join(format!("{len}.clip"));
    common::clip_ok(&["archive", s(&root), "-o", s(&archive)]);
    fs::remove_dir_all(&root).unwrap();

    let target = dir.join(format!("extracted-{len}"));
    let log_path = dir.join(format!("stderr-{len}"));
    let child = common::clip_command()
        .args(["-q", "extract", s(&archive), s(&target)])
        .env("CLIP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let (code, peak) = wait_peak_rss(child.id());
    assert_eq!(code, Some(0), "clip extract failed:\n{}", fs::read_to_string(&log_path).unwrap());
    assert_eq!(fs::metadata(target.join("big")).unwrap().len(), len as u64);
    assert!(common::is_pattern(&target.join("big")), "extracted bytes differ from the source");
    fs::remove_dir_all(&target).unwrap();
    fs::remove_file(&archive).unwrap();
    peak
}

#[test]
fn extract_streams_file_data_and_its_memory_does_not_grow_with_file_size() {
    const GIB: usize = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let peak = extract_peak_rss(dir.path(), GIB);
    println!("peak RSS of extracting a 1 GiB file: {} MiB", peak >> 20);
    // Holding the file would cost its 1 GiB (the old extract held it twice); streaming costs a few spans.
    assert!(peak < 384 << 20, "extracting a 1 GiB file took {} MiB at peak", peak >> 20);
}
