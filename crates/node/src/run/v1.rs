//! `clip_version = 1`: the whole image, fetched and unpacked like `umoci unpack` (through its index: every
//! span of every layer is read once), packed into a data-carrying archive `STATE_DIR/v1/<key>.clip`, which
//! is then mounted like any other archive. Built once per image; later runs reuse the archive. The
//! runtime config comes from the image's index (the archive's own metadata names the unpacked directory).

use std::path::{Path, PathBuf};

use clip_format::Archive;
use tracing::{info, warn};

use crate::run::store::StoredIndex;
use crate::run::NodeError;
use clip_image::{extract, open_archive, pack, OpenOptions, PackConfig};

/// The v1 archive of the image behind `index`, built now when the state directory has none.
pub async fn ensure_archive(state_dir: &Path, index: &StoredIndex, open: &OpenOptions) -> Result<PathBuf, NodeError> {
    let dir = state_dir.join("v1");
    let out = dir.join(format!("{}.clip", index.key));
    if out.exists() {
        match Archive::open(&out) {
            Ok(_) => {
                info!(archive = %out.display(), "cache hit: v1 archive in the local store");
                return Ok(out);
            }
            Err(error) => {
                warn!(archive = %out.display(), error = &error as &dyn std::error::Error, "unreadable v1 archive; building it again")
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(NodeError::io(&dir, "creating the v1 archive store"))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{}.unpack.", index.key))
        .tempdir_in(&dir)
        .map_err(NodeError::io(&dir, "creating a scratch directory"))?;
    let rootfs = scratch.path().join("rootfs");
    info!(index = %index.path.display(), rootfs = %rootfs.display(), "cache miss: v1 archive, unpacking the whole image");
    let opened = open_archive(&index.path, open).await?;
    let stats = extract(&opened, &rootfs, None).await?;
    let config = PackConfig { scratch_dir: scratch.path().to_path_buf(), ..PackConfig::default() };
    let packing_root = rootfs.clone();
    let mut packed = tokio::task::spawn_blocking(move || pack(&packing_root, &config, None))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??;
    let size = packed.write_archive(&out)?;
    info!(archive = %out.display(), files = stats.files, bytes = stats.bytes, size, "v1 archive packed");
    Ok(out)
}
