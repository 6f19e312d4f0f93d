//! Against a real registry: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1. These
//! tests fail, not skip, when the registry cannot start.

mod common;

use std::process::Command;

use clip_source::{
    connect, open, BlobSource, Compression, Descriptor, ImageRef, Platform, SourceError, SourceOptions, SourceStats,
};
use common::{docker_config_with, free_port, index, pattern, tagged, write_layout, Blob, TestImage, TestRegistry};
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;

fn opts(platform: &str) -> SourceOptions {
    SourceOptions {
        platform: platform.parse().unwrap(),
        // Never pick up the developer's own credentials.
        docker_config: Some(empty_docker_config()),
        ..SourceOptions::default()
    }
}

fn empty_docker_config() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-source-empty-docker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    dir
}

fn reference(registry: &TestRegistry, rest: &str) -> ImageRef {
    format!("{}/{rest}", registry.addr).parse().unwrap()
}

async fn read_all(source: &dyn BlobSource, desc: &Descriptor) -> Vec<u8> {
    let mut stream = source.open_blob(desc).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn resolves_and_reads_lazily() {
    let registry = TestRegistry::start();
    let image = TestImage::oci("amd64", vec![pattern(3 << 20, 7), pattern(1000, 8)]);
    registry.push_image(&RegistryAuth::Anonymous, "team/app", Some("v1"), &image).await;

    let r = reference(&registry, "team/app:v1");
    let (resolved, source) = open(&r, &opts("linux/amd64")).await.unwrap();
    assert_eq!(resolved.reference, r);
    assert_eq!(resolved.manifest_digest, image.manifest.digest);
    assert_eq!(resolved.manifest_bytes, image.manifest.data);
    assert_eq!(resolved.platform, Platform::new("linux", "amd64", None));
    assert_eq!(resolved.layers, image.layers.iter().map(Blob::descriptor).collect::<Vec<_>>());
    assert_eq!(resolved.layers[0].compression().unwrap(), Compression::None);
    assert_eq!(resolved.config.runtime.env[1], "ARCH=amd64");
    assert_eq!(resolved.config.diff_ids.len(), 2);
    let described = source.describe();
    assert!(described.contains(&registry.addr) && described.contains("team/app"), "{described}");

    // Resolution read the config blob only.
    let config_size = image.config.data.len() as u64;
    assert_eq!(source.stats(), SourceStats { requests: 1, bytes: config_size });

    // A range of the 3 MiB layer costs exactly its length.
    let big = &resolved.layers[0];
    let range = source.read_range(big, 2_000_000..2_000_100).await.unwrap();
    assert_eq!(&range[..], &image.layers[0].data[2_000_000..2_000_100]);
    assert_eq!(source.stats(), SourceStats { requests: 2, bytes: config_size + 100 });
    let tail = source.read_range(big, (3 << 20) - 10..3 << 20).await.unwrap();
    assert_eq!(&tail[..], &image.layers[0].data[(3 << 20) - 10..]);
    let err = source.read_range(big, 0..(3 << 20) + 1).await.unwrap_err();
    assert!(matches!(err, SourceError::InvalidRange { .. }), "{err}");
    assert_eq!(source.stats().requests, 3);

    // The whole blob streams in several chunks.
    assert_eq!(read_all(source.as_ref(), big).await, image.layers[0].data);
    assert_eq!(source.stats().bytes, config_size + 110 + (3 << 20));

    // A descriptor with a wrong size is caught while streaming.
    let mut lying = resolved.layers[1].clone();
    lying.size = 999;
    let mut stream = source.open_blob(&lying).await.unwrap();
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        if let Err(e) = chunk {
            failed = Some(e);
        }
    }
    assert!(failed.unwrap().to_string().contains("more than the 999 bytes"));

    // A connection without resolving (as a mount would use) reads the same bytes.
    let blobs = connect(&r, &opts("linux/amd64")).await.unwrap();
    assert_eq!(&blobs.read_range(&resolved.layers[1], 10..20).await.unwrap()[..], &image.layers[1].data[10..20]);
    assert_eq!(blobs.stats(), SourceStats { requests: 1, bytes: 10 });

    // Missing blob.
    let missing = Descriptor::new(&big.media_type, clip_source::Digest::of(b"missing"), 10);
    let err = source.read_range(&missing, 0..5).await.unwrap_err();
    assert!(matches!(err, SourceError::BlobNotFound { .. }), "{err}");
}

