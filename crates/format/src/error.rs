//! The format crate's error type.

use std::path::PathBuf;

/// Why a `.clip` file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the index")]
    Write(#[source] std::io::Error),
    #[error("not a .clip file (bad magic); was it built with `clip index` or `clip archive`?")]
    BadMagic,
    #[error("unsupported .clip format version {found} (this clip reads version {supported}); rebuild the index with this clip")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("unknown archive kind {0} in header (expected 1 = data-carrying, 2 = index-only or 3 = layer part); was it written by a newer clip?")]
    UnknownKind(u16),
    #[error(".clip file is truncated: {what} needs bytes up to {needed}, file has {len}")]
    Truncated { what: String, needed: u64, len: u64 },
    #[error("checksum mismatch in {what} (file is corrupt; rebuild or re-download it)")]
    Checksum { what: String },
    #[error("this is a layer part (the index of one layer, kept to be reused), not an image index or archive")]
    LayerPart,
    #[error("required section {0} is missing")]
    MissingSection(&'static str),
    #[error("corrupt .clip file: {0}")]
    Corrupt(String),
    /// A size or offset recorded in the index that cannot be right (checked at open, before any use).
    #[error(
        "corrupt index: {what} (the .clip file is damaged or hostile; rebuild it with `clip index` or `clip archive`)"
    )]
    BadSize { what: String },
    #[error("metadata section is not valid JSON")]
    Meta(#[source] serde_json::Error),
    #[error("invalid index contents: {0}")]
    Invalid(String),
}

impl FormatError {
    pub(crate) fn corrupt(msg: impl Into<String>) -> FormatError {
        FormatError::Corrupt(msg.into())
    }
}
