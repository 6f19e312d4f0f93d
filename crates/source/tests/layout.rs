//! Reading OCI image layouts written by hand in the test.

mod common;

use std::path::Path;

use clip_source::{open, BlobSource, Descriptor, ImageRef, Platform, SourceError, SourceOptions, SourceStats};
use common::{index, pattern, tagged, write_layout, Blob, TestImage};
use futures::StreamExt;

fn opts(platform: &str) -> SourceOptions {
    SourceOptions { platform: platform.parse().unwrap(), ..SourceOptions::default() }
}

fn layout_ref(dir: &Path, tag: Option<&str>) -> ImageRef {
    let mut s = format!("oci:{}", dir.display());
    if let Some(tag) = tag {
        s.push(':');
        s.push_str(tag);
    }
    s.parse().unwrap()
}

async fn read_all(source: &dyn BlobSource, desc: &Descriptor) -> Result<Vec<u8>, SourceError> {
    let mut stream = source.open_blob(desc).await?;
    let mut out = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
        chunks += 1;
    }
    assert!(chunks >= 1);
    Ok(out)
}

#[tokio::test]
async fn resolves_a_tagged_image_and_reads_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::oci("amd64", vec![pattern(700_000, 1), pattern(10, 2)]);
    let other = TestImage::oci("amd64", vec![pattern(5, 3)]);
    let mut blobs = image.blobs();
    blobs.extend(other.blobs());
    blobs.push(&image.manifest);
    blobs.push(&other.manifest);
    write_layout(tmp.path(), &blobs, vec![tagged(&other.manifest, Some("other")), tagged(&image.manifest, Some("v1"))]);

    // The platform of a single-manifest image is not enforced; it is reported from the config.
    let (resolved, source) = open(&layout_ref(tmp.path(), Some("v1")), &opts("linux/arm64")).await.unwrap();
    assert_eq!(resolved.manifest_digest, image.manifest.digest);
    assert_eq!(resolved.manifest_bytes, image.manifest.data);
    assert_eq!(resolved.platform, Platform::new("linux", "amd64", None));
    assert_eq!(resolved.layers, image.layers.iter().map(Blob::descriptor).collect::<Vec<_>>());
    assert_eq!(resolved.config_descriptor, image.config.descriptor());
    assert_eq!(resolved.config.runtime.cmd, ["/bin/sh"]);
    assert_eq!(resolved.config.runtime.working_dir.as_deref(), Some("/work"));
    assert_eq!(resolved.config.runtime.exposed_ports, ["8080/tcp"]);
    assert_eq!(resolved.config.runtime.labels["org.example.arch"], "amd64");
    assert_eq!(resolved.config.diff_ids, image.layers.iter().map(|l| l.digest).collect::<Vec<_>>());
    assert!(source.describe().contains(&tmp.path().display().to_string()));

    // Only the config was read so far.
    let config_size = image.config.data.len() as u64;
    assert_eq!(source.stats(), SourceStats { requests: 1, bytes: config_size });

    let big = &resolved.layers[0];
    assert_eq!(read_all(source.as_ref(), big).await.unwrap(), image.layers[0].data);
    assert_eq!(source.stats().bytes, config_size + 700_000);

    let range = source.read_range(big, 123_456..123_556).await.unwrap();
    assert_eq!(&range[..], &image.layers[0].data[123_456..123_556]);
    assert_eq!(source.stats(), SourceStats { requests: 3, bytes: config_size + 700_100 });

    // Edge ranges: empty (no request), the last byte, and out of bounds.
    assert!(source.read_range(big, 5..5).await.unwrap().is_empty());
    assert_eq!(source.stats().requests, 3);
    assert_eq!(source.read_range(big, 699_999..700_000).await.unwrap()[..], image.layers[0].data[699_999..]);
    let err = source.read_range(big, 699_999..700_001).await.unwrap_err();
    assert!(matches!(err, SourceError::InvalidRange { end: 700_001, size: 700_000, .. }), "{err}");
}

#[tokio::test]
async fn default_tag_is_latest_or_the_only_image() {
    let tmp = tempfile::tempdir().unwrap();
    let a = TestImage::oci("amd64", vec![pattern(3, 1)]);
    let b = TestImage::oci("amd64", vec![pattern(4, 2)]);
    let mut blobs = a.blobs();
    blobs.extend(b.blobs());
    blobs.push(&a.manifest);
    blobs.push(&b.manifest);

    // The only image, untagged.
    write_layout(tmp.path(), &blobs, vec![tagged(&a.manifest, None)]);
    let (img, _) = open(&layout_ref(tmp.path(), None), &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, a.manifest.digest);

    // Two images, one tagged latest.
    write_layout(tmp.path(), &blobs, vec![tagged(&a.manifest, Some("x")), tagged(&b.manifest, Some("latest"))]);
    let (img, _) = open(&layout_ref(tmp.path(), None), &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, b.manifest.digest);

    // Two images, no latest: ambiguous, and the error lists the tags.
    write_layout(tmp.path(), &blobs, vec![tagged(&a.manifest, Some("x")), tagged(&b.manifest, Some("y"))]);
    let err = open(&layout_ref(tmp.path(), None), &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::LayoutAmbiguous { count: 2, .. }), "{err}");
    assert!(err.to_string().contains("tags present: x, y"), "{err}");

    let err = open(&layout_ref(tmp.path(), Some("z")), &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::LayoutTagNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no image tagged \"z\"; tags present: x, y"), "{err}");
}

