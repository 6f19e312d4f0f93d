//! End to end: the v2 → v1 fallback of `clip pull` (the path of images clip cannot index lazily) gives the
//! same tree as `umoci unpack` on every case of the conformance image, with each layer compression: it
//! applies layers with the indexer's merge, the one layer applier of clip.

mod common;

use std::path::PathBuf;

use clip_testkit::*;
use common::{clip_node, text};
use rstest::rstest;

#[rstest]
#[case::gzip(Compression::Gzip)]
#[case::zstd(Compression::Zstd)]
#[case::uncompressed(Compression::None)]
fn the_v1_fallback_tree_equals_umoci(#[case] compression: Compression) {
    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    layout.add_image("t", &conformance_image(compression));
    registry.push(layout.path(), "t", "conf:t");
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::node_env(dir.path());
    env.push(("CLIP_VERSION".to_owned(), "1".to_owned()));
    let out = clip_node(&["pull", &registry.image_ref("conf:t")], &env);
    assert!(out.status.success(), "clip pull failed: {}", text(&out.stderr));
    let rootfs = PathBuf::from(text(&out.stdout).trim());
    let archives: Vec<_> = std::fs::read_dir(dir.path().join("state/v1")).unwrap().flatten().collect();
    assert_eq!(archives.len(), 1, "one v1 archive: {archives:?}");
    assert_matches_umoci(layout.path(), "t", &rootfs, CompareOpts::conformance());
    let out = clip_node(&["gc"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
