//! Applying one tar entry to the tree: whiteouts, replacement, implicit parents, hard links — following
//! `umoci`'s `UnpackEntry` step by step.

use std::collections::BTreeMap;

use clip_format::{mode, DataRef, LayerIndex, Xattr};

use super::resolve::{existing_dir, resolve, Component, ResolveError};
use super::tree::{Body, Meta, NodeId, Tree};
use super::view::{LayerRecord, Whiteout};
use super::MergeError;
use crate::tar::{display_path, EntryKind, TarEntry};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Linux `NAME_MAX`.
const NAME_MAX: usize = 255;
/// Linux `PATH_MAX` (including the NUL): the longest symlink target `symlink(2)` takes is one less.
const PATH_MAX: usize = 4096;
/// xattrs `umoci` neither clears nor sets when extracting.
const IGNORED_XATTRS: &[&[u8]] = &[
    b"security.selinux",
    b"system.nfs4_acl",
    b"trusted.overlay.opaque",
    b"trusted.overlay.redirect",
    b"trusted.overlay.origin",
    b"trusted.overlay.impure",
    b"trusted.overlay.nlink",
    b"trusted.overlay.upper",
    b"trusted.overlay.metacopy",
];

/// One entry being applied.
struct Step<'t> {
    tree: &'t mut Tree,
    generation: u32,
    layer: LayerIndex,
    path: &'t [u8],
    /// What the layer's view needs beyond the tree, when views are recorded.
    record: Option<&'t mut LayerRecord>,
}

pub(super) fn apply(
    tree: &mut Tree,
    generation: u32,
    layer: LayerIndex,
    entry: TarEntry,
    record: Option<&mut LayerRecord>,
) -> Result<(), MergeError> {
    let path = entry.path.clone();
    let mut step = Step { tree, generation, layer, path: &path, record };
    step.check_path(&path)?;
    if path.is_empty() {
        if entry.kind != EntryKind::Dir {
            return Err(MergeError::RootNotDir { layer, kind: entry.kind });
        }
        step.tree.node_mut(NodeId::ROOT).meta = meta(&entry, mode::S_IFDIR);
        return Ok(());
    }
    let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&path[..0], &path[..]),
    };
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        return step.whiteout(parent, name == OPAQUE, target, &entry);
    }
    step.extract(parent, name, entry)
}

