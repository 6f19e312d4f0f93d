//! Finding an image's index, keyed by its resolved manifest digest, in this order: the local index store
//! (`STATE_DIR/indexes/<algorithm>-<hex>.clip`) → an index published with the image in the registry (see
//! [`crate::fetch_published_index`]) → the S3 index store (`s3://BUCKET/PREFIX/<digest>.clip`) → built now
//! (and published when configured; built from the layer parts of `run::parts` where it has them, so only
//! layers never indexed on this node or the fleet are read). Whatever is found is written to the local store
//! atomically (concurrent pullers of one image each rename a complete file into place).

use std::io::Write;
use std::path::{Path, PathBuf};

use clip_format::Archive;
use clip_indexer::IndexOptions;
use clip_s3::{S3Error, S3Object, S3Options, S3Url};
use clip_source::{Digest, ImageRef, ResolvedImage, SourceOptions};
use tracing::{debug, info, warn};

use crate::run::NodeError;

/// Where the index of a pulled image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Found in the local index store.
    Local,
    /// Published with the image in its registry (an artifact referring to the image manifest).
    Registry,
    /// Found in the S3 index store.
    S3,
    /// Built from the image just now.
    Built,
    /// None: the image fell back to v1 (its whole image unpacked), the "index" is that archive.
    Fallback,
}

impl IndexOrigin {
    /// Every [`IndexOrigin::label`].
    pub const LABELS: [&'static str; 5] = ["local", "registry", "s3", "built", "none"];

    /// The metrics label value (`none` for a v1 fallback without an index).
    pub fn label(self) -> &'static str {
        match self {
            IndexOrigin::Local => "local",
            IndexOrigin::Registry => "registry",
            IndexOrigin::S3 => "s3",
            IndexOrigin::Built => "built",
            IndexOrigin::Fallback => "none",
        }
    }
}

impl std::fmt::Display for IndexOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexOrigin::Local => "local",
            IndexOrigin::Registry => "registry",
            IndexOrigin::S3 => "S3",
            IndexOrigin::Built => "built",
            IndexOrigin::Fallback => "none, v1 fallback",
        })
    }
}

/// An image resolved to its manifest, with its index in the store.
#[derive(Debug, Clone)]
pub struct StoredIndex {
    /// The image manifest's digest.
    pub manifest_digest: Digest,
    /// `sha256-…`: the digest as a file name; names the index, the mount and v1 archive.
    pub key: String,
    pub path: PathBuf,
    pub origin: IndexOrigin,
}

/// Where to look for indexes besides the local store, and whether to publish the ones built here.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub source: SourceOptions,
    /// `s3://BUCKET/PREFIX`: indexes are `PREFIX/<manifest digest>.clip`.
    pub s3_index_store: Option<S3Url>,
    pub s3: S3Options,
    /// Publish indexes built here to the registry and the S3 index store.
    pub publish: bool,
}

/// Resolves `image` and returns its index: from the store under `state_dir`, the registry, the S3 index
/// store, else built now.
pub async fn find_or_build(state_dir: &Path, image: &str, lookup: &Lookup) -> Result<StoredIndex, NodeError> {
    let opts = &lookup.source;
    let resolve = |source| NodeError::Resolve { image: image.to_owned(), source: Box::new(source) };
    let reference: ImageRef = image.parse().map_err(resolve)?;
    let (resolved, source) = clip_source::open(&reference, opts).await.map_err(resolve)?;
    let key = resolved.manifest_digest.dashed();
    let dir = state_dir.join("indexes");
    let path = dir.join(format!("{key}.clip"));
    let manifest_digest = resolved.manifest_digest;
    let stored = |origin| StoredIndex { manifest_digest, key: key.clone(), path: path.clone(), origin };
    if path.exists() {
        match Archive::open(&path) {
            Ok(_) => {
                info!(%image, digest = %manifest_digest, index = %path.display(), "cache hit: index in the local store");
                return Ok(stored(IndexOrigin::Local));
            }
            Err(error) => {
                warn!(index = %path.display(), error = &error as &dyn std::error::Error, "unreadable index in the store; looking further")
            }
        }
    }
    if matches!(reference, ImageRef::Registry { .. }) {
        match clip_image::fetch_published_index(image, &manifest_digest, &path, opts).await {
            Ok(Some(artifact)) => {
                info!(%image, digest = %manifest_digest, %artifact, "cache miss: index from registry");
                return Ok(stored(IndexOrigin::Registry));
            }
            Ok(None) => debug!(%image, "no index published in the registry"),
            Err(error) => {
                warn!(%image, error = &error as &dyn std::error::Error, "the index published in the registry cannot be used; looking further")
            }
        }
    }
    if let Some(store) = &lookup.s3_index_store {
        let url = s3_key(store, &manifest_digest);
        match fetch_s3(&url, &lookup.s3, &path, &manifest_digest).await {
            Ok(true) => {
                info!(%image, digest = %manifest_digest, index = %url, "cache miss: index from S3");
                return Ok(stored(IndexOrigin::S3));
            }
            Ok(false) => debug!(%image, index = %url, "no index in the S3 index store"),
            Err(error) => {
                warn!(%image, index = %url, error = &error as &dyn std::error::Error, "the S3 index store cannot be used; looking further")
            }
        }
    }
    info!(%image, digest = %manifest_digest, "cache miss: building index");
    let parts = super::parts::part_store(state_dir, lookup, None);
    build(&resolved, source, &path, image, Some(parts.clone())).await?;
    if lookup.publish {
        publish(image, &path, &manifest_digest, &*parts, lookup).await;
    }
    Ok(stored(IndexOrigin::Built))
}

