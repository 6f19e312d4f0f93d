//! The read path through memory, the disk cache and the blob source: what is fetched, what is cached,
//! bounds, corruption, concurrency and failures.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clip_format::{DataRef, LayerIndex, SpanId};
use clip_store::{ContentStore, DiskCache, StoreConfig, StoreError};
use common::{
    cached, damage, disk_usage, eventually, files_in, manual_clock, raw_fixture, sealed, text, Fixture, Layer, KIB,
};

const SPAN: u64 = 64 * KIB;

#[tokio::test]
async fn cold_read_fetches_only_the_covering_spans() {
    // Spans 2 and 3 of a 10-span raw layer.
    let file = DataRef { layer: LayerIndex(0), offset: 2 * SPAN + 1000, size: SPAN + 500 };
    let fx = raw_fixture(10, &[file]);
    let store = fx.store(StoreConfig::default());
    let bytes = store.read(file, 0, file.size).await.unwrap();
    assert_eq!(bytes, fx.expected(file));
    assert_eq!(fx.blobs.ranges(), vec![(0, 2 * SPAN..3 * SPAN), (0, 3 * SPAN..4 * SPAN)]);
    let stats = store.stats();
    assert_eq!(stats.spans_fetched, 2);
    assert_eq!(stats.bytes_fetched, 2 * SPAN);
    assert_eq!(stats.layer_bytes_fetched, vec![2 * SPAN]);
    assert_eq!(stats.fetch_latency.count, 2);
    assert_eq!(stats.inflight_fetches, 0);

    // Again: from memory.
    let part = store.read(file, 10, 100).await.unwrap();
    assert_eq!(part, &fx.expected(file)[10..110]);
    assert_eq!(fx.blobs.count(), 2);
    assert!(store.stats().memory_hits >= 1);
}

