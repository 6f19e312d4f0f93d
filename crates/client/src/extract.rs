//! Materializing an archive's root filesystem into a directory, as `umoci unpack` would: owners, full
//! modes, xattrs, devices, FIFOs, hard links as one inode, symlinks, mtimes with nanoseconds.
//!
//! Safety: the target must be new or empty; every name is checked to be a single path component; entries
//! are only ever created inside directories this extraction made, so no write can leave the target.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_format::{Archive, DataRef, Ino, NodeKind, NodeView};
use futures::{StreamExt, TryStreamExt};
use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tracing::{debug, warn};

use crate::{ClientError, Opened};

/// What an extraction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Progress callback: `(files written, bytes written)`.
pub type ExtractProgress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// Writes the tree of `opened` into `target` (created if missing; must be empty).
pub async fn extract(
    opened: &Opened,
    target: &Path,
    progress: Option<&ExtractProgress<'_>>,
) -> Result<ExtractStats, ClientError> {
    prepare_target(target)?;
    let archive = &opened.archive;
    let fmt = |source| ClientError::Format { path: target.to_path_buf(), source };
    let is_root = nix::unistd::geteuid().is_root();
    if !is_root {
        warn!("not running as root: owners, devices and some xattrs are not restored");
    }

    // Pass 1: directories and every non-regular entry; collect regular files and hard links.
    let mut stats = ExtractStats::default();
    let mut first_path: std::collections::HashMap<Ino, PathBuf> = Default::default();
    let mut links: Vec<(PathBuf, Ino)> = Vec::new();
    let mut files: Vec<(PathBuf, NodeView)> = Vec::new();
    let mut dirs: Vec<(PathBuf, NodeView)> = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    let root = archive.node(Ino::ROOT).map_err(fmt)?;
    let mut stack = vec![(target.to_path_buf(), root)];
    seen_dirs.insert(Ino::ROOT);
    while let Some((dir_path, dir)) = stack.pop() {
        for child in archive.children(&dir) {
            let (name, ino) = child.map_err(fmt)?;
            check_name(&dir_path, name)?;
            let path = dir_path.join(OsStr::from_bytes(name));
            stats.entries += 1;
            if first_path.contains_key(&ino) {
                links.push((path, ino));
                continue;
            }
            let node = archive.node(ino).map_err(fmt)?;
            match node.kind() {
                NodeKind::Dir => {
                    if !seen_dirs.insert(ino) {
                        return Err(ClientError::DirectoryCycle(ino.0));
                    }
                    std::fs::create_dir(&path).map_err(ClientError::io(&path, "creating directory"))?;
                    stack.push((path, node));
                    continue;
                }
                NodeKind::File => files.push((path.clone(), node)),
                NodeKind::Symlink => {
                    let target = archive.symlink_target(&node).map_err(fmt)?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                        .map_err(ClientError::io(&path, "creating symlink"))?;
                    apply_metadata(archive, &path, &node, is_root).map_err(fmt)??;
                }
                NodeKind::CharDevice | NodeKind::BlockDevice | NodeKind::Fifo | NodeKind::Socket => {
                    make_special(&path, &node, is_root)?;
                    apply_metadata(archive, &path, &node, is_root).map_err(fmt)??;
                }
            }
            first_path.insert(ino, path);
        }
        dirs.push((dir_path, dir));
    }

    // Pass 2: regular files in layer order, several at once, so each span is fetched and decoded once.
    files.sort_by_key(|(_, n)| n.data_ref().map(|d| (d.layer, d.offset)));
    let store = opened.store.clone();
    let written = futures::stream::iter(files.into_iter().map(|(path, node)| {
        let store = store.clone();
        async move {
            let data = node.data_ref().unwrap_or_default();
            let bytes = read_all(&store, data).await?;
            Ok::<_, ClientError>((path, node, bytes))
        }
    }))
    .buffered(8);
    futures::pin_mut!(written);
    while let Some((path, node, bytes)) = written.try_next().await? {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(ClientError::io(&path, "creating file"))?;
        f.write_all(&bytes).map_err(ClientError::io(&path, "writing file"))?;
        drop(f);
        apply_metadata(archive, &path, &node, is_root).map_err(fmt)??;
        stats.files += 1;
        stats.bytes += bytes.len() as u64;
        if let Some(p) = progress {
            p(stats.files, stats.bytes);
        }
    }

    // Pass 3: hard links, then directory metadata deepest first (creating entries bumps a dir's mtime).
    for (path, ino) in links {
        let first = &first_path[&ino];
        std::fs::hard_link(first, &path).map_err(ClientError::io(&path, "creating hard link"))?;
    }
    for (path, node) in dirs.iter().rev() {
        apply_metadata(archive, path, node, is_root).map_err(fmt)??;
    }
    debug!(target = %target.display(), entries = stats.entries, files = stats.files, "extracted");
    Ok(stats)
}

async fn read_all(store: &Arc<clip_store::ContentStore>, data: DataRef) -> Result<Vec<u8>, ClientError> {
    Ok(store.read(data, 0, data.size).await?)
}

fn prepare_target(target: &Path) -> Result<(), ClientError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ClientError::TargetNotEmpty(target.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(ClientError::io(target, "creating target directory"))
        }
        Err(e) => Err(ClientError::io(target, "reading target directory")(e)),
    }
}

fn check_name(dir: &Path, name: &[u8]) -> Result<(), ClientError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(ClientError::UnsafeName { dir: dir.to_path_buf(), name: String::from_utf8_lossy(name).into() });
    }
    Ok(())
}

fn make_special(path: &Path, node: &NodeView, is_root: bool) -> Result<(), ClientError> {
    let kind = match node.kind() {
        NodeKind::CharDevice => SFlag::S_IFCHR,
        NodeKind::BlockDevice => SFlag::S_IFBLK,
        NodeKind::Socket => SFlag::S_IFSOCK,
        _ => SFlag::S_IFIFO,
    };
    if !is_root && matches!(node.kind(), NodeKind::CharDevice | NodeKind::BlockDevice) {
        warn!(path = %path.display(), "skipping device node (needs root)");
        return Ok(());
    }
    let (major, minor) = node.rdev();
    let dev = stat::makedev(u64::from(major), u64::from(minor));
    stat::mknod(path, kind, Mode::from_bits_truncate(node.mode & 0o7777), dev)
        .map_err(|e| ClientError::io(path, "creating special file")(e.into()))
}

/// Owner, then mode (chown clears setuid), xattrs, then mtime last. Outer error: bad archive record.
fn apply_metadata(
    archive: &Archive,
    path: &Path,
    node: &NodeView,
    is_root: bool,
) -> Result<Result<(), ClientError>, clip_format::FormatError> {
    let xattrs = archive.xattrs(node)?;
    Ok((|| {
        let symlink = node.kind() == NodeKind::Symlink;
        if is_root {
            std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
                .map_err(ClientError::io(path, "changing owner"))?;
        }
        if !symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
                .map_err(ClientError::io(path, "changing mode"))?;
        }
        for (name, value) in xattrs {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                if is_root {
                    return Err(ClientError::io(path, "setting xattr")(e));
                }
                warn!(path = %path.display(), name = %String::from_utf8_lossy(name), error = %e, "xattr not restored");
            }
        }
        let t = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
        stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| ClientError::io(path, "setting mtime")(e.into()))?;
        Ok(())
    })())
}
