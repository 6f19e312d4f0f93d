//! Partial span fetches: a cold read needs the compressed bytes from its span's checkpoint to the end of
//! the bytes it reads, not to the end of the span. With the index's compressed-chunk digests
//! ([`clip_format::ChunkTable`], cut per span) a load fetches whole chunks from the span's first byte up to
//! an estimate of where the wanted bytes end, verifies every chunk (and the checkpoint window) against the
//! index, inflates what they hold and serves that prefix; a short estimate fetches on from where it
//! stopped. The prefix is kept in memory with its compressed bytes ([`Held`]), and those bytes in the disk
//! cache as a prefix file (so a remount over a warm cache does not fetch them again; checked against the
//! chunk digests whenever they are loaded); a later load of more (a later read, or the whole span) fetches
//! only the rest, and a whole span is checked against the span digest and cached as before (its prefix file
//! then removed). Without chunk digests (an older index), or when the wanted bytes reach near the span's
//! end anyway, the whole span is fetched as before.

use std::sync::Arc;

use clip_codec::CodecError;
use clip_format::{ChunkDigest, Compression, SpanChunks, SpanSlice};
use tracing::debug;

use crate::fetch::{checkpoint, verified, Fetch};
use crate::memory::{Entry, Held};
use crate::store::{Inner, Priority};
use crate::StoreError;

/// How much of a span a load must bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// All of it (readahead, prefetch, a read that runs to the span's end).
    Whole,
    /// At least its first this many decoded bytes.
    Upto(u64),
}

impl Need {
    /// The decoded bytes this asks for, of a span of `len`.
    pub fn bytes(self, len: u64) -> u64 {
        match self {
            Need::Whole => len,
            Need::Upto(n) => n.min(len),
        }
    }

    /// What a load must bring to serve both `self` and `other`.
    pub fn max(self, other: Need) -> Need {
        match (self, other) {
            (Need::Upto(a), Need::Upto(b)) => Need::Upto(a.max(b)),
            _ => Need::Whole,
        }
    }

    /// What of its span a read of file bytes `slice` needs: the span's decoded bytes up to where the slice
    /// ends in it ([`Need::Whole`] when that is its end).
    pub fn of_slice(slice: &SpanSlice) -> Need {
        Need::to(slice.within.end, slice.span_range.end - slice.span_range.start)
    }

    /// The first `end` decoded bytes of a span `len` long ([`Need::Whole`] when that is all of it).
    pub fn to(end: u64, len: u64) -> Need {
        if end >= len {
            Need::Whole
        } else {
            Need::Upto(end)
        }
    }
}

/// What [`Inner::disk_prefix`] found of a span's prefix in the disk cache.
pub(crate) enum DiskPrefix {
    /// The decoded bytes, at least as many as needed.
    Decoded(Vec<u8>),
    /// The compressed bytes, checked, to inflate and go on from.
    Compressed(Held),
}

/// Compressed bytes fetched past the estimate of where the wanted bytes end (the estimate scales the span's
/// compressed size by the share of its decoded bytes wanted, and the ratio varies within a span). zstd
/// yields output a whole block at a time, so it gets more.
fn slack(codec: Compression) -> u64 {
    match codec {
        Compression::None => 0,
        Compression::Gzip => 16 << 10,
        Compression::Zstd => 64 << 10,
    }
}

/// Where a prefix of span `f` (chunks `c`) holding its first `want` decoded bytes is estimated to end in the
/// layer: the span's compressed size scaled by the share wanted, plus [`slack`], on a chunk boundary.
fn prefix_end(f: &Fetch, c: &SpanChunks, want: u64) -> u64 {
    if want >= f.len {
        return f.range.end;
    }
    let share = (f.range.end - f.range.start).saturating_mul(want).div_ceil(f.len.max(1));
    on_chunk(f, c, f.range.start + share + slack(f.codec))
}

/// `compressed` scaled by `part` / `whole` (at least 1, so a fetch on always reaches a new chunk).
fn scaled(compressed: u64, part: u64, whole: u64) -> u64 {
    let share = u128::from(compressed) * u128::from(part) / u128::from(whole.max(1));
    u64::try_from(share).unwrap_or(u64::MAX).max(1)
}

/// `end` moved up to the end of the chunk it falls in (so each chunk of a prefix is checked whole), or to the
/// span's end when that is its last chunk's.
fn on_chunk(f: &Fetch, c: &SpanChunks, end: u64) -> u64 {
    let end = c.end_covering(end);
    if end >= c.end {
        f.range.end
    } else {
        end
    }
}

