//! End to end: layer part reuse. Two images share their lower layers (a 3-layer image and the same plus an
//! app layer), pushed to a real registry behind the counting proxy: indexing the second after the first
//! downloads only the app layer, and gives the same bytes as `--no-reuse`; a damaged part is refused and
//! its layer read again; `clip pull` on a second machine takes the parts the first one put in the S3 index
//! store (moto); `clip gc` removes a part no kept index uses; `clip inspect` shows each layer's part.

mod common;

use std::path::{Path, PathBuf};

use clip_testkit::*;
use common::{clip_node, pull_and_gc, s, text};
use rstest::rstest;

const BUCKET: &str = "fleet";

/// The base image (three layers) and the app image (the same plus one), in a registry behind a proxy.
struct Images {
    _registry: Registry,
    proxy: Proxy,
    /// The app image's layers; the base image is the first three.
    layers: Vec<Layer>,
    dir: tempfile::TempDir,
}

impl Images {
    fn new(compression: Compression) -> Images {
        let layer = |seed: u64, name: &str, files: usize| {
            let mut l = LayerBuilder::new();
            l.dir(name);
            for i in 0..files {
                let data = pseudo_random_bytes(seed * 100 + i as u64, 200_000 + i * 777);
                l.file(format!("{name}/f{i}").as_str(), data);
            }
            Layer::new(l.finish(), compression)
        };
        let layers = vec![layer(1, "usr", 6), layer(2, "lib", 4), layer(3, "etc", 3), layer(4, "app", 5)];
        let registry = Registry::start();
        let mut layout = OciLayoutBuilder::new();
        layout.add_image("base", &Image::new(layers[..3].to_vec()));
        layout.add_image("app", &Image::new(layers.clone()));
        registry.push(layout.path(), "base", "img:base");
        registry.push(layout.path(), "app", "img:app");
        let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
        Images { _registry: registry, proxy, layers, dir: tempfile::tempdir().unwrap() }
    }

