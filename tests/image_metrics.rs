//! End to end: the v2 → v1 fallbacks that happen at mount time and the image-level metrics of `clip run`,
//! on the realistic Debian image (see tests/debian.rs) in a real registry behind the testkit proxy, with
//! real FUSE mounts, overlayfs and runc.
//!
//! - A registry that answers Range requests with whole blobs (the proxy strips `Range`): the check before
//!   the mount sees `200` for a 1-byte Range GET, `clip run` falls back to v1, says why once at warn, and
//!   still prints the right output.
//! - A v2 mount that cannot come up (the index's registry is gone): `clip run` falls back to v1.
//! - `STATE_DIR/metrics/clip-images.prom` counts where each run's index came from (built, local,
//!   registry), the fallbacks by reason, and the time to ready, which matches what the run logged.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use clip_testkit::*;
use common::{debian_layout, text, textfile_metric};

/// A registry holding the Debian image as `debian:test`, a proxy in front of it, and a node's state and
/// cache directories.
struct Node {
    registry: Registry,
    proxy: Option<Proxy>,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let registry = Registry::start();
        registry.push(&debian_layout(), "bookworm", "debian:test");
        let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
        Node { registry, proxy: Some(proxy), dir: tempfile::tempdir().unwrap() }
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("proxy running")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn metrics(&self) -> PathBuf {
        self.state().join("metrics/clip-images.prom")
    }

    fn metric(&self, series: &str) -> f64 {
        textfile_metric(&self.metrics(), series)
    }

    /// `clip run IMAGE -- CMD...` with this node's directories.
    fn run(&self, image: &str, cmd: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut args = vec!["run", image, "--"];
        args.extend_from_slice(cmd);
        let mut env = common::node_env(self.dir.path());
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        common::clip_node(&args, &env)
    }

