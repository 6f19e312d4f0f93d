//! Pulling and running images on a worker node ([`Node`]): find or build the image's index, mount it once
//! per image (shared, reference-counted), and run containers from an overlay over that mount with an OCI
//! runtime.
//!
//! State lives under the configured `state_dir`:
//! - `indexes/<key>.clip`: the local index store, `<key>` = `sha256-<hex>` of the resolved manifest;
//! - `parts/<layer digest>-s<span size>-v<n>.part`: layer parts (`parts`), so an image whose layers were
//!   indexed before costs only its new layers;
//! - `v1/<key>.clip`: data-carrying archives of whole images (`clip_version = 1`);
//! - `mounts/<key>[-v1]/`: one shared mount per image (`rootfs/`, `state.json`, `lock`, `mount.json` (its
//!   [`crate::MountSpec`]), `mount.log`);
//! - `containers/<id>/`: one directory per running container (`upper/`, `work/`, `rootfs/`, `config.json`);
//! - `metrics/clip-images.prom`: the node's image-level Prometheus metrics (see `image_metrics`).
//!
//! The state directory, `mounts/`, every `mounts/<key>/` and `containers/` are private (mode 0700, made so
//! when clip finds them more open): they hold whole images, containers' writable layers, and mounts whose
//! setuid binaries no local user may reach. The shared mounts are `nosuid`; a container gets its setuid
//! bits from its own overlay, mounted without `nosuid`.
//!
//! With `clip_version = 2`, an image falls back to v1 ([`Fallback`], [`FallbackReason`]; logged once per
//! pull at warn and counted in the metrics) when no index can be built, when its registry answers Range
//! requests with whole blobs (checked before mounting, see `probe`), or when the v2 mount does not come up.
//!
//! ```no_run
//! # async fn demo() -> Result<(), clip_node::NodeError> {
//! use clip_node::{Config, Node};
//! let node = Node::new(Config::load(None)?, std::env::current_exe().unwrap());
//! let code = node.run("127.0.0.1:5000/debian:test", &["cat".into(), "/etc/os-release".into()]).await?;
//! # let _ = code; Ok(()) }
//! ```

mod container;

mod fallback;
mod image_metrics;
mod layer_metrics;
mod layers;
mod mounts;
mod parts;
mod probe;
mod profiles;
mod spec;
mod store;
mod v1;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clip_format::Archive;
use clip_source::{ImageRef, SourceOptions};
use clip_store::StoreConfig;
use tracing::{info, warn};

pub use crate::error::NodeError;
pub use image_metrics::{METRICS_DIR, METRICS_FILE};
pub use layer_metrics::{LayerFallback, SnapshotterMetrics};
pub use layers::{layers_metrics_socket, layers_mount_of, remount_layers, unmount_layers};
pub use mounts::{GcEntry, Lease};
pub use parts::PartsGc;
pub use spec::{process_args, resolve_user, runtime_spec, User};
pub use store::{IndexOrigin, Lookup, StoredIndex};

use crate::config::{ClipVersion, Config};
use crate::MountSpec;
use clip_image::OpenOptions;
use container::Container;
use image_metrics::ImageReady;
use mounts::MountCommand;

/// A worker node: its configuration and the `clip` binary that serves shared mounts (`clip mount`).
#[derive(Debug, Clone)]
pub struct Node {
    config: Config,
    clip_exe: PathBuf,
    /// Images that fell back from v2 to v1.
    fallbacks: Arc<AtomicU64>,
    /// Record a prefetch profile to this file in the mounts this node starts.
    record_profile: Option<PathBuf>,
}

/// A pulled image: its index, the archive that is mounted, and the mounted root filesystem.
#[derive(Debug)]
pub struct Pulled {
    pub index: StoredIndex,
    /// The archive mounted: the index itself (v2) or the image's data-carrying archive (v1).
    pub archive: PathBuf,
    pub version: ClipVersion,
    /// Why this image fell back from v2 to v1, if it did.
    pub fallback: Option<Fallback>,
    /// The shared, read-only mount of the image.
    pub rootfs: PathBuf,
    /// This process's hold on the mount (`run`); `None` for `pull`, which leaves the mount to later users
    /// or `clip gc`.
    pub lease: Option<Lease>,
}

