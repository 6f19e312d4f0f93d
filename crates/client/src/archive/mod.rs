//! Packing a root filesystem directory into a data-carrying (v1) archive: [`pack`] walks the tree without
//! following symlinks, in name-byte order (the same tree always gives the same bytes), and keeps every
//! attribute `extract` and `mount` restore: owner, full mode, xattrs, device numbers, FIFOs and sockets
//! (never opened), hard links as one inode, symlink targets, mtimes with nanoseconds.
//!
//! File bytes stream into a scratch file as they are read (see [`DataCompression`] for how spans are
//! stored); only metadata stays in memory. [`Packed::write_archive`] then writes the `.clip` file with that
//! data as its `DATA` section, and [`Packed::write_metadata_copy`] a copy without data that names where the
//! full archive lives (e.g. `s3://bucket/key`), for mounting with data fetched from there.

mod data;
mod publish;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clip_format::{
    ArchiveKind, Compression, Content, DataRef, DataSource, ImageMeta, IndexContents, Ino, LayerMeta, NodeSpec,
    Timestamp, Windows, Xattr,
};
use tracing::{debug, warn};

pub use data::DataCompression;
pub use publish::{archive, push, ArchiveOptions, ArchiveProgress, ArchiveReport};

use crate::ClientError;
use data::DataWriter;

/// The media type recorded for the data section's layer.
pub const DATA_MEDIA_TYPE: &str = "application/vnd.clip.archive.data.v1";
/// Default span size of data-carrying (v1) archives: 4 MiB of uncompressed data (an index-only archive
/// uses `clip_indexer::DEFAULT_SPAN_SIZE`).
pub const PACK_SPAN_SIZE: u64 = 4 << 20;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackConfig {
    /// Uncompressed bytes per span (each with its own digest; the unit of fetching and caching).
    pub span_size: u64,
    pub compression: DataCompression,
    /// Where the data stream is staged while the tree is walked (the output's directory is a good choice:
    /// the data is copied from there into the archive).
    pub scratch_dir: PathBuf,
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig { span_size: PACK_SPAN_SIZE, compression: DataCompression::None, scratch_dir: std::env::temp_dir() }
    }
}

/// Progress callback: `(files read, bytes read)`.
pub type PackProgress<'a> = dyn Fn(u64, u64) + Send + Sync + 'a;

/// What [`pack`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackSummary {
    /// Inodes, the root included.
    pub inodes: u64,
    /// Directory entries (names), hard links included.
    pub entries: u64,
    /// Regular files whose bytes were read (each hard-linked file once).
    pub files: u64,
    /// Uncompressed file bytes.
    pub data_bytes: u64,
    /// Bytes of the data section (compressed when asked).
    pub stored_bytes: u64,
    pub spans: u64,
}

/// A packed tree: its metadata in memory and its data in a scratch file, ready to be written out.
pub struct Packed {
    contents: IndexContents,
    data: File,
    summary: PackSummary,
}

impl Packed {
    /// What was packed.
    pub fn summary(&self) -> PackSummary {
        self.summary
    }

    /// The archive's metadata.
    pub fn contents(&self) -> &IndexContents {
        &self.contents
    }

    /// The archive's metadata, to set what a directory cannot tell (the image's source and runtime config).
    pub(crate) fn contents_mut(&mut self) -> &mut IndexContents {
        &mut self.contents
    }

    /// Writes the whole archive (metadata and data) to `out`, atomically (a temporary file in the same
    /// directory, renamed into place). Returns its size.
    pub fn write_archive(&mut self, out: &Path) -> Result<u64, ClientError> {
        let len = self.summary.stored_bytes;
        self.data.rewind().map_err(ClientError::io(out, "rewinding the staged data"))?;
        let data = &mut self.data;
        write_atomically(out, |w| clip_format::write_archive(&self.contents, Some(DataSource { reader: data, len }), w))
    }

