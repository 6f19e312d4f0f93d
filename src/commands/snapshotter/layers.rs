//! [`NodeLayers`]: the snapshotter's remote layers, served by the node's layer views (one shared FUSE mount
//! per image, see [`clip_node::Node::layer_dir`]). It counts the layers each mount serves to snapshots:
//! the last one released unmounts the image's views; on start, the views of existing remote snapshots are
//! mounted again. Locks are per image and per mount, so an image whose index is being built (or whose
//! registry is slow) never holds up the layers of another.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use clip_format::Digest;
use clip_node::{layers_mount_of, remount_layers, unmount_layers, LayerFallback, Node, NodeError, SnapshotterMetrics};
use clip_snapshotter::{LayerRequest, RemoteLayers};
use tracing::{info, warn};

/// Remote layers from the node's layer views.
pub struct NodeLayers {
    node: Node,
    clip_exe: PathBuf,
    runtime: tokio::runtime::Handle,
    /// One holder per image reference (finding or building its index) and per views mount (mounting,
    /// counting its users, unmounting).
    locks: KeyedLocks,
    /// Per shared mount (`mounts/<key>-layers`): the layer directories snapshots use.
    in_use: Mutex<BTreeMap<PathBuf, BTreeSet<PathBuf>>>,
    metrics: Arc<SnapshotterMetrics>,
}

impl NodeLayers {
    pub fn new(node: Node, clip_exe: PathBuf, runtime: tokio::runtime::Handle) -> NodeLayers {
        let (locks, in_use, metrics) = Default::default();
        NodeLayers { node, clip_exe, runtime, locks, in_use, metrics }
    }

    /// The counters of committed and declined layers.
    pub fn metrics(&self) -> Arc<SnapshotterMetrics> {
        self.metrics.clone()
    }

    /// The directories of the views mounts snapshots use now.
    pub fn mounts(&self) -> Vec<PathBuf> {
        self.in_use().keys().cloned().collect()
    }

    fn in_use(&self) -> MutexGuard<'_, BTreeMap<PathBuf, BTreeSet<PathBuf>>> {
        lock(&self.in_use)
    }

    /// The directory of `image`'s layer `digest`, its views mounted, counted as in use.
    fn serve(&self, image: &str, digest: &Digest) -> Result<PathBuf, NodeError> {
        let index = {
            let _image = self.locks.lock(&format!("image {image}"));
            self.runtime.block_on(self.node.layers_index(image))?
        };
        let mount = self.node.layers_mount(&index);
        let _mount = self.locks.lock(&format!("mount {}", mount.display()));
        let dir = self.runtime.block_on(self.node.layer_dir(image, &index, digest))?;
        self.in_use().entry(mount).or_default().insert(dir.clone());
        Ok(dir)
    }
}

impl RemoteLayers for NodeLayers {
    fn prepare(&self, layer: &LayerRequest) -> Option<PathBuf> {
        let (Some(image), Some(label)) = (&layer.image_ref, &layer.layer_digest) else {
            self.metrics.fell_back(LayerFallback::Unlabelled);
            info!(target = %layer.target, "layer not lazy: the Prepare names no image or layer digest");
            return None;
        };
        let Ok(digest) = label.parse::<Digest>() else {
            // clip indexes sha256 layers only: no index can hold this one.
            self.metrics.fell_back(LayerFallback::NoSuchLayer);
            info!(%image, digest = %label, "layer not lazy: its digest is not a sha256 digest");
            return None;
        };
        match self.serve(image, &digest) {
            Ok(dir) => {
                info!(%image, %digest, dir = %dir.display(), "layer served lazily");
                Some(dir)
            }
            Err(error) => {
                let why = LayerFallback::of(&error);
                self.metrics.fell_back(why);
                let detail = clip_source::error_chain(&error);
                warn!(%image, %digest, reason = why.label(), %detail, "layer not served lazily: containerd downloads it");
                None
            }
        }
    }

    fn committed(&self, _layer: &LayerRequest, _dir: &Path) {
        self.metrics.committed();
    }

    fn release(&self, dir: &Path) {
        let Some(mount) = layers_mount_of(dir) else { return };
        let _mount = self.locks.lock(&format!("mount {}", mount.display()));
        let unused = {
            let mut in_use = self.in_use();
            let unused = in_use.get_mut(mount).map(|dirs| {
                dirs.remove(dir);
                dirs.is_empty()
            });
            if unused != Some(false) {
                in_use.remove(mount);
            }
            unused != Some(false)
        };
        if unused {
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

/// Locks by key: one holder per key at a time; holders of other keys never wait for it.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    /// Waits for `key` (on a blocking thread) and holds it until the guard drops.
    fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let entry = {
            let mut locks = lock(&self.0);
            // A lock nobody holds or waits for is only referenced by the map.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key.to_owned()).or_default().clone()
        };
        entry.blocking_lock_owned()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_digest_that_is_not_sha256_is_left_to_containerd_as_no_such_layer() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let node = Node::new(clip_node::config::Config::default(), PathBuf::from("/nonexistent/clip"));
        let layers = NodeLayers::new(node, PathBuf::from("/nonexistent/clip"), runtime.handle().clone());
        let request = |digest: &str| LayerRequest {
            target: "chain".into(),
            image_ref: Some("127.0.0.1:1/app:1".into()),
            layer_digest: Some(digest.into()),
            manifest_digest: None,
            parent: String::new(),
            labels: HashMap::new(),
        };
        assert_eq!(layers.prepare(&request(&format!("sha512:{}", "ab".repeat(64)))), None);
        assert_eq!(layers.prepare(&request("not a digest")), None);
        let text = runtime.block_on(layers.metrics().render(&[]));
        let line = text.lines().find(|l| l.contains("\"no_such_layer\"") && !l.starts_with('#'));
        assert!(line.is_some_and(|l| l.ends_with(" 2")), "{text}");
    }
}
