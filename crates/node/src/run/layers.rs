//! Layer views for containerd's snapshotter: every layer of an image as its own directory
//! (`STATE_DIR/mounts/<key>-layers/rootfs/<n>-sha256-<hex>`), served by one shared FUSE mount per image
//! (`clip serve-mount` of the image's view index, kept as `STATE_DIR/views/<key>.clip`). The image's index
//! is found or built as for `clip pull`; layer parts are kept in `STATE_DIR/parts` (and taken from those
//! published with the image's index when it has them). The mount serves its metrics on a unix socket
//! beside it ([`layers_metrics_socket`]).
//!
//! The mount is not held by a process: the snapshotter tracks which layers its snapshots use, and calls
//! [`unmount_layers`] when none is left, or [`remount_layers`] after a restart.

use std::path::{Path, PathBuf};

use clip_format::Digest;
use clip_image::{Location, PublishedParts, ViewChoice};
use clip_source::ImageRef;
use tracing::{info, warn};

use crate::run::{mounts, parts, private_dir, probe, store, IndexOrigin, MountCommand, Node, NodeError, StoredIndex};
use crate::MountSpec;

impl Node {
    /// The index of `image` whose layer views [`Node::layer_dir`] mounts: found or built as for `clip pull`
    /// (local store → published with the image → S3 index store → built now).
    pub async fn layers_index(&self, image: &str) -> Result<StoredIndex, NodeError> {
        private_dir(self.state_dir())?;
        let open = self.open_options(image);
        store::find_or_build(self.state_dir(), image, &self.lookup(&open)).await
    }

    /// The directory of the shared mount of `index`'s layer views (`STATE_DIR/mounts/<key>-layers`), as
    /// [`layers_mount_of`] finds it from a layer directory.
    pub fn layers_mount(&self, index: &StoredIndex) -> PathBuf {
        self.state_dir().join("mounts").join(format!("{}-layers", index.key))
    }

    /// Mounts the layer views of `image`, whose index is `index` (see [`Node::layers_index`]), unless live,
    /// and returns the directory of its layer `digest` (`sha256:…`). The views are built from the layers'
    /// parts: kept on this node, published with the image's index, in the S3 index store, else indexed from
    /// the layers. Fails when the registry refuses Range requests, the mount does not come up, or the
    /// image has no such layer: the caller then unpacks the layer itself.
    pub async fn layer_dir(&self, image: &str, index: &StoredIndex, digest: &Digest) -> Result<PathBuf, NodeError> {
        let state = self.state_dir().to_path_buf();
        let open = self.open_options(image);
        private_dir(&state.join("mounts"))?;
        let dir = self.layers_mount(index);
        let rootfs = dir.join("rootfs");
        if !mounts::live(&dir)? {
            if let Some(detail) = probe::range_refused(index, &open.source).await {
                return Err(NodeError::RangeRefused { image: image.to_owned(), detail });
            }
            let views = state.join("views").join(format!("{}.clip", index.key));
            if !views.is_file() {
                let published = self.published_parts(image, index).await;
                let parts = parts::part_store(&state, &self.lookup(&open), published);
                let location = Location::Local(index.path.clone());
                let view = clip_image::view_index(&location, &ViewChoice::AllLayers, parts, &open).await?;
                private_dir(&state.join("views"))?;
                view.save(&views)?;
            }
            let spec = MountSpec {
                archive: views,
                mountpoint: rootfs.clone(),
                cache_dir: self.config.cache_dir.value.clone(),
                cache_size: self.config.cache_size.value,
                plain_http: open.source.plain_http,
                record_profile: None,
                profile: None,
                no_startup_set: true, // a views index has no startup set
                record_limits: None,
                publish_profile: None,
                publish_profile_s3: None,
                content_cache: self.config.s3_content_cache.value.clone(),
                metrics_socket: Some(layers_metrics_socket(&dir)),
            };
            let cmd = MountCommand { exe: self.clip_exe.clone(), spec };
            let mount_dir = dir.clone();
            tokio::task::spawn_blocking(move || mounts::acquire(&mount_dir, &cmd, false))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            info!(%image, views = %rootfs.display(), "layer views mounted");
        }
        let suffix = format!("-{}", digest.dashed());
        let entries = std::fs::read_dir(&rootfs).map_err(NodeError::io(&rootfs, "listing the layer views"))?;
        for entry in entries {
            let entry = entry.map_err(NodeError::io(&rootfs, "listing the layer views"))?;
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(&suffix)) {
                return Ok(entry.path());
            }
        }
        Err(NodeError::NoSuchLayer { image: image.to_owned(), digest: *digest })
    }

    /// The layer parts published with `image`'s index in its registry, when the index may have come from
    /// there (not for one built here just now); `None` when there are none or they cannot be listed
    /// (logged: the layers are then indexed here).
    async fn published_parts(&self, image: &str, index: &StoredIndex) -> Option<PublishedParts> {
        if index.origin == IndexOrigin::Built || !matches!(image.parse::<ImageRef>(), Ok(ImageRef::Registry { .. })) {
            return None;
        }
        let opts = self.source_options(image);
        match PublishedParts::find(image, &index.manifest_digest, &opts).await {
            Ok(Some(parts)) => {
                info!(%image, parts = parts.len(), "layer parts published with the index");
                Some(parts)
            }
            Ok(None) => None,
            Err(error) => {
                warn!(%image, error = &error as &dyn std::error::Error, "the layer parts published with the index cannot be used; looking further");
                None
            }
        }
    }
}

