//! The tree's tables — `NODE`, `DENT`, `STRS`, `XATR` — encoded inode by inode by a [`TreeTables`]: from an
//! [`IndexContents`]' `Vec<NodeSpec>` (checked here: links, parents and entry names computed from the
//! directory entries), or by the indexer straight from its merged tree (which holds those facts already), so
//! a million-inode image never holds its inodes twice. `NODE` and `DENT` grow with the image: they wait in
//! [`Spill`]s. Both ways give the same bytes for the same tree.

use std::hash::BuildHasher;

use crate::layout::*;
use crate::spill::Spill;
use crate::writer::lossy;
use crate::{Content, DataRef, FormatError, IndexContents, Ino, NodeKind, Timestamp, Xattr};

/// Raw bytes gathered in memory before a table moves to a temporary file.
pub(crate) const TABLE_SPILL_AT: usize = 1 << 20;

/// One inode as [`TreeTables::push`] takes it.
pub struct NodeRecord<'a> {
    /// Full `st_mode`: type bits, permissions, setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// A directory: 2 + its subdirectories; anything else: its names (at least 1).
    pub nlink: u32,
    /// The directory that names it first in inode order; the root's is [`Ino::ROOT`].
    pub parent: Ino,
    /// Any order (stored sorted by name).
    pub xattrs: &'a [Xattr],
    pub content: RecordContent<'a>,
}

/// What an inode holds besides its attributes, as [`TreeTables::push`] takes it.
pub enum RecordContent<'a> {
    File(DataRef),
    /// The entries, sorted by name bytes, names unique and valid (as [`Content::Dir`] requires).
    Dir(&'a [(&'a [u8], Ino)]),
    Symlink(&'a [u8]),
    Device {
        major: u32,
        minor: u32,
    },
    Special,
}

/// An index's tree encoded as its tables, built inode by inode in inode order (the root first).
#[derive(Clone, Debug)]
pub struct TreeTables {
    pub(crate) nodes: Spill,
    pub(crate) dents: Spill,
    pub(crate) strs: Strings,
    pub(crate) xattrs: Vec<u8>,
    dent_count: u32,
    xattr_count: u32,
    count: usize,
}

impl Default for TreeTables {
    fn default() -> Self {
        TreeTables {
            nodes: Spill::new(TABLE_SPILL_AT),
            dents: Spill::new(TABLE_SPILL_AT),
            strs: Strings::default(),
            xattrs: Vec::new(),
            dent_count: 0,
            xattr_count: 0,
            count: 0,
        }
    }
}

impl TreeTables {
    /// No inode yet.
    pub fn new() -> TreeTables {
        TreeTables::default()
    }

    /// Inodes so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no inode was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the next inode (`Ino::from_index(self.len())`). The first must be a directory, the root.
    pub fn push(&mut self, node: NodeRecord<'_>) -> Result<(), FormatError> {
        let i = self.count;
        if i == 0 && !matches!(node.content, RecordContent::Dir(_)) {
            return Err(FormatError::Invalid("node 0 (the root) must be a directory".into()));
        }
        if i >= u32::MAX as usize - 1 {
            return Err(FormatError::Invalid("too many nodes".into()));
        }
        let kind = NodeKind::from_mode(node.mode)
            .ok_or_else(|| FormatError::Invalid(format!("inode {}: mode {:o} has no file type", i + 1, node.mode)))?;
        let (layer, size, data, extra) = match (&node.content, kind) {
            (RecordContent::File(r), NodeKind::File) => (r.layer.0, r.size, r.offset, 0),
            (RecordContent::Dir(children), NodeKind::Dir) => {
                let first = self.dent_count;
                for (name, ino) in children.iter() {
                    let (off, len) = self.strs.add(name)?;
                    let mut rec = [0u8; DENT_LEN];
                    for (at, v) in [off, len, ino.0].into_iter().enumerate() {
                        rec[at * 4..at * 4 + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    self.dents.append(&rec).map_err(FormatError::Write)?;
                    self.dent_count += 1;
                }
                (0, 0, u64::from(first), children.len() as u32)
            }
            (RecordContent::Symlink(target), NodeKind::Symlink) => {
                let (off, len) = self.strs.add(target)?;
                (0, u64::from(len), u64::from(off), len)
            }
            (RecordContent::Device { major, minor }, NodeKind::CharDevice | NodeKind::BlockDevice) => {
                (0, 0, (u64::from(*major) << 32) | u64::from(*minor), 0)
            }
            (RecordContent::Special, NodeKind::Fifo | NodeKind::Socket) => (0, 0, 0, 0),
            (_, kind) => {
                return Err(FormatError::Invalid(format!("inode {}: content does not match kind {kind:?}", i + 1)))
            }
        };
        let x_first = self.xattr_count;
        let x_count = encode_xattrs(node.xattrs, &mut self.strs, &mut self.xattrs)?;
        self.xattr_count += x_count;
        let mut rec = Vec::with_capacity(NODE_LEN);
        for v in [node.mode, node.uid, node.gid, node.nlink] {
            rec.extend_from_slice(&v.to_le_bytes());
        }
        rec.extend_from_slice(&node.mtime.sec.to_le_bytes());
        rec.extend_from_slice(&node.mtime.nsec.to_le_bytes());
        rec.extend_from_slice(&layer.to_le_bytes());
        rec.extend_from_slice(&size.to_le_bytes());
        rec.extend_from_slice(&data.to_le_bytes());
        for v in [extra, x_first, x_count, node.parent.0] {
            rec.extend_from_slice(&v.to_le_bytes());
        }
        self.nodes.append(&rec).map_err(FormatError::Write)?;
        self.count += 1;
        Ok(())
    }
}

/// Interns byte strings into the `STRS` blob, each distinct string once. The strings are found again by
/// hashing their bytes in the blob, so interning costs ~10 bytes a string beside the blob, not a copy of each.
#[derive(Clone, Default)]
pub(crate) struct Strings {
    pub(crate) blob: Vec<u8>,
    /// `(offset, len)` in `blob` of every distinct string.
    seen: hashbrown::HashTable<(u32, u32)>,
    hasher: std::collections::hash_map::RandomState,
}

impl Strings {
    /// The strings of a `STRS` blob read back; strings added later are interned among themselves only.
    pub(crate) fn from_blob(blob: Vec<u8>) -> Strings {
        Strings { blob, ..Strings::default() }
    }

    pub(crate) fn add(&mut self, s: &[u8]) -> Result<(u32, u32), FormatError> {
        let len = u32::try_from(s.len()).map_err(|_| FormatError::Invalid("string over 4 GiB".into()))?;
        let Strings { blob, seen, hasher } = self;
        let at = |(off, len): (u32, u32)| off as usize..off as usize + len as usize;
        let hash = hasher.hash_one(s);
        if let Some(&(off, _)) = seen.find(hash, |&e| &blob[at(e)] == s) {
            return Ok((off, len));
        }
        let off = u32::try_from(blob.len()).map_err(|_| FormatError::Invalid("string table over 4 GiB".into()))?;
        blob.extend_from_slice(s);
        seen.insert_unique(hash, (off, len), |&e| hasher.hash_one(&blob[at(e)]));
        Ok((off, len))
    }
}

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Strings({} bytes)", self.blob.len())
    }
}

