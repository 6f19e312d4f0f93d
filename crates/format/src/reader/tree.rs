//! The file tree of an open archive: inode records ([`NodeView`]), directory entries, lookups, symlink
//! targets and xattrs, each decoded from the mapped tables on access and bounds-checked.

use super::Archive;
use crate::error::Corruption;
use crate::layout::*;
use crate::{DataRef, FormatError, Ino, LayerIndex, NodeKind, Timestamp};

/// One inode's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub ino: Ino,
    /// Full `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: Timestamp,
    /// Regular files: the layer holding the data.
    pub layer: LayerIndex,
    /// Regular files: bytes; symlinks: target length; others 0.
    pub size: u64,
    pub(super) data: u64,
    pub(super) extra: u32,
    xattr_first: u32,
    xattr_count: u32,
    /// The directory holding this inode's first name (the root is its own parent).
    pub parent: Ino,
}

impl NodeView {
    /// The file type; records with an unknown type are refused when read, so this is always known.
    pub fn kind(&self) -> NodeKind {
        NodeKind::from_mode(self.mode).unwrap_or(NodeKind::File)
    }

    /// Where a regular file's bytes are.
    pub fn data_ref(&self) -> Option<DataRef> {
        (self.kind() == NodeKind::File).then_some(DataRef { layer: self.layer, offset: self.data, size: self.size })
    }

    /// Device numbers of a char/block device, `(major, minor)`.
    pub fn rdev(&self) -> (u32, u32) {
        match self.kind() {
            NodeKind::CharDevice | NodeKind::BlockDevice => ((self.data >> 32) as u32, self.data as u32),
            _ => (0, 0),
        }
    }

    /// Number of entries of a directory.
    pub fn child_count(&self) -> u32 {
        if self.kind() == NodeKind::Dir {
            self.extra
        } else {
            0
        }
    }
}

/// An extended attribute borrowed from the archive: `(name, value)`.
pub type XattrRef<'a> = (&'a [u8], &'a [u8]);

impl Archive {
    /// Number of inodes.
    pub fn node_count(&self) -> usize {
        self.bytes(&self.nodes).len() / NODE_LEN
    }

    /// The record of `ino`.
    pub fn node(&self, ino: Ino) -> Result<NodeView, FormatError> {
        let nodes = self.bytes(&self.nodes);
        let i = ino.index();
        let count = nodes.len() / NODE_LEN;
        if ino.0 == 0 || i >= count {
            return Err(Corruption::InodeRange { ino, count }.into());
        }
        let mut r = Le(&nodes[i * NODE_LEN..(i + 1) * NODE_LEN]);
        let v = NodeView {
            ino,
            mode: r.u32(),
            uid: r.u32(),
            gid: r.u32(),
            nlink: r.u32(),
            mtime: Timestamp { sec: r.i64(), nsec: r.u32() },
            layer: LayerIndex(r.u32()),
            size: r.u64(),
            data: r.u64(),
            extra: r.u32(),
            xattr_first: r.u32(),
            xattr_count: r.u32(),
            parent: Ino(r.u32()),
        };
        if NodeKind::from_mode(v.mode).is_none() {
            return Err(Corruption::NoFileType { ino, mode: v.mode }.into());
        }
        Ok(v)
    }

    fn string(&self, offset: u64, len: u32) -> Result<&[u8], FormatError> {
        let strs = self.bytes(&self.strs);
        usize::try_from(offset)
            .ok()
            .and_then(|start| strs.get(start..start.checked_add(len as usize)?))
            .ok_or_else(|| Corruption::StringRange { offset, len, size: strs.len() }.into())
    }

    /// Entry `index` (0-based, sorted by name) of directory `dir`.
    pub fn dirent(&self, dir: &NodeView, index: u32) -> Result<(&[u8], Ino), FormatError> {
        let out_of_range = || Corruption::EntryRange { dir: dir.ino, index };
        if index >= dir.child_count() {
            return Err(out_of_range().into());
        }
        let dents = self.bytes(&self.dents);
        let rec = usize::try_from(dir.data)
            .ok()
            .and_then(|first| first.checked_add(index as usize))
            .and_then(|k| dents.get(k.checked_mul(DENT_LEN)?..k.checked_add(1)?.checked_mul(DENT_LEN)?))
            .ok_or_else(out_of_range)?;
        let mut r = Le(rec);
        let (off, len, ino) = (r.u32(), r.u32(), r.u32());
        Ok((self.string(off.into(), len)?, Ino(ino)))
    }

    /// The entries of a directory in name order.
    pub fn children<'a>(&'a self, dir: &NodeView) -> impl Iterator<Item = Result<(&'a [u8], Ino), FormatError>> + 'a {
        let dir = *dir;
        (0..dir.child_count()).map(move |i| self.dirent(&dir, i))
    }

    /// Looks `name` up in directory `dir` (binary search over its sorted entries).
    pub fn lookup(&self, dir: &NodeView, name: &[u8]) -> Result<Option<Ino>, FormatError> {
        let (mut lo, mut hi) = (0u32, dir.child_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (n, ino) = self.dirent(dir, mid)?;
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(ino)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Resolves a `/`-separated path from the root without following symlinks (`""` and `"/"` are the root).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Ino>, FormatError> {
        let mut cur = self.node(Ino::ROOT)?;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            if cur.kind() != NodeKind::Dir {
                return Ok(None);
            }
            let next = if comp == b".." { Some(cur.parent) } else { self.lookup(&cur, comp)? };
            match next {
                Some(ino) => cur = self.node(ino)?,
                None => return Ok(None),
            }
        }
        Ok(Some(cur.ino))
    }

    /// A symlink's target.
    pub fn symlink_target(&self, node: &NodeView) -> Result<&[u8], FormatError> {
        if node.kind() != NodeKind::Symlink {
            return Err(Corruption::NotSymlink { ino: node.ino }.into());
        }
        self.string(node.data, node.extra)
    }

    /// Extended attributes of an inode, sorted by name.
    pub fn xattrs(&self, node: &NodeView) -> Result<Vec<XattrRef<'_>>, FormatError> {
        let table = self.bytes(&self.xattrs);
        let (first, count) = (node.xattr_first as usize, node.xattr_count as usize);
        let recs = table.get(first * XATTR_LEN..(first + count) * XATTR_LEN).ok_or(Corruption::XattrRange {
            ino: node.ino,
            first: node.xattr_first,
            count: node.xattr_count,
        })?;
        recs.chunks_exact(XATTR_LEN)
            .map(|rec| {
                let mut r = Le(rec);
                let (no, nl, vo, vl) = (r.u32(), r.u32(), r.u32(), r.u32());
                Ok((self.string(no.into(), nl)?, self.string(vo.into(), vl)?))
            })
            .collect()
    }
}
