//! Spans of tiny files kept compressed in the disk cache: what they cost on disk, a later store reading
//! them by range, and damage found (sealed file or not) and fetched again, never served.

mod common;

use std::os::unix::fs::PermissionsExt;

use clip_format::{DataRef, LayerIndex};
use common::{cached, damage, disk_usage, eventually, files_in, sealed, Fixture, Layer, KIB};

const SPAN: u64 = 256 * KIB;
/// Bytes of each tiny file.
const TINY: u64 = 30;

/// Tar-like bytes: per KiB, a 512-byte header (a name, zeros) and a 30-byte file padded to 512.
fn tiny_files(len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    for i in 0..len / 1024 {
        let mut block = vec![0u8; 1024];
        let name = format!("files/d{:04}/f{:04}.txt", i / 1000, i % 1000);
        block[..name.len()].copy_from_slice(name.as_bytes());
        let data = format!("{:>29}\n", format!("file {i}"));
        block[512..512 + data.len()].copy_from_slice(data.as_bytes());
        out.extend_from_slice(&block);
    }
    out
}

fn tiny_fixture(spans: u64) -> (Fixture, Vec<DataRef>) {
    let files: Vec<DataRef> = (0..spans * SPAN / 1024)
        .map(|i| DataRef { layer: LayerIndex(0), offset: i * 1024 + 512, size: TINY })
        .collect();
    (Fixture::new(vec![Layer::raw(tiny_files(spans * SPAN), SPAN)], &files), files)
}

#[tokio::test]
async fn spans_of_tiny_files_cost_less_than_their_data_on_disk_and_a_later_store_reads_them_by_range() {
    let (fx, files) = tiny_fixture(4);
    let dir = tempfile::tempdir().unwrap();
    let first = fx.store(cached(dir.path()));
    for f in &files {
        assert_eq!(first.read(*f, 0, f.size).await.unwrap(), fx.expected(*f));
    }
    let spans = files_in(dir.path(), "spans");
    assert_eq!(spans.len(), 4);
    assert!(spans.iter().all(|p| p.extension().is_some_and(|e| e == "zst")), "{spans:?}");
    let data = files.len() as u64 * TINY;
    let used: u64 = spans.iter().map(|p| disk_usage_of(p)).sum();
    assert!(used <= data, "{used} bytes of disk for {data} bytes of files (4 MiB of tar raw)");
    assert_eq!(first.stats().disk_cache_bytes, disk_usage(dir.path()), "counted in disk blocks");
    drop(first);
    eventually("span files sealed", || spans.iter().all(|p| sealed(p))).await;

    let second = fx.store(cached(dir.path()));
    for f in &files {
        assert_eq!(second.read(*f, 0, f.size).await.unwrap(), fx.expected(*f));
    }
    let stats = second.stats();
    assert_eq!(stats.spans_fetched, 0);
    // Every file read by range from its sealed span file, inflating only the frame it is in.
    assert_eq!((stats.disk_hits, stats.memory_hits), (files.len() as u64, 0));
}

fn disk_usage_of(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
}

#[tokio::test]
async fn a_damaged_compressed_span_file_is_fetched_again_never_served_sealed_or_not() {
    let (fx, _) = tiny_fixture(1);
    let whole = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN };
    let dir = tempfile::tempdir().unwrap();
    fx.store(cached(dir.path())).read(whole, 0, whole.size).await.unwrap();
    let [path] = &files_in(dir.path(), "spans")[..] else { panic!("one span file") };
    let good = std::fs::read(path).unwrap();

    // Changed behind a seal (a sealed file is trusted without hashing): zstd's checksums catch it.
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 0x20;
    damage(path, &bad);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
    // Changed and unsealed, as a crash leaves it; then truncated.
    for (i, bytes) in [&bad[..], &bad[..], &good[..100]].into_iter().enumerate() {
        if i > 0 {
            damage(path, bytes);
        }
        let store = fx.store(cached(dir.path()));
        assert_eq!(store.read(whole, 0, whole.size).await.unwrap(), fx.expected(whole), "case {i}");
        let stats = store.stats();
        assert_eq!((stats.disk_verify_failures, stats.spans_fetched), (1, 1), "case {i}: {stats:?}");
        assert_eq!(std::fs::read(path).unwrap(), good, "case {i}: the file was written again");
    }
}
