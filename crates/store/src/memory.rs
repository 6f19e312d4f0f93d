//! The store's in-memory tier: a bounded LRU of decoded spans by span index ([`Lru`]), asked before the
//! disk cache.

use std::collections::HashMap;

use clip_format::SpanId;

use crate::SpanBytes;

/// A bounded LRU of decoded spans by span index.
#[derive(Default)]
pub(crate) struct Lru {
    map: HashMap<SpanId, (SpanBytes, u64)>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    pub fn get(&mut self, k: SpanId) -> Option<SpanBytes> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&k).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    pub fn contains(&self, k: SpanId) -> bool {
        self.map.contains_key(&k)
    }

    pub fn put(&mut self, k: SpanId, v: SpanBytes, limit: u64) {
        self.tick += 1;
        self.bytes += v.len() as u64;
        if let Some((old, _)) = self.map.insert(k, (v, self.tick)) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > limit && self.map.len() > 1 {
            let Some((&victim, _)) = self.map.iter().filter(|(&key, _)| key != k).min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.len() as u64;
            }
        }
    }
}
