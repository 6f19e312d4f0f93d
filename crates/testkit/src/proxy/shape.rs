//! The shaped link: one byte-rate cap shared by every connection of a proxy, like a real link whose
//! bandwidth parallel downloads split between them.
//!
//! Bytes are paced by reservation: each send books the next free slot of the link (`len / rate` long)
//! and waits until that slot ends, so the cap holds exactly over any interval longer than one chunk and
//! concurrent senders interleave chunk by chunk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// A byte-rate cap shared by all connections of one proxy.
#[derive(Debug)]
pub(crate) struct Link {
    rate: Option<u64>,
    /// When the link is free again (the end of the last booked slot).
    free_at: Mutex<Instant>,
}

impl Link {
    /// A link of `rate` bytes per second (`None`: unlimited; `Some(0)` is taken as 1 byte/s).
    pub(crate) fn new(rate: Option<u64>) -> Self {
        Link { rate: rate.map(|r| r.max(1)), free_at: Mutex::new(Instant::now()) }
    }

    /// Waits until `len` more bytes may leave: books the next `len / rate` of link time and sleeps to its
    /// end. Returns at once on an unlimited link.
    pub(crate) fn pace(&self, len: usize) {
        let Some(rate) = self.rate else { return };
        let cost = Duration::from_secs_f64(len as f64 / rate as f64);
        let done = {
            let mut free_at = lock(&self.free_at);
            let start = (*free_at).max(Instant::now());
            *free_at = start + cost;
            *free_at
        };
        let now = Instant::now();
        if done > now {
            std::thread::sleep(done - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_link_does_not_wait() {
        let link = Link::new(None);
        let t = Instant::now();
        link.pace(100 << 20);
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn capped_link_takes_len_over_rate() {
        let link = Link::new(Some(1_000_000));
        let t = Instant::now();
        for _ in 0..20 {
            link.pace(10_000); // 200 kB at 1 MB/s: 200 ms
        }
        let elapsed = t.elapsed();
        assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn parallel_senders_share_the_cap() {
        let link = Link::new(Some(1_000_000));
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..10 {
                        link.pace(10_000);
                    }
                });
            }
        });
        // 2 × 100 kB at 1 MB/s together: 200 ms, not the 100 ms each would take alone.
        let elapsed = t.elapsed();
        assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
    }
}
