//! End to end: prefetch profiles. A mount with `--record-profile` writes the spans read in first-touch
//! order; a cold mount with `--profile` prefetches them so the same reads fetch nothing new.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use clip_format::Archive;
use clip_testkit::*;
use common::{clip_ok, metric, s, tar_files, MountProc};

/// The spans of layer 0 holding `[off, off + size)` of the layer's tar, in order.
fn spans_of(archive: &Archive, off: u64, size: u64) -> Vec<(u32, usize)> {
    let first = archive.find_span(0, off).unwrap();
    let last = archive.find_span(0, off + size.max(1) - 1).unwrap();
    (first..=last).map(|i| (0, i)).collect()
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
    assert_eq!(json["manifest_digest"].as_str(), archive.meta().manifest_digest.as_deref());

    // A cold cache with the profile: the spans load in the background; the same reads then fetch nothing.
    let addr = format!("127.0.0.1:{}", find_free_port());
    let cache2 = dir.path().join("cache2");
    let m = MountProc::start(
        &index,
        &dir.path().join("replay"),
        &["--cache-dir", s(&cache2), "--profile", s(&profile), "--metrics", &addr],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&addr, "clip_prefetched_spans_total") < expected.len() as f64 {
        assert!(Instant::now() < deadline, "the profile's {} spans were not prefetched within 60 s", expected.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched = metric(&addr, "clip_spans_fetched_total");
    assert!(fetched >= expected.len() as f64, "prefetch fetched {fetched} spans");
    for (path, off, size) in &picked {
        assert!(std::fs::read(m.dir.join(path)).unwrap() == tar[*off as usize..(*off + *size) as usize], "{path}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reads covered by the profile fetched spans");
    let log = m.stop();
    assert!(log.contains("prefetching the spans of the profile"), "{log}");
}
