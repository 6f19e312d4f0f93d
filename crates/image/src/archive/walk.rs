//! The tree walk of [`super::pack`], by directory file descriptors: a path is resolved once, the root's;
//! every other entry is reached relative to its parent directory's descriptor and never through a symlink
//! (`openat` with `O_NOFOLLOW`, `fstatat` with `AT_SYMLINK_NOFOLLOW`, `readlinkat`). A directory is
//! opened when its turn comes and must still be the inode listed in its parent (device and inode compared),
//! so one swapped for a symlink or another directory meanwhile stops the walk with
//! [`ImageError::ChangedWhilePacking`] instead of packing whatever it now points to.
//!
//! Open descriptors grow with the depth of the tree, not its width: a directory waiting its turn holds
//! only a shared handle on its parent's descriptor and its name.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_format::{Content, DataRef, Ino, NodeSpec, Timestamp, Xattr};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tracing::warn;

use super::data::DataWriter;
use super::{too_many, PackProgress, PackSummary};
use crate::ImageError;

/// The attributes of one entry, as `fstat`/`fstatat` gave them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    rdev: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stat {
    // The field types of `struct stat` differ between targets (e.g. `st_nlink`): some casts are no-ops here.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_raw(s: FileStat) -> Stat {
        Stat {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            uid: s.st_uid,
            gid: s.st_gid,
            nlink: s.st_nlink as u64,
            size: u64::try_from(s.st_size).unwrap_or(0),
            rdev: s.st_rdev as u64,
            mtime: s.st_mtime as i64,
            mtime_nsec: s.st_mtime_nsec as i64,
        }
    }

    fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.mode & SFlag::S_IFMT.bits())
    }

    fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// Opens the root directory `root` (not through a symlink) and returns it with its attributes.
pub(super) fn open_root(root: &Path) -> Result<(OwnedFd, Stat), ImageError> {
    let listed =
        nix::sys::stat::lstat(root).map_err(|e| ImageError::io(root, "reading the root directory")(e.into()))?;
    let listed = Stat::from_raw(listed);
    if listed.kind() != SFlag::S_IFDIR {
        return Err(ImageError::io(root, "packing")(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory (clip archive packs a root filesystem directory)",
        )));
    }
    let fd =
        nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(|e| changed_or(root, "opening directory", e))?;
    let opened = fstat(&fd, root)?;
    if opened.id() != listed.id() {
        return Err(ImageError::ChangedWhilePacking(root.to_path_buf()));
    }
    Ok((fd, opened))
}

/// A directory listed in its parent and not yet walked.
pub(super) struct Pending {
    parent: Arc<OwnedFd>,
    name: OsString,
    /// For messages only: never resolved.
    path: PathBuf,
    /// Its node.
    index: usize,
    /// Device and inode when it was listed.
    id: (u64, u64),
}

/// Collects the nodes and file data of the tree.
pub(super) struct Walker<'p> {
    pub nodes: Vec<NodeSpec>,
    /// Non-directories with more than one link, by (device, inode): later names share the first's inode.
    links: HashMap<(u64, u64), Ino>,
    pub data: DataWriter,
    pub summary: PackSummary,
    buf: Vec<u8>,
    progress: Option<&'p PackProgress<'p>>,
}

