//! Packing a root filesystem directory into a data-carrying (v1) archive: [`pack`] walks the tree by
//! directory file descriptors, never following or re-resolving a symlink (see `walk`), in name-byte order
//! (the same tree always gives the same bytes), and keeps every attribute `extract` and `mount` restore:
//! owner, full mode, xattrs, device numbers, FIFOs and sockets (never opened), hard links as one inode,
//! symlink targets, mtimes with nanoseconds.
//!
//! File bytes stream into a scratch file as they are read (see [`DataCompression`] for how spans are
//! stored); only metadata stays in memory. [`Packed::write_archive`] then writes the `.clip` file with that
//! data as its `DATA` section, and [`Packed::write_metadata_copy`] a copy without data that names where the
//! full archive lives (e.g. `s3://bucket/key`), for mounting with data fetched from there.

mod data;
mod publish;
mod walk;

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use clip_format::{ArchiveKind, Compression, DataSource, ImageMeta, IndexContents, LayerMeta, SpanId, Windows};
use tracing::debug;

pub use data::DataCompression;
pub use publish::{archive, push, ArchiveOptions, ArchiveProgress, ArchiveReport};

use crate::ImageError;
use data::DataWriter;
use walk::Walker;

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
    pub fn contents_mut(&mut self) -> &mut IndexContents {
        &mut self.contents
    }

    /// Writes the whole archive (metadata and data) to `out`, atomically (see [`crate::write_atomically`]).
    /// Returns its size.
    pub fn write_archive(&mut self, out: &Path) -> Result<u64, ImageError> {
        let len = self.summary.stored_bytes;
        self.data.rewind().map_err(ImageError::io(out, "rewinding the staged data"))?;
        let (contents, data) = (&self.contents, &mut self.data);
        crate::write_atomically(out, |f| {
            buffered(out, f, |w| clip_format::write_archive(contents, Some(DataSource { reader: data, len }), w))
        })
    }

    /// Writes a copy without the data section whose metadata says the data is in the archive at
    /// `data_location` (`s3://BUCKET/KEY` or a path), atomically. Returns its size.
    pub fn write_metadata_copy(&self, out: &Path, data_location: &str) -> Result<u64, ImageError> {
        let mut contents = self.contents.clone();
        contents.meta.data_location = Some(data_location.to_owned());
        crate::write_atomically(out, |f| buffered(out, f, |w| clip_format::write_index(&contents, w)))
    }
}

/// Runs a `clip_format` writer on `f` through a large buffer.
fn buffered(
    out: &Path,
    f: &mut File,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> Result<u64, clip_format::FormatError>,
) -> Result<u64, ImageError> {
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let size = write(&mut w).map_err(|source| ImageError::Format { path: out.to_path_buf(), source })?;
    w.flush().map_err(ImageError::io(out, "writing"))?;
    Ok(size)
}

/// Walks `root` and packs it (see the module docs). Blocking: run it on a blocking thread.
pub fn pack(root: &Path, config: &PackConfig, progress: Option<&PackProgress<'_>>) -> Result<Packed, ImageError> {
    let (root_fd, root_stat) = walk::open_root(root)?;
    let scratch = tempfile::tempfile_in(&config.scratch_dir)
        .map_err(ImageError::io(&config.scratch_dir, "creating the scratch file for file data"))?;
    let reader = scratch.try_clone().map_err(ImageError::io(&config.scratch_dir, "opening the scratch file"))?;
    let mut walker = Walker::new(DataWriter::new(scratch, config.span_size, config.compression), progress);
    walker.walk(root, root_fd, root_stat)?;
    let Walker { nodes, data, mut summary, .. } = walker;
    let written = data.finish().map_err(ImageError::io(&config.scratch_dir, "writing file data"))?;
    summary.inodes = nodes.len() as u64;
    summary.stored_bytes = written.stored;
    summary.spans = written.spans.len() as u64;
    let layer = LayerMeta {
        media_type: DATA_MEDIA_TYPE.into(),
        digest: written.digest,
        size: written.stored,
        diff_id: None,
        uncompressed_size: summary.data_bytes,
        compression: match config.compression {
            DataCompression::None => Compression::None,
            DataCompression::Zstd { .. } => Compression::Zstd,
        },
        first_span: SpanId(0),
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
            chunks: None,
            tree: None,
        },
        data: reader,
        summary,
    })
}

fn too_many(root: &Path, what: &'static str) -> ImageError {
    ImageError::io(root, "packing")(std::io::Error::other(format!("too many {what} for one archive")))
}
