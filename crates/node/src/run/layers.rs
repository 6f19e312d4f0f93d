//! Layer views for containerd's snapshotter: every layer of an image as its own directory
//! (`STATE_DIR/mounts/<key>-layers/rootfs/<n>-sha256-<hex>`), served by one shared FUSE mount per image
//! (`clip serve-mount` of the image's view index, kept as `STATE_DIR/views/<key>.clip`). The image's index
//! is found or built as for `clip pull`; layer parts are kept in `STATE_DIR/parts`.
//!
//! The mount is not held by a process: the snapshotter tracks which layers its snapshots use, and calls
//! [`unmount_layers`] when none is left, or [`remount_layers`] after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_image::{DirParts, Location, ViewChoice};
use tracing::info;

use crate::run::{mounts, private_dir, probe, store, MountCommand, Node, NodeError};
use crate::MountSpec;

impl Node {
    /// Mounts the layer views of `image` (unless live) and returns the directory of its layer `digest`
    /// (`sha256:…`). Fails when the image's index cannot be had, its registry refuses Range requests, or
    /// the image has no such layer: the caller then unpacks the layer itself.
    pub async fn layer_dir(&self, image: &str, digest: &str) -> Result<PathBuf, NodeError> {
        let state = self.state_dir().to_path_buf();
        private_dir(&state)?;
        let open = self.open_options(image);
        let lookup = self.lookup(&open);
        let index = store::find_or_build(&state, image, &lookup).await?;
        let mounts_dir = state.join("mounts");
        private_dir(&mounts_dir)?;
        let dir = mounts_dir.join(format!("{}-layers", index.key));
        let rootfs = dir.join("rootfs");
        if !mounts::live(&dir)? {
            if let Some(detail) = probe::range_refused(&index, &open.source).await {
                return Err(NodeError::RangeRefused { image: image.to_owned(), detail });
            }
            let views = state.join("views").join(format!("{}.clip", index.key));
            if !views.is_file() {
                let parts = Arc::new(DirParts::new(state.join("parts")));
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
            };
            let cmd = MountCommand { exe: self.clip_exe.clone(), spec };
            let mount_dir = dir.clone();
            tokio::task::spawn_blocking(move || mounts::acquire(&mount_dir, &cmd, false))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??;
            info!(%image, views = %rootfs.display(), "layer views mounted");
        }
        let suffix = format!("-{}", digest.replacen(':', "-", 1));
        let entries = std::fs::read_dir(&rootfs).map_err(NodeError::io(&rootfs, "listing the layer views"))?;
        for entry in entries {
            let entry = entry.map_err(NodeError::io(&rootfs, "listing the layer views"))?;
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(&suffix)) {
                return Ok(entry.path());
            }
        }
        Err(NodeError::NoSuchLayer { image: image.to_owned(), digest: digest.to_owned() })
    }
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
    fn a_layer_directory_names_its_shared_mount() {
        let layer = Path::new("/root/mounts/sha256-ab-layers/rootfs/0-sha256-cd");
        assert_eq!(layers_mount_of(layer), Some(Path::new("/root/mounts/sha256-ab-layers")));
        assert_eq!(layers_mount_of(Path::new("/elsewhere/0-sha256-cd")), None);
    }
}
