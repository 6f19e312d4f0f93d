//! [`PartStore`]: where layer parts are kept between indexing runs, so an image whose layers were indexed
//! before (as part of any image) costs only its new layers. The indexer asks it before reading a layer and
//! gives it every layer it reads; implementations (a local directory, an S3 bucket) live with the client.

use futures::future::BoxFuture;

use clip_format::LayerPart;

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
