//! Compressed-chunk digests, the lazy `CHNK` section: a truncated sha256 of every [`CHUNK_SIZE`] bytes of
//! each layer's *compressed* stream (aligned to the layer's start, so gzip, zstd and raw layers are cut the
//! same way), and one of every span's raw checkpoint window. With them a store can verify the compressed
//! prefix of a span it fetched, and the window it resumes from, before it inflates and serves the bytes —
//! without fetching the whole span to check the span's own digest.
//!
//! ```text
//! header (8 bytes)  chunk_size u32, digest_len u32 (= CHUNK_DIGEST_LEN)
//! chunks            per layer in order: ceil(layer size / chunk_size) digests of the compressed chunks
//! windows           per span of the span table in order: WINDOW_DIGEST_LEN bytes of its raw window's
//!                   sha256 (zero: no window)
//! ```
//! A window comes from the index itself, as the span digests do, so its digest only has to catch a damaged
//! index (a flipped bit in `WIND`), not a lying registry: 4 bytes. The chunk digests stand between the
//! registry and the bytes served: 12 bytes (96 bits) each. Both sizes keep the whole index within 0.5 % of
//! the image.
//! The section is not loaded at open (it is not in the part a mount reads): [`Archive::chunk_table`]
//! checks its checksum and length on first use; an index without one (older, or data-carrying) or with a
//! damaged one gives `None`, and readers fall back to whole spans checked by the span digests.

use std::ops::Range;

use crate::layout::{Le, SEC_CHNK};
use crate::{Archive, FormatError, LayerIndex, SpanId};

/// Compressed bytes per chunk: 192 KiB (a digest costs 12 bytes, 1/16384 of the image).
pub const CHUNK_SIZE: u64 = 192 << 10;
/// Bytes of each stored chunk digest: the first 12 bytes of the sha256.
pub const CHUNK_DIGEST_LEN: usize = 12;
/// Bytes of each stored window digest: the first 4 bytes of the sha256 (see the module doc).
pub const WINDOW_DIGEST_LEN: usize = 4;
const HEADER_LEN: usize = 8;

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

/// How many chunks a compressed stream of `size` bytes has.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size.max(1))
}

/// How many chunks streams of `sizes` bytes have in all (saturating: sizes come from the index).
fn total_chunks(sizes: impl IntoIterator<Item = u64>, chunk_size: u64) -> u64 {
    sizes.into_iter().fold(0u64, |n, s| n.saturating_add(chunk_count(s, chunk_size)))
}

/// The contents of a `CHNK` section: of one layer (a part) or of every layer of an image, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Compressed bytes per chunk (the last chunk of a layer may be shorter).
    pub chunk_size: u64,
    /// The chunk digests of every layer, one layer after the other.
    pub chunks: Vec<ChunkDigest>,
    /// One per span, in span table order: [`ChunkDigest::of_window`] its raw window.
    pub windows: Vec<ChunkDigest>,
}

impl Chunks {
    /// No digests yet, chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u64) -> Chunks {
        Chunks { chunk_size, chunks: Vec::new(), windows: Vec::new() }
    }

    /// Appends `other` (the next layer's); false (nothing appended) when its chunk size differs.
    pub fn append(&mut self, other: &Chunks) -> bool {
        if other.chunk_size != self.chunk_size {
            return false;
        }
        self.chunks.extend_from_slice(&other.chunks);
        self.windows.extend_from_slice(&other.windows);
        true
    }

    /// Refuses digests that do not fit streams of `sizes` bytes (one a layer) and `spans` spans.
    pub(crate) fn check(&self, sizes: &[u64], spans: usize) -> Result<(), FormatError> {
        let count = total_chunks(sizes.iter().copied(), self.chunk_size);
        if self.chunks.len() as u64 != count || self.windows.len() != spans {
            return Err(FormatError::Invalid(format!(
                "{} chunk digests and {} window digests for {count} chunks and {spans} spans",
                self.chunks.len(),
                self.windows.len()
            )));
        }
        Ok(())
    }

    /// The section's bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let size = u32::try_from(self.chunk_size).ok().filter(|&s| s > 0);
        let size = size.ok_or_else(|| FormatError::Invalid(format!("chunk size {}", self.chunk_size)))?;
        let len = HEADER_LEN + self.chunks.len() * CHUNK_DIGEST_LEN + self.windows.len() * WINDOW_DIGEST_LEN;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(CHUNK_DIGEST_LEN as u32).to_le_bytes());
        for d in &self.chunks {
            out.extend_from_slice(&d.0);
        }
        for d in &self.windows {
            out.extend_from_slice(&d.0[..WINDOW_DIGEST_LEN]);
        }
        Ok(out)
    }

    /// Decodes a section written by [`Chunks::encode`] for streams of `sizes` bytes and `spans` spans;
    /// `None` when it does not fit them.
    pub(crate) fn decode(raw: &[u8], sizes: &[u64], spans: usize) -> Option<Chunks> {
        let (chunk_size, body, count) = fitting(raw, sizes, spans)?;
        let (chunks, windows) = body.split_at(count * CHUNK_DIGEST_LEN);
        let chunks = chunks.chunks_exact(CHUNK_DIGEST_LEN).map(|d| ChunkDigest(d.try_into().unwrap_or_default()));
        let windows = windows.chunks_exact(WINDOW_DIGEST_LEN).map(window_digest);
        Some(Chunks { chunk_size, chunks: chunks.collect(), windows: windows.collect() })
    }
}

