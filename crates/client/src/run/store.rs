//! The local index store: `STATE_DIR/indexes/<algorithm>-<hex>.clip`, keyed by the image's resolved
//! manifest digest. An image whose index is there is not indexed again; else it is built now and written
//! atomically (concurrent builders of one image each rename a complete file into place).

use std::io::Write;
use std::path::{Path, PathBuf};

use clip_format::Archive;
use clip_indexer::{index_image, IndexOptions};
use clip_source::{ImageRef, ResolvedImage, SourceOptions};
use tracing::{info, warn};

use crate::run::RunError;

/// Where the index of a pulled image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Found in the local index store.
    Local,
    /// Built from the image just now.
    Built,
}

impl std::fmt::Display for IndexOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexOrigin::Local => "local",
            IndexOrigin::Built => "built",
        })
    }
}

/// An image resolved to its manifest, with its index in the store.
#[derive(Debug, Clone)]
pub struct StoredIndex {
    /// `sha256:…` of the image manifest.
    pub manifest_digest: String,
    /// `sha256-…`: the digest as a file name; names the index, the mount and v1 archive.
    pub key: String,
    pub path: PathBuf,
    pub origin: IndexOrigin,
}

/// Resolves `image` and returns its index from the store under `state_dir`, building it when missing (or
/// unreadable).
pub async fn find_or_build(state_dir: &Path, image: &str, opts: &SourceOptions) -> Result<StoredIndex, RunError> {
    let resolve = |source| RunError::Resolve { image: image.to_owned(), source: Box::new(source) };
    let reference: ImageRef = image.parse().map_err(resolve)?;
    let (resolved, source) = clip_source::open(&reference, opts).await.map_err(resolve)?;
    let key = format!("{}-{}", resolved.manifest_digest.algorithm(), resolved.manifest_digest.hex());
    let dir = state_dir.join("indexes");
    let path = dir.join(format!("{key}.clip"));
    let manifest_digest = resolved.manifest_digest.to_string();
    if path.exists() {
        match Archive::open(&path) {
            Ok(_) => {
                info!(%image, digest = %manifest_digest, index = %path.display(), "cache hit: index in the local store");
                return Ok(StoredIndex { manifest_digest, key, path, origin: IndexOrigin::Local });
            }
            Err(error) => warn!(index = %path.display(), %error, "unreadable index in the store; building it again"),
        }
    }
    info!(%image, digest = %manifest_digest, "cache miss: building the index");
    build(&resolved, source, &dir, &path, image).await?;
    Ok(StoredIndex { manifest_digest, key, path, origin: IndexOrigin::Built })
}

async fn build(
    resolved: &ResolvedImage,
    source: std::sync::Arc<dyn clip_source::BlobSource>,
    dir: &Path,
    path: &Path,
    image: &str,
) -> Result<(), RunError> {
    let contents = index_image(resolved, source, &IndexOptions::default())
        .await
        .map_err(|e| RunError::Index { image: image.to_owned(), source: Box::new(e) })?;
    std::fs::create_dir_all(dir).map_err(RunError::io(dir, "creating the index store"))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(RunError::io(dir, "creating a file"))?;
    let format = |source| crate::ClientError::Format { path: path.to_path_buf(), source };
    clip_format::write_index(&contents, std::io::BufWriter::new(tmp.as_file_mut())).map_err(format)?;
    tmp.as_file_mut().flush().map_err(RunError::io(path, "writing the index"))?;
    tmp.as_file().sync_all().map_err(RunError::io(path, "syncing the index"))?;
    tmp.persist(path).map_err(|e| RunError::io(path, "renaming the index into place")(e.error))?;
    Ok(())
}
