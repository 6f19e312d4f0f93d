//! The store's failure policy: bad bytes are fetched again and never served, every read has a deadline,
//! and no failure sticks to a span once the source works again.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clip_format::{DataRef, LayerIndex};
use clip_store::{StoreConfig, StoreError, VERIFY_ATTEMPTS};
use common::{cached, files_in, manual_clock, raw_fixture, text, Fixture, Layer, KIB};

const SPAN: u64 = 64 * KIB;

#[tokio::test]
async fn bytes_failing_verification_are_fetched_again_and_never_served() {
    let file = DataRef { layer: LayerIndex(0), offset: SPAN, size: 2 * SPAN };
    let fx = raw_fixture(4, &[file]);
    let dir = tempfile::tempdir().unwrap();
    let store = fx.store(StoreConfig { readahead_spans: 0, ..cached(dir.path()) });
    // Two bad answers in a row: the third fetch is good.
    fx.blobs.corrupt_next.store(2, Ordering::SeqCst);
    assert_eq!(store.read(file, 0, SPAN).await.unwrap(), &fx.expected(file)[..SPAN as usize]);
    let stats = store.stats();
    assert_eq!((stats.verify_failures, stats.fetch_errors, fx.blobs.count()), (2, 0, 3));
    assert_eq!(files_in(dir.path(), "spans").len(), 1);
}

#[tokio::test]
async fn gzip_bytes_corrupted_in_flight_are_caught_too() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 8 * SPAN };
    let fx = Fixture::new(vec![Layer::gzip(text(file.size as usize, 3), SPAN)], &[file]);
    let store = fx.store(StoreConfig { readahead_spans: 0, ..StoreConfig::default() });
    let mut got = Vec::new();
    let mut off = 0;
    while off < file.size {
        // The first fetch of every read is corrupted.
        fx.blobs.corrupt_next.store(1, Ordering::SeqCst);
        got.extend(store.read(file, off, 100 * KIB).await.unwrap());
        off += 100 * KIB;
    }
    assert!(got == fx.expected(file), "wrong bytes served");
    assert!(store.stats().verify_failures > 0, "no corruption was seen");
}

#[tokio::test]
async fn a_source_that_keeps_sending_bad_bytes_gives_an_error_then_recovers() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 100 };
    let fx = raw_fixture(2, &[file]);
    let (config, holdoff) = manual_clock(StoreConfig::default());
    let store = fx.store(config);
    fx.blobs.corrupt.store(true, Ordering::SeqCst);
    let err = store.read(file, 0, 100).await.unwrap_err();
    assert!(matches!(err.cause(), StoreError::Verify { .. }), "{err}");
    assert!(err.to_string().contains("not served"), "{err}");
    assert_eq!(fx.blobs.count(), VERIFY_ATTEMPTS as usize);
    fx.blobs.corrupt.store(false, Ordering::SeqCst);
    // Right after a failure the span fails at once (the kernel retries a failed read straight away, and
    // that must not cost a second deadline); then it is tried afresh.
    let err = store.read(file, 0, 100).await.unwrap_err();
    assert!(matches!(err, StoreError::Joined { .. }), "{err}");
    assert!(matches!(err.cause(), StoreError::Verify { .. }), "the typed error is kept: {err}");
    assert_eq!(fx.blobs.count(), VERIFY_ATTEMPTS as usize, "no new fetch within the hold-off");
    assert_eq!(store.stats().failing_spans, 1, "the failing span is counted while it is held off");
    holdoff.pass();
    assert_eq!(store.stats().failing_spans, 0, "and no more once the hold-off is over");
    assert_eq!(store.read(file, 0, 100).await.unwrap(), fx.expected(file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_answers_fails_reads_within_the_deadline_then_recovers() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: 3 * SPAN };
    let fx = raw_fixture(3, &[file]);
    let deadline = Duration::from_millis(400);
    let (config, holdoff) =
        manual_clock(StoreConfig { read_timeout: deadline, readahead_spans: 0, ..StoreConfig::default() });
    let store = Arc::new(fx.store(config));
    fx.blobs.hang.send_replace(true);
    let started = Instant::now();
    let readers: Vec<_> = (0..16u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Readers arrive over 200 ms; each gets its answer within the deadline of its own read.
                tokio::time::sleep(Duration::from_millis(i * 12)).await;
                let asked = Instant::now();
                let result = store.read(file, (i % 3) * SPAN, 4096).await;
                (result, asked.elapsed())
            })
        })
        .collect();
    for r in readers {
        let (result, took) = r.await.unwrap();
        let err = result.unwrap_err();
        assert!(matches!(err.cause(), StoreError::Timeout { .. }), "{err}");
        // The deadline plus scheduling slack on a loaded 2-core machine (the source would hang forever).
        assert!(took < deadline + Duration::from_secs(1), "a read took {took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // The registry is back: once the hold-off is over, the next read works; no span remembers the failure.
    fx.blobs.hang.send_replace(false);
    holdoff.pass();
    for i in 0..3 {
        assert_eq!(store.read(file, i * SPAN, 4096).await.unwrap(), &fx.expected(file)[(i * SPAN) as usize..][..4096]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_answering_source_is_not_cut_off() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN };
    let fx = raw_fixture(1, &[file]);
    fx.blobs.set_delay(200);
    let store = fx.store(StoreConfig { read_timeout: Duration::from_secs(5), ..StoreConfig::default() });
    assert_eq!(store.read(file, 0, SPAN).await.unwrap(), fx.expected(file));
}
