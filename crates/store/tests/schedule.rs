//! Readahead of sequential reads and background prefetch.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clip_format::{DataRef, LayerIndex, SpanId};
use clip_store::{Need, PrefetchSummary, StoreConfig, Warmed};
use common::{cached, eventually, files_in, manual_clock, raw_fixture, text, Fixture, Layer, KIB};

const SPAN: u64 = 64 * KIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_load_the_next_spans_ahead() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 10 * SPAN };
    let fx = raw_fixture(10, &[file]);
    let store = fx.store(StoreConfig::default());
    let expected = fx.expected(file);
    store.read(file, 0, 16 * KIB).await.unwrap();
    assert_eq!(fx.blobs.count(), 1, "a first read is not sequential yet");
    store.read(file, 16 * KIB, 16 * KIB).await.unwrap();
    let want = vec![(0, 0..SPAN), (0, SPAN..2 * SPAN), (0, 2 * SPAN..3 * SPAN)];
    eventually("readahead of spans 1 and 2", || fx.blobs.ranges() == want).await;
    assert_eq!(store.stats().readahead_spans, 2);

    // Reading on needs nothing more until it passes the spans already requested; each further read
    // keeps two spans ahead, and no span is requested twice.
    let mut pos = 32 * KIB;
    while pos < file.size {
        let got = store.read(file, pos, 32 * KIB).await.unwrap();
        assert_eq!(got, &expected[pos as usize..][..32 * KIB as usize]);
        pos += 32 * KIB;
    }
    eventually("all spans", || fx.blobs.count() >= 10).await;
    assert_eq!(fx.blobs.ranges(), (0..10).map(|i| (0, i * SPAN..(i + 1) * SPAN)).collect::<Vec<_>>());
    assert_eq!(store.stats().readahead_spans, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readahead_stays_inside_the_file_and_needs_sequential_reads() {
    let small = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN + 100 };
    let big = DataRef { layer: LayerIndex(0), offset: 0, size: 40 * SPAN };
    let fx = raw_fixture(40, &[small, big]);
    let store = fx.store(StoreConfig::default());
    store.read(small, 0, 4 * KIB).await.unwrap();
    store.read(small, 4 * KIB, 4 * KIB).await.unwrap();
    eventually("readahead of span 1", || fx.blobs.count() == 2).await;
    // Readahead loads are started (and counted) by the reads themselves: one was, and it has asked.
    assert_eq!(store.stats().readahead_spans, 1);
    assert_eq!(fx.blobs.ranges(), vec![(0, 0..SPAN), (0, SPAN..2 * SPAN)], "read ahead past the end of the file");

    // Random reads of another file: no readahead.
    for i in [30, 5, 20, 10] {
        store.read(big, i * SPAN, 4 * KIB).await.unwrap();
    }
    assert_eq!(store.stats().readahead_spans, 1);
    assert_eq!(fx.blobs.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_into_a_file_is_not_a_read_and_loads_nothing_ahead() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 10 * SPAN };
    let fx = raw_fixture(10, &[file]);
    let store = fx.store(StoreConfig::default());
    let expected = fx.expected(file);
    assert_eq!(store.look(file, 0, 16 * KIB).await.unwrap(), &expected[..16 * KIB as usize]);
    store.look(file, 16 * KIB, 16 * KIB).await.unwrap();
    assert_eq!(store.stats().readahead_spans, 0, "looks in sequence are not a sequential reader");
    // Nor does a look start a reader's stream: the first read after it is a first read.
    store.read(file, 32 * KIB, 16 * KIB).await.unwrap();
    assert_eq!(store.stats().readahead_spans, 0);
    store.read(file, 48 * KIB, 16 * KIB).await.unwrap();
    assert_eq!(store.stats().readahead_spans, 2, "the reader's second read goes on from its first");
    assert_eq!(fx.blobs.ranges()[0], (0, 0..SPAN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waits_for_readahead_rather_than_fetching_again() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 4 * SPAN };
    let fx = raw_fixture(4, &[file]);
    let store = fx.store(StoreConfig { readahead_spans: 1, ..StoreConfig::default() });
    store.read(file, 0, 4 * KIB).await.unwrap();
    fx.blobs.set_delay(200);
    store.read(file, 4 * KIB, 4 * KIB).await.unwrap(); // memory hit; starts readahead of span 1
    eventually("readahead request started", || fx.blobs.count() == 2).await;
    let got = store.read(file, SPAN, 4 * KIB).await.unwrap();
    assert_eq!(got, &fx.expected(file)[SPAN as usize..][..4 * KIB as usize]);
    let span1 = fx.blobs.ranges().iter().filter(|(_, r)| *r == (SPAN..2 * SPAN)).count();
    assert_eq!(span1, 1);
}

fn two_layer_fixture() -> Fixture {
    let raw = Layer::raw(text(300_000, 3), SPAN);
    let gz = Layer::gzip(text(500_000, 4), 32 * KIB);
    let files = [
        DataRef { layer: LayerIndex(0), offset: 0, size: 300_000 },
        DataRef { layer: LayerIndex(1), offset: 0, size: 500_000 },
    ];
    Fixture::new(vec![raw, gz], &files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_all_fills_the_disk_cache() {
    let fx = two_layer_fixture();
    let total = fx.all_spans().len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(cached(dir.path()));
    let summary = store.prefetch_all().await.unwrap();
    assert_eq!(summary, PrefetchSummary { loaded: total, ..PrefetchSummary::default() });
    assert_eq!(fx.blobs.count() as u64, total);
    assert_eq!(files_in(dir.path(), "spans").len() as u64, total);
    assert_eq!(store.stats().prefetched_spans, total);
    assert_eq!(store.stats().memory_hits, 0);

    // Everything is now local: a new store reads every file without a request, and a second prefetch
    // finds nothing to do.
    let warm = fx.store(cached(dir.path()));
    for ino in 2..=3 {
        let data = fx.archive.node(clip_format::Ino(ino)).unwrap().data_ref().unwrap();
        assert_eq!(warm.read(data, 0, data.size).await.unwrap(), fx.expected(data));
    }
    assert_eq!(fx.blobs.count() as u64, total);
    let again = warm.prefetch_all().await.unwrap();
    assert_eq!(again, PrefetchSummary { already_cached: total, ..PrefetchSummary::default() });
    assert_eq!(fx.blobs.count() as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_bounded_and_yields_to_foreground_reads() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 12 * SPAN };
    let fx = raw_fixture(12, &[file]);
    fx.blobs.set_delay(50);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) }));

    // A foreground read is in flight when prefetch starts: prefetch waits for it.
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.read(file, 11 * SPAN, 100).await })
    };
    eventually("foreground request started", || fx.blobs.active() == 1).await;
    let prefetch = store.prefetch_all();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got, &fx.expected(file)[(11 * SPAN) as usize..][..100]);
    let summary = prefetch.await.unwrap();
    assert_eq!(summary.loaded + summary.already_cached, 12);
    assert_eq!(summary.already_cached, 1);
    assert_eq!(fx.blobs.max_active.load(Ordering::SeqCst), 1, "prefetch overlapped a fetch");
    assert_eq!(fx.blobs.requests()[0].range, 11 * SPAN..12 * SPAN);

    // With two permits, at most two prefetch fetches run at once.
    let dir = tempfile::tempdir().unwrap();
    let fx = raw_fixture(12, &[file]);
    fx.blobs.set_delay(30);
    let store = fx.store(StoreConfig { prefetch_concurrency: 2, ..cached(dir.path()) });
    let summary = store.prefetch_all().await.unwrap();
    assert_eq!(summary.loaded, 12);
    assert_eq!(fx.blobs.max_active.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_of_listed_spans_and_its_failures() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 6 * SPAN };
    let fx = raw_fixture(6, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let (config, holdoff) = manual_clock(cached(dir.path()));
    let store = fx.store(config);
    let summary = store
        .prefetch_spans(vec![(LayerIndex(0), SpanId(4), Need::Whole), (LayerIndex(0), SpanId(1), Need::Whole)])
        .await
        .unwrap();
    assert_eq!(summary.loaded, 2);
    assert_eq!(fx.blobs.ranges(), vec![(0, SPAN..2 * SPAN), (0, 4 * SPAN..5 * SPAN)]);

    fx.blobs.fail.store(true, Ordering::SeqCst);
    let summary = store
        .prefetch_spans(vec![
            (LayerIndex(0), SpanId(2), Need::Whole),
            (LayerIndex(0), SpanId(99), Need::Whole),
            (LayerIndex(7), SpanId(0), Need::Whole),
        ])
        .await
        .unwrap();
    assert_eq!(summary.failed, 3);
    fx.blobs.fail.store(false, Ordering::SeqCst);
    holdoff.pass();
    assert_eq!(store.prefetch_spans(vec![(LayerIndex(0), SpanId(2), Need::Whole)]).await.unwrap().loaded, 1);

    // Without a disk cache there is nothing to fill.
    let memory_only = fx.store(StoreConfig::default());
    let summary = memory_only.prefetch_all().await.unwrap();
    assert_eq!(summary, PrefetchSummary { skipped: 6, ..PrefetchSummary::default() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_file_loads_all_its_spans_at_once() {
    let small = DataRef { layer: LayerIndex(0), offset: SPAN / 2, size: 3 * SPAN };
    let big = DataRef { layer: LayerIndex(0), offset: 4 * SPAN, size: 4 * SPAN };
    let fx = raw_fixture(8, &[small, big]);
    let store = fx.store(StoreConfig { open_prefetch_max: 3 * SPAN, ..StoreConfig::default() });
    fx.blobs.set_delay(100);
    assert_eq!(store.warm_file(small), Warmed { started: 4, cold: true }, "a file over four spans starts four loads");
    eventually("all four spans of the file", || fx.blobs.count() == 4).await;
    assert!(fx.blobs.max_active.load(Ordering::SeqCst) >= 2, "the loads ran one after another");
    let got = store.read(small, 0, small.size).await.unwrap();
    assert_eq!(got, fx.expected(small));
    assert_eq!(fx.blobs.count(), 4, "reading the opened file fetched again");
    assert_eq!(store.stats().open_prefetch_spans, 4);
    // Spans in memory are not loaded again, and files over the limit are left to their reads (cold still).
    assert_eq!(store.warm_file(small), Warmed { started: 0, cold: false });
    assert_eq!(store.warm_file(big), Warmed { started: 0, cold: true });
    // Loads are started (and counted) by `warm_file` and by sequential reads, and none was.
    let stats = store.stats();
    assert_eq!((stats.open_prefetch_spans, stats.readahead_spans), (4, 0));
    assert_eq!(fx.blobs.count(), 4);

    // A store whose disk cache holds the file's spans (a restarted mount) leaves them to the reads.
    let dir = tempfile::tempdir().unwrap();
    let first = fx.store(cached(dir.path()));
    first.read(small, 0, small.size).await.unwrap();
    let second = fx.store(StoreConfig { open_prefetch_max: 3 * SPAN, ..cached(dir.path()) });
    assert_eq!(second.warm_file(small), Warmed::default(), "spans on disk were loaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_replayed_with_concurrent_loads_even_while_reads_run() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 8 * SPAN };
    let fx = raw_fixture(8, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fx.store(StoreConfig { profile_concurrency: 3, ..cached(dir.path()) }));
    fx.blobs.set_delay(100);
    // A foreground read is in flight the whole time; a profile replay does not wait for it.
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.read(file, 7 * SPAN, 10).await })
    };
    let summary =
        store.prefetch_spans((0..6).map(|i| (LayerIndex(0), SpanId(i), Need::Whole)).collect()).await.unwrap();
    assert_eq!(summary.loaded, 6);
    reader.await.unwrap().unwrap();
    let max = fx.blobs.max_active.load(Ordering::SeqCst);
    assert!((3..=4).contains(&max), "{max} loads at once (3 profile loads + 1 read expected)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_prefetch_told_to_yield_drops_its_loads_and_waits_for_reads() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 6 * SPAN };
    let fx = raw_fixture(6, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fx.store(StoreConfig { profile_concurrency: 3, readahead_spans: 0, ..cached(dir.path()) }));
    fx.blobs.hang.send_replace(true);
    let read = |offset: u64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.read(file, offset, 100).await })
    };
    // A reader of span 0, then a startup prefetch of every span: it joins span 0's load and starts 1 and 2.
    let first = read(0);
    eventually("the reader's load", || fx.blobs.active() == 1).await;
    let prefetch = store.prefetch_spans((0..6).map(|i| (LayerIndex(0), SpanId(i), Need::Whole)).collect());
    eventually("the startup's loads", || fx.blobs.active() == 3).await;
    // A second reader wants span 1, which the startup is loading.
    let second = read(SPAN);
    store.yield_startup_prefetch();
    // The startup's loads are gone, the second reader loads span 1 itself, and the rest of the list waits
    // while reads run.
    eventually("the dropped loads end and the reader asks again", || fx.blobs.active() == 2 && fx.blobs.count() == 4)
        .await;
    assert_eq!(fx.blobs.requests()[3].range, SPAN..2 * SPAN);
    fx.blobs.hang.send_replace(false);
    assert_eq!(first.await.unwrap().unwrap(), &fx.expected(file)[..100]);
    assert_eq!(second.await.unwrap().unwrap(), &fx.expected(file)[SPAN as usize..][..100]);
    let summary = prefetch.await.unwrap();
    assert_eq!(summary, PrefetchSummary { loaded: 3, dropped: 3, ..PrefetchSummary::default() });
    let mut later: Vec<_> = fx.blobs.requests()[4..].iter().map(|r| r.range.start).collect();
    later.sort_unstable();
    assert_eq!(later, [3 * SPAN, 4 * SPAN, 5 * SPAN], "the rest of the list, each once, after the reads");
}