#[tokio::test]
async fn cold_read_of_a_gzip_layer_fetches_only_the_covering_spans() {
    let raw = Layer::raw(text(100_000, 7), 32 * KIB);
    // Deflate blocks here hold ~250 KiB of output, so spans are about that long.
    let gz = Layer::gzip(text(2_000_000, 8), 32 * KIB);
    assert!(gz.spans.len() >= 5, "{} spans", gz.spans.len());
    assert!(!gz.spans[3].checkpoint.window.is_empty(), "span 3 resumes with a window");
    let (r3, r4) = (gz.span_range(3), gz.span_range(4));
    let file = DataRef { layer: LayerIndex(1), offset: r3.start + 10, size: r4.start - r3.start };
    let want = vec![(1, gz.fetch_range(3)), (1, gz.fetch_range(4))];
    let fx = Fixture::new(vec![raw, gz], &[file]);
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(cached(dir.path()));
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert_eq!(fx.blobs.ranges(), want);
    assert_eq!(store.stats().layer_bytes_fetched[0], 0);

    // A new store over the same cache: no requests.
    let again = fx.store(cached(dir.path()));
    assert_eq!(again.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert_eq!(fx.blobs.count(), 2);
    assert_eq!(again.stats().disk_hits, 2);
}

#[tokio::test]
async fn a_second_store_over_the_same_cache_makes_no_requests() {
    let files: Vec<DataRef> =
        (0..6).map(|i| DataRef { layer: LayerIndex(0), offset: i * 100_000, size: 90_000 }).collect();
    let fx = raw_fixture(10, &files);
    let dir = tempfile::tempdir().unwrap();
    let first = fx.store(cached(dir.path()));
    for f in &files {
        assert_eq!(first.read(*f, 0, f.size).await.unwrap(), fx.expected(*f));
    }
    let fetched = fx.blobs.count();
    assert_eq!(fetched as u64, first.stats().spans_fetched);
    assert_eq!(files_in(dir.path(), "spans").len(), fetched);
    assert_eq!(first.stats().disk_cache_bytes, disk_usage(dir.path()));
    drop(first);
    eventually("span files sealed", || files_in(dir.path(), "spans").iter().all(|p| sealed(p))).await;

    let second = fx.store(cached(dir.path()));
    for f in &files {
        assert_eq!(second.read(*f, 0, f.size).await.unwrap(), fx.expected(*f));
    }
    assert_eq!(fx.blobs.count(), fetched, "the warm store fetched");
    let stats = second.stats();
    assert_eq!(stats.spans_fetched, 0);
    // Sealed by the first store: every piece of a file is read by range from its span file (one disk hit
    // per file and span it touches), none loads a span into memory.
    let pieces: usize = files.iter().map(|f| fx.archive.file_spans(*f, 0..f.size).count()).sum();
    assert_eq!((stats.disk_hits as usize, stats.memory_hits), (pieces, 0));
}

#[tokio::test]
async fn a_span_not_on_disk_is_looked_for_once_and_a_sealed_one_read_by_range() {
    let file = DataRef { layer: LayerIndex(0), offset: 1000, size: 3000 };
    let fx = raw_fixture(4, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let cold = fx.store(cached(dir.path()));
    assert_eq!(cold.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    // The scan at open found no file: only the load looks for the span's file, once, then fetches it.
    let stats = cold.stats();
    assert_eq!((stats.disk_lookups, stats.disk_hits, stats.spans_fetched), (1, 0, 1));
    drop(cold);
    eventually("span files sealed", || files_in(dir.path(), "spans").iter().all(|p| sealed(p))).await;

    // A later store's scan finds the file sealed: a piece of it is one lookup, read by range, not kept.
    let warm = fx.store(cached(dir.path()));
    assert_eq!(warm.read(file, 10, 100).await.unwrap(), &fx.expected(file)[10..110]);
    let stats = warm.stats();
    assert_eq!((stats.disk_lookups, stats.disk_hits, stats.spans_fetched, stats.memory_hits), (1, 1, 0, 0));
    assert_eq!(warm.read(file, 200, 100).await.unwrap(), &fx.expected(file)[200..300]);
    assert_eq!(warm.stats().disk_lookups, 2, "each read goes to the file by range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_bound() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 20 * SPAN };
    let fx = raw_fixture(20, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let bound = 5 * SPAN + 100;
    let config = StoreConfig { cache_size: bound, memory_bytes: SPAN, readahead_spans: 0, ..cached(dir.path()) };
    let store = fx.store(config.clone());
    for round in 0..2 {
        for i in 0..20 {
            let got = store.read(file, i * SPAN + 7, 1000).await.unwrap();
            assert_eq!(got, &fx.expected(file)[(i * SPAN + 7) as usize..][..1000], "round {round} span {i}");
        }
    }
    eventually("eviction brings the cache under its bound", || {
        disk_usage(dir.path()) <= bound && store.stats().disk_cache_bytes <= bound
    })
    .await;
    let stats = store.stats();
    assert!(stats.evictions >= 15, "{stats:?}");
    assert!(stats.bytes_evicted >= 15 * SPAN);

    // A later store that finds the cache over its (smaller) bound evicts at open.
    let smaller = StoreConfig { cache_size: 2 * SPAN, ..config };
    let store = fx.store(smaller);
    assert!(disk_usage(dir.path()) <= 2 * SPAN);
    assert!(store.stats().evictions >= 1);
}

#[test]
fn the_bound_counts_disk_blocks_not_bytes() {
    // 100 spans of 100 bytes: 10 KB of bytes, but a block each on disk.
    let dir = tempfile::tempdir().unwrap();
    let bound = 64 * KIB;
    let cache = DiskCache::open(dir.path(), bound).unwrap();
    cache.wait_scanned();
    for i in 0..100u32 {
        let bytes = i.to_le_bytes().repeat(25);
        cache.put(&clip_format::Digest::of(&bytes), &bytes);
    }
    let used = disk_usage(dir.path());
    assert!(used <= bound, "{used} bytes of disk for a {bound}-byte bound");
    assert!(cache.stats().evictions >= 80, "{:?}", cache.stats());
    assert_eq!(cache.stats().bytes, files_in(dir.path(), "spans").len() as u64 * 4096);
}

#[tokio::test]
async fn a_corrupted_cache_file_is_detected_deleted_and_refetched() {
    let file = DataRef { layer: LayerIndex(0), offset: 4 * SPAN, size: SPAN };
    let fx = raw_fixture(6, &[file]);
    let dir = tempfile::tempdir().unwrap();
    fx.store(cached(dir.path())).read(file, 0, file.size).await.unwrap();
    let spans = files_in(dir.path(), "spans");
    assert_eq!(spans.len(), 1);
    let mut bytes = std::fs::read(&spans[0]).unwrap();
    bytes[1234] ^= 0x01;
    damage(&spans[0], &bytes);

    let store = fx.store(cached(dir.path()));
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    let stats = store.stats();
    assert_eq!(stats.disk_verify_failures, 1);
    assert_eq!(stats.disk_hits, 0);
    assert_eq!(stats.spans_fetched, 1);
    assert_eq!(fx.blobs.count(), 2);
    // The file was replaced by the verified bytes.
    assert_eq!(std::fs::read(&spans[0]).unwrap(), fx.expected(file));

    // Truncated (as after a crash before the data reached the disk): also never served.
    damage(&spans[0], &bytes[..100]);
    let store = fx.store(cached(dir.path()));
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert_eq!(store.stats().disk_verify_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_a_cold_span_share_one_request() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 8 * SPAN };
    let fx = raw_fixture(8, &[file]);
    fx.blobs.set_delay(100);
    let dir = tempfile::tempdir().unwrap();
    // Readers of one file at nearby offsets look sequential: no readahead here, to count one span.
    let store = Arc::new(fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) }));
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { (i, store.read(file, 5 * SPAN + i * 100, 100).await) })
        })
        .collect();
    for t in tasks {
        let (i, got) = t.await.unwrap();
        assert_eq!(got.unwrap(), &fx.expected(file)[(5 * SPAN + i * 100) as usize..][..100]);
    }
    assert_eq!(fx.blobs.ranges(), vec![(0, 5 * SPAN..6 * SPAN)]);
    assert_eq!(store.stats().spans_fetched, 1);
}

