//! Putting archives where they are used: [`archive`] packs a tree and writes it to a local file or uploads
//! it to S3 (optionally leaving a local metadata copy), [`push`] uploads an existing `.clip` file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip_format::Archive;
use clip_s3::{S3Object, S3Options, S3Url};
use tracing::info;

use super::{pack, PackConfig, PackSummary};
use crate::{ImageError, Location};

/// How [`archive`] packs and where it puts the result.
#[derive(Debug, Clone, Default)]
pub struct ArchiveOptions {
    pub pack: PackConfig,
    /// Also write a metadata-only copy here whose data is read from the archive's location.
    pub index_out: Option<PathBuf>,
    pub s3: S3Options,
}

/// Progress of [`archive`] and [`push`]; every method has an empty default.
pub trait ArchiveProgress: Send + Sync {
    /// Files and bytes read from the tree so far.
    fn packing(&self, _files: u64, _bytes: u64) {}
    /// The archive is being written (local) or uploaded (S3) and has `total` bytes.
    fn writing(&self, _total: u64) {}
    /// Bytes uploaded so far.
    fn uploaded(&self, _sent: u64) {}
}

/// What [`archive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveReport {
    pub summary: PackSummary,
    /// Size of the archive written or uploaded.
    pub archive_size: u64,
    /// Size of the metadata copy, when one was written.
    pub index_size: Option<u64>,
}

/// Packs `root` into a data-carrying archive at `target`: a local file (see [`crate::write_atomically`]), or an S3
/// object (staged in `opts.pack.scratch_dir`, uploaded, then removed). Checks the S3 configuration before
/// reading the tree.
pub async fn archive(
    root: &Path,
    target: &Location,
    opts: &ArchiveOptions,
    progress: Option<Arc<dyn ArchiveProgress>>,
) -> Result<ArchiveReport, ImageError> {
    // Outputs that would be refused are refused before the tree is read.
    let object = match target {
        Location::S3(url) => Some(S3Object::open(url, &opts.s3)?),
        Location::Local(path) => {
            crate::check_output(path)?;
            None
        }
    };
    if let Some(out) = &opts.index_out {
        crate::check_output(out)?;
    }
    let (root_buf, config, p) = (root.to_path_buf(), opts.pack.clone(), progress.clone());
    let mut packed = tokio::task::spawn_blocking(move || {
        let report = |files, bytes| {
            if let Some(p) = &p {
                p.packing(files, bytes);
            }
        };
        pack(&root_buf, &config, Some(&report))
    })
    .await
    .map_err(|e| ImageError::Task(e.to_string()))??;
    let summary = packed.summary();

    let (archive_size, packed) = match (target, object) {
        (Location::Local(path), _) => {
            let path = path.clone();
            if let Some(p) = &progress {
                p.writing(summary.stored_bytes);
            }
            blocking(move || packed.write_archive(&path).map(|size| (size, packed))).await?
        }
        (Location::S3(_), Some(object)) => {
            let stage = tempfile::Builder::new()
                .prefix(".clip-archive-")
                .tempdir_in(&opts.pack.scratch_dir)
                .map_err(ImageError::io(&opts.pack.scratch_dir, "creating a staging directory"))?;
            let file = stage.path().join("archive.clip");
            let f = file.clone();
            let (size, packed) = blocking(move || packed.write_archive(&f).map(|size| (size, packed))).await?;
            if let Some(p) = &progress {
                p.writing(size);
            }
            upload(&object, &file, progress.as_deref()).await?;
            drop(stage);
            (size, packed)
        }
        (Location::S3(url), None) => unreachable!("S3 target {url} without an object"),
    };
    let index_size = match &opts.index_out {
        Some(out) => {
            let data_location = match target {
                Location::Local(path) => std::path::absolute(path)
                    .map_err(ImageError::io(path, "resolving the archive path"))?
                    .display()
                    .to_string(),
                Location::S3(url) => url.to_string(),
            };
            let out = out.clone();
            Some(blocking(move || packed.write_metadata_copy(&out, &data_location)).await?)
        }
        None => None,
    };
    info!(root = %root.display(), %target, archive_size, ?index_size, "archived");
    Ok(ArchiveReport { summary, archive_size, index_size })
}

/// Uploads the `.clip` file `file` to `url` (checked to be a `.clip` file first). Returns its size.
pub async fn push(
    file: &Path,
    url: &S3Url,
    opts: &S3Options,
    progress: Option<&dyn ArchiveProgress>,
) -> Result<u64, ImageError> {
    Archive::open(file).map_err(|source| ImageError::NotAnArchive { path: file.to_path_buf(), source })?;
    let object = S3Object::open(url, opts)?;
    if let Some(p) = progress {
        p.writing(std::fs::metadata(file).map_err(ImageError::io(file, "reading size"))?.len());
    }
    upload(&object, file, progress).await
}

async fn upload(object: &S3Object, file: &Path, progress: Option<&dyn ArchiveProgress>) -> Result<u64, ImageError> {
    let report = |sent: u64| {
        if let Some(p) = progress {
            p.uploaded(sent);
        }
    };
    Ok(object.upload_file(file, Some(&report)).await?)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Task(e.to_string()))?
}
