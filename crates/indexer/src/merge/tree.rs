//! The in-memory file tree the layers are applied to: an arena of inodes, each directory's entries sorted by
//! name ([`Children`]: O(log n) lookups, sorted for deterministic output). Hard links are several directory
//! entries naming one inode; an inode is freed when its last name goes. Nothing here recurses.
//!
//! A million-file image holds a million inodes, so a node is kept to 64 bytes: its mtime split so no padding
//! sits inside, its rare xattrs and a directory's entries behind one pointer, its number in the written index
//! in what padding is left.

use clip_format::{mode, DataRef, LayerIndex, Timestamp, Xattr};

pub(super) use super::dir::{Children, Name};

/// Index of an inode in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NodeId(pub u32);

impl NodeId {
    pub const ROOT: NodeId = NodeId(0);

    fn index(self) -> usize {
        self.0 as usize
    }
}

/// Attributes of an inode.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    /// Full `st_mode` (type bits and permissions).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    nsec: u32,
    sec: i64,
    /// Sorted by name; None when there are none. A thin pointer (8 bytes, where `Box<[Xattr]>` takes 16):
    /// most inodes have none.
    #[allow(clippy::box_collection)]
    xattrs: Option<Box<Vec<Xattr>>>,
}

impl Meta {
    pub fn new(mode: u32, uid: u32, gid: u32, mtime: Timestamp, xattrs: Vec<Xattr>) -> Meta {
        let xattrs = (!xattrs.is_empty()).then(|| Box::new(xattrs));
        Meta { mode, uid, gid, nsec: mtime.nsec, sec: mtime.sec, xattrs }
    }

    /// A directory that `umoci` creates with `MkdirAll` (0o777 under the usual 022 umask), owned by root,
    /// mtime 0.
    pub fn implicit_dir() -> Meta {
        Meta::new(mode::S_IFDIR | 0o755, 0, 0, Timestamp::default(), Vec::new())
    }

    pub fn mtime(&self) -> Timestamp {
        Timestamp { sec: self.sec, nsec: self.nsec }
    }

    pub fn xattrs(&self) -> &[Xattr] {
        self.xattrs.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn into_xattrs(self) -> Vec<Xattr> {
        self.xattrs.map(|x| *x).unwrap_or_default()
    }
}

/// What an inode holds: 24 bytes (a directory's map behind a pointer, a file's data reference spread out so
/// the variant's tag fits beside its layer index).
#[derive(Debug)]
pub(super) enum Body {
    Dir(Box<Children>),
    File { layer: LayerIndex, offset: u64, size: u64 },
    Symlink(Box<[u8]>),
    Device { major: u32, minor: u32 },
    Special,
}

/// A directory entry: the inode it names and the layer generation that last extracted (or passed through)
/// this path — `umoci`'s "upper paths", which opaque whiteouts and whiteouts must keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Child {
    pub node: NodeId,
    pub upper: u32,
}

#[derive(Debug)]
pub(super) struct Node {
    pub meta: Meta,
    pub body: Body,
    /// Number of directory entries naming this inode.
    links: u32,
    /// Its place in the written index once numbered ([`UNNUMBERED`] before); in the node's padding.
    pub index: u32,
}

/// [`Node::index`] of an inode not numbered yet.
pub(super) const UNNUMBERED: u32 = u32::MAX;

impl Body {
    pub fn dir() -> Body {
        Body::Dir(Box::default())
    }

    pub fn file(data: DataRef) -> Body {
        Body::File { layer: data.layer, offset: data.offset, size: data.size }
    }
}

impl Node {
    /// Number of directory entries naming this inode.
    pub fn links(&self) -> u32 {
        self.links
    }
}

/// The arena.
pub(super) struct Tree {
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    /// Freed while a layer view is being recorded: not handed out again before [`Tree::release_held`], so
    /// an id the record names stays that inode's until the layer ends.
    held: Option<Vec<NodeId>>,
    /// While freed ids are held: inodes that lost a name but kept others (their link count changed, so a
    /// layer view must show them again).
    relinked: Vec<NodeId>,
    live: usize,
}

/// The arena has no more inode numbers to give.
#[derive(Debug)]
pub(super) struct Full;

