//! [`ContentStore`]: turns a read of (file, offset, len) into verified span bytes. A span is looked up in
//! a small in-memory LRU, then in the [`DiskCache`], and only then fetched: one range read of its
//! compressed bytes, decoded from its checkpoint and checked against the digest recorded at index time
//! before it is written to the disk cache or served. Concurrent requests for one span share one lookup.
//! With a remote tier ([`StoreConfig::remote`]) a disk miss asks the tier first (bounded by
//! [`StoreConfig::remote_timeout`], its bytes verified too), and spans fetched from the source are
//! published to it in the background; a failing tier only sends reads to the source.
//!
//! Failure policy: bytes that fail verification (or do not decode) are fetched again, up to
//! [`VERIFY_ATTEMPTS`] times in all, and never served. Every read has a deadline
//! ([`StoreConfig::read_timeout`]) covering the whole lookup, the source's retries included; past it the
//! read fails. A failed lookup leaves almost nothing behind: for [`failure_holdoff`] (at most 1 s)
//! further lookups of the span fail at once with the same error, because the kernel answers a failed
//! readahead by asking again for the same page straight away, and that retry must not wait out a second
//! deadline; after that the next read of the span starts afresh, so reads work again as soon as the
//! source does.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clip_codec::{CheckpointRef, SpanRef};
use clip_format::{
    Archive, Compression, Corruption, DataRef, Digest, FormatError, LayerIndex, SpanId, SpanSlice, SpanView,
};
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;
use tokio::sync::{Notify, OnceCell, Semaphore};
use tracing::{debug, info, warn};

use crate::memory::Lru;
use crate::remote::TierHealth;
use crate::schedule::Stream;
use crate::stats::{Counters, InFlight};
use crate::{lock, DiskCache, LayerBlobs, RemoteTier, StoreError, StoreStats};

/// Decoded, verified bytes of one span.
pub type SpanBytes = Arc<[u8]>;

/// The most a [`ContentStore::read`] reserves before any byte arrives.
const MAX_PREALLOC: u64 = 8 << 20;

/// How a [`ContentStore`] behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of decoded spans kept in memory (least recently used dropped first). Default 32 MiB.
    pub memory_bytes: u64,
    /// The disk cache directory ([`crate::default_cache_dir`] is the usual choice); `None` (the default)
    /// keeps spans in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the disk cache in bytes. Default 10 GiB.
    pub cache_size: u64,
    /// Spans loaded ahead of a sequential reader (0 turns readahead off). Default 2.
    pub readahead_spans: usize,
    /// Spans [`ContentStore::prefetch_all`] loads at once (at least 1). Default 1.
    pub prefetch_concurrency: usize,
    /// Spans [`ContentStore::prefetch_spans`] (a startup profile) loads at once (at least 1). Default 4.
    pub profile_concurrency: usize,
    /// [`ContentStore::warm_file`] loads every span of files up to this size as soon as they are opened,
    /// concurrently, instead of one span per read as the reader gets there (0 turns it off). Default 16 MiB.
    pub open_prefetch_max: u64,
    /// Largest file [`ContentStore::cached_file`] assembles while the caller waits; larger ones are
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
}

/// Fetches of one span, the first included, before bytes that fail verification make the read fail.
pub const VERIFY_ATTEMPTS: u32 = 3;

/// How long a span whose lookup failed keeps failing at once: 1 s, or half the read deadline if that
/// is shorter. See the module docs.
pub fn failure_holdoff(read_timeout: Duration) -> Duration {
    (read_timeout / 2).min(Duration::from_secs(1))
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_bytes: 32 << 20,
            cache_dir: None,
            cache_size: 10 << 30,
            readahead_spans: 2,
            prefetch_concurrency: 1,
            profile_concurrency: 4,
            open_prefetch_max: 16 << 20,
            passthrough_inline_max: 64 << 20,
            read_timeout: Duration::from_secs(30),
            remote: None,
            remote_timeout: Duration::from_secs(2),
        }
    }
}

/// Who wants a span: decides whether it is kept in memory and whether prefetch must wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A reader is waiting.
    Foreground,
    /// A sequential reader will want it soon.
    Readahead,
    /// Filling the disk cache; yields to the others.
    Prefetch,
}

/// One span lookup shared by everyone asking for it meanwhile; an error is shared as its message.
type Flight = Arc<OnceCell<Result<SpanBytes, String>>>;

