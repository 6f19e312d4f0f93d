//! Opening a `.clip` file together with the content store that serves its file bytes, whatever its kind:
//! an index-only archive reads from the image it was built from (pinned to the indexed manifest digest), a
//! data-carrying archive from its own data section.

use std::path::Path;
use std::sync::Arc;

use clip_format::{Archive, ArchiveKind};
use clip_source::{BlobSource, ImageRef, SourceOptions};
use clip_store::{ContentStore, LayerBlobs, LocalData, SourceBlobs, StoreConfig};
use tracing::info;

use crate::ClientError;

/// How to reach the data of an archive.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Options for the image source (plain HTTP, platform, docker config).
    pub source: SourceOptions,
    pub store: StoreConfig,
}

/// An open archive and the store that serves its file bytes.
pub struct Opened {
    pub archive: Arc<Archive>,
    pub store: Arc<ContentStore>,
    /// The image source, for index-only archives.
    pub source: Option<Arc<dyn BlobSource>>,
}

/// Opens `path` (either kind) and connects it to its data.
pub async fn open_archive(path: &Path, opts: &OpenOptions) -> Result<Opened, ClientError> {
    let archive =
        Arc::new(Archive::open(path).map_err(|source| ClientError::Format { path: path.to_path_buf(), source })?);
    let (blobs, source): (Arc<dyn LayerBlobs>, _) = match archive.kind() {
        ArchiveKind::DataCarrying => (Arc::new(LocalData::open(path.to_path_buf(), &archive)?), None),
        ArchiveKind::IndexOnly => {
            let source = open_image_source(path, &archive, &opts.source).await?;
            (Arc::new(SourceBlobs::new(&archive, source.clone())?), Some(source))
        }
    };
    let mut store_config = opts.store.clone();
    if archive.kind() == ArchiveKind::DataCarrying {
        // The data is already on local disk: a cache would only copy it.
        store_config.cache_dir = None;
    }
    let store = Arc::new(ContentStore::new(archive.clone(), blobs, store_config));
    Ok(Opened { archive, store, source })
}

/// Reconnects to the image an index was built from, pinned to the manifest digest it recorded.
async fn open_image_source(
    path: &Path,
    archive: &Archive,
    opts: &SourceOptions,
) -> Result<Arc<dyn BlobSource>, ClientError> {
    let meta = archive.meta();
    let bad = |source| ClientError::BadSource {
        path: path.to_path_buf(),
        image: meta.source.clone(),
        source: Box::new(source),
    };
    let mut reference: ImageRef = meta.source.parse().map_err(bad)?;
    if let (ImageRef::Registry { digest, .. }, Some(pinned)) = (&mut reference, &meta.manifest_digest) {
        *digest = Some(pinned.clone());
    }
    let mut opts = opts.clone();
    if let Some(p) = &meta.platform {
        opts.platform = clip_source::Platform::new(&p.os, &p.architecture, p.variant.as_deref());
    }
    let (resolved, source) = clip_source::open(&reference, &opts).await?;
    if let Some(indexed) = &meta.manifest_digest {
        if resolved.manifest_digest.as_str() != indexed {
            return Err(ClientError::ManifestChanged {
                path: path.to_path_buf(),
                indexed: indexed.clone(),
                found: resolved.manifest_digest.to_string(),
            });
        }
    }
    info!(image = %reference, source = %source.describe(), "connected to image");
    Ok(source)
}
