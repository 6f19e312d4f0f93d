//! The FUSE filesystem of clip (layer 5 of DESIGN.md): a read-only view of a `.clip` archive whose file
//! bytes come from a [`clip_store::ContentStore`]. It knows no registry.
//!
//! - [`ClipFs`]: implements `fuser::Filesystem`. Metadata (lookup, getattr, readdir, xattrs, …) is decoded
//!   from the mapped index on the session thread; each `read` runs as a task on a tokio runtime and answers
//!   from there, so a slow fetch never blocks `ls` or another read. Store errors (fetch, decode, failed
//!   verification) become `EIO`, never wrong bytes. Every modifying operation answers `EROFS`.
//! - [`PassthroughSource`]: where a whole file already sits on local disk, `open` hands it to the kernel
//!   (FUSE passthrough) and reads never reach this process.
//! - [`ReadObserver`]: sees every read that reaches the store (file, offset, length), e.g. to record the
//!   order in which a container's startup reads its files; [`OpenObserver`]: sees the first open of each
//!   file, e.g. to start loading the libraries a program is about to map.
//! - [`mount`] / [`MountOptions`] / [`MountHandle`]: mount in a background thread, unmount, or wait for an
//!   unmount from outside.
//! - [`FsStats`]: per-operation counters and latencies for metrics.
//!
//! Inode numbers are clip's [`clip_format::Ino`] values (dense from 1, the root is 1 = `FUSE_ROOT_ID`), so
//! hard links share one inode number and report the archive's `nlink`.
//!
//! ```no_run
//! # fn demo(store: std::sync::Arc<clip_store::ContentStore>, rt: tokio::runtime::Handle) -> Result<(), clip_fs::FsError> {
//! use clip_fs::{mount, ClipFs, MountOptions};
//! let fs = ClipFs::new(store, rt);
//! let stats = fs.stats();
//! let handle = mount(fs, std::path::Path::new("/mnt/image"), &MountOptions::default())?;
//! // ... serve until someone runs `umount /mnt/image` ...
//! handle.wait()?;
//! println!("{} reads", stats.snapshot().op(clip_fs::Op::Read).count);
//! # Ok(()) }
//! ```
//!
//! Limits: fuser 0.18 does not deliver `FUSE_INTERRUPT` to filesystems (it answers `ENOSYS` and the kernel
//! stops sending them), so an interrupted `read(2)` waits for its fetch; reads still in flight at unmount are
//! cancelled. `access(2)` cannot see supplementary groups.

mod attr;
mod data;
mod error;
mod fs;
mod inflight;
mod listing;
mod meta;
mod mount;
mod state;
mod stats;

pub use error::FsError;
pub use mount::{mount, MountHandle, MountOptions};
pub use state::{ClipFs, OpenObserver, PassthroughSource, ReadObserver};
pub use stats::{FsStats, FsStatsSnapshot, Op, OpSnapshot};
