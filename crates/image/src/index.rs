//! [`index_to_file`]: an image, resolved, indexed in one pass over its layers and written to a `.clip` file
//! with [`crate::write_atomically`] (what `clip index` and a node building a missing index both do), then
//! given its startup set (see `startup`).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use clip_indexer::{index_image, IndexOptions};
use clip_source::{BlobSource, ResolvedImage};

use crate::ImageError;

/// What [`index_to_file`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Size of the `.clip` file in bytes.
    pub size: u64,
    pub layers: usize,
    pub inodes: usize,
    pub spans: usize,
    /// Files in the index's startup set (0: the image's entrypoint was not found, or it has none).
    pub startup_files: usize,
}

/// Indexes `image` (resolved from the reference `name`) reading its layers from `source`, and writes the
/// index to `path` atomically, creating its directory when missing.
pub async fn index_to_file(
    name: &str,
    image: &ResolvedImage,
    source: Arc<dyn BlobSource>,
    opts: &IndexOptions,
    path: &Path,
) -> Result<Written, ImageError> {
    let source_for_set = source.clone();
    let (contents, loads) = index_image(image, source, opts)
        .await
        .map_err(|e| ImageError::Index { image: name.to_owned(), source: Box::new(e) })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(ImageError::io(dir, "creating the index's directory"))?;
    }
    let size = crate::write_atomically(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        let size = clip_format::write_index(&contents, &mut w).map_err(ImageError::format(path))?;
        w.flush().map_err(ImageError::io(path, "writing the index"))?;
        Ok(size)
    })?;
    let (layers, inodes, spans) = (contents.meta.layers.len(), contents.inodes(), contents.spans.len());
    drop(contents);
    tracing::debug!(path = %path.display(), size, "index written");
    let startup_files = crate::startup::add_startup_set(path, source_for_set, &loads).await;
    // Rewritten when a set or what files load next was found.
    let size = std::fs::metadata(path).map_or(size, |m| m.len());
    Ok(Written { size, layers, inodes, spans, startup_files })
}
