//! Where a layer's compressed bytes come from: the image's blobs (index-only archives) or the archive's own
//! data section (data-carrying archives).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clip_format::{Archive, ArchiveKind};
use clip_source::{BlobSource, Descriptor};
use futures::future::BoxFuture;

use crate::StoreError;

/// Reads byte ranges of a layer's stored (compressed) stream.
pub trait LayerBlobs: Send + Sync {
    /// Bytes `[range.start, range.end)` of layer `layer`'s blob.
    fn read(&self, layer: u32, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>>;
    /// For logs and errors.
    fn describe(&self) -> String;
}

/// The layers of an index-only archive, read from the image's registry or OCI layout.
pub struct SourceBlobs {
    source: Arc<dyn BlobSource>,
    layers: Vec<Descriptor>,
}

impl SourceBlobs {
    /// Pairs `source` with the layer table of `archive`.
    pub fn new(archive: &Archive, source: Arc<dyn BlobSource>) -> Result<SourceBlobs, StoreError> {
        let layers = archive
            .meta()
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let digest = l.digest.parse().map_err(|e: clip_source::SourceError| StoreError::Layer {
                    layer: i as u32,
                    media_type: l.media_type.clone(),
                    why: e.to_string(),
                })?;
                Ok(Descriptor::new(l.media_type.clone(), digest, l.size))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(SourceBlobs { source, layers })
    }

    /// The underlying source (for its traffic counters).
    pub fn source(&self) -> &Arc<dyn BlobSource> {
        &self.source
    }
}

impl LayerBlobs for SourceBlobs {
    fn read(&self, layer: u32, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let layers = self.layers.len();
            let desc = self.layers.get(layer as usize).ok_or(StoreError::NoLayer { layer, layers })?;
            self.source.read_range(desc, range).await.map_err(|source| StoreError::Source { layer, source })
        })
    }

    fn describe(&self) -> String {
        self.source.describe()
    }
}

/// The data section of a local data-carrying archive.
pub struct LocalData {
    file: File,
    path: PathBuf,
    data_offset: u64,
    data_len: u64,
}

impl LocalData {
    /// Opens the data section of the archive at `path`.
    pub fn open(path: PathBuf, archive: &Archive) -> Result<LocalData, StoreError> {
        if archive.kind() != ArchiveKind::DataCarrying {
            return Err(StoreError::NotDataCarrying { path });
        }
        let sec =
            archive.section(clip_format::layout::SEC_DATA).ok_or(clip_format::FormatError::MissingSection("DATA"))?;
        let file = clip_format::open_regular(&path)
            .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        Ok(LocalData { file, path, data_offset: sec.offset, data_len: sec.stored_len })
    }
}

impl LayerBlobs for LocalData {
    fn read(&self, layer: u32, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let io = |source| StoreError::Io { path: self.path.display().to_string(), source };
            if range.end > self.data_len || range.start > range.end {
                return Err(StoreError::OutOfRange { layer, range, len: self.data_len });
            }
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            self.file.read_exact_at(&mut buf, self.data_offset + range.start).map_err(io)?;
            Ok(Bytes::from(buf))
        })
    }

    fn describe(&self) -> String {
        format!("archive {}", self.path.display())
    }
}
