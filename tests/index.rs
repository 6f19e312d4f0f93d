//! End to end: `clip index` from a real registry and from OCI layouts, then `clip extract`, compared with
//! `umoci unpack` of the same image; laziness of `clip cat`; clear errors for bad input.

mod common;

use clip_testkit::*;
use common::{clip_fails, clip_ok, s, tar_files};
use rstest::rstest;

/// Indexes `image` and extracts it into a fresh directory; returns (tempdir, index path, rootfs path).
fn index_and_extract(image: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("image.clip");
    let rootfs = dir.path().join("rootfs");
    clip_ok(&["index", image, "-o", s(&index)]);
    clip_ok(&["extract", s(&index), s(&rootfs)]);
    (dir, index, rootfs)
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn conformance_image_from_registry_equals_umoci(#[case] compression: Compression) {
    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("v1", &conformance_image(compression));
    registry.push(layout.path(), "v1", "conformance:v1");

    let (_dir, index, rootfs) = index_and_extract(&registry.image_ref("conformance:v1"));
    assert_matches_umoci(layout.path(), "v1", &rootfs, CompareOpts::conformance());

    // The index is deterministic: the same image indexed again gives the same bytes.
    let again = index.with_extension("again");
    clip_ok(&["index", &registry.image_ref("conformance:v1"), "-o", s(&again), "--no-reuse"]);
    assert_eq!(std::fs::read(&index).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn mixed_compressions_and_multi_member_gzip_equal_umoci() {
    let registry = Registry::start();
    let mut image =
        clip_testkit::conformance::conformance_image_mixed(&[Compression::Gzip, Compression::Zstd, Compression::None]);
    // Replace layer 0's blob with a multi-member gzip of the same tar, and layer 1's with many zstd frames.
    let tar0 = image.layers[0].tar().to_vec();
    image.layers[0] = Layer::from_blob(tar0.clone(), gzip_multi_member(&tar0, 3), Compression::Gzip);
    let tar1 = image.layers[1].tar().to_vec();
    image.layers[1] = Layer::from_blob(tar1.clone(), zstd_multi_frame(&tar1, 4096), Compression::Zstd);
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("mixed", &image);
    registry.push(layout.path(), "mixed", "conformance:mixed");
    let (_dir, _index, rootfs) = index_and_extract(&registry.image_ref("conformance:mixed"));
    assert_matches_umoci(layout.path(), "mixed", &rootfs, CompareOpts::conformance());
}

#[test]
fn conformance_image_from_oci_layout_equals_umoci() {
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("v1", &conformance_image(Compression::Gzip));
    let (_dir, index, rootfs) = index_and_extract(&format!("oci:{}:v1", layout.path().display()));
    assert_matches_umoci(layout.path(), "v1", &rootfs, CompareOpts::conformance());
    let listing = String::from_utf8(clip_ok(&["inspect", s(&index)])).unwrap();
    assert!(listing.contains("index-only"), "{listing}");
}

#[test]
fn multi_arch_index_resolves_the_requested_platform() {
    let registry = Registry::start();
    let image_for = |arch: &str| {
        let mut image = Image::from_tars(
            vec![LayerBuilder::new().dir("etc").file("etc/arch", format!("{arch}\n")).finish()],
            Compression::Gzip,
        );
        image.config.architecture = arch.into();
        image
    };
    let (amd, arm) = (image_for("amd64"), image_for("arm64"));
    let mut layout = OciLayoutBuilder::new();
    layout.add_index("multi", &[amd.clone(), arm.clone()]);
    layout.add_image("arm-only", &arm);
    registry.push(layout.path(), "multi", "multi:latest");

    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("arm.clip");
    let image = registry.image_ref("multi:latest");
    clip_ok(&["index", &image, "--platform", "linux/arm64", "-o", s(&index)]);
    assert_eq!(clip_ok(&["cat", s(&index), "/etc/arch"]), b"arm64\n");
    let rootfs = dir.path().join("rootfs");
    clip_ok(&["extract", s(&index), s(&rootfs)]);
    assert_matches_umoci(layout.path(), "arm-only", &rootfs, CompareOpts::default());

    let amd_index = dir.path().join("amd.clip");
    clip_ok(&["index", &image, "--platform", "linux/amd64", "-o", s(&amd_index)]);
    assert_eq!(clip_ok(&["cat", s(&amd_index), "/etc/arch"]), b"amd64\n");
    clip_fails(&["index", &image, "--platform", "linux/s390x", "-o", s(&index)], "s390x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_of_a_file_in_a_50_mib_gzip_layer_fetches_under_three_spans() {
    let registry = Registry::start();
    let layer = big_gzip_layer(50);
    let tar = layer.tar().to_vec();
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("big", &Image::new(vec![layer]));
    registry.push(layout.path(), "big", "big:v1");
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("big.clip");
    clip_ok(&["index", &registry.image_ref("big:v1"), "-o", s(&index)]);

    // A file about half way through the layer.
    let entries = tar_files(&tar);
    let (path, offset, size) = entries
        .iter()
        .find(|(_, off, size)| *off > tar.len() as u64 / 2 && *size > 1000)
        .cloned()
        .expect("a file in the middle");
    let expected = tar[offset as usize..(offset + size) as usize].to_vec();
    assert_eq!(clip_ok(&["cat", s(&index), &path]), expected, "clip cat {path}");

    let opened = clip_image::open_archive(&index, &Default::default()).await.unwrap();
    let archive = &opened.archive;
    let node = archive.node(archive.resolve(path.as_bytes()).unwrap().unwrap()).unwrap();
    let bytes = opened.store.read(node.data_ref().unwrap(), 0, size).await.unwrap();
    assert_eq!(bytes, expected);
    let stats = opened.store.stats();
    let source_stats = opened.source.as_ref().unwrap().stats();
    let layer_size = archive.meta().layers[0].size;
    let spans = archive.meta().layers[0].span_count as u64;
    assert!(spans >= 10, "a 50 MiB layer with 4 MiB spans has many spans, got {spans}");
    let avg_span = layer_size / spans;
    assert!(stats.spans_fetched <= 2, "fetched {} spans", stats.spans_fetched);
    assert!(
        source_stats.bytes < 3 * avg_span,
        "fetched {} compressed bytes, 3 spans are {}",
        source_stats.bytes,
        3 * avg_span
    );
    // The source also counts the image config it read when connecting.
    assert!(source_stats.bytes >= stats.bytes_fetched && source_stats.bytes - stats.bytes_fetched < 64 << 10);
}

// ---- bad input: each is a clear error, exit code 1, no panic ----

/// A layout tagged `t` holding one image of `tars`; also returns the path of the first layer's blob.
fn layout_with(tars: Vec<Vec<u8>>, compression: Compression) -> (OciLayoutBuilder, std::path::PathBuf) {
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_image("t", &Image::from_tars(tars, compression));
    let blob = layout.blob_path(&built.layers[0].digest);
    (layout, blob)
}

fn index_layout(layout: &OciLayoutBuilder, extra: &[&str]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.clip").display().to_string();
    let mut args = vec!["index".to_string(), format!("oci:{}:t", layout.path().display()), "-o".into(), out];
    args.extend(extra.iter().map(|s| s.to_string()));
    (dir, args)
}

fn fails(layout: &OciLayoutBuilder, extra: &[&str], needle: &str) -> String {
    let (dir, args) = index_layout(layout, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = clip_fails(&args, needle);
    assert!(!dir.path().join("x.clip").exists(), "no index is written on failure");
    err
}

#[test]
fn wrong_blob_digest_is_refused() {
    let (layout, blob) =
        layout_with(vec![LayerBuilder::new().file("a", vec![7u8; 100_000]).finish()], Compression::None);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 1; // inside file data: the tar still parses
    std::fs::write(&blob, bytes).unwrap();
    fails(&layout, &[], "digest mismatch");
}

#[test]
fn truncated_layer_is_refused() {
    let (layout, blob) =
        layout_with(vec![LayerBuilder::new().file("a", pseudo_random_bytes(1, 300_000)).finish()], Compression::Gzip);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    fails(&layout, &[], "layer 0");
}

#[rstest]
#[case::dotdot(Entry::file("../evil", "x"), "hostile")]
#[case::nested_dotdot(Entry::file("a/../../evil", "x"), "hostile")]
#[case::absolute(Entry::file("/etc/evil", "x"), "hostile")]
#[case::huge_pax(Entry::file("a", "x").pax("comment", vec![b'x'; 2 << 20]), "pax")]
fn hostile_tar_is_refused(#[case] entry: Entry, #[case] needle: &str) {
    let mut l = LayerBuilder::new();
    l.entry(entry);
    let (layout, _) = layout_with(vec![l.finish()], Compression::Gzip);
    fails(&layout, &[], needle);
}

#[test]
fn decompression_bomb_is_refused() {
    // 300 MiB of zeros gzip to ~300 KiB: a ratio near 1000.
    let mut l = LayerBuilder::new();
    l.file("zeros", vec![0u8; 300 << 20]);
    let tar = l.finish();
    let blob = gzip_cli(&tar, 9);
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::new(vec![Layer::from_blob(tar, blob, Compression::Gzip)]));
    fails(&layout, &[], "decompression bomb");
    let (_dir, args) = index_layout(&layout, &["--max-ratio", "0"]);
    clip_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn unknown_media_type_is_refused() {
    let mut layout = OciLayoutBuilder::new();
    let layer = Layer::new(LayerBuilder::new().file("a", "x").finish(), Compression::None);
    let media_type = "application/vnd.example.layer.v1.tar+lz4";
    let desc = layout.write_blob(media_type, layer.blob());
    let config = layout.write_blob(MEDIA_TYPE_CONFIG, &ImageConfig::default().to_json(std::slice::from_ref(&layer)));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config.digest.as_str(), "size": config.size},
        "layers": [{"mediaType": media_type, "digest": desc.digest.as_str(), "size": desc.size}],
    });
    let manifest = layout.write_blob(MEDIA_TYPE_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    layout.tag("t", &manifest);
    fails(&layout, &[], media_type);
}

#[test]
fn missing_tag_and_auth_failure_are_clear_errors() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.clip");
    clip_fails(&["index", &registry.image_ref("nothing:here"), "-o", s(&out)], "not found");

    let secured = Registry::start_with_auth("user", "s3cret-pass");
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::from_tars(vec![LayerBuilder::new().file("a", "x").finish()], Compression::Gzip));
    push_with_creds(layout.path(), "t", &secured.addr(), "private:t", secured.credentials());
    let err = clip_fails(&["index", &secured.image_ref("private:t"), "-o", s(&out)], "auth");
    assert!(!err.contains("s3cret-pass"), "the password must not be printed");
    clip_fails(&["index", "127.0.0.1:1/nothing:here", "-o", s(&out)], "127.0.0.1:1");
}