impl Node {
    pub fn new(config: Config, clip_exe: PathBuf) -> Node {
        Node { config, clip_exe, fallbacks: Arc::default(), record_profile: None }
    }

    /// Makes the mounts this node starts record a prefetch profile to `path` (written when the mount ends).
    /// A mount already shared with other users is not restarted, so nothing is recorded then (logged).
    pub fn with_record_profile(mut self, path: PathBuf) -> Node {
        self.record_profile = Some(path);
        self
    }

    /// How many images this node (this process) fell back from v2 to v1 for; the image metrics
    /// (`STATE_DIR/metrics/clip-images.prom`) count them across processes, by reason.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn state_dir(&self) -> &Path {
        &self.config.state_dir.value
    }

    fn source_options(&self, image: &str) -> SourceOptions {
        let plain_http = image
            .parse::<ImageRef>()
            .ok()
            .and_then(|r| r.registry().map(|h| self.config.plain_http(h)))
            .unwrap_or(false);
        SourceOptions { plain_http, ..SourceOptions::default() }
    }

    fn open_options(&self, image: &str) -> OpenOptions {
        let store = StoreConfig {
            cache_dir: Some(self.config.cache_dir.value.clone()),
            cache_size: self.config.cache_size.value,
            ..StoreConfig::default()
        };
        OpenOptions { source: self.source_options(image), store, ..OpenOptions::default() }
    }

    /// Where to look for an image's index besides the local store, from the configuration.
    pub(crate) fn lookup(&self, open: &OpenOptions) -> Lookup {
        Lookup {
            source: open.source.clone(),
            s3_index_store: self.config.s3_index_store.value.clone(),
            s3: open.s3.clone(),
            publish: self.config.publish_index.value,
        }
    }

    /// Makes `image` ready to run: its index (local store → registry → S3 index store → built now), its archive for the
    /// configured clip version, and a live shared mount. Prints nothing; the mount stays after return.
    pub async fn pull(&self, image: &str) -> Result<Pulled, NodeError> {
        self.prepare(image, false).await
    }

    async fn prepare(&self, image: &str, hold: bool) -> Result<Pulled, NodeError> {
        let started = Instant::now();
        private_dir(self.state_dir())?;
        let configured = self.config.clip_version.value;
        let open = self.open_options(image);
        let lookup = self.lookup(&open);
        let found = store::find_or_build(self.state_dir(), image, &lookup).await;
        let mut fallback = None;
        let (index, mut archive, mut key, mut version) = match (found, configured) {
            (Ok(index), ClipVersion::V2) => (index.clone(), index.path, index.key, ClipVersion::V2),
            (Ok(index), ClipVersion::V1) => {
                let archive = v1::ensure_archive(self.state_dir(), &index, &open).await?;
                let key = format!("{}-v1", index.key);
                (index, archive, key, ClipVersion::V1)
            }
            (Err(e), _) if falls_back(&e) => {
                let why = Fallback { reason: FallbackReason::Unindexable, detail: clip_store::error_chain(&e) };
                let unpacked = self.fall_back(image, &open, &why).await?;
                fallback = Some(why);
                let index = StoredIndex {
                    manifest_digest: unpacked.manifest_digest,
                    key: unpacked.key.clone(),
                    path: unpacked.archive.clone(),
                    origin: IndexOrigin::Fallback,
                };
                (index, unpacked.archive, format!("{}-v1", unpacked.key), ClipVersion::V1)
            }
            (Err(e), _) => return Err(e),
        };
        let dir = self.state_dir().join("mounts");
        private_dir(&dir)?;
        if version == ClipVersion::V2 && !mounts::is_mountpoint(&dir.join(&key).join("rootfs")) {
            if let Some(detail) = probe::range_refused(&index, &open.source).await {
                let why = Fallback { reason: FallbackReason::RangeRefused, detail };
                let unpacked = self.fall_back(image, &open, &why).await?;
                (archive, key, version) = (unpacked.archive, format!("{}-v1", unpacked.key), ClipVersion::V1);
                fallback = Some(why);
            }
        }
        let cmd = self.mount_command(image, &index, &archive, version, &dir.join(&key)).await;
        let (rootfs, lease, mounted_now) = match mount(dir.join(&key), cmd, hold).await {
            Err(e @ (NodeError::MountExited { .. } | NodeError::MountTimeout { .. })) if version == ClipVersion::V2 => {
                let why = Fallback { reason: FallbackReason::MountFailed, detail: clip_store::error_chain(&e) };
                let unpacked = self.fall_back(image, &open, &why).await?;
                (archive, key, version) = (unpacked.archive, format!("{}-v1", unpacked.key), ClipVersion::V1);
                fallback = Some(why);
                let cmd = self.mount_command(image, &index, &archive, version, &dir.join(&key)).await;
                mount(dir.join(&key), cmd, hold).await?
            }
            mounted => mounted?,
        };
        if let Some(path) = self.record_profile.as_ref().filter(|_| !mounted_now) {
            warn!(%image, path = %path.display(), "the mount is shared with a running container; no profile is recorded");
        }
        let ready = started.elapsed();
        let event = ImageReady { origin: index.origin, fallback: fallback.as_ref().map(|f| f.reason), ready };
        if let Err(error) = image_metrics::record(self.state_dir(), &event) {
            warn!(error = &error as &dyn std::error::Error, "recording image metrics");
        }
        info!(
            %image, digest = %index.manifest_digest, index_origin = %index.origin, %version,
            ready_ms = ready.as_millis() as u64, rootfs = %rootfs.display(), "image ready"
        );
        Ok(Pulled { index, archive, version, fallback, rootfs, lease })
    }

    /// Falls back to v1 for `image`: warns why (once per pull), counts it, pulls and packs the whole image.
    async fn fall_back(
        &self,
        image: &str,
        open: &OpenOptions,
        why: &Fallback,
    ) -> Result<fallback::Unpacked, NodeError> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let reason = why.reason.label();
        warn!(%image, reason, detail = %why.detail, "{}; falling back to v1 (whole image unpacked)", why.reason);
        fallback::pull_unpack(self.state_dir(), image, &open.source).await
    }

    /// The mount of `archive` of `image` (shared mount in `mount_dir`): the cache, plain HTTP, a profile to
    /// record or the published one to prefetch (v2; not looked up when the mount is already live, as the
    /// command then goes unused), the content cache tier.
    async fn mount_command(
        &self,
        image: &str,
        index: &StoredIndex,
        archive: &Path,
        version: ClipVersion,
        mount_dir: &Path,
    ) -> MountCommand {
        let mut spec = MountSpec {
            archive: archive.to_path_buf(),
            mountpoint: mount_dir.join("rootfs"),
            cache_dir: self.config.cache_dir.value.clone(),
            cache_size: self.config.cache_size.value,
            plain_http: self.source_options(image).plain_http,
            record_profile: None,
            profile: None,
            no_startup_set: !self.config.startup.set.value,
            record_limits: None,
            publish_profile: None,
            publish_profile_s3: None,
            content_cache: self.config.s3_content_cache.value.clone(),
            metrics_socket: None,
        };
        if let Some(path) = &self.record_profile {
            spec.record_profile = Some(std::path::absolute(path).unwrap_or(path.clone()));
        } else if version == ClipVersion::V2 && !mounts::is_mountpoint(&spec.mountpoint) {
            spec.profile = self.published_profile(image, index).await;
            if spec.profile.is_none() {
                self.record_first_start(image, index, &mut spec);
            }
        }
        MountCommand { exe: self.clip_exe.clone(), spec }
    }

    /// Runs `command` (or the image's Entrypoint + Cmd when empty) in a new container of `image` and
    /// returns its exit code. The container's writes go to its own upper directory, removed afterwards.
    pub async fn run(&self, image: &str, command: &[String]) -> Result<i32, NodeError> {
        let pulled = self.prepare(image, true).await?;
        let result = self.run_pulled(image, &pulled, command).await;
        let lease = pulled.lease;
        let released = match lease {
            Some(lease) => tokio::task::spawn_blocking(move || lease.release())
                .await
                .map_err(|e| NodeError::Task(e.to_string()))
                .and_then(|r| r),
            None => Ok(()),
        };
        let code = result?;
        if let Err(error) = released {
            warn!(error = &error as &dyn std::error::Error, "releasing the shared mount");
        }
        Ok(code)
    }

    async fn run_pulled(&self, image: &str, pulled: &Pulled, command: &[String]) -> Result<i32, NodeError> {
        let config = Archive::open(&pulled.index.path)
            .map_err(clip_image::ImageError::format(&pulled.index.path))?
            .meta()
            .config
            .clone();
        let args = process_args(&config, command, image)?;
        let user = resolve_user(config.user.as_deref(), &pulled.rootfs, image)?;
        let runtime = &self.config.runtime.value;
        let containers = self.state_dir().join("containers");
        let container = Container::create(&containers, &pulled.rootfs, runtime)?;
        let spec = runtime_spec(&config, args, user, &container.rootfs(), &container.id);
        container.write_spec(&spec)?;
        info!(id = %container.id, %image, "starting container");
        let code = container.run().await;
        let removed = container.remove();
        let code = code?;
        removed?;
        Ok(code)
    }

    /// Unmounts every shared mount without live users.
    pub fn gc(&self) -> Result<Vec<GcEntry>, NodeError> {
        if self.state_dir().is_dir() {
            private_dir(self.state_dir())?;
        }
        mounts::gc(&self.state_dir().join("mounts"))
    }

    /// Removes the layer parts that no index of the local index store uses.
    pub fn gc_parts(&self) -> Result<PartsGc, NodeError> {
        parts::gc_parts(self.state_dir())
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or makes an existing one 0700 when others may enter
/// it (a state directory made by an older clip, or by hand).
pub(crate) fn private_dir(dir: &Path) -> Result<(), NodeError> {
    let was = clip_store::private_dir(dir).map_err(NodeError::io(dir, "making the directory private (mode 0700)"))?;
    if let Some(mode) = was {
        info!(dir = %dir.display(), was = format!("{mode:o}"), "made the directory private (mode 0700)");
    }
    Ok(())
}

/// Ensures the shared mount in `dir` of `cmd.spec.archive` is live (see [`mounts::acquire`]).
async fn mount(dir: PathBuf, cmd: MountCommand, hold: bool) -> Result<(PathBuf, Option<Lease>, bool), NodeError> {
    tokio::task::spawn_blocking(move || mounts::acquire(&dir, &cmd, hold))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))?
}