impl Step<'_> {
    fn path_string(&self) -> String {
        display_path(self.path)
    }

    fn check_path(&self, path: &[u8]) -> Result<(), MergeError> {
        if path.is_empty() {
            return Ok(());
        }
        for component in path.split(|&b| b == b'/') {
            if matches!(component, b"" | b"." | b"..") {
                return Err(MergeError::InvalidPath { layer: self.layer, path: display_path(path) });
            }
            if component.len() > NAME_MAX {
                return Err(MergeError::NameTooLong { layer: self.layer, path: display_path(path) });
            }
        }
        Ok(())
    }

    fn resolve(&self, dir: &[u8]) -> Result<Vec<Component>, MergeError> {
        let components = split(dir);
        resolve(self.tree, components.into_iter()).map_err(|e| {
            let (layer, path) = (self.layer, self.path_string());
            match e {
                ResolveError::Loop => MergeError::SymlinkLoop { layer, path },
                ResolveError::TooLong => MergeError::ResolutionTooLong { layer, path },
            }
        })
    }

    /// `.wh.NAME` (or the opaque marker) in directory `dir`.
    fn whiteout(&mut self, dir: &[u8], opaque: bool, target: &[u8], entry: &TarEntry) -> Result<(), MergeError> {
        if !opaque && matches!(target, b"" | b"." | b"..") {
            return Err(MergeError::BadWhiteout { layer: self.layer, path: self.path_string() });
        }
        let resolved = self.resolve(dir)?;
        let Some(dir) = existing_dir(self.tree, &resolved) else { return Ok(()) };
        if opaque {
            tracing::trace!(layer = %self.layer, path = %self.path_string(), "opaque whiteout");
            self.remove_lower_below(dir);
            if let Some(record) = self.record.as_deref_mut() {
                record.opaque.push(dir);
            }
            return Ok(());
        }
        if let Some(record) = self.record.as_deref_mut() {
            let (uid, gid, mtime) = (entry.uid, entry.gid, entry.mtime);
            record.whiteouts.push(Whiteout { dir, name: target.to_vec(), uid, gid, mtime });
        }
        let Some(child) = self.tree.lookup(dir, target) else { return Ok(()) };
        if child.upper != self.generation {
            self.tree.unlink(dir, target);
        } else if self.tree.is_dir(child.node) {
            self.remove_lower_below(child.node);
            if let Some(record) = self.record.as_deref_mut() {
                record.opaque.push(child.node);
            }
        }
        Ok(())
    }

    /// Remove everything below `dir` that this layer did not extract, descending into what it did.
    fn remove_lower_below(&mut self, dir: NodeId) {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let Some(children) = self.tree.children(dir) else { continue };
            let mut lower = Vec::new();
            for (name, child) in children {
                if child.upper != self.generation {
                    lower.push(name.clone());
                } else if self.tree.is_dir(child.node) {
                    stack.push(child.node);
                }
            }
            for name in lower {
                self.tree.unlink(dir, name.as_bytes());
            }
        }
    }

    /// Any entry but a whiteout or the root: `name` in directory `dir`.
    fn extract(&mut self, dir: &[u8], name: &[u8], entry: TarEntry) -> Result<(), MergeError> {
        let mut resolved = self.resolve(dir)?;
        let parent = self.mkdir_all(&mut resolved)?;
        let existing = self.tree.lookup(parent, name);
        match existing {
            Some(child) if entry.kind == EntryKind::Dir && self.tree.is_dir(child.node) => {
                self.tree.node_mut(child.node).meta = meta(&entry, mode::S_IFDIR);
            }
            _ => {
                if let Some(old) = existing {
                    if let Some(record) = self.record.as_deref_mut().filter(|_| self.tree.is_dir(old.node)) {
                        record.unlinked_dirs.push((parent, name.to_vec()));
                    }
                    self.tree.unlink(parent, name);
                }
                let node = self.create(entry)?;
                self.tree.link(parent, name, node, 0);
            }
        }
        self.mark_upper(&resolved, parent, name);
        Ok(())
    }

    /// `MkdirAll` of a resolved directory path; returns the directory.
    fn mkdir_all(&mut self, resolved: &mut [Component]) -> Result<NodeId, MergeError> {
        let mut dir = NodeId::ROOT;
        for i in 0..resolved.len() {
            let node = match resolved[i].node {
                Some(id) if self.tree.is_dir(id) => id,
                Some(_) => {
                    let names: Vec<&[u8]> = resolved[..=i].iter().map(|c| c.name.as_slice()).collect();
                    return Err(MergeError::NotADirectory {
                        layer: self.layer,
                        path: self.path_string(),
                        component: display_path(&names.join(&b'/')),
                    });
                }
                None => {
                    if resolved[i].name.len() > NAME_MAX {
                        return Err(MergeError::NameTooLong { layer: self.layer, path: self.path_string() });
                    }
                    let id = self.alloc(Meta::implicit_dir(), Body::dir())?;
                    self.tree.link(dir, &resolved[i].name, id, 0);
                    resolved[i].node = Some(id);
                    id
                }
            };
            dir = node;
        }
        Ok(dir)
    }

    /// The inode for a new entry (for a hard link: the existing inode at its target).
    fn create(&mut self, entry: TarEntry) -> Result<NodeId, MergeError> {
        let perm = |type_bits| meta(&entry, type_bits);
        let (meta, body) = match entry.kind {
            EntryKind::HardLink => return self.hard_link_target(&entry.link_target),
            EntryKind::Dir => (perm(mode::S_IFDIR), Body::dir()),
            EntryKind::File => (
                perm(mode::S_IFREG),
                Body::file(DataRef { layer: self.layer, offset: entry.data_offset, size: entry.size }),
            ),
            EntryKind::Symlink => {
                let target = &entry.link_target;
                if target.is_empty() || target.len() >= PATH_MAX || target.contains(&0) {
                    return Err(MergeError::BadSymlinkTarget { layer: self.layer, path: self.path_string() });
                }
                let mut meta = perm(mode::S_IFLNK);
                // Symlinks have no mode of their own; `umoci` does not chmod them.
                meta.mode = mode::S_IFLNK | 0o777;
                (meta, Body::Symlink(entry.link_target.as_slice().into()))
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let bits = if entry.kind == EntryKind::CharDevice { mode::S_IFCHR } else { mode::S_IFBLK };
                (perm(bits), Body::Device { major: entry.dev_major, minor: entry.dev_minor })
            }
            EntryKind::Fifo => (perm(mode::S_IFIFO), Body::Special),
        };
        self.alloc(meta, body)
    }

    fn hard_link_target(&self, target: &[u8]) -> Result<NodeId, MergeError> {
        let (layer, path) = (self.layer, self.path_string());
        let missing = || MergeError::HardLinkTargetMissing { layer, path: path.clone(), target: display_path(target) };
        if self.check_path(target).is_err() {
            return Err(missing());
        }
        let (dir, name) = match target.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&target[..slash], &target[slash + 1..]),
            None => (&target[..0], target),
        };
        let node = if name.is_empty() {
            Some(NodeId::ROOT)
        } else {
            let resolved = self.resolve(dir)?;
            existing_dir(self.tree, &resolved).and_then(|d| self.tree.lookup(d, name)).map(|c| c.node)
        };
        match node {
            None => Err(missing()),
            Some(id) if self.tree.is_dir(id) => {
                Err(MergeError::HardLinkToDirectory { layer, path, target: display_path(target) })
            }
            Some(id) => Ok(id),
        }
    }

    fn alloc(&mut self, meta: Meta, body: Body) -> Result<NodeId, MergeError> {
        self.tree.alloc(meta, body).map_err(|_| MergeError::TooManyNodes { layer: self.layer })
    }

    /// Add the entry's path and its ancestors to this layer's upper paths. Marks run bottom-up and stop at
    /// the first entry already marked: its ancestors were marked with it.
    fn mark_upper(&mut self, resolved: &[Component], parent: NodeId, name: &[u8]) {
        if !self.tree.mark(parent, name, self.generation) {
            return;
        }
        for i in (0..resolved.len()).rev() {
            let dir = if i == 0 { NodeId::ROOT } else { resolved[i - 1].node.unwrap_or(NodeId::ROOT) };
            if !self.tree.mark(dir, &resolved[i].name, self.generation) {
                return;
            }
        }
    }
}

fn split(path: &[u8]) -> Vec<&[u8]> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split(|&b| b == b'/').collect()
    }
}

/// The attributes an entry sets: type bits plus its permission bits, owner, mtime and xattrs (sorted,
/// without the ones `umoci` ignores, the last of duplicate names winning).
fn meta(entry: &TarEntry, type_bits: u32) -> Meta {
    let xattrs: BTreeMap<&[u8], &[u8]> = entry
        .xattrs
        .iter()
        .filter(|x| !IGNORED_XATTRS.contains(&x.name.as_slice()))
        .map(|x| (x.name.as_slice(), x.value.as_slice()))
        .collect();
    let xattrs = xattrs.into_iter().map(|(n, v)| Xattr { name: n.to_vec(), value: v.to_vec() }).collect();
    Meta::new(type_bits | (entry.mode & 0o7777), entry.uid, entry.gid, entry.mtime, xattrs)
}
