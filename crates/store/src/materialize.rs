//! Whole files for FUSE passthrough: [`ContentStore::cached_file`] hands out a local file holding exactly
//! a regular file's bytes, assembled from verified spans in the disk cache (the `files/` area, see
//! [`crate::cache`]). The copy is written a span slice at a time (read through the disk cache's own span
//! reads), so memory stays bounded by the span size whatever the file size.
//! A copy is hashed the first time a process uses it unless it is sealed (see `cache::seal`): a sealed copy
//! is handed out at once. Which copies a process has checked is remembered for at most
//! [`MAX_VERIFIED_FILES`] files, so memory does not grow with the number of files opened.

use clip_format::Digest;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use clip_format::{Archive, DataRef, SpanSlice};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use crate::cache::{is_sealed, on_disk, parse_digest, touch, DiskCache, FILES_DIR};
use crate::{lock, ContentStore, StoreError};

const CHUNK: usize = 64 * 1024;
/// Materialized files whose check this process remembers; more are forgotten (a sealed file costs one
/// directory read to find again, an unsealed one a hash).
const MAX_VERIFIED_FILES: usize = 4096;

/// The slice `[from, to)` of a span of `span_len` bytes whose digest is `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilePart {
    pub digest: Digest,
    pub span_len: u64,
    pub from: u64,
    pub to: u64,
}

/// The span slices that make up the file at `data`, in order.
pub(crate) fn file_parts(archive: &Archive, data: DataRef) -> Result<Vec<FilePart>, StoreError> {
    let mut parts = Vec::new();
    for slice in archive.file_spans(data, 0..data.size) {
        let SpanSlice { span, span_range, within } = slice?;
        parts.push(FilePart {
            digest: archive.span(span)?.digest,
            span_len: span_range.end - span_range.start,
            from: within.start,
            to: within.end,
        });
    }
    Ok(parts)
}

/// What names a materialized file: its size and the span slices it is made of (so it is the same for
/// identical files of different layers or images, and different whenever the bytes could differ).
pub(crate) fn file_key(parts: &[FilePart], size: u64) -> Digest {
    let mut h = Sha256::new();
    h.update(b"clip-file-v1\0");
    h.update(size.to_le_bytes());
    for p in parts {
        h.update(p.digest.as_bytes());
        h.update(p.from.to_le_bytes());
        h.update(p.to.to_le_bytes());
    }
    Digest::from_sha256(h.finalize().into())
}

impl DiskCache {
    /// The materialized file `key` of `size` bytes, if present and valid (verified once per process).
    pub(crate) fn find_file(&self, key: &Digest, size: u64) -> Option<File> {
        let known = lock(&self.verified_files).get(key).cloned();
        if let Some(path) = known {
            match File::open(&path) {
                Ok(f) => {
                    touch(&f);
                    return Some(f);
                }
                Err(_) => {
                    lock(&self.verified_files).remove(key);
                }
            }
        }
        let key_hex = key.hex();
        let shard = self.dir().join(FILES_DIR).join(&key_hex[..2]);
        for entry in fs::read_dir(shard).ok()?.flatten() {
            let name = entry.file_name();
            let Some(content) = name.to_str().and_then(|n| n.strip_prefix(key_hex.as_str())?.strip_prefix('.')) else {
                continue;
            };
            let Some(expected) = parse_digest(content) else { continue };
            let path = entry.path();
            let Ok(file) = File::open(&path) else { continue };
            let sealed = file.metadata().is_ok_and(|m| m.len() == size && is_sealed(&m));
            let checked = if sealed { Ok((size, expected)) } else { hash_file(&path) };
            match checked {
                Ok((len, actual)) if len == size && actual == expected => {
                    touch(&file);
                    if !sealed {
                        self.seal(path.clone());
                    }
                    self.remember_file(key, path);
                    return Some(file);
                }
                Ok((len, _)) => self.reject(&path, None, len, "materialized file does not match its name"),
                Err(e) => debug!(path = %path.display(), error = %e, "materialized file unreadable"),
            }
        }
        None
    }

