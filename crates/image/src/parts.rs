//! Where layer parts are kept ([`clip_indexer::PartStore`]): a local directory ([`DirParts`], by default
//! `STATE_DIR/parts`, one `<key>.part` file a part) and optionally an S3 prefix shared by a fleet
//! ([`S3Parts`], `s3://BUCKET/PREFIX/parts/<key>.part`). [`Parts`] asks the directory first, then the parts
//! published with the image's index ([`crate::PublishedParts`]), then S3 (keeping what it found in the
//! directory), and keeps every part the indexer builds in the directory and S3.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clip_format::LayerPart;
use clip_indexer::{PartStore, PartStoreError};
use clip_s3::S3Object;
use futures::future::BoxFuture;
use tracing::debug;

/// The largest part read from S3: a layer of some million files (its entries) and tens of GB (its windows).
pub const MAX_PART_BYTES: u64 = 1 << 30;

/// The file name extension of a kept part.
const PART_EXT: &str = "part";

fn failed(store: String, what: String, source: impl std::error::Error + Send + Sync + 'static) -> PartStoreError {
    PartStoreError { store, what, source: Box::new(source) }
}

/// Parts in a local directory, written atomically.
#[derive(Debug, Clone)]
pub struct DirParts {
    dir: PathBuf,
}

impl DirParts {
    /// Parts in `dir` (created, private to the user, on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> DirParts {
        DirParts { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the part `key` is kept.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{PART_EXT}"))
    }

    /// The keys of the parts kept here (none when the directory does not exist).
    pub fn keys(&self) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            if let Some(key) = name.to_str().and_then(|n| n.strip_suffix(&format!(".{PART_EXT}"))) {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn read(&self, key: &str) -> Result<Option<LayerPart>, PartStoreError> {
        let path = self.path(key);
        match LayerPart::read(&path) {
            Ok(part) => Ok(Some(part)),
            Err(clip_format::FormatError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(failed(self.describe(), format!("reading {}", path.display()), e)),
        }
    }

    fn write(&self, part: &LayerPart) -> Result<(), PartStoreError> {
        let path = self.path(&part.key());
        let fail = |e: crate::ImageError| failed(self.describe(), format!("writing {}", path.display()), e);
        clip_store::private_dir(&self.dir)
            .map_err(|e| fail(crate::ImageError::io(&self.dir, "creating the part directory")(e)))?;
        crate::write_atomically(&path, |f| {
            let mut w = std::io::BufWriter::new(f);
            part.write(&mut w).map_err(crate::ImageError::format(&path))?;
            w.flush().map_err(crate::ImageError::io(&path, "writing the part"))
        })
        .map_err(fail)?;
        debug!(path = %path.display(), "layer part kept");
        Ok(())
    }
}

impl PartStore for DirParts {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<LayerPart>, PartStoreError>> {
        // Reading and checking a part (tens of MB for a big layer) is blocking work: off the async workers.
        let (store, key) = (self.clone(), key.to_owned());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.read(&key)).await.unwrap_or_else(|e| {
                Err(failed(self.describe(), "reading a part".into(), std::io::Error::other(e.to_string())))
            })
        })
    }

    fn put<'a>(&'a self, part: &'a LayerPart) -> BoxFuture<'a, Result<(), PartStoreError>> {
        Box::pin(async move { self.write(part) })
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// Parts under a prefix of an S3 bucket: `PREFIX/parts/<key>.part`.
pub struct S3Parts {
    /// Any object of the bucket: parts are its siblings under `prefix`.
    bucket: S3Object,
    prefix: String,
}

impl S3Parts {
    /// Parts under `prefix` (e.g. the S3 index store's prefix) of `bucket`'s bucket.
    pub fn new(bucket: S3Object, prefix: &str) -> S3Parts {
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { "parts".to_owned() } else { format!("{prefix}/parts") };
        S3Parts { bucket, prefix }
    }

    fn object(&self, key: &str) -> Result<S3Object, PartStoreError> {
        let name = format!("{}/{key}.{PART_EXT}", self.prefix);
        self.bucket.in_bucket(&name).map_err(|e| failed(self.describe(), format!("naming {name}"), e))
    }
}

impl PartStore for S3Parts {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<LayerPart>, PartStoreError>> {
        Box::pin(async move {
            let object = self.object(key)?;
            let what = || format!("reading {}", object.url());
            let Some(bytes) = object.get(MAX_PART_BYTES).await.map_err(|e| failed(self.describe(), what(), e))? else {
                return Ok(None);
            };
            LayerPart::from_bytes(&bytes).map(Some).map_err(|e| failed(self.describe(), what(), e))
        })
    }

    fn put<'a>(&'a self, part: &'a LayerPart) -> BoxFuture<'a, Result<(), PartStoreError>> {
        Box::pin(async move {
            let object = self.object(&part.key())?;
            let mut bytes = Vec::new();
            part.write(&mut bytes).map_err(|e| failed(self.describe(), format!("encoding {}", part.key()), e))?;
            object
                .put(Bytes::from(bytes))
                .await
                .map_err(|e| failed(self.describe(), format!("writing {}", object.url()), e))
        })
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket.url().bucket, self.prefix)
    }
}

/// The local directory, then the parts published with the image's index when known, then S3 when
/// configured.
pub struct Parts {
    pub local: DirParts,
    pub remote: Option<S3Parts>,
    /// Read-only: asked after `local`, before `remote`.
    pub published: Option<crate::PublishedParts>,
}

impl PartStore for Parts {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<LayerPart>, PartStoreError>> {
        Box::pin(async move {
            if let Some(part) = self.local.get(key).await? {
                return Ok(Some(part));
            }
            let published = match &self.published {
                Some(published) => published.get(key).await?,
                None => None,
            };
            let part = match (published, &self.remote) {
                (Some(part), _) => part,
                (None, Some(remote)) => match remote.get(key).await? {
                    Some(part) => part,
                    None => return Ok(None),
                },
                (None, None) => return Ok(None),
            };
            if let Err(e) = self.local.put(&part).await {
                tracing::warn!("{}", clip_source::error_chain(&e));
            }
            Ok(Some(part))
        })
    }

    fn put<'a>(&'a self, part: &'a LayerPart) -> BoxFuture<'a, Result<(), PartStoreError>> {
        Box::pin(async move {
            self.local.put(part).await?;
            match &self.remote {
                Some(remote) => remote.put(part).await,
                None => Ok(()),
            }
        })
    }

    fn describe(&self) -> String {
        let published = self.published.as_ref().map(|p| p.describe());
        let remote = self.remote.as_ref().map(|r| r.describe());
        std::iter::once(self.local.describe()).chain(published).chain(remote).collect::<Vec<_>>().join(", ")
    }
}
