//! Images as files: everything clip does with a `.clip` archive or an image that is not about running it on
//! a node.
//!
//! - [`open_archive`]: a `.clip` file of either kind, local or in S3 ([`Location`]), plus the
//!   [`clip_store::ContentStore`] serving its bytes; [`load_archive`] for its metadata alone.
//! - [`index_to_file`]: an image (already resolved) indexed and written to a `.clip` file.
//! - [`pack`] / [`archive`]: a root filesystem directory packed into a data-carrying archive, written
//!   locally or uploaded to S3; [`push`] uploads an existing one.
//! - [`Owners`]: the names of the image's users and groups, from its own `/etc/passwd` and `/etc/group`.
//! - [`extract`]: materialize the root filesystem into a directory (the result equals `umoci unpack`'s).
//! - [`publish_index`] / [`fetch_published_index`]: an index published next to its image in the registry
//!   (an OCI artifact whose `subject` is the image manifest), with its layer parts ([`PublishedParts`]);
//!   [`push_artifact`] / [`fetch_artifact_layer`] for other artifacts of that kind.
//! - [`DirParts`], [`S3Parts`], [`Parts`]: where layer parts are kept (a local directory, an S3 prefix), so an
//!   image whose layers were indexed before (for any image) costs only its new layers.
//! - [`view_index`]: an index of one layer's own tree, or of every layer's side by side (for overlay and
//!   containerd), built from the layers' parts.
//! - [`write_atomically`]: how every file clip writes is put in place (never over a device or FIFO).
//!
//! Mounting, pulling and running images on a worker node is `clip-node`, built on this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), clip_image::ImageError> {
//! let archive = clip_image::Location::Local("debian.clip".into());
//! let opened = clip_image::open_archive(&archive, &clip_image::OpenOptions::default()).await?;
//! clip_image::extract(&opened, std::path::Path::new("rootfs"), None).await?;
//! # Ok(()) }
//! ```

mod archive;
mod atomic;
mod error;
mod extract;
mod index;
mod open;
mod owners;
mod parts;
mod publish;
mod publish_parts;
mod remote;
mod startup;
mod views;

pub use archive::{
    archive, pack, push, ArchiveOptions, ArchiveProgress, ArchiveReport, DataCompression, PackConfig, PackProgress,
    PackSummary, Packed, DATA_MEDIA_TYPE, PACK_SPAN_SIZE,
};
pub use atomic::{check_output, write_atomically};
pub use clip_s3::{S3Options, S3Url};
pub use error::ImageError;
pub use extract::{extract, ExtractProgress, ExtractStats};
pub use index::{index_to_file, Written};
pub use open::{check_indexed, load_archive, open_archive, Loaded, Location, OpenOptions, Opened};
pub use owners::Owners;
pub use parts::{DirParts, Parts, S3Parts, MAX_PART_BYTES};
pub use publish::{
    fetch_artifact_layer, fetch_published_index, publish_index, push_artifact, registry_failure, Artifact,
    PublishedIndex, INDEX_ARTIFACT_TYPE, INDEX_LAYER_MEDIA_TYPE,
};
pub use publish_parts::{PublishedParts, PART_LAYER_MEDIA_TYPE};
pub use remote::S3Data;
pub use startup::StoreBytes;
pub use views::{view_index, LayerChoice, ViewChoice, ViewIndex};
