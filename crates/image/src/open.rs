//! Opening a `.clip` file together with the content store that serves its file bytes, whatever its kind and
//! wherever it is ([`Location`]: a local path or `s3://BUCKET/KEY`). The header decides the storage:
//! - index-only: the image it was built from (pinned to the indexed manifest digest);
//! - data-carrying with a `DATA` section: that section, read from the local file, or by ranged GETs from S3
//!   (through the disk cache);
//! - data-carrying without one (a metadata copy): the full archive its metadata names (`data_location`),
//!   after checking that both hold the same tree and spans.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use clip_format::{layout, Archive, ArchiveKind, Digest, SectionEntry};
use clip_s3::{S3Error, S3Object, S3Options, S3Url};
use clip_source::{BlobSource, ImageRef, SourceOptions};
use clip_store::{ContentStore, LayerBlobs, LocalData, SourceBlobs, StoreConfig};
use tracing::info;

use crate::remote::{load_remote, load_remote_table, S3Data};
use crate::ImageError;

/// Where a `.clip` file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Url),
}

impl FromStr for Location {
    type Err = S3Error;

    /// `s3://BUCKET/KEY`, else a local path.
    fn from_str(s: &str) -> Result<Location, S3Error> {
        if S3Url::is_s3(s) {
            Ok(Location::S3(s.parse()?))
        } else {
            Ok(Location::Local(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "{u}"),
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Local(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Local(p.clone())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Local(p)
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

impl From<S3Url> for Location {
    fn from(u: S3Url) -> Location {
        Location::S3(u)
    }
}

/// How to reach the data of an archive.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Options for the image source (plain HTTP, platform, docker config).
    pub source: SourceOptions,
    pub store: StoreConfig,
    /// Options for archives in S3 (on top of the AWS environment and files).
    pub s3: S3Options,
}

/// An open archive and the store that serves its file bytes.
pub struct Opened {
    pub archive: Arc<Archive>,
    pub store: Arc<ContentStore>,
    /// The image source, for index-only archives.
    pub source: Option<Arc<dyn BlobSource>>,
    /// The S3 object file bytes come from, for data-carrying archives whose data is in S3.
    pub data_object: Option<S3Object>,
}

/// An archive's metadata without a store: what `inspect` and `ls` need.
pub struct Loaded {
    pub archive: Arc<Archive>,
    /// Size of the file or object.
    pub size: u64,
    /// The object, when the archive is in S3.
    pub object: Option<S3Object>,
}

/// Loads the metadata of the archive at `location`: maps a local file, or fetches only the header, section
/// table and eager sections of an S3 object.
pub async fn load_archive(location: impl Into<Location>, opts: &OpenOptions) -> Result<Loaded, ImageError> {
    match location.into() {
        Location::Local(path) => {
            let archive = Archive::open(&path).map_err(ImageError::format(&path))?;
            let size = std::fs::metadata(&path).map_err(ImageError::io(&path, "reading size"))?.len();
            Ok(Loaded { archive: Arc::new(archive), size, object: None })
        }
        Location::S3(url) => {
            let object = S3Object::open(&url, &opts.s3)?;
            let (archive, size) = load_remote(&object).await?;
            Ok(Loaded { archive: Arc::new(archive), size, object: Some(object) })
        }
    }
}

/// Opens the archive at `location` (either kind, local or in S3) and connects it to its data.
pub async fn open_archive(location: impl Into<Location>, opts: &OpenOptions) -> Result<Opened, ImageError> {
    let location = location.into();
    let Loaded { archive, object, .. } = load_archive(&location, opts).await?;
    let mut store_config = opts.store.clone();
    let (blobs, source, data_object): (Arc<dyn LayerBlobs>, _, _) = match archive.kind() {
        // `Archive` refuses to open a layer part.
        ArchiveKind::LayerPart => return Err(ImageError::Archive(clip_format::FormatError::LayerPart)),
        ArchiveKind::IndexOnly => {
            let source = open_image_source(&location, &archive, &opts.source).await?;
            (Arc::new(SourceBlobs::new(&archive, source.clone())), Some(source), None)
        }
        ArchiveKind::DataCarrying => match (archive.section(layout::SEC_DATA), &location, object) {
            (Some(_), Location::Local(path), _) => {
                // The data is already on local disk: a cache would only copy it.
                store_config.cache_dir = None;
                (Arc::new(LocalData::open(path.clone(), &archive)?), None, None)
            }
            (Some(data), Location::S3(_), Some(object)) => {
                (Arc::new(S3Data::new(object.clone(), data.offset, data.stored_len)), None, Some(object))
            }
            _ => external_data(&location, &archive, opts, &mut store_config).await?,
        },
    };
    info!(archive = %location, kind = %archive.kind(), data = %blobs.describe(), "opened");
    let store = Arc::new(ContentStore::new(archive.clone(), blobs, store_config));
    Ok(Opened { archive, store, source, data_object })
}

type Data = (Arc<dyn LayerBlobs>, Option<Arc<dyn BlobSource>>, Option<S3Object>);

/// The data of a metadata copy: the `DATA` section of the archive its metadata names.
async fn external_data(
    location: &Location,
    archive: &Archive,
    opts: &OpenOptions,
    store_config: &mut StoreConfig,
) -> Result<Data, ImageError> {
    let Some(named) = archive.meta().data_location.as_deref() else {
        return Err(ImageError::NoData { location: location.to_string() });
    };
    let data_location: Location = named.parse()?;
    let mismatch = || ImageError::DataMismatch { location: location.to_string(), data: named.to_owned() };
    match data_location {
        Location::S3(url) => {
            let object = S3Object::open(&url, &opts.s3)?;
            let (kind, sections) = load_remote_table(&object).await?;
            let data = same_archive(archive, kind, &sections).ok_or_else(mismatch)?;
            Ok((Arc::new(S3Data::new(object.clone(), data.offset, data.stored_len)), None, Some(object)))
        }
        Location::Local(path) => {
            let full = Archive::open(&path).map_err(ImageError::format(&path))?;
            same_archive(archive, full.kind(), full.sections()).ok_or_else(mismatch)?;
            store_config.cache_dir = None;
            Ok((Arc::new(LocalData::open(path, &full)?), None, None))
        }
    }
}

/// The `DATA` entry of `sections` when they describe the same tree and spans as `archive` (equal node,
/// entry, string, xattr and span sections; the metadata may differ in its data location).
fn same_archive(archive: &Archive, kind: ArchiveKind, sections: &[SectionEntry]) -> Option<SectionEntry> {
    if kind != archive.kind() {
        return None;
    }
    let find = |secs: &[SectionEntry], id| secs.iter().find(|s| s.id == id).map(|s| (s.stored_len, s.raw_len, s.crc));
    let same = [layout::SEC_NODE, layout::SEC_DENT, layout::SEC_STRS, layout::SEC_XATR, layout::SEC_SPAN]
        .into_iter()
        .all(|id| find(sections, id).is_some() && find(sections, id) == find(archive.sections(), id));
    let data = sections.iter().find(|s| s.id == layout::SEC_DATA)?;
    same.then_some(*data)
}

/// Reconnects to the image an index was built from, pinned to the manifest digest it recorded.
pub(crate) async fn open_image_source(
    location: &Location,
    archive: &Archive,
    opts: &SourceOptions,
) -> Result<Arc<dyn BlobSource>, ImageError> {
    let meta = archive.meta();
    let path = PathBuf::from(location.to_string());
    let bad =
        |source| ImageError::BadSource { path: path.clone(), image: meta.source.clone(), source: Box::new(source) };
    let mut reference: ImageRef = meta.source.parse().map_err(bad)?;
    if let (ImageRef::Registry { digest, .. }, Some(pinned)) = (&mut reference, &meta.manifest_digest) {
        // Pinned to the manifest digest it was built from: the layer blobs are content-addressed and every
        // span is verified against its own digest, so the manifest and config need not be fetched again (two
        // round trips off every cold start). A registry that lost the image fails the first read, naming it
        // (and, with `connect_in_background`, one that is down fails the reads the cache cannot serve).
        *digest = Some(*pinned);
        let source = clip_source::connect(&reference, opts).await?;
        info!(image = %reference, source = %source.describe(), "image source ready");
        return Ok(source);
    }
    let mut opts = opts.clone();
    if let Some(p) = &meta.platform {
        opts.platform = clip_source::Platform::new(&p.os, &p.architecture, p.variant.as_deref());
    }
    let (resolved, source) = clip_source::open(&reference, &opts).await?;
    if meta.manifest_digest.is_some() {
        check_indexed(archive, &resolved.manifest_digest, path)?;
    }
    info!(image = %reference, source = %source.describe(), "connected to image");
    Ok(source)
}

/// Checks that `archive`, read from `path`, is an index of the image manifest `manifest_digest`:
/// [`ImageError::NotAnImageIndex`] when it records no manifest, [`ImageError::ManifestChanged`] when another.
pub fn check_indexed(archive: &Archive, manifest_digest: &Digest, path: impl Into<PathBuf>) -> Result<(), ImageError> {
    match archive.meta().manifest_digest {
        None => Err(ImageError::NotAnImageIndex { path: path.into() }),
        Some(indexed) if indexed != *manifest_digest => {
            Err(ImageError::ManifestChanged { path: path.into(), indexed, found: *manifest_digest })
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!("a/b.clip".parse::<Location>().unwrap(), Location::Local("a/b.clip".into()));
        let s3: Location = "s3://bucket/k/x.clip".parse().unwrap();
        assert_eq!(s3.to_string(), "s3://bucket/k/x.clip");
        assert!("s3://bucket".parse::<Location>().is_err());
    }
}
