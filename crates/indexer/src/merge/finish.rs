//! Turning the merged tree into the writer's input: root first, then breadth-first in name-byte order, each
//! inode once, so the same image always gives the same list. [`finish`] gives [`NodeSpec`]s; [`encode`]
//! encodes the same inodes straight into the index's tables ([`TreeTables`]), taking each out of the tree as
//! it goes, so no inode is held twice.

use clip_format::{Content, DataRef, FormatError, Ino, NodeRecord, NodeSpec, RecordContent, TreeTables};

use super::tree::{Body, Name, NodeId, Tree, UNNUMBERED};

const UNASSIGNED: u32 = u32::MAX;

/// The reachable inodes in breadth-first order.
struct Order {
    ids: Vec<NodeId>,
    index_of: Vec<u32>,
}

impl Order {
    fn of(tree: &Tree) -> Order {
        let mut index_of = vec![UNASSIGNED; tree.capacity()];
        let mut ids = vec![NodeId::ROOT];
        index_of[0] = 0;
        let mut next = 0;
        while next < ids.len() {
            if let Some(children) = tree.children(ids[next]) {
                for child in children.values() {
                    let slot = &mut index_of[child.node.0 as usize];
                    if *slot == UNASSIGNED {
                        // At most `capacity` < u32::MAX inodes, so this fits.
                        *slot = ids.len() as u32;
                        ids.push(child.node);
                    }
                }
            }
            next += 1;
        }
        Order { ids, index_of }
    }

    fn ino(&self, id: NodeId) -> Ino {
        Ino::from_index(self.index_of[id.0 as usize] as usize)
    }
}

pub(super) fn finish(mut tree: Tree) -> Vec<NodeSpec> {
    let order = Order::of(&tree);
    let mut specs = Vec::with_capacity(order.ids.len());
    for &id in &order.ids {
        let Some(node) = tree.take(id) else { continue };
        let content = match node.body {
            Body::Dir(children) => Content::Dir(
                (*children)
                    .into_iter()
                    .map(|(name, child)| (name.as_bytes().to_vec(), order.ino(child.node)))
                    .collect(),
            ),
            Body::File { layer, offset, size } => Content::File(DataRef { layer, offset, size }),
            Body::Symlink(target) => Content::Symlink(target.into_vec()),
            Body::Device { major, minor } => Content::Device { major, minor },
            Body::Special => Content::Special,
        };
        let meta = node.meta;
        let (mode, uid, gid, mtime) = (meta.mode, meta.uid, meta.gid, meta.mtime());
        specs.push(NodeSpec { mode, uid, gid, mtime, xattrs: meta.into_xattrs(), content });
    }
    specs
}

