//! Compressed-chunk digests, the lazy `CHNK` section: a truncated sha256 of every chunk of each span's
//! *compressed* bytes, and one of every span's raw checkpoint window. With them a store can verify the
//! compressed prefix of a span it fetched, and the window it resumes from, before it inflates and serves the
//! bytes — without fetching the whole span to check the span's own digest.
//!
//! A span's chunks cut its compressed bytes from where a fetch of it starts (see
//! `clip_codec::fetch_range`) to where the next span's fetch starts (the layer's end for its last span): every
//! [`CHUNK_SIZE`] bytes from its start, the last chunk taking the rest. So a prefix starts on the span's own
//! first byte, never on bytes of the span before it; how many chunks each span has is stored (the indexer
//! rounds the rest to the nearest chunk, so a layer has about as many chunks as its size holds).
//!
//! ```text
//! header (8 bytes)  chunk_size u32, digest_len u16 (= CHUNK_DIGEST_LEN), layout u16 (= LAYOUT_PER_SPAN)
//! counts            per span of the span table in order: u16, its chunks (0: none, fetch it whole)
//! chunks            per span in order: its chunk digests
//! windows           per span of the span table in order: WINDOW_DIGEST_LEN bytes of its raw window's
//!                   sha256 (zero: no window)
//! roots             (layout 2 only) per span of the span table in order: its ROOT_LEN-byte tree root
//! ```
//! A span's tree root ([`SpanRoot`]) commits to the digests of its decoded bytes cut in [`TREE_LEAF`]
//! leaves from its start. It lets a store check bytes decoded from somewhere *inside* a span (a resume point
//! a recorded profile carries, see `clip_store`) against the index: the leaves it decoded are hashed, the
//! other leaves' digests come with the resume point, and only the right bytes give the recorded root (the
//! digests that come with it need no trust: a wrong one gives another root). 16 bytes a span.
//! A window comes from the index itself, as the span digests do, so its digest only has to catch a damaged
//! index (a flipped bit in `WIND`), not a lying registry: 4 bytes. The chunk digests stand between the
//! registry and the bytes served: 12 bytes (96 bits) each. Both sizes keep the whole index within 0.5 % of
//! the image.
//! The section is not loaded at open (it is not in the part a mount reads): [`Archive::chunk_table`]
//! checks its checksum and length on first use; an index without one (older, or data-carrying), with the
//! layer-aligned layout older clips wrote, or with a damaged one gives `None`, and readers fall back to
//! whole spans checked by the span digests.

use std::ops::Range;

use crate::layout::{Le, SEC_CHNK};
use crate::{Archive, FormatError, SpanId};

/// Compressed bytes per chunk: 32 KiB (a digest costs 12 bytes, 1/2730 of the image).
pub const CHUNK_SIZE: u64 = 32 << 10;
/// Bytes of each stored chunk digest: the first 12 bytes of the sha256.
pub const CHUNK_DIGEST_LEN: usize = 12;
/// Bytes of each stored window digest: the first 4 bytes of the sha256 (see the module doc).
pub const WINDOW_DIGEST_LEN: usize = 4;
const HEADER_LEN: usize = 8;
/// The section's layout: chunks cut per span (older clips wrote 0 there, chunks cut per layer).
const LAYOUT_PER_SPAN: u16 = 1;
/// Chunks cut per span, and a tree root per span after the window digests.
const LAYOUT_WITH_ROOTS: u16 = 2;
/// Decoded bytes per leaf of a span's tree root (the last leaf takes the rest).
pub const TREE_LEAF: u64 = 32 << 10;
/// Bytes of each stored span root: the first 16 bytes of its sha256.
pub const ROOT_LEN: usize = 16;
/// Bytes of a span's chunk count.
const COUNT_LEN: usize = 2;

/// The first [`CHUNK_DIGEST_LEN`] bytes of the sha256 of a compressed chunk or of a raw window.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChunkDigest(pub [u8; CHUNK_DIGEST_LEN]);

