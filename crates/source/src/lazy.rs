//! [`connect_lazily`]: a [`BlobSource`] that connects (TLS roots, credentials, the registry's auth ping)
//! on its first read instead of up front. A mount whose disk cache already holds what it reads never pays
//! for it, nor waits on the registry's round trip before it comes up.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::OnceCell;

use crate::{connect, BlobSource, BlobStream, Descriptor, ImageRef, SourceError, SourceOptions, SourceStats};

/// A source for `reference` that connects on first use (see the module docs). A failed connect is
/// returned by the read that started it and tried again by the next read.
pub fn connect_lazily(reference: &ImageRef, opts: &SourceOptions) -> Arc<dyn BlobSource> {
    Arc::new(LazySource { reference: reference.clone(), opts: opts.clone(), source: OnceCell::new() })
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
