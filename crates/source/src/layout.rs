//! [`LayoutSource`]: an OCI image layout directory (`index.json`, `blobs/sha256/<hex>`), as
//! written by skopeo, umoci or buildkit.
//!
//! Blob paths are built only from validated digests, so no descriptor can name a file outside
//! the layout. Layer blobs are not verified here (the indexer hashes what it reads); the small
//! manifests and the config are, because resolution vouches for `manifest_digest`.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use oci_spec::image::ImageIndex;
use tokio_util::io::ReaderStream;

use crate::digest::{Descriptor, Digest};
use crate::error::SourceError;
use crate::reference::ImageRef;
use crate::resolve::{verify, ManifestFetch, ResolvedImage, Resolver, MAX_MANIFEST_BYTES};
use crate::source::{BlobSource, BlobStream, CheckedStream, Counter, SourceStats};
use crate::Platform;

/// The annotation OCI layouts use to tag manifests in index.json.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Read size of blob streams.
const CHUNK: usize = 256 * 1024;

/// Blobs of a local OCI image layout.
#[derive(Debug)]
pub struct LayoutSource {
    dir: PathBuf,
    counter: Counter,
}

impl LayoutSource {
    /// A source over the layout in `dir`. Nothing is read until used.
    pub fn new(dir: impl Into<PathBuf>) -> LayoutSource {
        LayoutSource { dir: dir.into(), counter: Counter::default() }
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a blob: `DIR/blobs/sha256/<hex>`. Safe because [`Digest`] is validated hex.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    fn not_found_or_io(&self, digest: &Digest, path: PathBuf, e: std::io::Error) -> SourceError {
        if e.kind() == std::io::ErrorKind::NotFound {
            SourceError::BlobNotFound { digest: digest.to_string(), location: self.describe() }
        } else {
            SourceError::io(path, e)
        }
    }

    /// Resolves `tag` (see [`ImageRef::Layout`]) to one image for `platform`.
    pub async fn resolve(&self, reference: &ImageRef, platform: &Platform) -> Result<ResolvedImage, SourceError> {
        let tag = match reference {
            ImageRef::Layout { tag, .. } => tag.as_deref(),
            ImageRef::Registry { .. } => {
                return Err(SourceError::InvalidReference {
                    input: reference.to_string(),
                    reason: format!("it is not an image of {}", self.describe()),
                })
            }
        };
        let index_path = self.dir.join("index.json");
        let index_bytes = read_limited(&index_path, "index.json", MAX_MANIFEST_BYTES).await?;
        let index: ImageIndex = serde_json::from_slice(&index_bytes).map_err(|e| SourceError::InvalidManifest {
            what: "index.json",
            digest: index_path.display().to_string(),
            reference: reference.to_string(),
            reason: e.to_string(),
        })?;
        let entries = index.manifests();
        let tag_of = |e: &oci_spec::image::Descriptor| e.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        let mut tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
        tags.sort();
        tags.dedup();
        let available = if tags.is_empty() { "none".to_owned() } else { tags.join(", ") };
        let tagged = |t: &str| -> Vec<oci_spec::image::Descriptor> {
            entries.iter().filter(|e| tag_of(e).as_deref() == Some(t)).cloned().collect()
        };
        let candidates = match tag {
            Some(t) => {
                let found = tagged(t);
                if found.is_empty() {
                    return Err(SourceError::LayoutTagNotFound { dir: self.dir.clone(), tag: t.to_owned(), available });
                }
                found
            }
            None => {
                let latest = tagged("latest");
                if !latest.is_empty() {
                    latest
                } else if entries.len() == 1 {
                    entries.clone()
                } else {
                    return Err(SourceError::LayoutAmbiguous {
                        dir: self.dir.clone(),
                        count: entries.len(),
                        available,
                    });
                }
            }
        };
        let resolver = Resolver { fetch: self, blobs: self, reference, platform };
        resolver.resolve_entries(candidates, 0).await
    }
}

/// A layout entry that is a directory, FIFO or device: never opened (a FIFO would block the open).
fn not_a_file() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")
}

/// Reads a small file whole, refusing files over `limit` bytes.
async fn read_limited(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, SourceError> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| SourceError::io(path, e))?;
    if !meta.is_file() {
        return Err(SourceError::io(path, not_a_file()));
    }
    if meta.len() > limit {
        return Err(SourceError::TooLarge { what, digest: path.display().to_string(), size: meta.len(), limit });
    }
    tokio::fs::read(path).await.map_err(|e| SourceError::io(path, e))
}

impl ManifestFetch for LayoutSource {
    fn fetch_manifest<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>, SourceError>> {
        async move {
            let path = self.blob_path(digest);
            let bytes = read_limited(&path, "manifest", MAX_MANIFEST_BYTES).await.map_err(|e| match e {
                SourceError::Io { source, path } => self.not_found_or_io(digest, path, source),
                other => other,
            })?;
            verify("manifest", &self.describe(), digest, &bytes)?;
            Ok(bytes)
        }
        .boxed()
    }
}

impl BlobSource for LayoutSource {
    fn open_blob<'a>(&'a self, desc: &'a Descriptor) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        async move {
            let path = self.blob_path(&desc.digest);
            let meta =
                tokio::fs::metadata(&path).await.map_err(|e| self.not_found_or_io(&desc.digest, path.clone(), e))?;
            if !meta.is_file() {
                return Err(SourceError::io(path, not_a_file()));
            }
            let file =
                tokio::fs::File::open(&path).await.map_err(|e| self.not_found_or_io(&desc.digest, path.clone(), e))?;
            self.counter.request();
            let raw =
                ReaderStream::with_capacity(file, CHUNK).map(move |r| r.map_err(|e| SourceError::io(path.clone(), e)));
            let checked = CheckedStream::new(Box::pin(raw), self.counter.clone(), desc, self.describe());
            Ok(Box::pin(checked) as BlobStream)
        }
        .boxed()
    }

    fn read_checked_range<'a>(
        &'a self,
        desc: &'a Descriptor,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move {
            let path = self.blob_path(&desc.digest);
            self.counter.request();
            let len = usize::try_from(range.end - range.start).map_err(|_| SourceError::InvalidRange {
                digest: desc.digest.to_string(),
                start: range.start,
                end: range.end,
                size: desc.size,
            })?;
            let file_path = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                if !std::fs::metadata(&file_path)?.is_file() {
                    return Err(not_a_file());
                }
                let file = std::fs::File::open(&file_path)?;
                // The range is checked against the size the descriptor claims; allocate only what the file
                // really holds.
                if range.end > file.metadata()?.len() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, range.start).map(|()| buf)
            })
            .await
            .map_err(|e| SourceError::io(&path, std::io::Error::other(e)))?;
            match read {
                Ok(buf) => {
                    self.counter.add_bytes(buf.len());
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found_or_io(&desc.digest, path, e)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(SourceError::Transfer {
                    digest: desc.digest.to_string(),
                    location: self.describe(),
                    detail: format!("blob file is shorter than the {} bytes the manifest declares", desc.size),
                }),
                Err(e) => Err(SourceError::io(path, e)),
            }
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("OCI layout {}", self.dir.display())
    }

    fn stats(&self) -> SourceStats {
        self.counter.stats()
    }
}
