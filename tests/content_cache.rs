//! End to end: the shared content cache tier (`clip mount --content-cache s3://…`) between two "nodes" (two
//! cache directories) over a real registry behind a counting proxy and moto behind another: node A publishes
//! the spans it fetched, node B reads them from S3 with zero registry blob bytes; a tier that is down or
//! serves corrupt objects only sends reads to the registry.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clip_testkit::*;
use common::{clip_ok, metric, s, wait_within, MountProc};

const BUCKET: &str = "cache";
const TIER: &str = "s3://cache/fleet";

/// A registry (behind a counting proxy) holding an indexed image, and moto (behind a proxy) with the bucket.
struct Fleet {
    _registry: Registry,
    registry_proxy: Proxy,
    s3: S3Server,
    s3_proxy: Proxy,
    files: Vec<(String, Vec<u8>)>,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let registry = Registry::start();
        let mut l = LayerBuilder::new();
        l.dir("data");
        let files: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| (format!("data/f{i}"), pseudo_random_bytes(i as u64 * 31 + 5, 300_000 + i * 1000)))
            .collect();
        for (path, data) in &files {
            l.file(path.as_str(), data.clone());
        }
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("t", &Image::new(vec![Layer::new(l.finish(), Compression::Gzip)]));
        registry.push(layout.path(), "t", "img:t");
        let registry_proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("img.clip");
        clip_ok(&["index", &registry_proxy.image_ref("img:t"), "-o", s(&index), "--span-mib", "1"]);
        registry_proxy.reset_stats();
        let s3 = S3Server::start();
        s3.create_bucket(BUCKET);
        let s3_proxy = Proxy::start(&s3.addr(), ProxyConfig::default());
        Fleet { _registry: registry, registry_proxy, s3, s3_proxy, files, dir }
    }

    /// A node: `clip mount` of the index with its own cache directory `name-cache`, the tier, and metrics.
    fn node(&self, name: &str, metrics: &str) -> MountProc {
        let cache = self.dir.path().join(format!("{name}-cache"));
        let args = ["--cache-dir", s(&cache), "--content-cache", TIER, "--metrics", metrics];
        let env = self.s3.env_for(&self.s3_proxy.addr());
        MountProc::start_env(self.dir.path().join("img.clip").as_os_str(), &self.dir.path().join(name), &args, &env)
    }

    /// Reads every file through `mnt` and checks its bytes.
    fn read_all(&self, mnt: &Path) {
        for (path, want) in &self.files {
            let got = std::fs::read(mnt.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            assert!(got == *want, "{path}: wrong content");
        }
    }

    /// Keys of the span objects PUT into the bucket so far (answered 200).
    fn put_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .s3_proxy
            .stats()
            .log
            .iter()
            .filter(|r| r.method == "PUT" && r.status == 200 && r.path.contains("/fleet/spans/"))
            .map(|r| r.path.trim_start_matches(&format!("/{BUCKET}/")).split('?').next().unwrap().to_owned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Waits (up to 20 s) until the node published every span it fetched.
fn wait_published(metrics: &str) -> u64 {
    let mut puts = 0.0;
    wait_within(Duration::from_secs(20), "the node did not publish every span it fetched", || {
        let fetched = metric(metrics, "clip_spans_fetched_total");
        puts = metric(metrics, "clip_tier_puts_total");
        fetched > 0.0 && puts == fetched
    });
    puts as u64
}

/// Node A fills the tier; returns the span object keys.
fn fill_tier(fleet: &Fleet) -> Vec<String> {
    let metrics = common::free_addr();
    let a = fleet.node("a", &metrics);
    fleet.read_all(&a.dir);
    assert!(fleet.registry_proxy.stats().blob_bytes > 0, "node A read from the registry");
    let published = wait_published(&metrics);
    assert_eq!(metric(&metrics, "clip_tier_misses_total"), published as f64);
    a.stop();
    let keys = fleet.put_keys();
    assert_eq!(keys.len() as u64, published, "{keys:?}");
    for k in &keys {
        assert!(fleet.s3.get_object(BUCKET, k).is_some(), "{k} is not in the bucket");
    }
    keys
}

#[test]
fn a_second_node_reads_spans_from_the_tier_with_zero_registry_blob_bytes() {
    let fleet = Fleet::new();
    let keys = fill_tier(&fleet);

    fleet.registry_proxy.reset_stats();
    let metrics = common::free_addr();
    let b = fleet.node("b", &metrics);
    fleet.read_all(&b.dir);
    // Connecting to the image reads its manifest and config blob (a few hundred bytes); not one byte of a
    // layer blob (every layer read is a Range request) may come from the registry.
    let st = fleet.registry_proxy.stats();
    let layer_reads: Vec<_> = st.log.iter().filter(|r| r.path.contains("/blobs/") && r.range.is_some()).collect();
    assert!(layer_reads.is_empty(), "node B read layers from the registry: {layer_reads:?}");
    assert!(st.blob_requests <= 1 && st.blob_bytes < 4096, "node B fetched blobs: {:?}", st.log);
    assert_eq!(metric(&metrics, "clip_tier_hits_total"), keys.len() as f64);
    assert_eq!(metric(&metrics, "clip_spans_fetched_total"), 0.0);
    assert_eq!(metric(&metrics, "clip_tier_puts_total"), 0.0);
    b.stop();
}

#[test]
fn a_tier_that_is_down_degrades_to_the_registry_with_one_warning() {
    let mut fleet = Fleet::new();
    fill_tier(&fleet);
    fleet.s3.kill();

    fleet.registry_proxy.reset_stats();
    let metrics = common::free_addr();
    let c = fleet.node("c", &metrics);
    fleet.read_all(&c.dir); // no EIO
    assert!(fleet.registry_proxy.stats().blob_bytes > 0, "node C read from the registry");
    assert!(metric(&metrics, "clip_tier_errors_total") >= 1.0);
    assert_eq!(metric(&metrics, "clip_tier_hits_total"), 0.0);
    let log = c.stop();
    let warnings = log.matches("content cache tier unavailable").count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn corrupt_tier_objects_are_ignored_counted_and_read_from_the_registry() {
    let fleet = Fleet::new();
    let keys = fill_tier(&fleet);
    for (i, k) in keys.iter().enumerate() {
        // Half well-formed zstd of the wrong bytes, half not zstd at all.
        let bad = if i % 2 == 0 { compress(&[7u8; 1000], Compression::Zstd) } else { b"garbage".to_vec() };
        fleet.s3.put_object(BUCKET, k, &bad);
    }

    fleet.registry_proxy.reset_stats();
    let metrics = common::free_addr();
    let b = fleet.node("b", &metrics);
    fleet.read_all(&b.dir);
    assert!(fleet.registry_proxy.stats().blob_bytes > 0, "node B read from the registry");
    assert_eq!(metric(&metrics, "clip_tier_rejected_total"), keys.len() as f64);
    assert_eq!(metric(&metrics, "clip_tier_hits_total"), 0.0);
    b.stop();
}

/// `clip pull` with `CLIP_S3_CONTENT_CACHE`: the shared mounts it starts use the tier.
#[test]
fn clip_pull_mounts_use_the_configured_tier() {
    let fleet = Fleet::new();
    let state = fleet.dir.path().join("state");
    let clip = |cache: &str, args: &[&str]| {
        let mut cmd = common::node_command(args, &fleet.s3.env_for(&fleet.s3_proxy.addr()));
        cmd.env("CLIP_STATE_DIR", &state).env("CLIP_CACHE_DIR", fleet.dir.path().join(cache));
        let out = cmd.env("CLIP_S3_CONTENT_CACHE", TIER).output().unwrap();
        assert!(out.status.success(), "clip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let image = fleet.registry_proxy.image_ref("img:t");
    let rootfs = PathBuf::from(clip("cache-a", &["pull", &image]).trim());
    fleet.read_all(&rootfs);
    // Let the background puts finish before the mount goes away: every span node A fetched (one Range request
    // each, the range check of the layer aside; the spans are pseudo-random, so distinct) is published.
    let is_probe = |r: &&RequestRecord| r.range.as_deref() == Some("bytes=0-0");
    let fetched = || fleet.registry_proxy.stats().log.iter().filter(|r| r.range.is_some() && !is_probe(r)).count();
    wait_within(Duration::from_secs(20), "node A did not publish every span it fetched", || {
        let published = fleet.put_keys().len();
        published > 0 && published >= fetched()
    });
    clip("cache-a", &["gc"]);

    fleet.registry_proxy.reset_stats();
    let rootfs = PathBuf::from(clip("cache-b", &["pull", &image]).trim());
    fleet.read_all(&rootfs);
    // Before mounting, the v2 range check asks the layer for its first byte; nothing else is read from it.
    let log = fleet.registry_proxy.stats().log;
    let layer_reads = log.iter().filter(|r| r.range.is_some() && !is_probe(r)).count();
    assert_eq!(layer_reads, 0, "node B read layers from the registry");
    let probe_bytes: u64 = log.iter().filter(is_probe).map(|r| r.body_bytes).sum();
    assert!(probe_bytes <= 1, "the range check of the one layer read {probe_bytes} bytes");
    clip("cache-b", &["gc"]);
}
