//! Counters of a [`crate::ContentStore`]: cheap atomics on the read path, copied into a [`StoreStats`]
//! snapshot for summaries, Prometheus metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clip_format::LayerIndex;

/// Upper bounds (inclusive, in milliseconds) of the fetch latency buckets; a last, unbounded bucket follows.
pub const FETCH_LATENCY_BOUNDS_MS: [u64; 7] = [1, 5, 25, 100, 500, 2_500, 10_000];

/// A histogram of blob fetch latencies with fixed buckets ([`FETCH_LATENCY_BOUNDS_MS`]), in the shape a
/// Prometheus histogram needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Fetches per bucket (not cumulative): `counts[i]` took at most `FETCH_LATENCY_BOUNDS_MS[i]` ms and
    /// more than the bound before it; the last element counts the slower ones.
    pub counts: [u64; FETCH_LATENCY_BOUNDS_MS.len() + 1],
    /// Sum of all latencies, in microseconds.
    pub sum_micros: u64,
    /// Number of fetches timed.
    pub count: u64,
}

impl LatencyHistogram {
    /// `(upper bound in ms, fetches at most that slow)`, cumulative as Prometheus expects; `None` is `+Inf`.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut acc = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                acc += n;
                (FETCH_LATENCY_BOUNDS_MS.get(i).copied(), acc)
            })
            .collect()
    }
}

/// Counters of a store so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Spans fetched from the blob source (misses of both caches).
    pub spans_fetched: u64,
    /// Compressed bytes fetched from the blob source.
    pub bytes_fetched: u64,
    /// Compressed bytes fetched, per layer (index = layer).
    pub layer_bytes_fetched: Vec<u64>,
    /// Span lookups answered from memory.
    pub memory_hits: u64,
    /// Span lookups answered from the disk cache.
    pub disk_hits: u64,
    /// Span lookups that went to the disk cache's files (hit or not).
    pub disk_lookups: u64,
    /// Fetched spans that failed verification (never served).
    pub verify_failures: u64,
    /// Disk cache files that failed verification (deleted and fetched again).
    pub disk_verify_failures: u64,
    /// Fetches that failed (source errors, undecodable or unverifiable bytes).
    pub fetch_errors: u64,
    /// Fetches from the blob source running now.
    pub inflight_fetches: u64,
    /// Span loads started ahead of reads (readahead, the spans of an opened file and of what it loads) not
    /// done yet, queued or fetching.
    pub loads_ahead: u64,
    /// Spans whose last load failed less than the hold-off ago: reads of them fail at once until it ends.
    pub failing_spans: u64,
    /// Spans requested by readahead of sequential reads.
    pub readahead_spans: u64,
    /// Spans requested because a file covering them was opened ([`crate::ContentStore::warm_file`]).
    pub open_prefetch_spans: u64,
    /// Files whose local copies were read into the page cache ahead of a start ([`crate::ContentStore::page_in`]).
    pub files_paged_in: u64,
    /// Spans loaded by prefetch.
    pub prefetched_spans: u64,
    /// Pieces of spans loaded from a profile's resume points and verified.
    pub pieces_loaded: u64,
    /// Resume points not used: they did not fit the index, or their bytes did not give its tree root.
    pub pieces_rejected: u64,
    /// Files removed from the disk cache to keep it under its bound (the disk cache's figures, here and
    /// below, are of every store sharing it: `DiskCache::shared`).
    pub evictions: u64,
    /// Bytes those files held.
    pub bytes_evicted: u64,
    /// Bytes in the disk cache as this process last knew it (other processes sharing it may have added some).
    pub disk_cache_bytes: u64,
    /// Writes to the disk cache that failed (the bytes were still served).
    pub disk_write_failures: u64,
    /// Span lookups answered by the remote tier (verified).
    pub tier_hits: u64,
    /// Span lookups the remote tier did not hold.
    pub tier_misses: u64,
    /// Remote tier requests that failed or timed out (the source was used).
    pub tier_errors: u64,
    /// Remote tier objects that failed verification (ignored; the source was used).
    pub tier_rejected: u64,
    /// Spans published to the remote tier.
    pub tier_puts: u64,
    /// Latency of range reads from the blob source.
    pub fetch_latency: LatencyHistogram,
}