impl ChunkDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkDigest {
        use sha2::Digest as _;
        ChunkDigest::from_sha256(sha2::Sha256::digest(bytes).into())
    }

    /// The digest whose full sha256 is `full`.
    pub fn from_sha256(full: [u8; 32]) -> ChunkDigest {
        let mut d = [0u8; CHUNK_DIGEST_LEN];
        d.copy_from_slice(&full[..CHUNK_DIGEST_LEN]);
        ChunkDigest(d)
    }

    /// The digest recorded for a span's window: the first [`WINDOW_DIGEST_LEN`] bytes of its sha256 (the
    /// rest zero), or zero when it has none.
    pub fn of_window(window: &[u8]) -> ChunkDigest {
        if window.is_empty() {
            return ChunkDigest::default();
        }
        ChunkDigest::of(window).window_part()
    }

    /// This digest cut to what a window digest keeps.
    fn window_part(self) -> ChunkDigest {
        let mut d = [0u8; CHUNK_DIGEST_LEN];
        d[..WINDOW_DIGEST_LEN].copy_from_slice(&self.0[..WINDOW_DIGEST_LEN]);
        ChunkDigest(d)
    }
}

/// The root of a span's digest tree: the first [`ROOT_LEN`] bytes of the sha256 of the span's length
/// (8 bytes, little-endian) and the sha256 of each [`TREE_LEAF`] leaf of its decoded bytes, in order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpanRoot(pub [u8; ROOT_LEN]);

/// The sha256 of one leaf of a span's decoded bytes.
pub type LeafDigest = [u8; 32];

impl SpanRoot {
    /// The root of a span `len` bytes long whose leaves have the digests `leaves`.
    pub fn of_leaves(len: u64, leaves: &[LeafDigest]) -> SpanRoot {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"clip span tree v1\0");
        h.update(len.to_le_bytes());
        for leaf in leaves {
            h.update(leaf);
        }
        let full: [u8; 32] = h.finalize().into();
        let mut d = [0u8; ROOT_LEN];
        d.copy_from_slice(&full[..ROOT_LEN]);
        SpanRoot(d)
    }

    /// The root of the span whose decoded bytes are `bytes`.
    pub fn of(bytes: &[u8]) -> SpanRoot {
        SpanRoot::of_leaves(bytes.len() as u64, &leaf_digests(bytes))
    }

    /// How many leaves a span of `len` bytes has.
    pub fn leaves(len: u64) -> u64 {
        len.div_ceil(TREE_LEAF)
    }
}

/// The digests of `bytes` cut in [`TREE_LEAF`] leaves from its start (the last takes the rest).
pub fn leaf_digests(bytes: &[u8]) -> Vec<LeafDigest> {
    use sha2::Digest as _;
    bytes.chunks(TREE_LEAF as usize).map(|leaf| sha2::Sha256::digest(leaf).into()).collect()
}

impl std::fmt::Debug for SpanRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The contents of a `CHNK` section: of one layer (a part) or of every layer of an image, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Compressed bytes per chunk (a span's last chunk takes the rest of the span).
    pub chunk_size: u64,
    /// One per span, in span table order: how many of `chunks` are its.
    pub counts: Vec<u16>,
    /// The chunk digests of every span, one span after the other.
    pub chunks: Vec<ChunkDigest>,
    /// One per span, in span table order: [`ChunkDigest::of_window`] its raw window.
    pub windows: Vec<ChunkDigest>,
    /// One per span, in span table order, or none (an index from before roots): its [`SpanRoot`].
    pub roots: Vec<SpanRoot>,
}

