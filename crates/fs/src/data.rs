//! File data: `open` (with FUSE passthrough when the disk cache holds the whole file), `read` (a task on the
//! tokio runtime per request, so a slow fetch never holds up the session thread) and `release`.
//!
//! The kernel insists that all opens of one inode agree: while an inode is open with passthrough, every
//! further open must name the same backing file, and while it is open through the page cache, none may use
//! passthrough. The [`OpenTable`] tracks that per inode until the last release.

use std::collections::HashMap;
use std::time::Instant;

use clip_format::{DataRef, NodeKind};
use fuser::{
    BackingId, Errno, FileHandle, FopenFlags, INodeNo, OpenAccMode, OpenFlags, ReplyData, ReplyEmpty, ReplyOpen,
};
use tracing::{debug, warn};

use crate::state::{path_of, ClipFs};
use crate::stats::Op;

/// How the open handles of one inode reach its bytes.
pub(crate) enum OpenState {
    /// Through `read` requests (and the page cache); the number of open handles.
    Cached(usize),
    /// Straight from a local file; the backing id stays registered until the last handle is released.
    Passthrough { backing: BackingId, opens: usize },
}

/// Open state by inode number.
pub(crate) type OpenTable = HashMap<u32, OpenState>;

/// File handles we give out (informational: the state that matters is per inode).
const FH_CACHED: FileHandle = FileHandle(1);
const FH_PASSTHROUGH: FileHandle = FileHandle(2);

impl ClipFs {
    pub(crate) fn do_open(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.stats.timed(Op::Open);
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            self.stats.erofs();
            return reply.error(Errno::EROFS);
        }
        if node.kind() == NodeKind::Dir {
            return reply.error(Errno::EISDIR);
        }
        // The image never changes: pages cached by an earlier open stay valid. Passthrough opens use the
        // backing file's cache and take only flags in the kernel's FOPEN_PASSTHROUGH_MASK (with
        // FOPEN_KEEP_CACHE, reads of the file fail with EIO).
        let keep = FopenFlags::FOPEN_KEEP_CACHE;
        let direct = FopenFlags::empty();
        let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        match table.get_mut(&node.ino.0) {
            Some(OpenState::Passthrough { backing, opens }) => {
                *opens += 1;
                self.stats.passthrough_open();
                return reply.opened_passthrough(FH_PASSTHROUGH, direct, backing);
            }
            Some(OpenState::Cached(opens)) => {
                *opens += 1;
                return reply.opened(FH_CACHED, keep);
            }
            None => {}
        }
        if let Some(data) = node.data_ref().filter(|_| self.passthrough_granted) {
            if let Some(file) = self.local_file(data) {
                match reply.open_backing(&file) {
                    Ok(backing) => {
                        self.stats.passthrough_open();
                        reply.opened_passthrough(FH_PASSTHROUGH, direct, &backing);
                        table.insert(node.ino.0, OpenState::Passthrough { backing, opens: 1 });
                        self.stats.set_open_inodes(table.len());
                        drop(table);
                        if let Some(observer) = &self.open_observer {
                            observer.on_open(&node);
                        }
                        return;
                    }
                    Err(e) => debug!(ino = node.ino.0, error = %e, "passthrough refused; reading through the store"),
                }
            }
        }
        table.insert(node.ino.0, OpenState::Cached(1));
        self.stats.set_open_inodes(table.len());
        drop(table);
        reply.opened(FH_CACHED, keep);
        // First open through the page cache: start loading the whole (small enough) file now, so its reads
        // wait for one round of concurrent fetches rather than one fetch after another.
        if let Some(data) = node.data_ref() {
            self.store.warm_file(data);
        }
        if let Some(observer) = &self.open_observer {
            observer.on_open(&node);
        }
    }

    /// The passthrough source's local copy of `data`, if it has one of the right length.
    fn local_file(&self, data: DataRef) -> Option<std::fs::File> {
        let file = self.passthrough.as_ref()?.local_file(data)?;
        match file.metadata() {
            Ok(m) if m.len() == data.size => Some(file),
            Ok(m) => {
                debug!(expected = data.size, found = m.len(), "local copy has the wrong length; not used");
                None
            }
            Err(_) => None,
        }
    }

    pub(crate) fn do_release(&self, ino: INodeNo, reply: ReplyEmpty) {
        let _t = self.stats.timed(Op::Release);
        let key = u32::try_from(ino.0).unwrap_or(0);
        let mut table = self.opens.lock().unwrap_or_else(|e| e.into_inner());
        let last = match table.get_mut(&key) {
            Some(OpenState::Cached(opens)) | Some(OpenState::Passthrough { opens, .. }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if last {
            // Dropping a BackingId unregisters it from the kernel.
            table.remove(&key);
            self.stats.set_open_inodes(table.len());
            // A burst of opens grew the table: give its memory back once everything is closed.
            if table.is_empty() && table.capacity() > 1024 {
                table.shrink_to_fit();
            }
        }
        reply.ok();
    }

    /// Answers a read from the store on the runtime; the session thread returns at once.
    pub(crate) fn do_read(&self, unique: u64, ino: INodeNo, offset: u64, size: u32, reply: ReplyData) {
        let start = Instant::now();
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => {
                self.stats.record(Op::Read, start);
                return reply.error(e);
            }
        };
        let Some(data) = node.data_ref() else {
            self.stats.record(Op::Read, start);
            return reply.error(if node.kind() == NodeKind::Dir { Errno::EISDIR } else { Errno::EINVAL });
        };
        if offset >= data.size || size == 0 {
            self.stats.record(Op::Read, start);
            return reply.data(&[]);
        }
        if let Some(observer) = &self.observer {
            observer.on_read(data, offset, u64::from(size));
        }
        let (store, stats, archive) = (self.store.clone(), self.stats.clone(), self.archive.clone());
        self.reads.spawn(&self.runtime, unique, reply, async move {
            let result = store.read(data, offset, u64::from(size)).await;
            stats.record(Op::Read, start);
            match result {
                Ok(bytes) => {
                    stats.add_read_bytes(bytes.len());
                    Ok(bytes)
                }
                Err(error) => {
                    stats.read_error();
                    let path = path_of(&archive, node.ino);
                    warn!(ino = node.ino.0, %path, offset, len = size, error = &error as &dyn std::error::Error, "read failed; answering EIO");
                    Err(Errno::EIO)
                }
            }
        });
    }
}