#[tokio::test]
async fn follows_nested_indexes_by_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let amd = TestImage::oci("amd64", vec![pattern(100, 1)]);
    let arm = TestImage::oci("arm64", vec![pattern(200, 2), pattern(300, 3)]);
    let inner = index(&[&amd, &arm], false);
    let outer = Blob::new(
        clip_source::media_types::OCI_INDEX,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [inner.descriptor_json()],
        }))
        .unwrap(),
    );
    let mut blobs = amd.blobs();
    blobs.extend(arm.blobs());
    blobs.extend([&amd.manifest, &arm.manifest, &inner, &outer]);
    write_layout(tmp.path(), &blobs, vec![tagged(&outer, Some("multi"))]);
    let r = layout_ref(tmp.path(), Some("multi"));

    let (img, _) = open(&r, &opts("linux/arm64")).await.unwrap();
    assert_eq!(img.manifest_digest, arm.manifest.digest);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.platform.architecture, "arm64");
    let (img, _) = open(&r, &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, amd.manifest.digest);

    let err = open(&r, &opts("linux/riscv64")).await.unwrap_err();
    assert!(matches!(err, SourceError::PlatformNotFound { .. }), "{err}");
    assert!(err.to_string().contains("available: linux/amd64, linux/arm64"), "{err}");
}

#[tokio::test]
async fn several_entries_under_one_tag_are_chosen_by_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let amd = TestImage::oci("amd64", vec![pattern(100, 1)]);
    let arm = TestImage::oci("arm64", vec![pattern(200, 2)]);
    let mut blobs = amd.blobs();
    blobs.extend(arm.blobs());
    blobs.extend([&amd.manifest, &arm.manifest]);
    let entry = |img: &TestImage| {
        let mut e = img.index_entry();
        e["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
        e
    };
    write_layout(tmp.path(), &blobs, vec![entry(&amd), entry(&arm)]);
    let (img, _) = open(&layout_ref(tmp.path(), Some("t")), &opts("linux/arm64")).await.unwrap();
    assert_eq!(img.manifest_digest, arm.manifest.digest);
}

#[tokio::test]
async fn broken_layouts_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let r = layout_ref(tmp.path(), None);
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }) && err.to_string().contains("index.json"), "{err}");

    // Manifest blob missing.
    let img = TestImage::oci("amd64", vec![pattern(10, 1)]);
    write_layout(tmp.path(), &img.blobs(), vec![tagged(&img.manifest, None)]);
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::BlobNotFound { .. }), "{err}");

    // Manifest blob tampered with.
    let blob_path = tmp.path().join("blobs/sha256").join(img.manifest.digest.hex());
    std::fs::write(&blob_path, b"{}").unwrap();
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::DigestMismatch { .. }), "{err}");

    // Unknown layer media type: refused early, naming it.
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest.data).unwrap();
    manifest["layers"][0]["mediaType"] = "application/vnd.example.weird".into();
    let weird = Blob::new(clip_source::media_types::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    let mut blobs = img.blobs();
    blobs.push(&weird);
    write_layout(tmp.path(), &blobs, vec![tagged(&weird, None)]);
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::UnsupportedMediaType { what: "layer", .. }), "{err}");
    assert!(err.to_string().contains("application/vnd.example.weird"), "{err}");

    // Layer blob missing: resolution works (layers are not read), reading fails.
    write_layout(tmp.path(), &[&img.config, &img.manifest], vec![tagged(&img.manifest, None)]);
    let layer_path = tmp.path().join("blobs/sha256").join(img.layers[0].digest.hex());
    std::fs::remove_file(&layer_path).unwrap();
    let (resolved, source) = open(&r, &opts("linux/amd64")).await.unwrap();
    let err = source.read_range(&resolved.layers[0], 0..1).await.unwrap_err();
    assert!(matches!(err, SourceError::BlobNotFound { .. }), "{err}");
    assert!(matches!(source.open_blob(&resolved.layers[0]).await, Err(SourceError::BlobNotFound { .. })));

    // A blob file shorter than its descriptor: the stream ends with an error.
    std::fs::write(&layer_path, b"short").unwrap();
    let err = read_all(source.as_ref(), &resolved.layers[0]).await.unwrap_err();
    assert!(err.to_string().contains("ended after 5 of the 10 bytes"), "{err}");
    let err = source.read_range(&resolved.layers[0], 2..8).await.unwrap_err();
    assert!(matches!(err, SourceError::Transfer { .. }), "{err}");
}