    fn image(&self, tag: &str) -> String {
        self.proxy.image_ref(&format!("img:{tag}"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Body bytes sent for each layer blob since the last reset (the config blob is not counted).
    fn layer_bytes(&self) -> Vec<u64> {
        let log = self.proxy.stats().log;
        let sent = |l: &Layer| log.iter().filter(|r| r.path.ends_with(l.digest().as_str())).map(|r| r.body_bytes).sum();
        self.layers.iter().map(sent).collect()
    }

    /// `clip index IMAGE:tag -o NAME --parts PARTS EXTRA…`; returns stderr and the blob bytes (layers and
    /// config) sent meanwhile.
    fn index(&self, tag: &str, out: &str, parts: &Path, extra: &[&str]) -> (String, u64) {
        self.proxy.reset_stats();
        let (image, out) = (self.image(tag), self.path(out));
        let mut args = vec!["index", image.as_str(), "-o", s(&out), "--parts", s(parts)];
        args.extend_from_slice(extra);
        let out = common::clip_command().args(&args).env("CLIP_LOG", "warn").output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "clip {args:?}:\n{stderr}");
        (stderr, self.proxy.stats().blob_bytes)
    }

    /// The key of layer `i`'s part (default span size).
    fn key(&self, i: usize) -> String {
        clip_format::part_key(&self.layers[i].digest().as_str().parse().unwrap(), clip_indexer::DEFAULT_SPAN_SIZE)
    }
}

fn part_file(parts: &Path, key: &str) -> PathBuf {
    parts.join(format!("{key}.part"))
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
fn indexing_an_image_after_one_sharing_its_lower_layers_downloads_only_its_new_layer(#[case] compression: Compression) {
    let f = Images::new(compression);
    let parts = f.path("parts");
    let (stderr, _) = f.index("base", "base.clip", &parts, &[]);
    assert!(stderr.contains("0 of 3 layers reused, 3 read"), "{stderr}");
    for i in 0..3 {
        assert!(part_file(&parts, &f.key(i)).is_file(), "part of layer {i} kept");
    }

    let (stderr, bytes) = f.index("app", "app.clip", &parts, &[]);
    assert!(stderr.contains("3 of 4 layers reused (0, 1, 2), 1 read (3)"), "{stderr}");
    let app = f.layers[3].blob().len() as u64;
    assert!(bytes <= app + app / 100, "{bytes} blob bytes for a {app}-byte new layer");
    assert_eq!(f.layer_bytes()[..3], [0, 0, 0], "the shared layers are not downloaded");

    // The same bytes as an index that read every layer (into another part directory).
    let (stderr, bytes) = f.index("app", "full.clip", &f.path("other-parts"), &["--no-reuse"]);
    assert!(stderr.contains("0 of 4 layers reused, 4 read"), "{stderr}");
    assert!(bytes >= f.layers.iter().map(|l| l.blob().len() as u64).sum(), "{bytes}");
    assert!(std::fs::read(f.path("app.clip")).unwrap() == std::fs::read(f.path("full.clip")).unwrap());

    // `clip inspect` names each layer's part and whether it is kept here.
    let shown = text(&common::clip_ok(&["inspect", s(&f.path("app.clip")), "--parts", s(&parts)]));
    for i in 0..4 {
        assert!(shown.contains(&format!("part {} (kept in {})", f.key(i), parts.display())), "{shown}");
    }
    let empty = f.path("empty");
    let json = common::clip_ok(&["inspect", "--json", s(&f.path("app.clip")), "--parts", s(&empty)]);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let listed: Vec<_> = v["parts"].as_array().unwrap().iter().map(|p| (p["key"].clone(), p["kept"].clone())).collect();
    let want: Vec<_> = (0..4).map(|i| (serde_json::json!(f.key(i)), serde_json::json!(false))).collect();
    assert_eq!(listed, want);
}

#[test]
fn a_damaged_part_is_refused_with_a_warning_and_its_layer_read_again() {
    let f = Images::new(Compression::Gzip);
    let parts = f.path("parts");
    f.index("base", "base.clip", &parts, &[]);
    // Layer 0's part loses its tail; a byte in the middle of layer 1's flips.
    let truncated = part_file(&parts, &f.key(0));
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len / 2).unwrap();
    let flipped = part_file(&parts, &f.key(1));
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&flipped, bytes).unwrap();

    let (stderr, read) = f.index("base", "again.clip", &parts, &[]);
    assert!(stderr.contains("1 of 3 layers reused (2), 2 read (0, 1)"), "{stderr}");
    assert_eq!(stderr.matches("reading the layer instead").count(), 2, "a warning per damaged part:\n{stderr}");
    assert!(stderr.contains(s(&truncated)) && stderr.contains(s(&flipped)), "{stderr}");
    let sent = f.layer_bytes();
    assert!(sent[0] >= f.layers[0].blob().len() as u64 && sent[1] >= f.layers[1].blob().len() as u64, "{sent:?}");
    assert_eq!(sent[2], 0, "{sent:?} ({read} blob bytes)");
    assert!(std::fs::read(f.path("base.clip")).unwrap() == std::fs::read(f.path("again.clip")).unwrap());

    // The parts were kept again, whole: the next index reads nothing.
    let (stderr, _) = f.index("base", "third.clip", &parts, &[]);
    assert!(stderr.contains("3 of 3 layers reused") && !stderr.contains("WARN"), "{stderr}");
    assert_eq!(f.layer_bytes(), [0; 4]);
}

#[test]
fn pull_on_a_second_machine_reuses_the_parts_the_first_put_in_the_s3_index_store() {
    let f = Images::new(Compression::Gzip);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let machine = |name: &str| {
        let mut env = common::node_env(&f.path(name));
        env.extend(s3.env());
        env.push(("CLIP_S3_INDEX_STORE".into(), format!("s3://{BUCKET}/indexes")));
        env
    };
    let first = machine("first");
    let stderr = pull_and_gc(&f.image("base"), &first, |rootfs| assert!(rootfs.join("etc/f0").is_file()));
    assert!(stderr.contains("building index"), "{stderr}");
    for i in 0..3 {
        let object = format!("indexes/parts/{}.part", f.key(i));
        assert!(s3.get_object(BUCKET, &object).is_some(), "{object} in S3");
    }

    // A fresh machine builds the app image's index: only the app layer is downloaded (a byte of each layer
    // is asked for, to check the registry serves ranges).
    let second = machine("second");
    f.proxy.reset_stats();
    let stderr = pull_and_gc(&f.image("app"), &second, |rootfs| {
        // Metadata only: reading a file would fetch its bytes.
        assert!(rootfs.join("usr/f0").is_file() && rootfs.join("app/f4").is_file());
    });
    assert!(stderr.contains("building index"), "{stderr}");
    let sent = f.layer_bytes();
    assert!(sent[..3].iter().all(|&b| b <= 1), "the shared layers are not downloaded: {sent:?}");
    assert!(sent[3] >= f.layers[3].blob().len() as u64, "{sent:?}");
    let state = f.path("second/state");
    for i in 0..4 {
        assert!(part_file(&state.join("parts"), &f.key(i)).is_file(), "layer {i}'s part kept on the second machine");
    }
    // The index equals one built from every layer.
    let stored = std::fs::read_dir(state.join("indexes")).unwrap().next().unwrap().unwrap().path();
    f.index("app", "full.clip", &f.path("other-parts"), &["--no-reuse"]);
    assert!(std::fs::read(stored).unwrap() == std::fs::read(f.path("full.clip")).unwrap());
}

#[test]
fn gc_removes_the_parts_no_kept_index_uses() {
    let f = Images::new(Compression::Gzip);
    let env = common::node_env(&f.path("node"));
    pull_and_gc(&f.image("base"), &env, |_| {});
    let parts = f.path("node/state/parts");
    let orphan = part_file(&parts, &clip_format::part_key(&clip_format::Digest::from_sha256([0; 32]), 1 << 20));
    std::fs::copy(part_file(&parts, &f.key(0)), &orphan).unwrap();

    let out = clip_node(&["gc"], &env);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("removed layer part {}", orphan.file_stem().unwrap().to_str().unwrap())),
        "{stderr}"
    );
    assert!(stderr.contains("layer parts: 1 removed") && stderr.contains("3 kept"), "{stderr}");
    assert!(!orphan.exists());
    for i in 0..3 {
        assert!(part_file(&parts, &f.key(i)).is_file(), "layer {i}'s part is used by the kept index");
    }

    // Without the index, nothing uses them.
    std::fs::remove_dir_all(f.path("node/state/indexes")).unwrap();
    let out = clip_node(&["gc"], &env);
    assert!(text(&out.stderr).contains("layer parts: 3 removed"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(&parts).unwrap().count(), 0);
}