/// The tables of `c.nodes`, checked: node 0 a directory, every other inode in some directory, a directory
/// in one only, entry names single valid components without duplicates, content matching the mode.
pub(crate) fn encode_tables(c: &IndexContents) -> Result<TreeTables, FormatError> {
    let n = c.nodes.len();
    if n == 0 || !matches!(c.nodes[0].content, Content::Dir(_)) {
        return Err(FormatError::Invalid("node 0 (the root) must be a directory".into()));
    }
    if n > u32::MAX as usize - 1 {
        return Err(FormatError::Invalid("too many nodes".into()));
    }
    // Links and parents, from the directory entries.
    let mut links = vec![0u32; n];
    let mut parent = vec![0u32; n];
    parent[0] = Ino::ROOT.0;
    for (i, node) in c.nodes.iter().enumerate() {
        let Content::Dir(children) = &node.content else { continue };
        for (name, ino) in children {
            let k = ino.index();
            if ino.0 == 0 || k >= n || k == 0 {
                return Err(FormatError::Invalid(format!("entry {:?} names bad inode {ino}", lossy(name))));
            }
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                return Err(FormatError::Invalid(format!("bad entry name {:?}", lossy(name))));
            }
            if matches!(c.nodes[k].content, Content::Dir(_)) {
                links[i] += 1; // the child's ".."
                if parent[k] != 0 {
                    return Err(FormatError::Invalid(format!("directory inode {ino} has two parents")));
                }
            } else {
                links[k] += 1; // one more name of a (possibly hard-linked) non-directory
            }
            if parent[k] == 0 {
                parent[k] = Ino::from_index(i).0;
            }
        }
    }
    if let Some(orphan) = (1..n).find(|&k| parent[k] == 0) {
        return Err(FormatError::Invalid(format!("inode {} is in no directory", Ino::from_index(orphan))));
    }

    let mut tables = TreeTables::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let sorted: Vec<(&[u8], Ino)>;
        let content = match &node.content {
            Content::File(r) => RecordContent::File(*r),
            Content::Dir(children) => {
                let mut by_name: Vec<(&[u8], Ino)> = children.iter().map(|(name, ino)| (&name[..], *ino)).collect();
                by_name.sort_by(|a, b| a.0.cmp(b.0));
                if let Some(w) = by_name.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(FormatError::Invalid(format!("duplicate entry {:?}", lossy(w[0].0))));
                }
                sorted = by_name;
                RecordContent::Dir(&sorted)
            }
            Content::Symlink(target) => RecordContent::Symlink(target),
            Content::Device { major, minor } => RecordContent::Device { major: *major, minor: *minor },
            Content::Special => RecordContent::Special,
        };
        let nlink = match NodeKind::from_mode(node.mode) {
            Some(NodeKind::Dir) => links[i] + 2,
            _ => links[i].max(1),
        };
        let (mode, uid, gid, mtime, xattrs) = (node.mode, node.uid, node.gid, node.mtime, &node.xattrs[..]);
        tables.push(NodeRecord { mode, uid, gid, mtime, nlink, parent: Ino(parent[i]), xattrs, content })?;
    }
    Ok(tables)
}

/// Appends `XATR` records for `xattrs`, sorted by name; returns how many.
pub(crate) fn encode_xattrs(xattrs: &[Xattr], strs: &mut Strings, out: &mut Vec<u8>) -> Result<u32, FormatError> {
    let mut sorted: Vec<_> = xattrs.iter().collect();
    sorted.sort();
    for x in &sorted {
        let (no, nl) = strs.add(&x.name)?;
        let (vo, vl) = strs.add(&x.value)?;
        for v in [no, nl, vo, vl] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(sorted.len() as u32)
}
