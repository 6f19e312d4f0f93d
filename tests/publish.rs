//! End to end: index distribution. `clip index --push` publishes an index as an OCI artifact referring to
//! the image manifest (Debian's docker-registry 2.8 has no referrers API: the referrers tag schema is used),
//! and `clip pull` on a clean node finds it there instead of building one; the same through the S3 index
//! store (moto), and `publish_index = true` publishing what a node builds. Small images made with
//! clip_testkit; real registry, S3 server and FUSE mounts.

mod common;

use std::path::PathBuf;

use clip_testkit::*;
use common::{app_image, check_app_tree, clip_node, clip_ok, pull_and_gc, s, text};

const BUCKET: &str = "clip-indexes";

/// A registry with a small two-layer image `app:v1`.
struct Fixture {
    registry: Registry,
    manifest_digest: String,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let registry = Registry::start();
        let image = app_image();
        let mut layout = OciLayoutBuilder::new();
        let built = layout.add_image("v1", &image);
        registry.push(layout.path(), "v1", "app:v1");
        Fixture {
            registry,
            manifest_digest: built.manifest.digest.as_str().to_owned(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn image(&self) -> String {
        self.registry.image_ref("app:v1")
    }

    /// A fresh node's state and cache directories under this fixture.
    fn node_env(&self, name: &str) -> Vec<(String, String)> {
        common::node_env(&self.dir.path().join(name))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The stored index of `digest` on a node.
fn stored_index(env: &[(String, String)], digest: &str) -> PathBuf {
    let state = PathBuf::from(&env[0].1);
    state.join("indexes").join(format!("{}.clip", digest.replace(':', "-")))
}

#[test]
fn index_pushed_to_the_registry_is_found_by_pull_on_a_clean_node() {
    let f = Fixture::new();
    let image = f.image();
    let index = f.path("app.clip");
    let out = clip_node(&["index", &image, "-o", s(&index), "--push"], &[]);
    assert!(out.status.success(), "clip index --push: {}", text(&out.stderr));
    let hex = f.manifest_digest.trim_start_matches("sha256:");
    assert!(text(&out.stderr).contains(&format!("referrers tag sha256-{hex}")), "{}", text(&out.stderr));

    // The referrers tag lists one artifact of our type; its manifest refers to the image and holds the index.
    let listing = |f: &Fixture| {
        let r = f
            .registry
            .get(&format!("/v2/app/manifests/sha256-{hex}"), &[("Accept", "application/vnd.oci.image.index.v1+json")]);
        assert_eq!(r.status, 200, "referrers tag: {}", text(&r.body));
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    let tagged = listing(&f);
    let entries = tagged["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{tagged}");
    assert_eq!(entries[0]["artifactType"], "application/vnd.clip.index.v2");
    let artifact = entries[0]["digest"].as_str().unwrap().to_owned();
    let r = f
        .registry
        .get(&format!("/v2/app/manifests/{artifact}"), &[("Accept", "application/vnd.oci.image.manifest.v1+json")]);
    let manifest: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(manifest["artifactType"], "application/vnd.clip.index.v2");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    assert_eq!(manifest["subject"]["digest"], f.manifest_digest.as_str());
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.clip.index.v2.clip");
    let index_bytes = std::fs::read(&index).unwrap();
    assert_eq!(manifest["layers"][0]["size"], index_bytes.len());
    // Then the layer parts, one layer each, titled by part key.
    let inspect: serde_json::Value = serde_json::from_slice(&clip_ok(&["inspect", "--json", s(&index)])).unwrap();
    let mut keys: Vec<String> =
        inspect["parts"].as_array().unwrap().iter().map(|p| format!("{}.part", p["key"].as_str().unwrap())).collect();
    keys.dedup();
    let parts = &manifest["layers"].as_array().unwrap()[1..];
    assert!(parts.iter().all(|p| p["mediaType"] == "application/vnd.clip.part.v1"), "{manifest}");
    let titles: Vec<&str> =
        parts.iter().map(|p| p["annotations"]["org.opencontainers.image.title"].as_str().unwrap()).collect();
    assert_eq!(titles, keys, "one part a layer, in layer order");

    // Pushing again is idempotent: still one entry in the referrers tag.
    let again = clip_node(&["index", &image, "-o", s(&index), "--push"], &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(listing(&f)["manifests"].as_array().unwrap().len(), 1);

    // A clean node takes the published index instead of building one.
    let env = f.node_env("node");
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("index from registry"), "{stderr}");
    assert!(!stderr.contains("building index"), "no index is built: {stderr}");
    assert!(stderr.contains("(registry)"), "pull reports the index source: {stderr}");
    assert_eq!(std::fs::read(stored_index(&env, &f.manifest_digest)).unwrap(), index_bytes);

    // The next pull on that node finds it locally.
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("cache hit") && stderr.contains("(local)"), "{stderr}");
}

#[test]
fn index_in_the_s3_index_store_is_found_by_pull_on_a_clean_node() {
    let f = Fixture::new();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let image = f.image();
    let index = f.path("app.clip");
    clip_ok(&["index", &image, "-o", s(&index)]);
    let key = format!("s3://{BUCKET}/indexes/{}.clip", f.manifest_digest);
    common::clip_ok_env(&["push", s(&index), &key], &s3.env());

    let mut env = f.node_env("node");
    env.extend(s3.env());
    env.push(("CLIP_S3_INDEX_STORE".into(), format!("s3://{BUCKET}/indexes")));
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("index from S3"), "{stderr}");
    assert!(!stderr.contains("building index"), "no index is built: {stderr}");
    assert!(stderr.contains("(S3)"), "{stderr}");
    assert_eq!(std::fs::read(stored_index(&env, &f.manifest_digest)).unwrap(), std::fs::read(&index).unwrap());
}

#[test]
fn publish_index_makes_a_built_index_available_to_other_nodes() {
    let f = Fixture::new();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let image = f.image();
    let mut env = f.node_env("first");
    env.extend(s3.env());
    env.push(("CLIP_S3_INDEX_STORE".into(), format!("s3://{BUCKET}/indexes")));
    env.push(("CLIP_PUBLISH_INDEX".into(), "true".into()));
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("building index") && stderr.contains("(built)"), "{stderr}");
    assert!(stderr.contains("index published to the registry"), "{stderr}");
    assert!(stderr.contains("index published to the S3 index store"), "{stderr}");
    let built = std::fs::read(stored_index(&env, &f.manifest_digest)).unwrap();

    // A second node finds it in the registry (looked up before S3).
    let mut second = f.node_env("second");
    second.extend(s3.env());
    second.push(("CLIP_S3_INDEX_STORE".into(), format!("s3://{BUCKET}/indexes")));
    let stderr = pull_and_gc(&image, &second, check_app_tree);
    assert!(stderr.contains("index from registry") && !stderr.contains("building index"), "{stderr}");
    assert_eq!(std::fs::read(stored_index(&second, &f.manifest_digest)).unwrap(), built);

    // And the S3 copy is the same index.
    let key = format!("s3://{BUCKET}/indexes/{}.clip", f.manifest_digest);
    let out = clip_node(&["inspect", &key, "--json"], &s3.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&f.manifest_digest), "{}", text(&out.stdout));
}

/// An image whose second layer has a media type clip's v2 path refuses; its blob is `blob`.
fn odd_layer_image(blob: Vec<u8>, tar: Vec<u8>) -> (Registry, String) {
    let registry = Registry::start();
    let mut lower = LayerBuilder::new();
    lower.dir("etc").file("etc/greeting", "hello from the image\n").file("etc/gone", "x");
    let base = Layer::new(lower.finish(), Compression::Gzip);
    let mut layout = OciLayoutBuilder::new();
    let l0 = layout.write_blob(base.media_type(), base.blob());
    let l1 = layout.write_blob("application/vnd.example.layer.v1.tar+lz4", &blob);
    let config = ImageConfig::default().to_json(&[base, Layer::new(tar, Compression::None)]);
    let c = layout.write_blob("application/vnd.oci.image.config.v1+json", &config);
    let d =
        |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest.as_str(), "size": d.size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": d(&c),
        "layers": [d(&l0), d(&l1)],
    });
    let m = layout.write_blob("application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&manifest).unwrap());
    layout.tag("v1", &m);
    registry.push(layout.path(), "v1", "odd:v1");
    let image = registry.image_ref("odd:v1");
    (registry, image)
}

