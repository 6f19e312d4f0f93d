//! [`NodeLayers`]: the snapshotter's remote layers, served by the node's layer views (one shared FUSE mount
//! per image, see [`clip_node::Node::layer_dir`]). It counts the layers each mount serves to snapshots:
//! the last one released unmounts the image's views; on start, the views of existing remote snapshots are
//! mounted again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clip_node::{layers_mount_of, remount_layers, unmount_layers, Node};
use clip_snapshotter::{LayerRequest, RemoteLayers};
use tracing::{info, warn};

/// Remote layers from the node's layer views.
pub struct NodeLayers {
    node: Node,
    clip_exe: PathBuf,
    runtime: tokio::runtime::Handle,
    /// Per shared mount (`mounts/<key>-layers`): the layer directories snapshots use. Held across a
    /// Prepare, so one image is mounted once.
    in_use: Mutex<BTreeMap<PathBuf, BTreeSet<PathBuf>>>,
}

impl NodeLayers {
    pub fn new(node: Node, clip_exe: PathBuf, runtime: tokio::runtime::Handle) -> NodeLayers {
        NodeLayers { node, clip_exe, runtime, in_use: Mutex::default() }
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, BTreeSet<PathBuf>>> {
        self.in_use.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RemoteLayers for NodeLayers {
    fn prepare(&self, layer: &LayerRequest) -> Option<PathBuf> {
        let (Some(image), Some(digest)) = (&layer.image_ref, &layer.layer_digest) else {
            info!(target = %layer.target, "layer not lazy: the Prepare names no image or layer digest");
            return None;
        };
        let mut in_use = self.in_use();
        match self.runtime.block_on(self.node.layer_dir(image, digest)) {
            Ok(dir) => {
                if let Some(mount) = layers_mount_of(&dir) {
                    in_use.entry(mount.to_path_buf()).or_default().insert(dir.clone());
                }
                info!(%image, %digest, dir = %dir.display(), "layer served lazily");
                Some(dir)
            }
            Err(error) => {
                let reason = clip_source::error_chain(&error);
                warn!(%image, %digest, %reason, "layer not served lazily: containerd downloads it");
                None
            }
        }
    }

    fn release(&self, dir: &Path) {
        let Some(mount) = layers_mount_of(dir) else { return };
        let mut in_use = self.in_use();
        let unused = in_use.get_mut(mount).map(|dirs| {
            dirs.remove(dir);
            dirs.is_empty()
        });
        if unused != Some(false) {
            in_use.remove(mount);
            info!(mount = %mount.display(), "no snapshot uses the image's layers: unmounting its views");
            if let Err(error) = unmount_layers(mount) {
                warn!(mount = %mount.display(), error = &error as &dyn std::error::Error, "unmounting layer views");
            }
        }
    }

    fn resume(&self, dirs: &[PathBuf]) {
        let mut in_use = self.in_use();
        for dir in dirs {
            if let Some(mount) = layers_mount_of(dir) {
                in_use.entry(mount.to_path_buf()).or_default().insert(dir.clone());
            }
        }
        for (mount, layers) in in_use.iter() {
            match remount_layers(mount, &self.clip_exe) {
                Ok(true) => info!(mount = %mount.display(), layers = layers.len(), "layer views mounted again"),
                Ok(false) => info!(mount = %mount.display(), layers = layers.len(), "layer views still mounted"),
                Err(error) => {
                    warn!(mount = %mount.display(), error = &error as &dyn std::error::Error, "mounting layer views again")
                }
            }
        }
    }
}