/// Serves file bytes of one archive.
pub struct ContentStore {
    pub(crate) inner: Arc<Inner>,
}

/// The state of a store, shared with its background tasks.
pub(crate) struct Inner {
    pub archive: Arc<Archive>,
    blobs: Arc<dyn LayerBlobs>,
    pub config: StoreConfig,
    pub disk: Option<Arc<DiskCache>>,
    /// The runtime the store was made on, for background work started from non-runtime threads.
    pub runtime: Option<Handle>,
    memory: Mutex<Lru>,
    inflight: Mutex<HashMap<SpanId, Flight>>,
    /// Spans whose last lookup failed: when, and the error message (see [`failure_holdoff`]).
    failures: Mutex<HashMap<SpanId, (Instant, String)>>,
    pub counters: Counters,
    /// Readahead state per file.
    pub streams: Mutex<HashMap<DataRef, Stream>>,
    /// Foreground and readahead lookups that missed memory, running now; prefetch waits for zero.
    foreground: AtomicUsize,
    idle: Notify,
    pub prefetch_permits: Arc<Semaphore>,
    /// Keys of files being materialized in the background.
    pub materializing: Mutex<HashSet<[u8; 32]>>,
    /// Failures of the remote tier (backoff, rate-limited warnings).
    tier_health: Arc<TierHealth>,
    /// Layers read at least once (logged once each, at info).
    touched: Vec<std::sync::atomic::AtomicBool>,
}

impl ContentStore {
    /// A store over `archive`'s layers read from `blobs`. Opens the disk cache at `config.cache_dir`; if
    /// that fails, logs why and runs without one (use [`ContentStore::with_disk_cache`] to decide).
    pub fn new(archive: Arc<Archive>, blobs: Arc<dyn LayerBlobs>, config: StoreConfig) -> ContentStore {
        let disk = config.cache_dir.as_ref().and_then(|dir| match DiskCache::open(dir, config.cache_size) {
            Ok(cache) => Some(cache),
            Err(e) => {
                warn!(error = &e as &dyn std::error::Error, "running without a disk cache");
                None
            }
        });
        Self::with_disk_cache(archive, blobs, config, disk)
    }

    /// A store using `disk` as its disk cache (`config.cache_dir` and `cache_size` are ignored), e.g. one
    /// cache opened once and shared by the stores of several archives.
    pub fn with_disk_cache(
        archive: Arc<Archive>,
        blobs: Arc<dyn LayerBlobs>,
        config: StoreConfig,
        disk: Option<Arc<DiskCache>>,
    ) -> ContentStore {
        let layers = archive.meta().layers.len();
        let permits = config.prefetch_concurrency.max(1);
        ContentStore {
            inner: Arc::new(Inner {
                archive,
                blobs,
                config,
                disk,
                runtime: Handle::try_current().ok(),
                memory: Mutex::default(),
                inflight: Mutex::default(),
                failures: Mutex::default(),
                counters: Counters::new(layers),
                streams: Mutex::default(),
                foreground: AtomicUsize::new(0),
                idle: Notify::new(),
                prefetch_permits: Arc::new(Semaphore::new(permits)),
                materializing: Mutex::default(),
                tier_health: Arc::new(TierHealth::new()),
                touched: (0..layers).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
            }),
        }
    }

    /// The archive this store serves.
    pub fn archive(&self) -> &Arc<Archive> {
        &self.inner.archive
    }

