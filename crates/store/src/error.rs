//! The content store's error type.

use clip_format::{Digest, LayerIndex, SpanId};

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
    #[error("layer {layer} ({media_type}) cannot be read: {why}")]
    Layer { layer: LayerIndex, media_type: String, why: String },
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
    #[error("layer {layer} span {span}: a concurrent fetch of this span failed: {message}")]
    Joined { layer: LayerIndex, span: SpanId, message: String },
    #[error("content cache tier, span sha256 {digest}: {reason}")]
    Tier { digest: String, reason: String },
    #[error("disk cache {} (check that the directory is writable, or choose another cache directory)", path.display())]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