impl Chunks {
    /// No digests yet, chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u64) -> Chunks {
        Chunks { chunk_size, counts: Vec::new(), chunks: Vec::new(), windows: Vec::new(), roots: Vec::new() }
    }

    /// Appends `other` (the next layer's); false (nothing appended) when its chunk size differs. When
    /// either has no roots, the result has none.
    pub fn append(&mut self, other: &Chunks) -> bool {
        if other.chunk_size != self.chunk_size {
            return false;
        }
        let had_roots = self.roots.len() == self.windows.len() && other.roots.len() == other.windows.len();
        if had_roots {
            self.roots.extend_from_slice(&other.roots);
        } else {
            self.roots.clear();
        }
        self.counts.extend_from_slice(&other.counts);
        self.chunks.extend_from_slice(&other.chunks);
        self.windows.extend_from_slice(&other.windows);
        true
    }

    /// Refuses digests that do not fit `spans` spans.
    pub(crate) fn check(&self, spans: usize) -> Result<(), FormatError> {
        let count: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let roots = self.roots.is_empty() || self.roots.len() == spans;
        if self.counts.len() != spans || self.chunks.len() as u64 != count || self.windows.len() != spans || !roots {
            return Err(FormatError::Invalid(format!(
                "{} chunk digests, {} chunk counts, {} window digests and {} roots for {count} chunks and {spans} spans",
                self.chunks.len(),
                self.counts.len(),
                self.windows.len(),
                self.roots.len()
            )));
        }
        Ok(())
    }

    /// The section's bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let size = u32::try_from(self.chunk_size).ok().filter(|&s| s > 0);
        let size = size.ok_or_else(|| FormatError::Invalid(format!("chunk size {}", self.chunk_size)))?;
        let len = HEADER_LEN
            + self.counts.len() * COUNT_LEN
            + self.chunks.len() * CHUNK_DIGEST_LEN
            + self.windows.len() * WINDOW_DIGEST_LEN
            + self.roots.len() * ROOT_LEN;
        let with_roots = !self.roots.is_empty();
        if with_roots && self.roots.len() != self.windows.len() {
            return Err(FormatError::Invalid(format!("{} roots for {} spans", self.roots.len(), self.windows.len())));
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(CHUNK_DIGEST_LEN as u16).to_le_bytes());
        out.extend_from_slice(&if with_roots { LAYOUT_WITH_ROOTS } else { LAYOUT_PER_SPAN }.to_le_bytes());
        for c in &self.counts {
            out.extend_from_slice(&c.to_le_bytes());
        }
        for d in &self.chunks {
            out.extend_from_slice(&d.0);
        }
        for d in &self.windows {
            out.extend_from_slice(&d.0[..WINDOW_DIGEST_LEN]);
        }
        for r in &self.roots {
            out.extend_from_slice(&r.0);
        }
        Ok(out)
    }

    /// Decodes a section written by [`Chunks::encode`] for `spans` spans; `None` when it does not fit them.
    pub(crate) fn decode(raw: &[u8], spans: usize) -> Option<Chunks> {
        let Fitting { chunk_size, body, chunks: count, roots: with_roots, .. } = fitting(raw, spans)?;
        let (counts, rest) = body.split_at(spans * COUNT_LEN);
        let (chunks, rest) = rest.split_at(usize::try_from(count).ok()? * CHUNK_DIGEST_LEN);
        let (windows, roots) = rest.split_at(spans * WINDOW_DIGEST_LEN);
        let counts = stored_counts(counts).map(|c| c as u16);
        let chunks = chunks.chunks_exact(CHUNK_DIGEST_LEN).map(|d| ChunkDigest(d.try_into().unwrap_or_default()));
        let windows = windows.chunks_exact(WINDOW_DIGEST_LEN).map(window_digest);
        let roots = roots.chunks_exact(ROOT_LEN).map(|r| SpanRoot(r.try_into().unwrap_or_default()));
        let roots = if with_roots { roots.collect() } else { Vec::new() };
        Some(Chunks {
            chunk_size,
            counts: counts.collect(),
            chunks: chunks.collect(),
            windows: windows.collect(),
            roots,
        })
    }
}

/// A section clip writes, as read from its bytes.
struct Fitting<'a> {
    chunk_size: u64,
    /// Everything after the header.
    body: &'a [u8],
    /// How many chunk digests it holds.
    chunks: u64,
    /// How many chunk digests the spans before span `SUM_EVERY * k` have, for each `k`.
    sums: Vec<u64>,
    /// Whether a root per span follows the window digests.
    roots: bool,
}

/// Spans between two kept sums of chunk counts: finding a span's first digest adds at most this many
/// counts, and the sums cost 8 bytes per this many spans.
const SUM_EVERY: usize = 64;

/// `raw`'s chunk size, body and chunk count, if it is a section clip writes for `spans` spans.
fn fitting(raw: &[u8], spans: usize) -> Option<Fitting<'_>> {
    let mut r = Le(raw.get(..HEADER_LEN)?);
    let chunk_size = u64::from(r.u32());
    let (digest_len, layout) = (r.u16(), r.u16());
    let roots = layout == LAYOUT_WITH_ROOTS;
    if chunk_size == 0 || usize::from(digest_len) != CHUNK_DIGEST_LEN || !(roots || layout == LAYOUT_PER_SPAN) {
        return None;
    }
    let body = &raw[HEADER_LEN..];
    let counts = body.get(..spans.checked_mul(COUNT_LEN)?)?;
    let (mut chunks, mut sums) = (0u64, Vec::with_capacity(spans / SUM_EVERY + 1));
    for (i, n) in stored_counts(counts).enumerate() {
        if i % SUM_EVERY == 0 {
            sums.push(chunks);
        }
        chunks += n;
    }
    let len = (chunks as usize)
        .checked_mul(CHUNK_DIGEST_LEN)?
        .checked_add(spans.checked_mul(WINDOW_DIGEST_LEN + COUNT_LEN + if roots { ROOT_LEN } else { 0 })?)?;
    (body.len() == len).then_some(Fitting { chunk_size, body, chunks, sums, roots })
}

