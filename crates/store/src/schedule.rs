//! Loading spans before anyone reads them: readahead for sequential readers, every span of a file when it
//! is opened, prefetch of whole layers and replay of a startup profile. All go through the store's single
//! flight, so a reader who wants a span that is being loaded waits for that load instead of starting
//! another.
//!
//! - Whole-layer prefetch runs at low priority: at most [`crate::StoreConfig::prefetch_concurrency`] loads
//!   at once, each started only when no foreground read is waiting on a span.
//! - A profile lists exactly the spans a startup is about to read, in order, so its replay does not yield:
//!   [`crate::StoreConfig::profile_concurrency`] loads at once, overlapping their round trips; once told the
//!   startup running is another one ([`ContentStore::yield_startup_prefetch`]), it yields as well.
//! - Opening a file (up to [`crate::StoreConfig::open_prefetch_max`] bytes) starts the loads of all its
//!   spans at once: a program mapping a binary or reading a file whole then waits for one round of
//!   concurrent fetches instead of one fetch after another, in the order its reads arrive.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clip_format::{DataRef, LayerIndex, SpanId, SpanIds, SpanSlice};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tracing::debug;

use crate::partial::Need;
use crate::stats::{Counters, Gauged};
use crate::store::{Inner, Priority};
use crate::{lock, ContentStore, StoreError};

/// Files whose readahead state is kept; more are forgotten (and start over as non-sequential).
const MAX_STREAMS: usize = 1024;
/// How far a read may start from where the previous read of the file ended and still count as
/// sequential (the kernel may deliver the reads of one sequential reader slightly out of order: a couple
/// of its 128 KiB requests).
const SEQUENTIAL_SLACK: u64 = 256 << 10;

/// Readahead state of one file.
pub(crate) struct Stream {
    /// Where the furthest read so far ended (offset in the file).
    end: u64,
    /// The highest span index readahead has already requested.
    ahead: SpanId,
}

/// What a prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchSummary {
    /// Spans loaded into the disk cache (fetched, or found there by the time they were loaded).
    pub loaded: u64,
    /// Spans already cached when their turn came.
    pub already_cached: u64,
    /// Spans that could not be loaded (logged; a later read tries again).
    pub failed: u64,
    /// Spans not attempted because the store has no disk cache to fill.
    pub skipped: u64,
    /// Loads dropped because the startup yielded ([`ContentStore::yield_startup_prefetch`]).
    pub dropped: u64,
}

impl PrefetchSummary {
    fn tally(&mut self, done: Result<Result<(), (LayerIndex, SpanId, StoreError)>, JoinError>, counters: &Counters) {
        match done {
            Ok(Ok(())) => {
                self.loaded += 1;
                Counters::bump(&counters.prefetched_spans);
            }
            Ok(Err((layer, span, error))) => {
                self.failed += 1;
                debug!(%layer, %span, error = &error as &dyn std::error::Error, "prefetch of a span failed");
            }
            Err(error) if error.is_cancelled() => self.dropped += 1,
            Err(error) => {
                self.failed += 1;
                debug!(%error, "prefetch task failed");
            }
        }
    }
}

impl ContentStore {
    /// Loads every span of every layer, in order, into the disk cache in the background, yielding to
    /// foreground reads. Does nothing without a disk cache.
    ///
    /// # Panics
    /// When called outside a tokio runtime on a store that was also made outside one (like `tokio::spawn`).
    pub fn prefetch_all(&self) -> JoinHandle<PrefetchSummary> {
        let archive = &self.inner.archive;
        let spans = (0..archive.meta().layers.len())
            .map(LayerIndex::from_index)
            .flat_map(|layer| archive.layer_spans(layer).into_iter().flatten().map(move |i| (layer, i, Need::Whole)))
            .collect();
        self.spawn_prefetch(spans, Arc::clone(&self.inner.prefetch_permits), true)
    }

    /// Loads the listed spans `(layer, span index, how much of it)` into the disk cache in the background,
    /// started in the given order (the spans a startup set or a recorded startup profile read),
    /// [`crate::StoreConfig::profile_concurrency`] at a time and without yielding to foreground reads: the
    /// startup is waiting for exactly these. A [`Need::Upto`] span is loaded as a verified prefix where the
    /// index allows (see [`Need`]), so a startup that read a few files of a span does not wait for all of it.
    ///
    /// # Panics
    /// As [`ContentStore::prefetch_all`].
    pub fn prefetch_spans(&self, spans: Vec<(LayerIndex, SpanId, Need)>) -> JoinHandle<PrefetchSummary> {
        let permits = Arc::new(Semaphore::new(self.inner.config.profile_concurrency.max(1)));
        self.spawn_prefetch(spans, permits, false)
    }

