//! [`ContentStore`]: turns a read of (file, offset, len) into verified span bytes. A span is looked up in
//! a small in-memory LRU, then in the [`DiskCache`], and only then fetched: one range read of its
//! compressed bytes, decoded from its checkpoint and checked against the digest recorded at index time
//! before it is written to the disk cache or served. Concurrent requests for one span share one lookup.
//! With a remote tier ([`StoreConfig::remote`]) a disk miss asks the tier first (bounded by
//! [`StoreConfig::remote_timeout`], its bytes verified too), and spans fetched from the source are
//! published to it in the background; a failing tier only sends reads to the source. A span this
//! process has checked in the disk cache (or that an earlier one sealed) is not loaded whole: a read takes
//! its piece from the span's file by range, and such spans are not kept in memory.
//!
//! Failure policy: bytes that fail verification (or do not decode) are fetched again, up to
//! [`crate::VERIFY_ATTEMPTS`] times in all, and never served. Every read has a deadline
//! ([`StoreConfig::read_timeout`]) covering the whole lookup, the source's retries included; past it the
//! read fails. A failed lookup leaves almost nothing behind: for [`failure_holdoff`] (at most 1 s)
//! further lookups of the span fail at once with the same error, because the kernel answers a failed
//! readahead by asking again for the same page straight away, and that retry must not wait out a second
//! deadline; after that the next read of the span starts afresh, so reads work again as soon as the
//! source does.
//!
//! This module is the read path; each step lives apart: the memory tier in `memory`, single flight and
//! hold-off in `flight`, the remote tier in `remote`, fetch and verification in `fetch`, the disk cache
//! in `cache`, loading ahead in `schedule`, and the settings in `config`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use clip_format::{Archive, Corruption, DataRef, Digest, FormatError, LayerIndex, SpanId, SpanSlice};
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use crate::flight::Flights;
use crate::memory::{Budget, Entry, Held, Lru};
use crate::partial::{DiskPrefix, Need};
use crate::remote::Tier;
use crate::schedule::Stream;
use crate::stats::Counters;
use crate::{failure_holdoff, lock, DiskCache, LayerBlobs, StoreConfig, StoreError, StoreStats};

/// Decoded, verified bytes of one span.
pub type SpanBytes = Arc<[u8]>;

/// The most a [`ContentStore::read`] reserves before any byte arrives.
const MAX_PREALLOC: u64 = 8 << 20;
/// Files up to this size are loaded whole by [`ContentStore::look`] (an extension module's header and its
/// dynamic segment had cost a cold Python start two round trips each).
const LOOK_WHOLE: u64 = 512 << 10;

/// Who wants a span: decides whether it is kept in memory, whether prefetch must wait for it, and whether a
/// prefix near the span's end is fetched to the end (not for a prefetch, which knows how far it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A reader is waiting.
    Foreground,
    /// A sequential reader will want it soon.
    Readahead,
    /// Filling the disk cache; yields to the others.
    Prefetch,
}

/// Serves file bytes of one archive.
pub struct ContentStore {
    pub(crate) inner: Arc<Inner>,
}

/// The state of a store, shared with its background tasks.
pub(crate) struct Inner {
    pub archive: Arc<Archive>,
    pub blobs: Arc<dyn LayerBlobs>,
    pub config: StoreConfig,
    pub disk: Option<Arc<DiskCache>>,
    /// The runtime the store was made on, for background work started from non-runtime threads.
    pub runtime: Option<Handle>,
    memory: Mutex<Lru>,
    /// What fetches in flight may hold at once.
    pub budget: Budget,
    /// Span loads in flight and recent failures.
    flights: Flights,
    pub counters: Counters,
    /// Readahead state per file.
    pub streams: Mutex<HashMap<DataRef, Stream>>,
    /// Foreground and readahead lookups that missed memory, running now; prefetch waits for zero.
    foreground: AtomicUsize,
    idle: Notify,
    /// [`ContentStore::prefetch_spans`] starts each load only once the foreground is idle, as whole-layer
    /// prefetch does (see [`ContentStore::yield_startup_prefetch`]).
    pub startup_yields: AtomicBool,
    /// The loads of [`ContentStore::prefetch_spans`] started so far, dropped when the startup yields.
    pub startup_loads: Mutex<Vec<tokio::task::AbortHandle>>,
    pub prefetch_permits: Arc<Semaphore>,
    /// Keys of files being materialized in the background.
    pub materializing: Mutex<HashSet<Digest>>,
    /// Files waiting for [`ContentStore::page_in`], and its workers.
    pub paging: Mutex<crate::page_in::Paging>,
    /// The remote tier, if the config names one.
    tier: Option<Tier>,
    /// Layers read at least once (logged once each, at info).
    touched: Vec<std::sync::atomic::AtomicBool>,
    /// Pieces of spans from resume points (see `resume`), and whether any was ever planned.
    pub pieces: Mutex<crate::resume::Pieces>,
    pub pieces_planned: AtomicBool,
}