/// What [`Archive::chunk_table`] keeps of a section it checked.
#[derive(Debug)]
pub(crate) struct CheckedChunks {
    /// Where the body starts in the file.
    offset: u64,
    chunk_size: u64,
    chunks: u64,
    sums: Vec<u64>,
    roots: bool,
}

/// The chunk counts stored in `raw` (a whole number of them).
fn stored_counts(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(COUNT_LEN).map(|c| u64::from(u16::from_le_bytes([c[0], c[1]])))
}

/// A stored window digest, as [`ChunkDigest::of_window`] gives it.
fn window_digest(stored: &[u8]) -> ChunkDigest {
    let mut d = [0u8; CHUNK_DIGEST_LEN];
    d[..WINDOW_DIGEST_LEN].copy_from_slice(stored);
    ChunkDigest(d)
}

/// Where the chunks of one span lie in its layer's compressed stream, with their digests' place in the
/// table: see [`ChunkTable::span_chunks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanChunks {
    /// Where the span's first chunk starts (where a fetch of the span starts).
    pub start: u64,
    /// Where its last chunk ends (where the next span's fetch starts, or the layer's end).
    pub end: u64,
    /// Bytes of every chunk but the last.
    pub size: u64,
    /// How many chunks it has (at least 1).
    pub count: u64,
    /// Index of its first digest in the table.
    first: u64,
}

impl SpanChunks {
    /// Where chunk `j` of the span ends.
    fn chunk_end(&self, j: u64) -> u64 {
        if j + 1 >= self.count {
            self.end
        } else {
            self.start + (j + 1) * self.size
        }
    }

    /// The end of the chunk holding byte `at - 1`: where a prefix that must reach `at` ends (the span's
    /// `start` for `at` at or before it, its `end` past it).
    pub fn end_covering(&self, at: u64) -> u64 {
        if at <= self.start {
            return self.start;
        }
        self.chunk_end(((at - 1 - self.start) / self.size).min(self.count - 1))
    }

    /// The chunks that make up `from..` with `len` bytes, as (chunk index within the span, its range), when
    /// `from` is where a chunk starts; pieces past the span's chunks are left out.
    pub fn pieces(&self, from: u64, len: u64) -> Option<impl Iterator<Item = (u64, Range<u64>)> + '_> {
        let off = from.checked_sub(self.start)?;
        if off % self.size != 0 || off / self.size >= self.count {
            return None;
        }
        let stop = from.saturating_add(len);
        let mut j = off / self.size;
        Some(std::iter::from_fn(move || {
            let begin = self.start + j * self.size;
            if j >= self.count || begin >= stop {
                return None;
            }
            let piece = (j, begin..self.chunk_end(j));
            j += 1;
            Some(piece)
        }))
    }
}

/// The checked `CHNK` section of an open archive: see [`Archive::chunk_table`].
pub struct ChunkTable<'a> {
    body: &'a [u8],
    chunk_size: u64,
    spans: usize,
    /// Chunk digests in all.
    chunks: u64,
    /// How many chunk digests the spans before span `SUM_EVERY * k` have, for each `k`.
    sums: &'a [u64],
    /// Whether the section has a root per span.
    roots: bool,
}