    /// Writes a copy without the data section whose metadata says the data is in the archive at
    /// `data_location` (`s3://BUCKET/KEY` or a path), atomically. Returns its size.
    pub fn write_metadata_copy(&self, out: &Path, data_location: &str) -> Result<u64, ClientError> {
        let mut contents = self.contents.clone();
        contents.meta.data_location = Some(data_location.to_owned());
        write_atomically(out, |w| clip_format::write_index(&contents, w))
    }
}

fn write_atomically(
    out: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> Result<u64, clip_format::FormatError>,
) -> Result<u64, ClientError> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".clip-")
        // Readable by all (less the umask), like any file the user writes: mounts often run as another user.
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(ClientError::io(dir, "creating a temporary file"))?;
    let size = {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let size = write(&mut w).map_err(|source| ClientError::Format { path: out.to_path_buf(), source })?;
        w.flush().map_err(ClientError::io(out, "writing"))?;
        size
    };
    tmp.as_file().sync_all().map_err(ClientError::io(out, "syncing"))?;
    tmp.persist(out).map_err(|e| ClientError::io(out, "renaming into place")(e.error))?;
    Ok(size)
}

/// Walks `root` and packs it (see the module docs). Blocking: run it on a blocking thread.
pub fn pack(root: &Path, config: &PackConfig, progress: Option<&PackProgress<'_>>) -> Result<Packed, ClientError> {
    let root_meta = std::fs::symlink_metadata(root).map_err(ClientError::io(root, "reading the root directory"))?;
    if !root_meta.is_dir() {
        return Err(ClientError::io(root, "packing")(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory (clip archive packs a root filesystem directory)",
        )));
    }
    let scratch = tempfile::tempfile_in(&config.scratch_dir)
        .map_err(ClientError::io(&config.scratch_dir, "creating the scratch file for file data"))?;
    let reader = scratch.try_clone().map_err(ClientError::io(&config.scratch_dir, "opening the scratch file"))?;
    let mut walker = Walker {
        nodes: vec![node_spec(root, &root_meta, Content::Dir(Vec::new()))?],
        links: HashMap::new(),
        data: DataWriter::new(scratch, config.span_size, config.compression),
        summary: PackSummary::default(),
        buf: vec![0u8; 256 << 10],
        progress,
    };
    // Depth first, entries in name order: a directory's files are contiguous in the data stream.
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, index)) = stack.pop() {
        let subdirs = walker.directory(&dir, index)?;
        stack.extend(subdirs.into_iter().rev());
    }
    let Walker { nodes, data, mut summary, .. } = walker;
    let written = data.finish().map_err(ClientError::io(&config.scratch_dir, "writing file data"))?;
    summary.inodes = nodes.len() as u64;
    summary.stored_bytes = written.stored;
    summary.spans = written.spans.len() as u64;
    let layer = LayerMeta {
        media_type: DATA_MEDIA_TYPE.into(),
        digest: format!("sha256:{}", hex(&written.digest)),
        size: written.stored,
        diff_id: String::new(),
        uncompressed_size: summary.data_bytes,
        compression: match config.compression {
            DataCompression::None => Compression::None,
            DataCompression::Zstd { .. } => Compression::Zstd,
        },
        first_span: 0,
        span_count: u32::try_from(written.spans.len()).map_err(|_| too_many(root, "spans"))?,
    };
    let meta = ImageMeta {
        source: root.display().to_string(),
        span_size: config.span_size,
        layers: vec![layer],
        ..ImageMeta::default()
    };
    debug!(root = %root.display(), ?summary, "packed");
    Ok(Packed {
        contents: IndexContents {
            kind: ArchiveKind::DataCarrying,
            meta,
            nodes,
            spans: written.spans,
            windows: Windows::new(),
        },
        data: reader,
        summary,
    })
}

fn too_many(root: &Path, what: &'static str) -> ClientError {
    ClientError::io(root, "packing")(std::io::Error::other(format!("too many {what} for one archive")))
}

struct Walker<'p> {
    nodes: Vec<NodeSpec>,
    /// Non-directories with more than one link, by (device, inode): later names share the first's inode.
    links: HashMap<(u64, u64), Ino>,
    data: DataWriter,
    summary: PackSummary,
    buf: Vec<u8>,
    progress: Option<&'p PackProgress<'p>>,
}