/// The chunk size, the digests and how many of them are chunks, if `raw` is a section clip writes for
/// streams of `sizes` bytes and `spans` spans.
fn fitting<'a>(raw: &'a [u8], sizes: &[u64], spans: usize) -> Option<(u64, &'a [u8], usize)> {
    let mut r = Le(raw.get(..HEADER_LEN)?);
    let (chunk_size, digest_len) = (u64::from(r.u32()), r.u32());
    if chunk_size == 0 || digest_len as usize != CHUNK_DIGEST_LEN {
        return None;
    }
    let count = usize::try_from(total_chunks(sizes.iter().copied(), chunk_size)).ok()?;
    let body = &raw[HEADER_LEN..];
    let len = count.checked_mul(CHUNK_DIGEST_LEN)?.checked_add(spans.checked_mul(WINDOW_DIGEST_LEN)?)?;
    (body.len() == len).then_some((chunk_size, body, count))
}

/// A stored window digest, as [`ChunkDigest::of_window`] gives it.
fn window_digest(stored: &[u8]) -> ChunkDigest {
    let mut d = [0u8; CHUNK_DIGEST_LEN];
    d[..WINDOW_DIGEST_LEN].copy_from_slice(stored);
    ChunkDigest(d)
}

/// The checked `CHNK` section of an open archive: see [`Archive::chunk_table`].
pub struct ChunkTable<'a> {
    archive: &'a Archive,
    body: &'a [u8],
    chunk_size: u64,
}

impl ChunkTable<'_> {
    /// Compressed bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The compressed range of chunk `chunk` of `layer` (the last one ends at the layer's end).
    pub fn chunk_range(&self, layer: LayerIndex, chunk: u64) -> Option<Range<u64>> {
        let size = self.archive.meta().layers.get(layer.index())?.size;
        let start = chunk.checked_mul(self.chunk_size).filter(|&s| s < size)?;
        Some(start..start.saturating_add(self.chunk_size).min(size))
    }

    /// The recorded digest of chunk `chunk` of `layer`.
    pub fn chunk(&self, layer: LayerIndex, chunk: u64) -> Option<ChunkDigest> {
        let layers = &self.archive.meta().layers;
        let l = layers.get(layer.index())?;
        if chunk >= chunk_count(l.size, self.chunk_size) {
            return None;
        }
        let before = total_chunks(layers[..layer.index()].iter().map(|l| l.size), self.chunk_size);
        self.digest(before.checked_add(chunk)?)
    }

    /// The recorded digest of span `span`'s raw window (zero: it has none).
    pub fn window(&self, span: SpanId) -> Option<ChunkDigest> {
        let chunks = total_chunks(self.archive.meta().layers.iter().map(|l| l.size), self.chunk_size);
        let start = usize::try_from(chunks)
            .ok()?
            .checked_mul(CHUNK_DIGEST_LEN)?
            .checked_add(usize::try_from(span.0).ok()?.checked_mul(WINDOW_DIGEST_LEN)?)?;
        self.body.get(start..start.checked_add(WINDOW_DIGEST_LEN)?).map(window_digest)
    }

    fn digest(&self, i: u64) -> Option<ChunkDigest> {
        let start = usize::try_from(i).ok()?.checked_mul(CHUNK_DIGEST_LEN)?;
        let d = self.body.get(start..start.checked_add(CHUNK_DIGEST_LEN)?)?;
        Some(ChunkDigest(d.try_into().ok()?))
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
            let sizes: Vec<u64> = self.meta().layers.iter().map(|l| l.size).collect();
            let (chunk_size, _, _) = fitting(raw, &sizes, self.span_count())?;
            Some((e.offset + HEADER_LEN as u64, chunk_size))
        });
        let (offset, chunk_size) = (*checked)?;
        let e = self.section(SEC_CHNK)?;
        let body = self.local_range(offset..e.offset + e.stored_len).ok()?;
        Some(ChunkTable { archive: self, body, chunk_size })
    }
}