/// The unix socket on which the layer views' mount in `mount_dir` (`mounts/<key>-layers`) serves its
/// metrics: beside it, `mounts/sha256-<16 hex>-layers.sock` (a socket path must stay under 108 bytes).
pub fn layers_metrics_socket(mount_dir: &Path) -> PathBuf {
    let name = mount_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let key = name.strip_suffix("-layers").unwrap_or(name);
    let short: String = key.chars().take("sha256-".len() + 16).collect();
    mount_dir.with_file_name(format!("{short}-layers.sock"))
}

/// The directory of the shared mount (`mounts/<key>-layers`) serving the layer directory `layer_dir`.
pub fn layers_mount_of(layer_dir: &Path) -> Option<&Path> {
    layer_dir.parent().filter(|p| p.ends_with("rootfs")).and_then(Path::parent)
}

/// Unmounts the layer views in the shared mount directory `dir` (see [`layers_mount_of`]).
pub fn unmount_layers(dir: &Path) -> Result<(), NodeError> {
    mounts::unmount(dir)
}

/// Mounts the layer views in `dir` again from their saved spec, with `clip_exe`, unless live.
pub fn remount_layers(dir: &Path, clip_exe: &Path) -> Result<bool, NodeError> {
    let spec = MountSpec::load(&dir.join("mount.json"))?;
    let (_, _, mounted) = mounts::acquire(dir, &MountCommand { exe: clip_exe.to_path_buf(), spec }, false)?;
    Ok(mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_socket_of_a_views_mount_has_a_short_name_beside_it() {
        let dir = Path::new("/var/lib/clip/snapshotter/mounts/sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-layers");
        let socket = layers_metrics_socket(dir);
        assert_eq!(socket, Path::new("/var/lib/clip/snapshotter/mounts/sha256-0123456789abcdef-layers.sock"));
        assert!(socket.as_os_str().len() < 108);
    }

    #[test]
    fn a_layer_directory_names_its_shared_mount() {
        let layer = Path::new("/root/mounts/sha256-ab-layers/rootfs/0-sha256-cd");
        assert_eq!(layers_mount_of(layer), Some(Path::new("/root/mounts/sha256-ab-layers")));
        assert_eq!(layers_mount_of(Path::new("/elsewhere/0-sha256-cd")), None);
    }
}