impl ContentStore {
    /// A store over `archive`'s layers read from `blobs`. Opens the disk cache at `config.cache_dir` (or, in
    /// a process that shares them, [`crate::share_disk_caches`], takes the one open there); if that fails,
    /// logs why and runs without one (use [`ContentStore::with_disk_cache`] to decide).
    pub fn new(archive: Arc<Archive>, blobs: Arc<dyn LayerBlobs>, config: StoreConfig) -> ContentStore {
        let disk = config.cache_dir.as_ref().and_then(|dir| match DiskCache::for_store(dir, config.cache_size) {
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
        let clock = Arc::clone(&config.clock);
        let flights = Flights::new(Arc::clone(&clock), failure_holdoff(config.read_timeout));
        let tier = config.remote.clone().map(|remote| Tier::new(remote, config.remote_timeout, clock));
        let budget = Budget::new(config.inflight_bytes);
        ContentStore {
            inner: Arc::new(Inner {
                archive,
                blobs,
                config,
                disk,
                runtime: Handle::try_current().ok(),
                memory: Mutex::default(),
                budget,
                flights,
                counters: Counters::new(layers),
                streams: Mutex::default(),
                foreground: AtomicUsize::new(0),
                idle: Notify::new(),
                startup_yields: AtomicBool::new(false),
                startup_loads: Mutex::default(),
                prefetch_permits: Arc::new(Semaphore::new(permits)),
                materializing: Mutex::default(),
                paging: Mutex::default(),
                tier,
                touched: (0..layers).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
                pieces: Mutex::default(),
                pieces_planned: AtomicBool::new(false),
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

    /// Whether span `index` is here as far as `need` asks (in memory, or in the disk cache whole or as a
    /// sealed decoded prefix that long), so loading it would fetch nothing. A cheap check: no file is read.
    pub fn holds(&self, index: SpanId, need: Need) -> bool {
        self.inner.is_local(index, need)
    }

    /// Counters so far.
    pub fn stats(&self) -> StoreStats {
        let mut stats = self.inner.counters.snapshot();
        stats.failing_spans = self.inner.flights.failing() as u64;
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
        self.read_as(data, offset, len, true).await
    }

    /// [`Self::read`] for clip's own look into a file (the headers of a program whose libraries are looked
    /// for, a module whose imports are): not a reader's read, so it neither continues nor starts a
    /// sequential stream, and loads nothing ahead. A look into a file of at most [`LOOK_WHOLE`] bytes loads
    /// all of it: what is looked at next (an ELF's dynamic segment lies near its end) is then here, not a
    /// round trip away.
    pub async fn look(&self, data: DataRef, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if data.size > LOOK_WHOLE || offset >= data.size {
            return self.read_as(data, offset, len, false).await;
        }
        let mut bytes = self.read_as(data, 0, data.size, false).await?;
        bytes.truncate(data.size.min(offset.saturating_add(len)) as usize);
        bytes.drain(..(offset as usize).min(bytes.len()));
        Ok(bytes)
    }

    async fn read_as(&self, data: DataRef, offset: u64, len: u64, reader: bool) -> Result<Vec<u8>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.read_timeout;
        let end = data.size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(Vec::new());
        }
        self.inner.note_layer_touched(data.layer);
        let sequential = reader && self.inner.readahead(data, offset, end);
        // Grown by the verified bytes as they come, not reserved up front from a size the index records.
        let mut out = Vec::with_capacity((end - offset).min(MAX_PREALLOC) as usize);
        for slice in self.inner.archive.file_spans(data, offset..end) {
            let slice = slice?;
            let SpanSlice { span, ref span_range, ref within } = slice;
            if let Some(piece) = self.inner.piece_slice(span, within, deadline).await {
                out.extend_from_slice(&piece);
                continue;
            }
            if let Some(piece) = self.inner.disk_slice(span, span_range.end - span_range.start, within).await {
                if sequential && piece.from_prefix {
                    // As below, from the decoded prefix on disk.
                    self.inner.continue_file(data, &slice);
                }
                out.extend_from_slice(&piece.bytes);
                continue;
            }
            let need = Need::Upto(within.end);
            let bytes = self.inner.span(data.layer, span, need, Priority::Foreground, deadline).await?;
            if sequential && (bytes.len() as u64) < span_range.end - span_range.start {
                // Served from a prefix: a sequential reader wants the rest of its file soon.
                self.inner.continue_file(data, &slice);
            }
            let short = Corruption::SpanGap { layer: data.layer, span, offset: span_range.start + within.end };
            let piece = bytes.get(within.start as usize..within.end as usize).ok_or(FormatError::from(short))?;
            out.extend_from_slice(piece);
        }
        Ok(out)
    }

    /// The verified bytes of span `index` (an index of the whole span table) of layer `layer`.
    pub async fn span(&self, layer: LayerIndex, index: SpanId) -> Result<SpanBytes, StoreError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.read_timeout;
        self.inner.span(layer, index, Need::Whole, Priority::Foreground, deadline).await
    }
}

/// A piece of a span [`Inner::disk_slice`] read from the disk cache.
struct DiskSlice {
    bytes: Vec<u8>,
    /// Read from the span's decoded prefix file: the span goes on past it.
    from_prefix: bool,
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

    /// Whether span `index` is in memory, as much of it as `need` asks for.
    pub fn in_memory(&self, index: SpanId, need: Need) -> bool {
        lock(&self.memory).contains(index, need)
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

    /// Span `index` of `layer`, at least as much of it as `need` asks for (a verified prefix may be all
    /// a read needs): from memory, else through the single flight for that span. A load this call starts
    /// gives up at `deadline` ([`StoreError::Timeout`], remembered for the hold-off like any failure);
    /// joining a load in flight waits for that load's own deadline, which is no later (it started
    /// earlier), and when that load brought less than this call needs, a load of its own follows.
    pub async fn span(
        &self,
        layer: LayerIndex,
        index: SpanId,
        need: Need,
        priority: Priority,
        deadline: tokio::time::Instant,
    ) -> Result<SpanBytes, StoreError> {
        if !self.archive.layer_spans(layer)?.contains(index) {
            let media_type = self.archive.meta().layers.get(layer.index()).map(|l| l.media_type.clone());
            return Err(StoreError::Layer {
                layer,
                media_type: media_type.unwrap_or_default(),
                why: format!("span {index} is not one of its spans"),
            });
        }
        let keep = priority != Priority::Prefetch;
        let len = self.archive.span_range(layer, index).map(|r| r.end - r.start)?;
        let want = need.bytes(len);
        let _foreground = keep.then(|| Foreground::enter(self));
        // A prefetch keeps nothing in memory and takes nothing from it: it fills the disk cache.
        let from_memory = || {
            if !keep {
                return None;
            }
            let hit = lock(&self.memory).get(index).filter(|e| e.decoded.len() as u64 >= want)?;
            Counters::bump(&self.counters.memory_hits);
            Some(hit.decoded)
        };
        loop {
            if let Some(bytes) = from_memory() {
                return Ok(bytes);
            }
            if let Some(error) = self.flights.recent_failure(layer, index) {
                return Err(error);
            }
            let timeout = self.config.read_timeout;
            let load = async {
                // A load of the span that ended between the look into memory above and this flight's start
                // left its bytes there: taken, not fetched again.
                if let Some(bytes) = from_memory() {
                    return Ok(bytes);
                }
                let load = self.load(layer, index, need, priority);
                let timeout = StoreError::Timeout { layer, span: index, after: timeout };
                let bytes = tokio::time::timeout_at(deadline, load).await.unwrap_or(Err(timeout))?;
                // Kept before the flight ends, so a lookup right after it finds the span here, not nowhere
                // (it would load it again). A prefetch keeps nothing: it fills the disk cache.
                if keep && bytes.len() as u64 == len && !self.trusted_on_disk(index) {
                    let entry = Entry { decoded: bytes.clone(), held: None };
                    lock(&self.memory).put(index, entry, self.config.memory_bytes);
                }
                Ok(bytes)
            };
            let bytes = self.flights.run(layer, index, load).await?;
            if (bytes.len() as u64) < want {
                // A load of a shorter prefix, joined: its bytes are in memory now, go on from there.
                continue;
            }
            return Ok(bytes);
        }
    }

    /// Whether span `index` is here as far as `need` asks, so a load of it would fetch nothing: in memory, in
    /// the disk cache whole, or (for a prefix) in a sealed decoded prefix file a partial fetch kept. A cheap
    /// check (no file is read): whoever loads it still checks what it reads.
    pub(crate) fn is_local(&self, index: SpanId, need: Need) -> bool {
        if self.in_memory(index, need) {
            return true;
        }
        let (Some(disk), Ok(span)) = (&self.disk, self.archive.span(index)) else { return false };
        disk.contains(&span.digest) || matches!(need, Need::Upto(n) if disk.holds_part(&span.digest, n))
    }

    /// Whether span `index` sits in the disk cache, checked by this process: later reads take their pieces
    /// from its file by range ([`Inner::disk_slice`]), so keeping it in memory as well would only grow the
    /// daemon (a walk over every small file of an image filled the memory tier to its bound).
    pub(crate) fn trusted_on_disk(&self, index: SpanId) -> bool {
        let (Some(disk), Ok(span)) = (&self.disk, self.archive.span(index)) else { return false };
        disk.is_verified(&span.digest)
    }

    /// Bytes `within` of span `index` (`len` bytes long) read straight from the disk cache when the span is
    /// not in memory: from its span file when that is trusted, else from its sealed decoded prefix file when
    /// that holds them (a remount). A small file costs a read of its own bytes, not of the whole span (or
    /// prefix), and the span does not displace others in memory. `None`: take the usual path.
    ///
    /// Only a span known good is looked for whole (checked by this process, or found sealed by the cache's
    /// scan at open), and only a span noted to have a decoded prefix file for that; until the scan is done,
    /// any span's file is tried. So once the scan is done, a span that is not on disk costs no file lookup
    /// here, only the one of [`Inner::load`].
    async fn disk_slice(&self, index: SpanId, len: u64, within: &std::ops::Range<u64>) -> Option<DiskSlice> {
        let disk = self.disk.as_ref()?;
        if self.in_memory(index, Need::Upto(within.end)) {
            return None;
        }
        let digest = self.archive.span(index).ok()?.digest;
        let unscanned = !disk.scanned();
        let whole = unscanned || disk.is_verified(&digest);
        let part = unscanned || disk.noted_part(&digest);
        if !whole && !part {
            return None;
        }
        Counters::bump(&self.counters.disk_lookups);
        let (disk, range) = (Arc::clone(disk), within.clone());
        let slice = tokio::task::spawn_blocking(move || {
            if let Some(bytes) = whole.then(|| disk.get_range(&digest, len, range.clone())).flatten() {
                return Some(DiskSlice { bytes, from_prefix: false });
            }
            let bytes = part.then(|| disk.get_part_range(&digest, len, range)).flatten()?;
            Some(DiskSlice { bytes, from_prefix: true })
        });
        let slice = slice.await.ok()??;
        Counters::bump(&self.counters.disk_hits);
        Some(slice)
    }

    /// The disk cache, else the remote tier and a whole fetch, else a fetch of as much as `need` asks
    /// for (a prefix goes to memory with its compressed bytes, for the next load of the span to go on from).
    async fn load(
        &self,
        layer: LayerIndex,
        index: SpanId,
        need: Need,
        priority: Priority,
    ) -> Result<SpanBytes, StoreError> {
        let span = self.archive.span(index)?;
        let out = self.archive.span_range(layer, index)?;
        if let Some(disk) = &self.disk {
            Counters::bump(&self.counters.disk_lookups);
            let (disk, digest, len) = (Arc::clone(disk), span.digest, out.end - out.start);
            let hit = tokio::task::spawn_blocking(move || disk.get(&digest, len))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?;
            if let Some(bytes) = hit {
                Counters::bump(&self.counters.disk_hits);
                return Ok(bytes.into());
            }
        }
        let len = out.end - out.start;
        let fetch = self.plan(layer, index, span, out)?;
        let failed = |_: &StoreError| Counters::bump(&self.counters.fetch_errors);
        let Some(tier) = &self.tier else {
            let held = lock(&self.memory).get(index).and_then(|e| e.held).filter(|h| !h.compressed.is_empty());
            let held = match held {
                Some(held) => Some(held),
                None => match self.disk_prefix(&fetch, need).await {
                    // A remount: what the prefix decodes to is on disk, and enough for this read; its
                    // compressed bytes stay there until a load needs more of the span.
                    Some(DiskPrefix::Decoded(part)) => {
                        Counters::bump(&self.counters.disk_hits);
                        let entry =
                            Entry { decoded: part.into(), held: Some(Held { compressed: bytes::Bytes::new() }) };
                        lock(&self.memory).put(index, entry.clone(), self.config.memory_bytes);
                        return Ok(entry.decoded);
                    }
                    Some(DiskPrefix::Compressed(held)) => Some(held),
                    None => None,
                },
            };
            let from_prefix = held.is_some();
            let entry = self.fetch_upto(fetch.clone(), need, held, priority).await.inspect_err(failed)?;
            self.keep_prefix(&fetch, &entry, from_prefix);
            if entry.held.is_some() {
                lock(&self.memory).put(index, entry.clone(), self.config.memory_bytes);
            }
            return Ok(entry.decoded);
        };
        // The tier holds and takes whole spans only.
        if let Some(bytes) = tier.get(&span.digest, len, self.disk.clone(), &self.counters).await {
            return Ok(bytes);
        }
        let bytes = self.fetch(fetch).await.inspect_err(failed)?;
        if let Some(runtime) = Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            tier.publish(span.digest, &bytes, &runtime, &self.counters);
        }
        Ok(bytes)
    }
}
