//! The cheap check before a v2 mount: a v2 mount reads file bytes with HTTP Range requests, so a registry
//! that ignores `Range` (answers `200` with the whole blob) would make every cold read download a layer
//! from its start. Before mounting an index, each of its layer blobs is asked for its first byte
//! ([`clip_source::RegistrySource::supports_range`]); a `200` is a reason to fall back to v1 (whole
//! blobs, downloaded once). Done only when the image's shared mount is not already live.

use clip_format::Archive;
use clip_source::{Descriptor, ImageRef, RegistrySource, SourceOptions};
use futures::future::join_all;
use tracing::{debug, warn};

use crate::run::StoredIndex;

/// Why the image behind `index` cannot be served lazily: `Some(reason)` when its registry answered a
/// Range request with the whole blob. Problems asking (an unreachable registry, a layout image) are not a
/// reason: they are logged and the mount is tried, which falls back on its own failure.
pub(crate) async fn range_refused(index: &StoredIndex, opts: &SourceOptions) -> Option<String> {
    let archive = match Archive::open(&index.path) {
        Ok(a) => a,
        Err(error) => {
            warn!(index = %index.path.display(), error = &error as &dyn std::error::Error, "cannot read the index to check the registry");
            return None;
        }
    };
    let meta = archive.meta();
    let Ok(ImageRef::Registry { registry, repository, .. }) = meta.source.parse::<ImageRef>() else {
        return None;
    };
    let source = match RegistrySource::connect(&registry, &repository, opts).await {
        Ok(s) => s,
        Err(error) => {
            warn!(%registry, error = &error as &dyn std::error::Error, "cannot check whether the registry serves byte ranges; mounting anyway");
            return None;
        }
    };
    let layers: Vec<Descriptor> = meta
        .layers
        .iter()
        .filter_map(|l| Some(Descriptor::new(l.media_type.clone(), l.digest.parse().ok()?, l.size)))
        .collect();
    let answers = join_all(layers.iter().map(|d| source.supports_range(d))).await;
    for (layer, answer) in layers.iter().zip(answers) {
        match answer {
            Ok(true) => {}
            Ok(false) => {
                return Some(format!(
                    "registry {registry} answered a Range request for layer {} with the whole blob (200, not 206): \
                     lazy reads would download whole layers",
                    layer.digest
                ))
            }
            Err(error) => {
                warn!(%registry, digest = %layer.digest, error = &error as &dyn std::error::Error, "range check failed; mounting anyway");
                return None;
            }
        }
    }
    debug!(%registry, layers = layers.len(), "registry serves byte ranges");
    None
}