/// `s3://BUCKET/PREFIX/<digest>.clip`.
pub fn s3_key(store: &S3Url, manifest_digest: &Digest) -> S3Url {
    s3_object(store, &format!("{manifest_digest}.clip"))
}

/// `s3://BUCKET/PREFIX/<digest>.profile.json`: the startup profile published next to the index.
pub fn s3_profile_key(store: &S3Url, manifest_digest: &Digest) -> S3Url {
    s3_object(store, &format!("{manifest_digest}.profile.json"))
}

fn s3_object(store: &S3Url, name: &str) -> S3Url {
    let prefix = store.key.trim_end_matches('/');
    let key = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
    S3Url { bucket: store.bucket.clone(), key }
}

/// Downloads the index at `url` into `path` when it exists and is an index of `manifest_digest`.
async fn fetch_s3(
    url: &S3Url,
    opts: &S3Options,
    path: &Path,
    manifest_digest: &Digest,
) -> Result<bool, clip_image::ImageError> {
    let object = S3Object::open(url, opts)?;
    let (bytes, size) = match object.read_prefix(u64::MAX >> 1).await {
        Ok(found) => found,
        Err(S3Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() as u64 != size {
        return Err(S3Error::Transfer { url: url.to_string(), op: "GET", detail: "short read".into() }.into());
    }
    // Checked before it is stored: a readable index of this image.
    let archive = Archive::from_bytes(bytes.to_vec())
        .map_err(|source| clip_image::ImageError::Format { path: url.to_string().into(), source })?;
    clip_image::check_indexed(&archive, manifest_digest, url.to_string())?;
    drop(archive);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(clip_image::ImageError::io(dir, "creating the index store"))?;
    clip_image::write_atomically(path, |f| {
        f.write_all(&bytes).map_err(clip_image::ImageError::io(path, "writing the index"))
    })?;
    Ok(true)
}

/// Publishes a freshly built index to the registry (with its layer parts from `parts`) and the S3 index
/// store; failures are logged, not returned (the image is ready either way).
async fn publish(
    image: &str,
    path: &Path,
    manifest_digest: &Digest,
    parts: &dyn clip_indexer::PartStore,
    lookup: &Lookup,
) {
    if image.parse::<ImageRef>().is_ok_and(|r| matches!(r, ImageRef::Registry { .. })) {
        match clip_image::publish_index(image, path, parts, &lookup.source).await {
            Ok(p) => info!(%image, artifact = %p.artifact, "index published to the registry"),
            Err(error) => {
                warn!(%image, error = &error as &dyn std::error::Error, "publishing the index to the registry failed")
            }
        }
    }
    if let Some(store) = &lookup.s3_index_store {
        let url = s3_key(store, manifest_digest);
        match clip_image::push(path, &url, &lookup.s3, None).await {
            Ok(size) => info!(%image, index = %url, size, "index published to the S3 index store"),
            Err(error) => {
                warn!(%image, index = %url, error = &error as &dyn std::error::Error, "publishing the index to S3 failed")
            }
        }
    }
}

/// Indexes `resolved` from `source` and writes the index to `path` atomically (see
/// [`clip_image::index_to_file`]), taking the parts of layers indexed before from `parts` and keeping there
/// those of the layers it reads.
pub(crate) async fn build(
    resolved: &ResolvedImage,
    source: std::sync::Arc<dyn clip_source::BlobSource>,
    path: &Path,
    image: &str,
    parts: Option<std::sync::Arc<dyn clip_indexer::PartStore>>,
) -> Result<(), NodeError> {
    let opts = IndexOptions { parts, ..IndexOptions::default() };
    clip_image::index_to_file(image, resolved, source, &opts, path).await?;
    Ok(())
}