impl<'p> Walker<'p> {
    pub fn new(data: DataWriter, progress: Option<&'p PackProgress<'p>>) -> Walker<'p> {
        Walker {
            nodes: Vec::new(),
            links: HashMap::new(),
            data,
            summary: PackSummary::default(),
            buf: vec![0u8; 256 << 10],
            progress,
        }
    }

    /// Walks the tree under the open root directory `fd`: depth first, entries in name order, so a
    /// directory's files are contiguous in the data stream.
    pub fn walk(&mut self, root: &Path, fd: OwnedFd, stat: Stat) -> Result<(), ImageError> {
        let file = File::from(fd);
        let xattrs = read_xattrs(root, Source::Open(&file))?;
        self.nodes.push(node_spec(&stat, xattrs, Content::Dir(Vec::new())));
        let mut stack = self.directory(Arc::new(OwnedFd::from(file)), root, 0)?;
        stack.reverse();
        while let Some(dir) = stack.pop() {
            let file = File::from(open_dir(&dir)?);
            self.nodes[dir.index].xattrs = read_xattrs(&dir.path, Source::Open(&file))?;
            let subdirs = self.directory(Arc::new(OwnedFd::from(file)), &dir.path, dir.index)?;
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Records the entries of the open directory `fd` (node `index`); returns its subdirectories to walk.
    fn directory(&mut self, fd: Arc<OwnedFd>, dir: &Path, index: usize) -> Result<Vec<Pending>, ImageError> {
        let mut names = list(&fd, dir)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut children = Vec::with_capacity(names.len());
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let st = nix::sys::stat::fstatat(&*fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| ImageError::io(&path, "reading attributes")(e.into()))?;
            let st = Stat::from_raw(st);
            self.summary.entries += 1;
            let kind = st.kind();
            if kind != SFlag::S_IFDIR && st.nlink > 1 {
                if let Some(&ino) = self.links.get(&st.id()) {
                    children.push((name.as_bytes().to_vec(), ino));
                    continue;
                }
            }
            let (content, xattrs) = match kind {
                // Its attributes are complete when it is opened (see `walk`).
                SFlag::S_IFDIR => (Content::Dir(Vec::new()), Vec::new()),
                SFlag::S_IFREG => {
                    let file = open_file(&fd, &name, &path, &st)?;
                    let xattrs = read_xattrs(&path, Source::Open(&file))?;
                    (Content::File(self.file(file, &path, &st)?), xattrs)
                }
                SFlag::S_IFLNK => {
                    let target = nix::fcntl::readlinkat(&*fd, name.as_os_str())
                        .map_err(|e| ImageError::io(&path, "reading symlink")(e.into()))?;
                    let xattrs = read_xattrs(&path, Source::entry(&fd, &name))?;
                    (Content::Symlink(target.as_bytes().to_vec()), xattrs)
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK => {
                    let (major, minor) = (nix::sys::stat::major(st.rdev), nix::sys::stat::minor(st.rdev));
                    let xattrs = read_xattrs(&path, Source::entry(&fd, &name))?;
                    (Content::Device { major: major as u32, minor: minor as u32 }, xattrs)
                }
                // FIFO or socket: attributes only, never opened.
                _ => (Content::Special, read_xattrs(&path, Source::entry(&fd, &name))?),
            };
            self.nodes.push(node_spec(&st, xattrs, content));
            if self.nodes.len() >= u32::MAX as usize - 1 {
                return Err(too_many(dir, "inodes"));
            }
            let child = self.nodes.len() - 1;
            let ino = Ino::from_index(child);
            if kind == SFlag::S_IFDIR {
                subdirs.push(Pending { parent: fd.clone(), name: name.clone(), path, index: child, id: st.id() });
            } else if st.nlink > 1 {
                self.links.insert(st.id(), ino);
            }
            children.push((name.as_bytes().to_vec(), ino));
        }
        self.nodes[index].content = Content::Dir(children);
        Ok(subdirs)
    }

    /// Streams a regular file's bytes into the data section.
    fn file(&mut self, mut f: File, path: &Path, st: &Stat) -> Result<DataRef, ImageError> {
        let offset = self.data.position();
        let mut size = 0u64;
        let mut limited = (&mut f).take(st.size);
        loop {
            let n = match limited.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io(path, "reading file")(e)),
            };
            self.data.write(&self.buf[..n]).map_err(ImageError::io(path, "writing file data"))?;
            size += n as u64;
            self.summary.data_bytes += n as u64;
            if let Some(p) = self.progress {
                p(self.summary.files, self.summary.data_bytes);
            }
        }
        if size != st.size {
            warn!(path = %path.display(), expected = st.size, read = size, "file shrank while packing");
        }
        self.summary.files += 1;
        Ok(DataRef { layer: 0, offset, size })
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn fstat(fd: &impl AsFd, path: &Path) -> Result<Stat, ImageError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| ImageError::io(path, "reading attributes")(e.into()))?;
    Ok(Stat::from_raw(st))
}

