//! Fetch and verify: one span's compressed bytes read with one range request, decoded from its checkpoint
//! and checked against the digest recorded at index time ([`verified`], the one check every byte from
//! outside passes, the remote tier's included) before they are written to the disk cache or served.
//! Bytes that fail are fetched again, up to [`VERIFY_ATTEMPTS`] times in all.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use clip_codec::{CheckpointRef, SpanRef};
use clip_format::{Compression, Digest, LayerIndex, SpanId, SpanView};
use tracing::{debug, warn};

use crate::stats::{Counters, Gauged};
use crate::store::Inner;
use crate::{DiskCache, SpanBytes, StoreError, VERIFY_ATTEMPTS};

/// `bytes` if they are the `len` bytes whose sha256 is `digest`, written to `disk` too; else the digest
/// they have. Only bytes that pass reach the disk cache. Blocking (it hashes).
pub(crate) fn verified(
    bytes: &[u8],
    digest: &Digest,
    len: u64,
    disk: Option<&Arc<DiskCache>>,
) -> Result<SpanBytes, Digest> {
    let actual = Digest::of(bytes);
    if bytes.len() as u64 != len || actual != *digest {
        return Err(actual);
    }
    if let Some(disk) = disk {
        disk.put(digest, bytes);
    }
    Ok(SpanBytes::from(bytes))
}

/// Where decoding span `span` resumes: its checkpoint with `window` (the one place a span becomes a
/// [`CheckpointRef`], for whole and partial fetches alike).
pub(crate) fn checkpoint<'a>(span: &SpanView, window: &'a [u8]) -> CheckpointRef<'a> {
    CheckpointRef { out_offset: span.out_offset, in_offset: span.in_offset, bits: span.bits, window }
}

/// Where a span's bytes are: what to fetch and how to decode it.
#[derive(Clone)]
pub(crate) struct Fetch {
    pub layer: LayerIndex,
    pub index: SpanId,
    pub span: SpanView,
    pub codec: Compression,
    /// The compressed bytes of the whole span.
    pub range: Range<u64>,
    /// Decoded length.
    pub len: u64,
    /// Where the next span's fetch starts in the layer (the layer's end for its last span): where this
    /// span's compressed chunks end.
    pub chunks_end: u64,
}

impl Inner {
    /// What fetching span `index` of `layer` (decoded bytes `out` of the layer) takes; refuses a span
    /// whose length no fetch could decode, before fetching or allocating anything.
    pub(crate) fn plan(
        &self,
        layer: LayerIndex,
        index: SpanId,
        span: SpanView,
        out: Range<u64>,
    ) -> Result<Fetch, StoreError> {
        let a = &self.archive;
        let layers = a.meta().layers.len();
        let meta = a.meta().layers.get(layer.index()).ok_or(StoreError::NoLayer { layer, layers })?;
        let last = a.layer_spans(layer)?.last();
        let span_ref =
            |s: SpanView, len: u64| SpanRef { out_offset: s.out_offset, in_offset: s.in_offset, bits: s.bits, len };
        let next = if Some(index) < last { Some(span_ref(a.span(index.next())?, 0)) } else { None };
        let codec = meta.compression;
        let len = out.end - out.start;
        let range = clip_codec::fetch_range(codec, &span_ref(span, len), next.as_ref(), meta.size);
        let compressed = range.end - range.start;
        if len > clip_codec::max_decoded_len(codec, compressed) {
            let source = clip_codec::CodecError::ImpossibleLength { len, compressed, compression: codec };
            return Err(StoreError::Decode { layer, span: index, source });
        }
        let chunks_end = next.map_or(meta.size, |n| clip_codec::fetch_start(codec, n.in_offset, n.bits));
        Ok(Fetch { layer, index, span, codec, range, len, chunks_end })
    }

    /// Fetches, decodes and verifies the whole span `f` and writes it to the disk cache; bad bytes are
    /// fetched again.
    pub(crate) async fn fetch(&self, f: Fetch) -> Result<SpanBytes, StoreError> {
        self.retrying(&f, || self.fetch_once(f.clone())).await
    }

    /// Runs `attempt` until it gives bytes that are not bad, at most [`VERIFY_ATTEMPTS`] times.
    pub(crate) async fn retrying<T, Fut>(&self, f: &Fetch, mut attempt: impl FnMut() -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(e @ (StoreError::Verify { .. } | StoreError::ChunkVerify { .. } | StoreError::Decode { .. }))
                    if tries < VERIFY_ATTEMPTS =>
                {
                    warn!(
                        layer = %f.layer,
                        span = %f.index,
                        attempt = tries,
                        error = &e as &dyn std::error::Error,
                        "fetched bytes are bad; fetching again"
                    );
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// Reads `range` of `layer`'s blob, counted and timed, within the in-flight budget.
    pub(crate) async fn read_blob(&self, layer: LayerIndex, range: Range<u64>) -> Result<bytes::Bytes, StoreError> {
        let _inflight = Gauged::start(&self.counters, |c| &c.inflight_fetches);
        let started = Instant::now();
        let compressed = self.blobs.read(layer, range).await?;
        self.counters.latency(started.elapsed());
        self.counters.fetched(layer, compressed.len() as u64);
        Ok(compressed)
    }

    /// One fetch of a span's compressed bytes, decoded and verified.
    async fn fetch_once(&self, f: Fetch) -> Result<SpanBytes, StoreError> {
        let Fetch { layer, index, span, codec, range, len, .. } = f;
        debug!(%layer, span = %index, start = range.start, len = range.end - range.start, "fetch span");
        let _budget = self.budget.take(range.end - range.start + len).await;
        let compressed = self.read_blob(layer, range.clone()).await?;
        let window = self.archive.window(index)?;
        let disk = self.disk.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let cp = checkpoint(&span, &window);
            let bytes = clip_codec::decode_span(codec, &cp, range.start, &compressed, len)?;
            Ok::<_, clip_codec::CodecError>(verified(&bytes, &span.digest, len, disk.as_ref()))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(|source| StoreError::Decode { layer, span: index, source })?;
        decoded.map_err(|actual| self.verify_failed(layer, index, span.digest, actual))
    }

    /// Counts bytes that failed the span digest, as the error to return.
    pub(crate) fn verify_failed(
        &self,
        layer: LayerIndex,
        span: SpanId,
        expected: Digest,
        actual: Digest,
    ) -> StoreError {
        Counters::bump(&self.counters.verify_failures);
        StoreError::Verify { layer, span, expected, actual }
    }
}