    /// Assembles file `key` from the cached spans `parts`; `None` when a span is missing or invalid (an
    /// invalid span file is deleted) or the file cannot be written.
    pub(crate) fn build_file(self: &Arc<Self>, key: &Digest, parts: &[FilePart], size: u64) -> Option<File> {
        if size > self.limit() {
            return None;
        }
        let key_hex = key.hex();
        let shard = self.dir().join(FILES_DIR).join(&key_hex[..2]);
        let mut tmp = self
            .temp_file(&shard)
            .inspect_err(|e| debug!(dir = %shard.display(), error = %e, "cannot materialize a file"))
            .ok()?;
        let mut content = Sha256::new();
        let mut written = 0u64;
        for part in parts {
            let out = &mut |bytes: &[u8]| -> io::Result<()> {
                content.update(bytes);
                written += bytes.len() as u64;
                tmp.file.write_all(bytes)
            };
            if !self.copy_part(part, out)? {
                return None;
            }
        }
        if written != size {
            debug!(written, size, "materialized file has the wrong size; not used");
            return None;
        }
        let path = shard.join(format!("{key_hex}.{}", hex::encode(content.finalize())));
        tmp.publish(&path).inspect_err(|e| debug!(path = %path.display(), error = %e, "cannot publish")).ok()?;
        self.remember_file(key, path.clone());
        self.seal(path.clone());
        self.added(on_disk(size));
        debug!(path = %path.display(), size, "materialized file for passthrough");
        File::open(&path).ok()
    }

    /// Remembers that the materialized file `key` at `path` was checked, forgetting all others when
    /// [`MAX_VERIFIED_FILES`] are remembered.
    fn remember_file(&self, key: &Digest, path: std::path::PathBuf) {
        let mut known = lock(&self.verified_files);
        if known.len() >= MAX_VERIFIED_FILES {
            *known = Default::default();
        }
        known.insert(*key, path);
    }

    /// Writes `part` of its span file to `out`: by range when the span is trusted (verified by this process,
    /// or sealed), else read whole and verified first, as [`DiskCache::get`] does (a span file that fails is
    /// deleted). `Some(false)` when the span is missing or fails verification, `None` when writing fails.
    fn copy_part(&self, part: &FilePart, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Option<bool> {
        let (from, to) = (part.from, part.to);
        let ranged = self.get_range(&part.digest, part.span_len, from..to);
        if let Some(bytes) = ranged.or_else(|| self.get_part_range(&part.digest, part.span_len, from..to)) {
            out(&bytes).ok()?;
            return Some(true);
        }
        let Some(span) = self.get(&part.digest, part.span_len) else { return Some(false) };
        out(&span[from as usize..to as usize]).ok()?;
        Some(true)
    }
}

/// Length and sha256 of a file, streamed.
fn hash_file(path: &Path) -> io::Result<(u64, Digest)> {
    let mut file = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, Digest::from_sha256(h.finalize().into())));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

impl ContentStore {
    /// A local file holding exactly the `data.size` bytes of the regular file at `data`, when they are all
    /// in the disk cache: for FUSE passthrough. Assembles it from the cached spans and sealed decoded span
    /// prefixes the first time (bytes verified on the way); a file larger than
    /// [`crate::StoreConfig::passthrough_inline_max`], or one that needs a prefix, is assembled in the
    /// background instead and `None` returned until it is ready. `None` also when there is no disk cache or
    /// any span is missing: read through the store then.
    ///
    /// Blocking (file system work, up to a copy of `passthrough_inline_max` bytes): call it from a thread
    /// that may block, such as a FUSE request thread, not from an async task.
    pub fn cached_file(&self, data: DataRef) -> Option<File> {
        let inner = &self.inner;
        let disk = inner.disk.as_ref()?;
        if data.size < inner.config.passthrough_min {
            return None;
        }
        let parts = file_parts(&inner.archive, data)
            .inspect_err(|e| debug!(layer = %data.layer, offset = data.offset, error = %e, "no local file"))
            .ok()?;
        let key = file_key(&parts, data.size);
        if let Some(file) = disk.find_file(&key, data.size) {
            return Some(file);
        }
        // Each slice in a whole span on disk, or in the sealed decoded prefix a partial fetch left of its span
        // (a cold start fetches most libraries' spans only as far as it reads them). Copied from prefixes in
        // the background, never on the open's path: a start that opens its libraries once (its reads served
        // from the prefixes meanwhile) does not wait for copies that only a later start uses.
        let mut from_prefix = false;
        for p in &parts {
            if !disk.contains(&p.digest) {
                if !disk.holds_part(&p.digest, p.to) {
                    return None;
                }
                from_prefix = true;
            }
        }
        let runtime = inner.runtime.clone().or_else(|| tokio::runtime::Handle::try_current().ok());
        match runtime {
            Some(rt) if from_prefix || data.size > inner.config.passthrough_inline_max => {
                if lock(&inner.materializing).insert(key) {
                    let (inner, disk) = (Arc::clone(inner), Arc::clone(disk));
                    rt.spawn_blocking(move || {
                        disk.build_file(&key, &parts, data.size);
                        lock(&inner.materializing).remove(&key);
                    });
                }
                None
            }
            _ => disk.build_file(&key, &parts, data.size),
        }
    }
}
