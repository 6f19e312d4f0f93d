//! Paths inside an image, resolved the way a process chrooted into it would: symlinks followed (absolute
//! targets from the image root), `..` never above the root, at most [`MAX_SYMLINKS`] links, so no hostile
//! tree can lead a lookup outside the image or around in circles.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use clip_format::{Archive, Ino, NodeKind, NodeView};

/// Symlinks one lookup follows, as Linux's `MAXSYMLINKS`.
pub(super) const MAX_SYMLINKS: usize = 40;

/// A file found in the image: its inode record and its path with every symlink resolved.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub node: NodeView,
    pub path: Vec<u8>,
}

impl Found {
    /// The directory holding the file (`/` for a file in the root).
    pub(super) fn dir(&self) -> Vec<u8> {
        parent(&self.path)
    }
}

/// The directory holding the absolute `path` (`/` for the root and its children).
pub(super) fn parent(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
    }
}

/// Resolves `path` (absolute, or relative to the directory `cwd`) in `archive`, following every symlink,
/// the last component's too; `None` when it does not exist, a symlink loops, or the index is corrupt.
pub(super) fn resolve(archive: &Archive, cwd: &[u8], path: &[u8]) -> Option<Found> {
    let mut todo: VecDeque<Vec<u8>> = VecDeque::new();
    if !path.starts_with(b"/") {
        todo.extend(components(cwd));
    }
    todo.extend(components(path));
    // The directories walked into, each with its name: `..` pops one, never the root.
    let mut stack: Vec<(Vec<u8>, Ino)> = Vec::new();
    let mut links = 0;
    let mut node = archive.node(Ino::ROOT).ok()?;
    while let Some(name) = todo.pop_front() {
        if name == b".." {
            stack.pop();
            node = archive.node(stack.last().map_or(Ino::ROOT, |s| s.1)).ok()?;
            continue;
        }
        if node.kind() != NodeKind::Dir {
            return None;
        }
        let next = archive.node(archive.lookup(&node, &name).ok()??).ok()?;
        if next.kind() == NodeKind::Symlink {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = archive.symlink_target(&next).ok()?;
            if target.starts_with(b"/") {
                stack.clear();
                node = archive.node(Ino::ROOT).ok()?;
            }
            for c in components(target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        stack.push((name, next.ino));
        node = next;
    }
    let mut path = Vec::new();
    for (name, _) in &stack {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    Some(Found { node, path })
}

/// `name` (relative: one component, or a few without `..`) in the directory `dir`, found as [`resolve`]
/// would find `dir/name`, but looked up from `dir` itself, not from the root (a search tries many names in
/// one directory); any symlink on the way is left to [`resolve`].
pub(super) fn resolve_in(archive: &Archive, dir: &Found, name: &[u8]) -> Option<Found> {
    let mut node = dir.node;
    for part in name.split(|&b| b == b'/') {
        if node.kind() != NodeKind::Dir || part.is_empty() || part == b"." || part == b".." {
            return resolve(archive, b"/", &join(&dir.path, name));
        }
        node = archive.node(archive.lookup(&node, part).ok()??).ok()?;
        if node.kind() == NodeKind::Symlink {
            return resolve(archive, b"/", &join(&dir.path, name));
        }
    }
    Some(Found { node, path: join(&dir.path, name) })
}

/// Directories resolved, and the names in them, kept for a search that tries many names in a few
/// directories (a module's imports across `sys.path`, a library across the loader's directories): at most
/// [`MAX_DIRS_KEPT`] directories, names only of directories of at most [`MAX_NAMES_KEPT`] entries.
#[derive(Default)]
pub(super) struct DirCache(std::sync::Mutex<DirCacheInner>);

#[derive(Default)]
struct DirCacheInner {
    resolved: HashMap<Vec<u8>, Option<Found>>,
    names: HashMap<Ino, Arc<Names>>,
}

/// The names in one directory, by stem (what comes before the first `.`): a module `NAME` can only be a name
/// of stem `NAME` (`NAME/`, `NAME.py`, `NAME.cpython-311-x86_64-linux-gnu.so`, ...).
struct Names {
    by_stem: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl Names {
    fn has(&self, name: &[u8]) -> bool {
        self.by_stem.get(stem(name)).is_some_and(|names| names.iter().any(|n| n == name))
    }
}

/// What comes before the first `.` of `name`.
fn stem(name: &[u8]) -> &[u8] {
    name.split(|&b| b == b'.').next().unwrap_or_default()
}

/// Most directories a [`DirCache`] keeps.
const MAX_DIRS_KEPT: usize = 4096;
/// Largest directory whose names a [`DirCache`] keeps (a larger one is looked up name by name).
const MAX_NAMES_KEPT: usize = 4096;

impl DirCache {
    /// The directory at `path` (resolved from `cwd`), as [`resolve`] finds it.
    pub(super) fn dir(&self, archive: &Archive, cwd: &[u8], path: &[u8]) -> Option<Found> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = inner.resolved.get(path) {
            return found.clone();
        }
        let found = resolve(archive, cwd, path).filter(|d| d.node.kind() == NodeKind::Dir);
        if inner.resolved.len() < MAX_DIRS_KEPT {
            inner.resolved.insert(path.to_vec(), found.clone());
        }
        found
    }

    /// `name` in the directory `dir`, as [`resolve_in`] finds it; a one-component name the directory does
    /// not have is answered from its kept names.
    pub(super) fn find_in(&self, archive: &Archive, dir: &Found, name: &[u8]) -> Option<Found> {
        if !name.contains(&b'/') && self.names(archive, dir).is_some_and(|names| !names.has(name)) {
            return None;
        }
        resolve_in(archive, dir, name)
    }

    /// Whether the directory `dir` may have a name of stem `stem` (what comes before its first `.`): false
    /// only when its kept names say it has none.
    pub(super) fn may_have_stem(&self, archive: &Archive, dir: &Found, stem: &[u8]) -> bool {
        self.names(archive, dir).is_none_or(|names| names.by_stem.contains_key(stem))
    }

    /// The names in the directory `dir` of stem `stem`, when its names are kept; `None` when they are not
    /// (any name may be there).
    pub(super) fn names_of_stem(&self, archive: &Archive, dir: &Found, stem: &[u8]) -> Option<Vec<Vec<u8>>> {
        self.names(archive, dir).map(|names| names.by_stem.get(stem).cloned().unwrap_or_default())
    }

    /// The names of `dir`, kept the first time they are asked for (none for a large directory, or once
    /// [`MAX_DIRS_KEPT`] directories' are kept).
    fn names(&self, archive: &Archive, dir: &Found) -> Option<Arc<Names>> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = inner.names.get(&dir.node.ino) {
            return Some(Arc::clone(names));
        }
        if dir.node.child_count() as usize > MAX_NAMES_KEPT || inner.names.len() >= MAX_DIRS_KEPT {
            return None;
        }
        let mut by_stem: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for (name, _) in archive.children(&dir.node).filter_map(Result::ok) {
            by_stem.entry(stem(name).to_vec()).or_default().push(name.to_vec());
        }
        let names = Arc::new(Names { by_stem });
        inner.names.insert(dir.node.ino, Arc::clone(&names));
        Some(names)
    }
}

/// `dir/name`, or `name` itself when it is absolute.
pub(super) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"/") || dir.is_empty() {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The components of a path, without empty ones and `.`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").map(<[u8]>::to_vec).collect()
}
