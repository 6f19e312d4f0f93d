//! [`ClipFs`]: the state of one mount (the mapped archive, the store, open files, reads in flight, the
//! optional passthrough source and read observer) and the small lookups the operations share. The
//! `fuser::Filesystem` implementation that dispatches to it is in `fs.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clip_format::{Archive, DataRef, Ino, NodeView};
use clip_store::ContentStore;
use fuser::{Errno, INodeNo, ReplyData};
use tokio::runtime::Handle;
use tracing::warn;

use crate::data::OpenTable;
use crate::inflight::InFlight;
use crate::listing::Listing;
use crate::stats::{FsStats, Op};

/// Where the disk cache can hand over a whole file for FUSE passthrough.
pub trait PassthroughSource: Send + Sync {
    /// A local file holding exactly the `data.size` bytes of the file at `data`, if one exists now. Called
    /// at `open`; a file of another length is ignored.
    fn local_file(&self, data: DataRef) -> Option<File>;
}

/// Sees each `read` request that goes to the store, on the session thread before the read starts: keep it
/// cheap and non-blocking.
pub trait ReadObserver: Send + Sync {
    /// `len` bytes of the file at `data` from `offset` (clamped to the file by the store) are being read.
    fn on_read(&self, data: DataRef, offset: u64, len: u64);
}

/// Sees the first open of each file (on the session thread, after the reply): keep it cheap and non-blocking.
pub trait OpenObserver: Send + Sync {
    /// The file `node` was opened, its inode not open already (read through the store or handed to
    /// passthrough).
    fn on_open(&self, node: &NodeView);
}

/// How long the kernel may cache what the filesystem tells it. The image never changes, so long is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ttls {
    pub entry: Duration,
    pub attr: Duration,
    pub negative: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        let day = Duration::from_secs(24 * 60 * 60);
        Ttls { entry: day, attr: day, negative: day }
    }
}

/// The read-only filesystem of one archive: metadata from the mapped index, file bytes from a
/// [`ContentStore`] on a tokio runtime. Mount it with [`crate::mount`].
pub struct ClipFs {
    pub(crate) archive: Arc<Archive>,
    pub(crate) store: Arc<ContentStore>,
    pub(crate) runtime: Handle,
    pub(crate) ttls: Ttls,
    pub(crate) stats: Arc<FsStats>,
    pub(crate) reads: Arc<InFlight<ReplyData>>,
    pub(crate) passthrough: Option<Arc<dyn PassthroughSource>>,
    pub(crate) observer: Option<Arc<dyn ReadObserver>>,
    pub(crate) open_observer: Option<Arc<dyn OpenObserver>>,
    /// Set at init: the kernel accepted `FUSE_PASSTHROUGH`.
    pub(crate) passthrough_granted: bool,
    pub(crate) opens: Mutex<OpenTable>,
    /// `(blocks of 4 KiB, inodes)` for statfs, computed on first use.
    pub(crate) totals: Arc<OnceLock<(u64, u64)>>,
    /// An unsupported ioctl has been logged (once per mount is enough).
    pub(crate) ioctl_logged: AtomicBool,
    /// Which READDIRPLUS batches get full entries and which names only.
    pub(crate) listing: Listing,
}

impl ClipFs {
    /// A filesystem over `store`'s archive; reads that need the store run on `runtime`.
    pub fn new(store: Arc<ContentStore>, runtime: Handle) -> ClipFs {
        ClipFs {
            archive: Arc::clone(store.archive()),
            store,
            runtime,
            ttls: Ttls::default(),
            stats: Arc::default(),
            reads: Arc::new(InFlight::new()),
            passthrough: None,
            observer: None,
            open_observer: None,
            passthrough_granted: false,
            opens: Mutex::new(HashMap::new()),
            totals: Arc::default(),
            ioctl_logged: AtomicBool::new(false),
            listing: Listing::default(),
        }
    }

    /// Hands whole files that `source` has locally to the kernel (FUSE passthrough, Linux ≥ 6.9, root), so
    /// their reads never reach this process. Without it, or where the kernel refuses, reads go through the
    /// store as usual.
    pub fn with_passthrough(mut self, source: Arc<dyn PassthroughSource>) -> ClipFs {
        self.passthrough = Some(source);
        self
    }

    /// Tells `observer` about every `read` request that reaches the store (e.g. to record a startup
    /// profile). Reads the kernel answers from its page cache or through passthrough are not seen, so a
    /// recording mount should go without [`ClipFs::with_passthrough`].
    pub fn with_read_observer(mut self, observer: Arc<dyn ReadObserver>) -> ClipFs {
        self.observer = Some(observer);
        self
    }

    /// Tells `observer` about the first open of each file that is read through the store (e.g. to start
    /// loading the libraries a program is about to map).
    pub fn with_open_observer(mut self, observer: Arc<dyn OpenObserver>) -> ClipFs {
        self.open_observer = Some(observer);
        self
    }

    /// The counters of this filesystem; clone the `Arc` before mounting.
    pub fn stats(&self) -> Arc<FsStats> {
        Arc::clone(&self.stats)
    }

    /// The archive being served.
    pub fn archive(&self) -> &Arc<Archive> {
        &self.archive
    }

    pub(crate) fn set_ttls(&mut self, ttls: Ttls) {
        self.ttls = ttls;
    }

    /// The record of kernel inode `ino` (clip's inode numbers are the kernel's).
    pub(crate) fn node(&self, ino: INodeNo) -> Result<NodeView, Errno> {
        let n = u32::try_from(ino.0).map_err(|_| Errno::ENOENT)?;
        if n == 0 || n as usize > self.archive.node_count() {
            return Err(Errno::ENOENT);
        }
        self.archive.node(Ino(n)).map_err(|e| {
            warn!(ino = n, error = %e, "corrupt inode record; answering EIO");
            Errno::EIO
        })
    }

    /// Counts a refused modifying operation: the answer to every one of them.
    pub(crate) fn refuse_write(&self) -> Errno {
        let _t = self.stats.timed(Op::Write);
        self.stats.erofs();
        Errno::EROFS
    }
}

/// The path of `ino` for logs, built by walking parents (first name of a hard-linked inode).
pub(crate) fn path_of(archive: &Archive, ino: Ino) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = ino;
    while cur != Ino::ROOT && parts.len() < 4096 {
        let Ok(node) = archive.node(cur) else { break };
        let Ok(parent) = archive.node(node.parent) else { break };
        let name = archive.children(&parent).filter_map(Result::ok).find(|(_, i)| *i == cur).map(|(n, _)| n);
        parts.push(name.map_or_else(|| format!("<inode {cur}>"), |n| String::from_utf8_lossy(n).into_owned()));
        cur = node.parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}
