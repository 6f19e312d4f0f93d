//! Resume points: decoding a span from inside it. A startup that read a file far into a span made every
//! cold start fetch the span from its start. A profile recorded on one node notes, for such a span, a
//! deflate block boundary just before where the reads began ([`ContentStore::resume_point`], found by
//! fetching and decoding the span once on the recording node) with the digests of the span's leaves; a cold
//! start elsewhere fetches only the compressed bytes from there to where the reads ended
//! ([`ContentStore::load_resumes`]), decodes them, and keeps the piece for reads only once the leaves it
//! fills, with the other leaves' digests the point carries, give the tree root the index records for the
//! span ([`clip_format::SpanRoot`]). Nothing in a resume point needs trust: a wrong offset, window or leaf
//! digest gives another root, and the piece is dropped (its reads then take the usual path).
//!
//! Pieces are planned before the mount is live: a read inside a planned piece waits for it (and takes
//! the usual path when it fails), and the loads a read or an open starts ahead skip what a piece covers.
//! Verified pieces stay in memory, within [`PIECES_MAX`] bytes (the oldest go first); their compressed
//! bytes go to the disk cache as a prefix file from where they start (see `cache::prefix`), so a remount
//! with the same profile decodes them from there (checked again) instead of fetching them.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clip_codec::{CheckpointRef, ResumePoint};
use clip_format::{leaf_digests, Compression, LayerIndex, LeafDigest, SpanId, SpanRoot, TREE_LEAF};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cache::prefix_key;
use crate::fetch::{checkpoint, verified};
use crate::stats::Counters;
use crate::store::Inner;
use crate::{lock, ContentStore, SpanBytes, StoreError};

/// Decoded bytes of verified pieces kept in memory at most.
pub const PIECES_MAX: u64 = 16 << 20;
/// A span whose reads began less far into it than this gets no resume point: its prefix costs little.
pub const RESUME_MIN: u64 = 64 << 10;

/// A resume point of a span with what checking its bytes takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    pub layer: LayerIndex,
    pub span: SpanId,
    /// Where decoding starts (offsets of the layer's bytes) and where the compressed bytes it needs end.
    pub point: ResumePoint,
    /// Where the bytes decoded from `point` end, in the layer's decoded bytes: a leaf's end or the span's.
    pub out_end: u64,
    /// The digest of every leaf of the span.
    pub leaves: Vec<LeafDigest>,
}

/// A piece's state: `None` while it loads, then its bytes (`Some(None)`: it failed).
type PieceState = Option<Option<SpanBytes>>;

/// A planned piece: its span-relative range, and its state.
struct Slot {
    range: Range<u64>,
    state: watch::Receiver<PieceState>,
}

/// The pieces of a store, by span.
#[derive(Default)]
pub(crate) struct Pieces {
    slots: HashMap<SpanId, Slot>,
    /// Spans with a verified piece, oldest first, and their bytes in all.
    ready: VecDeque<SpanId>,
    bytes: u64,
}

impl Pieces {
    /// The planned piece of span `index` that holds its bytes `within`.
    fn holding(&self, index: SpanId, within: &Range<u64>) -> Option<&Slot> {
        self.slots.get(&index).filter(|s| s.range.start <= within.start && within.end <= s.range.end)
    }
}