/// The inodes [`finish`] would give, encoded as they are numbered: one breadth-first pass that empties each
/// inode as it is encoded (a directory's map is freed as its entries are numbered), so the tree shrinks while
/// the tables grow. The number of an inode sits in the inode ([`Node::index`](super::tree::Node)).
pub(super) fn encode(mut tree: Tree) -> Result<TreeTables, FormatError> {
    let mut ids = vec![NodeId::ROOT];
    // The position of the directory that numbered each inode (the root's own).
    let mut parents = vec![0u32];
    tree.node_mut(NodeId::ROOT).index = 0;
    let mut tables = TreeTables::new();
    let mut names: Vec<(Name, Ino)> = Vec::new();
    let mut at = 0;
    while at < ids.len() {
        let id = ids[at];
        let links = tree.node(id).links();
        let (meta, body) = tree.take_contents(id);
        let parent = if at == 0 { Ino::ROOT } else { Ino::from_index(parents[at] as usize) };
        let (content, nlink) = match body {
            Body::Dir(children) => {
                // A directory has one name, so its subdirectories are numbered (and emptied) only here.
                let mut subdirs = 0;
                names.clear();
                for (name, child) in *children {
                    let node = tree.node_mut(child.node);
                    if node.index == UNNUMBERED {
                        // At most `capacity` < u32::MAX inodes, so this fits.
                        node.index = ids.len() as u32;
                        ids.push(child.node);
                        parents.push(at as u32);
                    }
                    subdirs += u32::from(matches!(node.body, Body::Dir(_)));
                    names.push((name, Ino::from_index(node.index as usize)));
                }
                (None, subdirs + 2)
            }
            Body::File { layer, offset, size } => {
                (Some(RecordContent::File(DataRef { layer, offset, size })), links.max(1))
            }
            Body::Symlink(ref target) => (Some(RecordContent::Symlink(target)), links.max(1)),
            Body::Device { major, minor } => (Some(RecordContent::Device { major, minor }), links.max(1)),
            Body::Special => (Some(RecordContent::Special), links.max(1)),
        };
        let entries: Vec<(&[u8], Ino)>;
        let content = match content {
            Some(c) => c,
            None => {
                entries = names.iter().map(|(n, ino)| (n.as_bytes(), *ino)).collect();
                RecordContent::Dir(&entries)
            }
        };
        let (mode, uid, gid, mtime, xattrs) = (meta.mode, meta.uid, meta.gid, meta.mtime(), meta.xattrs());
        tables.push(NodeRecord { mode, uid, gid, mtime, nlink, parent, xattrs, content })?;
        at += 1;
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use clip_format::{write_index, ArchiveKind, ImageMeta, IndexContents, LayerIndex, Timestamp, Windows, Xattr};

    use crate::merge::Merger;
    use crate::tar::{EntryKind, TarEntry};

    fn entry(path: &str, kind: EntryKind, target: &str) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o640,
            uid: 7,
            gid: 8,
            size: if kind == EntryKind::File { 10 } else { 0 },
            mtime: Timestamp { sec: 1_700_000_000, nsec: 5 },
            link_target: target.as_bytes().to_vec(),
            dev_major: 1,
            dev_minor: 3,
            xattrs: Vec::new(),
            data_offset: 512,
            header_offset: 0,
        }
    }

    fn layers() -> Vec<Vec<TarEntry>> {
        use EntryKind::*;
        let long = "a-name-longer-than-twenty-two-bytes";
        let mut cap = entry("usr/bin/ping", File, "");
        cap.xattrs = vec![Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2] }];
        vec![
            vec![
                entry("usr", Dir, ""),
                entry("usr/bin", Dir, ""),
                cap,
                entry("usr/bin/gone", File, ""),
                entry(&format!("usr/{long}"), Dir, ""),
                entry(&format!("usr/{long}/f"), File, ""),
                entry("z", File, ""),
                // Named first from a deeper directory in the tar, first from the root breadth-first.
                entry("usr/bin/zz", HardLink, "z"),
                entry("a/b/c/link", Symlink, "../../../usr/bin/ping"),
                entry("dev/null", CharDevice, ""),
                entry("dev/fifo", Fifo, ""),
            ],
            vec![
                entry("usr/bin/.wh.gone", File, ""),
                entry("usr/bin/again", HardLink, "usr/bin/ping"),
                entry("a/.wh..wh..opq", File, ""),
                entry("a/new", File, ""),
            ],
        ]
    }

    fn merged() -> Merger {
        let mut m = Merger::new();
        for (i, layer) in layers().into_iter().enumerate() {
            m.apply_layer(LayerIndex::from_index(i), layer).unwrap();
        }
        m
    }

    fn bytes(contents: IndexContents) -> Vec<u8> {
        let mut out = Vec::new();
        write_index(&contents, &mut out).unwrap();
        out
    }

    #[test]
    fn the_encoded_tree_writes_the_same_index_as_its_node_specs() {
        let contents = |nodes, tree| IndexContents {
            kind: ArchiveKind::IndexOnly,
            meta: ImageMeta::default(),
            nodes,
            spans: Vec::new(),
            windows: Windows::new(),
            chunks: None,
            tree,
        };
        let specs = merged().finish();
        let tables = merged().encode().unwrap();
        assert_eq!(tables.len(), specs.len());
        assert_eq!(specs.len(), 12, "root, usr, bin, ping, the long dir, f, z, a, new, dev, null, fifo");
        assert_eq!(bytes(contents(Vec::new(), Some(tables))), bytes(contents(specs, None)));
    }
}