    /// Clip FUSE mounts under this node's state directory, per /proc/mounts.
    fn clip_mounts(&self) -> Vec<String> {
        common::fuse_mounts_under(&self.state())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = common::clip_node(&["gc"], &common::node_env(self.dir.path()));
        for m in self.clip_mounts() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Runs `cat /etc/debian_version` and checks it printed Debian 12; returns stderr.
#[track_caller]
fn run_debian_version(node: &Node, image: &str, extra_env: &[(&str, &str)]) -> String {
    let out = node.run(image, &["cat", "/etc/debian_version"], extra_env);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "clip run failed ({}):\n{stderr}", out.status);
    assert!(text(&out.stdout).starts_with("12."), "stdout: {}\nstderr: {stderr}", text(&out.stdout));
    stderr
}

/// The `ready_ms` of the run's "image ready" log line, in seconds.
#[track_caller]
fn logged_ready_secs(stderr: &str) -> f64 {
    let line = stderr.lines().find(|l| l.contains("image ready")).unwrap_or_else(|| panic!("no image ready: {stderr}"));
    let ms: f64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ready_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ready_ms in {line}"));
    ms / 1000.0
}

#[test]
fn metrics_count_index_sources_fallbacks_and_time_to_ready() {
    let node = Node::new();
    let image = node.proxy().image_ref("debian:test");
    let source = |s: &str| node.metric(&format!("clip_image_index_source_total{{source=\"{s}\"}}"));
    let fallbacks = |r: &str| node.metric(&format!("clip_image_fallbacks_total{{reason=\"{r}\"}}"));
    let ready_count = || node.metric("clip_image_ready_seconds_count");
    let last_ready = || node.metric("clip_image_last_ready_seconds");

    // 1. Built here (and published, for step 3).
    let stderr = run_debian_version(&node, &image, &[("CLIP_PUBLISH_INDEX", "true")]);
    assert!(stderr.contains("cache miss: building index"), "{stderr}");
    assert!(stderr.contains("index published to the registry"), "{stderr}");
    assert_eq!((source("built"), source("local"), ready_count()), (1.0, 0.0, 1.0));
    let built_ready = last_ready();
    assert!((built_ready - logged_ready_secs(&stderr)).abs() < 0.002, "{built_ready} vs {stderr}");
    assert!(built_ready > 0.0);

    // 2. Found in the local index store: faster to ready than building it.
    let stderr = run_debian_version(&node, &image, &[]);
    assert!(stderr.contains("cache hit: index in the local store"), "{stderr}");
    assert_eq!((source("built"), source("local"), ready_count()), (1.0, 1.0, 2.0));
    let local_ready = last_ready();
    assert!((local_ready - logged_ready_secs(&stderr)).abs() < 0.002, "{local_ready} vs {stderr}");
    assert!(local_ready < built_ready, "local {local_ready} s, built {built_ready} s");

    // 3. A clean index store: found in the registry.
    std::fs::remove_dir_all(node.state().join("indexes")).unwrap();
    let stderr = run_debian_version(&node, &image, &[]);
    assert!(stderr.contains("cache miss: index from registry"), "{stderr}");
    assert_eq!((source("registry"), source("local"), ready_count()), (1.0, 1.0, 3.0));

    // 4. The registry stops honouring Range: the check before the mount sees it, and the run falls back to
    //    v1 (whole blobs), warns once with the reason, and still prints the file.
    node.proxy().reset_stats();
    node.proxy().set_faults(vec![Fault::new(FaultKind::IgnoreRange).blobs_only()]);
    let stderr = run_debian_version(&node, &image, &[]);
    let warnings: Vec<&str> =
        stderr.lines().filter(|l| l.contains("WARN") && l.contains("falling back to v1")).collect();
    assert_eq!(warnings.len(), 1, "warned once: {stderr}");
    assert!(warnings[0].contains("refuses Range requests") && warnings[0].contains("range_refused"), "{stderr}");
    assert!(warnings[0].contains("(200, not 206)"), "{stderr}");
    assert!(stderr.contains("cache miss: v1 fallback pulls every layer"), "{stderr}");
    assert!(stderr.contains("version=1"), "the v1 archive is mounted: {stderr}");
    let probes: Vec<_> =
        node.proxy().stats().log.into_iter().filter(|r| r.range.as_deref() == Some("bytes=0-0")).collect();
    assert!(!probes.is_empty() && probes.iter().all(|r| r.status == 200), "{probes:?}");
    assert_eq!((source("local"), fallbacks("range_refused"), ready_count()), (2.0, 1.0, 4.0));
    assert_eq!((fallbacks("mount_failed"), fallbacks("unindexable"), source("none")), (0.0, 0.0, 0.0));
    assert_eq!(node.metric("clip_image_ready_seconds_bucket{le=\"+Inf\"}"), 4.0);
    assert!(node.clip_mounts().is_empty(), "the last run out unmounts: {:?}", node.clip_mounts());
}

#[test]
fn a_v2_mount_that_does_not_come_up_falls_back_to_v1() {
    let mut node = Node::new();
    // The index is built through the proxy, so its mounts read from there.
    let stderr = run_debian_version(&node, &node.proxy().image_ref("debian:test"), &[]);
    assert!(stderr.contains("cache miss: building index"), "{stderr}");
    node.proxy = None;

    // The same image straight from the registry: the index is found locally, but its registry is gone,
    // so the v2 mount exits before mounting; the run falls back to v1 from the registry it can reach.
    let stderr = run_debian_version(&node, &node.registry.image_ref("debian:test"), &[]);
    assert!(stderr.contains("cache hit: index in the local store"), "{stderr}");
    let warnings: Vec<&str> =
        stderr.lines().filter(|l| l.contains("WARN") && l.contains("falling back to v1")).collect();
    assert_eq!(warnings.len(), 1, "warned once: {stderr}");
    assert!(warnings[0].contains("the clip v2 mount failed") && warnings[0].contains("mount_failed"), "{stderr}");
    assert_eq!(node.metric("clip_image_fallbacks_total{reason=\"mount_failed\"}"), 1.0);
    assert_eq!(node.metric("clip_image_fallbacks_total{reason=\"range_refused\"}"), 0.0);
    assert_eq!(node.metric("clip_image_index_source_total{source=\"local\"}"), 1.0);
    assert_eq!(node.metric("clip_image_ready_seconds_count"), 2.0);
}