    /// The disk cache, if the store has one.
    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.inner.disk.as_ref()
    }

    /// Counters so far.
    pub fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        if let Some(disk) = &self.inner.disk {
            let d = disk.stats();
            stats.disk_verify_failures = d.verify_failures;
            stats.evictions = d.evictions;
            stats.bytes_evicted = d.bytes_evicted;
            stats.disk_cache_bytes = d.bytes;
            stats.disk_write_failures = d.write_failures;
        }
        stats
    }

    /// Up to `len` bytes of the file at `data` starting at `offset` (fewer at the end of the file). A read
    /// that continues the previous read of the same file starts loading the spans after it. Fails with
    /// [`StoreError::Timeout`] when it takes longer than [`StoreConfig::read_timeout`].
    pub async fn read(&self, data: DataRef, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.read_timeout;
        let end = data.size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(Vec::new());
        }
        self.inner.note_layer_touched(data.layer);
        self.inner.readahead(data, offset, end);
        // Grown by the verified bytes as they come, not reserved up front from a size the index records.
        let mut out = Vec::with_capacity((end - offset).min(MAX_PREALLOC) as usize);
        for slice in self.inner.archive.file_spans(data, offset..end) {
            let SpanSlice { span, span_range, within } = slice?;
            let bytes = self.inner.span(data.layer, span, Priority::Foreground, deadline).await?;
            let short = Corruption::SpanGap { layer: data.layer, span, offset: span_range.start + within.end };
            let piece = bytes.get(within.start as usize..within.end as usize).ok_or(FormatError::from(short))?;
            out.extend_from_slice(piece);
        }
        Ok(out)
    }

    /// The verified bytes of span `index` (an index of the whole span table) of layer `layer`.
    pub async fn span(&self, layer: LayerIndex, index: SpanId) -> Result<SpanBytes, StoreError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.read_timeout;
        self.inner.span(layer, index, Priority::Foreground, deadline).await
    }
}

/// Counts a lookup as foreground until dropped; wakes prefetch when the last one ends.
struct Foreground<'a>(&'a Inner);

impl<'a> Foreground<'a> {
    fn enter(inner: &'a Inner) -> Foreground<'a> {
        inner.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(inner)
    }
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Inner {
    /// Logs, once per layer, that a read first reached it.
    fn note_layer_touched(&self, layer: LayerIndex) {
        // Every read passes here: a plain load keeps the flag's cache line shared once it is set.
        let first = self.touched.get(layer.index()).is_some_and(|t| {
            !t.load(std::sync::atomic::Ordering::Relaxed) && !t.swap(true, std::sync::atomic::Ordering::Relaxed)
        });
        if first {
            let digest = self.archive.meta().layers.get(layer.index()).map(|l| l.digest);
            info!(%layer, digest = ?digest, "layer first touched");
        }
    }

    /// Whether span `index` is in memory.
    pub fn in_memory(&self, index: SpanId) -> bool {
        lock(&self.memory).contains(index)
    }

    /// Waits until no foreground or readahead lookup is running.
    pub async fn foreground_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.foreground.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Span `index` of `layer`: from memory, else through the single flight for that span.
    /// A load this call starts gives up at `deadline` ([`StoreError::Timeout`], remembered for the
    /// hold-off like any failure); joining a load in flight waits for that load's own deadline, which is
    /// no later (it started earlier).
    pub async fn span(
        &self,
        layer: LayerIndex,
        index: SpanId,
        priority: Priority,
        deadline: tokio::time::Instant,
    ) -> Result<SpanBytes, StoreError> {
        if !self.archive.layer_spans(layer)?.contains(index) {
            return Err(StoreError::Layer {
                layer,
                media_type: String::new(),
                why: format!("span {index} is not one of its spans"),
            });
        }
        let keep = priority != Priority::Prefetch;
        if keep {
            if let Some(bytes) = lock(&self.memory).get(index) {
                Counters::bump(&self.counters.memory_hits);
                return Ok(bytes);
            }
        }
        if let Some(message) = self.recent_failure(index) {
            return Err(StoreError::Joined { layer, span: index, message });
        }
        let _foreground = keep.then(|| Foreground::enter(self));
        let flight = {
            let mut inflight = lock(&self.inflight);
            let flight = inflight.entry(index).or_default();
            // A flight is retired by whoever finishes it. Should a failed one ever linger, its error must
            // not stick to the span: start afresh.
            if flight.get().is_some_and(|result| result.is_err()) {
                *flight = Flight::default();
            }
            flight.clone()
        };
        let mut own_error = None;
        let timeout = self.config.read_timeout;
        let shared = flight
            .get_or_init(|| async {
                let loaded = tokio::time::timeout_at(deadline, self.load(layer, index))
                    .await
                    .unwrap_or(Err(StoreError::Timeout { layer, span: index, after: timeout }));
                loaded.map_err(|e| {
                    let message = crate::error_chain(&e);
                    own_error = Some(e);
                    message
                })
            })
            .await;
        let result = match shared {
            Ok(bytes) => Ok(bytes.clone()),
            Err(message) => Err(own_error.take().unwrap_or_else(|| StoreError::Joined {
                layer,
                span: index,
                message: message.clone(),
            })),
        };
        if let (Ok(bytes), true) = (&result, keep) {
            lock(&self.memory).put(index, bytes.clone(), self.config.memory_bytes);
        }
        // The first finisher retires the flight; later arrivals find the bytes in memory or on disk, or
        // try again after an error (and the hold-off).
        let mut inflight = lock(&self.inflight);
        if inflight.get(&index).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&index);
            let mut failures = lock(&self.failures);
            match shared {
                Ok(_) => drop(failures.remove(&index)),
                Err(message) => {
                    let now = Instant::now();
                    let holdoff = failure_holdoff(self.config.read_timeout);
                    failures.retain(|_, (at, _)| now.duration_since(*at) < holdoff);
                    failures.insert(index, (now, message.clone()));
                }
            }
        }
        result
    }

