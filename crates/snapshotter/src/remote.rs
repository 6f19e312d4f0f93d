//! The seam for remote (lazy) layers. When containerd unpacks an image for a remote snapshotter (CRI with
//! `disable_snapshot_annotations = false`, `ctr-remote images rpull`, nerdctl), the Prepare of each layer
//! carries labels naming the snapshot it would commit (`containerd.io/snapshot.ref`, the layer's chain id)
//! and the layer itself (`containerd.io/snapshot/cri.*`; older `ctr-remote`s, like Debian 12's, name the
//! image and the layer in `containerd.io/snapshot/remote/stargz.*` labels instead). If a [`RemoteLayers`] can present that layer as
//! a directory, the snapshotter commits the snapshot as remote at once and answers `AlreadyExists`, and
//! containerd never downloads the layer (as stargz and SOCI do). Otherwise containerd downloads and
//! unpacks the layer into an ordinary snapshot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The name the layer's snapshot is to be committed under (its chain id).
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// The image reference (`registry/repo:tag`), as CRI and `ctr-remote` set it.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's (compressed) blob digest.
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The image manifest's digest.
pub const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The image reference as `ctr-remote images rpull` of stargz-snapshotter 0.12 (Debian 12's) sets it,
/// instead of [`LABEL_IMAGE_REF`].
pub const LABEL_STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
/// The layer digest as stargz-snapshotter 0.12's `ctr-remote` sets it, instead of [`LABEL_LAYER_DIGEST`].
pub const LABEL_STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// Marks a snapshot committed from a remote layer (containerd copies it into its own metadata).
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";

/// A layer containerd offers to skip: what the Prepare's labels say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRequest {
    /// The snapshot name to commit (the layer's chain id).
    pub target: String,
    /// The image reference, when the client said it.
    pub image_ref: Option<String>,
    /// The layer blob's digest, when the client said it.
    pub layer_digest: Option<String>,
    /// The image manifest's digest, when the client said it.
    pub manifest_digest: Option<String>,
    /// The parent snapshot (the layers below), empty for the bottom layer.
    pub parent: String,
    /// Every label of the Prepare.
    pub labels: HashMap<String, String>,
}

impl LayerRequest {
    /// The request a Prepare with these labels makes, or `None` when it names no target (a container's
    /// snapshot, or a client that unpacks itself).
    pub fn from_labels(parent: &str, labels: &HashMap<String, String>) -> Option<LayerRequest> {
        let target = labels.get(LABEL_TARGET).filter(|t| !t.is_empty())?.clone();
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(LayerRequest {
            target,
            image_ref: get(LABEL_IMAGE_REF).or_else(|| get(LABEL_STARGZ_REF)),
            layer_digest: get(LABEL_LAYER_DIGEST).or_else(|| get(LABEL_STARGZ_DIGEST)),
            manifest_digest: get(LABEL_MANIFEST_DIGEST),
            parent: parent.to_owned(),
            labels: labels.clone(),
        })
    }
}

/// Presents image layers as directories without downloading them.
///
/// Called from blocking threads: an implementation may take its time (find or build a layer's index,
/// mount it) and must be safe to call for several layers at once.
pub trait RemoteLayers: Send + Sync + 'static {
    /// The directory holding `layer`'s own tree as overlayfs takes a lower dir (whiteouts as 0/0 char
    /// devices, opaque directories with `trusted.overlay.opaque=y`), or `None` to let containerd
    /// download and unpack the layer (the implementation logs why).
    fn prepare(&self, layer: &LayerRequest) -> Option<PathBuf>;

    /// `layer` was committed as a remote snapshot served from `dir` (what [`RemoteLayers::prepare`]
    /// returned for it).
    fn committed(&self, layer: &LayerRequest, dir: &Path) {
        let _ = (layer, dir);
    }

    /// No snapshot uses `dir` (a directory [`RemoteLayers::prepare`] returned) any more: the last one
    /// was removed, or the commit of the layer it was prepared for failed.
    fn release(&self, dir: &Path) {
        let _ = dir;
    }

    /// The snapshotter (re)started with remote snapshots served from `dirs` (each once): bring back
    /// whatever serves them.
    fn resume(&self, dirs: &[PathBuf]) {
        let _ = dirs;
    }
}

/// No remote layers: every layer is downloaded and unpacked by containerd.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRemoteLayers;

impl RemoteLayers for NoRemoteLayers {
    fn prepare(&self, _layer: &LayerRequest) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepare_names_a_layer_only_with_a_target() {
        let mut labels = HashMap::from([(LABEL_LAYER_DIGEST.to_owned(), "sha256:ab".to_owned())]);
        assert_eq!(LayerRequest::from_labels("", &labels), None);
        labels.insert(LABEL_TARGET.to_owned(), "sha256:chain".to_owned());
        let req = LayerRequest::from_labels("p", &labels).unwrap();
        assert_eq!(req.target, "sha256:chain");
        assert_eq!(req.layer_digest.as_deref(), Some("sha256:ab"));
        assert_eq!(req.image_ref, None);
        assert_eq!(req.parent, "p");
    }

    #[test]
    fn stargz_labels_name_the_image_and_layer_when_cri_labels_are_absent() {
        let labels = HashMap::from([
            (LABEL_TARGET.to_owned(), "sha256:chain".to_owned()),
            (LABEL_STARGZ_REF.to_owned(), "127.0.0.1:5000/app:1".to_owned()),
            (LABEL_STARGZ_DIGEST.to_owned(), "sha256:old".to_owned()),
        ]);
        let req = LayerRequest::from_labels("", &labels).unwrap();
        assert_eq!(req.image_ref.as_deref(), Some("127.0.0.1:5000/app:1"));
        assert_eq!(req.layer_digest.as_deref(), Some("sha256:old"));
        let mut cri = labels.clone();
        cri.insert(LABEL_LAYER_DIGEST.to_owned(), "sha256:cri".to_owned());
        assert_eq!(LayerRequest::from_labels("", &cri).unwrap().layer_digest.as_deref(), Some("sha256:cri"));
    }
}
