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

use crate::stats::{Counters, InFlight};
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

/// Where a span's bytes are: what to fetch and how to decode it.
#[derive(Clone)]
struct Fetch {
    layer: LayerIndex,
    index: SpanId,
    span: SpanView,
    codec: Compression,
    /// The compressed bytes to read.
    range: Range<u64>,
    /// Decoded length.
    len: u64,
}

impl Inner {
    /// Fetches, decodes and verifies span `index` of `layer` (decoded bytes `out` of the layer), and writes
    /// it to the disk cache; bad bytes are fetched again.
    pub(crate) async fn fetch(
        &self,
        layer: LayerIndex,
        index: SpanId,
        span: SpanView,
        out: Range<u64>,
    ) -> Result<SpanBytes, StoreError> {
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
            // No fetch can help: refused before fetching or allocating anything.
            let source = clip_codec::CodecError::ImpossibleLength { len, compressed, compression: codec };
            return Err(StoreError::Decode { layer, span: index, source });
        }
        let fetch = Fetch { layer, index, span, codec, range, len };
        let mut attempt = 1;
        loop {
            match self.fetch_once(fetch.clone()).await {
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

    /// One fetch of a span's compressed bytes, decoded and verified.
    async fn fetch_once(&self, f: Fetch) -> Result<SpanBytes, StoreError> {
        let Fetch { layer, index, span, codec, range, len } = f;
        debug!(%layer, span = %index, start = range.start, len = range.end - range.start, "fetch span");
        let compressed = {
            let _inflight = InFlight::start(&self.counters.inflight_fetches);
            let started = Instant::now();
            let compressed = self.blobs.read(layer, range.clone()).await?;
            self.counters.latency(started.elapsed());
            compressed
        };
        self.counters.fetched(layer, compressed.len() as u64);
        let window = self.archive.window(index)?;
        let disk = self.disk.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let cp = CheckpointRef {
                out_offset: span.out_offset,
                in_offset: span.in_offset,
                bits: span.bits,
                window: &window,
            };
            let bytes = clip_codec::decode_span(codec, &cp, range.start, &compressed, len)?;
            Ok::<_, clip_codec::CodecError>(verified(&bytes, &span.digest, len, disk.as_ref()))
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
