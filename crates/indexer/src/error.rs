//! The indexer's error type.

use clip_format::LayerIndex;
use clip_source::{Digest, SourceError};

/// Why an image could not be indexed. Every variant names the layer (index and digest) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("layer {layer} ({digest})")]
    Read {
        layer: LayerIndex,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {layer} ({digest})")]
    Codec {
        layer: LayerIndex,
        digest: Digest,
        #[source]
        source: clip_codec::CodecError,
    },
    #[error("layer {layer} ({digest}): malformed or hostile tar")]
    Tar {
        layer: LayerIndex,
        digest: Digest,
        #[source]
        source: crate::tar::TarError,
    },
    #[error("layer {layer}")]
    Merge {
        layer: LayerIndex,
        #[source]
        source: crate::merge::MergeError,
    },
    #[error("layer {layer}: blob digest mismatch: manifest says {expected}, the bytes hash to {actual} (the registry or layout is corrupt)")]
    BlobDigest { layer: LayerIndex, expected: Digest, actual: Digest },
    #[error("layer {layer} ({digest}): size mismatch: manifest says {expected} bytes, got {actual}")]
    BlobSize { layer: LayerIndex, digest: Digest, expected: u64, actual: u64 },
    #[error(
        "layer {layer} ({digest}): diff_id mismatch: config says {expected}, the uncompressed tar hashes to {actual}"
    )]
    DiffId { layer: LayerIndex, digest: Digest, expected: Digest, actual: Digest },
    #[error("image config lists {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount { diff_ids: usize, layers: usize },
    #[error("layer {layer} ({digest}): decompresses to over {ratio}x its compressed size (a decompression bomb?); raise --max-ratio if the image is trusted")]
    Ratio { layer: LayerIndex, digest: Digest, ratio: u64 },
    #[error("layer {layer}: storing checkpoint windows (in a temporary file; is $TMPDIR writable and not full?)")]
    Windows {
        layer: LayerIndex,
        #[source]
        source: clip_format::FormatError,
    },
    /// The merged tree does not fit the index (a string table over 4 GiB, or a temporary file failed).
    #[error("encoding the merged tree failed")]
    Encode(#[source] clip_format::FormatError),
    /// The layer's tar entries, kept in a temporary file while the layer was read, did not read back.
    #[error("layer {layer}: reading its tar entries back from a temporary file failed (is the disk full or failing?)")]
    Entries {
        layer: LayerIndex,
        #[source]
        source: clip_format::FormatError,
    },
    /// An entry the part cannot hold (a string or string table over 4 GiB).
    #[error("layer {layer}: its tar entries do not fit a layer part")]
    Part {
        layer: LayerIndex,
        #[source]
        source: clip_format::FormatError,
    },
    #[error("there is no layer {layer}: the image has {layers} (numbered from 0, bottom first)")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error("span size must be between 64 KiB and 1 GiB, got {0} bytes")]
    SpanSize(u64),
    #[error("indexing task failed: {0}")]
    Task(String),
}