impl Tree {
    /// A tree holding only the root directory, `umoci`'s defaults: 0o755, root-owned, mtime 0.
    pub fn new() -> Tree {
        let root = Node { meta: Meta::implicit_dir(), body: Body::dir(), links: 1, index: UNNUMBERED };
        Tree { nodes: vec![Some(root)], free: Vec::new(), held: None, relinked: Vec::new(), live: 1 }
    }

    /// From now on, keep freed inode ids out of reuse until [`Tree::release_held`].
    pub fn hold_freed(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Let the ids freed since [`Tree::hold_freed`] be reused.
    pub fn release_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.free.extend(held);
        }
        self.relinked.clear();
    }

    /// Inodes that lost a name but not their last since [`Tree::hold_freed`].
    pub fn relinked(&self) -> &[NodeId] {
        &self.relinked
    }

    /// Live inodes.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Upper bound of node ids handed out so far.
    pub fn capacity(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.index()].as_ref().expect("merge tree: a directory entry names a freed inode")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id.index()].as_mut().expect("merge tree: a directory entry names a freed inode")
    }

    /// The attributes and body of the live inode `id`, leaving it an attribute-less special file that keeps
    /// its links and index.
    pub fn take_contents(&mut self, id: NodeId) -> (Meta, Body) {
        let node = self.node_mut(id);
        (std::mem::replace(&mut node.meta, Meta::implicit_dir()), std::mem::replace(&mut node.body, Body::Special))
    }

    pub fn take(&mut self, id: NodeId) -> Option<Node> {
        self.nodes.get_mut(id.index()).and_then(Option::take)
    }

    pub fn is_dir(&self, id: NodeId) -> bool {
        matches!(self.node(id).body, Body::Dir(_))
    }

    pub fn children(&self, dir: NodeId) -> Option<&Children> {
        match &self.node(dir).body {
            Body::Dir(children) => Some(children),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> Option<&mut Children> {
        match &mut self.node_mut(dir).body {
            Body::Dir(children) => Some(children),
            _ => None,
        }
    }

    /// The entry `name` of `dir`, if `dir` is a directory that has one.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<Child> {
        self.children(dir)?.get(name).copied()
    }

    /// A new inode with no names yet.
    pub fn alloc(&mut self, meta: Meta, body: Body) -> Result<NodeId, Full> {
        let node = Some(Node { meta, body, links: 0, index: UNNUMBERED });
        self.live += 1;
        if let Some(id) = self.free.pop() {
            self.nodes[id.index()] = node;
            return Ok(id);
        }
        // Inode numbers are `index + 1` in a u32.
        let id = u32::try_from(self.nodes.len()).ok().filter(|&i| i < u32::MAX).ok_or(Full)?;
        self.nodes.push(node);
        Ok(NodeId(id))
    }

    /// Add the entry `name` → `node` to directory `dir` (which must not have one by that name).
    pub fn link(&mut self, dir: NodeId, name: &[u8], node: NodeId, upper: u32) {
        self.node_mut(node).links += 1;
        if let Some(children) = self.children_mut(dir) {
            let old = children.insert(Name::new(name), Child { node, upper });
            debug_assert!(old.is_none(), "link over an existing entry");
        }
    }

    /// Mark the entry `name` of `dir` as extracted by generation `upper`; `false` if it already was (or
    /// does not exist).
    pub fn mark(&mut self, dir: NodeId, name: &[u8], upper: u32) -> bool {
        match self.children_mut(dir).and_then(|c| c.get_mut(name)) {
            Some(child) if child.upper != upper => {
                child.upper = upper;
                true
            }
            _ => false,
        }
    }

    /// Remove the entry `name` of `dir` and everything below it (`rm -rf`): inodes that lose their last
    /// name are freed; hard-linked inodes with names elsewhere stay.
    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        let Some(child) = self.children_mut(dir).and_then(|c| c.remove(name)) else { return };
        let mut stack = vec![child.node];
        while let Some(id) = stack.pop() {
            let node = self.node_mut(id);
            node.links -= 1;
            if node.links > 0 {
                if self.held.is_some() {
                    self.relinked.push(id);
                }
                continue;
            }
            if let Some(node) = self.take(id) {
                match &mut self.held {
                    Some(held) => held.push(id),
                    None => self.free.push(id),
                }
                self.live -= 1;
                if let Body::Dir(children) = node.body {
                    stack.extend(children.into_values().map(|c| c.node));
                }
            }
        }
    }
}
