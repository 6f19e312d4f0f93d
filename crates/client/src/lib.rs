//! The image client: what a worker node runs on top of the lower layers.
//!
//! - [`open_archive`]: a `.clip` file of either kind, local or in S3 ([`Location`]), plus the
//!   [`clip_store::ContentStore`] serving its bytes; [`load_archive`] for its metadata alone.
//! - [`pack`] / [`archive`]: a root filesystem directory packed into a data-carrying archive, written
//!   locally or uploaded to S3; [`push`] uploads an existing one.
//! - [`Owners`]: the names of the image's users and groups, from its own `/etc/passwd` and `/etc/group`.
//! - [`extract`]: materialize the root filesystem into a directory (the result equals `umoci unpack`'s).
//! - [`S3SpanCache`]: the shared content cache tier (decoded spans in an S3 bucket, by digest).
//! - [`mount_foreground`]: mount an archive with FUSE until it is unmounted, with Prometheus [`metrics`].
//! - [`publish_index`] / [`fetch_published_index`]: an index published next to its image in the registry
//!   (an OCI artifact whose `subject` is the image manifest).
//! - [`Profile`] / [`ProfileRecorder`]: the spans a container's startup read, recorded by a mount
//!   (`record_profile`) and prefetched in that order by the next cold mount (`profile`).
//! - [`Node`]: pull and run images on a worker node (index store, shared mounts, overlay, OCI runtime),
//!   configured by [`Config`] (a TOML file under `CLIP_*` environment variables), with v2 → v1
//!   [`Fallback`]s and image-level metrics written to `STATE_DIR/`[`METRICS_DIR`]`/`[`METRICS_FILE`].
//! - [`write_atomically`]: how every file clip writes is put in place (never over a device or FIFO).

mod archive;
mod atomic;
pub mod config;
mod content_cache;
mod error;
mod extract;
pub mod metrics;
mod mount;
mod open;
mod owners;
mod profile;
mod publish;
mod remote;
mod run;

pub use archive::{
    archive, pack, push, ArchiveOptions, ArchiveProgress, ArchiveReport, DataCompression, PackConfig, PackProgress,
    PackSummary, Packed, DATA_MEDIA_TYPE, PACK_SPAN_SIZE,
};
pub use atomic::{check_output, write_atomically};
pub use clip_s3::{S3Options, S3Url};
pub use config::{ClipVersion, Config, ConfigError, Origin};
pub use content_cache::S3SpanCache;
pub use error::ClientError;
pub use extract::{extract, ExtractProgress, ExtractStats};
pub use mount::{mount_foreground, MountConfig, MountSummary};
pub use open::{load_archive, open_archive, Loaded, Location, OpenOptions, Opened};
pub use owners::Owners;
pub use profile::{
    fetch_published_profile, publish_profile, Profile, ProfileRecorder, PROFILE_ARTIFACT_TYPE, PROFILE_LAYER_MEDIA_TYPE,
};
pub use publish::{fetch_published_index, publish_index, PublishedIndex, INDEX_ARTIFACT_TYPE, INDEX_LAYER_MEDIA_TYPE};
pub use remote::S3Data;
pub use run::{
    Fallback, FallbackReason, GcEntry, IndexOrigin, Lease, Node, Pulled, RunError, StoredIndex, User, METRICS_DIR,
    METRICS_FILE,
};
