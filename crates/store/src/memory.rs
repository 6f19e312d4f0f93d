//! The store's in-memory tier: a bounded LRU of decoded spans by span index ([`Lru`]), asked before the
//! disk cache.

use std::collections::{BTreeMap, HashMap};

use crate::SpanBytes;

/// A bounded LRU of decoded spans by span index.
#[derive(Default)]
pub(crate) struct Lru {
    /// Each span with the tick of its last use.
    map: HashMap<usize, (SpanBytes, u64)>,
    /// Span indexes by the tick of their last use: the first is the least recently used.
    order: BTreeMap<u64, usize>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    pub fn get(&mut self, k: usize) -> Option<SpanBytes> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, used) = self.map.get_mut(&k)?;
        self.order.remove(used);
        self.order.insert(tick, k);
        *used = tick;
        Some(bytes.clone())
    }

    pub fn contains(&self, k: usize) -> bool {
        self.map.contains_key(&k)
    }

    /// Keeps `v` as span `k`, then drops the least recently used other spans until at most `limit` bytes
    /// are held (`k` stays even when it alone is larger).
    pub fn put(&mut self, k: usize, v: SpanBytes, limit: u64) {
        self.tick += 1;
        self.bytes += v.len() as u64;
        if let Some((old, used)) = self.map.insert(k, (v, self.tick)) {
            self.bytes -= old.len() as u64;
            self.order.remove(&used);
        }
        self.order.insert(self.tick, k);
        while self.bytes > limit && self.map.len() > 1 {
            // `k` was used last: the first entry is another span.
            let Some((_, victim)) = self.order.pop_first() else { break };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(len: usize) -> SpanBytes {
        vec![0u8; len].into()
    }

    #[test]
    fn the_least_recently_used_span_goes_first_and_the_new_one_stays() {
        let mut lru = Lru::default();
        lru.put(1, span(10), 30);
        lru.put(2, span(10), 30);
        lru.put(3, span(10), 30);
        assert!(lru.get(1).is_some());
        lru.put(4, span(10), 30);
        assert!(!lru.contains(2), "span 2 was the least recently used");
        assert!(lru.contains(1) && lru.contains(3) && lru.contains(4));
        // A replaced span is counted once.
        lru.put(4, span(10), 30);
        assert_eq!(lru.bytes, 30);
        // A span larger than the bound is kept alone.
        lru.put(5, span(100), 30);
        assert_eq!((lru.map.len(), lru.order.len()), (1, 1));
        assert!(lru.contains(5));
    }
}
