//! The image crate's error type.

use std::path::PathBuf;

/// Why a client operation failed; each variant names the file or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: clip_format::FormatError,
    },
    #[error("index {} was built from {image:?}, which is not a reference clip can read", path.display())]
    BadSource {
        path: PathBuf,
        image: String,
        #[source]
        source: Box<clip_source::SourceError>,
    },
    /// A `.clip` file that could not be read, where the format error names it already (an I/O error).
    #[error(transparent)]
    Archive(clip_format::FormatError),
    #[error(transparent)]
    Source(Box<clip_source::SourceError>),
    #[error(transparent)]
    Store(#[from] clip_store::StoreError),
    #[error("the image behind {} changed: index has manifest {indexed}, source now serves {found}", path.display())]
    ManifestChanged { path: PathBuf, indexed: clip_format::Digest, found: clip_format::Digest },
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to write {path}: it is {kind}, not a regular file (name a new file or a regular file to replace)"
    )]
    OutputNotAFile { path: PathBuf, kind: &'static str },
    #[error("{0}: target directory is not empty; extract into a new or empty directory")]
    TargetNotEmpty(PathBuf),
    #[error("refusing entry {name:?} in {dir}: not a single path component (the .clip file is corrupt or hostile)")]
    UnsafeName { dir: PathBuf, name: String },
    #[error("indexing {image}")]
    Index {
        image: String,
        #[source]
        source: Box<clip_indexer::IndexError>,
    },
    #[error("{location} is a data-carrying archive: it has no image layers to show (layer views need an index built by `clip index`)")]
    NoLayers { location: String },
    #[error("{location}: layer {layer} records no diff_id, so its part cannot be checked; rebuild the index with `clip index`")]
    NoDiffId { location: String, layer: usize },
    #[error("{location} has no layer {layer} (give a position from 0, bottom first, or a unique digest prefix); its layers: {layers}")]
    NoSuchLayer { location: String, layer: String, layers: String },
    #[error("background task failed: {0}")]
    Task(String),
    #[error("{0} changed while packing (is the root filesystem in use?)")]
    ChangedWhilePacking(PathBuf),
    #[error("{0} changed while extracting (is another process writing into the target directory?)")]
    ChangedWhileExtracting(PathBuf),
    #[error("directory inode {0} appears twice in the tree (the .clip file is corrupt or hostile)")]
    DirectoryCycle(u32),
    #[error(transparent)]
    S3(#[from] clip_s3::S3Error),
    #[error(
        "{location} is a data-carrying archive without a data section and names no data location \
         (use the full archive, or rebuild it with `clip archive ... --index-out`)"
    )]
    NoData { location: String },
    #[error(
        "{location} does not belong to the archive at {data} (their trees or spans differ; write the metadata \
         copy again with `clip archive ... --index-out`, or use the full archive)"
    )]
    DataMismatch { location: String, data: String },
    #[error("{image}: {what}: {detail}")]
    Registry { image: String, what: &'static str, detail: String },
    #[error(
        "{image}: {what}: registry {registry} refused access: {detail} (log in with `docker login {registry}`, or set \
         DOCKER_CONFIG to a directory whose config.json holds credentials for {registry})"
    )]
    RegistryAuth { image: String, registry: String, what: &'static str, detail: String },
    #[error("{image} is not a registry image; indexes are published to and found in registries only")]
    NotARegistry { image: String },
    #[error("{path} records no image manifest digest; publish an index built by `clip index` from a registry image")]
    NotAnImageIndex { path: PathBuf },
    #[error(
        "{image}: index artifact {digest} is unusable: {why} (publish it again with `clip index IMAGE -o FILE --push`)"
    )]
    BadArtifact { image: String, digest: String, why: String },
    #[error("{path}: refusing to push a file that is not a readable .clip file")]
    NotAnArchive {
        path: PathBuf,
        #[source]
        source: clip_format::FormatError,
    },
}

impl From<clip_source::SourceError> for ImageError {
    fn from(e: clip_source::SourceError) -> Self {
        ImageError::Source(Box::new(e))
    }
}

impl ImageError {
    /// The error of reading the `.clip` file at `path`: [`ImageError::Format`] naming the file, or, when the
    /// format error names it already, [`ImageError::Archive`] (a path is named once).
    pub fn format(path: impl Into<PathBuf>) -> impl FnOnce(clip_format::FormatError) -> ImageError {
        let path = path.into();
        move |source| match source {
            clip_format::FormatError::Io { .. } => ImageError::Archive(source),
            source => ImageError::Format { path, source },
        }
    }

    pub fn io(path: impl Into<PathBuf>, what: &'static str) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, what, source }
    }
}
