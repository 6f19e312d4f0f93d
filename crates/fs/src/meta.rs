//! Metadata operations: lookup, getattr, readlink, directories, xattrs, statfs and access. All of them decode
//! records of the mapped index and answer at once on the session thread.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use clip_format::{Archive, Ino, NodeKind, NodeView};
use fuser::{
    AccessFlags, Errno, FopenFlags, Generation, INodeNo, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::attr::{file_attr, file_type, may_access, negative_attr, Caller, BLOCK_SIZE};
use crate::listing::Entries;
use crate::state::ClipFs;
use crate::stats::Op;

/// Longest name the filesystem reports it supports.
const NAME_MAX: u32 = 255;

/// One entry of a directory listing: `.`, `..`, then the children in name order.
struct Listed<'a> {
    name: &'a [u8],
    node: NodeView,
}

impl ClipFs {
    pub(crate) fn do_lookup(&self, pid: u32, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.stats.timed(Op::Lookup);
        let dir = match self.node(parent) {
            Ok(d) if d.kind() == NodeKind::Dir => d,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let found = match self.archive.lookup(&dir, name.as_bytes()) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(ino = dir.ino.0, error = %e, "corrupt directory; answering EIO");
                return reply.error(Errno::EIO);
            }
        };
        match found {
            Some(ino) => match self.node(INodeNo(u64::from(ino.0))) {
                Ok(node) => {
                    self.listing.looked_up(pid, parent.0, node.kind() == NodeKind::Dir);
                    reply.entry_with_ttls(&self.ttls.attr, &self.ttls.entry, &file_attr(&node), Generation(0));
                }
                Err(e) => reply.error(e),
            },
            // Inode 0 with a timeout: the kernel caches the miss as a negative dentry.
            None => reply.entry_with_ttls(&self.ttls.negative, &self.ttls.negative, &negative_attr(), Generation(0)),
        }
    }

    pub(crate) fn do_getattr(&self, ino: INodeNo, reply: ReplyAttr) {
        let _t = self.stats.timed(Op::Getattr);
        match self.node(ino) {
            Ok(node) => reply.attr(&self.ttls.attr, &file_attr(&node)),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn do_readlink(&self, ino: INodeNo, reply: ReplyData) {
        let _t = self.stats.timed(Op::Readlink);
        let node = match self.node(ino) {
            Ok(n) if n.kind() == NodeKind::Symlink => n,
            Ok(_) => return reply.error(Errno::EINVAL),
            Err(e) => return reply.error(e),
        };
        match self.archive.symlink_target(&node) {
            Ok(target) => reply.data(target),
            Err(e) => {
                tracing::warn!(ino = node.ino.0, error = %e, "corrupt symlink; answering EIO");
                reply.error(Errno::EIO);
            }
        }
    }

    pub(crate) fn do_opendir(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.stats.timed(Op::Opendir);
        match self.node(ino) {
            Ok(n) if n.kind() != NodeKind::Dir => reply.error(Errno::ENOTDIR),
            Ok(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => reply.error(Errno::EISDIR),
            // Directories never change: the kernel may keep their listings.
            Ok(_) => reply.opened(fuser::FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
            Err(e) => reply.error(e),
        }
    }

    /// Entry `index` of the listing of `dir` (0 = `.`, 1 = `..`), or None past the end.
    fn listed(&self, dir: &NodeView, index: u64) -> Result<Option<Listed<'_>>, Errno> {
        let corrupt = |e: clip_format::FormatError| {
            tracing::warn!(ino = dir.ino.0, error = %e, "corrupt directory; answering EIO");
            Errno::EIO
        };
        let (name, ino): (&[u8], Ino) = match index {
            0 => (b".", dir.ino),
            1 => (b"..", dir.parent),
            i => {
                let Ok(k) = u32::try_from(i - 2) else { return Ok(None) };
                if k >= dir.child_count() {
                    return Ok(None);
                }
                self.archive.dirent(dir, k).map_err(corrupt)?
            }
        };
        let node = self.archive.node(ino).map_err(corrupt)?;
        Ok(Some(Listed { name, node }))
    }

    fn dir(&self, ino: INodeNo) -> Result<NodeView, Errno> {
        match self.node(ino) {
            Ok(d) if d.kind() == NodeKind::Dir => Ok(d),
            Ok(_) => Err(Errno::ENOTDIR),
            Err(e) => Err(e),
        }
    }

    /// Hands the entries of directory `ino` from `offset` on to `add` with the offset of the next one,
    /// until `add` says the reply is full (the offset of an entry is the index of the next one).
    fn list(&self, ino: INodeNo, offset: u64, mut add: impl FnMut(&Listed<'_>, u64) -> bool) -> Result<(), Errno> {
        let dir = self.dir(ino)?;
        let mut index = offset;
        while let Some(e) = self.listed(&dir, index)? {
            if add(&e, index + 1) {
                break;
            }
            index += 1;
        }
        Ok(())
    }

    pub(crate) fn do_readdir(&self, ino: INodeNo, offset: u64, mut reply: ReplyDirectory) {
        let _t = self.stats.timed(Op::Readdir);
        let listed = self.list(ino, offset, |e, next| {
            let ino = INodeNo(u64::from(e.node.ino.0));
            reply.add(ino, next, file_type(e.node.kind()), OsStr::from_bytes(e.name))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// Full entries or names only, as [`crate::listing`] picks for process `pid`.
    pub(crate) fn do_readdirplus(&self, pid: u32, ino: INodeNo, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _t = self.stats.timed(Op::Readdirplus);
        let entries = self.listing.batch(pid, ino.0, offset);
        if entries == Entries::NamesOnly {
            self.stats.names_only_batch();
        }
        let listed = self.list(ino, offset, |e, next| {
            let name = OsStr::from_bytes(e.name);
            match entries {
                Entries::Full => {
                    let attr = file_attr(&e.node);
                    reply.add(attr.ino, next, name, &self.ttls.entry, &attr, Generation(0))
                }
                Entries::NamesOnly => {
                    let ino = INodeNo(u64::from(e.node.ino.0));
                    reply.add_name_only(ino, next, file_type(e.node.kind()), name)
                }
            }
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// The xattrs of `ino`; `EIO` (logged) when the index records them wrongly.
    fn xattrs_of(&self, ino: INodeNo) -> Result<Vec<clip_format::XattrRef<'_>>, Errno> {
        let node = self.node(ino)?;
        self.archive.xattrs(&node).map_err(|e| {
            tracing::warn!(ino = node.ino.0, error = %e, "corrupt xattrs; answering EIO");
            Errno::EIO
        })
    }

    pub(crate) fn do_getxattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.stats.timed(Op::Getxattr);
        let xattrs = match self.xattrs_of(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        match xattrs.iter().find(|(n, _)| *n == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some((_, value)) => sized_reply(value, size, reply),
        }
    }

    pub(crate) fn do_listxattr(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.stats.timed(Op::Listxattr);
        let xattrs = match self.xattrs_of(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (name, _) in &xattrs {
            names.extend_from_slice(name);
            names.push(0);
        }
        sized_reply(&names, size, reply);
    }

    pub(crate) fn do_statfs(&self, reply: ReplyStatfs) {
        let _t = self.stats.timed(Op::Statfs);
        let (blocks, files) = *self.totals.get_or_init(|| totals(&self.archive));
        reply.statfs(blocks, 0, 0, files, 0, BLOCK_SIZE, NAME_MAX, BLOCK_SIZE);
    }

    pub(crate) fn do_access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.stats.timed(Op::Access);
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if mask.contains(AccessFlags::W_OK) {
            self.stats.erofs();
            return reply.error(Errno::EROFS);
        }
        let caller = Caller { uid: req.uid(), gid: req.gid() };
        if may_access(node.mode, node.uid, node.gid, caller, mask.bits() as u32) {
            reply.ok();
        } else {
            reply.error(Errno::EACCES);
        }
    }
}

/// `(blocks of 4 KiB, inodes)` of the whole image, for statfs: a pass over every inode (tens of ms for a
/// million), so a mount starts computing it in the background (see `init`).
pub(crate) fn totals(archive: &Archive) -> (u64, u64) {
    let mut blocks = 0u64;
    for i in 0..archive.node_count() {
        if let Ok(node) = archive.node(Ino::from_index(i)) {
            let bytes = if node.kind() == NodeKind::Dir { u64::from(BLOCK_SIZE) } else { node.size };
            blocks = blocks.saturating_add(bytes.div_ceil(u64::from(BLOCK_SIZE)));
        }
    }
    (blocks, archive.node_count() as u64)
}

/// The xattr size-probe protocol: size 0 asks for the length; a buffer too small is `ERANGE`.
fn sized_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
