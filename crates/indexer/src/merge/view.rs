//! Layer views: one layer's own tree, as overlayfs wants it in a lower directory, so that overlay over the
//! views of layers `0..=n` shows exactly the tree merged from those layers (the `umoci unpack` result).
//!
//! A view holds what the layer wrote and what overlay needs to show the merged result:
//! - every path the layer extracted or passed through, with its attributes after the layer (implicit parents
//!   therefore carry the lower layer's attributes, as containerd's applier copies them);
//! - a whiteout `D/.wh.NAME` as a character device 0/0 at `D/NAME` (owner and mtime of the whiteout entry);
//!   none where `D` does not exist (it would make `D` appear);
//! - an opaque marker `D/.wh..wh..opq` as the xattr `trusted.overlay.opaque=y` on `D`; a directory whose lower
//!   contents the layer removed in another way (a whiteout of a directory it re-creates, a directory replaced
//!   and re-created in the same layer) gets the same xattr, since overlay would show the lower contents again;
//! - every name of a hard-linked inode the layer touched (a hard link to a lower file copies the file up, with
//!   all its names, as overlay's copy-up does) or took a name from, so the merged tree's link counts hold.
//!
//! Paths are resolved the way the merge resolved them (symlinked parents followed), so a view names the
//! inodes the merged tree has.

use std::collections::{BTreeMap, HashMap, HashSet};

use clip_format::{mode, Content, DataRef, Ino, NodeSpec, Timestamp, Xattr};

use super::tree::{Body, NodeId, Tree};

/// The xattr overlayfs reads to stop merging a directory with the layers below.
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// A whiteout entry of the layer, where its directory exists.
#[derive(Debug)]
pub(super) struct Whiteout {
    pub dir: NodeId,
    pub name: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
}

/// What applying one layer did that the tree does not show by itself.
#[derive(Debug, Default)]
pub(super) struct LayerRecord {
    pub whiteouts: Vec<Whiteout>,
    /// Directories whose lower contents the layer removed (opaque markers, whiteouts of a directory the
    /// layer extracted itself).
    pub opaque: Vec<NodeId>,
    /// `(dir, name)` where the layer unlinked a directory: if `name` is a directory again, it is opaque.
    pub unlinked_dirs: Vec<(NodeId, Vec<u8>)>,
}

/// Where an inode sits: its names (parent, name), the first being the one a directory is reached by.
type Names<'t> = HashMap<NodeId, Vec<(NodeId, &'t [u8])>>;

/// The view of the layer of generation `generation`, just applied to `tree`: root first, breadth-first.
pub(super) fn build(tree: &Tree, generation: u32, record: &LayerRecord) -> Vec<NodeSpec> {
    let names = all_names(tree);
    let mut opaque: HashSet<NodeId> = record.opaque.iter().copied().collect();
    for (dir, name) in &record.unlinked_dirs {
        if let Some(child) = tree.lookup(*dir, name).filter(|c| tree.is_dir(c.node)) {
            opaque.insert(child.node);
        }
    }
    // Entries in the view: (dir, name) → what it is.
    let mut entries: BTreeMap<NodeId, BTreeMap<Vec<u8>, Entry>> = BTreeMap::new();
    let add = |entries: &mut BTreeMap<NodeId, BTreeMap<Vec<u8>, Entry>>, dir: NodeId, name: &[u8], e: Entry| {
        entries.entry(dir).or_default().entry(name.to_vec()).or_insert(e);
    };
    let mut seeds: Vec<NodeId> = Vec::new();
    for (&node, node_names) in &names {
        for &(dir, name) in node_names {
            if tree.lookup(dir, name).is_some_and(|c| c.upper == generation) {
                seeds.push(node);
            }
        }
    }
    seeds.extend(record.opaque.iter().copied());
    // An inode that lost one of its names keeps the others with a new link count: show them again (only
    // those still alive; an id freed meanwhile has no names).
    seeds.extend(tree.relinked().iter().copied());
    for w in &record.whiteouts {
        match tree.lookup(w.dir, &w.name) {
            Some(child) if tree.is_dir(child.node) => {
                opaque.insert(child.node);
                seeds.push(child.node);
            }
            Some(_) => {}
            None => {
                add(&mut entries, w.dir, &w.name, Entry::Whiteout { uid: w.uid, gid: w.gid, mtime: w.mtime });
                seeds.push(w.dir);
            }
        }
    }
    seeds.extend(opaque.iter().copied());
    // Every name of each seed (all names of a hard-linked inode), then their directories up to the root.
    let mut stack = seeds;
    let mut seen: HashSet<NodeId> = HashSet::new();
    while let Some(node) = stack.pop() {
        if node == NodeId::ROOT || !seen.insert(node) {
            continue;
        }
        let Some(node_names) = names.get(&node) else { continue };
        for &(dir, name) in node_names {
            add(&mut entries, dir, name, Entry::Node(node));
            stack.push(dir);
        }
    }
    to_specs(tree, &entries, &opaque)
}

