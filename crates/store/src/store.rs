//! [`ContentStore`]: turns a read of (file, offset, len) into verified span bytes. Each span is fetched by
//! one range read of its compressed bytes, decoded from its checkpoint, checked against the digest recorded
//! at index time and kept in a small in-memory LRU. Concurrent readers of one span share one fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clip_codec::{CheckpointRef, Compression as Codec, SpanRef};
use clip_format::{Archive, Compression, DataRef};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use tracing::debug;

use crate::{LayerBlobs, StoreError};

/// Decoded, verified bytes of one span.
pub type SpanBytes = Arc<[u8]>;

/// How a [`ContentStore`] behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of decoded spans kept in memory (least recently used dropped first). Default 32 MiB.
    pub memory_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { memory_bytes: 32 << 20 }
    }
}

/// Counters of a store, for summaries, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Spans fetched from the blob source.
    pub spans_fetched: u64,
    /// Compressed bytes fetched from the blob source.
    pub bytes_fetched: u64,
    /// Span lookups answered from memory.
    pub memory_hits: u64,
    /// Spans that failed verification.
    pub verify_failures: u64,
}

#[derive(Default)]
struct Counters {
    spans_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    memory_hits: AtomicU64,
    verify_failures: AtomicU64,
}

/// A bounded LRU of decoded spans by span index.
#[derive(Default)]
struct Lru {
    map: HashMap<usize, (SpanBytes, u64)>,
    tick: u64,
    bytes: u64,
}

impl Lru {
    fn get(&mut self, k: usize) -> Option<SpanBytes> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&k).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn put(&mut self, k: usize, v: SpanBytes, limit: u64) {
        self.tick += 1;
        self.bytes += v.len() as u64;
        if let Some((old, _)) = self.map.insert(k, (v, self.tick)) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > limit && self.map.len() > 1 {
            let Some((&victim, _)) = self.map.iter().filter(|(&key, _)| key != k).min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.len() as u64;
            }
        }
    }
}

/// Serves file bytes of one archive.
pub struct ContentStore {
    archive: Arc<Archive>,
    blobs: Arc<dyn LayerBlobs>,
    config: StoreConfig,
    memory: Mutex<Lru>,
    inflight: Mutex<HashMap<usize, Arc<OnceCell<SpanBytes>>>>,
    counters: Counters,
}

impl ContentStore {
    pub fn new(archive: Arc<Archive>, blobs: Arc<dyn LayerBlobs>, config: StoreConfig) -> ContentStore {
        ContentStore {
            archive,
            blobs,
            config,
            memory: Mutex::default(),
            inflight: Mutex::default(),
            counters: Counters::default(),
        }
    }

    /// The archive this store serves.
    pub fn archive(&self) -> &Arc<Archive> {
        &self.archive
    }

    /// Counters so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            spans_fetched: c.spans_fetched.load(Ordering::Relaxed),
            bytes_fetched: c.bytes_fetched.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
            verify_failures: c.verify_failures.load(Ordering::Relaxed),
        }
    }

    /// Up to `len` bytes of the file at `data` starting at `offset` (fewer at the end of the file).
    pub async fn read(&self, data: DataRef, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let end = data.size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let (mut pos, stop) = (data.offset + offset, data.offset + end);
        while pos < stop {
            let index = self.archive.find_span(data.layer, pos)?;
            let range = self.archive.span_range(data.layer, index)?;
            let bytes = self.span(data.layer, index).await?;
            let from = (pos - range.start) as usize;
            let to = (stop.min(range.end) - range.start) as usize;
            if from >= to || to > bytes.len() {
                return Err(
                    clip_format::FormatError::Corrupt(format!("span {index} does not cover offset {pos}")).into()
                );
            }
            out.extend_from_slice(&bytes[from..to]);
            pos = range.start + to as u64;
        }
        Ok(out)
    }

    /// The verified bytes of span `index` (an index of the whole span table) of layer `layer`.
    pub async fn span(&self, layer: u32, index: usize) -> Result<SpanBytes, StoreError> {
        if let Some(b) = self.memory.lock().unwrap_or_else(|e| e.into_inner()).get(index) {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(index).or_default().clone()
        };
        let result = cell.get_or_try_init(|| self.fetch(layer, index)).await.cloned();
        if let Ok(bytes) = &result {
            self.memory.lock().unwrap_or_else(|e| e.into_inner()).put(index, bytes.clone(), self.config.memory_bytes);
        }
        // The first finisher retires the cell; later arrivals find the bytes in memory (or retry on error).
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&index).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&index);
        }
        result
    }

    /// Fetches, decodes and verifies one span.
    async fn fetch(&self, layer: u32, index: usize) -> Result<SpanBytes, StoreError> {
        let a = &self.archive;
        let meta = a.meta().layers.get(layer as usize).ok_or_else(|| StoreError::Layer {
            layer,
            media_type: String::new(),
            why: "no such layer in the index".into(),
        })?;
        let span = a.span(index)?;
        let out = a.span_range(layer, index)?;
        let last = a.layer_spans(layer)?.end - 1;
        let span_ref = |s: clip_format::SpanView, len: u64| SpanRef {
            out_offset: s.out_offset,
            in_offset: s.in_offset,
            bits: s.bits,
            len,
        };
        let next = if index < last { Some(span_ref(a.span(index + 1)?, 0)) } else { None };
        let codec = match meta.compression {
            Compression::Gzip => Codec::Gzip,
            Compression::Zstd => Codec::Zstd,
            Compression::None => Codec::None,
        };
        let this = span_ref(span, out.end - out.start);
        let range = clip_codec::fetch_range(codec, &this, next.as_ref(), meta.size);
        debug!(layer, span = index, start = range.start, len = range.end - range.start, "fetch span");
        let compressed = self.blobs.read(layer, range.clone()).await?;
        self.counters.spans_fetched.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_fetched.fetch_add(compressed.len() as u64, Ordering::Relaxed);
        let window = a.window(index)?;
        let decoded = tokio::task::spawn_blocking(move || {
            let cp = CheckpointRef {
                out_offset: span.out_offset,
                in_offset: span.in_offset,
                bits: span.bits,
                window: &window,
            };
            let bytes = clip_codec::decode_span(codec, &cp, range.start, &compressed, out.end - out.start)?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            Ok::<_, clip_codec::CodecError>((bytes, digest))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(|source| StoreError::Decode { layer, span: index, source })?;
        let (bytes, digest) = decoded;
        if digest != span.digest {
            self.counters.verify_failures.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Verify {
                layer,
                span: index,
                expected: hex::encode(span.digest),
                actual: hex::encode(digest),
            });
        }
        Ok(bytes.into())
    }
}
