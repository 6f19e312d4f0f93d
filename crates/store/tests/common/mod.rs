//! Test fixtures: layers (raw and gzip) indexed with the real codec, an archive written with the real
//! format writer, and a [`LayerBlobs`] that serves the layer blobs from memory, logs every request and can
//! be told to fail, corrupt bytes or go slow.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clip_codec::IndexingReader;
use clip_format::{
    mode, Archive, ArchiveKind, Compression, Content, DataRef, Digest, ImageMeta, IndexContents, Ino, LayerIndex,
    LayerMeta, NodeSpec, SpanId, SpanSpec, Timestamp, Windows,
};
use clip_store::{failure_holdoff, ContentStore, LayerBlobs, ManualClock, StoreConfig, StoreError};
use futures::future::BoxFuture;

pub const KIB: u64 = 1024;

/// Text-like bytes (words from a small vocabulary), so gzip compresses them into many deflate blocks.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "lazy", "image", "span", "layer", "fetch", "cache", "verify", "digest", "mount", "kernel", "page", "tar",
        "gzip", "window", "offset", "registry",
    ];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(WORDS[(state >> 60) as usize].as_bytes());
        out.push(if (state >> 40) & 7 == 0 { b'\n' } else { b' ' });
        if (state >> 20) & 31 == 0 {
            out.extend_from_slice(&(state as u32).to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// One layer: its blob, its uncompressed bytes and the spans the indexer recorded.
pub struct Layer {
    pub blob: Vec<u8>,
    pub plain: Vec<u8>,
    pub compression: Compression,
    pub spans: Vec<clip_codec::Span>,
}

impl Layer {
    pub fn raw(plain: Vec<u8>, span_size: u64) -> Layer {
        Self::index(plain.clone(), plain, Compression::None, span_size)
    }

    pub fn gzip(plain: Vec<u8>, span_size: u64) -> Layer {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&plain).unwrap();
        let blob = enc.finish().unwrap();
        Self::index(blob, plain, Compression::Gzip, span_size)
    }

    fn index(blob: Vec<u8>, plain: Vec<u8>, compression: Compression, span_size: u64) -> Layer {
        let mut reader = IndexingReader::new(&blob[..], compression, span_size);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
        let summary = reader.finish().unwrap();
        Layer { blob, plain, compression, spans: summary.spans }
    }

    /// Uncompressed range of span `i` of this layer.
    pub fn span_range(&self, i: usize) -> Range<u64> {
        let s = &self.spans[i];
        s.checkpoint.out_offset..s.checkpoint.out_offset + s.len
    }

    /// The compressed range the store fetches for span `i` of this layer.
    pub fn fetch_range(&self, i: usize) -> Range<u64> {
        let refs: Vec<_> = self.spans.iter().map(|s| s.as_ref()).collect();
        clip_codec::span_fetch_range(self.compression, &refs, i, self.blob.len() as u64)
    }
}

/// Layers plus an archive over them (files `f0`, `f1`, … at the given places) and a blob source.
pub struct Fixture {
    pub layers: Vec<Arc<Layer>>,
    pub archive: Arc<Archive>,
    pub blobs: Arc<TestBlobs>,
    /// Index of each layer's first span in the archive's span table.
    pub first_span: Vec<usize>,
}

impl Fixture {
    pub fn new(layers: Vec<Layer>, files: &[DataRef]) -> Fixture {
        let mut spans = Vec::new();
        let mut windows = Windows::new();
        let mut metas = Vec::new();
        let mut first_span = Vec::new();
        for l in &layers {
            first_span.push(spans.len());
            metas.push(LayerMeta {
                media_type: match l.compression {
                    Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    _ => "application/vnd.oci.image.layer.v1.tar".into(),
                },
                digest: Digest::of(&l.blob),
                size: l.blob.len() as u64,
                diff_id: None,
                uncompressed_size: l.plain.len() as u64,
                compression: l.compression,
                first_span: SpanId::from_index(spans.len()),
                span_count: l.spans.len() as u32,
            });
            spans.extend(l.spans.iter().map(|s| SpanSpec {
                out_offset: s.checkpoint.out_offset,
                in_offset: s.checkpoint.in_offset,
                bits: s.checkpoint.bits,
                digest: s.digest,
                window: windows.push(&s.checkpoint.window).unwrap(),
            }));
        }
        let attrs = |mode: u32, content| NodeSpec {
            mode,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: vec![],
            content,
        };
        let entries = (0..files.len()).map(|i| (format!("f{i}").into_bytes(), Ino::from_index(i + 1))).collect();
        let mut nodes = vec![attrs(mode::S_IFDIR | 0o755, Content::Dir(entries))];
        nodes.extend(files.iter().map(|d| attrs(mode::S_IFREG | 0o644, Content::File(*d))));
        let meta = ImageMeta { source: "test".into(), span_size: 0, layers: metas, ..ImageMeta::default() };
        let contents =
            IndexContents { kind: ArchiveKind::IndexOnly, meta, nodes, spans, windows, chunks: None, tree: None };
        let mut bytes = Vec::new();
        clip_format::write_index(&contents, &mut bytes).unwrap();
        let archive = Arc::new(Archive::from_bytes(bytes).unwrap());
        let layers: Vec<Arc<Layer>> = layers.into_iter().map(Arc::new).collect();
        let blobs = Arc::new(TestBlobs::new(layers.iter().map(|l| l.blob.clone()).collect()));
        Fixture { layers, archive, blobs, first_span }
    }

    /// A store over this fixture's archive and blobs, once its disk cache's scan at open is done (so what
    /// the cache knows, and counts, does not depend on how fast that scan ran).
    pub fn store(&self, config: StoreConfig) -> ContentStore {
        let store = ContentStore::new(self.archive.clone(), self.blobs.clone(), config);
        if let Some(disk) = store.disk_cache() {
            disk.wait_scanned();
        }
        store
    }

    /// The bytes a file should have.
    pub fn expected(&self, d: DataRef) -> &[u8] {
        &self.layers[d.layer.index()].plain[d.offset as usize..(d.offset + d.size) as usize]
    }

    /// The whole-table index of span `i` of `layer`.
    pub fn span_index(&self, layer: u32, i: usize) -> SpanId {
        SpanId::from_index(self.first_span[layer as usize] + i)
    }

    /// Every span of every layer, in order.
    pub fn all_spans(&self) -> Vec<(LayerIndex, usize)> {
        (0..self.layers.len())
            .flat_map(|l| (0..self.layers[l].spans.len()).map(move |i| (LayerIndex::from_index(l), i)))
            .collect()
    }
}

/// A config with a disk cache at `dir`.
pub fn cached(dir: &Path) -> StoreConfig {
    StoreConfig { cache_dir: Some(dir.to_path_buf()), ..StoreConfig::default() }
}

/// `config` with a clock the test moves by hand, and that clock.
pub fn manual_clock(config: StoreConfig) -> (StoreConfig, HoldOff) {
    let clock = Arc::new(ManualClock::new());
    let holdoff = failure_holdoff(config.read_timeout);
    (StoreConfig { clock: clock.clone(), ..config }, HoldOff { clock, holdoff })
}

/// The clock of a store's failure hold-off, driven by the test.
pub struct HoldOff {
    clock: Arc<ManualClock>,
    holdoff: Duration,
}

impl HoldOff {
    /// Moves the clock past the hold-off: spans that failed are tried afresh.
    pub fn pass(&self) {
        self.clock.advance(self.holdoff);
    }
}

/// One request to [`TestBlobs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub layer: LayerIndex,
    pub range: Range<u64>,
    pub at: Instant,
}

