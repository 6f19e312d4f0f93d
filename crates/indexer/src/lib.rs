//! The indexer: streams each layer once, records checkpoints and span digests, parses tar and merges layers.
//!
//! - [`index_image`] runs the whole pipeline for a resolved image and returns the
//!   [`clip_format::IndexContents`] to write.
//! - [`tar`]: a streaming tar parser that reports where each file's bytes sit in the uncompressed stream.
//! - [`merge`]: applies layers in order with `umoci unpack` semantics (whiteouts, opaque dirs, hard links).

mod error;
pub mod merge;
mod pipeline;
pub mod tar;

pub use error::IndexError;
pub use pipeline::{index_image, IndexOptions, Progress, DEFAULT_SPAN_SIZE};
