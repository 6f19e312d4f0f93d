//! A worker node: what a machine running containers from lazy images does, on top of [`clip_image`].
//!
//! - [`Config`]: the node's configuration (a TOML file under `CLIP_*` environment variables).
//! - [`mount_foreground`]: mount an archive with FUSE until it is unmounted ([`MountConfig`]), with
//!   Prometheus [`metrics`], the [`S3SpanCache`] content cache tier, and prefetch [`Profile`]s.
//! - [`serve_daemon`]: one long-running process serving many mounts, asked for over a unix socket
//!   (`clip_client`'s protocol; [`MountConfig::for_request`] makes a request's mount).
//! - [`MountSpec`]: the typed spec a node hands to the `clip` process serving one of its shared mounts.
//! - [`Profile`] / [`ProfileRecorder`]: the spans a container's startup read, recorded by a mount
//!   (`record_profile`) and prefetched in that order by the next cold mount (`profile`), after the
//!   index's startup set ([`startup_spans`]).
//! - [`Node`]: pull and run images (index store, shared mounts, overlay, OCI runtime), with v2 → v1
//!   [`Fallback`]s and image-level metrics written to `STATE_DIR/`[`METRICS_DIR`]`/`[`METRICS_FILE`].
//!
//! Errors are one [`NodeError`]; those of the image layer arrive as [`NodeError::Image`].

pub mod config;
mod content_cache;
mod daemon;
mod error;
pub mod metrics;
mod mount;
mod mount_spec;
mod prefetch;
mod profile;
mod run;

pub use config::{default_parts_dir, ClipVersion, Config, ConfigError, Origin};
pub use content_cache::S3SpanCache;
pub use daemon::serve_daemon;
pub use error::NodeError;
pub use mount::{mount_foreground, mount_until, stop_signal, MountConfig, MountSummary};
pub use mount_spec::MountSpec;
pub use prefetch::{startup_spans, STARTUP_FILE_MAX, STARTUP_SPANS_MAX};
pub use profile::{
    fetch_profile_s3, fetch_published_profile, publish_profile, publish_profile_s3, Profile, ProfileRecorder,
    ProfileSpan, RecordLimits, PROFILE_ARTIFACT_TYPE, PROFILE_LAYER_MEDIA_TYPE,
};
pub use run::{
    layers_metrics_socket, layers_mount_of, remount_layers, unmount_layers, Fallback, FallbackReason, GcEntry,
    IndexOrigin, LayerFallback, Lease, Node, PartsGc, Pulled, SnapshotterMetrics, StoredIndex, User, METRICS_DIR,
    METRICS_FILE,
};