    /// The error of the span's last lookup, if it failed less than [`failure_holdoff`] ago.
    fn recent_failure(&self, index: SpanId) -> Option<String> {
        let mut failures = lock(&self.failures);
        let (at, message) = failures.get(&index)?;
        if at.elapsed() < failure_holdoff(self.config.read_timeout) {
            return Some(message.clone());
        }
        failures.remove(&index);
        None
    }

    /// The disk cache, else a fetch.
    async fn load(&self, layer: LayerIndex, index: SpanId) -> Result<SpanBytes, StoreError> {
        let span = self.archive.span(index)?;
        let out = self.archive.span_range(layer, index)?;
        if let Some(disk) = &self.disk {
            let (disk, digest, len) = (Arc::clone(disk), span.digest, out.end - out.start);
            let hit = tokio::task::spawn_blocking(move || disk.get(digest.as_bytes(), len))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?;
            if let Some(bytes) = hit {
                Counters::bump(&self.counters.disk_hits);
                return Ok(bytes.into());
            }
        }
        let len = out.end - out.start;
        if let Some(bytes) = self.tier_get(span.digest.as_bytes(), len).await {
            return Ok(bytes);
        }
        let bytes =
            self.fetch(layer, index, span, out).await.inspect_err(|_| Counters::bump(&self.counters.fetch_errors))?;
        self.publish(*span.digest.as_bytes(), &bytes);
        Ok(bytes)
    }

