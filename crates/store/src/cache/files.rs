//! File-system helpers of the disk cache: temp files renamed into place ([`TempFile`]), the private cache
//! directory, its default location, span file names and opening a span file in either of its forms.

use clip_format::Digest;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tracing::debug;

use super::compressed::{self, Unusable};
use super::{DiskCache, COMPRESSED_SUFFIX, SPANS_DIR};
use crate::lock;

pub(super) const TMP_PREFIX: &str = ".tmp-";

/// A file being written; removed on drop unless published.
pub(crate) struct TempFile {
    path: PathBuf,
    pub file: File,
    published: bool,
}

impl TempFile {
    /// Renames the file to `to` (atomically replacing any file there).
    pub fn publish(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or makes an existing one 0700 when others may enter
/// it (made by an older clip, or by hand). Returns the mode it had when it was made private, `None` when
/// it already was.
pub fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode & 0o7777))
}

impl DiskCache {
    /// A new temp file in `dir` (created if missing).
    pub(crate) fn temp_file(&self, dir: &Path) -> io::Result<TempFile> {
        fs::create_dir_all(dir)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).mode(super::seal::UNSEALED).open(&path)?;
        Ok(TempFile { path, file, published: false })
    }
}

/// How a span is kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Its bytes as they are, `spans/ab/HEX`: read by range with one `pread`.
    Raw,
    /// Zstd frames and their table, `spans/ab/HEX.zst` (see `compressed`).
    Compressed,
}

/// A span file, open.
pub(super) struct SpanFile {
    pub file: File,
    pub meta: fs::Metadata,
    pub form: Form,
    pub path: PathBuf,
}

impl SpanFile {
    /// Bytes `range` of the span's `len` bytes (inflated, for a compressed file).
    pub fn read(&self, len: u64, range: Range<u64>) -> Result<Vec<u8>, Unusable> {
        if self.form == Form::Compressed {
            return compressed::read_range(&self.file, self.meta.len(), len, range);
        }
        if self.meta.len() != len {
            return Err(Unusable::Damaged("wrong length"));
        }
        let n = usize::try_from(range.end - range.start).map_err(io::Error::other)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(n).map_err(io::Error::other)?;
        buf.resize(n, 0);
        match self.file.read_exact_at(&mut buf, range.start) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Unusable::Damaged("shorter than it was")),
            done => done.map(|()| buf).map_err(Unusable::Io),
        }
    }
}

impl DiskCache {
    /// The path of the span whose bytes hash to `digest`, kept raw (see [`DiskCache::span_file`]).
    pub fn span_path(&self, digest: &Digest) -> PathBuf {
        self.span_file(digest, Form::Raw)
    }

    /// The path of the span whose bytes hash to `digest`, kept in `form`.
    pub(crate) fn span_file(&self, digest: &Digest, form: Form) -> PathBuf {
        let name = digest.hex();
        let dir = self.root.join(SPANS_DIR).join(&name[..2]);
        match form {
            Form::Raw => dir.join(name),
            Form::Compressed => dir.join(name + COMPRESSED_SUFFIX),
        }
    }

    /// The span file of `digest`, open: in the form this process verified it in, else whichever exists.
    pub(super) fn open_span(&self, digest: &Digest) -> Option<SpanFile> {
        let order = match lock(&self.verified).get(digest) {
            Some(Form::Compressed) => [Form::Compressed, Form::Raw],
            _ => [Form::Raw, Form::Compressed],
        };
        for form in order {
            let path = self.span_file(digest, form);
            match File::open(&path) {
                Ok(file) => {
                    let meta = file.metadata().ok()?;
                    return Some(SpanFile { file, meta, form, path });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "disk cache file unreadable");
                    return None;
                }
            }
        }
        None
    }
}

/// Where the disk cache lives by default: `/var/cache/clip` for root, else `$XDG_CACHE_HOME/clip` or
/// `~/.cache/clip` (`$TMPDIR/clip-cache` when there is no home directory either).
pub fn default_cache_dir() -> PathBuf {
    if effective_uid() == Some(0) {
        return PathBuf::from("/var/cache/clip");
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return xdg.join("clip");
    }
    match std::env::var_os("HOME").and_then(absolute) {
        Some(home) => home.join(".cache").join("clip"),
        None => std::env::temp_dir().join("clip-cache"),
    }
}

pub(crate) fn parse_digest(hex_name: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    (hex_name.len() == 64 && hex::decode_to_slice(hex_name, &mut d).is_ok()).then_some(Digest::from_sha256(d))
}

/// Marks a cache file as just used (its mtime is the LRU clock; atime is often not kept).
pub(crate) fn touch(file: &File) {
    let _ = file.set_modified(SystemTime::now());
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_absolute_and_named_clip() {
        let dir = default_cache_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with("clip") || dir.ends_with("clip-cache"), "{}", dir.display());
        assert_eq!(effective_uid() == Some(0), dir == Path::new("/var/cache/clip"));
    }
}
