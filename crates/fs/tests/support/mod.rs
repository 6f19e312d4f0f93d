//! Test support: an index built in code over one uncompressed layer held in memory, a layer source that
//! can be slow or corrupt on chosen files, and a mount that is taken down on drop (also when a test fails).

#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clip_format::{
    mode, write_index, Archive, ArchiveKind, Compression, Content, DataRef, Digest, ImageMeta, IndexContents, Ino,
    LayerIndex, LayerMeta, NodeSpec, SpanId, SpanSpec, Timestamp, WindowRef, Windows,
};
use clip_fs::{mount, ClipFs, FsStats, MountHandle, MountOptions, PassthroughSource};
use clip_store::{ContentStore, LayerBlobs, StoreConfig, StoreError};
use futures::future::BoxFuture;

pub const SPAN: u64 = 64 * 1024;

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds a node tree and the layer holding its files, each file starting on a span boundary.
pub struct TreeBuilder {
    nodes: Vec<NodeSpec>,
    layer: Vec<u8>,
    pub files: HashMap<String, DataRef>,
}

pub fn spec(m: u32, content: Content) -> NodeSpec {
    NodeSpec { mode: m, uid: 0, gid: 0, mtime: Timestamp { sec: 1_600_000_000, nsec: 0 }, xattrs: vec![], content }
}

impl TreeBuilder {
    pub fn new() -> TreeBuilder {
        TreeBuilder {
            nodes: vec![spec(mode::S_IFDIR | 0o755, Content::Dir(vec![]))],
            layer: vec![],
            files: HashMap::new(),
        }
    }

    /// Adds `node` under `parent` as `name`.
    pub fn add(&mut self, parent: Ino, name: &str, node: NodeSpec) -> Ino {
        self.nodes.push(node);
        let ino = Ino::from_index(self.nodes.len() - 1);
        self.link(parent, name, ino);
        ino
    }

    /// Another name for `ino` (a hard link, or a directory's single entry).
    pub fn link(&mut self, parent: Ino, name: &str, ino: Ino) {
        match &mut self.nodes[parent.index()].content {
            Content::Dir(children) => children.push((name.as_bytes().to_vec(), ino)),
            _ => panic!("parent is not a directory"),
        }
    }

    pub fn dir(&mut self, parent: Ino, name: &str, perm: u32) -> Ino {
        self.add(parent, name, spec(mode::S_IFDIR | perm, Content::Dir(vec![])))
    }

    /// A regular file whose bytes go into the layer at the next span boundary; `edit` adjusts its spec.
    pub fn file(&mut self, parent: Ino, name: &str, bytes: &[u8], edit: impl FnOnce(&mut NodeSpec)) -> Ino {
        let offset = (self.layer.len() as u64).div_ceil(SPAN) * SPAN;
        self.layer.resize(offset as usize, 0);
        self.layer.extend_from_slice(bytes);
        let data = DataRef { layer: LayerIndex(0), offset, size: bytes.len() as u64 };
        self.files.insert(name.to_string(), data);
        let mut node = spec(mode::S_IFREG | 0o644, Content::File(data));
        edit(&mut node);
        self.add(parent, name, node)
    }

    /// The index and the layer bytes.
    pub fn finish(self) -> (Arc<Archive>, Bytes) {
        let layer = self.layer;
        let spans: Vec<SpanSpec> = (0..layer.len() as u64)
            .step_by(SPAN as usize)
            .map(|start| {
                let end = (start + SPAN).min(layer.len() as u64);
                SpanSpec {
                    out_offset: start,
                    in_offset: start,
                    bits: 0,
                    digest: Digest::of(&layer[start as usize..end as usize]),
                    window: WindowRef::default(),
                }
            })
            .collect();
        let meta = ImageMeta {
            source: "test".into(),
            span_size: SPAN,
            layers: vec![LayerMeta {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: Digest::of(&layer),
                size: layer.len() as u64,
                diff_id: None,
                uncompressed_size: layer.len() as u64,
                compression: Compression::None,
                first_span: SpanId(0),
                span_count: spans.len() as u32,
            }],
            ..ImageMeta::default()
        };
        let contents = IndexContents {
            kind: ArchiveKind::IndexOnly,
            meta,
            nodes: self.nodes,
            spans,
            windows: Windows::new(),
            chunks: None,
            tree: None,
        };
        let mut bytes = Vec::new();
        write_index(&contents, &mut bytes).expect("write index");
        (Arc::new(Archive::from_bytes(bytes).expect("open index")), Bytes::from(layer))
    }
}