#[test]
fn an_image_v2_refuses_falls_back_to_v1_logs_why_and_counts_it() {
    let mut upper = LayerBuilder::new();
    upper.file("etc/upper", "second layer\n").whiteout("etc/gone");
    let tar = upper.finish();
    // A gzip blob under a media type clip cannot index: v1 decodes it by its magic bytes.
    let (_registry, image) = odd_layer_image(compress(&tar, Compression::Gzip), tar);
    let dir = tempfile::tempdir().unwrap();
    let env = common::node_env(dir.path());
    let stderr = pull_and_gc(&image, &env, check_app_tree);
    assert!(stderr.contains("falling back to v1"), "{stderr}");
    assert!(stderr.contains("application/vnd.example.layer.v1.tar+lz4"), "the reason names the media type: {stderr}");
    assert!(stderr.contains("fell back to clip v1 (1 fallback(s)"), "counted and printed: {stderr}");
    assert_eq!(stderr.matches("falling back to v1").count(), 1, "warned once: {stderr}");
    // The node's image metrics count it by reason, with no index behind it.
    let prom = dir.path().join("state/metrics/clip-images.prom");
    assert_eq!(common::textfile_metric(&prom, "clip_image_fallbacks_total{reason=\"unindexable\"}"), 1.0);
    assert_eq!(common::textfile_metric(&prom, "clip_image_index_source_total{source=\"none\"}"), 1.0);
    assert_eq!(common::textfile_metric(&prom, "clip_image_ready_seconds_count"), 1.0);
}

#[test]
fn a_layer_nothing_can_decompress_fails_with_its_media_type() {
    let mut upper = LayerBuilder::new();
    upper.file("etc/upper", "second layer\n");
    let tar = upper.finish();
    let mut lz4ish = vec![0x04, 0x22, 0x4d, 0x18];
    lz4ish.extend_from_slice(&tar);
    let (_registry, image) = odd_layer_image(lz4ish, tar);
    let dir = tempfile::tempdir().unwrap();
    let env = common::node_env(dir.path());
    let out = clip_node(&["pull", &image], &env);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("falling back to v1"), "{stderr}");
    assert!(stderr.contains("error:") && stderr.contains("application/vnd.example.layer.v1.tar+lz4"), "{stderr}");
    assert!(stderr.contains("cannot decompress") && !stderr.contains("panicked"), "{stderr}");
}