impl ContentStore {
    /// For a profile: a resume point of span `span` of `layer` at or before `from` (an offset into the span,
    /// taken down to its leaf), with the compressed bytes to decode up to `to` (taken up to its leaf's end).
    /// Fetches and decodes the whole span (checked against its digest). `None` for a span that is not
    /// gzip, an index without tree roots, or when no block boundary lies between the span's start and `from`.
    pub async fn resume_point(
        &self,
        layer: LayerIndex,
        span: SpanId,
        from: u64,
        to: u64,
    ) -> Result<Option<Resume>, StoreError> {
        let inner = &self.inner;
        let a = &inner.archive;
        let Some(root) = a.chunk_table().and_then(|t| t.root(span)) else { return Ok(None) };
        let (view, out) = (a.span(span)?, a.span_range(layer, span)?);
        let len = out.end - out.start;
        let (from, to) = (from.min(len) / TREE_LEAF * TREE_LEAF, to.min(len).div_ceil(TREE_LEAF) * TREE_LEAF);
        let to = to.min(len);
        let f = inner.plan(layer, span, view, out.clone())?;
        if f.codec != Compression::Gzip || from < RESUME_MIN || to <= from {
            return Ok(None);
        }
        let _budget = inner.budget.take(f.range.end - f.range.start + len).await;
        let compressed = inner.read_blob(layer, f.range.clone()).await?;
        let window = a.window(span)?;
        let decoded = tokio::task::spawn_blocking(move || {
            let cp = checkpoint(&view, &window);
            let bytes = clip_codec::decode_span(f.codec, &cp, f.range.start, &compressed, len)?;
            // The check every fetched span passes; not kept in the disk cache (the recording's own loads
            // of the span, prefixes among them, are what it keeps).
            let checked = verified(&bytes, &view.digest, len, None).map(|bytes| leaf_digests(&bytes));
            let point =
                clip_codec::gzip_resume_point(&cp, f.range.start, &compressed, len, out.start + from, out.start + to)?;
            Ok::<_, clip_codec::CodecError>((checked, point))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        let (checked, point) = decoded.map_err(|source| StoreError::Decode { layer, span, source })?;
        let leaves = checked.map_err(|actual| inner.verify_failed(layer, span, view.digest, actual))?;
        if SpanRoot::of_leaves(len, &leaves) != root {
            warn!(%layer, %span, "the index's tree root does not match its span; no resume point (rebuild the index)");
            return Ok(None);
        }
        Ok(point.map(|point| Resume { layer, span, point, out_end: out.start + to, leaves }))
    }

    /// Plans the pieces of `resumes` (reads inside them wait for them from now on) and loads them in the
    /// background, [`crate::StoreConfig::profile_concurrency`] at a time, in order. Each is fetched,
    /// decoded and checked against the span's tree root; one that fails is dropped and its reads take the
    /// usual path. Loads still running when the startup yields ([`ContentStore::yield_startup_prefetch`])
    /// are dropped too.
    ///
    /// # Panics
    /// As [`ContentStore::prefetch_all`].
    pub fn load_resumes(&self, resumes: Vec<Resume>) -> JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        let planned: Vec<_> = resumes.into_iter().filter_map(|r| inner.plan_piece(r)).collect();
        let permits = Arc::new(Semaphore::new(inner.config.profile_concurrency.max(1)));
        let task = async move {
            let mut loads = tokio::task::JoinSet::new();
            for (resume, ready) in planned {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
                let me = Arc::clone(&inner);
                let load = loads.spawn(async move {
                    let piece = me.load_piece(&resume).await;
                    drop(permit);
                    // Counted once the piece is kept: a count of loaded pieces means they serve reads.
                    let counter = match &piece {
                        Ok(Some(_)) => Some(&me.counters.pieces_loaded),
                        Ok(None) => Some(&me.counters.pieces_rejected),
                        Err(error) => {
                            debug!(span = %resume.span, error = error as &dyn std::error::Error, "loading a piece failed");
                            None
                        }
                    };
                    me.finish_piece(resume.span, piece.ok().flatten(), &ready);
                    counter.into_iter().for_each(Counters::bump);
                });
                lock(&inner.startup_loads).push(load);
            }
            while loads.join_next().await.is_some() {}
            let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let (loaded, rejected) = (count(&inner.counters.pieces_loaded), count(&inner.counters.pieces_rejected));
            info!(loaded, rejected, "the profile's pieces are loaded");
        };
        match tokio::runtime::Handle::try_current().ok().or_else(|| self.inner.runtime.clone()) {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl Inner {
    /// Registers the piece `r` gives (the whole leaves from its point to its end) as planned; `None` when it
    /// holds no whole leaf or its span has one planned already.
    fn plan_piece(&self, r: Resume) -> Option<(Resume, watch::Sender<PieceState>)> {
        let out = self.archive.span_range(r.layer, r.span).ok()?;
        let start = r.point.out_offset.checked_sub(out.start)?.div_ceil(TREE_LEAF) * TREE_LEAF;
        let end = r.out_end.checked_sub(out.start)?.min(out.end - out.start);
        if start >= end {
            return None;
        }
        let mut pieces = lock(&self.pieces);
        if pieces.slots.contains_key(&r.span) {
            return None;
        }
        let (ready, state) = watch::channel(None);
        pieces.slots.insert(r.span, Slot { range: start..end, state });
        self.pieces_planned.store(true, Ordering::Relaxed);
        Some((r, ready))
    }

    /// Keeps a loaded piece (or forgets a failed one: loads ahead cover its bytes again) and wakes the reads
    /// waiting for it.
    fn finish_piece(&self, span: SpanId, bytes: Option<SpanBytes>, ready: &watch::Sender<PieceState>) {
        let mut pieces = lock(&self.pieces);
        match &bytes {
            None => drop(pieces.slots.remove(&span)),
            Some(kept) => {
                pieces.bytes += kept.len() as u64;
                pieces.ready.push_back(span);
                while pieces.bytes > PIECES_MAX && pieces.ready.len() > 1 {
                    let Some(old) = pieces.ready.pop_front() else { break };
                    if let Some(slot) = pieces.slots.remove(&old) {
                        pieces.bytes -=
                            slot.state.borrow().as_ref().and_then(|b| b.as_ref()).map_or(0, |b| b.len() as u64);
                    }
                }
            }
        }
        drop(pieces);
        ready.send_replace(Some(bytes));
    }

    /// Whether a planned piece of span `index` holds its bytes `within` (offsets into the span).
    pub(crate) fn piece_covers(&self, index: SpanId, within: &Range<u64>) -> bool {
        if !self.pieces_planned.load(Ordering::Relaxed) {
            return false;
        }
        // A load dropped before it ended (the startup yielded) covers nothing.
        let live = |s: &Slot| s.state.borrow().is_some() || s.state.has_changed().is_ok();
        lock(&self.pieces).holding(index, within).is_some_and(live)
    }

    /// Bytes `within` of span `index` from its piece, waiting for the piece while it loads (until
    /// `deadline`); `None` when no piece holds them or it failed (the read takes the usual path). Every read
    /// asks: a mount that planned no piece answers from a flag, without taking the lock.
    pub(crate) async fn piece_slice(
        &self,
        index: SpanId,
        within: &Range<u64>,
        deadline: tokio::time::Instant,
    ) -> Option<Vec<u8>> {
        if !self.pieces_planned.load(Ordering::Relaxed) {
            return None;
        }
        let (start, mut state) = {
            let pieces = lock(&self.pieces);
            let slot = pieces.holding(index, within)?;
            (slot.range.start, slot.state.clone())
        };
        let loaded = tokio::time::timeout_at(deadline, state.wait_for(Option::is_some)).await.ok()?.ok()?;
        let bytes = loaded.as_ref()?.as_ref()?;
        let at = (within.start - start) as usize..(within.end - start) as usize;
        bytes.get(at).map(<[u8]>::to_vec)
    }

    /// Fetches, decodes and checks the piece `r` gives. `Ok(None)`: it does not fit the index, or its bytes
    /// do not give the span's root (logged at warn).
    async fn load_piece(&self, r: &Resume) -> Result<Option<SpanBytes>, StoreError> {
        let (layer, span) = (r.layer, r.span);
        let reject = |why: &str| {
            warn!(%layer, %span, why, "a resume point of the profile is not used");
            Ok(None)
        };
        let a = &self.archive;
        let Some(root) = a.chunk_table().and_then(|t| t.root(span)) else {
            return reject("the index has no tree root");
        };
        let (view, out) = (a.span(span)?, a.span_range(layer, span)?);
        let len = out.end - out.start;
        if r.leaves.len() as u64 != SpanRoot::leaves(len) || SpanRoot::of_leaves(len, &r.leaves) != root {
            return reject("its leaf digests do not give the index's tree root");
        }
        let f = self.plan(layer, span, view, out.clone())?;
        let p = &r.point;
        let start = clip_codec::fetch_start(f.codec, p.in_offset, p.bits);
        let aligned = r.out_end == out.end || (r.out_end - out.start) % TREE_LEAF == 0;
        let fits = f.codec == Compression::Gzip
            && out.start < p.out_offset
            && p.out_offset < r.out_end
            && r.out_end <= out.end
            && aligned
            && f.range.start <= start
            && start < p.in_end
            && p.in_end <= f.range.end
            && p.bits <= 7
            && p.window.len() <= clip_format::MAX_WINDOW;
        if !fits {
            return reject("it does not fit the span");
        }
        // A piece an earlier mount kept (its compressed bytes, as a prefix file from where it starts) is
        // checked as fetched bytes are; one that fails is deleted and the piece fetched.
        let kept_at = self.disk.clone().zip(a.meta().layers.get(layer.index()).map(|l| prefix_key(&l.digest, start)));
        if let Some((disk, key)) = &kept_at {
            let (from_disk, key, max) = (Arc::clone(disk), *key, f.range.end - start);
            let kept = tokio::task::spawn_blocking(move || from_disk.get_prefix(&key, max)).await.ok().flatten();
            if let Some(kept) = kept.filter(|k| k.len() as u64 >= p.in_end - start) {
                let len = kept.len() as u64;
                if let Some(piece) = self.check_piece(r, start, kept.into()).await? {
                    Counters::bump(&self.counters.disk_hits);
                    return Ok(Some(piece));
                }
                disk.reject_prefix(&key, len);
            }
        }
        debug!(%layer, %span, start, len = p.in_end - start, "fetch span piece");
        let _budget = self.budget.take(p.in_end - start + (r.out_end - p.out_offset)).await;
        let compressed = self.read_blob(layer, start..p.in_end).await?;
        let piece = self.check_piece(r, start, compressed.clone()).await?;
        if let (Some(_), Some((disk, key))) = (&piece, kept_at) {
            if let Some(rt) = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) {
                drop(rt.spawn_blocking(move || disk.put_prefix(&key, &compressed)));
            }
        }
        match piece {
            Some(bytes) => Ok(Some(bytes)),
            None => reject("its bytes do not decode to the span's leaves"),
        }
    }

    /// What `compressed` (the layer's bytes from `start` on, at least up to the point's `in_end`) decode
    /// to from `r`'s point, from the first whole leaf on, if every leaf of it has the digest `r` gives.
    async fn check_piece(
        &self,
        r: &Resume,
        start: u64,
        compressed: bytes::Bytes,
    ) -> Result<Option<SpanBytes>, StoreError> {
        let out = self.archive.span_range(r.layer, r.span)?;
        let (point, leaves, span_start, want) =
            (r.point.clone(), r.leaves.clone(), out.start, r.out_end - r.point.out_offset);
        tokio::task::spawn_blocking(move || {
            let cp = CheckpointRef {
                out_offset: point.out_offset,
                in_offset: point.in_offset,
                bits: point.bits,
                window: &point.window,
            };
            let bytes = clip_codec::decode_span(Compression::Gzip, &cp, start, &compressed, want).ok()?;
            // The first whole leaf from the point on; the bytes before it cannot be checked.
            let first = (point.out_offset - span_start).div_ceil(TREE_LEAF) * TREE_LEAF;
            let skip = (span_start + first - point.out_offset) as usize;
            let piece = bytes.get(skip..).filter(|p| !p.is_empty())?;
            let got = leaf_digests(piece);
            let want = leaves.get((first / TREE_LEAF) as usize..)?.get(..got.len())?;
            (got == want).then(|| SpanBytes::from(piece))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
    }
}