/// An entry that is gone, or is now a symlink or no directory, changed since it was listed.
fn changed_or(path: &Path, what: &'static str, e: Errno) -> ImageError {
    match e {
        Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR => ImageError::ChangedWhilePacking(path.to_path_buf()),
        e => ImageError::io(path, what)(e.into()),
    }
}

/// Opens a listed directory relative to its parent, checking it is still the directory listed.
fn open_dir(dir: &Pending) -> Result<OwnedFd, ImageError> {
    let fd = nix::fcntl::openat(&*dir.parent, dir.name.as_os_str(), dir_flags(), Mode::empty())
        .map_err(|e| changed_or(&dir.path, "opening directory", e))?;
    if fstat(&fd, &dir.path)?.id() != dir.id {
        return Err(ImageError::ChangedWhilePacking(dir.path.clone()));
    }
    Ok(fd)
}

/// Opens a listed regular file relative to its directory, checking it is still the file listed.
fn open_file(dir: &OwnedFd, name: &OsStr, path: &Path, listed: &Stat) -> Result<File, ImageError> {
    // O_NONBLOCK: an entry swapped for a FIFO must not block the open (it is refused below).
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty()).map_err(|e| changed_or(path, "opening file", e))?;
    let now = fstat(&fd, path)?;
    if now.kind() != SFlag::S_IFREG || now.id() != listed.id() {
        return Err(ImageError::ChangedWhilePacking(path.to_path_buf()));
    }
    Ok(File::from(fd))
}

/// The names in the open directory `fd` (without `.` and `..`).
fn list(fd: &OwnedFd, path: &Path) -> Result<Vec<OsString>, ImageError> {
    let err = |e: Errno| ImageError::io(path, "listing directory")(e.into());
    // A duplicate for the directory stream: `fd` stays usable for the entries' `*at` calls.
    let dup = fd.try_clone().map_err(ImageError::io(path, "listing directory"))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(err)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

fn node_spec(st: &Stat, xattrs: Vec<Xattr>, content: Content) -> NodeSpec {
    let nsec = u32::try_from(st.mtime_nsec).ok().filter(|n| *n < 1_000_000_000).unwrap_or(0);
    NodeSpec { mode: st.mode, uid: st.uid, gid: st.gid, mtime: Timestamp { sec: st.mtime, nsec }, xattrs, content }
}

/// Where an entry's extended attributes are read from.
enum Source<'a> {
    /// A file or directory clip opened.
    Open(&'a File),
    /// Any other entry: its name under its directory's descriptor in /proc, so no path is resolved again,
    /// and the l*xattr calls of `xattr::list`/`xattr::get` do not follow the name if it is a symlink.
    Entry(PathBuf),
}

impl Source<'_> {
    fn entry(dir: &OwnedFd, name: &OsStr) -> Source<'static> {
        Source::Entry(Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name))
    }

    fn list(&self) -> std::io::Result<xattr::XAttrs> {
        match self {
            Source::Open(f) => xattr::FileExt::list_xattr(*f),
            Source::Entry(p) => xattr::list(p),
        }
    }

    fn get(&self, name: &OsStr) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Source::Open(f) => xattr::FileExt::get_xattr(*f, name),
            Source::Entry(p) => xattr::get(p, name),
        }
    }
}

/// Extended attributes of an entry itself (not of a symlink's target), sorted.
fn read_xattrs(path: &Path, source: Source<'_>) -> Result<Vec<Xattr>, ImageError> {
    let names = match source.list() {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(path, "listing xattrs")(e)),
    };
    let mut out = Vec::new();
    for name in names {
        match source.get(&name) {
            Ok(Some(value)) => out.push(Xattr { name: name.as_bytes().to_vec(), value }),
            Ok(None) => {} // removed meanwhile
            Err(e) => return Err(ImageError::io(path, "reading xattr")(e)),
        }
    }
    out.sort();
    Ok(out)
}