impl Inner {
    /// Span `f`, at least the decoded bytes `need` asks for: a verified prefix when the index has chunk
    /// digests and the prefix is well short of the span, else the whole span (verified, on disk too).
    /// `held` is a prefix already in memory to go on from.
    pub(crate) async fn fetch_upto(
        &self,
        f: Fetch,
        need: Need,
        held: Option<Held>,
        priority: Priority,
    ) -> Result<Entry, StoreError> {
        let want = need.bytes(f.len);
        // Three quarters in, the rest of the span costs a reader less than the round trip that would fetch
        // it later. A prefetch knows how far its list (a profile, the startup set) reads: on a busy link the
        // rest would only delay the spans after it (a cold Python start with a profile fetched 0.18 MiB less
        // and started 13–17 ms sooner at 100 Mbit/s).
        let near_end = priority != Priority::Prefetch && want.saturating_mul(4) >= f.len.saturating_mul(3);
        let chunks = self.chunks_of(&f);
        // A first prefix ends on a chunk boundary: when that is most of the span's bytes anyway, the whole
        // span costs no more and needs no second trip.
        let no_cheaper = |c: &SpanChunks| {
            let end = prefix_end(&f, c, want);
            (end - f.range.start).saturating_mul(10) >= (f.range.end - f.range.start).saturating_mul(9)
        };
        let Some(c) = chunks.filter(|c| held.is_some() || !(near_end || no_cheaper(c))) else {
            return Ok(Entry { decoded: self.fetch(f).await?, held: None });
        };
        let want = if near_end { f.len } else { want };
        self.retrying(&f, || self.fetch_prefix(&f, &c, want, held.clone())).await
    }

    /// The chunks of span `f` the index records, if any.
    fn chunks_of(&self, f: &Fetch) -> Option<SpanChunks> {
        self.archive.chunk_table()?.span_chunks(f.index, f.range.start, f.chunks_end)
    }

    /// One attempt of [`Inner::fetch_upto`]: fetch on from `held` (or the span's first byte) until `want`
    /// decoded bytes come out.
    async fn fetch_prefix(
        &self,
        f: &Fetch,
        c: &SpanChunks,
        want: u64,
        held: Option<Held>,
    ) -> Result<Entry, StoreError> {
        let (layer, index, start) = (f.layer, f.index, f.range.start);
        let mut compressed = held.map_or_else(Vec::new, |h| h.compressed.to_vec());
        let _budget = self.budget.take(f.range.end - start + f.len).await;
        let window: Arc<[u8]> = self.archive.window(index)?.into();
        let mut end = prefix_end(f, c, want);
        let mut shortfalls = 0;
        loop {
            let have = start + compressed.len() as u64;
            if end > have {
                debug!(%layer, span = %index, start = have, len = end - have, "fetch span prefix");
                let more = self.read_blob(layer, have..end).await?;
                if end < f.range.end {
                    self.check_chunks(f, c, have, &more)?;
                }
                compressed.extend_from_slice(&more);
            }
            let whole = end >= f.range.end;
            let entry = self.decode_prefix(f, compressed, Arc::clone(&window), whole).await?;
            let Some(held) = entry.held.as_ref().filter(|_| (entry.decoded.len() as u64) < want) else {
                return Ok(entry);
            };
            // The estimate fell short: fetch on, as far as what is still wanted costs at the prefix's own ratio
            // or at the rest of the span's, whichever is further; from a second shortfall on, at least twice
            // as far, so a span whose ratio swings costs few trips.
            compressed = held.compressed.to_vec();
            let (have, got) = (start + held.compressed.len() as u64, entry.decoded.len() as u64);
            let at_prefix_ratio = scaled(have - start, want - got, got);
            let at_rest_ratio = scaled(f.range.end.saturating_sub(have), want - got, f.len - got);
            let mut next = have.saturating_add(at_prefix_ratio.max(at_rest_ratio)).saturating_add(slack(f.codec));
            shortfalls += 1;
            if shortfalls > 1 {
                next = next.max(have.saturating_add((have - f.range.start).max(c.size)));
            }
            end = on_chunk(f, c, next);
            debug!(%layer, span = %index, got, want, "span prefix fell short; fetching on");
        }
    }

    /// The prefix of span `f` a partial fetch kept on disk (in this process or an earlier one): what it
    /// decodes to when a decoded prefix file holds at least the `need`ed bytes (served without reading or
    /// inflating the prefix), else its compressed bytes checked against the chunk digests (a prefix file that
    /// fails is deleted and `None` returned: the span is fetched as if it had never been read).
    pub(crate) async fn disk_prefix(&self, f: &Fetch, need: Need) -> Option<DiskPrefix> {
        let c = self.chunks_of(f)?;
        if let Some(part) = self.disk_part(f, need).await {
            return Some(DiskPrefix::Decoded(part));
        }
        let (disk, key) = self.prefix_place(f)?;
        let max = f.range.end - f.range.start;
        let bytes = tokio::task::spawn_blocking(move || disk.get_prefix(&key, max)).await.ok()??;
        if let Err(e) = self.check_chunks(f, &c, f.range.start, &bytes) {
            debug!(layer = %f.layer, span = %f.index, error = &e as &dyn std::error::Error, "prefix file rejected");
            self.disk.as_ref()?.reject_prefix(&key, bytes.len() as u64);
            return None;
        }
        Some(DiskPrefix::Compressed(Held { compressed: bytes.into() }))
    }

