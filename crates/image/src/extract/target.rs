//! The directory `extract` writes into, reached only through its descriptor: every entry is created with
//! a `*at` call relative to its parent directory's descriptor, and a parent is opened from the target's
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. No symlink, whether it came from the
//! archive or from another process writing into the target meanwhile, can redirect a write outside it:
//! the open fails ([`ImageError::ChangedWhileExtracting`]) instead.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use clip_format::{NodeKind, NodeView, XattrRef};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tracing::warn;

use crate::ImageError;

/// An open, initially empty target directory.
pub(super) struct Target {
    root: OwnedFd,
    path: PathBuf,
    /// Owners, devices and every xattr can be restored.
    pub is_root: bool,
}

impl Target {
    /// Creates `path` if missing, opens it and checks it is empty.
    pub fn prepare(path: &Path) -> Result<Target, ImageError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(ImageError::io(path, "creating target directory"))?
            }
            Err(e) => return Err(ImageError::io(path, "reading target directory")(e)),
            Ok(_) => {}
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(path, flags, Mode::empty())
            .map_err(|e| ImageError::io(path, "opening target directory")(e.into()))?;
        let dup = root.try_clone().map_err(ImageError::io(path, "reading target directory"))?;
        let mut dir =
            nix::dir::Dir::from_fd(dup).map_err(|e| ImageError::io(path, "reading target directory")(e.into()))?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| ImageError::io(path, "reading target directory")(e.into()))?;
            if ![&b"."[..], b".."].contains(&entry.file_name().to_bytes()) {
                return Err(ImageError::TargetNotEmpty(path.to_path_buf()));
            }
        }
        let is_root = nix::unistd::geteuid().is_root();
        Ok(Target { root, path: path.to_path_buf(), is_root })
    }

    /// The full path of `rel`, for messages only.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the directory `rel` (relative to the target; empty for the target itself) without following
    /// any symlink and without leaving the target.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, ImageError> {
        let changed = |e: Errno| match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR | Errno::ENOENT => {
                ImageError::ChangedWhileExtracting(self.display(rel))
            }
            e => ImageError::io(self.display(rel), "opening directory")(e.into()),
        };
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(ImageError::io(&self.path, "opening target directory"));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let how = OpenHow::new().flags(flags | OFlag::O_NOFOLLOW).resolve(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match nix::fcntl::openat2(&self.root, rel, how) {
            Err(Errno::ENOSYS | Errno::EPERM) => {}
            other => return other.map_err(changed),
        }
        // No openat2 (Linux before 5.6, or filtered): one component at a time, each with O_NOFOLLOW.
        let mut fd = self.root.try_clone().map_err(ImageError::io(&self.path, "opening target directory"))?;
        for c in rel.components() {
            let Component::Normal(name) = c else { return Err(changed(Errno::EXDEV)) };
            fd = nix::fcntl::openat(&fd, name, flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(changed)?;
        }
        Ok(fd)
    }

    /// Creates the regular file `name` in the open directory `dir` (it must not exist).
    pub fn create_file(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<File, ImageError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| ImageError::io(self.display(rel), "creating file")(e.into()))?;
        Ok(File::from(fd))
    }

    /// Creates directory `name` in `dir`, private until its metadata is applied at the end.
    pub fn create_dir(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), ImageError> {
        stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))
            .map_err(|e| ImageError::io(self.display(rel), "creating directory")(e.into()))
    }

    /// Creates symlink `name` → `target` in `dir`.
    pub fn create_symlink(&self, dir: &OwnedFd, name: &OsStr, target: &[u8], rel: &Path) -> Result<(), ImageError> {
        nix::unistd::symlinkat(OsStr::from_bytes(target), dir, name)
            .map_err(|e| ImageError::io(self.display(rel), "creating symlink")(e.into()))
    }

    /// Creates the device, FIFO or socket `name` in `dir`; `false` when it was skipped (a device, not root).
    pub fn create_special(&self, dir: &OwnedFd, name: &OsStr, node: &NodeView, rel: &Path) -> Result<bool, ImageError> {
        let kind = match node.kind() {
            NodeKind::CharDevice => SFlag::S_IFCHR,
            NodeKind::BlockDevice => SFlag::S_IFBLK,
            NodeKind::Socket => SFlag::S_IFSOCK,
            _ => SFlag::S_IFIFO,
        };
        if !self.is_root && matches!(node.kind(), NodeKind::CharDevice | NodeKind::BlockDevice) {
            warn!(path = %self.display(rel).display(), "skipping device node (needs root)");
            return Ok(false);
        }
        let (major, minor) = node.rdev();
        let dev = stat::makedev(u64::from(major), u64::from(minor));
        stat::mknodat(dir, name, kind, Mode::from_bits_truncate(node.mode & 0o7777), dev)
            .map_err(|e| ImageError::io(self.display(rel), "creating special file")(e.into()))?;
        Ok(true)
    }

    /// Creates `name` in `dir` as a hard link to `from_name` in `from_dir` (never following a symlink).
    pub fn link(
        &self,
        (from_dir, from_name): (&OwnedFd, &OsStr),
        (dir, name): (&OwnedFd, &OsStr),
        rel: &Path,
    ) -> Result<(), ImageError> {
        nix::unistd::linkat(from_dir, from_name, dir, name, AtFlags::empty())
            .map_err(|e| ImageError::io(self.display(rel), "creating hard link")(e.into()))
    }

    /// Owner, then mode (chown clears setuid), xattrs, then mtime last, of an open file or directory.
    pub fn apply(&self, f: &File, node: &NodeView, xattrs: &[XattrRef<'_>], rel: &Path) -> Result<(), ImageError> {
        let path = self.display(rel);
        let err = |what| ImageError::io(&path, what);
        if self.is_root {
            nix::unistd::fchown(f, Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)))
                .map_err(|e| err("changing owner")(e.into()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(node.mode & 0o7777)).map_err(err("changing mode"))?;
        for (name, value) in xattrs {
            let set = xattr::FileExt::set_xattr(f, OsStr::from_bytes(name), value);
            self.xattr_result(set, &path, name)?;
        }
        let t = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
        stat::futimens(f, &t, &t).map_err(|e| err("setting mtime")(e.into()))
    }

    /// [`Target::apply`] for the entry `name` of `dir` that clip does not open (a symlink, device, FIFO
    /// or socket), never following it.
    pub fn apply_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        node: &NodeView,
        xattrs: &[XattrRef<'_>],
        rel: &Path,
    ) -> Result<(), ImageError> {
        let path = self.display(rel);
        let err = |what| ImageError::io(&path, what);
        if self.is_root {
            let (uid, gid) = (Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)));
            nix::unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| err("changing owner")(e.into()))?;
        }
        if node.kind() != NodeKind::Symlink {
            // mknodat applied the umask; the libc call refuses a symlink rather than follow it.
            let mode = Mode::from_bits_truncate(node.mode & 0o7777);
            stat::fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| err("changing mode")(e.into()))?;
        }
        // Through the directory's descriptor in /proc: the l*xattr call does not follow `name`.
        let proc_path = Path::new("/proc/self/fd").join(dir.as_fd().as_raw_fd().to_string()).join(name);
        for (xname, value) in xattrs {
            let set = xattr::set(&proc_path, OsStr::from_bytes(xname), value);
            self.xattr_result(set, &path, xname)?;
        }
        let t = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
        stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(|e| err("setting mtime")(e.into()))
    }

    /// An xattr that could not be set: an error as root, a warning otherwise (unprivileged users cannot set
    /// `trusted.*` or `security.*`).
    fn xattr_result(&self, set: std::io::Result<()>, path: &Path, name: &[u8]) -> Result<(), ImageError> {
        match set {
            Ok(()) => Ok(()),
            Err(e) if self.is_root => Err(ImageError::io(path, "setting xattr")(e)),
            Err(e) => {
                warn!(path = %path.display(), name = %String::from_utf8_lossy(name), error = %e, "xattr not restored");
                Ok(())
            }
        }
    }
}
