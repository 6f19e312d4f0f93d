//! Turning the merged tree into the writer's [`NodeSpec`] list: root first, then breadth-first in name-byte
//! order, each inode once, so the same image always gives the same list.

use clip_format::{Content, Ino, NodeSpec};

use super::tree::{Body, NodeId, Tree};

const UNASSIGNED: u32 = u32::MAX;

pub(super) fn finish(mut tree: Tree) -> Vec<NodeSpec> {
    // Number every reachable inode in breadth-first order.
    let mut index_of = vec![UNASSIGNED; tree.capacity()];
    let mut order = vec![NodeId::ROOT];
    index_of[0] = 0;
    let mut next = 0;
    while next < order.len() {
        if let Some(children) = tree.children(order[next]) {
            for child in children.values() {
                let slot = &mut index_of[child.node.0 as usize];
                if *slot == UNASSIGNED {
                    // At most `capacity` < u32::MAX inodes, so this fits.
                    *slot = order.len() as u32;
                    order.push(child.node);
                }
            }
        }
        next += 1;
    }
    let ino = |id: NodeId| Ino::from_index(index_of[id.0 as usize] as usize);
    let mut specs = Vec::with_capacity(order.len());
    for &id in &order {
        let Some(node) = tree.take(id) else { continue };
        let content = match node.body {
            Body::Dir(children) => Content::Dir(
                children.into_iter().map(|(name, child)| (name.as_bytes().to_vec(), ino(child.node))).collect(),
            ),
            Body::File(data) => Content::File(data),
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
