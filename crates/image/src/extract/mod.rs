//! Materializing an archive's root filesystem into a directory, as `umoci unpack` would: owners, full
//! modes, xattrs, devices, FIFOs, hard links as one inode, symlinks, mtimes with nanoseconds.
//!
//! Safety: the target must be new or empty; every name is checked to be a single path component; every
//! entry is created relative to its parent directory's descriptor, reached from the target's without
//! following a symlink (see `target`), so no write can leave the target, whatever the archive holds or
//! another process does to the target meanwhile.
//!
//! File data streams to disk a span at a time, a few spans fetched ahead: memory stays at a few spans
//! whatever the size of the files.

mod target;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clip_format::{Archive, FormatError, Ino, NodeKind, NodeView};
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use crate::{ImageError, Opened};
use target::Target;

/// What an extraction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Progress callback: `(files written, bytes written)`.
pub type ExtractProgress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// Spans fetched ahead of the one being written.
const SPANS_AHEAD: usize = 8;

/// Writes the tree of `opened` into `target` (created if missing; must be empty).
pub async fn extract(
    opened: &Opened,
    target: &Path,
    progress: Option<&ExtractProgress<'_>>,
) -> Result<ExtractStats, ImageError> {
    let t = Target::prepare(target)?;
    let archive = &opened.archive;
    let fmt = |source| ImageError::Format { path: target.to_path_buf(), source };
    if !t.is_root {
        warn!("not running as root: owners, devices and some xattrs are not restored");
    }
    let mut stats = ExtractStats::default();
    // Pass 1: directories and every non-regular entry.
    let tree = create_tree(archive, &t, &mut stats).map_err(|e| e.into_client(target))?;
    // Pass 2: regular files in layer order, so each span is fetched and decoded once.
    write_files(opened, &t, tree.files, &mut stats, progress).await?;
    // Pass 3: hard links, then directory metadata deepest first (creating entries bumps a dir's mtime).
    let mut dirs = Parents::default();
    for (rel, ino) in &tree.links {
        let first = &tree.first[ino];
        let from = t.open_dir(parent(first))?;
        let dir = dirs.get(&t, parent(rel))?;
        t.link((&from, name(first)), (dir, name(rel)), rel)?;
    }
    for (rel, node) in tree.dirs.iter().rev() {
        let dir = File::from(t.open_dir(rel)?);
        t.apply(&dir, node, &archive.xattrs(node).map_err(fmt)?, rel)?;
    }
    debug!(target = %target.display(), entries = stats.entries, files = stats.files, "extracted");
    Ok(stats)
}

/// What pass 1 leaves for the others, paths relative to the target.
#[derive(Default)]
struct Tree {
    files: Vec<(PathBuf, NodeView)>,
    /// Later names of an inode already created.
    links: Vec<(PathBuf, Ino)>,
    /// Where each non-directory inode was created first.
    first: HashMap<Ino, PathBuf>,
    /// Every directory, parents before children.
    dirs: Vec<(PathBuf, NodeView)>,
}

/// A failure of pass 1: a bad record, or an error creating an entry.
enum TreeError {
    Format(FormatError),
    Client(ImageError),
}

impl From<FormatError> for TreeError {
    fn from(e: FormatError) -> Self {
        TreeError::Format(e)
    }
}

impl From<ImageError> for TreeError {
    fn from(e: ImageError) -> Self {
        TreeError::Client(e)
    }
}

impl TreeError {
    fn into_client(self, target: &Path) -> ImageError {
        match self {
            TreeError::Format(source) => ImageError::Format { path: target.to_path_buf(), source },
            TreeError::Client(e) => e,
        }
    }
}

/// Pass 1: creates directories, symlinks and special files; collects regular files and hard links.
fn create_tree(archive: &Archive, t: &Target, stats: &mut ExtractStats) -> Result<Tree, TreeError> {
    let mut tree = Tree::default();
    let mut seen_dirs = HashSet::from([Ino::ROOT]);
    let mut stack = vec![(PathBuf::new(), archive.node(Ino::ROOT)?)];
    while let Some((rel, dir)) = stack.pop() {
        let fd = t.open_dir(&rel)?;
        for child in archive.children(&dir) {
            let (name, ino) = child?;
            check_name(&t.display(&rel), name)?;
            let name = OsStr::from_bytes(name);
            let path = rel.join(name);
            stats.entries += 1;
            if tree.first.contains_key(&ino) {
                tree.links.push((path, ino));
                continue;
            }
            let node = archive.node(ino)?;
            match node.kind() {
                NodeKind::Dir => {
                    if !seen_dirs.insert(ino) {
                        return Err(ImageError::DirectoryCycle(ino.0).into());
                    }
                    t.create_dir(&fd, name, &path)?;
                    stack.push((path, node));
                    continue;
                }
                NodeKind::File => tree.files.push((path.clone(), node)),
                NodeKind::Symlink => {
                    t.create_symlink(&fd, name, archive.symlink_target(&node)?, &path)?;
                    t.apply_at(&fd, name, &node, &archive.xattrs(&node)?, &path)?;
                }
                NodeKind::CharDevice | NodeKind::BlockDevice | NodeKind::Fifo | NodeKind::Socket => {
                    if t.create_special(&fd, name, &node, &path)? {
                        t.apply_at(&fd, name, &node, &archive.xattrs(&node)?, &path)?;
                    }
                }
            }
            tree.first.insert(ino, path);
        }
        tree.dirs.push((rel, dir));
    }
    Ok(tree)
}