impl Walker<'_> {
    /// Records the entries of directory `dir` (node `index`); returns its subdirectories to walk.
    fn directory(&mut self, dir: &Path, index: usize) -> Result<Vec<(PathBuf, usize)>, ClientError> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .map_err(ClientError::io(dir, "listing directory"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ClientError::io(dir, "listing directory"))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut children = Vec::with_capacity(names.len());
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(ClientError::io(&path, "reading attributes"))?;
            self.summary.entries += 1;
            let key = (meta.dev(), meta.ino());
            if !meta.is_dir() && meta.nlink() > 1 {
                if let Some(&ino) = self.links.get(&key) {
                    children.push((name.as_bytes().to_vec(), ino));
                    continue;
                }
            }
            let ft = meta.file_type();
            let content = if ft.is_dir() {
                Content::Dir(Vec::new())
            } else if ft.is_file() {
                Content::File(self.file(&path, &meta)?)
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(ClientError::io(&path, "reading symlink"))?;
                Content::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() || ft.is_block_device() {
                let rdev = meta.rdev();
                let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                Content::Device { major: major as u32, minor: minor as u32 }
            } else {
                Content::Special // FIFO or socket: attributes only, never opened
            };
            let is_dir = matches!(content, Content::Dir(_));
            self.nodes.push(node_spec(&path, &meta, content)?);
            if self.nodes.len() >= u32::MAX as usize - 1 {
                return Err(too_many(dir, "inodes"));
            }
            let child = self.nodes.len() - 1;
            let ino = Ino::from_index(child);
            if is_dir {
                subdirs.push((path, child));
            } else if meta.nlink() > 1 {
                self.links.insert(key, ino);
            }
            children.push((name.as_bytes().to_vec(), ino));
        }
        self.nodes[index].content = Content::Dir(children);
        Ok(subdirs)
    }

    /// Streams a regular file's bytes into the data section.
    fn file(&mut self, path: &Path, meta: &std::fs::Metadata) -> Result<DataRef, ClientError> {
        // O_NOFOLLOW | O_NONBLOCK: if the entry was swapped for a symlink or a FIFO since lstat, fail or
        // notice below instead of following it or blocking.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(ClientError::io(path, "opening file"))?;
        let now = f.metadata().map_err(ClientError::io(path, "reading attributes"))?;
        if !now.is_file() || now.ino() != meta.ino() {
            return Err(ClientError::io(path, "reading file")(std::io::Error::other(
                "the entry changed while packing (is the root filesystem in use?)",
            )));
        }
        let offset = self.data.position();
        let mut size = 0u64;
        let mut limited = (&mut f).take(meta.len());
        loop {
            let n = match limited.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::io(path, "reading file")(e)),
            };
            self.data.write(&self.buf[..n]).map_err(ClientError::io(path, "writing file data"))?;
            size += n as u64;
            self.summary.data_bytes += n as u64;
            if let Some(p) = self.progress {
                p(self.summary.files, self.summary.data_bytes);
            }
        }
        if size != meta.len() {
            warn!(path = %path.display(), expected = meta.len(), read = size, "file shrank while packing");
        }
        self.summary.files += 1;
        Ok(DataRef { layer: 0, offset, size })
    }
}

fn node_spec(path: &Path, meta: &std::fs::Metadata, content: Content) -> Result<NodeSpec, ClientError> {
    let nsec = u32::try_from(meta.mtime_nsec()).ok().filter(|n| *n < 1_000_000_000).unwrap_or(0);
    Ok(NodeSpec {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: Timestamp { sec: meta.mtime(), nsec },
        xattrs: xattrs(path)?,
        content,
    })
}

/// Extended attributes of `path` itself (not of a symlink's target).
fn xattrs(path: &Path) -> Result<Vec<Xattr>, ClientError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::io(path, "listing xattrs")(e)),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr { name: name.as_bytes().to_vec(), value }),
            Ok(None) => {} // removed meanwhile
            Err(e) => return Err(ClientError::io(path, "reading xattr")(e)),
        }
    }
    out.sort();
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