/// One directory entry of a view.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Node(NodeId),
    Whiteout { uid: u32, gid: u32, mtime: Timestamp },
}

/// Every live inode's names, by one walk from the root.
fn all_names(tree: &Tree) -> Names<'_> {
    let mut names: Names<'_> = HashMap::new();
    let mut stack = vec![NodeId::ROOT];
    while let Some(dir) = stack.pop() {
        let Some(children) = tree.children(dir) else { continue };
        for (name, child) in children {
            names.entry(child.node).or_default().push((dir, name.as_bytes()));
            if tree.is_dir(child.node) {
                stack.push(child.node);
            }
        }
    }
    names
}

/// The view's entries as the writer's node list: root first, breadth-first in name order, an inode once.
fn to_specs(
    tree: &Tree,
    entries: &BTreeMap<NodeId, BTreeMap<Vec<u8>, Entry>>,
    opaque: &HashSet<NodeId>,
) -> Vec<NodeSpec> {
    let empty = BTreeMap::new();
    let mut specs: Vec<NodeSpec> = Vec::new();
    let mut index_of: HashMap<NodeId, usize> = HashMap::new();
    // Slots to fill: (node, its index in `specs`).
    let mut queue = std::collections::VecDeque::from([(NodeId::ROOT, 0usize)]);
    index_of.insert(NodeId::ROOT, 0);
    specs.push(node_spec(tree, NodeId::ROOT, opaque));
    while let Some((dir, at)) = queue.pop_front() {
        let mut children = Vec::new();
        for (name, entry) in entries.get(&dir).unwrap_or(&empty) {
            let index = match *entry {
                Entry::Node(node) => match index_of.get(&node) {
                    Some(&i) => i,
                    None => {
                        let i = specs.len();
                        index_of.insert(node, i);
                        specs.push(node_spec(tree, node, opaque));
                        if tree.is_dir(node) {
                            queue.push_back((node, i));
                        }
                        i
                    }
                },
                Entry::Whiteout { uid, gid, mtime } => {
                    specs.push(NodeSpec {
                        mode: mode::S_IFCHR,
                        uid,
                        gid,
                        mtime,
                        xattrs: Vec::new(),
                        content: Content::Device { major: 0, minor: 0 },
                    });
                    specs.len() - 1
                }
            };
            children.push((name.clone(), Ino::from_index(index)));
        }
        specs[at].content = Content::Dir(children);
    }
    specs
}

/// An inode's attributes and content (a directory's entries are filled in by the caller).
fn node_spec(tree: &Tree, id: NodeId, opaque: &HashSet<NodeId>) -> NodeSpec {
    let node = tree.node(id);
    let mut xattrs = node.meta.xattrs().to_vec();
    let content = match &node.body {
        Body::Dir(_) => {
            if opaque.contains(&id) {
                xattrs.push(Xattr { name: OPAQUE_XATTR.to_vec(), value: b"y".to_vec() });
            }
            Content::Dir(Vec::new())
        }
        Body::File { layer, offset, size } => Content::File(DataRef { layer: *layer, offset: *offset, size: *size }),
        Body::Symlink(target) => Content::Symlink(target.to_vec()),
        Body::Device { major, minor } => Content::Device { major: *major, minor: *minor },
        Body::Special => Content::Special,
    };
    let m = &node.meta;
    NodeSpec { mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime(), xattrs, content }
}