#[tokio::test]
async fn a_failing_source_gives_an_error_and_a_retry_succeeds() {
    let file = DataRef { layer: LayerIndex(0), offset: SPAN, size: 100 };
    let fx = raw_fixture(3, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let (config, holdoff) = manual_clock(cached(dir.path()));
    let store = fx.store(config);

    fx.blobs.fail.store(true, Ordering::SeqCst);
    let err = store.read(file, 0, file.size).await.unwrap_err();
    assert!(matches!(err.cause(), StoreError::Io { .. }), "{err}");
    assert_eq!(store.stats().fetch_errors, 1);
    fx.blobs.fail.store(false, Ordering::SeqCst);
    holdoff.pass();
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));

    // Corrupted bytes: refused, counted, not cached; fine again once the source is.
    let other = DataRef { layer: LayerIndex(0), offset: 2 * SPAN, size: 100 };
    fx.blobs.corrupt.store(true, Ordering::SeqCst);
    let err = store.read(other, 0, other.size).await.unwrap_err();
    assert!(matches!(err.cause(), StoreError::Verify { .. }), "{err}");
    assert_eq!(store.stats().verify_failures, u64::from(clip_store::VERIFY_ATTEMPTS), "fetched again, then given up");
    assert_eq!(files_in(dir.path(), "spans").len(), 1, "unverified bytes reached the disk cache");
    fx.blobs.corrupt.store(false, Ordering::SeqCst);
    holdoff.pass();
    assert_eq!(store.read(other, 0, other.size).await.unwrap(), fx.expected(other));
    assert_eq!(files_in(dir.path(), "spans").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_joining_a_failed_fetch_all_get_the_error() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN };
    let fx = raw_fixture(1, &[file]);
    fx.blobs.set_delay(100);
    fx.blobs.fail.store(true, Ordering::SeqCst);
    let store = Arc::new(fx.store(StoreConfig::default()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.read(file, 0, 10).await })
        })
        .collect();
    let mut joined = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(StoreError::Joined { source, .. }) => {
                assert!(matches!(source.cause(), StoreError::Io { .. }), "{source}");
                let message = clip_store::error_chain(&*source);
                assert!(message.contains("injected failure"), "{message}");
                joined += 1;
            }
            Err(StoreError::Shared(error)) if matches!(*error, StoreError::Io { .. }) => {}
            other => panic!("expected an error, got {:?}", other.map(|b| b.len())),
        }
    }
    assert_eq!(joined, 7);
    assert_eq!(fx.blobs.count(), 1);
}

#[tokio::test]
async fn bad_requests_are_errors_not_panics() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN };
    let fx = raw_fixture(2, &[file]);
    let store: ContentStore = fx.store(StoreConfig::default());
    let err = store.span(LayerIndex(0), SpanId(5)).await.unwrap_err();
    let media_type = &fx.archive.meta().layers[0].media_type;
    assert!(!media_type.is_empty() && err.to_string().contains(&format!("({media_type})")), "{err}");
    assert!(store.span(LayerIndex(3), SpanId(0)).await.is_err());
    let huge = DataRef { layer: LayerIndex(0), offset: u64::MAX - 10, size: 100 };
    assert!(store.read(huge, 0, 100).await.is_err());
    let beyond = DataRef { layer: LayerIndex(0), offset: 3 * SPAN, size: 100 };
    assert!(store.read(beyond, 0, 100).await.is_err());
    assert_eq!(store.read(file, SPAN, 10).await.unwrap(), Vec::<u8>::new());
}
