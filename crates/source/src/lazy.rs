//! [`connect_lazily`]: a [`BlobSource`] that connects (TLS roots, credentials, the registry's auth ping)
//! in the background instead of up front: a mount whose disk cache already holds what it reads comes up
//! without waiting for the registry, and a first read that needs the registry waits for the connect in
//! flight (or starts one).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::OnceCell;
use tracing::debug;

use crate::{connect, BlobSource, BlobStream, Descriptor, ImageRef, SourceError, SourceOptions, SourceStats};

/// A source for `reference` that starts connecting in the background on the current tokio runtime (if
/// any) and is ready for reads at once (see the module docs). A failed connect is logged at debug level
/// and returned by the reads waiting for it; the next read tries again.
pub fn connect_lazily(reference: &ImageRef, opts: &SourceOptions) -> Arc<dyn BlobSource> {
    let source = Arc::new(LazySource { reference: reference.clone(), opts: opts.clone(), source: OnceCell::new() });
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        // On a blocking thread: loading the TLS roots reads files, and must not hold up a runtime worker.
        let (early, handle) = (Arc::clone(&source), rt.clone());
        drop(rt.spawn_blocking(move || {
            handle.block_on(async move {
                if let Err(error) = early.source().await {
                    debug!(image = %early.reference, error = &error as &dyn std::error::Error, "connecting ahead of reads");
                }
            })
        }));
    }
    source
}

struct LazySource {
    reference: ImageRef,
    opts: SourceOptions,
    source: OnceCell<Arc<dyn BlobSource>>,
}

impl LazySource {
    async fn source(&self) -> Result<&Arc<dyn BlobSource>, SourceError> {
        self.source.get_or_try_init(|| connect(&self.reference, &self.opts)).await
    }
}

impl BlobSource for LazySource {
    fn open_blob<'a>(&'a self, desc: &'a Descriptor) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        async move { self.source().await?.open_blob(desc).await }.boxed()
    }

    fn read_checked_range<'a>(
        &'a self,
        desc: &'a Descriptor,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        async move { self.source().await?.read_checked_range(desc, range).await }.boxed()
    }

    fn describe(&self) -> String {
        match self.source.get() {
            Some(source) => source.describe(),
            None => format!("{} (connects on first read)", self.reference),
        }
    }

    fn stats(&self) -> SourceStats {
        self.source.get().map(|s| s.stats()).unwrap_or_default()
    }
}
