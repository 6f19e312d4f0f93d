//! The indexer: streams each layer once into a layer part (tar entries, checkpoints, span digests), then merges
//! the parts into one tree.
//!
//! - [`index_image`] runs the whole pipeline for a resolved image and returns the
//!   [`clip_format::IndexContents`] to write.
//! - [`tar`]: a streaming tar parser that reports where each file's bytes sit in the uncompressed stream.
//! - [`PartStore`]: where layer parts ([`clip_format::LayerPart`]) are kept, so a layer indexed once (for any
//!   image) is never read again.
//! - [`assemble`]: builds an index from parts: the merged tree, or the layer views ([`TreeKind`]).
//! - [`startup`]: the files an image's entrypoint opens first (its startup set), found in a written index.
//! - [`merge`]: applies layers in order with `umoci unpack` semantics (whiteouts, opaque dirs, hard links).

mod assemble;
mod chunks;
mod error;
pub mod merge;
mod parts;
mod pipeline;
pub mod startup;
pub mod tar;

pub use assemble::{assemble, layer_dir_name, TreeKind};
pub use error::IndexError;
pub use parts::{PartStore, PartStoreError};
pub use pipeline::{index_image, layer_parts, IndexOptions, Progress, DEFAULT_SPAN_SIZE};
