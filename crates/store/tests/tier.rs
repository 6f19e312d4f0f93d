//! The remote tier on the read path: asked after the disk cache, filled in the background with what the
//! source served, verified, and skipped (never failing a read) when it breaks.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clip_format::{DataRef, Digest, LayerIndex};
use clip_store::{RemoteSpanCache, RemoteTier, StoreConfig, StoreError};
use common::{cached, eventually, raw_fixture, KIB};
use futures::future::BoxFuture;

const SPAN: u64 = 64 * KIB;

/// An in-memory tier that can be switched off (every request fails).
#[derive(Default)]
struct MemTier {
    objects: Mutex<HashMap<Digest, Bytes>>,
    down: AtomicBool,
}

impl MemTier {
    fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }
}

impl RemoteSpanCache for MemTier {
    fn get(&self, digest: &Digest, _len: u64) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let digest = *digest;
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Tier { digest, reason: "down".into() });
            }
            Ok(self.objects.lock().unwrap().get(&digest).cloned())
        })
    }

    fn put(&self, digest: &Digest, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let digest = *digest;
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Tier { digest, reason: "down".into() });
            }
            self.objects.lock().unwrap().insert(digest, bytes);
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

fn with_tier(dir: &std::path::Path, tier: &Arc<MemTier>) -> StoreConfig {
    StoreConfig { readahead_spans: 0, remote: Some(RemoteTier(tier.clone())), ..cached(dir) }
}

#[tokio::test]
async fn a_second_node_reads_from_the_tier_without_the_source() {
    let file = DataRef { layer: LayerIndex(0), offset: SPAN + 10, size: 2 * SPAN };
    let tier = Arc::new(MemTier::default());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let fx = raw_fixture(6, &[file]);
    let a = fx.store(with_tier(dir_a.path(), &tier));
    assert_eq!(a.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    eventually("spans published", || a.stats().tier_puts == 3).await;
    assert_eq!((a.stats().tier_misses, tier.len()), (3, 3));

    let fx_b = raw_fixture(6, &[file]);
    let b = fx_b.store(with_tier(dir_b.path(), &tier));
    assert_eq!(b.read(file, 0, file.size).await.unwrap(), fx_b.expected(file));
    assert_eq!(fx_b.blobs.count(), 0, "node B fetched from the source");
    let s = b.stats();
    assert_eq!((s.tier_hits, s.spans_fetched, s.tier_puts), (3, 0, 0));
    // Tier hits land in the disk cache: a fresh store over the same directory needs no tier.
    let c = fx_b.store(StoreConfig { readahead_spans: 0, ..cached(dir_b.path()) });
    assert_eq!(c.read(file, 0, file.size).await.unwrap(), fx_b.expected(file));
    assert_eq!(c.stats().disk_hits, 3);
}

#[tokio::test]
async fn a_corrupt_tier_object_is_ignored_and_counted() {
    let file = DataRef { layer: LayerIndex(0), offset: 0, size: SPAN };
    let tier = Arc::new(MemTier::default());
    let dir = tempfile::tempdir().unwrap();
    let fx = raw_fixture(2, &[file]);
    let digest = fx.archive.span(fx.span_index(0, 0)).unwrap().digest;
    let mut bad = fx.expected(file).to_vec();
    bad[7] ^= 1;
    tier.objects.lock().unwrap().insert(digest, Bytes::from(bad));

    let store = fx.store(with_tier(dir.path(), &tier));
    assert_eq!(store.read(file, 0, file.size).await.unwrap(), fx.expected(file));
    assert_eq!(fx.blobs.count(), 1);
    let s = store.stats();
    assert_eq!((s.tier_rejected, s.tier_hits, s.spans_fetched), (1, 0, 1));
}

#[tokio::test]
async fn a_tier_that_is_down_degrades_to_the_source() {
    let files: Vec<DataRef> = (0..4).map(|i| DataRef { layer: LayerIndex(0), offset: i * SPAN, size: SPAN }).collect();
    let tier = Arc::new(MemTier::default());
    tier.down.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let fx = raw_fixture(4, &files);
    let store = fx.store(with_tier(dir.path(), &tier));
    for f in &files {
        assert_eq!(store.read(*f, 0, f.size).await.unwrap(), fx.expected(*f));
    }
    let s = store.stats();
    assert_eq!(s.spans_fetched, 4);
    // The first failure backs the tier off: it is not asked again for every span.
    assert_eq!(s.tier_errors, 1);
    assert_eq!((s.tier_hits, s.tier_puts, tier.len()), (0, 0, 0));
}