    /// The first decoded bytes of span `f` that a decoded prefix file holds (see `cache::prefix`), when
    /// they are at least the `need`ed ones.
    async fn disk_part(&self, f: &Fetch, need: Need) -> Option<Vec<u8>> {
        let disk = self.disk.clone()?;
        let (span, len) = (f.span.digest, f.len);
        let part = tokio::task::spawn_blocking(move || disk.get_part(&span, len)).await.ok()??;
        (part.len() as u64 >= need.bytes(len)).then_some(part)
    }

    /// Keeps on disk the prefix of span `f` that `entry` holds (its compressed bytes and what they decode
    /// to), or, when it holds the whole span (now on disk as a span file) and the load went on from a
    /// prefix (`from_prefix`), removes those files. In the background; a whole span loaded from scratch
    /// costs nothing here.
    pub(crate) fn keep_prefix(&self, f: &Fetch, entry: &Entry, from_prefix: bool) {
        if entry.held.is_none() && !from_prefix {
            return;
        }
        let Some((disk, key)) = self.prefix_place(f) else { return };
        let held = entry.held.as_ref().map(|h| (h.compressed.clone(), entry.decoded.clone()));
        let span = f.span.digest;
        let Some(rt) = tokio::runtime::Handle::try_current().ok().or_else(|| self.runtime.clone()) else { return };
        drop(rt.spawn_blocking(move || match held {
            Some((compressed, decoded)) => {
                disk.put_prefix(&key, &compressed);
                disk.put_part(&span, &decoded);
            }
            None => disk.remove_prefix(&key, &span),
        }));
    }

    /// The disk cache and the name of span `f`'s prefix file (a prefix starts where a fetch of the span
    /// does).
    fn prefix_place(&self, f: &Fetch) -> Option<(Arc<crate::DiskCache>, clip_format::Digest)> {
        let disk = self.disk.clone()?;
        let layer = self.archive.meta().layers.get(f.layer.index())?.digest;
        Some((disk, crate::cache::prefix_key(&layer, f.range.start)))
    }

    /// The bytes of span `f`'s chunks `[from, from + bytes.len())` (whole chunks `c` describes) checked
    /// against the index.
    fn check_chunks(&self, f: &Fetch, c: &SpanChunks, from: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let table = self.archive.chunk_table();
        let len = bytes.len() as u64;
        let mut checked = 0;
        for (j, range) in c.pieces(from, len).into_iter().flatten() {
            let piece = bytes.get((range.start - from) as usize..(range.end - from) as usize);
            let expected = table.as_ref().and_then(|t| t.digest(c, j));
            let actual = piece.map_or_else(ChunkDigest::default, ChunkDigest::of);
            if piece.is_none() || expected != Some(actual) {
                return Err(self.chunk_failed(f, range.start, expected, actual));
            }
            checked = range.end - from;
        }
        if checked != len {
            // Not where a chunk starts, or bytes past the last whole chunk: nothing to check them against.
            return Err(self.chunk_failed(f, from + checked, None, ChunkDigest::of(&bytes[checked as usize..])));
        }
        Ok(())
    }

    /// Counts a chunk that failed its digest, as the error to return.
    fn chunk_failed(&self, f: &Fetch, offset: u64, expected: Option<ChunkDigest>, actual: ChunkDigest) -> StoreError {
        crate::stats::Counters::bump(&self.counters.verify_failures);
        let expected = expected.unwrap_or_default();
        StoreError::ChunkVerify { layer: f.layer, span: f.index, offset, expected, actual }
    }

    /// Inflates what `compressed` (the layer's bytes from where a fetch of span `f` starts) holds of it: the
    /// whole span when `whole` (verified against the span digest, written to the disk cache), else the prefix
    /// it holds, with the bytes it came from (the window checked against the index first).
    async fn decode_prefix(
        &self,
        f: &Fetch,
        compressed: Vec<u8>,
        window: Arc<[u8]>,
        whole: bool,
    ) -> Result<Entry, StoreError> {
        let (layer, index, span, codec, len, start) = (f.layer, f.index, f.span, f.codec, f.len, f.range.start);
        if !whole && !window.is_empty() {
            let recorded = self.archive.chunk_table().and_then(|t| t.window(index));
            if recorded != Some(ChunkDigest::of_window(&window)) {
                return Err(StoreError::WindowVerify { layer, span: index });
            }
        }
        let disk = self.disk.clone();
        let done = tokio::task::spawn_blocking(move || {
            let cp = checkpoint(&span, &window);
            let mut out = vec![0u8; len as usize];
            let got = clip_codec::decode_prefix(codec, &cp, start, &compressed, &mut out)?;
            if got as u64 == len {
                return Ok(
                    verified(&out, &span.digest, len, disk.as_ref()).map(|decoded| Entry { decoded, held: None })
                );
            }
            if whole {
                return Err(CodecError::Truncated { expected: len, got: got as u64 });
            }
            let held = Held { compressed: compressed.into() };
            Ok(Ok(Entry { decoded: out[..got].into(), held: Some(held) }))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(|source| StoreError::Decode { layer, span: index, source })?;
        done.map_err(|actual| self.verify_failed(layer, index, span.digest, actual))
    }
}
