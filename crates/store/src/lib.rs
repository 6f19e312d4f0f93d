//! The content store: maps file reads to verified spans, fetched once and kept in a bounded disk cache.
//!
//! - [`LayerBlobs`]: where a layer's compressed bytes come from ([`SourceBlobs`] for index-only archives:
//!   the image's registry or OCI layout; [`LocalData`] for a data-carrying archive on local disk).
//! - [`ContentStore`]: `read(file, offset, len)` → the spans it covers, each fetched with one range read,
//!   decoded from its checkpoint and verified against its digest before any byte is returned.
//!
//! This crate knows no FUSE and no CLI.

mod blobs;
mod error;
mod store;

pub use blobs::{LayerBlobs, LocalData, SourceBlobs};
pub use error::StoreError;
pub use store::{ContentStore, SpanBytes, StoreConfig, StoreStats};