/// Why an image fell back from clip v2 to v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No index could be built: a layer media type clip cannot index, or indexing failed.
    Unindexable,
    /// The registry answers Range requests with whole blobs, so lazy reads would download whole layers.
    RangeRefused,
    /// The v2 mount did not come up (its process exited or timed out).
    MountFailed,
}

impl FallbackReason {
    /// Every [`FallbackReason::label`].
    pub const LABELS: [&'static str; 3] = ["unindexable", "range_refused", "mount_failed"];

    /// The metrics label value.
    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::Unindexable => "unindexable",
            FallbackReason::RangeRefused => "range_refused",
            FallbackReason::MountFailed => "mount_failed",
        }
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FallbackReason::Unindexable => "clip v2 cannot index this image",
            FallbackReason::RangeRefused => "the registry refuses Range requests, so clip v2 cannot read lazily",
            FallbackReason::MountFailed => "the clip v2 mount failed",
        })
    }
}

/// A fallback from v2 to v1: its reason and the error or answer behind it.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub reason: FallbackReason,
    pub detail: String,
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Whether a failure to find or build an index is one the v1 fallback can get past: a layer media type
/// clip cannot index, or an indexing failure (a registry refusing Range requests, an unreadable layer).
/// Failures to reach or resolve the image are not.
fn falls_back(e: &NodeError) -> bool {
    match e {
        NodeError::Resolve { source, .. } => {
            matches!(**source, clip_source::SourceError::UnsupportedMediaType { what: "layer", .. })
        }
        NodeError::Image(clip_image::ImageError::Index { .. }) => true,
        _ => false,
    }
}
