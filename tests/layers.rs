//! End to end: layer views. `clip mount --layers` serves every layer of an index as its own directory; real
//! overlayfs over those directories (top layer first) must equal `umoci unpack` of the image, for every
//! conformance case (whiteouts, same-layer opaque dirs, hard links across layers, devices, xattrs) and each
//! compression. `clip ls --layer` / `clip extract --layer` show one layer's own tree: a whiteout as a character
//! device 0/0, an opaque directory with `trusted.overlay.opaque=y`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clip_testkit::*;
use common::{clip_fails, clip_ok, s, MountProc, Served};
use rstest::rstest;

/// The layer directories under a `--layers` mount, bottom first.
fn layer_dirs(mnt: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let (n, digest) = name.split_once('-').unwrap();
            assert!(digest.starts_with("sha256-") && digest.len() == 7 + 64, "{name}");
            (n.parse().unwrap(), e.path())
        })
        .collect();
    dirs.sort();
    assert!(dirs.iter().enumerate().all(|(i, (n, _))| i == *n), "{dirs:?}");
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// An overlay mount over `lower` (bottom first), read-only; unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &[PathBuf], at: &Path) -> Overlay {
        std::fs::create_dir_all(at).unwrap();
        let top_first: Vec<&str> = lower.iter().rev().map(|p| s(p)).collect();
        let opts = format!("ro,lowerdir={}", top_first.join(":"));
        let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts, s(at)]).output().unwrap();
        assert!(out.status.success(), "mount -t overlay: {}", String::from_utf8_lossy(&out.stderr));
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn overlay_over_the_layer_views_equals_umoci_unpack(#[case] compression: Compression) {
    let image = conformance_image(compression);
    let served = Served::new(&image);
    let parts = served.dir.path().join("parts");
    let cache = served.cache();
    let mnt = served.dir.path().join("layers");
    let m = MountProc::start(&served.index(), &mnt, &["--layers", "--parts", s(&parts), "--cache-dir", s(&cache)]);
    let dirs = layer_dirs(&mnt);
    assert_eq!(dirs.len(), image.layers.len());
    {
        let merged = Overlay::mount(&dirs, &served.dir.path().join("merged"));
        // Overlay reports its own link count for merged directories.
        let opts = CompareOpts { ignore_dir_nlink: true, ..CompareOpts::conformance() };
        assert_matches_umoci(served.layout.path(), "t", &merged.0, opts);
    }
    m.stop();
    // The parts were kept: a second view of the same index reads no layer again.
    served.proxy().reset_stats();
    let again = MountProc::start(&served.index(), &mnt, &["--layers", "--parts", s(&parts), "--no-cache"]);
    let views = layer_dirs(&again.dir);
    assert_eq!(views.len(), dirs.len());
    // Reading the files' contents must fetch ranges of the layers, never a whole layer.
    let read: u64 = views.iter().map(|v| read_every_file(v)).sum();
    again.stop();
    assert!(read > 0, "the conformance image has file contents to read");
    let stats = served.proxy().stats();
    let blobs = stats.requests_to("/blobs/");
    assert!(!blobs.is_empty(), "the contents read came from the registry");
    assert!(blobs.iter().all(|r| r.range.is_some()), "a whole layer was read again: {blobs:?}");
}

/// Reads every regular file under `dir` to its end; the bytes read.
fn read_every_file(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            total += read_every_file(&path);
        } else if meta.is_file() {
            total += std::fs::read(&path).unwrap().len() as u64;
        }
    }
    total
}

#[test]
fn one_layers_view_shows_whiteouts_and_opaque_dirs_as_overlayfs_takes_them() {
    // Layer 0: a/keep, a/gone, d/old; layer 1: a whiteout of a/gone, d made opaque with d/new.
    let l0 = LayerBuilder::new().dir("a").file("a/keep", "k").file("a/gone", "g").dir("d").file("d/old", "o").finish();
    let l1 = LayerBuilder::new().whiteout("a/gone").dir("d").opaque("d").file("d/new", "n").finish();
    let image = Image::from_tars(vec![l0, l1], Compression::Gzip);
    let served = Served::new(&image);
    let parts = served.dir.path().join("parts");
    let index = served.index();
    let ls = |layer: &str, path: &str| -> serde_json::Value {
        let out = clip_ok(&["ls", "--json", "--layer", layer, "--parts", s(&parts), s(&index), path]);
        serde_json::from_slice(&out).unwrap()
    };
    let top = ls("1", "/a");
    let gone = top.as_array().unwrap().iter().find(|e| e["name"] == "gone").expect("the whiteout is listed");
    assert_eq!(gone["type"], "char_device");
    assert_eq!(gone["rdev"], serde_json::json!([0, 0]));
    assert!(top.as_array().unwrap().iter().all(|e| e["name"] != "keep"), "layer 1 does not hold a/keep");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&ls("0", "/a")), ["gone", "keep"]);
    assert_eq!(names(&ls("1", "/d")), ["new"]);

    // Extracted, the view is what containerd's overlay snapshotter keeps for the layer.
    let out = served.dir.path().join("layer1");
    let digest = image.layers[1].digest().to_string();
    clip_ok(&["extract", "--layer", &digest, "--parts", s(&parts), s(&index), s(&out)]);
    let meta = std::fs::symlink_metadata(out.join("a/gone")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(meta.file_type().is_char_device() && meta.rdev() == 0, "{meta:?}");
    let tree = snapshot(&out);
    assert_eq!(tree.nodes[Path::new("d")].xattr("trusted.overlay.opaque"), Some(&b"y"[..]));
    assert_eq!(tree.nodes[Path::new("a")].xattr("trusted.overlay.opaque"), None);

    let err = clip_fails(&["ls", "--layer", "7", "--parts", s(&parts), s(&index)], "has no layer 7");
    assert!(err.contains("0 sha256:") && err.contains("1 sha256:"), "{err}");
}
