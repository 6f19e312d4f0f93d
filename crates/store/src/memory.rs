//! The store's in-memory tier: a bounded LRU of decoded spans by span index ([`Lru`]), asked before the
//! disk cache. An entry is a whole span, or a verified prefix of one ([`Held`]: what a partial fetch
//! decoded, with the compressed bytes it came from, so the rest of the span can be fetched on from there).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use clip_format::SpanId;

use crate::partial::Need;
use crate::SpanBytes;

/// Verified compressed bytes of a span's prefix: the layer's bytes from where a fetch of the span starts.
/// Empty when they stayed in the disk cache (a remount served the decoded prefix file alone): a load that
/// needs more of the span reads and checks them there first.
#[derive(Clone)]
pub(crate) struct Held {
    pub compressed: Bytes,
}

/// A span in memory: its decoded bytes (all of them, or a prefix with `held` set).
#[derive(Clone)]
pub(crate) struct Entry {
    pub decoded: SpanBytes,
    pub held: Option<Held>,
}

impl Entry {
    fn cost(&self) -> u64 {
        (self.decoded.len() + self.held.as_ref().map_or(0, |h| h.compressed.len())) as u64
    }
}

/// A bounded LRU of decoded spans by span index.
#[derive(Default)]
pub(crate) struct Lru {
    /// Each span with the tick of its last use.
    map: HashMap<SpanId, (Entry, u64)>,
    /// Span indexes by the tick of their last use: the first is the least recently used.
    order: BTreeMap<u64, SpanId>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    pub fn get(&mut self, k: SpanId) -> Option<Entry> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, used) = self.map.get_mut(&k)?;
        self.order.remove(used);
        self.order.insert(tick, k);
        *used = tick;
        Some(bytes.clone())
    }

    /// Whether span `k` is held, as much of it as `need` asks for.
    pub fn contains(&self, k: SpanId, need: Need) -> bool {
        self.map.get(&k).is_some_and(|(e, _)| match need {
            Need::Whole => e.held.is_none(),
            Need::Upto(n) => e.decoded.len() as u64 >= n,
        })
    }

    /// Keeps `v` as span `k`, then drops the least recently used other spans until at most `limit` bytes
    /// are held (`k` stays even when it alone is larger).
    pub fn put(&mut self, k: SpanId, v: Entry, limit: u64) {
        self.tick += 1;
        self.bytes += v.cost();
        if let Some((old, used)) = self.map.insert(k, (v, self.tick)) {
            self.bytes -= old.cost();
            self.order.remove(&used);
        }
        self.order.insert(self.tick, k);
        while self.bytes > limit && self.map.len() > 1 {
            // `k` was used last: the first entry is another span.
            let Some((_, victim)) = self.order.pop_first() else { break };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.cost();
            }
        }
    }
}

/// Bounds the bytes that fetches in flight hold at once (compressed bytes and the decode buffer), so many concurrent loads (a file's spans on open, readahead, a profile) cannot add up
/// past it: a fetch waits for its share before it starts. One fetch larger than the whole budget takes
/// all of it.
pub(crate) struct Budget {
    permits: tokio::sync::Semaphore,
    /// The whole budget, in KiB.
    total: u32,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Budget {
        let total =
            u32::try_from(bytes / 1024).unwrap_or(u32::MAX).clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u32);
        Budget { permits: tokio::sync::Semaphore::new(total as usize), total }
    }

    /// Waits until `bytes` of the budget are free and holds them until the permit is dropped.
    pub async fn take(&self, bytes: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let want = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.total);
        self.permits.acquire_many(want).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(len: usize) -> Entry {
        Entry { decoded: vec![0u8; len].into(), held: None }
    }

    #[test]
    fn the_least_recently_used_span_goes_first_and_the_new_one_stays() {
        let mut lru = Lru::default();
        lru.put(SpanId(1), span(10), 30);
        lru.put(SpanId(2), span(10), 30);
        lru.put(SpanId(3), span(10), 30);
        assert!(lru.get(SpanId(1)).is_some());
        lru.put(SpanId(4), span(10), 30);
        assert!(!lru.contains(SpanId(2), Need::Upto(0)), "span 2 was the least recently used");
        assert!([1, 3, 4].iter().all(|&i| lru.contains(SpanId(i), Need::Whole)));
        // A replaced span is counted once.
        lru.put(SpanId(4), span(10), 30);
        assert_eq!(lru.bytes, 30);
        // A span larger than the bound is kept alone.
        lru.put(SpanId(5), span(100), 30);
        assert_eq!((lru.map.len(), lru.order.len()), (1, 1));
        assert!(lru.contains(SpanId(5), Need::Whole));
        // A prefix counts its compressed bytes too.
        let held = Held { compressed: Bytes::from(vec![0u8; 7]) };
        lru.put(SpanId(6), Entry { decoded: vec![0u8; 3].into(), held: Some(held) }, 1000);
        assert_eq!(lru.bytes, 110);
        assert!(lru.contains(SpanId(6), Need::Upto(3)) && !lru.contains(SpanId(6), Need::Upto(4)));
        assert!(!lru.contains(SpanId(6), Need::Whole), "a prefix is not the whole span");
    }
}
