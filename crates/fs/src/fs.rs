//! [`ClipFs`]: the state of one mount and its `fuser::Filesystem` implementation. The trait methods here
//! only dispatch: metadata operations live in `meta.rs`, open/read/release in `data.rs`; every operation
//! that would change the image answers `EROFS`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use clip_format::{Archive, DataRef, Ino, NodeView};
use clip_store::ContentStore;
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::data::OpenTable;
use crate::inflight::InFlight;
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
    /// Set at init: the kernel accepted `FUSE_PASSTHROUGH`.
    pub(crate) passthrough_granted: bool,
    pub(crate) opens: Mutex<OpenTable>,
    /// `(blocks of 4 KiB, inodes)` for statfs, computed on first use.
    pub(crate) totals: OnceLock<(u64, u64)>,
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
            passthrough_granted: false,
            opens: Mutex::new(HashMap::new()),
            totals: OnceLock::new(),
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

    fn rofs(&self) -> Errno {
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

/// Capabilities asked of the kernel when it offers them. Always READDIRPLUS (not `FUSE_READDIRPLUS_AUTO`,
/// with which the kernel sends plain READDIR after a directory's first batch and then one LOOKUP per
/// entry): attributes come from the mapped index, so handing them out with the names costs nothing, and a
/// `find` or `ls -l` of a 100k-file tree needs no per-file round trip.
const WANTED: InitFlags = InitFlags::FUSE_ASYNC_READ
    .union(InitFlags::FUSE_PARALLEL_DIROPS)
    .union(InitFlags::FUSE_DO_READDIRPLUS)
    .union(InitFlags::FUSE_CACHE_SYMLINKS)
    .union(InitFlags::FUSE_MAX_PAGES)
    .union(InitFlags::FUSE_BIG_WRITES);

impl Filesystem for ClipFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let offered = config.capabilities();
        // Only flags the kernel offers are added, so this cannot fail.
        let _ = config.add_capabilities(WANTED & offered);
        // Largest readahead the kernel allows, largest requests, many reads in the background.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        if let Err(max) = config.set_max_write(u32::MAX) {
            let _ = config.set_max_write(max);
        }
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        if self.passthrough.is_some() && offered.contains(InitFlags::FUSE_PASSTHROUGH) {
            // Depth 1: backing files must sit on a non-stacked filesystem, and overlayfs can still stack on us.
            self.passthrough_granted =
                config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok();
        }
        self.stats.set_passthrough_granted(self.passthrough_granted);
        info!(
            nodes = self.archive.node_count(),
            passthrough = self.passthrough_granted,
            abi = %config.kernel_abi(),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        let cancelled = self.reads.cancel_all(Errno::EIO);
        self.stats.cancelled_reads(cancelled);
        if cancelled > 0 {
            debug!(cancelled, "reads still in flight at unmount were cancelled");
        }
        self.opens.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.do_lookup(parent, name, reply);
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inodes are records of an immutable index: nothing to free.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.do_getattr(ino, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.do_readlink(ino, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.do_open(ino, flags, reply);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.do_read(req.unique().0, ino, offset, size, reply);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(ino, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.do_opendir(ino, flags, reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        self.do_readdir(ino, offset, reply);
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        self.do_readdirplus(ino, offset, reply);
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.do_statfs(reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.do_getxattr(ino, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.do_listxattr(ino, size, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.do_access(req, ino, mask, reply);
    }

    /// No file of an image takes ioctls: `ENOTTY`, as a regular file on a local disk answers (every
    /// Python `open()` asks `TCGETS` to see whether it opened a terminal; fuser's default would log a
    /// warning for each).
    #[allow(clippy::too_many_arguments)] // the trait's signature
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    // Everything below would modify the image: EROFS.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &Path, reply: ReplyEntry) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = self.stats.timed(Op::Write);
        reply.error(self.rofs());
    }
}
