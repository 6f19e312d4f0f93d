//! How a [`crate::ContentStore`] behaves ([`StoreConfig`]), its failure-policy constants, and the clock its
//! time-based policies read ([`Clock`]: the monotonic clock in use, a [`ManualClock`] in tests).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{lock, RemoteTier};

/// How a [`crate::ContentStore`] behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of decoded spans (and verified span prefixes with their compressed bytes) kept in memory,
    /// least recently used dropped first. Default 6 MiB: the kernel's page cache and the disk cache keep
    /// the rest, and a mount's memory stays bounded (with the fetches in flight and the mapped binary and
    /// index, under 32 MiB through a cold start; 8 MiB took a cold Python start past it on a fast link and
    /// made it no faster).
    pub memory_bytes: u64,
    /// Bytes that span fetches in flight may hold at once (compressed bytes and decode buffers); more
    /// fetches wait. Default 16 MiB.
    pub inflight_bytes: u64,
    /// The disk cache directory ([`crate::default_cache_dir`] is the usual choice); `None` (the default)
    /// keeps spans in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the disk cache in bytes. Default 10 GiB.
    pub cache_size: u64,
    /// Spans loaded ahead of a sequential reader (0 turns readahead off). Default 2.
    pub readahead_spans: usize,
    /// Spans [`crate::ContentStore::prefetch_all`] loads at once (at least 1). Default 1.
    pub prefetch_concurrency: usize,
    /// Spans [`crate::ContentStore::prefetch_spans`] (a startup profile) loads at once (at least 1).
    /// Default 8.
    pub profile_concurrency: usize,
    /// [`crate::ContentStore::warm_file`] loads every span of files up to this size as soon as they are
    /// opened, concurrently, instead of one span per read as the reader gets there (0 turns it off).
    /// Default 16 MiB.
    pub open_prefetch_max: u64,
    /// Smallest file [`crate::ContentStore::cached_file`] makes a local copy of: smaller files are served
    /// from the cached spans (and the page cache), so reading many small files does not cost a cache file
    /// (and a disk block) each. Default 64 KiB.
    pub passthrough_min: u64,
    /// Largest file [`crate::ContentStore::cached_file`] assembles while the caller waits; larger ones are
    /// assembled in the background. Default 64 MiB.
    pub passthrough_inline_max: u64,
    /// How long one read may take, fetches and their retries included, before it fails (a FUSE reader
    /// gets `EIO`). Default 30 s.
    pub read_timeout: Duration,
    /// A second cache tier shared by many machines, asked after the disk cache and filled with what the
    /// source served (see [`crate::RemoteSpanCache`]). Default none.
    pub remote: Option<RemoteTier>,
    /// How long one request to the remote tier may take before the store goes to the source. Default 2 s.
    pub remote_timeout: Duration,
    /// The clock of the failure hold-off and of the remote tier's backoff. Default [`SystemClock`]; tests
    /// drive a [`ManualClock`] instead of waiting.
    pub clock: Arc<dyn Clock>,
}

/// Fetches of one span, the first included, before bytes that fail verification make the read fail.
pub const VERIFY_ATTEMPTS: u32 = 3;

/// How long a span whose lookup failed keeps failing at once: 1 s, or half the read deadline if that
/// is shorter. See the docs of [`crate::ContentStore`]'s module.
pub fn failure_holdoff(read_timeout: Duration) -> Duration {
    (read_timeout / 2).min(Duration::from_secs(1))
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_bytes: 6 << 20,
            inflight_bytes: 16 << 20,
            cache_dir: None,
            cache_size: 10 << 30,
            readahead_spans: 2,
            prefetch_concurrency: 1,
            profile_concurrency: 8,
            open_prefetch_max: 16 << 20,
            passthrough_min: 64 << 10,
            passthrough_inline_max: 64 << 20,
            read_timeout: Duration::from_secs(30),
            remote: None,
            remote_timeout: Duration::from_secs(2),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Where the store's time-based policies (failure hold-off, tier backoff) read the time. Deadlines of
/// reads are tokio timers and do not use it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant; never goes backwards.
    fn now(&self) -> Instant;
}

/// The monotonic clock of the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when [`ManualClock::advance`] is called: lets a test step past a hold-off
/// instead of sleeping through it.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> ManualClock {
        ManualClock { start: Instant::now(), elapsed: Mutex::new(Duration::ZERO) }
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        *lock(&self.elapsed) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *lock(&self.elapsed)
    }
}