/// The live counters behind [`StoreStats`].
pub(crate) struct Counters {
    pub spans_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub layer_bytes_fetched: Vec<AtomicU64>,
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_lookups: AtomicU64,
    pub verify_failures: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub inflight_fetches: AtomicU64,
    pub loads_ahead: AtomicU64,
    pub readahead_spans: AtomicU64,
    pub open_prefetch_spans: AtomicU64,
    pub files_paged_in: AtomicU64,
    pub prefetched_spans: AtomicU64,
    pub pieces_loaded: AtomicU64,
    pub pieces_rejected: AtomicU64,
    pub tier_hits: AtomicU64,
    pub tier_misses: AtomicU64,
    /// Shared with background publishing tasks.
    pub tier_errors: Arc<AtomicU64>,
    pub tier_rejected: AtomicU64,
    /// Shared with background publishing tasks.
    pub tier_puts: Arc<AtomicU64>,
    latency: [AtomicU64; FETCH_LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
}

impl Counters {
    pub fn new(layers: usize) -> Counters {
        Counters {
            spans_fetched: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            layer_bytes_fetched: (0..layers).map(|_| AtomicU64::new(0)).collect(),
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            disk_lookups: AtomicU64::new(0),
            verify_failures: AtomicU64::new(0),
            fetch_errors: AtomicU64::new(0),
            inflight_fetches: AtomicU64::new(0),
            loads_ahead: AtomicU64::new(0),
            readahead_spans: AtomicU64::new(0),
            open_prefetch_spans: AtomicU64::new(0),
            files_paged_in: AtomicU64::new(0),
            prefetched_spans: AtomicU64::new(0),
            pieces_loaded: AtomicU64::new(0),
            pieces_rejected: AtomicU64::new(0),
            tier_hits: AtomicU64::new(0),
            tier_misses: AtomicU64::new(0),
            tier_errors: Arc::default(),
            tier_rejected: AtomicU64::new(0),
            tier_puts: Arc::default(),
            latency: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a successful range read of `bytes` compressed bytes of `layer`.
    pub fn fetched(&self, layer: LayerIndex, bytes: u64) {
        Self::bump(&self.spans_fetched);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        if let Some(c) = self.layer_bytes_fetched.get(layer.index()) {
            c.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn latency(&self, took: Duration) {
        let ms = took.as_millis();
        let bucket =
            FETCH_LATENCY_BOUNDS_MS.iter().position(|&b| ms <= u128::from(b)).unwrap_or(FETCH_LATENCY_BOUNDS_MS.len());
        Self::bump(&self.latency[bucket]);
        self.latency_sum_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Self::bump(&self.latency_count);
    }

    /// A snapshot; the disk cache fields are filled in by the store.
    pub fn snapshot(&self) -> StoreStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counts = [0; FETCH_LATENCY_BOUNDS_MS.len() + 1];
        for (out, c) in counts.iter_mut().zip(&self.latency) {
            *out = load(c);
        }
        StoreStats {
            spans_fetched: load(&self.spans_fetched),
            bytes_fetched: load(&self.bytes_fetched),
            layer_bytes_fetched: self.layer_bytes_fetched.iter().map(load).collect(),
            memory_hits: load(&self.memory_hits),
            disk_hits: load(&self.disk_hits),
            disk_lookups: load(&self.disk_lookups),
            verify_failures: load(&self.verify_failures),
            fetch_errors: load(&self.fetch_errors),
            inflight_fetches: load(&self.inflight_fetches),
            loads_ahead: load(&self.loads_ahead),
            readahead_spans: load(&self.readahead_spans),
            open_prefetch_spans: load(&self.open_prefetch_spans),
            files_paged_in: load(&self.files_paged_in),
            prefetched_spans: load(&self.prefetched_spans),
            pieces_loaded: load(&self.pieces_loaded),
            pieces_rejected: load(&self.pieces_rejected),
            tier_hits: load(&self.tier_hits),
            tier_misses: load(&self.tier_misses),
            tier_errors: load(&self.tier_errors),
            tier_rejected: load(&self.tier_rejected),
            tier_puts: load(&self.tier_puts),
            fetch_latency: LatencyHistogram {
                counts,
                sum_micros: load(&self.latency_sum_micros),
                count: load(&self.latency_count),
            },
            ..StoreStats::default()
        }
    }
}

/// Counts one in a gauge of the counters `owner` holds from [`Gauged::start`] until dropped: also when the
/// future holding it is cancelled, and from before a spawned task holding it first runs. The owner is a borrow
/// of the counters, or an `Arc` of what holds them for a task that outlives the caller.
pub(crate) struct Gauged<O> {
    owner: O,
    gauge: fn(&O) -> &AtomicU64,
}

impl<O> Gauged<O> {
    pub fn start(owner: O, gauge: fn(&O) -> &AtomicU64) -> Gauged<O> {
        gauge(&owner).fetch_add(1, Ordering::Relaxed);
        Gauged { owner, gauge }
    }
}

impl<O> Drop for Gauged<O> {
    fn drop(&mut self) {
        (self.gauge)(&self.owner).fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets() {
        let c = Counters::new(1);
        c.latency(Duration::from_micros(300));
        c.latency(Duration::from_millis(5));
        c.latency(Duration::from_millis(6));
        c.latency(Duration::from_secs(60));
        let h = c.snapshot().fetch_latency;
        assert_eq!(h.count, 4);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[FETCH_LATENCY_BOUNDS_MS.len()], 1);
        let cum = h.cumulative();
        assert_eq!(cum.last(), Some(&(None, 4)));
        assert_eq!(cum[1], (Some(5), 2));
        assert_eq!(h.sum_micros, 300 + 5_000 + 6_000 + 60_000_000);
    }

    #[test]
    fn per_layer_bytes() {
        let c = Counters::new(2);
        c.fetched(LayerIndex(1), 10);
        c.fetched(LayerIndex(0), 3);
        c.fetched(LayerIndex(7), 5); // unknown layer: counted in the total only
        let s = c.snapshot();
        assert_eq!(s.layer_bytes_fetched, vec![3, 10]);
        assert_eq!((s.spans_fetched, s.bytes_fetched), (3, 18));
    }
}
