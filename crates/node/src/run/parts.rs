//! A node's layer parts: the store its indexes and layer views are built with ([`part_store`]:
//! `STATE_DIR/parts`, then those published with the image's index, then `PREFIX/parts/` of the S3 index
//! store when one is configured, so a fleet indexes each layer once), and
//! their collection ([`gc_parts`]: a part that no index of the local index store uses is removed).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use clip_format::{index_part_keys, Archive, ArchiveKind};
use clip_image::{DirParts, Parts, PublishedParts, S3Parts};
use clip_indexer::PartStore;
use clip_s3::S3Object;
use tracing::{info, warn};

use crate::config::PARTS_DIR;
use crate::run::{Lookup, NodeError};

/// `STATE_DIR/parts`, then the parts `published` with the image's index, then `PREFIX/parts/` under the S3
/// index store of `lookup` when it has one (an S3 configuration that cannot be used costs a warning: the
/// local directory still works).
pub(crate) fn part_store(state_dir: &Path, lookup: &Lookup, published: Option<PublishedParts>) -> Arc<dyn PartStore> {
    let local = DirParts::new(state_dir.join(PARTS_DIR));
    let remote = lookup.s3_index_store.as_ref().and_then(|url| match S3Object::open(url, &lookup.s3) {
        Ok(bucket) => Some(S3Parts::new(bucket, &url.key)),
        Err(error) => {
            warn!(store = %url, error = &error as &dyn std::error::Error, "layer parts are not shared through S3");
            None
        }
    });
    Arc::new(Parts { local, remote, published })
}

/// What [`gc_parts`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartsGc {
    /// Parts kept: some index of the local index store uses them.
    pub kept: usize,
    /// Parts removed, with their sizes in bytes.
    pub removed: Vec<(String, u64)>,
}

/// Removes every part of `STATE_DIR/parts` that no index in `STATE_DIR/indexes` uses (their layers give the
/// keys). An index that cannot be read is skipped with a warning (the store looks past it and rebuilds it);
/// a part removed by mistake only costs reading its layer again.
pub(crate) fn gc_parts(state_dir: &Path) -> Result<PartsGc, NodeError> {
    let used = used_keys(&state_dir.join("indexes"))?;
    let parts = DirParts::new(state_dir.join(PARTS_DIR));
    let keys = parts.keys().map_err(NodeError::io(parts.dir(), "listing layer parts"))?;
    let mut report = PartsGc::default();
    for key in keys {
        if used.contains(&key) {
            report.kept += 1;
            continue;
        }
        let path = parts.path(&key);
        let bytes = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(NodeError::io(&path, "removing an unused layer part")(e)),
        }
        info!(part = %path.display(), bytes, "removed a layer part no index uses");
        report.removed.push((key, bytes));
    }
    Ok(report)
}

/// The part keys of every readable index-only archive in `indexes`.
fn used_keys(indexes: &Path) -> Result<BTreeSet<String>, NodeError> {
    let entries = match std::fs::read_dir(indexes) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(NodeError::io(indexes, "listing the index store")(e)),
    };
    let mut used = BTreeSet::new();
    for entry in entries {
        let path = entry.map_err(NodeError::io(indexes, "listing the index store"))?.path();
        if path.extension().is_none_or(|e| e != "clip") {
            continue;
        }
        match Archive::open(&path) {
            Ok(archive) if archive.kind() == ArchiveKind::IndexOnly => used.extend(index_part_keys(archive.meta())),
            Ok(_) => {}
            Err(error) => {
                warn!(index = %path.display(), error = &error as &dyn std::error::Error, "unreadable index: its parts are not kept for it")
            }
        }
    }
    Ok(used)
}
