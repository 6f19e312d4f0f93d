//! End to end on a realistic image: Debian bookworm with python3 (built with mmdebstrap by
//! `dev/debian-image`, three gzip layers, ~220 MB uncompressed), served by a real registry behind a
//! counting proxy. Processes run from the mount: chroot, and runc over an overlay.

mod common;

use std::process::Command;

use clip_testkit::*;
use common::{clip_ok, debian_layout, s, MountProc};

struct Debian {
    _registry: Registry,
    proxy: Proxy,
    dir: tempfile::TempDir,
}

impl Debian {
    fn new() -> Debian {
        let layout = debian_layout();
        let registry = Registry::start();
        registry.push(&layout, "bookworm", "debian:bookworm");
        let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
        let dir = tempfile::tempdir().unwrap();
        clip_ok(&["index", &proxy.image_ref("debian:bookworm"), "-o", s(&dir.path().join("debian.clip"))]);
        Debian { _registry: registry, proxy, dir }
    }

    /// Mounts the index at `DIR/name` with `extra` flags.
    fn mount(&self, name: &str, extra: &[&str]) -> MountProc {
        let cache = self.dir.path().join("cache");
        let index = self.dir.path().join("debian.clip");
        let mut args = vec!["--cache-dir", s(&cache)];
        args.extend_from_slice(extra);
        MountProc::start(&index, &self.dir.path().join(name), &args)
    }
}

#[test]
fn debian_image_runs_from_the_mount_lazily() {
    let deb = Debian::new();
    let index = clip_format::Archive::open(&deb.dir.path().join("debian.clip")).unwrap();
    let max_span: u64 = (0..index.span_count())
        .map(|i| {
            let s = index.span(clip_format::SpanId::from_index(i)).unwrap();
            let next = index.span(clip_format::SpanId::from_index(i + 1)).map(|n| n.in_offset).unwrap_or(s.in_offset);
            next.saturating_sub(s.in_offset)
        })
        .max()
        .unwrap();
    let image_size: u64 = index.meta().layers.iter().map(|l| l.size).sum();
    assert!(image_size > 50 << 20, "the Debian image is realistic ({image_size} compressed bytes)");
    // Issue 2: the whole index file (checkpoint windows included) stays under 0.5 % of the image.
    let index_size = std::fs::metadata(deb.dir.path().join("debian.clip")).unwrap().len();
    assert!(index_size * 200 < image_size, "index is {index_size} bytes for a {image_size}-byte image (> 0.5 %)");

    // Without the startup set (python3 and its libraries, fetched at once as a mount starts: see
    // tests/startup.rs), so that what one read costs is all the registry sees.
    let m = deb.mount("mnt", &["--no-startup-set"]);
    deb.proxy.reset_stats();
    // Laziness: one small file from a cold cache costs at most two spans of compressed bytes.
    let motd = std::fs::read(m.dir.join("etc/debian_version")).unwrap();
    assert!(!motd.is_empty() && motd.len() < 4096);
    let stats = deb.proxy.stats();
    assert!(stats.blob_requests <= 2, "{} blob requests for one small file", stats.blob_requests);
    assert!(stats.blob_bytes <= 2 * max_span + (64 << 10), "{} bytes for one small file", stats.blob_bytes);

    // A process runs from the mount.
    let out = Command::new("chroot")
        .arg(&m.dir)
        .args([
            "/bin/sh",
            "-c",
            "grep PRETTY_NAME /etc/os-release && python3 -c 'import json, sqlite3; print(json.dumps([1]))'",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "chroot failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Debian GNU/Linux 12") && stdout.contains("[1]"), "{stdout}");
    let fetched = deb.proxy.stats().blob_bytes;
    assert!(fetched < image_size, "python3 start read {fetched} of {image_size} bytes: not lazy");

    // runc with the mount under an overlay as rootfs; writes go to the upper dir, not the image.
    let bundle = deb.dir.path().join("bundle");
    let (upper, work, rootfs) = (bundle.join("upper"), bundle.join("work"), bundle.join("rootfs"));
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", m.dir.display(), upper.display(), work.display());
    let st = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&rootfs).status().unwrap();
    assert!(st.success(), "overlay mount failed");
    let st = Command::new("runc").arg("spec").current_dir(&bundle).status().unwrap();
    assert!(st.success());
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "cat /etc/debian_version && echo changed > /etc/motd && python3 -c 'print(6*7)'"
    ]);
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = false.into();
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let id = format!("clip-test-{}", std::process::id());
    let out = Command::new("runc").args(["run", "--bundle"]).arg(&bundle).arg(&id).output().unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &id]).status();
    let _ = Command::new("umount").arg(&rootfs).status();
    assert!(out.status.success(), "runc failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("42") && stdout.contains(std::str::from_utf8(&motd).unwrap().trim()), "{stdout}");
    assert_eq!(std::fs::read_to_string(upper.join("etc/motd")).unwrap(), "changed\n");
    assert_ne!(std::fs::read_to_string(m.dir.join("etc/motd")).unwrap(), "changed\n", "the image changed");
    m.stop();
}