#[tokio::test]
async fn manifest_list_with_two_platforms_and_digest_references() {
    let registry = TestRegistry::start();
    let amd = TestImage::docker("amd64", vec![pattern(500, 1)]);
    let arm = TestImage::docker("arm64", vec![pattern(600, 2), pattern(700, 3)]);
    let anon = RegistryAuth::Anonymous;
    registry.push_image(&anon, "multi", None, &amd).await;
    registry.push_image(&anon, "multi", None, &arm).await;
    let list = index(&[&amd, &arm], true);
    registry.push_manifest(&anon, "multi", Some("1.0"), &list).await;

    let r = reference(&registry, "multi:1.0");
    let (img, _) = open(&r, &opts("linux/arm64")).await.unwrap();
    assert_eq!(img.manifest_digest, arm.manifest.digest);
    assert_eq!(img.platform.architecture, "arm64");
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0].compression().unwrap(), Compression::Gzip);
    assert_eq!(img.config_descriptor.media_type, clip_source::media_types::DOCKER_CONFIG);
    let (img, _) = open(&r, &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, amd.manifest.digest);

    let err = open(&r, &opts("linux/ppc64le")).await.unwrap_err();
    assert!(matches!(err, SourceError::PlatformNotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("linux/ppc64le") && text.contains("available: linux/amd64, linux/arm64"), "{text}");

    // By digest: of the list, and of a platform manifest directly.
    let by_list = reference(&registry, &format!("multi@{}", list.digest));
    assert_eq!(open(&by_list, &opts("linux/arm64")).await.unwrap().0.manifest_digest, arm.manifest.digest);
    let by_manifest = reference(&registry, &format!("multi@{}", amd.manifest.digest));
    assert_eq!(open(&by_manifest, &opts("linux/amd64")).await.unwrap().0.manifest_digest, amd.manifest.digest);
    let unknown = clip_source::Digest::of(b"no such manifest");
    let err = open(&reference(&registry, &format!("multi@{unknown}")), &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::ManifestNotFound { .. }), "{err}");
    assert!(err.to_string().contains(&format!("manifest {unknown} does not exist")), "{err}");
}

#[tokio::test]
async fn missing_tags_and_repositories() {
    let registry = TestRegistry::start();
    let image = TestImage::oci("amd64", vec![pattern(10, 1)]);
    registry.push_image(&RegistryAuth::Anonymous, "app", Some("v1"), &image).await;

    let err = open(&reference(&registry, "app:v2"), &opts("linux/amd64")).await.unwrap_err();
    assert_eq!(err.to_string(), format!("image {0}/app:v2 not found in {0}: tag v2 does not exist", registry.addr));
    let err = open(&reference(&registry, "nothing/here"), &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::TagNotFound { .. }), "{err}");
}

#[tokio::test]
async fn connection_refused_names_the_registry_and_hints() {
    let addr = format!("127.0.0.1:{}", free_port());
    let r: ImageRef = format!("{addr}/app:v1").parse().unwrap();
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::Connect { .. }), "{err}");
    let text = err.to_string();
    // Plain HTTP is already what clip uses for 127.0.0.1: the hint is about the registry not running.
    assert!(text.ends_with(&format!("(is the registry running at {addr}?)")), "{text}");
    assert!(!text.contains("--plain-http"), "{text}");
}

#[tokio::test]
async fn basic_auth_from_docker_config() {
    let registry = TestRegistry::start_with_user("alice", "wonderland");
    let image = TestImage::oci("amd64", vec![pattern(1000, 4)]);
    let alice = RegistryAuth::Basic("alice".into(), "wonderland".into());
    registry.push_image(&alice, "private", Some("v1"), &image).await;
    let r = reference(&registry, "private:v1");

    let tmp = tempfile::tempdir().unwrap();
    let good = SourceOptions {
        docker_config: Some(docker_config_with(tmp.path(), &registry.addr, "alice", "wonderland")),
        ..opts("linux/amd64")
    };
    let (img, source) = open(&r, &good).await.unwrap();
    assert_eq!(img.manifest_digest, image.manifest.digest);
    assert_eq!(&source.read_range(&img.layers[0], 1..4).await.unwrap()[..], &image.layers[0].data[1..4]);

    // No credentials, and wrong ones: an auth error that names the registry, never the password.
    let err = open(&r, &opts("linux/amd64")).await.unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    let expected = format!("authentication to {0} failed (check `docker login {0}` or DOCKER_CONFIG)", registry.addr);
    assert!(err.to_string().starts_with(&expected), "{err}");

    let tmp2 = tempfile::tempdir().unwrap();
    let bad = SourceOptions {
        docker_config: Some(docker_config_with(
            tmp2.path(),
            &format!("http://{}", registry.addr),
            "alice",
            "queen-of-hearts",
        )),
        ..opts("linux/amd64")
    };
    let err = open(&r, &bad).await.unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("queen-of-hearts"), "{err}");
    assert!(!format!("{err:?}").contains("queen-of-hearts"), "{err:?}");
}

#[tokio::test]
async fn image_pushed_by_skopeo_from_a_layout() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::oci_gzip("amd64", vec![pattern(4096, 5), pattern(12345, 6)]);
    let mut blobs = image.blobs();
    blobs.push(&image.manifest);
    write_layout(tmp.path(), &blobs, vec![tagged(&image.manifest, Some("v3"))]);
    let policy = tmp.path().join("policy.json");
    std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();

    let out = Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .arg("--preserve-digests")
        .arg(format!("oci:{}:v3", tmp.path().display()))
        .arg(format!("docker://{}/skopeo/img:v3", registry.addr))
        .output()
        .expect("skopeo must be installed (apt-get install skopeo)");
    assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));

    let (img, source) = open(&reference(&registry, "skopeo/img:v3"), &opts("linux/amd64")).await.unwrap();
    assert_eq!(img.manifest_digest, image.manifest.digest);
    assert_eq!(img.layers, image.layers.iter().map(Blob::descriptor).collect::<Vec<_>>());
    assert_eq!(img.layers[0].compression().unwrap(), Compression::Gzip);
    assert_eq!(read_all(source.as_ref(), &img.layers[1]).await, image.layers[1].data);
}