/// Layer blobs in memory that log requests and misbehave on demand.
pub struct TestBlobs {
    layers: Vec<Vec<u8>>,
    requests: Mutex<Vec<Request>>,
    /// Answer every request with an error.
    pub fail: AtomicBool,
    /// Flip a byte in the middle of every answer.
    pub corrupt: AtomicBool,
    /// Flip a byte in the middle of this many of the next answers.
    pub corrupt_next: AtomicUsize,
    /// Never answer while set (a blackholed registry).
    pub hang: tokio::sync::watch::Sender<bool>,
    /// Milliseconds each request takes.
    pub delay_ms: AtomicU64,
    active: AtomicUsize,
    /// Most requests ever running at once.
    pub max_active: AtomicUsize,
}

impl TestBlobs {
    pub fn new(layers: Vec<Vec<u8>>) -> TestBlobs {
        TestBlobs {
            layers,
            requests: Mutex::default(),
            fail: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            corrupt_next: AtomicUsize::new(0),
            hang: tokio::sync::watch::Sender::new(false),
            delay_ms: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The requested `(layer, range)` pairs, sorted.
    pub fn ranges(&self) -> Vec<(u32, Range<u64>)> {
        let mut r: Vec<_> = self.requests().into_iter().map(|r| (r.layer.0, r.range)).collect();
        r.sort_by_key(|(l, r)| (*l, r.start, r.end));
        r
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LayerBlobs for TestBlobs {
    fn read(&self, layer: LayerIndex, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(Request { layer, range: range.clone(), at: Instant::now() });
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            let _active = Active(&self.active);
            self.max_active.fetch_max(now, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            // Answers once the hang is lifted (the sender lives as long as `self`).
            let _ = self.hang.subscribe().wait_for(|hang| !hang).await;
            let io = |msg: &str| StoreError::Io { path: "test blobs".into(), source: std::io::Error::other(msg) };
            if self.fail.load(Ordering::SeqCst) {
                return Err(io("injected failure"));
            }
            let blob = self.layers.get(layer.index()).ok_or_else(|| io("no such layer"))?;
            let mut out =
                blob.get(range.start as usize..range.end as usize).ok_or_else(|| io("range out of bounds"))?.to_vec();
            let corrupt_one =
                self.corrupt_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if (corrupt_one || self.corrupt.load(Ordering::SeqCst)) && !out.is_empty() {
                let mid = out.len() / 2;
                out[mid] ^= 0x40;
            }
            Ok(Bytes::from(out))
        })
    }

    fn describe(&self) -> String {
        "test blobs".into()
    }
}

/// Total bytes of all files under `dir`. A file or directory the cache evicts while this looks is not
/// counted (it is gone).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return 0,
        Err(e) => panic!("listing {}: {e}", dir.display()),
    };
    for entry in entries.flatten() {
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("{}: {e}", entry.path().display()),
        };
        if meta.is_dir() {
            total += disk_usage(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// Paths of all files under `dir` (recursively) whose path contains `area`.
/// Whether the cache file at `path` is sealed (verified and synced: mode 0400).
pub fn sealed(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o400)
}

/// Writes `bytes` over the cache file at `path` as a crash before they reached the disk leaves it: changed
/// and not sealed (mode 0600). Waits first for the seal its writer started in the background, so that seal
/// cannot land on the damage.
pub fn damage(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sealed(path) {
        assert!(Instant::now() < deadline, "{} was never sealed", path.display());
        std::thread::yield_now();
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub fn files_in(dir: &Path, area: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_in(&path, area));
        } else if path.to_string_lossy().contains(area) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Waits (up to 10 s) for `cond`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw layer of `spans` spans of 64 KiB.
pub fn raw_fixture(spans: u64, files: &[DataRef]) -> Fixture {
    Fixture::new(vec![Layer::raw(text((spans * 64 * KIB) as usize, 1), 64 * KIB)], files)
}
