//! End to end: prefetch profiles. A mount with `--record-profile` writes the spans read in first-touch
//! order; a cold mount with `--profile` prefetches them so the same reads fetch nothing new.

mod common;

use std::path::Path;
use std::time::Duration;

use clip_format::Archive;
use clip_testkit::*;
use common::{clip_ok, metric, s, tar_files, text, MountProc};

/// The spans of layer 0 holding `[off, off + size)` of the layer's tar, in order, as a profile's JSON
/// names them: `(layer, span)`.
fn spans_of(archive: &Archive, off: u64, size: u64) -> Vec<(u32, usize)> {
    let layer = clip_format::LayerIndex(0);
    let first = archive.find_span(layer, off).unwrap();
    let last = archive.find_span(layer, off + size.max(1) - 1).unwrap();
    clip_format::SpanIds::through(first, last).iter().map(|i| (0, i.index())).collect()
}

fn read_profile(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn recorded_profile_lists_first_reads_and_a_cold_mount_prefetches_them() {
    let layer = big_gzip_layer(12);
    let tar = layer.tar().to_vec();
    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &Image::new(vec![layer]));
    registry.push(layout.path(), "t", "img:t");
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("img.clip");
    clip_ok(&["index", &registry.image_ref("img:t"), "-o", s(&index)]);
    let archive = Archive::open(&index).unwrap();

    // Read two files, the later one in the layer first: the profile must keep that order.
    let files = tar_files(&tar);
    let picked: Vec<_> = files.iter().filter(|f| f.2 > 0).rev().step_by(3).take(2).cloned().collect();
    assert_eq!(picked.len(), 2, "the test layer has too few files");
    let profile = dir.path().join("profile.json");
    let cache1 = dir.path().join("cache1");
    let m = MountProc::start(
        &index,
        &dir.path().join("rec"),
        &["--cache-dir", s(&cache1), "--record-profile", s(&profile)],
    );
    let mut expected = Vec::new();
    for (path, off, size) in &picked {
        let bytes = std::fs::read(m.dir.join(path)).unwrap();
        assert!(bytes == tar[*off as usize..(*off + *size) as usize], "{path}");
        for span in spans_of(&archive, *off, *size) {
            if !expected.contains(&span) {
                expected.push(span);
            }
        }
    }
    let log = m.stop();
    assert!(log.contains("profile recorded"), "{log}");
    let json = read_profile(&profile);
    let recorded: Vec<(u32, usize)> = serde_json::from_value(json["spans"].clone()).unwrap();
    assert_eq!(recorded, expected, "{json}");
    let indexed = archive.meta().manifest_digest.map(|d| d.to_string());
    assert_eq!(json["manifest_digest"].as_str(), indexed.as_deref());

    // A cold cache with the profile: the spans load in the background; the same reads then fetch nothing.
    let addr = format!("127.0.0.1:{}", find_free_port());
    let cache2 = dir.path().join("cache2");
    let m = MountProc::start(
        &index,
        &dir.path().join("replay"),
        &["--cache-dir", s(&cache2), "--profile", s(&profile), "--metrics", &addr],
    );
    let what = format!("the profile's {} spans were not prefetched", expected.len());
    common::wait_within(Duration::from_secs(60), &what, || {
        metric(&addr, "clip_prefetched_spans_total") >= expected.len() as f64
    });
    let fetched = metric(&addr, "clip_spans_fetched_total");
    assert!(fetched >= expected.len() as f64, "prefetch fetched {fetched} spans");
    for (path, off, size) in &picked {
        assert!(std::fs::read(m.dir.join(path)).unwrap() == tar[*off as usize..(*off + *size) as usize], "{path}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reads covered by the profile fetched spans");
    let log = m.stop();
    assert!(log.contains("prefetching the spans of the profile"), "{log}");
}

/// `clip ARGS` on a clean node (see [`common::clip_node`]); returns (success, stdout, stderr).
fn clip_node(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = common::clip_node(args, env);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn pushed_profile_is_found_and_prefetched_by_a_clean_node() {
    let registry = Registry::start();
    let mut layer = LayerBuilder::new();
    layer.dir("etc").file("etc/greeting", "hello from the image\n").file("etc/other", "other\n");
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("v1", &Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]));
    registry.push(layout.path(), "v1", "app:v1");
    let image = registry.image_ref("app:v1");
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("app.clip");
    clip_ok(&["index", &image, "-o", s(&index)]);

    let profile = dir.path().join("profile.json");
    let cache = dir.path().join("cache0");
    let m =
        MountProc::start(&index, &dir.path().join("rec"), &["--cache-dir", s(&cache), "--record-profile", s(&profile)]);
    assert_eq!(std::fs::read_to_string(m.dir.join("etc/greeting")).unwrap(), "hello from the image\n");
    m.stop();
    let recorded = read_profile(&profile);
    assert!(!recorded["spans"].as_array().unwrap().is_empty(), "{recorded}");

    let (ok, _, err) = clip_node(&["profile", "push", &image, s(&profile)], &[]);
    assert!(ok, "clip profile push failed:\n{err}");

    let state = dir.path().join("node/state");
    let env = common::node_env(&dir.path().join("node"));
    let (ok, out, err) = clip_node(&["pull", &image], &env);
    assert!(ok, "clip pull failed:\n{err}");
    assert!(err.contains("prefetch profile from registry"), "{err}");
    let rootfs = std::path::PathBuf::from(out.trim());
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/greeting")).unwrap(), "hello from the image\n");
    let saved = std::fs::read_dir(state.join("profiles")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(read_profile(&saved), recorded);
    let mount_log = std::fs::read_dir(state.join("mounts")).unwrap().next().unwrap().unwrap().path().join("mount.log");
    assert!(std::fs::read_to_string(&mount_log).unwrap().contains("prefetching the spans of the profile"));
    let (ok, _, err) = clip_node(&["gc"], &env);
    assert!(ok, "clip gc: {err}");
}

#[test]
fn clip_run_records_a_profile_and_a_clean_node_runs_with_the_pushed_one() {
    let registry = Registry::start();
    registry.push(&common::debian_layout(), "bookworm", "debian:test");
    let image = registry.image_ref("debian:test");
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| common::node_env(&dir.path().join(name));
    let profile = dir.path().join("debian.json");
    let (ok, out, err) =
        clip_node(&["run", "--record-profile", s(&profile), &image, "--", "cat", "/etc/os-release"], &node("first"));
    assert!(ok, "clip run failed:\n{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    // The mount ended with the run (last user out) and wrote the profile.
    let recorded = read_profile(&profile);
    assert!(recorded["spans"].as_array().is_some_and(|s| !s.is_empty()), "{recorded}");
    assert!(recorded["manifest_digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{recorded}");

    let (ok, _, err) = clip_node(&["profile", "push", &image, s(&profile)], &[]);
    assert!(ok, "clip profile push failed:\n{err}");
    let (ok, out, err) = clip_node(&["run", &image, "--", "cat", "/etc/os-release"], &node("second"));
    assert!(ok, "clip run failed:\n{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    assert!(err.contains("prefetch profile from registry"), "{err}");
}
