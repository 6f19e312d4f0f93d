//! [`PartStore`]: where layer parts are kept between indexing runs, so an image whose layers were indexed
//! before (as part of any image) costs only its new layers. The indexer asks it before reading a layer and
//! gives it every layer it reads; implementations (a local directory, an S3 bucket) live with the client.

use clip_format::{part_key, LayerIndex, LayerPart};
use clip_source::{Descriptor, Digest};
use futures::future::BoxFuture;
use tracing::{debug, warn};

use crate::IndexOptions;

/// Why a part store could not answer (the indexer logs it and reads the layer instead).
#[derive(Debug, thiserror::Error)]
#[error("layer part store {store}: {what}")]
pub struct PartStoreError {
    /// The store, as [`PartStore::describe`] names it.
    pub store: String,
    /// What failed, e.g. `reading part sha256-…`.
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Keeps [`LayerPart`]s by [`clip_format::part_key`].
pub trait PartStore: Send + Sync {
    /// The part kept under `key`, or None when there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<LayerPart>, PartStoreError>>;

    /// Keep `part` under [`LayerPart::key`] (replacing one kept before).
    fn put<'a>(&'a self, part: &'a LayerPart) -> BoxFuture<'a, Result<(), PartStoreError>>;

    /// A name for logs, e.g. `directory /var/lib/clip/parts`.
    fn describe(&self) -> String;
}

/// Layer `layer`'s part from the part store, when reuse is on and the store has a part that is this layer's
/// (same blob, span size and diff_id). A store that fails is logged and the layer read instead.
pub(crate) async fn reused_part(
    layer: LayerIndex,
    desc: &Descriptor,
    diff_id: &Digest,
    opts: &IndexOptions,
) -> Option<LayerPart> {
    let store = opts.parts.as_ref().filter(|_| opts.reuse)?;
    let key = part_key(&desc.digest, opts.span_size);
    let part = match store.get(&key).await {
        Ok(part) => part?,
        Err(err) => {
            warn!(%layer, digest = %desc.digest, "{}; reading the layer instead", clip_source::error_chain(&err));
            return None;
        }
    };
    let m = &part.meta;
    let same = m.digest == desc.digest && m.size == desc.size && m.span_size == opts.span_size && m.diff_id == *diff_id;
    if !same {
        warn!(%layer, digest = %desc.digest, key, "the part kept for this layer describes another layer; reading the layer instead");
        return None;
    }
    debug!(%layer, digest = %desc.digest, "layer part reused");
    if let Some(p) = &opts.progress {
        p.layer_reused(layer, desc);
    }
    Some(part)
}

/// Keeps a freshly read layer's part in the part store (a failure is logged: the index is still right).
pub(crate) async fn keep_part(part: &LayerPart, opts: &IndexOptions) {
    let Some(store) = &opts.parts else { return };
    if let Err(err) = store.put(part).await {
        warn!(digest = %part.meta.digest, "{}; the layer will be read again next time", clip_source::error_chain(&err));
    }
}
