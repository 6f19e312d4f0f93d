//! Path resolution scoped to the image root, as `umoci` does it with `securejoin.SecureJoinVFS`: symlinks in
//! the directory part of an entry's path are followed (absolute targets restart at the image root, `..`
//! never climbs above it), components that do not exist are taken as written, and more than 255 symlinks
//! is a loop.

use super::tree::{Body, NodeId, Tree};

/// `securejoin`'s limit on symlinks followed in one resolution.
const MAX_SYMLINKS: u32 = 255;
/// Components that symlink targets may add to one resolution, beyond the path itself (a guard against
/// hostile symlink chains; real images come nowhere near it).
const EXPANSION_BUDGET: usize = 1 << 16;

/// One component of a resolved path: its name and, if it exists, its inode (not a symlink: those were
/// followed; possibly a non-directory, which the caller refuses where a directory is needed).
#[derive(Debug)]
pub(super) struct Component {
    pub name: Vec<u8>,
    pub node: Option<NodeId>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ResolveError {
    /// More than 255 symlinks.
    Loop,
    /// Symlink targets added more components than the budget allows.
    TooLong,
}

/// Resolve the directory path `components` (relative to the root, already normalized) through `tree`.
pub(super) fn resolve<'a>(
    tree: &Tree,
    components: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Result<Vec<Component>, ResolveError> {
    let mut remaining: Vec<Vec<u8>> = components.rev().map(<[u8]>::to_vec).collect();
    let mut budget = remaining.len() + EXPANSION_BUDGET;
    let mut resolved: Vec<Component> = Vec::new();
    let mut symlinks = 0;
    while let Some(part) = remaining.pop() {
        match part.as_slice() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let parent = match resolved.last() {
            None => Some(NodeId::ROOT),
            Some(component) => component.node,
        };
        let found = parent.and_then(|dir| tree.lookup(dir, &part)).map(|child| child.node);
        if let Some(id) = found {
            if let Body::Symlink(target) = &tree.node(id).body {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(ResolveError::Loop);
                }
                if target.first() == Some(&b'/') {
                    resolved.clear();
                }
                let before = remaining.len();
                remaining.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                budget = budget.checked_sub(remaining.len() - before).ok_or(ResolveError::TooLong)?;
                continue;
            }
        }
        resolved.push(Component { name: part, node: found });
    }
    Ok(resolved)
}

/// The inode of the directory a resolved path names, if every component exists and the last one is a
/// directory (the root for an empty path).
pub(super) fn existing_dir(tree: &Tree, resolved: &[Component]) -> Option<NodeId> {
    let id = match resolved.last() {
        None => NodeId::ROOT,
        Some(component) => component.node?,
    };
    tree.is_dir(id).then_some(id)
}
