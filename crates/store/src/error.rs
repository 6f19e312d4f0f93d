//! The content store's error type.

use clip_format::{ChunkDigest, Digest, LayerIndex, SpanId};

/// Why file bytes could not be served. A reader sees these as EIO; the message goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Format(#[from] clip_format::FormatError),
    #[error("layer {layer}")]
    Source {
        layer: LayerIndex,
        #[source]
        source: clip_source::SourceError,
    },
    #[error("layer {layer} span {span}")]
    Decode {
        layer: LayerIndex,
        span: SpanId,
        #[source]
        source: clip_codec::CodecError,
    },
    #[error("layer {layer} span {span}: bytes fail verification (expected {expected}, got {actual}); not served")]
    Verify { layer: LayerIndex, span: SpanId, expected: Digest, actual: Digest },
    #[error(
        "layer {layer} span {span}: the compressed chunk at offset {offset} fails verification (expected \
         {expected}, got {actual}); not served"
    )]
    ChunkVerify { layer: LayerIndex, span: SpanId, offset: u64, expected: ChunkDigest, actual: ChunkDigest },
    #[error(
        "layer {layer} span {span}: its checkpoint window does not match the digest the index records (the \
         index is damaged; rebuild it with `clip index`)"
    )]
    WindowVerify { layer: LayerIndex, span: SpanId },
    #[error("layer {layer} ({media_type}) cannot be read: {why}")]
    Layer { layer: LayerIndex, media_type: String, why: String },
    #[error("layer {layer} is not in the index (it lists {layers} layers)")]
    NoLayer { layer: LayerIndex, layers: usize },
    #[error("layer {layer}: bytes {}..{} are beyond the {len} bytes it is read from", range.start, range.end)]
    OutOfRange { layer: LayerIndex, range: std::ops::Range<u64>, len: u64 },
    #[error(
        "{}: not a data-carrying archive (an index-only archive reads file bytes from its image's registry or \
         layout)",
        path.display()
    )]
    NotDataCarrying { path: std::path::PathBuf },
    #[error("read of {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "layer {layer} span {span}: no answer within {} s (the read deadline; is the registry reachable? \
         raise it with --read-timeout)",
        after.as_secs_f64()
    )]
    Timeout { layer: LayerIndex, span: SpanId, after: std::time::Duration },
    #[error("a span fetch was cancelled: {0}")]
    Task(String),
    /// A lookup that ran into a failure of the span's load this reader did not run itself: a concurrent
    /// one, or one that failed within the hold-off ([`crate::failure_holdoff`]).
    #[error("layer {layer} span {span}: a concurrent fetch of this span failed")]
    Joined {
        layer: LayerIndex,
        span: SpanId,
        #[source]
        source: std::sync::Arc<StoreError>,
    },
    /// The failure of the load this reader ran, as it is shared with the readers who joined it; reads
    /// like the failure itself ([`StoreError::cause`] reaches it).
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
    #[error("content cache tier, span {digest}: {reason}")]
    Tier { digest: clip_format::Digest, reason: String },
    #[error("disk cache {} (check that the directory is writable, or choose another cache directory)", path.display())]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The failure itself, looking through [`StoreError::Shared`] and [`StoreError::Joined`].
    pub fn cause(&self) -> &StoreError {
        match self {
            StoreError::Shared(inner) | StoreError::Joined { source: inner, .. } => inner.cause(),
            other => other,
        }
    }
}
