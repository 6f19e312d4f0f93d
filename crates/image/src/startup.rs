//! Adding the startup set to an index just written ([`add_startup_set`]): the index is opened, the files its
//! image's entrypoint opens first are found by [`clip_indexer::startup::startup_set`], reading their
//! headers through a content store over the same source the layers were indexed from (each span verified
//! as a mount would), and what opening each Python module or shared object loads next by
//! [`clip_indexer::startup::next_files`] (from what the indexing read as the layers streamed; only the
//! image's `ld.so.cache` is read); both are added to the file, as its `STRT` and `NEXT` sections.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use clip_format::{Archive, DataRef};
use clip_indexer::startup::{next_files, startup_set, FileBytes, KnownLoads, ReadError};
use clip_source::BlobSource;
use clip_store::{ContentStore, SourceBlobs, StoreConfig};
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, warn};

use crate::ImageError;

/// Reads file bytes through a [`ContentStore`] (for [`clip_indexer::startup`]'s searches).
pub struct StoreBytes(pub Arc<ContentStore>);

impl FileBytes for StoreBytes {
    fn read<'a>(&'a self, data: DataRef, offset: u64, len: u64) -> BoxFuture<'a, Result<Vec<u8>, ReadError>> {
        async move { self.0.look(data, offset, len).await.map_err(|e| Box::new(e) as ReadError) }.boxed()
    }
}

/// Finds the startup set of the index at `path` (its layers read from `source`) and what its files load
/// next (from what `loads` says they import and name), and rewrites the file with them; returns how many
/// files the set holds. What cannot be found or added is logged and left out (the index is right without
/// it), so this never fails the indexing.
pub(crate) async fn add_startup_set(path: &Path, source: Arc<dyn BlobSource>, loads: &KnownLoads) -> usize {
    match try_add(path, source, loads).await {
        Ok(files) => files,
        Err(error) => {
            warn!(path = %path.display(), error = &error as &dyn std::error::Error, "adding the startup set failed; the index has none");
            0
        }
    }
}

async fn try_add(path: &Path, source: Arc<dyn BlobSource>, loads: &KnownLoads) -> Result<usize, ImageError> {
    let archive = Arc::new(Archive::open(path).map_err(ImageError::format(path))?);
    let blobs = Arc::new(SourceBlobs::new(&archive, source));
    // Only what `loads` lacks is read (the loader's cache; headers of files the parts know nothing of): no
    // readahead, no loads of whole files, nothing kept on disk.
    let config = StoreConfig { cache_dir: None, readahead_spans: 0, open_prefetch_max: 0, ..StoreConfig::default() };
    let files = StoreBytes(Arc::new(ContentStore::new(archive.clone(), blobs, config)));
    // Together: resolving what files load next is CPU work that fits in the set's wait for the loader's cache.
    let (set, next) = futures::join!(startup_set(&archive, &files, loads), next_files(&archive, &files, loads));
    let stats = files.0.stats();
    debug!(
        files = set.len(),
        next = next.len(),
        spans = stats.spans_fetched,
        bytes = stats.bytes_fetched,
        "startup set and what files load next"
    );
    if set.is_empty() && next.is_empty() {
        return Ok(0);
    }
    crate::write_atomically(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        archive.write_with_startup(&set, &next, &mut w).map_err(ImageError::format(path))?;
        w.flush().map_err(ImageError::io(path, "writing the index"))
    })?;
    Ok(set.len())
}