/// The layer in memory; reads overlapping `slow` sleep first, reads overlapping `corrupt` get a flipped byte.
pub struct TestBlobs {
    pub layer: Bytes,
    pub slow: Option<Range<u64>>,
    pub slow_delay: Duration,
    pub corrupt: Option<Range<u64>>,
    pub slow_started: AtomicBool,
    pub slow_finished: AtomicBool,
    pub reads: AtomicU64,
}

impl TestBlobs {
    pub fn new(layer: Bytes) -> TestBlobs {
        TestBlobs {
            layer,
            slow: None,
            slow_delay: Duration::from_secs(2),
            corrupt: None,
            slow_started: AtomicBool::new(false),
            slow_finished: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        }
    }
}

fn overlaps(a: &Range<u64>, b: &Option<Range<u64>>) -> bool {
    b.as_ref().is_some_and(|b| a.start < b.end && b.start < a.end)
}

impl LayerBlobs for TestBlobs {
    fn read(&self, _layer: LayerIndex, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if overlaps(&range, &self.slow) {
                self.slow_started.store(true, Ordering::SeqCst);
                tokio::time::sleep(self.slow_delay).await;
                self.slow_finished.store(true, Ordering::SeqCst);
            }
            let mut bytes = self.layer[range.start as usize..range.end as usize].to_vec();
            if overlaps(&range, &self.corrupt) {
                let at = (self.corrupt.as_ref().unwrap().start.max(range.start) - range.start) as usize;
                bytes[at] ^= 0xff;
            }
            Ok(Bytes::from(bytes))
        })
    }

    fn describe(&self) -> String {
        "test blobs".into()
    }
}

/// A live mount of a test image; unmounted (lazily) on drop, so a failing test leaves nothing behind.
pub struct Mounted {
    handle: Option<MountHandle>,
    pub stats: Arc<FsStats>,
    pub store: Arc<ContentStore>,
    pub blobs: Arc<TestBlobs>,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct MountSpec {
    pub options: MountOptions,
    pub passthrough: Option<Arc<dyn PassthroughSource>>,
}

impl Mounted {
    /// Mounts `archive` over `blobs`. Panics (fails the test) when FUSE is unavailable.
    pub fn new(archive: Arc<Archive>, blobs: TestBlobs, spec: MountSpec) -> Mounted {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let blobs = Arc::new(blobs);
        let store = Arc::new(ContentStore::new(archive, blobs.clone(), StoreConfig::default()));
        let mut fs = ClipFs::new(store.clone(), rt.handle().clone());
        if let Some(p) = spec.passthrough {
            fs = fs.with_passthrough(p);
        }
        let stats = fs.stats();
        let dir = tempfile::tempdir().unwrap();
        // Other users (the access test runs commands as nobody) must be able to reach the mountpoint.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let handle = mount(fs, dir.path(), &spec.options)
            .unwrap_or_else(|e| panic!("FUSE mount failed (these tests need /dev/fuse and root): {e}"));
        Mounted { handle: Some(handle), stats, store, blobs, rt, dir }
    }

    pub fn root(&self) -> &Path {
        self.handle.as_ref().expect("mounted").mountpoint()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Drops the mount handle as a failing test would.
    pub fn drop_handle(&mut self) {
        drop(self.handle.take());
    }

    /// One unmount attempt, keeping the mount on failure.
    pub fn try_unmount(&mut self) -> Result<(), clip_fs::FsError> {
        self.handle.as_mut().expect("mounted").unmount()
    }

    /// Unmounts and checks that it went cleanly.
    pub fn unmount(mut self) {
        let mut handle = self.handle.take().expect("mounted");
        handle.unmount().expect("clean unmount");
        assert!(!is_fuse_mounted(self.dir.path()), "still mounted after unmount");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

pub fn is_fuse_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()) && l.contains(" - fuse"))
}
