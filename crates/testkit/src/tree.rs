//! Snapshots of a directory tree with every attribute a container root filesystem has, for comparing
//! clip's output with umoci's (see [`crate::compare`]).
//!
//! [`snapshot`] walks without following symlinks (`lstat`) and records, per path relative to the root
//! (raw bytes, never lossy strings): type, full `st_mode`, uid, gid, size (regular files and symlinks),
//! sha256 of regular files' contents, mtime (seconds + nanoseconds), `st_rdev`, `st_nlink`, symlink target
//! bytes, all xattrs, and the hard-link group (every path of the tree sharing the same `(st_dev, st_ino)`).
//! The root itself is recorded under the path `.`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    fn of(ft: std::fs::FileType) -> Self {
        if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            FileKind::File
        }
    }

    /// A lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Dir => "directory",
            FileKind::File => "file",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "char device",
            FileKind::BlockDevice => "block device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        }
    }
}

/// Everything recorded about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The file type.
    pub kind: FileKind,
    /// The full `st_mode` (type bits included, e.g. `0o104755`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_size` of regular files and symlinks; `None` for other types.
    pub size: Option<u64>,
    /// sha256 of a regular file's contents.
    pub sha256: Option<[u8; 32]>,
    /// `st_mtime`.
    pub mtime_sec: i64,
    /// `st_mtime_nsec`.
    pub mtime_nsec: i64,
    /// `st_rdev` (0 unless a device).
    pub rdev: u64,
    /// `st_nlink`.
    pub nlink: u64,
    /// A symlink's target bytes.
    pub symlink_target: Option<Vec<u8>>,
    /// Every xattr, name → value.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// For non-directories whose inode has more than one path in the tree: all those paths, sorted
    /// (including this one). Empty otherwise.
    pub hardlinks: Vec<PathBuf>,
}

impl Node {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Major number of `rdev` (Linux encoding).
    pub fn rdev_major(&self) -> u64 {
        ((self.rdev >> 8) & 0xfff) | ((self.rdev >> 32) & !0xfff)
    }

    /// Minor number of `rdev` (Linux encoding).
    pub fn rdev_minor(&self) -> u64 {
        (self.rdev & 0xff) | ((self.rdev >> 12) & !0xff)
    }

    /// An xattr's value.
    pub fn xattr(&self, name: &str) -> Option<&[u8]> {
        self.xattrs.get(OsStr::new(name)).map(Vec::as_slice)
    }
}

/// A snapshot of a directory tree: relative path → [`Node`]; the root is `.`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// Every path, relative to the root (`.` for the root itself), in byte order.
    pub nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    /// The node at a relative path (`.` for the root).
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Node> {
        self.nodes.get(path.as_ref())
    }

    /// The node at a relative path.
    ///
    /// # Panics
    /// When the path is absent; the message lists the paths of its parent directory.
    pub fn node(&self, path: impl AsRef<Path>) -> &Node {
        let path = path.as_ref();
        self.get(path).unwrap_or_else(|| {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let siblings: Vec<String> = self.children(parent).iter().map(|p| show_path(p)).collect();
            panic!("{} is not in the tree; {} holds: [{}]", show_path(path), show_path(parent), siblings.join(", "))
        })
    }

    /// Whether the path exists.
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.nodes.contains_key(path.as_ref())
    }

    /// The direct children of a directory (relative paths), sorted.
    pub fn children(&self, dir: impl AsRef<Path>) -> Vec<PathBuf> {
        let dir = dir.as_ref();
        let dir = if dir == Path::new(".") { Path::new("") } else { dir };
        self.nodes.keys().filter(|p| p.as_path() != Path::new(".") && p.parent() == Some(dir)).cloned().collect()
    }

    /// Number of paths, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty (never true for a snapshot, which has a root).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Snapshots the tree at `root`.
///
/// # Panics
/// When the tree cannot be read; see [`try_snapshot`].
pub fn snapshot(root: &Path) -> Tree {
    try_snapshot(root).unwrap_or_else(|e| panic!("snapshot of {}: {e}", root.display()))
}

/// Snapshots the tree at `root`, returning the first I/O error met.
pub fn try_snapshot(root: &Path) -> Result<Tree, Error> {
    let mut tree = Tree::default();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, Path::new(""), &mut tree, &mut inodes)?;
    for mut paths in inodes.into_values().filter(|p| p.len() > 1) {
        paths.sort();
        for p in &paths {
            if let Some(node) = tree.nodes.get_mut(p) {
                node.hardlinks.clone_from(&paths);
            }
        }
    }
    Ok(tree)
}

fn walk(root: &Path, rel: &Path, tree: &mut Tree, inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>) -> Result<(), Error> {
    let abs = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) };
    let meta = std::fs::symlink_metadata(&abs).map_err(Error::io(&abs))?;
    let kind = FileKind::of(meta.file_type());
    let key = if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel.to_path_buf() };
    let (size, sha256, symlink_target) = match kind {
        FileKind::File => (Some(meta.size()), Some(hash_file(&abs)?), None),
        FileKind::Symlink => {
            let target = std::fs::read_link(&abs).map_err(Error::io(&abs))?;
            (Some(meta.size()), None, Some(target.as_os_str().as_bytes().to_vec()))
        }
        _ => (None, None, None),
    };
    if kind != FileKind::Dir {
        inodes.entry((meta.dev(), meta.ino())).or_default().push(key.clone());
    }
    tree.nodes.insert(
        key,
        Node {
            kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size,
            sha256,
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            rdev: meta.rdev(),
            nlink: meta.nlink(),
            symlink_target,
            xattrs: read_xattrs(&abs)?,
            hardlinks: Vec::new(),
        },
    );
    if kind == FileKind::Dir {
        let mut names: Vec<OsString> = std::fs::read_dir(&abs)
            .map_err(Error::io(&abs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(Error::io(&abs))?;
        names.sort();
        for name in names {
            walk(root, &rel.join(name), tree, inodes)?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Every xattr of `path` (not following symlinks). A filesystem without xattr support has none.
fn read_xattrs(path: &Path) -> Result<BTreeMap<OsString, Vec<u8>>, Error> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(out),
        Err(e) => return Err(Error::io(path)(e)),
    };
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => {
                out.insert(name, value);
            }
            Ok(None) => {} // removed between list and get
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(Error::io(path)(e)),
        }
    }
    Ok(out)
}

fn is_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(95) // EOPNOTSUPP
}

/// A path for messages: as is when it is printable UTF-8, otherwise with `\xNN` escapes (lossless).
pub fn show_path(path: &Path) -> String {
    show_bytes(path.as_os_str().as_bytes())
}

pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => bytes.escape_ascii().to_string(),
    }
}
