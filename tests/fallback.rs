//! End to end: the trees of clip's whole-image paths equal `umoci unpack` on every case of the conformance
//! image, with each layer compression: `clip_version = 1` (unpacked through the image's index), and the
//! v2 → v1 fallback of `clip pull` (`pull_unpack`: every blob downloaded whole, here because the registry
//! refuses Range requests). Both apply layers with the indexer's merge, the one layer applier of clip.

mod common;

use std::path::PathBuf;

use clip_testkit::*;
use common::{clip_node, text};
use rstest::rstest;

/// Pulls `image` with `env` (the node's state under `dir`), checks one v1 archive was made and the tree
/// equals `umoci unpack` of image `t` in `layout`, then collects the node's garbage. Returns the pull's log.
fn pull_equals_umoci(
    image: &str,
    env: &[(String, String)],
    dir: &std::path::Path,
    layout: &OciLayoutBuilder,
) -> String {
    let out = clip_node(&["pull", image], env);
    assert!(out.status.success(), "clip pull failed: {}", text(&out.stderr));
    let rootfs = PathBuf::from(text(&out.stdout).trim());
    let archives: Vec<_> = std::fs::read_dir(dir.join("state/v1")).unwrap().flatten().collect();
    assert_eq!(archives.len(), 1, "one v1 archive: {archives:?}");
    assert_matches_umoci(layout.path(), "t", &rootfs, CompareOpts::conformance());
    let gc = clip_node(&["gc"], env);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    text(&out.stderr)
}

/// A registry serving the conformance image with layers of `compression` as `conf:t`, and its layout (image
/// `t`) for umoci.
fn conformance_registry(compression: Compression) -> (Registry, OciLayoutBuilder) {
    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &conformance_image(compression));
    registry.push(layout.path(), "t", "conf:t");
    (registry, layout)
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn the_v1_tree_equals_umoci(#[case] compression: Compression) {
    let (registry, layout) = conformance_registry(compression);
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::node_env(dir.path());
    env.push(("CLIP_VERSION".to_owned(), "1".to_owned()));
    pull_equals_umoci(&registry.image_ref("conf:t"), &env, dir.path(), &layout);
}

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn the_v1_fallback_tree_equals_umoci(#[case] compression: Compression) {
    let (registry, layout) = conformance_registry(compression);
    // A registry that ignores Range: the check before the mount sees it and the pull falls back.
    let proxy = Proxy::start(&registry.addr(), ProxyConfig::default());
    proxy.set_faults(vec![Fault::new(FaultKind::IgnoreRange).blobs_only()]);
    let dir = tempfile::tempdir().unwrap();
    let env = common::node_env(dir.path());
    let stderr = pull_equals_umoci(&proxy.image_ref("conf:t"), &env, dir.path(), &layout);
    assert!(stderr.contains("cache miss: v1 fallback pulls every layer"), "the fallback ran: {stderr}");
}