/// One span's slice of one file: bytes `range` of the span (empty for an empty file).
struct Piece {
    file: usize,
    range: Range<usize>,
}

/// A span (`None` for empty files) and the pieces of consecutive files it holds: fetched once.
struct Job {
    span: Option<(u32, usize)>,
    pieces: Vec<Piece>,
}

/// The jobs that write `files` (in order), consecutive pieces of one span grouped.
fn jobs(archive: &Archive, files: &[(PathBuf, NodeView)]) -> Result<Vec<Job>, FormatError> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut add = |span, piece| match jobs.last_mut() {
        Some(last) if last.span == span => last.pieces.push(piece),
        _ => jobs.push(Job { span, pieces: vec![piece] }),
    };
    for (file, (_, node)) in files.iter().enumerate() {
        let d = node.data_ref().unwrap_or_default();
        let overflow = || FormatError::Corrupt(format!("inode {}: data range overflows", node.ino));
        let end = d.offset.checked_add(d.size).ok_or_else(overflow)?;
        if d.size == 0 {
            add(None, Piece { file, range: 0..0 });
        }
        let mut pos = d.offset;
        while pos < end {
            let index = archive.find_span(d.layer, pos)?;
            let span = archive.span_range(d.layer, index)?;
            if span.start > pos || span.end <= pos {
                return Err(FormatError::Corrupt(format!("span {index} does not cover offset {pos}")));
            }
            let to = end.min(span.end);
            let from_in = usize::try_from(pos - span.start).map_err(|_| overflow())?;
            let to_in = usize::try_from(to - span.start).map_err(|_| overflow())?;
            add(Some((d.layer, index)), Piece { file, range: from_in..to_in });
            pos = to;
        }
    }
    Ok(jobs)
}

/// Pass 2: every regular file, its bytes streamed from the store span by span.
async fn write_files(
    opened: &Opened,
    t: &Target,
    mut files: Vec<(PathBuf, NodeView)>,
    stats: &mut ExtractStats,
    progress: Option<&ExtractProgress<'_>>,
) -> Result<(), ImageError> {
    files.sort_by_key(|(_, n)| n.data_ref().map(|d| (d.layer, d.offset)));
    let (archive, store) = (&opened.archive, &opened.store);
    let fmt = |source| ImageError::Format { path: t.display(Path::new("")), source };
    let fetched = futures::stream::iter(jobs(archive, &files).map_err(fmt)?)
        .map(|job| async move {
            let bytes = match job.span {
                Some((layer, index)) => Some(store.span(layer, index).await?),
                None => None,
            };
            Ok::<_, ImageError>((job, bytes))
        })
        .buffered(SPANS_AHEAD);
    futures::pin_mut!(fetched);
    let mut dirs = Parents::default();
    let mut open: Option<(usize, File)> = None;
    let finish = |(i, f): (usize, File), stats: &mut ExtractStats| -> Result<(), ImageError> {
        let (rel, node) = &files[i];
        t.apply(&f, node, &archive.xattrs(node).map_err(fmt)?, rel)?;
        stats.files += 1;
        if let Some(p) = progress {
            p(stats.files, stats.bytes);
        }
        Ok(())
    };
    while let Some((job, bytes)) = fetched.try_next().await? {
        for piece in job.pieces {
            let (rel, _) = &files[piece.file];
            if open.as_ref().is_none_or(|(i, _)| *i != piece.file) {
                if let Some(done) = open.take() {
                    finish(done, stats)?;
                }
                let dir = dirs.get(t, parent(rel))?;
                open = Some((piece.file, t.create_file(dir, name(rel), rel)?));
            }
            let (Some(bytes), Some((_, f))) = (&bytes, open.as_mut()) else { continue };
            let slice = bytes.get(piece.range.clone()).ok_or_else(|| {
                fmt(FormatError::Corrupt(format!("span {:?} is shorter than {:?}", job.span, piece.range)))
            })?;
            f.write_all(slice).map_err(ImageError::io(t.display(rel), "writing file"))?;
            stats.bytes += slice.len() as u64;
        }
    }
    if let Some(done) = open.take() {
        finish(done, stats)?;
    }
    Ok(())
}

/// The last directory opened, kept for the entries that follow in the same one.
#[derive(Default)]
struct Parents {
    last: Option<(PathBuf, OwnedFd)>,
}

impl Parents {
    fn get(&mut self, t: &Target, rel: &Path) -> Result<&OwnedFd, ImageError> {
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            self.last = Some((rel.to_path_buf(), t.open_dir(rel)?));
        }
        Ok(&self.last.as_ref().expect("just set").1)
    }
}

/// The directory holding `rel` (relative to the target).
fn parent(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// The last component of `rel`.
fn name(rel: &Path) -> &OsStr {
    rel.file_name().unwrap_or_default()
}

fn check_name(dir: &Path, name: &[u8]) -> Result<(), ImageError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(ImageError::UnsafeName { dir: dir.to_path_buf(), name: String::from_utf8_lossy(name).into() });
    }
    Ok(())
}