    /// The span with sha256 `digest` from the remote tier, verified and written to the disk cache; `None`
    /// when there is no tier, it is backing off, does not hold the span, fails, or serves bad bytes.
    async fn tier_get(&self, digest: &[u8; 32], len: u64) -> Option<SpanBytes> {
        let tier = self.config.remote.as_ref()?;
        if !self.tier_health.usable() {
            return None;
        }
        let timeout = self.config.remote_timeout;
        let got = tokio::time::timeout(timeout, tier.0.get(digest, len)).await.unwrap_or_else(|_| {
            Err(StoreError::Tier {
                digest: hex::encode(digest),
                reason: format!("no answer within {} s", timeout.as_secs_f64()),
            })
        });
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                Counters::bump(&self.counters.tier_misses);
                return None;
            }
            Err(error) => {
                Counters::bump(&self.counters.tier_errors);
                self.tier_health.failed(&tier.0.describe(), "get", &error);
                return None;
            }
        };
        let (disk, digest) = (self.disk.clone(), *digest);
        let verified = tokio::task::spawn_blocking(move || {
            let actual: [u8; 32] = Sha256::digest(&bytes).into();
            if bytes.len() as u64 != len || actual != digest {
                return Err(actual);
            }
            if let Some(disk) = disk {
                disk.put(&digest, &bytes);
            }
            Ok(SpanBytes::from(&bytes[..]))
        })
        .await
        .ok()?;
        match verified {
            Ok(bytes) => {
                Counters::bump(&self.counters.tier_hits);
                Some(bytes)
            }
            Err(actual) => {
                Counters::bump(&self.counters.tier_rejected);
                warn!(tier = %tier.0.describe(), expected = %hex::encode(digest), actual = %hex::encode(actual),
                    "content cache tier object fails verification; ignored");
                None
            }
        }
    }

    /// Publishes verified `bytes` to the remote tier in the background (the reader does not wait).
    fn publish(&self, digest: [u8; 32], bytes: &SpanBytes) {
        let Some(tier) = self.config.remote.clone() else { return };
        if !self.tier_health.usable() {
            return;
        }
        let Some(runtime) = Handle::try_current().ok().or_else(|| self.runtime.clone()) else { return };
        let bytes = bytes::Bytes::from_owner(bytes.clone());
        let timeout = self.config.remote_timeout;
        let (health, puts, errors) =
            (self.tier_health.clone(), self.counters.tier_puts.clone(), self.counters.tier_errors.clone());
        runtime.spawn(async move {
            let put = tokio::time::timeout(timeout, tier.0.put(&digest, bytes)).await.unwrap_or_else(|_| {
                Err(StoreError::Tier {
                    digest: hex::encode(digest),
                    reason: format!("no answer within {} s", timeout.as_secs_f64()),
                })
            });
            match put {
                Ok(()) => Counters::bump(&puts),
                Err(error) => {
                    Counters::bump(&errors);
                    health.failed(&tier.0.describe(), "put", &error);
                }
            }
        });
    }

    /// Fetches, decodes and verifies one span, and writes it to the disk cache.
    async fn fetch(
        &self,
        layer: LayerIndex,
        index: SpanId,
        span: SpanView,
        out: Range<u64>,
    ) -> Result<SpanBytes, StoreError> {
        let a = &self.archive;
        let meta = a.meta().layers.get(layer.index()).ok_or_else(|| StoreError::Layer {
            layer,
            media_type: String::new(),
            why: "no such layer in the index".into(),
        })?;
        let last = a.layer_spans(layer)?.last();
        let span_ref =
            |s: SpanView, len: u64| SpanRef { out_offset: s.out_offset, in_offset: s.in_offset, bits: s.bits, len };
        let next = if Some(index) < last { Some(span_ref(a.span(index.next())?, 0)) } else { None };
        let codec = meta.compression;
        let len = out.end - out.start;
        let range = clip_codec::fetch_range(codec, &span_ref(span, len), next.as_ref(), meta.size);
        let compressed = range.end - range.start;
        if len > clip_codec::max_decoded_len(codec, compressed) {
            // No fetch can help: refused before fetching or allocating anything.
            let source = clip_codec::CodecError::ImpossibleLength { len, compressed, compression: codec };
            return Err(StoreError::Decode { layer, span: index, source });
        }
        let mut attempt = 1;
        loop {
            match self.fetch_once(layer, index, span, codec, range.clone(), len).await {
                Err(e @ (StoreError::Verify { .. } | StoreError::Decode { .. })) if attempt < VERIFY_ATTEMPTS => {
                    warn!(
                        %layer,
                        span = %index,
                        attempt,
                        error = &e as &dyn std::error::Error,
                        "fetched bytes are bad; fetching again"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One fetch of a span's compressed bytes `range`, decoded and verified.
    async fn fetch_once(
        &self,
        layer: LayerIndex,
        index: SpanId,
        span: SpanView,
        codec: Compression,
        range: Range<u64>,
        len: u64,
    ) -> Result<SpanBytes, StoreError> {
        let a = &self.archive;
        debug!(%layer, span = %index, start = range.start, len = range.end - range.start, "fetch span");
        let compressed = {
            let _inflight = InFlight::start(&self.counters.inflight_fetches);
            let started = Instant::now();
            let compressed = self.blobs.read(layer, range.clone()).await?;
            self.counters.latency(started.elapsed());
            compressed
        };
        self.counters.fetched(layer, compressed.len() as u64);
        let window = a.window(index)?;
        let disk = self.disk.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let cp = CheckpointRef {
                out_offset: span.out_offset,
                in_offset: span.in_offset,
                bits: span.bits,
                window: &window,
            };
            let bytes = clip_codec::decode_span(codec, &cp, range.start, &compressed, len)?;
            let digest = Digest::of(&bytes);
            if digest != span.digest {
                return Ok(Err(digest));
            }
            // Only verified bytes reach the disk cache.
            if let Some(disk) = disk {
                disk.put(digest.as_bytes(), &bytes);
            }
            Ok::<_, clip_codec::CodecError>(Ok(SpanBytes::from(bytes)))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(|source| StoreError::Decode { layer, span: index, source })?;
        decoded.map_err(|actual| {
            Counters::bump(&self.counters.verify_failures);
            StoreError::Verify { layer, span: index, expected: span.digest, actual }
        })
    }
}
