//! Whole cached files for FUSE passthrough: `ContentStore::cached_file`.

mod common;

use std::io::Read;

use clip_format::{DataRef, LayerIndex};
use clip_store::StoreConfig;
use common::{cached, damage, eventually, files_in, raw_fixture, text, Fixture, Layer, KIB};

const SPAN: u64 = 64 * KIB;

fn contents(mut file: std::fs::File) -> Vec<u8> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    out
}

#[tokio::test]
async fn a_fully_cached_file_is_handed_out_with_exactly_its_bytes() {
    let across = DataRef { layer: LayerIndex(0), offset: SPAN + 333, size: 2 * SPAN + 1000 }; // spans 1..=3
    let inside = DataRef { layer: LayerIndex(0), offset: 5 * SPAN + 10, size: 5000 }; // inside span 5
    let empty = DataRef { layer: LayerIndex(0), offset: 7, size: 0 };
    let fx = raw_fixture(8, &[across, inside, empty]);
    let dir = tempfile::tempdir().unwrap();
    // Small files too (by default they are served from spans: see the next test).
    let config = || StoreConfig { readahead_spans: 0, passthrough_min: 0, ..cached(dir.path()) };
    let store = fx.store(config());

    assert!(store.cached_file(across).is_none(), "nothing is cached yet");
    store.read(across, 0, SPAN).await.unwrap(); // spans 1 and 2 only
    assert!(store.cached_file(across).is_none(), "span 3 is missing");
    store.read(across, SPAN, across.size).await.unwrap();
    let file = store.cached_file(across).expect("all spans are cached");
    assert_eq!(file.metadata().unwrap().len(), across.size);
    assert_eq!(contents(file), fx.expected(across));
    // Asked again: the same file, not a second copy.
    assert_eq!(contents(store.cached_file(across).unwrap()), fx.expected(across));
    assert_eq!(files_in(dir.path(), "files").len(), 1);

    store.read(inside, 0, inside.size).await.unwrap();
    assert_eq!(contents(store.cached_file(inside).unwrap()), fx.expected(inside));
    assert_eq!(contents(store.cached_file(empty).unwrap()), Vec::<u8>::new());
    let requests = fx.blobs.count();

    // After a restart the files are found (and verified) again, without new copies or requests.
    let store = fx.store(config());
    assert_eq!(contents(store.cached_file(across).unwrap()), fx.expected(across));
    assert_eq!(contents(store.cached_file(inside).unwrap()), fx.expected(inside));
    assert_eq!(files_in(dir.path(), "files").len(), 3);
    assert_eq!(fx.blobs.count(), requests);
    assert!(store.stats().disk_cache_bytes >= 4 * SPAN + across.size + inside.size);
}

#[tokio::test]
async fn small_files_are_served_from_spans_without_a_copy_each() {
    // 200 files of 1000 bytes in the first spans: reading them all leaves those spans on disk, no files.
    let files: Vec<DataRef> =
        (0..200).map(|i| DataRef { layer: clip_format::LayerIndex(0), offset: i * 1024, size: 1000 }).collect();
    let fx = raw_fixture(4, &files);
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) });
    for &f in &files {
        assert_eq!(store.read(f, 0, f.size).await.unwrap(), fx.expected(f));
        assert!(store.cached_file(f).is_none(), "a 1000-byte file got a copy of its own");
    }
    assert!(files_in(dir.path(), "files").is_empty());
    assert_eq!(files_in(dir.path(), "spans").len(), 4);
}

#[tokio::test]
async fn a_corrupted_file_or_span_is_never_handed_out() {
    let file = DataRef { layer: LayerIndex(0), offset: 1000, size: 2 * SPAN };
    let fx = raw_fixture(4, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) });
    store.read(file, 0, file.size).await.unwrap();
    store.cached_file(file).unwrap();

    // Flip a byte of the materialized file: a restarted store rejects it and builds it again.
    let built = files_in(dir.path(), "files");
    assert_eq!(built.len(), 1);
    let mut bytes = std::fs::read(&built[0]).unwrap();
    bytes[SPAN as usize] ^= 0x20;
    damage(&built[0], &bytes);
    let store = fx.store(cached(dir.path()));
    assert_eq!(contents(store.cached_file(file).unwrap()), fx.expected(file));
    assert_eq!(store.stats().disk_verify_failures, 1);

    // Flip a byte of a span, then remove the file: the span is rejected, nothing is handed out, and the
    // file is back once a read has fetched the span again.
    for f in files_in(dir.path(), "files") {
        std::fs::remove_file(f).unwrap();
    }
    let span = &files_in(dir.path(), "spans")[0];
    let mut bytes = std::fs::read(span).unwrap();
    bytes[100] ^= 0x20;
    damage(span, &bytes);
    let store = fx.store(cached(dir.path()));
    assert!(store.cached_file(file).is_none());
    assert_eq!(store.stats().disk_verify_failures, 1);
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert_eq!(contents(store.cached_file(file).unwrap()), fx.expected(file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_assembled_in_the_background() {
    let gz = Layer::gzip(text(900_000, 5), 32 * KIB);
    let file = DataRef { layer: LayerIndex(0), offset: 12_345, size: 800_000 };
    let fx = Fixture::new(vec![gz], &[file]);
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { passthrough_inline_max: 100 * KIB, ..cached(dir.path()) };
    let store = fx.store(config);
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert!(store.cached_file(file).is_none(), "large files are not assembled while the caller waits");
    let mut found = None;
    eventually("the file is assembled", || {
        found = store.cached_file(file);
        found.is_some()
    })
    .await;
    assert_eq!(contents(found.unwrap()), fx.expected(file));
}

#[tokio::test]
async fn no_disk_cache_means_no_files() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 100 };
    let fx = raw_fixture(1, &[file]);
    let store = fx.store(StoreConfig::default());
    store.read(file, 0, file.size).await.unwrap();
    assert!(store.cached_file(file).is_none());
    let bogus = DataRef { layer: LayerIndex(9), offset: 0, size: 100 };
    assert!(store.cached_file(bogus).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_in_reads_only_files_wholly_on_disk_and_fetches_nothing() {
    let whole = DataRef { layer: LayerIndex(0), offset: 100, size: 2 * SPAN }; // spans 0..=2
    let partly = DataRef { layer: LayerIndex(0), offset: 4 * SPAN + 7, size: SPAN }; // spans 4 and 5
    let small = DataRef { layer: LayerIndex(0), offset: 6 * SPAN + 9, size: 3000 }; // inside span 6
    let fx = raw_fixture(8, &[whole, partly, small]);
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) });
    store.read(whole, 0, whole.size).await.unwrap();
    assert!(store.cached_file(whole).is_some(), "the big file is copied for passthrough");
    store.read(partly, 0, 100).await.unwrap(); // span 4 only
    store.read(small, 0, small.size).await.unwrap();
    let requests = fx.blobs.count();

    // A fresh store (a remount): the copy and the small file's span are read in, the file missing a span is not.
    let store = fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) });
    store.page_in([whole, partly, small]);
    eventually("the local files were paged in", || store.stats().files_paged_in == 2).await;
    store.page_in([partly]);
    store.page_in([whole]);
    eventually("paged in again", || store.stats().files_paged_in == 3).await;
    assert_eq!(fx.blobs.count(), requests, "paging in fetched");
    assert_eq!(store.stats().spans_fetched, 0);
}
