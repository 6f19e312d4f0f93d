//! The optional remote tier ([`RemoteSpanCache`]): a cache of decoded spans shared by many machines (an
//! S3 bucket, say), asked after the disk cache misses and before the blob source; spans fetched from the
//! source are published to it in the background. The tier is only ever an optimisation: its bytes are
//! verified like any other, and when it fails or is slow the store goes to the source, warning once in a
//! while ([`TierHealth`]) and never failing a read because of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tracing::{debug, warn};

use crate::StoreError;

/// A shared cache of decoded spans, keyed by the sha256 of their bytes.
pub trait RemoteSpanCache: Send + Sync {
    /// The decoded bytes of the span with sha256 `digest` (`len` bytes long), or `None` when the tier does
    /// not hold it. The store verifies what comes back.
    fn get(&self, digest: &[u8; 32], len: u64) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;
    /// Stores the verified bytes of the span with sha256 `digest`.
    fn put(&self, digest: &[u8; 32], bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Where the tier is, for logs (never credentials).
    fn describe(&self) -> String;
}

/// A remote tier as [`crate::StoreConfig`] holds it: shared, and printable.
#[derive(Clone)]
pub struct RemoteTier(pub Arc<dyn RemoteSpanCache>);

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteTier({})", self.0.describe())
    }
}

/// How long the tier is skipped after it failed.
pub const TIER_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two warnings about the tier failing.
pub const TIER_WARN_EVERY: Duration = Duration::from_secs(300);

/// Failures of the tier: skips it for [`TIER_BACKOFF`] after one, and rate-limits the warnings.
pub(crate) struct TierHealth {
    epoch: Instant,
    /// Milliseconds since `epoch` until which the tier is skipped.
    down_until_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one (0 = never warned).
    warned_ms: AtomicU64,
}

impl TierHealth {
    pub fn new() -> TierHealth {
        TierHealth { epoch: Instant::now(), down_until_ms: AtomicU64::new(0), warned_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the tier should be asked now.
    pub fn usable(&self) -> bool {
        self.now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Records a failure of `op` on `tier`: backs off, and warns unless it warned recently.
    pub fn failed(&self, tier: &str, op: &'static str, error: &StoreError) {
        let now = self.now_ms();
        self.down_until_ms.store(now + TIER_BACKOFF.as_millis() as u64, Ordering::Relaxed);
        let last = self.warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + TIER_WARN_EVERY.as_millis() as u64;
        if due && self.warned_ms.compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            warn!(%tier, op, error = error as &dyn std::error::Error, "content cache tier unavailable; reading from the source instead");
        } else {
            debug!(%tier, op, error = error as &dyn std::error::Error, "content cache tier failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_backs_off_and_warns_once() {
        let h = TierHealth::new();
        assert!(h.usable());
        let e = StoreError::Tier { digest: "ab".into(), reason: "down".into() };
        h.failed("t", "get", &e);
        assert!(!h.usable());
        let first = h.warned_ms.load(Ordering::Relaxed);
        assert!(first > 0);
        h.failed("t", "get", &e);
        assert_eq!(h.warned_ms.load(Ordering::Relaxed), first, "a second failure soon after does not warn again");
    }
}