impl ChunkTable<'_> {
    /// Compressed bytes per chunk (but a span's last).
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The chunks of span `span`, whose fetch starts at `start` in its layer and whose next span's fetch
    /// starts at `end` (the layer's end for its last span); `None` when the index records none for it (fetch
    /// it whole) or its count does not fit those bounds.
    pub fn span_chunks(&self, span: SpanId, start: u64, end: u64) -> Option<SpanChunks> {
        let i = usize::try_from(span.0).ok().filter(|&i| i < self.spans)?;
        let from = i / SUM_EVERY * SUM_EVERY;
        let mut counts = stored_counts(&self.body[from * COUNT_LEN..(i + 1) * COUNT_LEN]);
        let first = self.sums.get(i / SUM_EVERY)? + counts.by_ref().take(i - from).sum::<u64>();
        let n = counts.next()?;
        let full = (n.checked_sub(1)?).checked_mul(self.chunk_size)?;
        // Every chunk but the last is whole, and the last is not empty.
        if end <= start || full >= end - start {
            return None;
        }
        Some(SpanChunks { start, end, size: self.chunk_size, count: n, first })
    }

    /// The recorded digest of chunk `j` of the span `chunks` describes.
    pub fn digest(&self, chunks: &SpanChunks, j: u64) -> Option<ChunkDigest> {
        if j >= chunks.count {
            return None;
        }
        let i = chunks.first.checked_add(j).filter(|&i| i < self.chunks)?;
        let start = (self.spans * COUNT_LEN).checked_add(usize::try_from(i).ok()?.checked_mul(CHUNK_DIGEST_LEN)?)?;
        let d = self.body.get(start..start.checked_add(CHUNK_DIGEST_LEN)?)?;
        Some(ChunkDigest(d.try_into().ok()?))
    }

    /// The recorded digest of span `span`'s raw window (zero: it has none).
    pub fn window(&self, span: SpanId) -> Option<ChunkDigest> {
        if usize::try_from(span.0).ok()? >= self.spans {
            return None;
        }
        let start = (self.spans * COUNT_LEN)
            .checked_add(usize::try_from(self.chunks).ok()?.checked_mul(CHUNK_DIGEST_LEN)?)?
            .checked_add(usize::try_from(span.0).ok()?.checked_mul(WINDOW_DIGEST_LEN)?)?;
        self.body.get(start..start.checked_add(WINDOW_DIGEST_LEN)?).map(window_digest)
    }

    /// The recorded tree root of span `span`; `None` when the index has no roots (an older clip wrote it).
    pub fn root(&self, span: SpanId) -> Option<SpanRoot> {
        if !self.roots || usize::try_from(span.0).ok()? >= self.spans {
            return None;
        }
        let start = (self.spans * (COUNT_LEN + WINDOW_DIGEST_LEN))
            .checked_add(usize::try_from(self.chunks).ok()?.checked_mul(CHUNK_DIGEST_LEN)?)?
            .checked_add(usize::try_from(span.0).ok()?.checked_mul(ROOT_LEN)?)?;
        let r = self.body.get(start..start.checked_add(ROOT_LEN)?)?;
        Some(SpanRoot(r.try_into().ok()?))
    }
}

impl Archive {
    /// The `CHNK` section, checked (checksum and length) on the first call: `None` when the index has
    /// none, is not local, or its section is damaged (callers then verify whole spans).
    pub fn chunk_table(&self) -> Option<ChunkTable<'_>> {
        let checked = self.chunks.get_or_init(|| {
            let e = self.section(SEC_CHNK)?;
            let raw = self.local_range(e.offset..e.offset.checked_add(e.stored_len)?).ok()?;
            if crc32c::crc32c(raw) != e.crc {
                return None;
            }
            let Fitting { chunk_size, chunks, sums, roots, .. } = fitting(raw, self.span_count())?;
            Some(CheckedChunks { offset: e.offset + HEADER_LEN as u64, chunk_size, chunks, sums, roots })
        });
        let CheckedChunks { offset, chunk_size, chunks, sums, roots } = checked.as_ref()?;
        let e = self.section(SEC_CHNK)?;
        let body = self.local_range(*offset..e.offset + e.stored_len).ok()?;
        let spans = self.span_count();
        Some(ChunkTable { body, chunk_size: *chunk_size, spans, chunks: *chunks, sums, roots: *roots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_in_the_per_layer_layout_older_clips_wrote_is_not_read() {
        let chunks = Chunks {
            chunk_size: CHUNK_SIZE,
            counts: vec![2],
            chunks: vec![ChunkDigest([1; CHUNK_DIGEST_LEN]), ChunkDigest([2; CHUNK_DIGEST_LEN])],
            windows: vec![ChunkDigest::default()],
            roots: Vec::new(),
        };
        let mut raw = chunks.encode().unwrap();
        assert_eq!(Chunks::decode(&raw, 1), Some(chunks));
        // Older clips wrote `digest_len` as a u32 there: its high half, this layout field, was 0.
        raw[6..8].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(Chunks::decode(&raw, 1), None);
    }
}