    /// For when the startup being prefetched is not the one running: the loads of
    /// [`ContentStore::prefetch_spans`] in flight are dropped (a reader waiting on one of their spans loads
    /// it itself), and the rest start only when no foreground read is waiting.
    pub fn yield_startup_prefetch(&self) {
        self.inner.startup_yields.store(true, Ordering::Relaxed);
        for load in lock(&self.inner.startup_loads).drain(..) {
            load.abort();
        }
    }

    fn spawn_prefetch(
        &self,
        spans: Vec<(LayerIndex, SpanId, Need)>,
        permits: Arc<Semaphore>,
        polite: bool,
    ) -> JoinHandle<PrefetchSummary> {
        let inner = Arc::clone(&self.inner);
        let task = inner.clone().prefetch(spans, permits, polite);
        match Handle::try_current().ok().or_else(|| inner.runtime.clone()) {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// A file was opened: start loading all of its spans at once (files up to
    /// [`crate::StoreConfig::open_prefetch_max`] bytes; spans already in memory or on disk are skipped).
    /// Says how many loads were started, and whether the file is cold (a bigger file is not loaded, and is
    /// cold when its first span is not local). Needs a tokio runtime (the caller's or the store's); without
    /// one it loads nothing.
    pub fn warm_file(&self, data: DataRef) -> Warmed {
        let inner = &self.inner;
        let a = &inner.archive;
        // Spans already local are left to the reads: loading them all from disk would only churn memory. The
        // span the file ends in is wanted up to there only.
        let local = |slice: &SpanSlice| inner.is_local(slice.span, Need::of_slice(slice));
        let mut warmed = Warmed::default();
        if data.size == 0 {
            return warmed;
        }
        if data.size > inner.config.open_prefetch_max {
            warmed.cold = a.file_spans(data, 0..1).next().is_some_and(|s| s.is_ok_and(|s| !local(&s)));
            return warmed;
        }
        let rt = Handle::try_current().ok().or_else(|| inner.runtime.clone());
        for slice in a.file_spans(data, 0..data.size) {
            let Ok(slice) = slice else { break };
            // A piece of the span that holds these bytes is loading or here (see `resume`).
            if local(&slice) || inner.piece_covers(slice.span, &slice.within) {
                continue;
            }
            warmed.cold = true;
            let Some(rt) = &rt else { break };
            warmed.started += 1;
            Counters::bump(&inner.counters.open_prefetch_spans);
            let need = Need::of_slice(&slice);
            inner.load_ahead(rt, data.layer, slice.span, need, "loading a span of an opened file failed");
        }
        warmed
    }
}

impl Inner {
    /// Records a read of `[offset, end)` of the file at `data`; when it continues the previous read,
    /// starts loading the next [`crate::StoreConfig::readahead_spans`] spans of the file in the background.
    /// Returns whether the read continues the previous one.
    pub(crate) fn readahead(self: &Arc<Self>, data: DataRef, offset: u64, end: u64) -> bool {
        let count = self.config.readahead_spans;
        if count == 0 || end == 0 {
            return false;
        }
        let key = data;
        let (first, last) = {
            let mut streams = lock(&self.streams);
            let sequential = streams.get(&key).is_some_and(|s| offset.abs_diff(s.end) <= SEQUENTIAL_SLACK);
            if !sequential {
                if streams.len() >= MAX_STREAMS {
                    streams.clear();
                }
                streams.insert(key, Stream { end, ahead: SpanId(0) });
                return false;
            }
            let Some(stream) = streams.get_mut(&key) else { return false };
            stream.end = stream.end.max(end);
            let a = &self.archive;
            let last_byte = data.offset.checked_add(end - 1);
            let file_last = data.offset.checked_add(data.size.saturating_sub(1));
            let (Some(last_byte), Some(file_last)) = (last_byte, file_last) else { return true };
            let (Ok(current), Ok(file_end)) = (a.find_span(data.layer, last_byte), a.find_span(data.layer, file_last))
            else {
                return true;
            };
            let first = current.next().max(stream.ahead.next());
            let last = current.saturating_add(count).min(file_end);
            if first > last {
                return true;
            }
            stream.ahead = last;
            (first, last)
        };
        let Ok(rt) = Handle::try_current() else { return true };
        let file_end = data.offset.saturating_add(data.size);
        for index in SpanIds::through(first, last) {
            // The span the file ends in is wanted up to there: past it lie other files (a library's last
            // span loaded whole had cost a cold Python start ~1 MiB of the bytes it fetched).
            let Ok(range) = self.archive.span_range(data.layer, index) else { continue };
            let need = Need::to(file_end.saturating_sub(range.start), range.end - range.start);
            let within = data.offset.saturating_sub(range.start)..file_end.min(range.end).saturating_sub(range.start);
            // A span checked in the disk cache is read from there by range: loading it would be wasted.
            if self.in_memory(index, need) || self.trusted_on_disk(index) || self.piece_covers(index, &within) {
                continue;
            }
            Counters::bump(&self.counters.readahead_spans);
            self.load_ahead(&rt, data.layer, index, need, "readahead of a span failed");
        }
        true
    }

    /// A sequential reader of the file at `data` was served from a prefix of the span of `slice`: starts
    /// loading, in the background, the rest of the file in that span (to where the file ends in it, or the
    /// whole span when the file goes on), unless that much is here already. Past the file's end the span holds
    /// other files, which a reader of this one is not asking for: they are not loaded (a `.pyc` read whole in
    /// two requests had brought the rest of its span, ~0.8 MiB of a cold Python start's 11.4 MiB).
    pub(crate) fn continue_file(self: &Arc<Self>, data: DataRef, slice: &SpanSlice) {
        let (start, end) = (slice.span_range.start, slice.span_range.end);
        let upto = data.offset.saturating_add(data.size).min(end).saturating_sub(start);
        if upto <= slice.within.end {
            return;
        }
        let need = if upto >= end - start { Need::Whole } else { Need::Upto(upto) };
        if self.is_local(slice.span, need) || self.piece_covers(slice.span, &(slice.within.start..upto)) {
            return;
        }
        if let Some(rt) = Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            self.load_ahead(&rt, data.layer, slice.span, need, "loading the rest of a file's span failed");
        }
    }

    /// Starts loading span `index` of `layer` (as much as `need` asks for) in the background at readahead
    /// priority; a failure is only logged (`failed` at debug): the reader who needs the span tries again.
    fn load_ahead(self: &Arc<Self>, rt: &Handle, layer: LayerIndex, index: SpanId, need: Need, failed: &'static str) {
        let me = Arc::clone(self);
        // Counted in `loads_ahead` from now, not from when the task first runs.
        let pending = Gauged::start(Arc::clone(self), |inner| &inner.counters.loads_ahead);
        rt.spawn(async move {
            let _pending = pending;
            let deadline = tokio::time::Instant::now() + me.config.read_timeout;
            if let Err(error) = me.span(layer, index, need, Priority::Readahead, deadline).await {
                debug!(%layer, span = %index, error = &error as &dyn std::error::Error, "{failed}");
            }
        });
    }

    /// Loads `spans` into the disk cache, one of `permits` each; `polite` loads each start only once the
    /// foreground is idle.
    async fn prefetch(
        self: Arc<Self>,
        spans: Vec<(LayerIndex, SpanId, Need)>,
        permits: Arc<Semaphore>,
        polite: bool,
    ) -> PrefetchSummary {
        let mut summary = PrefetchSummary::default();
        if self.disk.is_none() {
            debug!(spans = spans.len(), "no disk cache; prefetch skipped");
            summary.skipped = spans.len() as u64;
            return summary;
        }
        let mut tasks = JoinSet::new();
        for (layer, index, need) in spans {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
            if polite || self.startup_yields.load(Ordering::Relaxed) {
                self.foreground_idle().await;
            }
            // A span the archive does not have is not local: its load reports the error.
            if self.is_local(index, need) {
                summary.already_cached += 1;
                continue;
            }
            let me = Arc::clone(&self);
            let load = tasks.spawn(async move {
                let deadline = tokio::time::Instant::now() + me.config.read_timeout;
                let done = me.span(layer, index, need, Priority::Prefetch, deadline).await;
                drop(permit);
                done.map(drop).map_err(|e| (layer, index, e))
            });
            if !polite && !self.startup_yields.load(Ordering::Relaxed) {
                lock(&self.startup_loads).push(load);
            }
            while let Some(done) = tasks.try_join_next() {
                summary.tally(done, &self.counters);
            }
        }
        while let Some(done) = tasks.join_next().await {
            summary.tally(done, &self.counters);
        }
        if !polite {
            lock(&self.startup_loads).clear();
        }
        debug!(?summary, "prefetch done");
        summary
    }
}

/// What [`ContentStore::warm_file`] did with an opened file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Warmed {
    /// Span loads started.
    pub started: usize,
    /// Whether some of the file's bytes are neither in memory nor on disk.
    pub cold: bool,
}
