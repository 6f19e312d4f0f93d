//! The optional remote tier ([`RemoteSpanCache`]): a cache of decoded spans shared by many machines (an
//! S3 bucket, say), asked after the disk cache misses and before the blob source; spans fetched from the
//! source are published to it in the background. The tier is only ever an optimisation: its bytes are
//! verified like any other, and when it fails or is slow the store goes to the source, warning once in a
//! while ([`TierHealth`]) and never failing a read because of it. [`Tier`] is the store's use of it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clip_format::Digest;
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::fetch::verified;
use crate::stats::Counters;
use crate::{Clock, DiskCache, SpanBytes, StoreError};

/// A shared cache of decoded spans, keyed by the sha256 of their bytes.
pub trait RemoteSpanCache: Send + Sync {
    /// The decoded bytes of the span with sha256 `digest` (`len` bytes long), or `None` when the tier does
    /// not hold it. The store verifies what comes back.
    fn get(&self, digest: &Digest, len: u64) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;
    /// Stores the verified bytes of the span with sha256 `digest`.
    fn put(&self, digest: &Digest, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;
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
    clock: Arc<dyn Clock>,
    epoch: Instant,
    /// Milliseconds since `epoch` until which the tier is skipped.
    down_until_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one (0 = never warned).
    warned_ms: AtomicU64,
}

impl TierHealth {
    pub fn new(clock: Arc<dyn Clock>) -> TierHealth {
        let epoch = clock.now();
        TierHealth { clock, epoch, down_until_ms: AtomicU64::new(0), warned_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
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

/// The store's use of its remote tier: asks it (bounded by a timeout, its bytes verified), publishes
/// to it in the background, and skips it while it is failing.
pub(crate) struct Tier {
    tier: RemoteTier,
    timeout: Duration,
    health: Arc<TierHealth>,
}

impl Tier {
    /// `tier`, each request bounded by `timeout`, its backoff timed by `clock`.
    pub fn new(tier: RemoteTier, timeout: Duration, clock: Arc<dyn Clock>) -> Tier {
        Tier { tier, timeout, health: Arc::new(TierHealth::new(clock)) }
    }

    /// The span with sha256 `digest` (`len` bytes), verified and written to `disk`; `None` when the tier is
    /// backing off, does not hold the span, fails, or serves bad bytes.
    pub async fn get(
        &self,
        digest: &Digest,
        len: u64,
        disk: Option<Arc<DiskCache>>,
        counters: &Counters,
    ) -> Option<SpanBytes> {
        if !self.health.usable() {
            return None;
        }
        let bytes = match bounded(self.timeout, digest, self.tier.0.get(digest, len)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                Counters::bump(&counters.tier_misses);
                return None;
            }
            Err(error) => {
                Counters::bump(&counters.tier_errors);
                self.health.failed(&self.tier.0.describe(), "get", &error);
                return None;
            }
        };
        let expected = *digest;
        let checked =
            tokio::task::spawn_blocking(move || verified(&bytes, &expected, len, disk.as_ref())).await.ok()?;
        match checked {
            Ok(bytes) => {
                Counters::bump(&counters.tier_hits);
                Some(bytes)
            }
            Err(actual) => {
                Counters::bump(&counters.tier_rejected);
                warn!(tier = %self.tier.0.describe(), expected = %digest, actual = %actual,
                    "content cache tier object fails verification; ignored");
                None
            }
        }
    }

    /// Publishes verified `bytes` in the background on `runtime` (the reader does not wait).
    pub fn publish(&self, digest: Digest, bytes: &SpanBytes, runtime: &Handle, counters: &Counters) {
        if !self.health.usable() {
            return;
        }
        let bytes = Bytes::from_owner(bytes.clone());
        let (tier, timeout, health) = (self.tier.clone(), self.timeout, Arc::clone(&self.health));
        let (puts, errors) = (counters.tier_puts.clone(), counters.tier_errors.clone());
        runtime.spawn(async move {
            match bounded(timeout, &digest, tier.0.put(&digest, bytes)).await {
                Ok(()) => Counters::bump(&puts),
                Err(error) => {
                    Counters::bump(&errors);
                    health.failed(&tier.0.describe(), "put", &error);
                }
            }
        });
    }
}

/// `request` to the tier about span `digest`, failing with [`StoreError::Tier`] after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    digest: &Digest,
    request: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, request).await.unwrap_or_else(|_| {
        Err(StoreError::Tier { digest: *digest, reason: format!("no answer within {} s", timeout.as_secs_f64()) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn a_failure_backs_off_and_warns_once() {
        let clock = Arc::new(ManualClock::new());
        let h = TierHealth::new(clock.clone());
        assert!(h.usable());
        let e = StoreError::Tier { digest: Digest::of(b"ab"), reason: "down".into() };
        h.failed("t", "get", &e);
        assert!(!h.usable());
        let first = h.warned_ms.load(Ordering::Relaxed);
        assert!(first > 0);
        clock.advance(Duration::from_secs(1));
        h.failed("t", "get", &e);
        assert_eq!(h.warned_ms.load(Ordering::Relaxed), first, "a second failure soon after does not warn again");
        clock.advance(TIER_BACKOFF);
        assert!(h.usable(), "the tier is asked again after the backoff");
    }
}
